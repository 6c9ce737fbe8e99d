"""TVM lowerings of the ops of ``compiler/ops/reduce.py``: the reductions, argmax, cumsum,
cumprod."""

from __future__ import annotations

from tvm.relax import op as R

from compiler.ir import DType

from .common import Emitter, tvm_dtype


# -- reductions --------------------------------------------------------------------------------
def _axes(axes, rank: int):
    if rank == 0:
        return None
    if not axes:
        return list(range(rank))
    return sorted({a % rank for a in axes})


def _reduce_emitter(fn) -> Emitter:
    def emit(ctx, node):
        x = node.inputs[0]
        axes = _axes(node.attrs.get("axes", ()), len(x.shape))
        if axes is None:
            return ctx.value(x)
        xv = ctx.value(x)
        if x.dtype == DType.bool:  # in bool, sum/max are "any" and prod/min are "all"
            any_ = fn in (R.sum, R.max)
            y = (R.max if any_ else R.min)(R.astype(xv, "uint8"), axes, node.attrs.get("keepdim", False))
            return R.astype(y, "bool")
        return fn(xv, axes, node.attrs.get("keepdim", False))
    return emit


def emit_argmax(ctx, node):
    x = node.inputs[0]
    return R.argmax(ctx.value(x), node.attrs["axis"] % max(len(x.shape), 1), node.attrs.get("keepdim", False))


def emit_cumsum(ctx, node):
    x = node.inputs[0]
    if len(x.shape) == 0:
        return ctx.value(x)
    return R.cumsum(ctx.value(x), node.attrs["axis"] % len(x.shape), tvm_dtype(x.dtype))


def emit_cumprod(ctx, node):
    x = node.inputs[0]
    if len(x.shape) == 0:
        return ctx.value(x)
    return R.cumprod(ctx.value(x), node.attrs["axis"] % len(x.shape), tvm_dtype(x.dtype))


EMITTERS: dict[str, Emitter] = {
    "reduce_sum": _reduce_emitter(R.sum), "reduce_mean": _reduce_emitter(R.mean),
    "reduce_max": _reduce_emitter(R.max), "reduce_min": _reduce_emitter(R.min),
    "reduce_prod": _reduce_emitter(R.prod), "argmax": emit_argmax, "cumsum": emit_cumsum, "cumprod": emit_cumprod,
}
