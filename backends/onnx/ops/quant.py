"""ONNX emitters of the quantization ops (``compiler/ops/quant.py``)."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from backends.onnx.ops.common import EmitContext, Emitter
from compiler.ir import DType, Node, Value


# -- quantization ------------------------------------------------------------------------------
# One ONNX op per IR op. onnxruntime fuses DequantizeLinear -> Conv/Gemm/MatMul -> QuantizeLinear
# into QLinearConv / QGemm / QLinearMatMul and DynamicQuantizeLinear -> MatMulInteger -> Cast ->
# Mul into DynamicQuantizeMatMul, so the quantization pass's IR form is also the fast ONNX form.
def _axis_attr(node: Node) -> int | None:
    """ONNX ``axis`` only for per-channel parameters (per-tensor ones ignore it)."""
    scale = node.inputs[1]
    return node.attrs["axis"] % len(node.inputs[0].shape) if scale.shape else None


def _check_quant_dtype(ctx: EmitContext, dtype: DType, op_type: str) -> None:
    if dtype == DType.int32 and op_type == "QuantizeLinear":
        raise ctx.unsupported("ONNX QuantizeLinear has no int32 output; quantize int32 values (biases) "
                              "ahead of time and keep only their DequantizeLinear")
    if dtype == DType.int16 and ctx.opset < 21:
        raise ctx.unsupported(f"int16 {op_type} needs ONNX opset 21 or newer (pass --opset 21)")


def emit_quantize_linear(ctx: EmitContext, node: Node) -> None:
    x, scale, zp = (list(node.inputs) + [None])[:3]
    _check_quant_dtype(ctx, node.attrs["dtype"], "QuantizeLinear")
    zp_name = ctx.value(zp) if zp is not None else ctx.const(np.zeros(scale.shape, node.attrs["dtype"].numpy),
                                                             hint="zero_point")
    ctx.add("QuantizeLinear", [ctx.value(x), ctx.value(scale), zp_name], node.output.name, axis=_axis_attr(node))


def emit_dequantize_linear(ctx: EmitContext, node: Node) -> None:
    x, scale, zp = (list(node.inputs) + [None])[:3]
    _check_quant_dtype(ctx, x.dtype, "DequantizeLinear")
    block_size = node.attrs.get("block_size") or None
    if block_size and ctx.opset < 21:
        raise ctx.unsupported("blocked DequantizeLinear (int4-weight) needs ONNX opset 21 or newer")
    safe = None if block_size else _pair_safe_weight(ctx, x, zp, scale.shape)
    if safe:
        names = [safe[0], ctx.value(scale), safe[1]]
    else:
        names = [_int4_initializer(ctx, v) if _packs_int4(node, v) else ctx.value(v) for v in (x, scale, zp)]
    ctx.add("DequantizeLinear", names, node.output.name, axis=_axis_attr(node), block_size=block_size)


# onnxruntime's u8 x s8 kernels on x86 CPUs without VNNI (AVX2, AVX-512F) add two adjacent u8 * s8
# products into a saturating int16 lane (vpmaddubsw): 2 * 255 * w fits only for w in [-64, 63]
# (exact outputs there; off by thousands otherwise). A constant int8 weight with a value outside that
# range is stored as uint8 (value + 128, zero point + 128): the same dequantized values and integer
# products, which onnxruntime runs on its u8 x u8 kernels (16-bit operands, 32-bit sums: exact on
# every CPU, slower than u8 x s8). The quantize pass makes 7-bit weights, which keep the fast kernels;
# this covers int8 weights from elsewhere (PT2E imports, hand-built matmul_integer).
PAIR_SAFE_INT8 = (-64, 63)


def _pair_safe_weight(ctx: EmitContext, x: Value, zp: Value | None, zp_shape: tuple) -> tuple[str, str] | None:
    """(x, zero point) names of the uint8 form of a constant int8 ``x`` holding a value outside
    PAIR_SAFE_INT8, else None. A computed zero point (a PT2E import casts its int64 one) is moved
    by ONNX ops, which onnxruntime folds at load."""
    if x.dtype != DType.int8 or not x.is_const or not x.const.size:
        return None
    if PAIR_SAFE_INT8[0] <= int(x.const.min()) and int(x.const.max()) <= PAIR_SAFE_INT8[1]:
        return None
    name = f"{x.name}_as_uint8"
    if name not in ctx.initializers:
        ctx._add_initializer(name, (x.const.astype(np.int16) + 128).astype(np.uint8))
    if zp is None or zp.is_const:
        zero = np.zeros(zp_shape, np.int16) if zp is None else zp.const.astype(np.int16)
        return name, ctx.const(zero + 128, DType.uint8, hint="zero_point")
    wide = ctx.add("Cast", [ctx.value(zp)], to=TensorProto.INT16, dtype=DType.int16, shape=tuple(zp.shape))
    moved = ctx.add("Add", [wide, ctx.const(128, DType.int16)], dtype=DType.int16, shape=tuple(zp.shape))
    return name, ctx.add("Cast", [moved], to=TensorProto.UINT8, dtype=DType.uint8, shape=tuple(zp.shape))


def _packs_int4(node: Node, v: Value | None) -> bool:
    """x and zero point of a ``bits=4`` dequantize of a constant: stored as ONNX INT4/UINT4 (a
    run-time x stays int8, and its zero point must have its type)."""
    x, scale = node.inputs[:2]
    return node.attrs.get("bits") == 4 and x.is_const and v is not None and v is not scale and v.is_const


def _int4_initializer(ctx: EmitContext, v: Value) -> str:
    """``v`` (int4 values held in int8, or uint4 in uint8) as an INT4/UINT4 initializer, two
    values a byte, the first in the low nibble (ONNX's packing); a run-time x stays int8, which
    DequantizeLinear dequantizes to the same floats."""
    if v.name not in ctx.initializers:
        flat = np.asarray(v.const).reshape(-1).astype(np.uint8) & 0x0F  # two's complement nibbles
        if flat.size % 2:
            flat = np.append(flat, np.uint8(0))
        packed = (flat[0::2] | (flat[1::2] << 4)).astype(np.uint8)
        kind = TensorProto.INT4 if v.dtype == DType.int8 else TensorProto.UINT4
        ctx.initializers[v.name] = helper.make_tensor(v.name, kind, list(v.shape), packed.tobytes(), raw=True)
        ctx.const_arrays[v.name] = np.asarray(v.const)
        ctx.value_types[v.name] = (v.dtype, tuple(v.shape))
    return v.name


def emit_dynamic_quantize_linear(ctx: EmitContext, node: Node) -> None:
    ctx.add("DynamicQuantizeLinear", [ctx.value(node.inputs[0])], [o.name for o in node.outputs])


def emit_matmul_integer(ctx: EmitContext, node: Node) -> None:
    a, b, a_zp, b_zp = (list(node.inputs) + [None, None])[:4]
    safe = _pair_safe_weight(ctx, b, b_zp, ()) if a.dtype == DType.uint8 else None  # s8 x s8 does not pair u8 * s8
    b_name, b_zp_name = safe or (ctx.value(b), ctx.value(b_zp))
    ctx.add("MatMulInteger", [ctx.value(a), b_name, ctx.value(a_zp), b_zp_name], node.output.name)


# -- the table ---------------------------------------------------------------------------------
EMITTERS: dict[str, Emitter] = {
    "quantize_linear": emit_quantize_linear, "dequantize_linear": emit_dequantize_linear,
    "dynamic_quantize_linear": emit_dynamic_quantize_linear, "matmul_integer": emit_matmul_integer,
}
