"""Identity and no-op removal.

Rewrites (each a rule in ``RULES``):
  reshape(x) to x's own shape          -> x
  reshape(reshape(x))                   -> reshape(x)
  transpose(transpose(x, p), q)         -> transpose(x, p∘q), or x when that is the identity
  cast(x) to x's dtype                  -> x
  x * 1, 1 * x, x / 1, x + 0, 0 + x, x - 0 (constant that does not broadcast x bigger) -> x
A rewrite never changes a graph output's type; values that are graph outputs keep a producer.
"""

from __future__ import annotations

from compiler.ir import Graph, Node, Value
from passes.base import Pass
from passes.rewrite import NoMatch, RewriteRule, apply_rules, producer, scalar_constant


def _forward(graph: Graph, node: Node, value: Value) -> None:
    graph.replace_all_uses_with(node.output, value)


def _is_output(graph: Graph, value: Value) -> bool:
    return any(v is value for v in graph.outputs)


def _identity_reshape(graph: Graph, node: Node):
    x = node.inputs[0]
    if node.output.shape != x.shape:
        return NoMatch("shape changes")
    if _is_output(graph, node.output) and x.producer is None:
        return NoMatch("graph output would lose its producer")
    return x


def _reshape_chain(graph: Graph, node: Node):
    inner = producer(node.inputs[0], "reshape")
    return inner if inner is not None else NoMatch("input is not a reshape")


def _rewrite_reshape_chain(graph: Graph, inner: Node) -> None:
    for use in list(inner.output.uses):
        if use.node.op == "reshape":
            graph.set_input(use.node, 0, inner.inputs[0])


def _transpose_pair(graph: Graph, node: Node):
    inner = producer(node.inputs[0], "transpose")
    return (inner, node) if inner is not None else NoMatch("input is not a transpose")


def _rewrite_transpose_pair(graph: Graph, match) -> None:
    inner, outer = match
    perm = [inner.attrs["perm"][p] for p in outer.attrs["perm"]]
    x = inner.inputs[0]
    if perm == list(range(len(perm))) and not (_is_output(graph, outer.output) and x.producer is None):
        _forward(graph, outer, x)
    else:
        new = graph.insert_before(outer, "transpose", [x], {"perm": perm}, location=outer.location).output
        graph.replace_all_uses_with(outer.output, new)


def _same_dtype_cast(graph: Graph, node: Node):
    x = node.inputs[0]
    if node.attrs["dtype"] != x.dtype:
        return NoMatch("dtype changes")
    if _is_output(graph, node.output) and x.producer is None:
        return NoMatch("graph output would lose its producer")
    return x


_NEUTRAL = {"mul": (1.0, True), "div": (1.0, False), "add": (0.0, True), "sub": (0.0, False)}


def _neutral_element(graph: Graph, node: Node):
    neutral, commutes = _NEUTRAL[node.op]
    a, b = node.inputs
    candidates = [(a, b)] + ([(b, a)] if commutes else [])
    for keep, other in candidates:
        if scalar_constant(other) == neutral and keep.shape == node.output.shape \
                and keep.dtype == node.output.dtype:
            if _is_output(graph, node.output) and keep.producer is None:
                return NoMatch("graph output would lose its producer")
            return keep
    return NoMatch(f"no operand is a constant {neutral} that leaves the other unchanged")


def forwarding_rule(name: str, anchor: str, find_replacement) -> RewriteRule:
    """A rule whose anchor node is replaced by an existing value that ``find_replacement``
    returns (or NoMatch)."""

    def match(graph: Graph, node: Node):
        value = find_replacement(graph, node)
        return value if isinstance(value, NoMatch) else (node, value)

    def rewrite(graph: Graph, m) -> None:
        node, value = m
        _forward(graph, node, value)

    return RewriteRule(name, anchor, match, rewrite)


RULES = [
    forwarding_rule("identity_reshape", "reshape", _identity_reshape),
    RewriteRule("reshape_chain", "reshape", _reshape_chain, _rewrite_reshape_chain),
    RewriteRule("transpose_pair", "transpose", _transpose_pair, _rewrite_transpose_pair),
    forwarding_rule("same_dtype_cast", "cast", _same_dtype_cast),
] + [forwarding_rule(f"neutral_{op}", op, _neutral_element) for op in _NEUTRAL]


class Simplify(Pass):
    name = "simplify"

    def run(self, graph: Graph) -> bool:
        return apply_rules(graph, RULES)
