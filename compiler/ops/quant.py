"""Quantization ops with ONNX semantics: quantize_linear, dequantize_linear,
dynamic_quantize_linear and matmul_integer.

* ``quantize_linear(x, scale, zero_point)``: ``saturate(round_half_even(x / scale) + zero_point)``
  in the integer dtype ``dtype`` (int8, uint8, int16 or int32). ``x / scale`` is a float32
  division as ONNX and onnxruntime compute it (PyTorch multiplies by ``1 / scale``, which differs
  by one step at about one exact rounding tie in a million values).
* ``dequantize_linear(x, scale, zero_point)``: ``(x - zero_point) * scale`` in float32.
* ``scale`` and ``zero_point`` are 0-d (per tensor) or 1-d (per channel along ``axis``).
* Blocked ``dequantize_linear`` (``block_size`` B > 0, ONNX DequantizeLinear-21): ``scale`` and
  ``zero_point`` have x's rank, ``ceil(x.shape[axis] / B)`` entries along ``axis`` and x's size
  elsewhere; element i along ``axis`` uses entry ``i // B`` (the last block may be shorter).
* ``bits=4`` on ``dequantize_linear``: x holds int4 (uint4) values in an int8 (uint8) container,
  so in [-8, 7] ([0, 15]); backends may store two per byte. The IR has no 4-bit dtype (numpy
  has none) and the values, not the container, are the spec.
* ``dynamic_quantize_linear(x)``: x -> (uint8 tensor, scale, zero_point) from the range of x
  widened to include 0, like ONNX DynamicQuantizeLinear; an all-zero x gets scale 1 (onnxruntime's
  choice, the ONNX formula would divide by zero).
* ``matmul_integer(a, b, a_zero_point, b_zero_point)``: ``(a - a_zp) @ (b - b_zp)`` exactly, in
  int32 (ONNX MatMulInteger); ``b_zero_point`` may be per column of b.
"""

from __future__ import annotations

import numpy as np

from compiler.ir import DType, TensorType
from compiler.ops import Attr, defop
from compiler.ops.nn import _gemm_flops, _matmul_type

QUANT_DTYPES = (DType.int8, DType.uint8, DType.int16, DType.int32)


def integer_range(dtype: DType) -> tuple[int, int]:
    info = np.iinfo(dtype.numpy)
    return int(info.min), int(info.max)


def _check_qparams(op: str, x: TensorType, scale: TensorType, zero_point: TensorType | None, axis: int,
                   zp_dtype: DType | None) -> None:
    if scale.dtype != DType.float32:
        raise ValueError(f"{op} scale must be float32, got {scale.dtype}")
    if scale.rank > 1:
        raise ValueError(f"{op} scale must be 0-d (per tensor) or 1-d (per channel), got shape {scale.shape}")
    if zero_point is not None:
        if zero_point.shape != scale.shape:
            raise ValueError(f"{op} zero_point shape {zero_point.shape} differs from scale shape {scale.shape}")
        if zp_dtype is not None and zero_point.dtype != zp_dtype:
            raise ValueError(f"{op} zero_point is {zero_point.dtype}, expected {zp_dtype}")
    if scale.rank == 1:
        if not -x.rank <= axis < x.rank:
            raise ValueError(f"{op} axis {axis} out of range for rank {x.rank}")
        size = x.shape[axis]
        if isinstance(size, int) and isinstance(scale.shape[0], int) and size != scale.shape[0]:
            raise ValueError(f"{op} has {scale.shape[0]} scales for {size} channels along axis {axis}")


def _per_channel(param: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    """A 0-d param as is; a 1-d param shaped to broadcast along ``axis`` of a rank-``ndim`` array."""
    if param.ndim == 0:
        return param
    shape = [1] * ndim
    shape[axis % ndim] = param.shape[0]
    return param.reshape(shape)


# -- quantize / dequantize ---------------------------------------------------------------------
def _quantize_type(x: TensorType, scale: TensorType, zero_point: TensorType | None = None, *, axis,
                   dtype) -> TensorType:
    if dtype not in QUANT_DTYPES:
        raise ValueError(f"quantize_linear to {dtype} is not supported; use one of "
                         f"{', '.join(d.value for d in QUANT_DTYPES)}")
    if x.dtype != DType.float32:
        raise ValueError(f"quantize_linear expects a float32 input, got {x.dtype} (insert a cast)")
    _check_qparams("quantize_linear", x, scale, zero_point, axis, dtype)
    return TensorType(dtype, x.shape)


@defop("quantize_linear", ["x", "scale", "zero_point?"], infer=_quantize_type, tags=("quant",),
       attrs={"axis": Attr("int", 1), "dtype": Attr("dtype", DType.uint8)})
def quantize_linear(x, scale, zero_point=None, *, axis=1, dtype=DType.uint8):
    """``saturate(round_half_even(x / scale) + zero_point)`` in ``dtype``; per channel along
    ``axis`` when ``scale`` is 1-d; zero_point 0 when absent."""
    lo, hi = integer_range(dtype)
    s = _per_channel(scale, x.ndim, axis)
    zp = np.zeros((), np.float32) if zero_point is None else _per_channel(zero_point, x.ndim, axis)
    rounded = np.rint(np.divide(x, s, dtype=np.float32)).astype(np.float64)  # exact integers in float64
    return np.clip(rounded + zp.astype(np.float64), lo, hi).astype(dtype.numpy)


def _dequantize_type(x: TensorType, scale: TensorType, zero_point: TensorType | None = None, *,
                     axis, block_size=0, bits=None) -> TensorType:
    if x.dtype not in QUANT_DTYPES:
        raise ValueError(f"dequantize_linear expects an int8/uint8/int16/int32 input, got {x.dtype}")
    if bits is not None and (bits != 4 or x.dtype not in (DType.int8, DType.uint8)):
        raise ValueError(f"dequantize_linear bits={bits} is not supported: only bits=4 (int4/uint4 values "
                         f"in an int8/uint8 container), got a {x.dtype} input")
    if block_size:
        _check_blocked_qparams(x, scale, zero_point, axis, block_size)
    else:
        _check_qparams("dequantize_linear", x, scale, zero_point, axis, x.dtype)
    return TensorType(DType.float32, x.shape)


def _check_blocked_qparams(x: TensorType, scale: TensorType, zero_point: TensorType | None, axis: int,
                           block_size: int) -> None:
    if block_size < 0:
        raise ValueError(f"dequantize_linear block_size must be >= 0, got {block_size}")
    if scale.dtype != DType.float32:
        raise ValueError(f"dequantize_linear scale must be float32, got {scale.dtype}")
    if not -x.rank <= axis < x.rank:
        raise ValueError(f"dequantize_linear axis {axis} out of range for rank {x.rank}")
    if zero_point is not None and (zero_point.shape != scale.shape or zero_point.dtype != x.dtype):
        raise ValueError(f"dequantize_linear zero_point must be {x.dtype} shaped like scale {scale.shape}, "
                         f"got {zero_point}")
    expected = tuple(_blocks(d, block_size) if i == axis % x.rank else d for i, d in enumerate(x.shape))
    if scale.rank != x.rank or any(isinstance(e, int) and isinstance(s, int) and e != s
                                   for e, s in zip(expected, scale.shape)):
        raise ValueError(f"blocked dequantize_linear (block_size {block_size}, axis {axis}) of {x.shape} needs "
                         f"scales shaped {expected}, got {scale.shape}")


def _blocks(size, block_size: int):
    """How many blocks of ``block_size`` cover ``size`` (a symbolic size stays unknown)."""
    return -(-size // block_size) if isinstance(size, int) else size


def _per_block(param: np.ndarray, size: int, axis: int, block_size: int) -> np.ndarray:
    """A blocked param repeated ``block_size`` times along ``axis`` and cut to ``size`` entries."""
    return np.take(np.repeat(param, block_size, axis=axis), np.arange(size), axis=axis)


def _check_int4_values(x: np.ndarray) -> None:
    lo, hi = (-8, 7) if x.dtype == np.int8 else (0, 15)
    if x.size and (int(x.min()) < lo or int(x.max()) > hi):
        raise ValueError(f"dequantize_linear bits=4 input holds values outside [{lo}, {hi}]: "
                         f"[{int(x.min())}, {int(x.max())}]")


@defop("dequantize_linear", ["x", "scale", "zero_point?"], infer=_dequantize_type, tags=("quant",),
       attrs={"axis": Attr("int", 1), "block_size": Attr("int", 0), "bits": Attr("optional_int", None)})
def dequantize_linear(x, scale, zero_point=None, *, axis=1, block_size=0, bits=None):
    """``(x - zero_point) * scale`` in float32; per channel along ``axis`` when ``scale`` is 1-d,
    per block of ``block_size`` along ``axis`` when it is positive."""
    if bits == 4:
        _check_int4_values(x)
    if block_size:
        axis = axis % x.ndim
        s = _per_block(scale, x.shape[axis], axis, block_size)
        zp = None if zero_point is None else _per_block(zero_point, x.shape[axis], axis, block_size)
    else:
        s = _per_channel(scale, x.ndim, axis)
        zp = None if zero_point is None else _per_channel(zero_point, x.ndim, axis)
    shifted = x.astype(np.int64)
    if zp is not None:
        shifted = shifted - zp.astype(np.int64)
    return (shifted.astype(np.float32) * s).astype(np.float32)


# -- dynamic quantization ----------------------------------------------------------------------
def _dynamic_type(x: TensorType):
    if x.dtype != DType.float32:
        raise ValueError(f"dynamic_quantize_linear expects float32, got {x.dtype}")
    return (TensorType(DType.uint8, x.shape), TensorType(DType.float32, ()), TensorType(DType.uint8, ()))


def dynamic_qparams(x: np.ndarray) -> tuple[np.float32, np.uint8]:
    """uint8 scale and zero point covering [min(x, 0), max(x, 0)] (ONNX DynamicQuantizeLinear)."""
    lo = np.float32(min(0.0, float(x.min()))) if x.size else np.float32(0)
    hi = np.float32(max(0.0, float(x.max()))) if x.size else np.float32(0)
    scale = np.float32(1.0) if hi == lo else np.float32((hi - lo) / np.float32(255))
    zero_point = np.clip(np.rint(np.float32(0) - lo / scale), 0, 255)
    return scale, np.uint8(zero_point)


@defop("dynamic_quantize_linear", ["x"], infer=_dynamic_type, tags=("quant",))
def dynamic_quantize_linear(x):
    """(uint8 x, scale, zero_point) with the scale and zero point computed from x's range."""
    scale, zero_point = dynamic_qparams(x)
    q = quantize_linear(x, np.asarray(scale), np.asarray(zero_point), dtype=DType.uint8)
    return q, np.asarray(scale, np.float32), np.asarray(zero_point, np.uint8)


def _matmul_integer_type(a: TensorType, b: TensorType, a_zero_point: TensorType | None = None,
                         b_zero_point: TensorType | None = None) -> TensorType:
    for name, t in (("a", a), ("b", b)):
        if t.dtype not in (DType.int8, DType.uint8):
            raise ValueError(f"matmul_integer input {name} must be int8 or uint8, got {t.dtype}")
    for name, zp, t in (("a_zero_point", a_zero_point, a), ("b_zero_point", b_zero_point, b)):
        if zp is not None and (zp.dtype != t.dtype or zp.rank > 1):
            raise ValueError(f"matmul_integer {name} must be a 0-d or 1-d {t.dtype} tensor, got {zp}")
    if b_zero_point is not None and b_zero_point.rank == 1 and b_zero_point.shape[0] != b.shape[-1]:
        raise ValueError(f"matmul_integer b_zero_point has {b_zero_point.shape[0]} entries for "
                         f"{b.shape[-1]} columns")
    out = _matmul_type(TensorType(DType.float32, a.shape), TensorType(DType.float32, b.shape))
    return TensorType(DType.int32, out.shape)


@defop("matmul_integer", ["a", "b", "a_zero_point?", "b_zero_point?"], infer=_matmul_integer_type,
       tags=("gemm", "quant"), flops=_gemm_flops)
def matmul_integer(a, b, a_zero_point=None, b_zero_point=None):
    """``(a - a_zero_point) @ (b - b_zero_point)`` accumulated exactly, as int32; a 1-d
    ``b_zero_point`` is per column of b (a 1-d ``a_zero_point`` per row of a)."""
    a64 = a.astype(np.int64)
    b64 = b.astype(np.int64)
    if a_zero_point is not None:
        a64 = a64 - (a_zero_point.astype(np.int64)[:, None] if a_zero_point.ndim == 1 else a_zero_point)
    if b_zero_point is not None:
        b64 = b64 - b_zero_point.astype(np.int64)
    return np.matmul(a64, b64).astype(np.int32)


__all__ = ["QUANT_DTYPES", "dequantize_linear", "dynamic_qparams", "dynamic_quantize_linear", "integer_range",
           "matmul_integer", "quantize_linear"]
