"""TVM lowerings of the ops of ``compiler/ops/quant.py``: quantize / dequantize (per tensor, per
channel, blocked int4), dynamic quantization, integer matmul."""

from __future__ import annotations

import numpy as np
from tvm.relax import op as R

from compiler.ir import Value

from .common import Emitter, tvm_dtype


# -- quantization (ONNX QuantizeLinear / DequantizeLinear semantics, see compiler/ops/quant.py) ----
def _per_channel(ctx, p: Value, axis: int, rank: int, dtype: str):
    """A 0-d (per tensor) or 1-d (per channel along ``axis``) parameter in ``dtype``, shaped to
    broadcast against a rank-``rank`` tensor."""
    v = ctx.emit(R.astype(ctx.value(p), dtype))
    if len(p.shape) == 0 or rank == 0:
        return v
    return R.reshape(v, [-1] + [1] * (rank - 1 - axis % rank))


def emit_quantize_linear(ctx, node):
    """saturate(round_half_even(x / scale) + zero_point): the division and rounding in float32
    (as the reference), the zero point and saturation in float64 (exact for int32 outputs)."""
    x, scale, zp = (list(node.inputs) + [None])[:3]
    rank, axis = len(x.shape), node.attrs.get("axis", 1)
    info = np.iinfo(node.output.dtype.numpy)
    y = ctx.emit(R.astype(R.round(R.divide(ctx.value(x), _per_channel(ctx, scale, axis, rank, "float32"))), "float64"))
    if zp is not None:
        y = ctx.emit(R.add(y, _per_channel(ctx, zp, axis, rank, "float64")))
    y = R.minimum(R.maximum(y, ctx.const(info.min, "float64")), ctx.const(info.max, "float64"))
    return R.astype(y, tvm_dtype(node.output.dtype))


def emit_dequantize_linear(ctx, node):
    """(x - zero_point) * scale: the shift in int64 (exact), the product in float32. Blocked
    (int4-weight) parameters are repeated block_size times along the axis, explicitly in float:
    int4 values stay in their int8 storage here."""
    x, scale, zp = (list(node.inputs) + [None])[:3]
    rank, axis = len(x.shape), node.attrs.get("axis", 1)
    block_size = node.attrs.get("block_size")

    def param(p: Value, dtype: str):
        if block_size:
            return _per_block(ctx, p, axis % rank, x.shape[axis % rank], block_size, dtype)
        return _per_channel(ctx, p, axis, rank, dtype)

    xv = ctx.emit(R.astype(ctx.value(x), "int64"))
    if zp is not None:
        xv = ctx.emit(R.subtract(xv, param(zp, "int64")))
    return R.multiply(R.astype(xv, "float32"), param(scale, "float32"))


def _per_block(ctx, p: Value, axis: int, size, block_size: int, dtype: str):
    """A blocked parameter (one entry per ``block_size`` elements along ``axis``) repeated to
    x's ``size`` along ``axis``; the last block may be cut short."""
    if not isinstance(size, int):
        raise ctx.unsupported("a blocked dequantize along a dimension of unknown size")
    v = ctx.emit(R.repeat(ctx.emit(R.astype(ctx.value(p), dtype)), block_size, axis))
    return ctx.emit(R.strided_slice(v, [axis], [0], [size]))


def emit_dynamic_quantize_linear(ctx, node):
    """uint8 scale and zero point from the range of x widened to 0 (scale 1 when the range is
    empty), then quantize_linear with them."""
    xv = ctx.value(node.inputs[0])
    f = lambda v: ctx.const(v, "float32")
    lo = ctx.emit(R.minimum(R.min(xv), f(0)))
    hi = ctx.emit(R.maximum(R.max(xv), f(0)))
    scale = ctx.emit(R.where(R.equal(hi, lo), f(1), R.divide(R.subtract(hi, lo), f(255))))
    zp = ctx.emit(R.minimum(R.maximum(R.round(R.subtract(f(0), R.divide(lo, scale))), f(0)), f(255)))
    q = R.minimum(R.maximum(R.add(R.round(R.divide(xv, scale)), zp), f(0)), f(255))
    return [R.astype(q, "uint8"), scale, R.astype(zp, "uint8")]


def emit_matmul_integer(ctx, node):
    """(a - a_zp) @ (b - b_zp) in int32 (wraps like the reference's int64 -> int32 cast)."""
    a, b, azp, bzp = (list(node.inputs) + [None, None])[:4]
    av = ctx.emit(R.astype(ctx.value(a), "int32"))
    bv = ctx.emit(R.astype(ctx.value(b), "int32"))
    if azp is not None:
        z = R.astype(ctx.value(azp), "int32")
        av = ctx.emit(R.subtract(av, R.reshape(z, [-1, 1]) if len(azp.shape) == 1 else z))
    if bzp is not None:
        bv = ctx.emit(R.subtract(bv, R.astype(ctx.value(bzp), "int32")))
    return R.matmul(av, bv)


EMITTERS: dict[str, Emitter] = {
    "quantize_linear": emit_quantize_linear, "dequantize_linear": emit_dequantize_linear,
    "dynamic_quantize_linear": emit_dynamic_quantize_linear, "matmul_integer": emit_matmul_integer,
}
