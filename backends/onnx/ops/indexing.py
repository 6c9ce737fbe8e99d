"""ONNX emitters of the indexing ops (``compiler/ops/indexing.py``): gathers, scatters, sorting,
bags and set ops."""

from __future__ import annotations

import numpy as np

from backends.onnx.ops.common import EmitContext, Emitter, _finish
from compiler import dims
from compiler.ir import DType, Node, Value


def _int64_indices(ctx: EmitContext, v: Value) -> str:
    name = ctx.value(v)
    return name if v.dtype == DType.int64 else ctx.cast(name, v.dtype, DType.int64, v.shape)


def emit_gather_elements(ctx: EmitContext, node: Node) -> None:
    x, index = node.inputs
    data = ctx.value(x)
    axis = node.attrs["axis"] % len(x.shape)
    others = [a for a in range(len(x.shape)) if a != axis and x.shape[a] != index.shape[a]]
    if others:  # PyTorch allows an index smaller than x on the other axes: cut x to it
        idx_shape = ctx.add("Shape", [_int64_indices(ctx, index)], dtype=DType.int64, shape=(len(x.shape),))
        ends = ctx.add("Gather", [idx_shape, ctx.ints(others, "axes")], dtype=DType.int64, shape=(len(others),))
        data = ctx.add("Slice", [data, ctx.ints([0] * len(others), "starts"), ends, ctx.ints(others, "axes")],
                       dtype=x.dtype)
    ctx.add("GatherElements", [data, _int64_indices(ctx, index)], node.output.name, axis=axis)


def emit_scatter_elements(ctx: EmitContext, node: Node) -> None:
    x, index, src = node.inputs
    src_name = ctx.value(src)
    if src.shape != index.shape:  # PyTorch uses only the leading part of a larger src
        rank = len(index.shape)
        src_name = ctx.add("Slice", [src_name, ctx.ints([0] * rank, "starts"),
                                     ctx.add("Shape", [_int64_indices(ctx, index)], dtype=DType.int64, shape=(rank,))],
                           dtype=src.dtype, shape=index.shape)
    reduction = node.attrs["reduction"]
    ctx.typed("ScatterElements", [ctx.value(x), _int64_indices(ctx, index), src_name], x.dtype, node.output.name,
              node.output.shape, cast=[0, 2], axis=node.attrs["axis"], reduction=reduction)


def _normalised_index(ctx: EmitContext, x: Value, axis: int, index: Value) -> str:
    """``index`` with negative entries counted from the end of ``x``'s dim ``axis``."""
    idx = _int64_indices(ctx, index)
    dim = x.shape[axis]
    size = ctx.scalar(dim, DType.int64) if isinstance(dim, int) else ctx.add(
        "Squeeze", [ctx.dim_tensor(dim), ctx.ints([0], "axes")], dtype=DType.int64, shape=())
    negative = ctx.add("Less", [idx, ctx.scalar(0, DType.int64)], dtype=DType.bool, shape=index.shape)
    return ctx.add("Where", [negative, ctx.add("Add", [idx, size], dtype=DType.int64, shape=None), idx],
                   dtype=DType.int64, shape=None)


def _stacked_indices(ctx: EmitContext, x: Value, indices, axes) -> tuple[str, tuple]:
    """The index tensors broadcast together and stacked on a new last axis, for GatherND /
    ScatterND over ``x`` transposed so that the indexed ``axes`` come first."""
    broadcast: tuple = ()
    for v in indices:
        broadcast = dims.broadcast(broadcast, v.shape)
    pieces = []
    for v, axis in zip(indices, axes):
        idx = _normalised_index(ctx, x, axis, v)
        if v.shape != broadcast:
            idx = ctx.add("Expand", [idx, ctx.shape_input(broadcast, v.shape, mode="expand")], dtype=DType.int64,
                          shape=broadcast)
        pieces.append(ctx.add("Unsqueeze", [idx, ctx.ints([-1], "axes")], dtype=DType.int64,
                              shape=broadcast + (1,)))
    stacked = pieces[0] if len(pieces) == 1 else ctx.add("Concat", pieces, dtype=DType.int64,
                                                          shape=broadcast + (len(pieces),), axis=-1)
    return stacked, broadcast


def _indexed_first(ctx: EmitContext, x: Value, axes: list[int]) -> tuple[str, list[int]]:
    perm = axes + [i for i in range(len(x.shape)) if i not in axes]
    if perm == list(range(len(x.shape))):
        return ctx.value(x), perm
    return ctx.add("Transpose", [ctx.value(x)], dtype=x.dtype, shape=tuple(x.shape[p] for p in perm),
                   perm=perm), perm


def emit_index(ctx: EmitContext, node: Node) -> None:
    """One index tensor: Gather on its axis. Several: GatherND over x with the indexed axes moved
    first, then the broadcast index dims moved to where numpy puts them."""
    x, *indices = node.inputs
    rank = len(x.shape)
    axes = [a % rank for a in node.attrs["axes"]]
    out = node.output
    if len(indices) == 1:
        ctx.add("Gather", [ctx.value(x), _normalised_index(ctx, x, axes[0], indices[0])], out.name, axis=axes[0])
        return
    data, _ = _indexed_first(ctx, x, axes)
    stacked, broadcast = _stacked_indices(ctx, x, indices, axes)
    adjacent = axes == list(range(axes[0], axes[0] + len(axes)))
    if not adjacent or axes[0] == 0:
        ctx.add("GatherND", [data, stacked], out.name)
        return
    gathered = ctx.add("GatherND", [data, stacked], dtype=x.dtype, shape=None)
    nb, lead = len(broadcast), axes[0]  # result is broadcast + rest; numpy keeps the leading dims first
    perm = list(range(nb, nb + lead)) + list(range(nb)) + list(range(nb + lead, len(out.shape)))
    ctx.add("Transpose", [gathered], out.name, perm=perm)


def emit_index_put(ctx: EmitContext, node: Node) -> None:
    """ScatterND into x with the indexed axes moved first (reduction add when accumulating),
    values broadcast to the indexed slice's shape, then the axes moved back."""
    x, values, *indices = node.inputs
    rank = len(x.shape)
    axes = [a % rank for a in node.attrs["axes"]]
    data, perm = _indexed_first(ctx, x, axes)
    stacked, broadcast = _stacked_indices(ctx, x, indices, axes)
    rest = tuple(x.shape[i] for i in range(rank) if i not in axes)
    adjacent = axes == list(range(axes[0], axes[0] + len(axes)))
    lead = axes[0] if adjacent else 0
    # The values are given in numpy's layout of x[indices]: bring them to broadcast + rest.
    numpy_shape = rest[:lead] + broadcast + rest[lead:]
    vals = ctx.value(values)
    if tuple(values.shape) != numpy_shape:
        vals = ctx.add("Expand", [vals, ctx.shape_input(numpy_shape, values.shape, mode="expand")], dtype=x.dtype,
                       shape=numpy_shape)
    if lead:
        nb = len(broadcast)
        to_front = list(range(lead, lead + nb)) + list(range(lead)) + list(range(lead + nb, len(numpy_shape)))
        vals = ctx.add("Transpose", [vals], dtype=x.dtype, shape=broadcast + rest, perm=to_front)
    reduction = "add" if node.attrs["accumulate"] else "none"
    inverse = [perm.index(i) for i in range(rank)]
    if inverse == list(range(rank)):
        ctx.typed("ScatterND", [data, stacked, vals], x.dtype, node.output.name, node.output.shape, cast=[0, 2],
                  reduction=reduction)
        return
    scattered = ctx.typed("ScatterND", [data, stacked, vals], x.dtype, None, None, cast=[0, 2], reduction=reduction)
    ctx.add("Transpose", [scattered], node.output.name, perm=inverse)


def _top_k(ctx: EmitContext, node: Node, k: str, axis: int, largest: bool, is_sorted: bool) -> None:
    x = node.inputs[0]
    values, indices = node.outputs
    cd = ctx.compute_dtype("TopK", x.dtype)
    if cd == x.dtype:
        ctx.add("TopK", [ctx.value(x), k], [values.name, indices.name], axis=axis, largest=int(largest),
                sorted=int(is_sorted))
        return
    v, i = ctx.fresh(f"{node.name}_values"), indices.name
    ctx.add("TopK", [ctx.cast(ctx.value(x), x.dtype, cd), k], [v, i], axis=axis, largest=int(largest),
            sorted=int(is_sorted))
    ctx.value_types[v] = (cd, values.shape)
    ctx.cast(v, cd, x.dtype, values.shape, out=values.name)


def emit_nonzero(ctx: EmitContext, node: Node) -> None:
    x = node.inputs[0]
    cd = ctx.compute_dtype("NonZero", x.dtype)
    coords = ctx.add("NonZero", [ctx.cast(ctx.value(x), x.dtype, cd)], dtype=DType.int64,
                     shape=(len(x.shape), node.attrs["count"]))
    ctx.add("Transpose", [coords], node.output.name, perm=[1, 0])


def emit_embedding_bag(ctx: EmitContext, node: Node) -> None:
    """Rows gathered, then scattered (add / max) into their bag. Row i belongs to the bag whose
    start is the last one <= i; rows past the last offset (include_last_offset) and padding rows
    are sent nowhere by zeroing (sum, mean) or -inf (max) and leaving the counts alone."""
    weight, indices, offsets, per_sample = (list(node.inputs) + [None])[:4]
    a = node.attrs
    out = node.output
    dtype, cd = weight.dtype, ctx.compute_dtype("ScatterElements", weight.dtype)
    n, bags, width = indices.shape[0], out.shape[0], weight.shape[1]
    idx, offs = _int64_indices(ctx, indices), _int64_indices(ctx, offsets)
    i64, b = DType.int64, DType.bool
    positions = ctx.add("Range", [ctx.scalar(0, i64), ctx.add("Squeeze", [ctx.add("Shape", [idx], dtype=i64,
                                                                                   shape=(1,))], dtype=i64,
                                                               shape=()), ctx.scalar(1, i64)], dtype=i64, shape=(n,))
    starts = offs
    if a["include_last_offset"]:
        starts = ctx.add("Slice", [offs, ctx.ints([0], "starts"), ctx.ints([-1], "ends")], dtype=i64, shape=(bags,))
    started = ctx.add("LessOrEqual", [ctx.add("Unsqueeze", [starts, ctx.ints([0], "axes")], dtype=i64),
                                      ctx.add("Unsqueeze", [positions, ctx.ints([1], "axes")], dtype=i64)],
                      dtype=b)  # [n, bags]
    bag = ctx.add("Sub", [ctx.add("ReduceSum", [ctx.cast(started, b, i64), ctx.ints([1], "axes")], dtype=i64,
                                  keepdims=0), ctx.scalar(1, i64)], dtype=i64, shape=(n,))
    keep = ctx.add("GreaterOrEqual", [bag, ctx.scalar(0, i64)], dtype=b, shape=(n,))
    if a["include_last_offset"]:
        last = ctx.add("Slice", [offs, ctx.ints([-1], "starts"), ctx.ints([2 ** 62], "ends")], dtype=i64, shape=(1,))
        keep = ctx.add("And", [keep, ctx.add("Less", [positions, last], dtype=b, shape=(n,))], dtype=b, shape=(n,))
    if a["padding_idx"] >= 0:
        keep = ctx.add("And", [keep, ctx.add("Not", [ctx.add("Equal", [idx, ctx.scalar(a["padding_idx"], i64)],
                                                               dtype=b, shape=(n,))], dtype=b, shape=(n,))],
                       dtype=b, shape=(n,))
    bag = ctx.add("Max", [bag, ctx.scalar(0, i64)], dtype=i64, shape=(n,))  # rows before any bag: masked anyway
    rows = ctx.cast(ctx.add("Gather", [ctx.value(weight), idx], dtype=dtype, shape=(n, width), axis=0), dtype, cd)
    if per_sample is not None:
        rows = ctx.add("Mul", [rows, ctx.add("Unsqueeze", [ctx.cast(ctx.value(per_sample), per_sample.dtype, cd),
                                                           ctx.ints([1], "axes")], dtype=cd)], dtype=cd)
    keep_col = ctx.add("Unsqueeze", [keep, ctx.ints([1], "axes")], dtype=b, shape=(n, 1))
    neutral = -np.inf if a["mode"] == "max" else 0.0
    rows = ctx.add("Where", [keep_col, rows, ctx.scalar(neutral, cd)], dtype=cd, shape=(n, width))
    target = ctx.add("Expand", [ctx.add("Unsqueeze", [bag, ctx.ints([1], "axes")], dtype=i64),
                                ctx.add("Shape", [rows], dtype=i64, shape=(2,))], dtype=i64, shape=(n, width))
    bag_shape = ctx.add("Concat", [ctx.add("Shape", [starts], dtype=i64, shape=(1,)), ctx.ints([width], "width")],
                        dtype=i64, shape=(2,), axis=0)
    init = ctx.add("Expand", [ctx.scalar(neutral, cd), bag_shape], dtype=cd, shape=(bags, width))
    reduction = "max" if a["mode"] == "max" else "add"
    pooled = ctx.add("ScatterElements", [init, target, rows], dtype=cd, shape=(bags, width), axis=0,
                     reduction=reduction)
    if a["mode"] != "sum":
        ones = ctx.cast(keep_col, b, cd)
        counts = ctx.add("ScatterElements", [ctx.add("Expand", [ctx.scalar(0.0, cd), bag_shape], dtype=cd),
                                             ctx.add("Expand", [ctx.add("Unsqueeze", [bag, ctx.ints([1], "axes")],
                                                                        dtype=i64), ctx.ints([n, 1], "shape")],
                                                     dtype=i64),
                                             ctx.add("Expand", [ones, ctx.ints([n, 1], "shape")], dtype=cd)],
                         dtype=cd, axis=0, reduction="add")
        counts = ctx.add("Slice", [counts, ctx.ints([0], "starts"), ctx.ints([1], "ends"), ctx.ints([1], "axes")],
                         dtype=cd, shape=(bags, 1))
        empty = ctx.add("Equal", [counts, ctx.scalar(0.0, cd)], dtype=b, shape=(bags, 1))
        if a["mode"] == "mean":
            pooled = ctx.add("Div", [pooled, ctx.add("Max", [counts, ctx.scalar(1.0, cd)], dtype=cd)], dtype=cd,
                             shape=(bags, width))
        pooled = ctx.add("Where", [empty, ctx.scalar(0.0, cd), pooled], dtype=cd, shape=(bags, width))
    _finish(ctx, pooled, cd, dtype, out.shape, out.name)


def emit_unique(ctx: EmitContext, node: Node) -> None:
    """ONNX Unique (sorted) on the flattened input; its inverse indices reshaped like the input."""
    x = node.inputs[0]
    values, inverse, counts = node.outputs
    cd = ctx.compute_dtype("Unique", x.dtype)
    flat = ctx.add("Reshape", [ctx.cast(ctx.value(x), x.dtype, cd), ctx.ints([-1], "flat")], dtype=cd)
    names = [ctx.fresh(f"{node.name}_{part}") for part in ("values", "first", "inverse")]
    ctx.add("Unique", [flat], names + [counts.name], sorted=1)
    ctx.value_types[names[0]] = (cd, values.shape)
    ctx.value_types[names[1]] = (DType.int64, values.shape)
    ctx.value_types[names[2]] = (DType.int64, None)
    if cd != x.dtype:
        ctx.cast(names[0], cd, x.dtype, values.shape, out=values.name)
    else:
        ctx.add("Identity", [names[0]], values.name)
    ctx.add("Reshape", [names[2], ctx.add("Shape", [ctx.value(x)], dtype=DType.int64, shape=(len(x.shape),))],
            inverse.name)


def emit_topk(ctx: EmitContext, node: Node) -> None:
    a = node.attrs
    _top_k(ctx, node, ctx.ints([a["k"]], "k"), a["axis"], a["largest"], a["sorted"])


def emit_sort(ctx: EmitContext, node: Node) -> None:
    """TopK over the whole axis: onnxruntime's TopK keeps equal values in index order, a stable sort."""
    x = node.inputs[0]
    axis = node.attrs["axis"] % len(x.shape)
    _top_k(ctx, node, ctx.dim_tensor(x.shape[axis]), axis, node.attrs["descending"], True)


# -- the table ---------------------------------------------------------------------------------
EMITTERS: dict[str, Emitter] = {
    "gather_elements": emit_gather_elements, "scatter_elements": emit_scatter_elements, "index": emit_index,
    "index_put": emit_index_put, "topk": emit_topk, "sort": emit_sort, "nonzero": emit_nonzero,
    "embedding_bag": emit_embedding_bag, "unique": emit_unique,
}
