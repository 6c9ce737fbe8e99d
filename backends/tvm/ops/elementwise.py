"""TVM lowerings of the ops of ``compiler/ops/elementwise.py``: unary math and activations (the
``UNARY`` lowerings, which fused activations reuse), cast, binary arithmetic / comparisons /
logic, where."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from tvm.relax import op as R

from compiler.ir import DType

from .common import Emitter, tvm_dtype


# -- unary lowerings (shared by unary emitters and fused activations) ---------------------------
# A lowering maps (ctx, x, dtype, attrs) -> relax expr.
def _f64(fn):
    """``fn`` evaluated in float64 and rounded back (the reference does so for these)."""
    def lower(ctx, x, dtype, attrs):
        y = fn(ctx, R.astype(x, "float64"), DType.float64, attrs)
        return R.astype(y, tvm_dtype(dtype))
    return lower


def _hardsigmoid(ctx, x, dtype, attrs):
    y = R.add(R.divide(x, ctx.const(6, dtype)), ctx.const(0.5, dtype))
    return bounds_first_min(ctx.const(1, dtype), bounds_first_max(ctx.const(0, dtype), y))


def _clamp(ctx, x, dtype, attrs):
    """Bounds by max/min with the bound first, which keeps NaN (see bounds_first_max)."""
    if attrs.get("min") is not None:
        x = bounds_first_max(ctx.const(np.asarray(attrs["min"]).astype(dtype.numpy), dtype), x)
    if attrs.get("max") is not None:
        x = bounds_first_min(ctx.const(np.asarray(attrs["max"]).astype(dtype.numpy), dtype), x)
    return x


def bounds_first_max(bound, x):
    """max(bound, x) that is NaN where x is, as PyTorch's relu/clamp are: TVM's LLVM
    codegen lowers float max(a, b) to ``select(a > b, a, b)``, an ordered compare that is false
    for NaN and so picks b. LLVM's fast-math flags would fold it; no target here sets them.
    Fused conv/linear epilogues use EPILOGUE instead: this order measured MobileNetV2 1.12x
    slower there (an isnan select, ~1.1x) and a fused epilogue sees NaN only when the model's
    inputs or weights hold one."""
    return R.maximum(bound, x)


def bounds_first_min(bound, x):
    """min(bound, x), NaN where x is (see bounds_first_max)."""
    return R.minimum(bound, x)


def _plain_clamp(ctx, x, dtype, attrs):
    if attrs.get("min") is not None:
        x = R.maximum(x, ctx.const(np.asarray(attrs["min"]).astype(dtype.numpy), dtype))
    if attrs.get("max") is not None:
        x = R.minimum(x, ctx.const(np.asarray(attrs["max"]).astype(dtype.numpy), dtype))
    return x


# Activations fused into a conv/linear (relu, relu6 = clamp): the bound second, LLVM's fastest
# form, which maps NaN to the bound (see bounds_first_max); every other activation as in UNARY.
EPILOGUE: dict[str, Callable] = {
    "relu": lambda ctx, x, dt, a: R.maximum(x, ctx.const(0, dt)),
    "clamp": _plain_clamp,
}


def emit_clamp(ctx, node):
    x = node.inputs[0]
    return _clamp(ctx, ctx.value(x), x.dtype, node.attrs)


def _nan_propagating(fn) -> Callable:
    """max/min that return NaN when either side is NaN, as PyTorch does; LLVM's max/min pick the
    other operand."""
    def nan_aware(a, b):
        return R.where(R.isnan(a), a, R.where(R.isnan(b), b, fn(a, b)))
    return nan_aware


def _gelu(ctx, x, dtype, attrs):
    approximate = attrs.get("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise ctx.unsupported(f"gelu approximate={approximate!r}")
    if dtype != DType.float32:  # the reference computes in float64
        return _f64(_gelu)(ctx, x, dtype, attrs) if dtype != DType.float64 else \
            (R.nn.gelu if approximate == "none" else R.nn.gelu_tanh)(x)
    return (R.nn.gelu if approximate == "none" else R.nn.gelu_tanh)(x)


def _leaky_relu(ctx, x, dtype, attrs):
    slope = ctx.const(attrs.get("negative_slope", 0.01), dtype)
    return R.where(R.greater_equal(x, ctx.const(0, dtype)), x, R.multiply(x, slope))


def _elu(ctx, x, dtype, attrs):
    alpha, scale, input_scale = (attrs.get(k, 1.0) for k in ("alpha", "scale", "input_scale"))
    neg = R.multiply(ctx.const(alpha, dtype),
                     R.subtract(R.exp(R.multiply(x, ctx.const(input_scale, dtype))), ctx.const(1, dtype)))
    return R.multiply(ctx.const(scale, dtype), R.where(R.greater(x, ctx.const(0, dtype)), x, neg))


def _sigmoid(ctx, x, dtype, attrs):
    return R.sigmoid(x)


def _simple(fn) -> Callable:
    return lambda ctx, x, dtype, attrs: fn(x)


def _log_base(base: float):
    return _f64(lambda ctx, x, dtype, attrs: R.divide(R.log(x), ctx.const(math.log(base), dtype)))


UNARY: dict[str, Callable] = {
    "neg": lambda ctx, x, dt, a: R.subtract(ctx.const(0, dt), x) if dt == DType.uint8 else R.negative(x),
    "abs": _simple(R.abs), "exp": _simple(R.exp), "log": _simple(R.log),
    "sqrt": _simple(R.sqrt), "rsqrt": _simple(R.rsqrt), "sin": _simple(R.sin), "cos": _simple(R.cos),
    "tanh": _simple(R.tanh), "erf": _simple(R.erf), "floor": _simple(R.floor), "ceil": _simple(R.ceil),
    "tan": _simple(R.tan), "asin": _simple(R.asin), "acos": _simple(R.acos), "atan": _simple(R.atan),
    # TVM's llvm codegen has no sinh/cosh intrinsic: exp form, in float64 (no cancellation issue near 0
    # at float32 precision)
    "sinh": _f64(lambda ctx, x, dt, a: R.multiply(R.subtract(R.exp(x), R.exp(R.negative(x))), ctx.const(0.5, dt))),
    "cosh": _f64(lambda ctx, x, dt, a: R.multiply(R.add(R.exp(x), R.exp(R.negative(x))), ctx.const(0.5, dt))),
    "asinh": _simple(R.asinh), "acosh": _simple(R.acosh),
    "atanh": _simple(R.atanh), "round": _simple(R.round), "trunc": _simple(R.trunc),
    "isinf": _simple(R.isinf), "logical_not": _simple(R.logical_not),
    "reciprocal": lambda ctx, x, dt, a: R.divide(ctx.const(1, dt), x),
    "relu": lambda ctx, x, dt, a: bounds_first_max(ctx.const(0, dt), x),
    "sigmoid": _sigmoid,
    "silu": lambda ctx, x, dt, a: R.multiply(x, R.sigmoid(x)),
    "hardsigmoid": _hardsigmoid,
    "hardswish": lambda ctx, x, dt, a: R.multiply(x, _hardsigmoid(ctx, x, dt, a)),
    "gelu": _gelu, "clamp": _clamp, "leaky_relu": _leaky_relu, "elu": _elu,
    "expm1": _f64(lambda ctx, x, dt, a: R.subtract(R.exp(x), ctx.const(1, dt))),
    "log1p": _f64(lambda ctx, x, dt, a: R.log(R.add(x, ctx.const(1, dt)))),
    "log2": _log_base(2.0), "log10": _log_base(10.0),
}


def _unary_emitter(op: str) -> Emitter:
    def emit(ctx, node):
        x = node.inputs[0]
        return UNARY[op](ctx, ctx.value(x), x.dtype, node.attrs)
    return emit


def emit_cast(ctx, node):
    x, dst = node.inputs[0], node.attrs["dtype"]
    if dst == DType.bool:  # nonzero test, not a bit truncation
        return R.not_equal(ctx.value(x), ctx.const(0, x.dtype))
    return R.astype(ctx.value(x), tvm_dtype(dst))


# -- binary ------------------------------------------------------------------------------------
def _binary_emitter(fn, bool_fn=None, float_fn=None) -> Emitter:
    def emit(ctx, node):
        a, b = (ctx.value(v) for v in node.inputs)
        if bool_fn is not None and node.inputs[0].dtype == DType.bool:
            return bool_fn(a, b)
        if float_fn is not None and node.inputs[0].dtype.is_float:
            return float_fn(a, b)
        return fn(a, b)
    return emit


def _not_equal(ctx, node):
    """``x != x`` is how isnan arrives; TVM's simplifier folds it to False, so it becomes isnan."""
    a, b = node.inputs
    if a is b and a.dtype.is_float:
        return R.isnan(ctx.value(a))
    if a.dtype == DType.bool:
        return R.logical_xor(ctx.value(a), ctx.value(b))
    return R.not_equal(ctx.value(a), ctx.value(b))


def _trunc_div(ctx, node):
    a, b = (ctx.value(v) for v in node.inputs)
    dtype = node.inputs[0].dtype
    if dtype.is_float:
        return R.trunc(R.divide(a, b))
    # floor quotient, plus one where the division is inexact and the signs differ
    q = ctx.emit(R.floor_divide(a, b))
    zero = ctx.const(0, dtype)
    inexact = R.not_equal(R.floor_mod(a, b), zero)
    signs_differ = R.logical_xor(R.less(a, zero), R.less(b, zero))  # not_equal on bools fails LLVM verification
    return R.where(R.logical_and(inexact, signs_differ), R.add(q, ctx.const(1, dtype)), q)


def _fmod(ctx, node):
    a, b = (ctx.value(v) for v in node.inputs)
    if node.inputs[0].dtype.is_float:
        return R.subtract(a, R.multiply(R.trunc(R.divide(a, b)), b))
    q = ctx.emit(_trunc_div(ctx, node))
    return R.subtract(a, R.multiply(q, b))


def emit_pow(ctx, node):
    a, b = (ctx.value(v) for v in node.inputs)
    dtype = node.inputs[0].dtype
    if dtype.is_float:
        return R.power(a, b)
    # integer power via float64 (exact for the magnitudes int tensors hold in practice)
    return R.astype(R.round(R.power(R.astype(a, "float64"), R.astype(b, "float64"))), tvm_dtype(dtype))


def emit_where(ctx, node):
    c, a, b = (ctx.value(v) for v in node.inputs)
    return R.where(c, a, b)


EMITTERS: dict[str, Emitter] = {
    **{op: _unary_emitter(op) for op in UNARY},
    "cast": emit_cast, "clamp": emit_clamp,
    # bool + bool is "or" and bool * bool is "and" in PyTorch; LLVM has no bool arithmetic
    "add": _binary_emitter(R.add, R.logical_or), "sub": _binary_emitter(R.subtract),
    "mul": _binary_emitter(R.multiply, R.logical_and),
    "div": _binary_emitter(R.divide), "pow": emit_pow,
    "maximum": _binary_emitter(R.maximum, R.logical_or, _nan_propagating(R.maximum)),
    "minimum": _binary_emitter(R.minimum, R.logical_and, _nan_propagating(R.minimum)),
    "eq": _binary_emitter(R.equal, lambda a, b: R.logical_not(R.logical_xor(a, b))),
    "ne": _not_equal,
    "lt": _binary_emitter(R.less, lambda a, b: R.logical_and(R.logical_not(a), b)),
    "le": _binary_emitter(R.less_equal, lambda a, b: R.logical_or(R.logical_not(a), b)),
    "gt": _binary_emitter(R.greater, lambda a, b: R.logical_and(a, R.logical_not(b))),
    "ge": _binary_emitter(R.greater_equal, lambda a, b: R.logical_or(a, R.logical_not(b))),
    "logical_and": _binary_emitter(R.logical_and), "logical_or": _binary_emitter(R.logical_or),
    "bitwise_and": _binary_emitter(R.bitwise_and, R.logical_and),
    "bitwise_or": _binary_emitter(R.bitwise_or, R.logical_or),
    "bitwise_xor": _binary_emitter(R.bitwise_xor, R.logical_xor),
    "floor_div": _binary_emitter(R.floor_divide), "remainder": _binary_emitter(R.floor_mod),
    "trunc_div": _trunc_div, "fmod": _fmod, "atan2": _binary_emitter(R.atan2),
    "where": emit_where,
}
