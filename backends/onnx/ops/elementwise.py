"""ONNX emitters of the elementwise ops (``compiler/ops/elementwise.py``): the unary lowerings
(``UNARY``, also used for the fused activations of linear and conv), binary and ternary ops."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from backends.onnx.ops.common import ONNX_DTYPES, ORT_CPU_TYPES, EmitContext, Emitter, _finish
from compiler.ir import DType, Node


# -- unary lowerings ---------------------------------------------------------------------------
# A lowering computes one unary op on an ONNX value: (ctx, x, dtype, shape, out, attrs) -> out.
# Unary EMITTERS and the fused activations of linear/conv both use them.
Lowering = Callable[[EmitContext, str, DType, tuple, "str | None", dict], str]


def _simple(op_type: str) -> Lowering:
    def lower(ctx, x, dtype, shape, out, attrs):
        return ctx.typed(op_type, [x], dtype, out, shape)
    return lower


def _lower_neg(ctx, x, dtype, shape, out, attrs):
    if dtype == DType.uint8:  # numpy wraps: 0 - x in uint8
        return ctx.add("Sub", [ctx.scalar(0, dtype), x], out, dtype=dtype, shape=shape)
    return ctx.typed("Neg", [x], dtype, out, shape)


def _lower_relu(ctx, x, dtype, shape, out, attrs):
    if dtype in ORT_CPU_TYPES["Relu"]:
        return ctx.add("Relu", [x], out, dtype=dtype, shape=shape)
    if dtype == DType.uint8:
        return ctx.add("Identity", [x], out, dtype=dtype, shape=shape)
    cd = ctx.compute_dtype("Max", dtype)
    return ctx.typed("Max", [x, ctx.scalar(0, cd)], dtype, out, shape, cast=[0])


def _lower_rsqrt(ctx, x, dtype, shape, out, attrs):
    cd = ctx.compute_dtype("Sqrt", dtype)
    root = ctx.add("Sqrt", [ctx.cast(x, dtype, cd)], dtype=cd, shape=shape)
    if cd == dtype:
        return ctx.add("Reciprocal", [root], out, dtype=dtype, shape=shape)
    return _finish(ctx, ctx.add("Reciprocal", [root], dtype=cd, shape=shape), cd, dtype, shape, out)


def _lower_silu(ctx, x, dtype, shape, out, attrs):
    cd = ctx.compute_dtype("Sigmoid", dtype)
    xc = ctx.cast(x, dtype, cd)
    sig = ctx.add("Sigmoid", [xc], dtype=cd, shape=shape)
    if cd == dtype:
        return ctx.add("Mul", [xc, sig], out, dtype=dtype, shape=shape)
    return _finish(ctx, ctx.add("Mul", [xc, sig], dtype=cd, shape=shape), cd, dtype, shape, out)


def _lower_gelu(ctx, x, dtype, shape, out, attrs):
    approximate = attrs.get("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise ctx.unsupported(f"gelu approximate={approximate!r}")
    if ctx.opset >= 20:
        return ctx.typed("Gelu", [x], dtype, out, shape, approximate=approximate)
    # Older opsets: 0.5 * x * (1 + erf(x / sqrt 2)) or the tanh form.
    cd = ctx.compute_dtype("Erf" if approximate == "none" else "Tanh", dtype)
    xc = ctx.cast(x, dtype, cd)

    def k(v):
        return ctx.scalar(v, cd)

    def op(name, *args):
        return ctx.add(name, list(args), dtype=cd, shape=shape)

    if approximate == "none":
        inner = op("Erf", op("Mul", xc, k(1.0 / math.sqrt(2.0))))
    else:
        cube = op("Mul", xc, op("Mul", xc, xc))
        inner = op("Tanh", op("Mul", k(math.sqrt(2.0 / math.pi)), op("Add", xc, op("Mul", k(0.044715), cube))))
    half_x = op("Mul", xc, k(0.5))
    if cd == dtype:
        return ctx.add("Mul", [half_x, op("Add", inner, k(1.0))], out, dtype=dtype, shape=shape)
    return _finish(ctx, op("Mul", half_x, op("Add", inner, k(1.0))), cd, dtype, shape, out)


def _lower_hardsigmoid(ctx, x, dtype, shape, out, attrs):
    return ctx.typed("HardSigmoid", [x], dtype, out, shape, alpha=1.0 / 6.0, beta=0.5)


def _lower_clamp(ctx, x, dtype, shape, out, attrs):
    cd = ctx.compute_dtype("Clip", dtype)

    def bound(v):
        if v is None:
            return ""
        return ctx.scalar(np.asarray(v, dtype=dtype.numpy).astype(cd.numpy), cd, "bound")

    return ctx.typed("Clip", [x, bound(attrs.get("min")), bound(attrs.get("max"))], dtype, out, shape, cast=[0])


def _lower_leaky_relu(ctx, x, dtype, shape, out, attrs):
    return ctx.typed("LeakyRelu", [x], dtype, out, shape, alpha=float(attrs.get("negative_slope", 0.01)))


def _lower_cast(ctx, x, dtype, shape, out, attrs):
    target: DType = attrs["dtype"]
    return ctx.add("Cast", [x], out, dtype=target, shape=shape, to=ONNX_DTYPES[target])


def _in_float64(build: Callable[[EmitContext, Callable, str], str]) -> Lowering:
    """A lowering computed in float64 and rounded back (expm1 and log1p lose everything to
    cancellation in float32 near zero)."""
    def lower(ctx, x, dtype, shape, out, attrs):
        f64 = DType.float64

        def op(name, *args, **kw):
            return ctx.add(name, list(args), dtype=f64, shape=shape, **kw)

        result = build(ctx, op, ctx.cast(x, dtype, f64))
        return _finish(ctx, result, f64, dtype, shape, out)
    return lower


_lower_expm1 = _in_float64(lambda ctx, op, x: op("Sub", op("Exp", x), ctx.scalar(1.0, DType.float64)))
_lower_log1p = _in_float64(lambda ctx, op, x: op("Log", op("Add", x, ctx.scalar(1.0, DType.float64))))
_lower_log2 = _in_float64(lambda ctx, op, x: op("Mul", op("Log", x), ctx.scalar(1 / math.log(2), DType.float64)))
_lower_log10 = _in_float64(lambda ctx, op, x: op("Mul", op("Log", x), ctx.scalar(1 / math.log(10), DType.float64)))


def _lower_trunc(ctx, x, dtype, shape, out, attrs):
    cd = ctx.compute_dtype("Floor", dtype)
    xc = ctx.cast(x, dtype, cd)
    magnitude = ctx.add("Floor", [ctx.add("Abs", [xc], dtype=cd, shape=shape)], dtype=cd, shape=shape)
    return _finish(ctx, ctx.add("Mul", [ctx.add("Sign", [xc], dtype=cd, shape=shape), magnitude], dtype=cd,
                                shape=shape), cd, dtype, shape, out)


def _lower_elu(ctx, x, dtype, shape, out, attrs):
    alpha, scale, input_scale = attrs.get("alpha", 1.0), attrs.get("scale", 1.0), attrs.get("input_scale", 1.0)
    if scale == 1.0 and input_scale == 1.0:
        return ctx.typed("Elu", [x], dtype, out, shape, alpha=float(alpha))
    cd = ctx.compute_dtype("Exp", dtype)  # selu and scaled forms: scale * (x > 0 ? x : alpha * expm1(x * s))
    xc = ctx.cast(x, dtype, cd)

    def op(name, *args):
        return ctx.add(name, list(args), dtype=cd, shape=shape)

    negative = op("Mul", op("Sub", op("Exp", op("Mul", xc, ctx.scalar(input_scale, cd))), ctx.scalar(1.0, cd)),
                  ctx.scalar(alpha, cd))
    chosen = ctx.add("Where", [ctx.add("Greater", [xc, ctx.scalar(0.0, cd)], dtype=DType.bool, shape=shape), xc,
                               negative], dtype=cd, shape=shape)
    return _finish(ctx, op("Mul", chosen, ctx.scalar(scale, cd)), cd, dtype, shape, out)


def _lower_isinf(ctx, x, dtype, shape, out, attrs):
    if not dtype.is_float:  # integers are never infinite: False in x's shape (0-d included)
        dims_ = ctx.add("Shape", [x], dtype=DType.int64, shape=(len(shape),))
        return ctx.add("Expand", [ctx.const(np.zeros((), bool), hint="false"), dims_], out, dtype=DType.bool,
                       shape=shape)
    return ctx.typed("IsInf", [x], dtype, out, shape, fixed_dtype=DType.bool)


UNARY: dict[str, Lowering] = {
    "tan": _simple("Tan"), "asin": _simple("Asin"), "acos": _simple("Acos"), "atan": _simple("Atan"),
    "sinh": _simple("Sinh"), "cosh": _simple("Cosh"), "asinh": _simple("Asinh"), "acosh": _simple("Acosh"),
    "atanh": _simple("Atanh"), "expm1": _lower_expm1, "log1p": _lower_log1p, "log2": _lower_log2,
    "log10": _lower_log10, "round": _simple("Round"), "trunc": _lower_trunc, "elu": _lower_elu,
    "isinf": _lower_isinf,
    "neg": _lower_neg, "abs": _simple("Abs"), "exp": _simple("Exp"), "log": _simple("Log"),
    "sqrt": _simple("Sqrt"), "rsqrt": _lower_rsqrt, "reciprocal": _simple("Reciprocal"),
    "sin": _simple("Sin"), "cos": _simple("Cos"), "tanh": _simple("Tanh"), "erf": _simple("Erf"),
    "floor": _simple("Floor"), "ceil": _simple("Ceil"), "sigmoid": _simple("Sigmoid"),
    "relu": _lower_relu, "silu": _lower_silu, "hardsigmoid": _lower_hardsigmoid,
    "hardswish": _simple("HardSwish"), "gelu": _lower_gelu, "clamp": _lower_clamp,
    "leaky_relu": _lower_leaky_relu, "logical_not": _simple("Not"), "cast": _lower_cast,
}


def _unary_emitter(op: str) -> Emitter:
    lower = UNARY[op]

    def emit(ctx: EmitContext, node: Node) -> None:
        x = node.inputs[0]
        lower(ctx, ctx.value(x), x.dtype, node.output.shape, node.output.name, node.attrs)

    emit.__name__ = f"emit_{op}"
    return emit


# -- binary and ternary ------------------------------------------------------------------------
def _binary_emitter(op_type: str, *, compare: bool = False, negate: bool = False) -> Emitter:
    def emit(ctx: EmitContext, node: Node) -> None:
        a, b = node.inputs
        out = node.output
        fixed = DType.bool if compare else None
        if negate:
            eq = ctx.typed(op_type, [ctx.value(a), ctx.value(b)], a.dtype, None, out.shape, fixed_dtype=fixed)
            ctx.add("Not", [eq], out.name, dtype=out.dtype, shape=out.shape)
        else:
            ctx.typed(op_type, [ctx.value(a), ctx.value(b)], a.dtype, out.name, out.shape, fixed_dtype=fixed)

    emit.__name__ = f"emit_{op_type}"
    return emit


_emit_plain_add = _binary_emitter("Add")


def emit_add(ctx: EmitContext, node: Node) -> None:
    """A float32 sum read only by a layer_norm is emitted as ``Sum``: onnxruntime 1.32 would fuse
    Add -> LayerNormalization into its contrib SkipLayerNormalization, whose CPU kernel is 2x
    slower than the two ops at [1, 32, 64] and 5x at [16, 32, 64] (16.7 vs 8.2 us, 173 vs 33 us,
    measured side by side), and the Sum kernel costs what Add costs. Standard-only models keep Add."""
    out = node.output
    read_by_norm = len(out.uses) == 1 and out.uses[0].node.op == "layer_norm" and out.uses[0].index == 0
    if ctx.standard_only or out.dtype != DType.float32 or not read_by_norm \
            or any(out is v for v in ctx.graph.outputs):
        _emit_plain_add(ctx, node)
        return
    ctx.add("Sum", [ctx.value(v) for v in node.inputs], out.name, dtype=out.dtype, shape=out.shape)


def _is_negative(ctx: EmitContext, x: str, dtype: DType, shape) -> str:
    return ctx.typed("Less", [x, ctx.scalar(0, dtype)], dtype, None, shape, fixed_dtype=DType.bool)


def _signs_differ(ctx: EmitContext, a: str, a_shape, b: str, b_shape, dtype: DType, shape) -> str:
    return ctx.add("Xor", [_is_negative(ctx, a, dtype, a_shape), _is_negative(ctx, b, dtype, b_shape)],
                   dtype=DType.bool, shape=shape)


def _nonzero_and(ctx: EmitContext, x: str, dtype: DType, cond: str, shape) -> str:
    zero = ctx.typed("Equal", [x, ctx.scalar(0, dtype)], dtype, None, shape, fixed_dtype=DType.bool)
    return ctx.add("And", [ctx.add("Not", [zero], dtype=DType.bool, shape=shape), cond], dtype=DType.bool, shape=shape)


def emit_fmod(ctx: EmitContext, node: Node) -> None:
    a, b = node.inputs
    ctx.typed("Mod", [ctx.value(a), ctx.value(b)], a.dtype, node.output.name, node.output.shape, fmod=1)


def emit_remainder(ctx: EmitContext, node: Node) -> None:
    """Sign of the divisor. Integers: ONNX Mod(fmod=0) is exactly that; floats: fmod, then add
    the divisor where the remainder is non-zero and its sign differs from the divisor's."""
    a, b = node.inputs
    out, dtype = node.output, a.dtype
    if not dtype.is_float:
        ctx.typed("Mod", [ctx.value(a), ctx.value(b)], dtype, out.name, out.shape, fmod=0)
        return
    r = ctx.typed("Mod", [ctx.value(a), ctx.value(b)], dtype, None, out.shape, fmod=1)
    fix = _nonzero_and(ctx, r, dtype, _signs_differ(ctx, r, out.shape, ctx.value(b), b.shape, dtype, out.shape),
                       out.shape)
    ctx.typed("Where", [fix, ctx.typed("Add", [r, ctx.value(b)], dtype, None, out.shape), r], dtype, out.name,
              out.shape, cast=[1, 2])


def emit_floor_div(ctx: EmitContext, node: Node) -> None:
    """Integers: truncating Div, minus one where the remainder is non-zero and the operands'
    signs differ. Floats: Floor(a / b)."""
    a, b = node.inputs
    out, dtype = node.output, a.dtype
    xa, xb = ctx.value(a), ctx.value(b)
    if dtype.is_float:
        q = ctx.typed("Div", [xa, xb], dtype, None, out.shape)
        ctx.typed("Floor", [q], dtype, out.name, out.shape)
        return
    q = ctx.typed("Div", [xa, xb], dtype, None, out.shape)
    r = ctx.typed("Mod", [xa, xb], dtype, None, out.shape, fmod=1)
    fix = _nonzero_and(ctx, r, dtype, _signs_differ(ctx, xa, a.shape, xb, b.shape, dtype, out.shape), out.shape)
    ctx.typed("Sub", [q, ctx.cast(fix, DType.bool, dtype)], dtype, out.name, out.shape)


def emit_trunc_div(ctx: EmitContext, node: Node) -> None:
    a, b = node.inputs
    out, dtype = node.output, a.dtype
    if not dtype.is_float:
        ctx.typed("Div", [ctx.value(a), ctx.value(b)], dtype, out.name, out.shape)  # C division truncates
        return
    q = ctx.typed("Div", [ctx.value(a), ctx.value(b)], dtype, None, out.shape)
    _lower_trunc(ctx, q, dtype, out.shape, out.name, {})


def emit_atan2(ctx: EmitContext, node: Node) -> None:
    """atan(y / x) moved to the right quadrant; the axes (x == 0) handled explicitly."""
    y, x = node.inputs
    out, dtype = node.output, y.dtype
    cd = ctx.compute_dtype("Atan", dtype)
    shape = out.shape
    yc, xc = ctx.cast(ctx.value(y), dtype, cd), ctx.cast(ctx.value(x), dtype, cd)

    def op(name, *args, **kw):
        return ctx.add(name, list(args), dtype=DType.bool if name in ("Less", "Greater", "Equal", "And") else cd,
                       shape=shape, **kw)

    zero = ctx.scalar(0.0, cd)
    if y.shape != shape:  # every intermediate below has the output's shape
        yc = ctx.add("Expand", [yc, ctx.shape_input(shape, y.shape, mode="expand")], dtype=cd, shape=shape)
    if x.shape != shape:
        xc = ctx.add("Expand", [xc, ctx.shape_input(shape, x.shape, mode="expand")], dtype=cd, shape=shape)
    base = op("Atan", op("Div", yc, xc))
    y_negative = op("Less", yc, zero)
    shift = op("Where", y_negative, ctx.scalar(-math.pi, cd), ctx.scalar(math.pi, cd))
    left = op("Where", op("Less", xc, zero), op("Add", base, shift), base)
    on_axis = op("Where", y_negative, ctx.scalar(-math.pi / 2, cd),
                 op("Where", op("Greater", yc, zero), ctx.scalar(math.pi / 2, cd), op("Mul", yc, zero)))
    result = op("Where", op("Equal", xc, zero), on_axis, left)
    _finish(ctx, result, cd, dtype, shape, out.name)


def _bitwise_emitter(int_op: str, bool_op: str) -> Emitter:
    def emit(ctx: EmitContext, node: Node) -> None:
        a, b = node.inputs
        op_type = bool_op if a.dtype == DType.bool else int_op
        ctx.typed(op_type, [ctx.value(a), ctx.value(b)], a.dtype, node.output.name, node.output.shape)

    emit.__name__ = f"emit_{int_op}"
    return emit


def emit_where(ctx: EmitContext, node: Node) -> None:
    cond, a, b = node.inputs
    ctx.typed("Where", [ctx.value(cond), ctx.value(a), ctx.value(b)], a.dtype, node.output.name,
              node.output.shape, cast=[1, 2])


# -- the table ---------------------------------------------------------------------------------
EMITTERS: dict[str, Emitter] = {
    **{op: _unary_emitter(op) for op in UNARY},
    "add": emit_add, "sub": _binary_emitter("Sub"), "mul": _binary_emitter("Mul"),
    "div": _binary_emitter("Div"), "pow": _binary_emitter("Pow"),
    "maximum": _binary_emitter("Max"), "minimum": _binary_emitter("Min"),
    "eq": _binary_emitter("Equal", compare=True), "ne": _binary_emitter("Equal", compare=True, negate=True),
    "lt": _binary_emitter("Less", compare=True), "le": _binary_emitter("LessOrEqual", compare=True),
    "gt": _binary_emitter("Greater", compare=True), "ge": _binary_emitter("GreaterOrEqual", compare=True),
    "logical_and": _binary_emitter("And"), "logical_or": _binary_emitter("Or"),
    "where": emit_where,
    "fmod": emit_fmod, "remainder": emit_remainder, "floor_div": emit_floor_div, "trunc_div": emit_trunc_div,
    "atan2": emit_atan2, "bitwise_and": _bitwise_emitter("BitwiseAnd", "And"),
    "bitwise_or": _bitwise_emitter("BitwiseOr", "Or"), "bitwise_xor": _bitwise_emitter("BitwiseXor", "Xor"),
}
