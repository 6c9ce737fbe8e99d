"""Reductions over a set of axes (sum, mean, max, min, prod), argmax along one axis, and the
scans cumsum/cumprod."""

from __future__ import annotations

import numpy as np

from compiler.ir import DType, TensorType
from compiler.ops import Attr, defop

_REDUCE_ATTRS = {"axes": Attr("ints"), "keepdim": Attr("bool", False)}


def _reduce_type(x: TensorType, *, axes, keepdim) -> TensorType:
    norm = _normalise_axes(axes, x.rank)
    shape = tuple((1 if keepdim else None) if i in norm else d for i, d in enumerate(x.shape))
    return TensorType(x.dtype, tuple(d for d in shape if d is not None))


def _normalise_axes(axes, rank: int) -> set[int]:
    if not axes:
        return set(range(rank))  # empty axes: reduce everything, as PyTorch's dim=None
    for a in axes:
        if not -max(rank, 1) <= a < max(rank, 1):
            raise ValueError(f"axis {a} out of range for rank {rank}")
    return {a % max(rank, 1) for a in axes} if rank else set()


def _reduce(fn):
    def reference(x, *, axes, keepdim):
        axis = tuple(sorted(_normalise_axes(axes, x.ndim))) or None
        return np.asarray(fn(x, axis=axis, keepdims=keepdim)).astype(x.dtype)

    reference.__doc__ = f"numpy {fn.__name__} over ``axes`` (all axes when empty)."
    return reference


def _float_reduce_type(x: TensorType, **attrs) -> TensorType:
    if not x.dtype.is_float:
        raise ValueError(f"mean expects a floating-point input, got {x.dtype}")
    return _reduce_type(x, **attrs)


defop("reduce_sum", ["x"], infer=_reduce_type, attrs=_REDUCE_ATTRS, tags=("reduction",))(_reduce(np.sum))
defop("reduce_mean", ["x"], infer=_float_reduce_type, attrs=_REDUCE_ATTRS,
      tags=("reduction",))(_reduce(np.mean))
defop("reduce_max", ["x"], infer=_reduce_type, attrs=_REDUCE_ATTRS, tags=("reduction",))(_reduce(np.max))
defop("reduce_min", ["x"], infer=_reduce_type, attrs=_REDUCE_ATTRS, tags=("reduction",))(_reduce(np.min))
defop("reduce_prod", ["x"], infer=_reduce_type, attrs=_REDUCE_ATTRS, tags=("reduction",))(_reduce(np.prod))


def _cumulative_type(x: TensorType, *, axis) -> TensorType:
    if not -max(x.rank, 1) <= axis < max(x.rank, 1):
        raise ValueError(f"axis {axis} out of range for rank {x.rank}")
    return x


@defop("cumsum", ["x"], infer=_cumulative_type, attrs={"axis": Attr("int")}, tags=("scan",))
def cumsum(x, *, axis):
    """Running sum along ``axis`` (inclusive), in the input dtype."""
    return np.cumsum(x, axis=axis if x.ndim else None).astype(x.dtype).reshape(x.shape)


@defop("cumprod", ["x"], infer=_cumulative_type, attrs={"axis": Attr("int")}, tags=("scan",))
def cumprod(x, *, axis):
    """Running product along ``axis`` (inclusive), in the input dtype."""
    return np.cumprod(x, axis=axis if x.ndim else None).astype(x.dtype).reshape(x.shape)


def _argmax_type(x: TensorType, *, axis, keepdim) -> TensorType:
    return TensorType(DType.int64, _reduce_type(x, axes=(axis,), keepdim=keepdim).shape)


@defop("argmax", ["x"], infer=_argmax_type, attrs={"axis": Attr("int"), "keepdim": Attr("bool", False)},
       tags=("reduction",))
def argmax(x, *, axis, keepdim):
    """Index of the first maximum along ``axis`` (int64)."""
    return np.argmax(x, axis=axis, keepdims=keepdim).astype(np.int64)
