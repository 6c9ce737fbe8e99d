"""Fuse an activation into the conv or linear that feeds it.

Rewrite: act(conv(x, W, b)) -> conv(x, W, b; activation=act) and the same for linear, for act in
relu, sigmoid, tanh, silu, hardswish, hardsigmoid, gelu, clamp (relu6), leaky_relu. Applies
when the layer's output has no other user (otherwise the un-activated value is still needed).
Backends emit the fused form (e.g. onnxruntime's FusedConv) or split it again.
"""

from __future__ import annotations

import math

from compiler.ir import Graph, Node
from compiler.ops.nn import FUSABLE_ACTIVATIONS
from passes.base import Pass
from passes.rewrite import NoMatch, RewriteRule, apply_rules, producer, single_use

# unary op -> activation name resolver from the node's attrs
_BY_OP = {op: name for name, (op, fixed, _) in FUSABLE_ACTIVATIONS.items() if not fixed}


def activation_of(node: Node) -> tuple[str, tuple[float, ...]] | None:
    """(activation name, args) equivalent to a unary node, or None."""
    if node.op == "gelu":
        return ("gelu_tanh" if node.attrs["approximate"] == "tanh" else "gelu"), ()
    if node.op == "clamp":
        lo, hi = node.attrs["min"], node.attrs["max"]
        return "clamp", (math.nan if lo is None else lo, math.nan if hi is None else hi)
    if node.op == "leaky_relu":
        return "leaky_relu", (node.attrs["negative_slope"],)
    name = _BY_OP.get(node.op)
    return (name, ()) if name else None


def _match(graph: Graph, act: Node):
    layer = producer(act.inputs[0], ("conv", "linear"))
    if layer is None:
        return NoMatch("input is not produced by conv or linear")
    if layer.attrs["activation"]:
        return NoMatch(f"{layer.op} already has activation {layer.attrs['activation']}")
    if not single_use(graph, layer.output):
        return NoMatch(f"{layer.op} output has other users")
    return layer, act


def _rewrite(graph: Graph, match) -> None:
    layer, act = match
    name, args = activation_of(act)
    attrs = dict(layer.attrs, activation=name, activation_args=args)
    fused = graph.insert_before(act, layer.op, list(layer.inputs), attrs, location=layer.location,
                                name=f"{layer.name}_{name}")
    graph.replace_all_uses_with(act.output, fused.output)


RULES = [RewriteRule(f"fuse_{op}", op, _match, _rewrite)
         for op in sorted({op for op, _, _ in FUSABLE_ACTIVATIONS.values()})]


class FuseActivation(Pass):
    name = "fuse_act"

    def run(self, graph: Graph) -> bool:
        return apply_rules(graph, RULES)
