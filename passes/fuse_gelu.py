"""Recognise GELU written out by hand.

Rewrites (x any value; constants may sit on either side of commutative ops):
  0.5 * x * (1 + erf(x / sqrt(2)))              -> gelu(x)            (also x * 0.7071..., and
  x * 0.5 * (1 + erf(...)), (x * (1 + erf(...))) * 0.5)
  0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))  -> gelu(x; approximate='tanh')
Intermediate values must have no other users.
"""

from __future__ import annotations

import math

from compiler.ir import Graph, Node, Value
from passes.base import Pass
from passes.rewrite import NoMatch, RewriteRule, apply_rules, producer, scalar_constant, single_use

SQRT2 = math.sqrt(2.0)
TOL = 1e-4


def _close(a: float | None, b: float) -> bool:
    return a is not None and abs(a - b) <= TOL * max(1.0, abs(b))


def _split_const(node: Node) -> tuple[Value, float | None]:
    """(the non-constant operand, the scalar constant) of a binary node."""
    a, b = node.inputs
    if scalar_constant(b) is not None and not a.is_const:
        return a, scalar_constant(b)
    if scalar_constant(a) is not None and not b.is_const:
        return b, scalar_constant(a)
    return a, None


def _erf_argument(node: Node) -> Value | None:
    """x when node computes x / sqrt(2) or x * (1/sqrt(2))."""
    x, c = _split_const(node)
    if node.op == "div" and node.inputs[1].is_const and _close(c, SQRT2):
        return x
    if node.op == "mul" and _close(c, 1 / SQRT2):
        return x
    return None


def _tanh_argument(node: Node) -> Value | None:
    """x when node computes sqrt(2/pi) * (x + 0.044715 * x^3)."""
    if node.op != "mul":
        return None
    inner, c = _split_const(node)
    if not _close(c, math.sqrt(2 / math.pi)):
        return None
    add = producer(inner, "add")
    if add is None:
        return None
    for x, cubic in (add.inputs, reversed(add.inputs)):
        mul = producer(cubic, "mul")
        if mul is None:
            continue
        cube, c3 = _split_const(mul)
        power = producer(cube, "pow")
        if _close(c3, 0.044715) and power is not None and power.inputs[0] is x \
                and _close(scalar_constant(power.inputs[1]), 3.0):
            return x
    return None


def _match(graph: Graph, core: Node):
    """Anchor: erf or tanh. Walk up to the final product."""
    argument = core.inputs[0].producer
    approximate = "tanh" if core.op == "tanh" else "none"
    x = None
    if argument is not None:
        x = _tanh_argument(argument) if core.op == "tanh" else _erf_argument(argument)
    if x is None:
        return NoMatch(f"{core.op} argument is not the GELU form")
    if not single_use(graph, core.output) or len(core.output.uses) != 1:
        return NoMatch(f"{core.op} output has other users")
    plus_one = core.output.uses[0].node
    if plus_one.op != "add" or not _close(_split_const(plus_one)[1], 1.0) or not single_use(graph, plus_one.output):
        return NoMatch("not followed by + 1")
    product = plus_one.output.uses[0].node
    if product.op != "mul":
        return NoMatch("1 + erf(...) is not multiplied")
    other = product.inputs[1] if product.inputs[0] is plus_one.output else product.inputs[0]
    half = producer(other, "mul")
    if other is x:  # x * (1 + erf) then * 0.5
        if not single_use(graph, product.output):
            return NoMatch("product has other users")
        final = product.output.uses[0].node
        if final.op != "mul" or not _close(_split_const(final)[1], 0.5):
            return NoMatch("missing the factor 0.5")
        return x, final, approximate
    if half is not None and _split_const(half)[0] is x and _close(_split_const(half)[1], 0.5):
        return x, product, approximate
    return NoMatch("multiplier is neither x nor 0.5 * x")


def _rewrite(graph: Graph, match) -> None:
    x, last, approximate = match
    gelu = graph.insert_before(last, "gelu", [x], {"approximate": approximate}, location=last.location)
    graph.replace_all_uses_with(last.output, gelu.output)


RULES = [RewriteRule("gelu_erf", "erf", _match, _rewrite), RewriteRule("gelu_tanh", "tanh", _match, _rewrite)]


class FuseGelu(Pass):
    name = "fuse_gelu"

    def run(self, graph: Graph) -> bool:
        return apply_rules(graph, RULES)
