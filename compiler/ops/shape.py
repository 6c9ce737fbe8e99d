"""Shape ops: reshape, transpose, concat, slice, expand. They move data, never change values."""

from __future__ import annotations

import numpy as np

from compiler import dims
from compiler.ir import TensorType
from compiler.ops import Attr, defop


def _reshape_type(x: TensorType, *, shape) -> TensorType:
    if x.is_static and all(isinstance(d, int) for d in shape):
        if int(np.prod(shape, dtype=np.int64)) != x.numel:
            raise ValueError(f"cannot reshape {x.shape} ({x.numel} elements) to {tuple(shape)}")
    return TensorType(x.dtype, tuple(shape))


@defop("reshape", ["x"], infer=_reshape_type, attrs={"shape": Attr("shape")}, tags=("shape",))
def reshape(x, *, shape):
    """Row-major reshape to ``shape`` (fully specified: no -1; symbolic dims allowed)."""
    return x.reshape(shape)


def _transpose_type(x: TensorType, *, perm) -> TensorType:
    if sorted(perm) != list(range(x.rank)):
        raise ValueError(f"perm {perm} is not a permutation of {x.rank} axes")
    return TensorType(x.dtype, tuple(x.shape[p] for p in perm))


@defop("transpose", ["x"], infer=_transpose_type, attrs={"perm": Attr("ints")}, tags=("shape",))
def transpose(x, *, perm):
    """Permute axes: output axis i is input axis perm[i]."""
    return np.ascontiguousarray(np.transpose(x, perm))


def _concat_type(*xs: TensorType, axis) -> TensorType:
    if not xs:
        raise ValueError("concat needs at least one input")
    rank = xs[0].rank
    axis = axis % rank
    if any(x.rank != rank or x.dtype != xs[0].dtype for x in xs):
        raise ValueError("concat inputs must share rank and dtype")
    total = 0
    for x in xs:
        total = dims.add(total, x.shape[axis])
    return TensorType(xs[0].dtype, xs[0].shape[:axis] + (total,) + xs[0].shape[axis + 1:])


@defop("concat", ["*xs"], infer=_concat_type, attrs={"axis": Attr("int")}, tags=("shape",))
def concat(*xs, axis):
    """Join along ``axis``."""
    return np.concatenate(xs, axis=axis)


def _slice_bounds(size: int, start: int, end: int, step: int) -> tuple[int, int, int]:
    return slice(start, end, step).indices(size)


_TO_THE_END = 2 ** 62  # an end at or past this means "to the end of the axis"


def symbolic_slice_bound(size: dims.Dim, bound: dims.Dim) -> dims.Dim:
    """A slice bound as a position in ``[0, size]`` when the size or the bound is symbolic:
    "to the end" is the size, a negative int counts from the end, anything else is taken as
    it is (torch.export has checked that it lies inside the axis)."""
    if isinstance(bound, int) and bound >= _TO_THE_END:
        return size
    if isinstance(bound, int) and bound < 0:
        return dims.add(size, bound)
    return bound


def _slice_type(x: TensorType, *, axis, start, end, step) -> TensorType:
    if step < 1:
        raise ValueError("slice step must be >= 1")
    axis = axis % x.rank
    size = x.shape[axis]
    if all(isinstance(d, int) for d in (size, start, end)):
        lo, hi, _ = _slice_bounds(size, start, end, step)
        out = max(0, -(-(hi - lo) // step))
    else:
        length = dims.sub(symbolic_slice_bound(size, end), symbolic_slice_bound(size, start))
        out = length if step == 1 else dims.floordiv(dims.add(length, step - 1), step)
    return TensorType(x.dtype, x.shape[:axis] + (out,) + x.shape[axis + 1:])


@defop("slice", ["x"], infer=_slice_type, tags=("shape",),
       attrs={"axis": Attr("int"), "start": Attr("dim", 0), "end": Attr("dim", 2 ** 63 - 1),
              "step": Attr("int", 1)})
def slice_(x, *, axis, start, end, step):
    """``x[..., start:end:step, ...]`` on one axis, Python clamping of out-of-range bounds.
    ``start`` and ``end`` may be symbolic dims (``position_ids[:, :seq]``); a symbolic bound
    must lie inside the axis."""
    index = [slice(None)] * x.ndim
    index[axis] = slice(start, end, step)
    return np.ascontiguousarray(x[tuple(index)])


def _expand_type(x: TensorType, *, shape) -> TensorType:
    try:
        out = dims.broadcast(x.shape, tuple(shape))
    except ValueError:
        raise ValueError(f"cannot expand {x.shape} to {tuple(shape)}") from None
    if out != tuple(shape):
        raise ValueError(f"cannot expand {x.shape} to {tuple(shape)}")
    return TensorType(x.dtype, tuple(shape))


@defop("expand", ["x"], infer=_expand_type, attrs={"shape": Attr("shape")}, tags=("shape",))
def expand(x, *, shape):
    """Broadcast to ``shape``."""
    return np.ascontiguousarray(np.broadcast_to(x, shape))


def _flip_type(x: TensorType, *, axes) -> TensorType:
    for a in axes:
        if not -x.rank <= a < x.rank:
            raise ValueError(f"flip axis {a} out of range for rank {x.rank}")
    return x


@defop("flip", ["x"], infer=_flip_type, attrs={"axes": Attr("ints")}, tags=("shape",))
def flip(x, *, axes):
    """Reverse the order of elements along ``axes``."""
    return np.ascontiguousarray(np.flip(x, axis=tuple(axes))) if axes else x.copy()


PAD_MODES = ("constant", "reflect", "replicate", "circular")
_NUMPY_PAD = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def _pad_type(x: TensorType, *, pads, mode, value) -> TensorType:
    if mode not in PAD_MODES:
        raise ValueError(f"pad mode must be one of {PAD_MODES}, got {mode!r}")
    if len(pads) != 2 * x.rank or any(p < 0 for p in pads):
        raise ValueError(f"pads must hold {2 * x.rank} non-negative numbers (begins then ends), got {pads}")
    shape = tuple(dims.add(dims.add(d, pads[i]), pads[i + x.rank]) if (pads[i] or pads[i + x.rank]) else d
                  for i, d in enumerate(x.shape))
    return TensorType(x.dtype, shape)


@defop("pad", ["x"], infer=_pad_type, tags=("shape",),
       attrs={"pads": Attr("ints"), "mode": Attr("str", "constant"), "value": Attr("float", 0.0)})
def pad(x, *, pads, mode, value):
    """Pad every axis ``i`` by ``pads[i]`` before and ``pads[rank + i]`` after: with ``value``
    (constant), mirrored without the edge (reflect), the edge repeated (replicate) or wrapped
    around (circular)."""
    widths = [(pads[i], pads[i + x.ndim]) for i in range(x.ndim)]
    if mode == "constant":
        return np.pad(x, widths, mode="constant", constant_values=np.asarray(value).astype(x.dtype))
    return np.pad(x, widths, mode=_NUMPY_PAD[mode])
