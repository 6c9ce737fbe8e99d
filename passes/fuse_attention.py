"""Recognise scaled-dot-product attention written out by hand, and multi-head attention around it.

Rewrite 1 (``attention`` from its parts; k^T is a transpose of the last two axes):
  softmax(q @ k^T * c | q @ k^T / c [+ mask], axis=-1) @ v  -> attention(q, k, v, mask; scale=c | 1/c)
  where k^T may be any transpose that swaps the last two axes of some permutation of k

Rewrite 2 (``multi_head_attention``: heads split and merged around attention, as
``nn.MultiheadAttention``-style code and our frontend's sdpa produce):
  q4 = transpose(reshape(q, [B, S, H, D]), [0, 2, 1, 3])     (same for k4, v4)
  y = reshape(transpose(attention(q4, k4, v4), [0, 2, 1, 3]), [B, S, H*D])
  -> y = multi_head_attention(q, k, v; num_heads=H, scale)
Only without mask and not causal: other masks are left to ``attention`` (a backend's fused kernel
may not accept their shape).

Rewrite 3 (``qkv_attention``: self-attention whose projections can be packed into one GEMM):
  multi_head_attention(linear(x, Wq, bq), linear(x, Wk, bk), linear(x, Wv, bv))
  -> qkv_attention(x, concat(Wq, Wk, Wv), concat(bq, bk, bv))
when the three linears are distinct, read the same x, have constant weights of one shape and
constant (or no) biases, no fused activation, and feed only this attention. Projections of
different inputs (cross-attention) stay as they are.

``unpack_qkv_attention`` is rewrite 3 backwards (one linear per projection again): compression
runs it first, so pruning, weight sharing and quantization see the projections as the linear
layers they handle.
"""

from __future__ import annotations

import math

import numpy as np

from compiler.ir import Graph, Node, Value
from passes.base import Pass
from passes.rewrite import NoMatch, RewriteRule, apply_rules, producer, scalar_constant, single_use


def _match_attention(graph: Graph, softmax: Node):
    rank = softmax.output.type.rank
    if softmax.attrs["axis"] % rank != rank - 1:
        return NoMatch("softmax is not over the last axis")
    if not single_use(graph, softmax.output):
        return NoMatch("softmax output has other users")
    out = softmax.output.uses[0].node
    if out.op != "matmul" or out.inputs[0] is not softmax.output:
        return NoMatch("softmax output is not multiplied by v")
    v = out.inputs[1]
    scores, mask = softmax.inputs[0], None
    add = producer(scores, "add")
    if add is not None and single_use(graph, scores):
        scores, mask = add.inputs[0], add.inputs[1]
        if producer(scores, ("mul", "div", "matmul")) is None:
            scores, mask = add.inputs[1], add.inputs[0]
    scale, scaled = 1.0, producer(scores, ("mul", "div"))
    if scaled is not None and single_use(graph, scores):
        c = scalar_constant(scaled.inputs[1])
        if c is None or not scaled.inputs[1].is_const:
            return NoMatch("scores are scaled by a non-constant")
        scale = c if scaled.op == "mul" else 1.0 / c
        scores = scaled.inputs[0]
    qk = producer(scores, "matmul")
    if qk is None or not single_use(graph, scores):
        return NoMatch("scores are not q @ k^T")
    q, kt = qk.inputs
    transpose = producer(kt, "transpose")
    if transpose is None or transpose.output.type.rank < 2:
        return NoMatch("k is not transposed on its last two axes")
    # kt = transpose(y, perm) = swap_last_two(transpose(y, k_perm)): recover k's own permutation
    perm = list(transpose.attrs["perm"])
    k_perm = perm[:-2] + [perm[-1], perm[-2]]
    if not (q.type.rank == kt.type.rank == v.type.rank >= 2) or q.dtype != kt.dtype or q.dtype != v.dtype:
        return NoMatch("q, k, v ranks or dtypes differ")
    if mask is not None and mask.dtype != q.dtype:
        return NoMatch("additive mask of another dtype")
    return q, (transpose.inputs[0], k_perm), v, mask, scale, out


def _rewrite_attention(graph: Graph, m) -> None:
    q, (y, k_perm), v, mask, scale, out = m
    k = y
    if k_perm != list(range(len(k_perm))):
        k = graph.insert_before(out, "transpose", [y], {"perm": k_perm}, location=out.location).output
    attn = graph.insert_before(out, "attention", [q, k, v, mask], {"scale": scale, "is_causal": False},
                               location=out.location)
    graph.replace_all_uses_with(out.output, attn.output)


def _split_heads(value: Value) -> tuple[Value, int] | None:
    """(x, heads) when value = transpose(reshape(x [B,S,E] -> [B,S,H,D]), [0,2,1,3])."""
    t = producer(value, "transpose")
    if t is None or list(t.attrs["perm"]) != [0, 2, 1, 3]:
        return None
    r = producer(t.inputs[0], "reshape")
    if r is None or r.inputs[0].type.rank != 3:
        return None
    x = r.inputs[0]
    b, s, h, d = r.output.shape
    if (b, s) != x.shape[:2] or not isinstance(h, int) or not isinstance(d, int) or x.shape[2] != h * d:
        return None
    return x, h


def _match_mha(graph: Graph, attn: Node):
    if attn.inputs[3] is not None or attn.attrs["is_causal"]:
        return NoMatch("masked or causal attention stays unfused")
    if attn.output.type.rank != 4:
        return NoMatch("attention is not 4-d [B, H, S, D]")
    splits = [_split_heads(v) for v in attn.inputs[:3]]
    if any(s is None for s in splits):
        return NoMatch("q, k or v is not a head split of a [B, S, E] tensor")
    heads = {h for _, h in splits}
    if len(heads) != 1:
        return NoMatch("q, k, v have different head counts")
    if not single_use(graph, attn.output):
        return NoMatch("attention output has other users")
    t = attn.output.uses[0].node
    if t.op != "transpose" or list(t.attrs["perm"]) != [0, 2, 1, 3] or not single_use(graph, t.output):
        return NoMatch("heads are not merged back by transpose [0, 2, 1, 3]")
    r = t.output.uses[0].node
    if r.op != "reshape" or r.output.type.rank != 3:
        return NoMatch("heads are not merged back by a reshape to [B, S, E]")
    q, k, v = (x for x, _ in splits)
    d = attn.inputs[0].shape[-1]
    scale = attn.attrs["scale"] if attn.attrs["scale"] is not None else 1.0 / math.sqrt(d)
    return q, k, v, heads.pop(), scale, r


def _rewrite_mha(graph: Graph, m) -> None:
    q, k, v, heads, scale, last = m
    mha = graph.insert_before(last, "multi_head_attention", [q, k, v], {"num_heads": heads, "scale": scale},
                              location=last.location)
    graph.replace_all_uses_with(last.output, mha.output)


def _match_packed_projections(graph: Graph, mha: Node):
    projections = [producer(v, "linear") for v in mha.inputs]
    if any(p is None for p in projections):
        return NoMatch("q, k or v is not a linear projection")
    if len({id(p) for p in projections}) != 3:
        return NoMatch("q, k, v share a projection")
    x = projections[0].inputs[0]
    if any(p.inputs[0] is not x for p in projections):
        return NoMatch("q, k, v are projections of different inputs")
    if any(p.attrs.get("activation") for p in projections):
        return NoMatch("a projection has a fused activation")
    if any(not single_use(graph, p.output) for p in projections):
        return NoMatch("a projection has other users")
    weights = [p.inputs[1] for p in projections]
    biases = [(list(p.inputs) + [None])[2] for p in projections]
    if any(not w.is_const for w in weights) or any(b is not None and not b.is_const for b in biases):
        return NoMatch("projection weights or biases are not constants")
    if len({w.shape for w in weights}) != 1 or x.type.rank != 3:
        return NoMatch("projection weights differ in shape or x is not [B, S, E]")
    return x, weights, biases, mha


def _rewrite_packed_projections(graph: Graph, m) -> None:
    x, weights, biases, mha = m
    packed_w = graph.add_constant(np.concatenate([w.const for w in weights]), "qkv_weight")
    packed_b = None
    if any(b is not None for b in biases):  # a missing bias is a zero one
        rows = weights[0].shape[0]
        packed_b = graph.add_constant(np.concatenate(
            [b.const if b is not None else np.zeros(rows, x.dtype.numpy) for b in biases]), "qkv_bias")
    fused = graph.insert_before(mha, "qkv_attention", [x, packed_w, packed_b], dict(mha.attrs),
                                location=mha.location)
    graph.replace_all_uses_with(mha.output, fused.output)


def unpack_qkv_attention(graph: Graph) -> bool:
    """qkv_attention(x, W, b) -> multi_head_attention(linear(x, W[:E], b[:E]), linear(x, W[E:2E], ...),
    linear(x, W[2E:], ...)) for every packed node with a constant weight; returns whether any
    changed."""
    changed = False
    for node in [n for n in graph.nodes if n.op == "qkv_attention" and n.inputs[1].is_const]:
        x, weight = node.inputs[0], node.inputs[1]
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        if bias is not None and not bias.is_const:
            continue
        rows = weight.shape[0] // 3
        projections = []
        for i, part in enumerate("qkv"):
            w = graph.add_constant(weight.const[i * rows:(i + 1) * rows].copy(), f"{part}_proj_weight")
            b = None if bias is None else graph.add_constant(bias.const[i * rows:(i + 1) * rows].copy(),
                                                             f"{part}_proj_bias")
            projections.append(graph.insert_before(node, "linear", [x, w, b], {"activation": ""},
                                                   location=node.location).output)
        mha = graph.insert_before(node, "multi_head_attention", projections, dict(node.attrs),
                                  location=node.location)
        graph.replace_all_uses_with(node.output, mha.output)
        graph.remove_node(node)
        changed = True
    if changed:
        graph.remove_unused_constants()
    return changed


ATTENTION_RULES = [RewriteRule("attention", "softmax", _match_attention, _rewrite_attention)]
MHA_RULES = [RewriteRule("multi_head_attention", "attention", _match_mha, _rewrite_mha)]
QKV_RULES = [RewriteRule("qkv_attention", "multi_head_attention", _match_packed_projections,
                         _rewrite_packed_projections)]


class FuseAttention(Pass):
    name = "fuse_attention"

    def run(self, graph: Graph) -> bool:
        changed = apply_rules(graph, ATTENTION_RULES)
        changed = apply_rules(graph, MHA_RULES) or changed
        return apply_rules(graph, QKV_RULES) or changed
