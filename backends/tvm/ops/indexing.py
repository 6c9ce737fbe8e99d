"""TVM lowerings of the ops of ``compiler/ops/indexing.py``: gather/scatter_elements, advanced
indexing (index, index_put), embedding_bag, nonzero, unique, sort, topk."""

from __future__ import annotations

import numpy as np
from tvm import relax
from tvm.relax import op as R

from compiler.ir import Value

from .common import Emitter, checked_index, tvm_dtype


def _nonneg_index(ctx, x: Value, idx: Value, axis: int):
    """int64 indices along ``axis`` of ``x`` with negative ones counted from the end."""
    iv = ctx.emit(R.astype(ctx.value(idx), "int64"))
    n = x.shape[axis]
    if not isinstance(n, int):
        raise ctx.unsupported("negative indices along a symbolic dim")
    iv = ctx.emit(R.where(R.less(iv, ctx.const(0, "int64")), R.add(iv, ctx.const(n, "int64")), iv))
    return checked_index(ctx, idx, iv, n)


def emit_gather_elements(ctx, node):
    x, idx = node.inputs
    axis = node.attrs.get("axis", 0) % len(x.shape)
    return R.gather_elements(ctx.value(x), _nonneg_index(ctx, x, idx, axis), axis)


_SCATTER = {"none": "update", "add": "add", "mul": "mul", "max": "max", "min": "min"}


def emit_scatter_elements(ctx, node):
    """ONNX ScatterElements semantics (reductions include the existing values, as torch's
    include_self=True); a ``src`` larger than the index is cut to its leading part."""
    x, idx, src = node.inputs
    axis = node.attrs.get("axis", 0) % len(x.shape)
    reduction = node.attrs.get("reduction", "none")
    if reduction not in _SCATTER:
        raise ctx.unsupported(f"scatter reduction {reduction!r}")
    sv = ctx.value(src)
    if tuple(src.shape) != tuple(idx.shape):
        sv = ctx.emit(R.strided_slice(sv, list(range(len(idx.shape))), [0] * len(idx.shape), ctx.shape(idx.shape)))
    return R.scatter_elements(ctx.value(x), _nonneg_index(ctx, x, idx, axis), sv, axis, _SCATTER[reduction])


def _index_layout(ctx, x: Value, indices: list, axes_attr):
    """The pieces numpy advanced indexing shares between index and index_put: x with the indexed
    axes moved to the front and flattened into one (and the permutation used), the flat int64
    index (broadcast shape), and where the broadcast dims go in the result."""
    rank = len(x.shape)
    axes = [a % rank for a in axes_attr]
    sizes = [x.shape[a] for a in axes]
    if not all(isinstance(n, int) for n in sizes):
        raise ctx.unsupported("indexing along a symbolic dim")
    rest = [i for i in range(rank) if i not in axes]
    perm = axes + rest
    xv = ctx.emit(R.permute_dims(ctx.value(x), perm))
    xv = ctx.emit(R.reshape(xv, [int(np.prod(sizes))] + ctx.shape([x.shape[i] for i in rest])))
    flat = None
    for idx, a, n in zip(indices, axes, sizes):
        term = _nonneg_index(ctx, x, idx, a)
        flat = term if flat is None else ctx.emit(R.add(R.multiply(flat, ctx.const(n, "int64")), term))
    adjacent = axes == list(range(min(axes), min(axes) + len(axes)))
    first = min(axes) if adjacent else 0  # numpy puts the broadcast dims there
    return xv, perm, flat, first, rest


def _front_to(first: int, nb: int, rank: int) -> list[int]:
    """The permutation taking [broadcast dims (nb), other dims] to broadcast dims at ``first``."""
    return list(range(nb, nb + first)) + list(range(nb)) + list(range(nb + first, rank))


def emit_index(ctx, node):
    """numpy advanced indexing composed from take: the indexed axes moved to the front and
    flattened into one, the broadcast indices turned into one flat index, then the broadcast
    dims moved to where numpy puts them (in place of adjacent indexed axes, else in front)."""
    x, indices = node.inputs[0], list(node.inputs[1:])
    xv, _, flat, first, rest = _index_layout(ctx, x, indices, node.attrs["axes"])
    y = ctx.emit(R.take(xv, flat, 0, mode="clip"))
    out_rank = len(node.output.shape)
    return R.permute_dims(y, _front_to(first, out_rank - len(rest), out_rank)) if first else y


def emit_index_put(ctx, node):
    """x[indices] = values (or += with accumulate): the same layout as index, the values
    broadcast to the indexed result and brought to [broadcast dims, other dims] order, then a
    scatter along the flattened indexed axis (repeated indices: last write / sum, as PyTorch)."""
    x, values, indices = node.inputs[0], node.inputs[1], list(node.inputs[2:])
    rank = len(x.shape)
    xv, perm, flat, first, rest = _index_layout(ctx, x, indices, node.attrs["axes"])
    bshape = list(np.broadcast_shapes(*[tuple(i.shape) for i in indices]))
    nb = len(bshape)
    result_shape = _result_shape(x, bshape, first, rest, first > 0 or _adjacent(node.attrs["axes"], rank))
    vv = ctx.emit(R.broadcast_to(ctx.value(values), ctx.shape(result_shape)))
    if first:
        inv = _front_to(first, nb, len(result_shape))
        vv = ctx.emit(R.permute_dims(vv, [inv.index(d) for d in range(len(result_shape))]))
    n_b = int(np.prod(bshape))
    rest_shape = ctx.shape([x.shape[i] for i in rest])
    vv = ctx.emit(R.reshape(vv, [n_b] + rest_shape))
    fl = ctx.emit(R.reshape(R.broadcast_to(flat, bshape), [n_b] + [1] * len(rest)))
    fl = ctx.emit(R.broadcast_to(fl, [n_b] + rest_shape))
    out = ctx.emit(R.scatter_elements(xv, fl, vv, 0, "add" if node.attrs.get("accumulate") else "update"))
    out = ctx.emit(R.reshape(out, ctx.shape([x.shape[a] for a in perm])))
    return R.permute_dims(out, [perm.index(d) for d in range(rank)])


def _adjacent(axes, rank: int) -> bool:
    axes = [a % rank for a in axes]
    return axes == list(range(min(axes), min(axes) + len(axes)))


def _result_shape(x: Value, bshape: list, first: int, rest: list, adjacent: bool) -> list:
    others = [x.shape[i] for i in rest]
    return others[:first] + bshape + others[first:] if adjacent else bshape + others


def emit_embedding_bag(ctx, node):
    """Bags as a [bags, N] membership matrix of the N index positions (position p belongs to the
    last bag whose offset is <= p; rows equal to padding_idx and, with include_last_offset,
    positions past the last offset belong to none), then a matmul (sum, mean) or a masked max."""
    weight, idx, offsets, psw = (list(node.inputs) + [None])[:4]
    mode, last, pad_idx = node.attrs.get("mode", "mean"), node.attrs.get("include_last_offset", False), \
        node.attrs.get("padding_idx", -1)
    dt = tvm_dtype(weight.dtype)
    n = idx.shape[0]
    iv = checked_index(ctx, idx, ctx.emit(R.astype(ctx.value(idx), "int64")), weight.shape[0])
    ov = ctx.emit(R.astype(ctx.value(offsets), "int64"))
    pos = ctx.emit(R.arange(0, relax.prim_value(ctx.dim(n)), 1, "int64"))
    starts = ctx.emit(R.strided_slice(ov, [0], [0], [-1])) if last else ov
    ends = ctx.emit(R.concat([R.strided_slice(ov, [0], [1], [2 ** 62]), _full_like_dim(ctx, n)], 0)) \
        if not last else ctx.emit(R.strided_slice(ov, [0], [1], [2 ** 62]))
    inside = R.logical_and(R.less_equal(R.expand_dims(starts, 1), pos), R.less(pos, R.expand_dims(ends, 1)))
    if pad_idx >= 0:
        inside = R.logical_and(inside, R.not_equal(iv, ctx.const(pad_idx, "int64")))
    member = ctx.emit(inside)  # [bags, N]
    rows = ctx.emit(R.take(ctx.value(weight), iv, 0, mode="clip"))  # [N, D]
    if mode == "max":
        masked = ctx.emit(R.max(R.where(R.expand_dims(member, 2), R.expand_dims(rows, 0), ctx.const(-np.inf, dt)), [1]))
        nonempty = R.astype(R.max(R.astype(member, "uint8"), [1], True), "bool")
        return R.where(nonempty, masked, ctx.const(0, dt))  # empty bags give zeros
    m = ctx.emit(R.astype(member, dt))
    if psw is not None:
        rows = ctx.emit(R.multiply(rows, R.expand_dims(ctx.value(psw), 1)))
    total = ctx.emit(R.matmul(m, rows))
    if mode == "sum":
        return total
    count = R.maximum(R.sum(m, [1], True), ctx.const(1, dt))
    return R.divide(total, count)


def _full_like_dim(ctx, n):
    return ctx.emit(R.reshape(R.astype(R.shape_to_tensor(relax.ShapeExpr([ctx.dim(n)])), "int64"), [1])) \
        if not isinstance(n, int) else ctx.const([n], "int64")


def emit_nonzero(ctx, node):
    """Relax's nonzero gives [rank, count] (count known at run time): transposed to [count, rank]."""
    x = node.inputs[0]
    if len(x.shape) == 0:
        raise ctx.unsupported("nonzero of a 0-d tensor")
    coords = ctx.emit(R.nonzero(ctx.value(x)))
    # name the run-time count with the node's symbol so later ops see a shape expression
    coords = ctx.bb.match_cast(coords, relax.TensorType([len(x.shape), ctx.dim(node.attrs["count"])], "int64"))
    return R.permute_dims(coords, [1, 0])


def emit_unique(ctx, node):
    """Relax's unique (sorted) with inverse indices and counts; the run-time size gets the
    node's symbol, the inverse the input's shape."""
    x = node.inputs[0]
    res = ctx.emit(R.unique(R.reshape(ctx.value(x), [-1]), sorted=True, return_index=False, return_inverse=True,
                            return_counts=True, axis=None))
    n = ctx.dim(node.attrs["count"])
    values = ctx.bb.match_cast(ctx.emit(relax.TupleGetItem(res, 0)), relax.TensorType([n], tvm_dtype(x.dtype)))
    inverse = ctx.bb.match_cast(ctx.emit(relax.TupleGetItem(res, 1)), relax.TensorType([_numel(ctx, x)], "int64"))
    counts = ctx.bb.match_cast(ctx.emit(relax.TupleGetItem(res, 2)), relax.TensorType([n], "int64"))
    return [values, R.reshape(inverse, ctx.shape(x.shape)), counts]


def _numel(ctx, x: Value):
    total = 1
    for d in ctx.shape(x.shape):
        total = total * d
    return total


def emit_sort(ctx, node):
    x = node.inputs[0]
    axis = node.attrs.get("axis", -1) % len(x.shape)
    order = ctx.emit(R.argsort(ctx.value(x), axis, bool(node.attrs.get("descending", False)), "int64"))
    return [R.gather_elements(ctx.value(x), order, axis), order]


def emit_topk(ctx, node):
    x = node.inputs[0]
    axis = node.attrs.get("axis", -1) % len(x.shape)
    both = ctx.emit(R.topk(ctx.value(x), node.attrs["k"], axis, "both", bool(node.attrs.get("largest", True)),
                           "int64"))
    return [relax.TupleGetItem(both, 0), relax.TupleGetItem(both, 1)]


EMITTERS: dict[str, Emitter] = {
    "gather_elements": emit_gather_elements, "scatter_elements": emit_scatter_elements, "index": emit_index,
    "index_put": emit_index_put, "unique": emit_unique, "nonzero": emit_nonzero, "embedding_bag": emit_embedding_bag,
    "sort": emit_sort, "topk": emit_topk,
}
