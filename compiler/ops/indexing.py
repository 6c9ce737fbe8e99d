"""Indexing ops: gather/scatter along an axis, advanced indexing and index_put, top-k and sort.

Indices are int64 and may be negative (counted from the end) where PyTorch allows it; an index
out of range is an error in the reference, as in PyTorch (backends may not check it).
"""

from __future__ import annotations

import numpy as np

from compiler import dims
from compiler.ir import DType, TensorType
from compiler.ops import Attr, defop


def _check_index(index: TensorType) -> None:
    if index.dtype not in (DType.int64, DType.int32):
        raise ValueError(f"indices must be int64 or int32, got {index.dtype}")


def _in_range(index: np.ndarray, size: int, what: str) -> np.ndarray:
    if index.size and (index.min() < -size or index.max() >= size):
        raise IndexError(f"{what} index out of range for a dim of size {size}")
    return np.where(index < 0, index + size, index).astype(np.int64)


# -- gather / scatter along one axis ---------------------------------------------------------------
def _gather_elements_type(x: TensorType, index: TensorType, *, axis) -> TensorType:
    _check_index(index)
    if index.rank != x.rank:
        raise ValueError(f"index rank {index.rank} differs from input rank {x.rank}")
    return TensorType(x.dtype, index.shape)


def _leading_part(x: np.ndarray, shape, keep_axis: int) -> np.ndarray:
    """``x`` cut to ``shape`` on every axis but ``keep_axis`` (PyTorch lets the index be smaller)."""
    return x[tuple(slice(None) if a == keep_axis else slice(0, n) for a, n in enumerate(shape))]


@defop("gather_elements", ["x", "index"], infer=_gather_elements_type, attrs={"axis": Attr("int")},
       tags=("indexing",))
def gather_elements(x, index, *, axis):
    """``out[i][j][k] = x[index[i][j][k]][j][k]`` for axis 0 (torch.gather; the index may be
    smaller than ``x`` on the other axes)."""
    axis = axis % x.ndim
    index = _in_range(index, x.shape[axis], "gather")
    return np.take_along_axis(_leading_part(x, index.shape, axis), index, axis=axis)


SCATTER_REDUCTIONS = ("none", "add", "mul", "max", "min")


def _scatter_type(x: TensorType, index: TensorType, src: TensorType, *, axis, reduction) -> TensorType:
    _check_index(index)
    if reduction not in SCATTER_REDUCTIONS:
        raise ValueError(f"scatter reduction must be one of {SCATTER_REDUCTIONS}, got {reduction!r}")
    if src.dtype != x.dtype or index.rank != x.rank or src.rank != x.rank:
        raise ValueError("scatter needs index and src of the input's rank, src of its dtype")
    return x


@defop("scatter_elements", ["x", "index", "src"], infer=_scatter_type,
       attrs={"axis": Attr("int"), "reduction": Attr("str", "none")}, tags=("indexing",))
def scatter_elements(x, index, src, *, axis, reduction):
    """A copy of ``x`` with ``src[i][j][k]`` written to (or combined by ``reduction`` into)
    ``out[index[i][j][k]][j][k]`` for axis 0 (torch.scatter / scatter_add / scatter_reduce with
    include_self). ``src`` may be larger than ``index``: only its leading part is used."""
    axis = axis % x.ndim
    index = _in_range(index, x.shape[axis], "scatter")
    src = src[tuple(slice(0, n) for n in index.shape)]
    target = list(np.indices(index.shape, sparse=False))
    target[axis] = index
    out = x.copy()
    where = tuple(t.reshape(-1) for t in target)
    values = src.reshape(-1)
    if reduction == "none":
        out[where] = values
    else:
        ufunc = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}[reduction]
        ufunc.at(out, where, values)
    return out


# -- advanced indexing -----------------------------------------------------------------------------
def _index_positions(x: TensorType, indices, axes) -> None:
    if len(indices) != len(axes) or not indices:
        raise ValueError("index needs one axis per index tensor")
    if sorted(set(a % x.rank for a in axes)) != sorted(a % x.rank for a in axes):
        raise ValueError("index axes must be distinct")
    for t in indices:
        _check_index(t)


def _advanced_shape(x: TensorType, indices, axes) -> tuple:
    """numpy's rule: the broadcast index shape replaces the indexed axes when they are adjacent,
    else goes in front."""
    axes = [a % x.rank for a in axes]
    broadcast: tuple = ()
    for t in indices:
        broadcast = dims.broadcast(broadcast, t.shape)
    rest = [d for i, d in enumerate(x.shape) if i not in axes]
    if sorted(axes) == list(range(min(axes), min(axes) + len(axes))) and axes == sorted(axes):
        first = min(axes)
        return tuple(x.shape[:first]) + broadcast + tuple(x.shape[first + len(axes):])
    return broadcast + tuple(rest)


def _index_type(x: TensorType, *indices: TensorType, axes) -> TensorType:
    _index_positions(x, indices, axes)
    return TensorType(x.dtype, _advanced_shape(x, indices, axes))


def _numpy_index(x: np.ndarray, indices, axes) -> tuple:
    key: list = [slice(None)] * x.ndim
    for i, a in zip(indices, axes):
        key[a % x.ndim] = _in_range(i, x.shape[a % x.ndim], "index")
    return tuple(key)


@defop("index", ["x", "*indices"], infer=_index_type, attrs={"axes": Attr("ints")}, tags=("indexing",))
def index(x, *indices, axes):
    """``x[..., i0, ..., i1, ...]``: integer index tensors at ``axes`` (broadcast together), other
    axes kept whole; numpy/PyTorch placement of the indexed dims (see ``_advanced_shape``)."""
    return np.ascontiguousarray(x[_numpy_index(x, indices, axes)])


def _index_put_type(x: TensorType, values: TensorType, *indices: TensorType, axes, accumulate) -> TensorType:
    _index_positions(x, indices, axes)
    if values.dtype != x.dtype:
        raise ValueError("index_put values must have the input's dtype")
    return x


@defop("index_put", ["x", "values", "*indices"], infer=_index_put_type,
       attrs={"axes": Attr("ints"), "accumulate": Attr("bool", False)}, tags=("indexing",))
def index_put(x, values, *indices, axes, accumulate):
    """A copy of ``x`` with ``x[indices] = values`` (broadcast), or ``+=`` with ``accumulate``
    (repeated indices then add up, as in PyTorch)."""
    out = x.copy()
    key = _numpy_index(x, indices, axes)
    if accumulate:
        np.add.at(out, key, np.broadcast_to(values, out[key].shape))
    else:
        out[key] = values
    return out


# -- top-k and sort --------------------------------------------------------------------------------
def _order(x: np.ndarray, axis: int, descending: bool) -> np.ndarray:
    """Stable ordering: equal values keep their index order in both directions (onnxruntime's
    TopK does the same, and PyTorch's stable sort)."""
    keys = -x if descending and x.dtype != np.bool_ else x
    if descending and x.dtype == np.bool_:
        keys = ~x
    if np.issubdtype(x.dtype, np.unsignedinteger) and descending:
        keys = np.iinfo(x.dtype).max - x
    return np.argsort(keys, axis=axis, kind="stable")


def _topk_type(x: TensorType, *, k, axis, largest, sorted) -> tuple[TensorType, TensorType]:
    axis = axis % max(x.rank, 1)
    size = x.shape[axis] if x.rank else 1
    if isinstance(size, int) and not 0 <= k <= size:
        raise ValueError(f"k={k} out of range for a dim of size {size}")
    shape = x.shape[:axis] + (k,) + x.shape[axis + 1:] if x.rank else ()
    return TensorType(x.dtype, shape), TensorType(DType.int64, shape)


@defop("topk", ["x"], infer=_topk_type, tags=("indexing",),
       attrs={"k": Attr("int"), "axis": Attr("int", -1), "largest": Attr("bool", True), "sorted": Attr("bool", True)})
def topk(x, *, k, axis, largest, sorted):
    """The ``k`` largest (or smallest) values along ``axis`` and their int64 indices, in order
    (ties: lower index first)."""
    order = np.take(_order(x, axis, largest), np.arange(k), axis=axis)
    return np.take_along_axis(x, order, axis=axis), order.astype(np.int64)


def _sort_type(x: TensorType, *, axis, descending) -> tuple[TensorType, TensorType]:
    return TensorType(x.dtype, x.shape), TensorType(DType.int64, x.shape)


@defop("sort", ["x"], infer=_sort_type, tags=("indexing",),
       attrs={"axis": Attr("int", -1), "descending": Attr("bool", False)})
def sort(x, *, axis, descending):
    """Values sorted along ``axis`` and the int64 indices that sort them (stable)."""
    order = _order(x, axis, descending)
    return np.take_along_axis(x, order, axis=axis), order.astype(np.int64)


# -- data-dependent sizes --------------------------------------------------------------------------
def _nonzero_type(x: TensorType, *, count) -> TensorType:
    if not dims.is_symbol(count):
        raise ValueError(f"nonzero needs a symbol naming its data-dependent row count, got {count!r}")
    return TensorType(DType.int64, (count, x.rank))


@defop("nonzero", ["x"], infer=_nonzero_type, attrs={"count": Attr("str")}, tags=("indexing",))
def nonzero(x, *, count):
    """The int64 coordinates of the non-zero (True) elements, one row each, in row-major order.
    The number of rows depends on the data: the symbol ``count`` names it, and the interpreter
    binds it from the result."""
    return np.argwhere(x).astype(np.int64).reshape(-1, x.ndim)


# -- embedding bags --------------------------------------------------------------------------------
BAG_MODES = ("sum", "mean", "max")


def _embedding_bag_type(weight: TensorType, indices: TensorType, offsets: TensorType,
                        per_sample_weights: TensorType | None = None, *, mode, include_last_offset,
                        padding_idx) -> TensorType:
    _check_index(indices)
    _check_index(offsets)
    if mode not in BAG_MODES:
        raise ValueError(f"embedding_bag mode must be one of {BAG_MODES}, got {mode!r}")
    if weight.rank != 2 or indices.rank != 1 or offsets.rank != 1:
        raise ValueError("embedding_bag needs weight[V, D], 1-d indices and 1-d offsets")
    if per_sample_weights is not None and mode != "sum":
        raise ValueError("per_sample_weights need mode 'sum'")
    bags = offsets.shape[0]
    if include_last_offset:
        bags = bags - 1 if isinstance(bags, int) else dims.sub(bags, 1)
    return TensorType(weight.dtype, (bags, weight.shape[1]))


@defop("embedding_bag", ["weight", "indices", "offsets", "per_sample_weights?"], infer=_embedding_bag_type,
       tags=("indexing",), attrs={"mode": Attr("str", "mean"), "include_last_offset": Attr("bool", False),
                                  "padding_idx": Attr("int", -1)})
def embedding_bag(weight, indices, offsets, per_sample_weights=None, *, mode, include_last_offset, padding_idx):
    """Bag b reduces the embedding rows ``indices[offsets[b]:offsets[b + 1]]`` (the last bag runs
    to the end unless ``include_last_offset``) by sum (weighted by ``per_sample_weights``), mean or
    max; rows equal to ``padding_idx`` (>= 0) are left out; an empty bag gives zeros."""
    bags = len(offsets) - 1 if include_last_offset else len(offsets)
    ends = list(offsets[1:]) + ([] if include_last_offset else [len(indices)])
    out = np.zeros((bags, weight.shape[1]), dtype=np.float64)
    for b in range(bags):
        picked = np.arange(offsets[b], ends[b])
        picked = picked[indices[picked] != padding_idx] if padding_idx >= 0 else picked
        if not picked.size:
            continue
        rows = weight[_in_range(indices[picked], weight.shape[0], "embedding")].astype(np.float64)
        if mode == "sum":
            scale = 1.0 if per_sample_weights is None else per_sample_weights[picked].astype(np.float64)[:, None]
            out[b] = (rows * scale).sum(axis=0)
        elif mode == "mean":
            out[b] = rows.mean(axis=0)
        else:
            out[b] = rows.max(axis=0)
    return out.astype(weight.dtype)


def _unique_type(x: TensorType, *, count) -> tuple[TensorType, TensorType, TensorType]:
    if not dims.is_symbol(count):
        raise ValueError(f"unique needs a symbol naming its data-dependent size, got {count!r}")
    return TensorType(x.dtype, (count,)), TensorType(DType.int64, x.shape), TensorType(DType.int64, (count,))


@defop("unique", ["x"], infer=_unique_type, attrs={"count": Attr("str")}, tags=("indexing",))
def unique(x, *, count):
    """The distinct values of ``x`` (flattened) in ascending order, each element's position in
    them (shaped like ``x``), and how often each occurs; ``count`` names the data-dependent size."""
    values, inverse, counts = np.unique(x.reshape(-1), return_inverse=True, return_counts=True)
    return values.astype(x.dtype), inverse.reshape(x.shape).astype(np.int64), counts.astype(np.int64)
