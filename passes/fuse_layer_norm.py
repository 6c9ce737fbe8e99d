"""Recognise layer normalisation written out by hand.

Rewrite (over the last axis, keepdim means):
  m = mean(x); d = x - m; v = mean(d * d | d ** 2); y = d / sqrt(v + eps) | d * rsqrt(v + eps)
  [y = y * weight] [y = y + bias]              -> layer_norm(x, weight, bias; eps)
``weight``/``bias`` are folded only when they are constants of the normalised size.
"""

from __future__ import annotations

from compiler.ir import Graph, Node, Value
from passes.base import Pass
from passes.rewrite import NoMatch, RewriteRule, apply_rules, scalar_constant, single_use


def _last_axis_mean(node: Node | None, rank: int) -> bool:
    return (node is not None and node.op == "reduce_mean" and node.attrs["keepdim"]
            and [a % rank for a in node.attrs["axes"]] == [rank - 1])


def _users(value: Value) -> list[Node]:
    return value.users()


def _match(graph: Graph, mean: Node):
    x = mean.inputs[0]
    rank = x.type.rank
    if not x.dtype.is_float or not _last_axis_mean(mean, rank):
        return NoMatch("not a keepdim mean over the last axis")
    subs = [u for u in _users(mean.output) if u.op == "sub" and u.inputs[0] is x and u.inputs[1] is mean.output]
    if len(subs) != 1 or len(mean.output.uses) != 1:
        return NoMatch("mean is not used once as x - mean")
    d = subs[0].output
    squares = [u for u in _users(d) if (u.op == "mul" and u.inputs[0] is d and u.inputs[1] is d)
               or (u.op == "pow" and u.inputs[0] is d and scalar_constant(u.inputs[1]) == 2.0)]
    if len(squares) != 1:
        return NoMatch("no (x - mean)^2")
    var_users = _users(squares[0].output)
    if len(var_users) != 1 or not _last_axis_mean(var_users[0], rank):
        return NoMatch("variance is not a last-axis mean")
    var = var_users[0]
    add = var.output.uses[0].node if len(var.output.uses) == 1 else None
    eps = scalar_constant(add.inputs[1]) if add is not None and add.op == "add" else None
    if eps is None or len(add.output.uses) != 1:
        return NoMatch("variance + eps not found")
    root = add.output.uses[0].node
    normalized = None
    if root.op == "rsqrt" and len(root.output.uses) == 1:
        scale = root.output.uses[0].node
        if scale.op == "mul" and d in scale.inputs and root.output in scale.inputs:
            normalized = scale
    elif root.op == "sqrt" and len(root.output.uses) == 1:
        div = root.output.uses[0].node
        if div.op == "div" and div.inputs[0] is d and div.inputs[1] is root.output:
            normalized = div
    if normalized is None:
        return NoMatch("no division by sqrt(var + eps)")
    other_d_users = [u for u in _users(d) if u not in (squares[0], normalized)]
    if other_d_users:
        return NoMatch("x - mean has other users")
    last, weight, bias = normalized, None, None
    size = x.shape[-1]
    nxt = _only_user(graph, last)
    if nxt is not None and nxt.op == "mul":
        w = _const_operand(nxt, last.output, size)
        if w is not None:
            last, weight, nxt = nxt, w, _only_user(graph, nxt)
    if nxt is not None and nxt.op == "add":
        b = _const_operand(nxt, last.output, size)
        if b is not None:
            last, bias = nxt, b
    return x, last, weight, bias, eps


def _only_user(graph: Graph, node: Node) -> Node | None:
    return node.output.uses[0].node if single_use(graph, node.output) else None


def _const_operand(node: Node, value: Value, size) -> Value | None:
    other = node.inputs[1] if node.inputs[0] is value else node.inputs[0]
    return other if other.is_const and other.shape == (size,) else None


def _rewrite(graph: Graph, match) -> None:
    x, last, weight, bias, eps = match
    ln = graph.insert_before(last, "layer_norm", [x, weight, bias], {"normalized_ndim": 1, "eps": eps},
                             location=last.location)
    graph.replace_all_uses_with(last.output, ln.output)


RULES = [RewriteRule("layer_norm", "reduce_mean", _match, _rewrite)]


class FuseLayerNorm(Pass):
    name = "fuse_layernorm"

    def run(self, graph: Graph) -> bool:
        return apply_rules(graph, RULES)
