"""Fold inference batch-norm into the preceding convolution or linear layer.

Rewrite: batch_norm(conv(x, W, b), mean, var, gamma, beta)
      -> conv(x, W * s[:, None, ...], (b - mean) * s + beta)   with s = gamma / sqrt(var + eps)
and the same for linear(x, W, b) on [N, C] inputs (BatchNorm1d after a Linear). Applies only
when the layer's output feeds nothing but the batch-norm, and weights and statistics are
constants. Folding runs in float64 and rounds once.
"""

from __future__ import annotations

import numpy as np

from compiler.ir import Graph, Node
from passes.base import Pass
from passes.rewrite import NoMatch, RewriteRule, apply_rules, producer, single_use


def _match(graph: Graph, bn: Node):
    layer = producer(bn.inputs[0], ("conv", "linear"))
    if layer is None:
        return NoMatch("input is not produced by conv or linear")
    if not single_use(graph, layer.output):
        return NoMatch(f"{layer.op} output has other users")
    if any(v is not None and not v.is_const for v in layer.inputs[1:] + bn.inputs[1:]):
        return NoMatch("weights or statistics are not constants")
    if layer.op == "linear" and layer.output.type.rank != 2:
        return NoMatch("linear output is not [N, C]")
    if layer.attrs.get("activation"):
        return NoMatch(f"{layer.op} already has a fused activation")
    return layer, bn


def _rewrite(graph: Graph, match) -> None:
    layer, bn = match
    x, weight, bias = (list(layer.inputs) + [None])[:3]
    mean, var, gamma, beta = (list(bn.inputs[1:]) + [None, None])[:4]
    channels = weight.shape[0]
    f64 = lambda v, default: v.const.astype(np.float64) if v is not None else np.full(channels, default)  # noqa: E731
    scale = f64(gamma, 1.0) / np.sqrt(f64(var, 1.0) + bn.attrs["eps"])
    new_weight = weight.const.astype(np.float64) * scale.reshape((-1,) + (1,) * (weight.type.rank - 1))
    new_bias = (f64(bias, 0.0) - f64(mean, 0.0)) * scale + f64(beta, 0.0)
    dtype = weight.const.dtype
    w = graph.add_constant(new_weight.astype(dtype), f"{weight.name}_bn")
    b = graph.add_constant(new_bias.astype(dtype), f"{bias.name if bias is not None else weight.name}_bn_bias")
    fused = graph.insert_before(bn, layer.op, [x, w, b], dict(layer.attrs), location=layer.location,
                                name=f"{layer.name}_bn")
    graph.replace_all_uses_with(bn.output, fused.output)


RULES = [RewriteRule("fold_batch_norm", "batch_norm", _match, _rewrite)]


class FoldBatchNorm(Pass):
    name = "fold_bn"

    def run(self, graph: Graph) -> bool:
        changed = apply_rules(graph, RULES)
        if changed:
            graph.remove_unused_constants()
        return changed
