"""Elementwise ops: unary math and activations, binary arithmetic and comparisons, cast, where.

Binary ops take inputs of ONE dtype (the frontend makes PyTorch's type promotion explicit with
``cast`` nodes) and broadcast like numpy. Float math is computed in the input dtype, except where
numpy lacks a function (erf) and float64 is used then rounded back.
"""

from __future__ import annotations

import math

import numpy as np

from compiler import dims
from compiler.ir import DType, TensorType
from compiler.ops import Attr, defop


# -- type rules ------------------------------------------------------------------------------
def same_type(x: TensorType, **_) -> TensorType:
    return x


def float_type(x: TensorType, **_) -> TensorType:
    if not x.dtype.is_float:
        raise ValueError(f"expects a floating-point input, got {x.dtype}")
    return x


def broadcast_types(*types: TensorType) -> tuple[int, ...]:
    shape: tuple = ()
    for t in types:
        shape = dims.broadcast(shape, t.shape)
    return shape


def binary_type(a: TensorType, b: TensorType, **_) -> TensorType:
    if a.dtype != b.dtype:
        raise ValueError(f"inputs have different dtypes {a.dtype} and {b.dtype} (insert a cast)")
    return TensorType(a.dtype, broadcast_types(a, b))


def compare_type(a: TensorType, b: TensorType, **_) -> TensorType:
    return TensorType(DType.bool, binary_type(a, b).shape)


def bool_binary_type(a: TensorType, b: TensorType, **_) -> TensorType:
    if a.dtype != DType.bool or b.dtype != DType.bool:
        raise ValueError("expects bool inputs")
    return compare_type(a, b)


# -- unary -----------------------------------------------------------------------------------
def _unary(name: str, fn, infer=float_type, attrs=None):
    defop(name, ["x"], infer=infer, attrs=attrs, tags=("elementwise", "unary"))(fn)


def _erf(x: np.ndarray) -> np.ndarray:
    return np.frompyfunc(math.erf, 1, 1)(x.astype(np.float64)).astype(np.float64)


def _sigmoid(x):
    # Evaluated in float64 then rounded: avoids overflow warnings of exp(-x) for large |x|.
    x64 = x.astype(np.float64)
    return (0.5 * (1.0 + np.tanh(0.5 * x64))).astype(x.dtype)


def _gelu(x, approximate="none"):
    x64 = x.astype(np.float64)
    if approximate == "tanh":
        y = 0.5 * x64 * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x64 + 0.044715 * x64 ** 3)))
    elif approximate == "none":
        y = 0.5 * x64 * (1.0 + _erf(x64 / math.sqrt(2.0)))
    else:
        raise ValueError(f"gelu approximate must be 'none' or 'tanh', got {approximate!r}")
    return y.astype(x.dtype)


def _clamp(x, min=None, max=None):
    y = x
    if min is not None:
        y = np.maximum(y, np.asarray(min, dtype=x.dtype))
    if max is not None:
        y = np.minimum(y, np.asarray(max, dtype=x.dtype))
    return y.astype(x.dtype)


def _hardsigmoid(x):
    return np.clip(x / np.asarray(6, x.dtype) + np.asarray(0.5, x.dtype), 0, 1).astype(x.dtype)


_unary("neg", lambda x: np.negative(x), infer=same_type)
_unary("abs", lambda x: np.abs(x), infer=same_type)
_unary("exp", lambda x: np.exp(x))
_unary("log", lambda x: np.log(x))
_unary("sqrt", lambda x: np.sqrt(x))
_unary("rsqrt", lambda x: (np.asarray(1, x.dtype) / np.sqrt(x)).astype(x.dtype))
_unary("reciprocal", lambda x: (np.asarray(1, x.dtype) / x).astype(x.dtype))
_unary("sin", lambda x: np.sin(x))
_unary("cos", lambda x: np.cos(x))
_unary("tanh", lambda x: np.tanh(x))
_unary("erf", lambda x: _erf(x).astype(x.dtype))
_unary("floor", lambda x: np.floor(x))
_unary("ceil", lambda x: np.ceil(x))
_unary("sigmoid", _sigmoid)
_unary("relu", lambda x: np.maximum(x, np.zeros((), x.dtype)), infer=same_type)
_unary("silu", lambda x: (x * _sigmoid(x)).astype(x.dtype))
_unary("hardsigmoid", _hardsigmoid)
_unary("hardswish", lambda x: (x * _hardsigmoid(x)).astype(x.dtype))
_unary("gelu", _gelu, attrs={"approximate": Attr("str", "none")})
_unary("clamp", _clamp, infer=same_type,
       attrs={"min": Attr("optional_float", None), "max": Attr("optional_float", None)})
_unary("leaky_relu", lambda x, negative_slope=0.01:
       np.where(x >= 0, x, x * np.asarray(negative_slope, x.dtype)).astype(x.dtype),
       attrs={"negative_slope": Attr("float", 0.01)})


def _elu(x, alpha=1.0, scale=1.0, input_scale=1.0):
    x64 = x.astype(np.float64)
    return (scale * np.where(x64 > 0, x64, alpha * np.expm1(x64 * input_scale))).astype(x.dtype)


def _in_float64(fn):
    """``fn`` evaluated in float64 and rounded back: for functions whose float32 evaluation in
    numpy is less accurate than the backends' (and so would not be a fair spec)."""
    return lambda x: fn(x.astype(np.float64)).astype(x.dtype)


_unary("tan", lambda x: np.tan(x))
_unary("asin", lambda x: np.arcsin(x))
_unary("acos", lambda x: np.arccos(x))
_unary("atan", lambda x: np.arctan(x))
_unary("sinh", lambda x: np.sinh(x))
_unary("cosh", lambda x: np.cosh(x))
_unary("asinh", lambda x: np.arcsinh(x))
_unary("acosh", lambda x: np.arccosh(x))
_unary("atanh", lambda x: np.arctanh(x))
_unary("expm1", _in_float64(np.expm1))
_unary("log1p", _in_float64(np.log1p))
_unary("log2", _in_float64(np.log2))
_unary("log10", _in_float64(np.log10))
_unary("round", lambda x: np.round(x))  # half to even, like torch.round
_unary("trunc", lambda x: np.trunc(x))
_unary("elu", _elu, attrs={"alpha": Attr("float", 1.0), "scale": Attr("float", 1.0),
                           "input_scale": Attr("float", 1.0)})


def _isinf_type(x: TensorType, **_) -> TensorType:
    return TensorType(DType.bool, x.shape)


_unary("isinf", lambda x: np.isinf(x), infer=_isinf_type)


def _logical_not_type(x: TensorType, **_) -> TensorType:
    if x.dtype != DType.bool:
        raise ValueError("expects a bool input")
    return x


_unary("logical_not", lambda x: np.logical_not(x), infer=_logical_not_type)


def _cast_type(x: TensorType, dtype: DType) -> TensorType:
    return TensorType(dtype, x.shape)


@defop("cast", ["x"], infer=_cast_type, attrs={"dtype": Attr("dtype")}, tags=("elementwise", "unary"))
def cast(x, dtype):
    """Convert to ``dtype`` with PyTorch's rules: float -> int truncates toward zero."""
    return x.astype(dtype.numpy)


# -- binary ----------------------------------------------------------------------------------
def _binary(name: str, fn, infer=binary_type):
    defop(name, ["a", "b"], infer=infer, tags=("elementwise", "binary"))(fn)


def _div(a, b):
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError("div of integers: cast to float first (true division) or use floor_div")
    return (a / b).astype(a.dtype)


def _pow(a, b):
    return np.power(a, b).astype(a.dtype)


_binary("add", lambda a, b: (a + b).astype(a.dtype))
_binary("sub", lambda a, b: (a - b).astype(a.dtype))
_binary("mul", lambda a, b: (a * b).astype(a.dtype))
_binary("div", _div)
_binary("pow", _pow)
_binary("maximum", lambda a, b: np.maximum(a, b))
_binary("minimum", lambda a, b: np.minimum(a, b))
_binary("eq", lambda a, b: np.equal(a, b), infer=compare_type)
_binary("ne", lambda a, b: np.not_equal(a, b), infer=compare_type)
_binary("lt", lambda a, b: np.less(a, b), infer=compare_type)
_binary("le", lambda a, b: np.less_equal(a, b), infer=compare_type)
_binary("gt", lambda a, b: np.greater(a, b), infer=compare_type)
_binary("ge", lambda a, b: np.greater_equal(a, b), infer=compare_type)
_binary("logical_and", lambda a, b: np.logical_and(a, b), infer=bool_binary_type)
_binary("logical_or", lambda a, b: np.logical_or(a, b), infer=bool_binary_type)


def _int_type(a: TensorType, b: TensorType, **_) -> TensorType:
    t = binary_type(a, b)
    if t.dtype.is_float:
        raise ValueError(f"expects integer or bool inputs, got {t.dtype}")
    return t


def _float_binary_type(a: TensorType, b: TensorType, **_) -> TensorType:
    t = binary_type(a, b)
    if not t.dtype.is_float:
        raise ValueError(f"expects floating-point inputs, got {t.dtype}")
    return t


def _integer_divisor(b: np.ndarray) -> None:
    if np.issubdtype(b.dtype, np.integer) and not np.all(b):
        raise ZeroDivisionError("integer division by zero")  # torch raises too


def _fmod(a, b):
    """C-style remainder: the sign of the dividend (torch.fmod)."""
    _integer_divisor(b)
    return np.fmod(a, b).astype(a.dtype)


def _remainder(a, b):
    """Python-style remainder: the sign of the divisor (torch.remainder, ``%``)."""
    _integer_divisor(b)
    return np.remainder(a, b).astype(a.dtype)


def _floor_div(a, b):
    """Division rounded toward minus infinity (torch.floor_divide, ``//``, rounding_mode='floor')."""
    _integer_divisor(b)
    return np.floor_divide(a, b).astype(a.dtype)


def _trunc_div(a, b):
    """Division rounded toward zero (rounding_mode='trunc')."""
    _integer_divisor(b)
    if np.issubdtype(a.dtype, np.integer):
        q = np.abs(a.astype(np.int64)) // np.abs(b.astype(np.int64))
        return (np.sign(a.astype(np.int64)) * np.sign(b.astype(np.int64)) * q).astype(a.dtype)
    return np.trunc(a / b).astype(a.dtype)


_binary("fmod", _fmod)
_binary("remainder", _remainder)
_binary("floor_div", _floor_div)
_binary("trunc_div", _trunc_div)
_binary("atan2", lambda a, b: np.arctan2(a, b).astype(a.dtype), infer=_float_binary_type)
_binary("bitwise_and", lambda a, b: np.bitwise_and(a, b), infer=_int_type)
_binary("bitwise_or", lambda a, b: np.bitwise_or(a, b), infer=_int_type)
_binary("bitwise_xor", lambda a, b: np.bitwise_xor(a, b), infer=_int_type)


def _where_type(cond: TensorType, a: TensorType, b: TensorType) -> TensorType:
    if cond.dtype != DType.bool:
        raise ValueError("where condition must be bool")
    t = binary_type(a, b)
    return TensorType(t.dtype, broadcast_types(cond, a, b))


@defop("where", ["cond", "a", "b"], infer=_where_type, tags=("elementwise",))
def where(cond, a, b):
    """``a`` where ``cond`` is true, else ``b`` (broadcasting all three)."""
    return np.where(cond, a, b)
