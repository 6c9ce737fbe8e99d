"""The ONNX emitter: IR ``Graph`` -> ``onnx.ModelProto`` (run by onnxruntime's CPU provider).

``EMITTERS`` is a table from IR op name to a function that appends the ONNX nodes for one IR
node to an ``EmitContext``. The op registry's numpy references are the spec: where an ONNX
operator differs (dtype support of onnxruntime's CPU kernels, fused activations, ceil-mode
pooling, ...) the emitter composes or converts, and where it cannot express an attribute
combination it raises ``UnsupportedOpError``.

Naming: ONNX value names are the IR value names; the ONNX node producing an IR node's output
carries the IR node's name, helper nodes are named after it ("conv_3_Add"). Every value gets
value_info (dtype and shape, symbolic dims as ``dim_param``) and the model passes
``onnx.checker.check_model(full_check=True)`` before it is returned.

This module imports onnx and numpy only: no torch, no onnxruntime.
"""

from __future__ import annotations

import ast
import math
import re
from typing import Callable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from compiler import dims
from compiler.errors import CompileError, UnsupportedOpError
from compiler.ir import DType, Graph, Node, Value
from compiler.ops.nn import activation_op, adaptive_bins

# onnx 1.23 defines opset 28 and onnxruntime 1.32 has a CPU kernel for every op at the version
# opset 28 selects (checked against onnxruntime's kernel registry: only the deprecated Scatter
# and Upsample lack one); onnxruntime also loads such models without an "under development"
# warning. Opset 18 is the oldest we emit (reductions take axes as an input from 18 on).
DEFAULT_OPSET = 28
MIN_OPSET = 18
STAGE = "the ONNX backend"
CONTRIB = "com.microsoft"  # onnxruntime's contrib operator domain
INT64_MAX = 2 ** 63 - 1
INT64_MIN = -(2 ** 63)


class OnnxEmitError(CompileError):
    """The emitted ONNX model failed onnx's checker (a backend bug); names the IR node."""


# -- dtypes ------------------------------------------------------------------------------------
ONNX_DTYPES: dict[DType, int] = {
    DType.float16: TensorProto.FLOAT16, DType.float32: TensorProto.FLOAT, DType.float64: TensorProto.DOUBLE,
    DType.bfloat16: TensorProto.BFLOAT16, DType.int8: TensorProto.INT8, DType.int16: TensorProto.INT16,
    DType.int32: TensorProto.INT32, DType.int64: TensorProto.INT64, DType.uint8: TensorProto.UINT8,
    DType.bool: TensorProto.BOOL,
}

_f16, _bf16, _f32, _f64 = DType.float16, DType.bfloat16, DType.float32, DType.float64
_i8, _i16, _i32, _i64, _u8, _b = DType.int8, DType.int16, DType.int32, DType.int64, DType.uint8, DType.bool
_FLOATS = frozenset({_f32, _f64})
_F32 = frozenset({_f32})
_ARITH = frozenset({_f32, _f64, _i8, _i16, _i32, _i64, _u8})
_MINMAX = frozenset({_f16, _f32, _f64, _i8, _i32, _i64, _u8})

# Element types onnxruntime's CPU kernels implement, per ONNX op (onnxruntime 1.32, read from
# its kernel registry). Ops not listed (data movement, Cast, Shape, ...) take every IR dtype.
# An IR dtype outside the set is computed in the first wider type of ``_WIDER`` that is in it.
ORT_CPU_TYPES: dict[str, frozenset[DType]] = {
    "Neg": frozenset({_f32, _f64, _i8, _i16, _i32, _i64}),
    "Abs": _ARITH,
    "Relu": frozenset({_f32, _f64, _i8, _i32}),
    "Add": _ARITH, "Sub": _ARITH, "Mul": _ARITH, "Div": _ARITH,
    "Pow": frozenset({_f32, _f64, _i32, _i64}),
    "Max": _MINMAX, "Min": _MINMAX, "Clip": _MINMAX,
    "Equal": _ARITH | {_b},
    "Less": _ARITH, "LessOrEqual": _ARITH, "Greater": _ARITH, "GreaterOrEqual": _ARITH,
    "Where": frozenset({_f32, _f64, _i8, _i32, _i64, _u8}),
    "ReduceSum": frozenset({_f32, _f64, _i32, _i64}),
    "ReduceMean": frozenset({_f32, _f64, _i32, _i64}),
    "ReduceMax": frozenset({_b, _f32, _f64, _i8, _i32, _i64, _u8}),
    "ReduceMin": frozenset({_b, _f32, _f64, _i8, _i32, _i64, _u8}),
    "ArgMax": frozenset({_f32, _f64, _i8, _i32, _i64, _u8}),
    "MatMul": frozenset({_f32, _f64, _i32, _i64}),
    "Gemm": _FLOATS,
    "MaxPool": frozenset({_f32, _f64, _i8, _u8}),
    "Exp": _FLOATS, "Log": _FLOATS, "Sqrt": _FLOATS, "Reciprocal": _FLOATS, "Sin": _FLOATS,
    "Cos": _FLOATS, "Tanh": _FLOATS, "Floor": _FLOATS, "Ceil": _FLOATS, "Sigmoid": _FLOATS,
    "Softmax": _FLOATS, "LogSoftmax": _FLOATS, "BatchNormalization": _FLOATS,
    "LayerNormalization": frozenset({_f16, _bf16, _f32, _f64}),
    "Erf": _F32, "Gelu": _F32, "Conv": _F32, "AveragePool": _F32, "GlobalAveragePool": _F32,
    "HardSigmoid": _F32, "HardSwish": _F32, "LeakyRelu": _F32,
    "Trilu": frozenset({_b, _f32, _f64, _i32, _i64}),
    "Not": frozenset({_b}), "And": frozenset({_b}), "Or": frozenset({_b}), "Xor": frozenset({_b}),
    "Tan": _F32, "Asin": _F32, "Acos": _F32, "Atan": _F32, "Sinh": _F32, "Cosh": _F32, "Asinh": _F32,
    "Acosh": _F32, "Atanh": _F32, "Round": _FLOATS, "IsInf": _FLOATS, "Sign": _ARITH, "Elu": _F32,
    "Mod": _ARITH, "CumSum": frozenset({_f32, _f64, _i32, _i64}),
    "ReduceProd": frozenset({_f32, _f64, _i32, _i64}),
    "BitwiseAnd": frozenset({_i8, _i16, _i32, _i64, _u8}), "BitwiseOr": frozenset({_i8, _i16, _i32, _i64, _u8}),
    "BitwiseXor": frozenset({_i8, _i16, _i32, _i64, _u8}),
    "TopK": frozenset({_f32, _f64, _i32, _i64}), "ConvTranspose": _F32, "GridSample": _F32,
    "Unique": frozenset({_f32, _i64, _i8}), "NonZero": frozenset({_b, _f32, _i32, _i64, _u8}), "GlobalMaxPool": _FLOATS,
    "Resize": frozenset({_f32, _i32, _i8, _u8}),
    "ScatterElements": frozenset({_f32, _f64, _f16, _bf16, _i8, _i16, _i32, _i64, _u8, _b}),
    "ScatterND": frozenset({_f32, _f64, _f16, _bf16, _i8, _i16, _i32, _i64, _u8, _b}),
}
# (op, dtype) pairs the ONNX schema itself allows only from some opset on.
_MIN_OPSET_FOR_TYPE: dict[tuple[str, DType], int] = {("ReduceMax", _b): 20, ("ReduceMin", _b): 20}
_WIDER: dict[DType, tuple[DType, ...]] = {
    _f16: (_f32, _f64), _bf16: (_f32, _f64), _f32: (_f64,), _f64: (_f32,),
    _i8: (_i32, _i64, _f32), _i16: (_i32, _i64, _f32), _u8: (_i32, _i64, _f32),
    _i32: (_i64, _f64), _i64: (_f64,), _b: (_u8, _i32, _i64, _f32),
}


# -- the context -------------------------------------------------------------------------------
Emitter = Callable[["EmitContext", Node], None]


class EmitContext:
    """Collects ONNX nodes, initializers and value types while the emitters run."""

    def __init__(self, graph: Graph, opset: int, standard_only: bool = False):
        self.graph = graph
        self.opset = opset
        self.standard_only = standard_only  # no onnxruntime contrib ops (com.microsoft)
        self.uses_contrib = False
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, TensorProto] = {}
        self.const_arrays: dict[str, np.ndarray] = {}
        self.value_types: dict[str, tuple[DType, tuple | None]] = {}  # name -> (dtype, shape or None)
        self.node_of: dict[str, Node] = {}  # ONNX node name -> IR node it was emitted for
        self.current: Node | None = None
        self._names: set[str] = {v.name for v in graph.values()}
        self._node_names: set[str] = {n.name for n in graph.nodes}
        self._used_ir_node_names: set[str] = set()
        self._const_cache: dict[tuple, str] = {}
        self._dim_cache: dict[str, str] = {}
        self._counter = 0

    # names ------------------------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        """A value name not used yet."""
        return self._fresh_in(re.sub(r"[^A-Za-z0-9_]", "_", hint) or "v", self._names)

    def _fresh_node_name(self, hint: str) -> str:
        return self._fresh_in(hint, self._node_names)

    def _fresh_in(self, hint: str, taken: set[str]) -> str:
        name = hint
        while name in taken:
            self._counter += 1
            name = f"{hint}_{self._counter}"
        taken.add(name)
        return name

    def _prefix(self) -> str:
        return self.current.name if self.current is not None else "graph"

    # values -----------------------------------------------------------------------------------
    def value(self, v: Value | None) -> str:
        """ONNX name of an IR value ("" for an absent optional input); constants become
        initializers the first time they are used."""
        if v is None:
            return ""
        if v.is_const and v.name not in self.initializers:
            self._add_initializer(v.name, np.asarray(v.const))
        return v.name

    def _add_initializer(self, name: str, array: np.ndarray) -> None:
        self.initializers[name] = numpy_helper.from_array(array, name)
        self.const_arrays[name] = array
        self.value_types[name] = (DType.from_numpy(array.dtype), tuple(int(d) for d in array.shape))

    def const(self, array, dtype: DType | np.dtype | None = None, hint: str = "const") -> str:
        """An initializer holding ``array`` (small ones are shared)."""
        np_dtype = dtype.numpy if isinstance(dtype, DType) else dtype
        array = np.array(array, dtype=np_dtype, order="C")  # not ascontiguousarray: it makes 0-d arrays 1-d
        key = None
        if array.size <= 64:
            key = (array.dtype.str, array.shape, array.tobytes())
            if key in self._const_cache:
                return self._const_cache[key]
        name = self.fresh(f"{self._prefix()}_{hint}")
        self._add_initializer(name, array)
        if key is not None:
            self._const_cache[key] = name
        return name

    def ints(self, values: Sequence[int], hint: str = "ints") -> str:
        return self.const(np.asarray(list(values), dtype=np.int64), hint=hint)

    def scalar(self, value, dtype: DType, hint: str = "scalar") -> str:
        return self.const(np.asarray(value, dtype=dtype.numpy), hint=hint)

    # nodes ------------------------------------------------------------------------------------
    def add(self, op_type: str, inputs: Sequence[str], outputs: Sequence[str] | str | None = None, *,
            dtype: DType | None = None, shape: tuple | None = None, n_outputs: int = 1, domain: str = "",
            **attrs) -> str:
        """Append an ONNX node; returns its (first) output name. Fresh outputs get the type
        (``dtype``, ``shape``) when given, else the type onnx shape inference finds."""
        if outputs is None:
            outputs = [self.fresh(f"{self._prefix()}_{op_type}") for _ in range(n_outputs)]
        elif isinstance(outputs, str):
            outputs = [outputs]
        if dtype is not None:  # IR outputs get their IR type after the emitter ran
            for name in outputs:
                self.value_types[name] = (dtype, shape)
        inputs = list(inputs)
        while inputs and inputs[-1] == "":
            inputs.pop()  # trailing absent optional inputs are simply left out
        node_name = self._node_name(op_type, outputs)
        attrs = {k: v for k, v in attrs.items() if v is not None}
        if domain:
            self.uses_contrib = True
        self.nodes.append(helper.make_node(op_type, inputs, list(outputs), name=node_name, domain=domain or None,
                                           **attrs))
        if self.current is not None:
            self.node_of[node_name] = self.current
        return outputs[0]

    def _node_name(self, op_type: str, outputs: Sequence[str]) -> str:
        cur = self.current
        if cur is not None and cur.name not in self._used_ir_node_names \
                and any(o.name in outputs for o in cur.outputs):
            self._used_ir_node_names.add(cur.name)
            return cur.name
        return self._fresh_node_name(f"{self._prefix()}_{op_type}")

    def cast(self, name: str, src: DType, dst: DType, shape: tuple | None = None,
             out: str | None = None) -> str:
        """``name`` converted from ``src`` to ``dst`` (constants are converted here, not at run time)."""
        if src == dst and out is None:
            return name
        if name == "":
            return name
        if out is None and name in self.const_arrays and dst != DType.bfloat16:
            return self.const(self.const_arrays[name].astype(dst.numpy), hint="cast")
        return self.add("Cast", [name], out, dtype=dst, shape=shape, to=ONNX_DTYPES[dst])

    def compute_dtype(self, op_type: str, dtype: DType) -> DType:
        """The dtype ``op_type`` runs in on onnxruntime's CPU provider for IR dtype ``dtype``."""
        supported = ORT_CPU_TYPES.get(op_type)

        def ok(d: DType) -> bool:
            return (supported is None or d in supported) and self.opset >= _MIN_OPSET_FOR_TYPE.get((op_type, d), 0)

        if ok(dtype):
            return dtype
        for wider in _WIDER.get(dtype, ()):
            if ok(wider):
                return wider
        raise self.unsupported(f"onnxruntime has no CPU {op_type} kernel for {dtype}")

    def typed(self, op_type: str, inputs: Sequence[str], dtype: DType, out: str | None, shape: tuple | None, *,
              fixed_dtype: DType | None = None, cast: Sequence[int] | None = None, **attrs) -> str:
        """``op_type`` whose data inputs (indices ``cast``, default all) have IR dtype ``dtype``,
        run in a dtype onnxruntime supports, result named ``out``. The result has the inputs'
        dtype (a widened result is cast back to ``dtype``) unless the op always produces
        ``fixed_dtype`` (comparisons: bool, ArgMax: int64)."""
        cd = self.compute_dtype(op_type, dtype)
        indices = range(len(inputs)) if cast is None else cast
        names = [self.cast(n, dtype, cd) if i in indices else n for i, n in enumerate(inputs)]
        if fixed_dtype is not None or cd == dtype:
            return self.add(op_type, names, out, dtype=fixed_dtype or dtype, shape=shape, **attrs)
        tmp = self.add(op_type, names, dtype=cd, shape=shape, **attrs)
        return self.cast(tmp, cd, dtype, shape, out=out or self.fresh(f"{self._prefix()}_out"))

    # symbolic dims -----------------------------------------------------------------------------
    def dim_tensor(self, dim: dims.Dim) -> str:
        """A 1-element int64 tensor holding ``dim`` at run time: symbols come from the shape of a
        graph input that has them, expressions are computed with Add/Sub/Mul/Div."""
        if isinstance(dim, int):
            return self.ints([dim], "dim")
        if dim in self._dim_cache:
            return self._dim_cache[dim]
        if dims.is_symbol(dim):
            for v in self.graph.inputs:
                if dim in v.shape:
                    axis = v.shape.index(dim)
                    saved, self.current = self.current, None
                    name = self.add("Shape", [v.name], self.fresh(f"{dim}_size"), dtype=DType.int64,
                                    shape=(1,), start=axis, end=axis + 1)
                    self.current = saved
                    break
            else:
                raise self.unsupported(f"symbolic dim '{dim}' is not a dim of any graph input")
        else:
            name = self._dim_expr(ast.parse(dim, mode="eval").body, dim)
        self._dim_cache[dim] = name
        return name

    def _dim_expr(self, tree: ast.AST, text: str) -> str:
        ops = {ast.Add: "Add", ast.Sub: "Sub", ast.Mult: "Mul", ast.FloorDiv: "Div"}  # dims are >= 0
        if isinstance(tree, ast.Constant) and isinstance(tree.value, int):
            return self.ints([tree.value], "dim")
        if isinstance(tree, ast.Name):
            return self.dim_tensor(tree.id)
        if isinstance(tree, ast.BinOp) and type(tree.op) in ops:
            return self.add(ops[type(tree.op)], [self._dim_expr(tree.left, text), self._dim_expr(tree.right, text)],
                            dtype=DType.int64, shape=(1,))
        if isinstance(tree, ast.UnaryOp) and isinstance(tree.op, ast.USub):
            return self.add("Neg", [self._dim_expr(tree.operand, text)], dtype=DType.int64, shape=(1,))
        raise self.unsupported(f"cannot compute the symbolic dim '{text}'")

    def shape_input(self, target: tuple, source: tuple, *, mode: str) -> str:
        """The int64 shape input of Reshape (``mode="reshape"``) or Expand (``"expand"``) that
        produces ``target`` from an input of shape ``source``. Static shapes are constants; a
        symbolic dim equal to the input's dim at the same place is 0 (Reshape copies it) or 1
        (Expand keeps it); one remaining unknown dim of a Reshape is -1; otherwise the shape is
        concatenated from constants and run-time dims."""
        target = tuple(target)
        if all(isinstance(d, int) for d in target):
            return self.ints(target, "shape")
        has_zero = any(isinstance(d, int) and d == 0 for d in target)
        entries: list[int | None] = []
        offset = len(target) - len(source)  # Expand aligns dims at the right, Reshape at the left
        for i, d in enumerate(target):
            if isinstance(d, int):
                entries.append(d)
            elif mode == "reshape" and not has_zero and i < len(source) and source[i] == d:
                entries.append(0)
            elif mode == "expand" and i - offset >= 0 and source[i - offset] == d:
                entries.append(1)
            else:
                entries.append(None)
        unknown = [i for i, e in enumerate(entries) if e is None]
        if not unknown:
            return self.ints(entries, "shape")
        if mode == "reshape" and len(unknown) == 1 and not has_zero:
            entries[unknown[0]] = -1
            return self.ints(entries, "shape")
        pieces: list[str] = []
        run: list[int] = []
        for i, e in enumerate(entries):
            if e is None:
                if run:
                    pieces.append(self.ints(run, "shape"))
                    run = []
                pieces.append(self.dim_tensor(target[i]))
            else:
                run.append(e)
        if run:
            pieces.append(self.ints(run, "shape"))
        return self.add("Concat", pieces, dtype=DType.int64, shape=(len(target),), axis=0)

    # errors -----------------------------------------------------------------------------------
    def unsupported(self, detail: str) -> UnsupportedOpError:
        node = self.current
        return UnsupportedOpError(node.op if node is not None else "?", stage=STAGE,
                                  location=node.location if node is not None else None, detail=detail)


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


def _finish(ctx, result: str, cd: DType, dtype: DType, shape, out) -> str:
    """Name ``result`` (computed in ``cd``) ``out`` in ``dtype``."""
    if cd != dtype:
        return ctx.cast(result, cd, dtype, shape, out=out or ctx.fresh(f"{ctx._prefix()}_out"))
    if out is not None:
        return ctx.add("Identity", [result], out, dtype=dtype, shape=shape)
    return result


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


def _apply_activation(ctx: EmitContext, node: Node, pre: str, dtype: DType) -> None:
    """Name ``pre`` (the op's result before its fused activation) as the node's output."""
    out = node.output
    if not node.attrs.get("activation"):
        if pre != out.name:
            ctx.add("Identity", [pre], out.name, dtype=dtype, shape=out.shape)
        return
    op, attrs = activation_op(node.attrs["activation"], node.attrs.get("activation_args", ()))
    UNARY[op](ctx, pre, dtype, out.shape, out.name, attrs)


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


# -- reductions --------------------------------------------------------------------------------
def _reduce_emitter(op_type: str) -> Emitter:
    def emit(ctx: EmitContext, node: Node) -> None:
        x = node.inputs[0]
        rank = len(x.shape)
        # Normalised and deduplicated; empty (or a rank-0 input) reduces every axis, which ONNX
        # does when the axes input is absent and noop_with_empty_axes is 0.
        axes = sorted({a % rank for a in node.attrs["axes"]}) if rank else []
        inputs = [ctx.value(x)] + ([ctx.ints(axes, "axes")] if axes else [])
        ctx.typed(op_type, inputs, x.dtype, node.output.name, node.output.shape, cast=[0],
                  keepdims=int(node.attrs["keepdim"]), noop_with_empty_axes=0)

    emit.__name__ = f"emit_{op_type}"
    return emit


def emit_cumsum(ctx: EmitContext, node: Node) -> None:
    x = node.inputs[0]
    axis = node.attrs["axis"] % max(len(x.shape), 1)
    ctx.typed("CumSum", [ctx.value(x), ctx.const(np.asarray(axis, np.int64), hint="axis")], x.dtype,
              node.output.name, node.output.shape, cast=[0])


def emit_cumprod(ctx: EmitContext, node: Node) -> None:
    """ONNX has no CumProd: product over a [.., n, n] lower-triangular expansion (exact, O(n^2)
    memory, so only for a static axis)."""
    x = node.inputs[0]
    rank = len(x.shape)
    axis = node.attrs["axis"] % max(rank, 1)
    n = x.shape[axis] if rank else 1
    if not isinstance(n, int):
        raise ctx.unsupported("cumprod along a symbolic dim")
    cd = ctx.compute_dtype("ReduceProd", x.dtype)
    xc = ctx.cast(ctx.value(x), x.dtype, cd)
    if rank == 0:
        _finish(ctx, xc, cd, x.dtype, (), node.output.name)
        return
    # rows[..., j, i] = x[..., i] where i <= j else 1; the product over i is the running product.
    moved = xc if axis == rank - 1 else ctx.add("Transpose", [xc], dtype=cd, perm=[d for d in range(rank) if d != axis]
                                                 + [axis])
    rows = ctx.add("Unsqueeze", [moved, ctx.ints([-2], "axes")], dtype=cd)
    lower = ctx.const(np.tril(np.ones((n, n), bool)), hint="tril")
    masked = ctx.add("Where", [lower, rows, ctx.scalar(1, cd)], dtype=cd)
    product = ctx.add("ReduceProd", [masked, ctx.ints([-1], "axes")], dtype=cd, keepdims=0)
    if axis != rank - 1:
        perm = list(range(rank - 1))
        perm.insert(axis, rank - 1)
        product = ctx.add("Transpose", [product], dtype=cd, perm=perm)
    _finish(ctx, product, cd, x.dtype, node.output.shape, node.output.name)


def emit_argmax(ctx: EmitContext, node: Node) -> None:
    x = node.inputs[0]
    ctx.typed("ArgMax", [ctx.value(x)], x.dtype, node.output.name, node.output.shape, fixed_dtype=DType.int64,
              axis=node.attrs["axis"], keepdims=int(node.attrs["keepdim"]), select_last_index=0)


# -- shape ops ---------------------------------------------------------------------------------
def emit_reshape(ctx: EmitContext, node: Node) -> None:
    x = node.inputs[0]
    target = node.attrs["shape"]
    has_zero = any(isinstance(d, int) and d == 0 for d in target)
    shape = ctx.shape_input(target, x.shape, mode="reshape")
    ctx.add("Reshape", [ctx.value(x), shape], node.output.name, allowzero=1 if has_zero else None)


def emit_expand(ctx: EmitContext, node: Node) -> None:
    x = node.inputs[0]
    shape = ctx.shape_input(node.attrs["shape"], x.shape, mode="expand")
    ctx.add("Expand", [ctx.value(x), shape], node.output.name)


def emit_transpose(ctx: EmitContext, node: Node) -> None:
    ctx.add("Transpose", [ctx.value(node.inputs[0])], node.output.name, perm=list(node.attrs["perm"]))


def emit_concat(ctx: EmitContext, node: Node) -> None:
    ctx.add("Concat", [ctx.value(v) for v in node.inputs], node.output.name, axis=node.attrs["axis"])


def _clamp64(v: int) -> int:
    return max(INT64_MIN, min(INT64_MAX, int(v)))


def emit_slice(ctx: EmitContext, node: Node) -> None:
    a = node.attrs
    # ONNX Slice clamps out-of-range starts/ends like Python for a positive step; ends beyond
    # int64 (Python ints are unbounded) are clamped to INT64_MAX, which means "to the end".
    inputs = [ctx.value(node.inputs[0]), ctx.ints([_clamp64(a["start"])], "starts"),
              ctx.ints([_clamp64(a["end"])], "ends"), ctx.ints([a["axis"]], "axes"), ctx.ints([a["step"]], "steps")]
    ctx.add("Slice", inputs, node.output.name)


def emit_gather(ctx: EmitContext, node: Node) -> None:
    x, indices = node.inputs
    idx = ctx.value(indices)
    if indices.dtype not in (DType.int32, DType.int64):
        idx = ctx.cast(idx, indices.dtype, DType.int64, indices.shape)
    ctx.add("Gather", [ctx.value(x), idx], node.output.name, axis=node.attrs["axis"])


def emit_flip(ctx: EmitContext, node: Node) -> None:
    x = node.inputs[0]
    axes = sorted({a % len(x.shape) for a in node.attrs["axes"]})
    if not axes:
        ctx.add("Identity", [ctx.value(x)], node.output.name)
        return
    n = len(axes)  # a negative step walks from the last element to before the first
    ctx.add("Slice", [ctx.value(x), ctx.ints([-1] * n, "starts"), ctx.ints([-(2 ** 63)] * n, "ends"),
                      ctx.ints(axes, "axes"), ctx.ints([-1] * n, "steps")], node.output.name)


_ONNX_PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def emit_pad(ctx: EmitContext, node: Node) -> None:
    x = node.inputs[0]
    mode = node.attrs["mode"]
    if mode == "circular" and ctx.opset < 19:
        raise ctx.unsupported("circular padding needs ONNX opset 19 or later")
    value = ctx.scalar(node.attrs["value"], x.dtype) if mode == "constant" else ""
    ctx.add("Pad", [ctx.value(x), ctx.ints(node.attrs["pads"], "pads"), value], node.output.name,
            mode=_ONNX_PAD_MODES[mode])


def _int64_indices(ctx: EmitContext, v: Value) -> str:
    name = ctx.value(v)
    return name if v.dtype == DType.int64 else ctx.cast(name, v.dtype, DType.int64, v.shape)


def emit_gather_elements(ctx: EmitContext, node: Node) -> None:
    x, index = node.inputs
    data = ctx.value(x)
    axis = node.attrs["axis"] % len(x.shape)
    others = [a for a in range(len(x.shape)) if a != axis and x.shape[a] != index.shape[a]]
    if others:  # PyTorch allows an index smaller than x on the other axes: cut x to it
        idx_shape = ctx.add("Shape", [_int64_indices(ctx, index)], dtype=DType.int64, shape=(len(x.shape),))
        ends = ctx.add("Gather", [idx_shape, ctx.ints(others, "axes")], dtype=DType.int64, shape=(len(others),))
        data = ctx.add("Slice", [data, ctx.ints([0] * len(others), "starts"), ends, ctx.ints(others, "axes")],
                       dtype=x.dtype)
    ctx.add("GatherElements", [data, _int64_indices(ctx, index)], node.output.name, axis=axis)


def emit_scatter_elements(ctx: EmitContext, node: Node) -> None:
    x, index, src = node.inputs
    src_name = ctx.value(src)
    if src.shape != index.shape:  # PyTorch uses only the leading part of a larger src
        rank = len(index.shape)
        src_name = ctx.add("Slice", [src_name, ctx.ints([0] * rank, "starts"),
                                     ctx.add("Shape", [_int64_indices(ctx, index)], dtype=DType.int64, shape=(rank,))],
                           dtype=src.dtype, shape=index.shape)
    reduction = node.attrs["reduction"]
    ctx.typed("ScatterElements", [ctx.value(x), _int64_indices(ctx, index), src_name], x.dtype, node.output.name,
              node.output.shape, cast=[0, 2], axis=node.attrs["axis"], reduction=reduction)


def _normalised_index(ctx: EmitContext, x: Value, axis: int, index: Value) -> str:
    """``index`` with negative entries counted from the end of ``x``'s dim ``axis``."""
    idx = _int64_indices(ctx, index)
    dim = x.shape[axis]
    size = ctx.scalar(dim, DType.int64) if isinstance(dim, int) else ctx.add(
        "Squeeze", [ctx.dim_tensor(dim), ctx.ints([0], "axes")], dtype=DType.int64, shape=())
    negative = ctx.add("Less", [idx, ctx.scalar(0, DType.int64)], dtype=DType.bool, shape=index.shape)
    return ctx.add("Where", [negative, ctx.add("Add", [idx, size], dtype=DType.int64, shape=None), idx],
                   dtype=DType.int64, shape=None)


def _stacked_indices(ctx: EmitContext, x: Value, indices, axes) -> tuple[str, tuple]:
    """The index tensors broadcast together and stacked on a new last axis, for GatherND /
    ScatterND over ``x`` transposed so that the indexed ``axes`` come first."""
    broadcast: tuple = ()
    for v in indices:
        broadcast = dims.broadcast(broadcast, v.shape)
    pieces = []
    for v, axis in zip(indices, axes):
        idx = _normalised_index(ctx, x, axis, v)
        if v.shape != broadcast:
            idx = ctx.add("Expand", [idx, ctx.shape_input(broadcast, v.shape, mode="expand")], dtype=DType.int64,
                          shape=broadcast)
        pieces.append(ctx.add("Unsqueeze", [idx, ctx.ints([-1], "axes")], dtype=DType.int64,
                              shape=broadcast + (1,)))
    stacked = pieces[0] if len(pieces) == 1 else ctx.add("Concat", pieces, dtype=DType.int64,
                                                          shape=broadcast + (len(pieces),), axis=-1)
    return stacked, broadcast


def _indexed_first(ctx: EmitContext, x: Value, axes: list[int]) -> tuple[str, list[int]]:
    perm = axes + [i for i in range(len(x.shape)) if i not in axes]
    if perm == list(range(len(x.shape))):
        return ctx.value(x), perm
    return ctx.add("Transpose", [ctx.value(x)], dtype=x.dtype, shape=tuple(x.shape[p] for p in perm),
                   perm=perm), perm


def emit_index(ctx: EmitContext, node: Node) -> None:
    """One index tensor: Gather on its axis. Several: GatherND over x with the indexed axes moved
    first, then the broadcast index dims moved to where numpy puts them."""
    x, *indices = node.inputs
    rank = len(x.shape)
    axes = [a % rank for a in node.attrs["axes"]]
    out = node.output
    if len(indices) == 1:
        ctx.add("Gather", [ctx.value(x), _normalised_index(ctx, x, axes[0], indices[0])], out.name, axis=axes[0])
        return
    data, _ = _indexed_first(ctx, x, axes)
    stacked, broadcast = _stacked_indices(ctx, x, indices, axes)
    adjacent = axes == list(range(axes[0], axes[0] + len(axes)))
    if not adjacent or axes[0] == 0:
        ctx.add("GatherND", [data, stacked], out.name)
        return
    gathered = ctx.add("GatherND", [data, stacked], dtype=x.dtype, shape=None)
    nb, lead = len(broadcast), axes[0]  # result is broadcast + rest; numpy keeps the leading dims first
    perm = list(range(nb, nb + lead)) + list(range(nb)) + list(range(nb + lead, len(out.shape)))
    ctx.add("Transpose", [gathered], out.name, perm=perm)


def emit_index_put(ctx: EmitContext, node: Node) -> None:
    """ScatterND into x with the indexed axes moved first (reduction add when accumulating),
    values broadcast to the indexed slice's shape, then the axes moved back."""
    x, values, *indices = node.inputs
    rank = len(x.shape)
    axes = [a % rank for a in node.attrs["axes"]]
    data, perm = _indexed_first(ctx, x, axes)
    stacked, broadcast = _stacked_indices(ctx, x, indices, axes)
    rest = tuple(x.shape[i] for i in range(rank) if i not in axes)
    adjacent = axes == list(range(axes[0], axes[0] + len(axes)))
    lead = axes[0] if adjacent else 0
    # The values are given in numpy's layout of x[indices]: bring them to broadcast + rest.
    numpy_shape = rest[:lead] + broadcast + rest[lead:]
    vals = ctx.value(values)
    if tuple(values.shape) != numpy_shape:
        vals = ctx.add("Expand", [vals, ctx.shape_input(numpy_shape, values.shape, mode="expand")], dtype=x.dtype,
                       shape=numpy_shape)
    if lead:
        nb = len(broadcast)
        to_front = list(range(lead, lead + nb)) + list(range(lead)) + list(range(lead + nb, len(numpy_shape)))
        vals = ctx.add("Transpose", [vals], dtype=x.dtype, shape=broadcast + rest, perm=to_front)
    reduction = "add" if node.attrs["accumulate"] else "none"
    inverse = [perm.index(i) for i in range(rank)]
    if inverse == list(range(rank)):
        ctx.typed("ScatterND", [data, stacked, vals], x.dtype, node.output.name, node.output.shape, cast=[0, 2],
                  reduction=reduction)
        return
    scattered = ctx.typed("ScatterND", [data, stacked, vals], x.dtype, None, None, cast=[0, 2], reduction=reduction)
    ctx.add("Transpose", [scattered], node.output.name, perm=inverse)


def _top_k(ctx: EmitContext, node: Node, k: str, axis: int, largest: bool, is_sorted: bool) -> None:
    x = node.inputs[0]
    values, indices = node.outputs
    cd = ctx.compute_dtype("TopK", x.dtype)
    if cd == x.dtype:
        ctx.add("TopK", [ctx.value(x), k], [values.name, indices.name], axis=axis, largest=int(largest),
                sorted=int(is_sorted))
        return
    v, i = ctx.fresh(f"{node.name}_values"), indices.name
    ctx.add("TopK", [ctx.cast(ctx.value(x), x.dtype, cd), k], [v, i], axis=axis, largest=int(largest),
            sorted=int(is_sorted))
    ctx.value_types[v] = (cd, values.shape)
    ctx.cast(v, cd, x.dtype, values.shape, out=values.name)


def emit_nonzero(ctx: EmitContext, node: Node) -> None:
    x = node.inputs[0]
    cd = ctx.compute_dtype("NonZero", x.dtype)
    coords = ctx.add("NonZero", [ctx.cast(ctx.value(x), x.dtype, cd)], dtype=DType.int64,
                     shape=(len(x.shape), node.attrs["count"]))
    ctx.add("Transpose", [coords], node.output.name, perm=[1, 0])


def emit_grid_sample(ctx: EmitContext, node: Node) -> None:
    x, grid = node.inputs
    a = node.attrs
    mode = a["mode"] if ctx.opset < 20 or a["mode"] == "nearest" else "linear"  # renamed in opset 20
    ctx.typed("GridSample", [ctx.value(x), ctx.value(grid)], x.dtype, node.output.name, node.output.shape,
              mode=mode, padding_mode=a["padding_mode"], align_corners=int(a["align_corners"]))


def emit_embedding_bag(ctx: EmitContext, node: Node) -> None:
    """Rows gathered, then scattered (add / max) into their bag. Row i belongs to the bag whose
    start is the last one <= i; rows past the last offset (include_last_offset) and padding rows
    are sent nowhere by zeroing (sum, mean) or -inf (max) and leaving the counts alone."""
    weight, indices, offsets, per_sample = (list(node.inputs) + [None])[:4]
    a = node.attrs
    out = node.output
    dtype, cd = weight.dtype, ctx.compute_dtype("ScatterElements", weight.dtype)
    n, bags, width = indices.shape[0], out.shape[0], weight.shape[1]
    idx, offs = _int64_indices(ctx, indices), _int64_indices(ctx, offsets)
    i64, b = DType.int64, DType.bool
    positions = ctx.add("Range", [ctx.scalar(0, i64), ctx.add("Squeeze", [ctx.add("Shape", [idx], dtype=i64,
                                                                                   shape=(1,))], dtype=i64,
                                                               shape=()), ctx.scalar(1, i64)], dtype=i64, shape=(n,))
    starts = offs
    if a["include_last_offset"]:
        starts = ctx.add("Slice", [offs, ctx.ints([0], "starts"), ctx.ints([-1], "ends")], dtype=i64, shape=(bags,))
    started = ctx.add("LessOrEqual", [ctx.add("Unsqueeze", [starts, ctx.ints([0], "axes")], dtype=i64),
                                      ctx.add("Unsqueeze", [positions, ctx.ints([1], "axes")], dtype=i64)],
                      dtype=b)  # [n, bags]
    bag = ctx.add("Sub", [ctx.add("ReduceSum", [ctx.cast(started, b, i64), ctx.ints([1], "axes")], dtype=i64,
                                  keepdims=0), ctx.scalar(1, i64)], dtype=i64, shape=(n,))
    keep = ctx.add("GreaterOrEqual", [bag, ctx.scalar(0, i64)], dtype=b, shape=(n,))
    if a["include_last_offset"]:
        last = ctx.add("Slice", [offs, ctx.ints([-1], "starts"), ctx.ints([2 ** 62], "ends")], dtype=i64, shape=(1,))
        keep = ctx.add("And", [keep, ctx.add("Less", [positions, last], dtype=b, shape=(n,))], dtype=b, shape=(n,))
    if a["padding_idx"] >= 0:
        keep = ctx.add("And", [keep, ctx.add("Not", [ctx.add("Equal", [idx, ctx.scalar(a["padding_idx"], i64)],
                                                               dtype=b, shape=(n,))], dtype=b, shape=(n,))],
                       dtype=b, shape=(n,))
    bag = ctx.add("Max", [bag, ctx.scalar(0, i64)], dtype=i64, shape=(n,))  # rows before any bag: masked anyway
    rows = ctx.cast(ctx.add("Gather", [ctx.value(weight), idx], dtype=dtype, shape=(n, width), axis=0), dtype, cd)
    if per_sample is not None:
        rows = ctx.add("Mul", [rows, ctx.add("Unsqueeze", [ctx.cast(ctx.value(per_sample), per_sample.dtype, cd),
                                                           ctx.ints([1], "axes")], dtype=cd)], dtype=cd)
    keep_col = ctx.add("Unsqueeze", [keep, ctx.ints([1], "axes")], dtype=b, shape=(n, 1))
    neutral = -np.inf if a["mode"] == "max" else 0.0
    rows = ctx.add("Where", [keep_col, rows, ctx.scalar(neutral, cd)], dtype=cd, shape=(n, width))
    target = ctx.add("Expand", [ctx.add("Unsqueeze", [bag, ctx.ints([1], "axes")], dtype=i64),
                                ctx.add("Shape", [rows], dtype=i64, shape=(2,))], dtype=i64, shape=(n, width))
    bag_shape = ctx.add("Concat", [ctx.add("Shape", [starts], dtype=i64, shape=(1,)), ctx.ints([width], "width")],
                        dtype=i64, shape=(2,), axis=0)
    init = ctx.add("Expand", [ctx.scalar(neutral, cd), bag_shape], dtype=cd, shape=(bags, width))
    reduction = "max" if a["mode"] == "max" else "add"
    pooled = ctx.add("ScatterElements", [init, target, rows], dtype=cd, shape=(bags, width), axis=0,
                     reduction=reduction)
    if a["mode"] != "sum":
        ones = ctx.cast(keep_col, b, cd)
        counts = ctx.add("ScatterElements", [ctx.add("Expand", [ctx.scalar(0.0, cd), bag_shape], dtype=cd),
                                             ctx.add("Expand", [ctx.add("Unsqueeze", [bag, ctx.ints([1], "axes")],
                                                                        dtype=i64), ctx.ints([n, 1], "shape")],
                                                     dtype=i64),
                                             ctx.add("Expand", [ones, ctx.ints([n, 1], "shape")], dtype=cd)],
                         dtype=cd, axis=0, reduction="add")
        counts = ctx.add("Slice", [counts, ctx.ints([0], "starts"), ctx.ints([1], "ends"), ctx.ints([1], "axes")],
                         dtype=cd, shape=(bags, 1))
        empty = ctx.add("Equal", [counts, ctx.scalar(0.0, cd)], dtype=b, shape=(bags, 1))
        if a["mode"] == "mean":
            pooled = ctx.add("Div", [pooled, ctx.add("Max", [counts, ctx.scalar(1.0, cd)], dtype=cd)], dtype=cd,
                             shape=(bags, width))
        pooled = ctx.add("Where", [empty, ctx.scalar(0.0, cd), pooled], dtype=cd, shape=(bags, width))
    _finish(ctx, pooled, cd, dtype, out.shape, out.name)


def emit_unique(ctx: EmitContext, node: Node) -> None:
    """ONNX Unique (sorted) on the flattened input; its inverse indices reshaped like the input."""
    x = node.inputs[0]
    values, inverse, counts = node.outputs
    cd = ctx.compute_dtype("Unique", x.dtype)
    flat = ctx.add("Reshape", [ctx.cast(ctx.value(x), x.dtype, cd), ctx.ints([-1], "flat")], dtype=cd)
    names = [ctx.fresh(f"{node.name}_{part}") for part in ("values", "first", "inverse")]
    ctx.add("Unique", [flat], names + [counts.name], sorted=1)
    ctx.value_types[names[0]] = (cd, values.shape)
    ctx.value_types[names[1]] = (DType.int64, values.shape)
    ctx.value_types[names[2]] = (DType.int64, None)
    if cd != x.dtype:
        ctx.cast(names[0], cd, x.dtype, values.shape, out=values.name)
    else:
        ctx.add("Identity", [names[0]], values.name)
    ctx.add("Reshape", [names[2], ctx.add("Shape", [ctx.value(x)], dtype=DType.int64, shape=(len(x.shape),))],
            inverse.name)


def emit_topk(ctx: EmitContext, node: Node) -> None:
    a = node.attrs
    _top_k(ctx, node, ctx.ints([a["k"]], "k"), a["axis"], a["largest"], a["sorted"])


def emit_sort(ctx: EmitContext, node: Node) -> None:
    """TopK over the whole axis: onnxruntime's TopK keeps equal values in index order, a stable sort."""
    x = node.inputs[0]
    axis = node.attrs["axis"] % len(x.shape)
    _top_k(ctx, node, ctx.dim_tensor(x.shape[axis]), axis, node.attrs["descending"], True)


# -- matmul / linear / conv --------------------------------------------------------------------
def emit_matmul(ctx: EmitContext, node: Node) -> None:
    a, b = node.inputs
    ctx.typed("MatMul", [ctx.value(a), ctx.value(b)], a.dtype, node.output.name, node.output.shape)


def _transposed(ctx: EmitContext, v: Value, perm: list[int], dtype: DType) -> str:
    """``v`` with axes permuted: a pre-transposed initializer when ``v`` is a constant."""
    if v.is_const:
        return ctx.const(np.ascontiguousarray(np.transpose(v.const, perm)).astype(dtype.numpy), hint=f"{v.name}_T")
    shape = tuple(v.shape[p] for p in perm)
    return ctx.add("Transpose", [ctx.cast(ctx.value(v), v.dtype, dtype)], dtype=dtype, shape=shape, perm=perm)


def emit_linear(ctx: EmitContext, node: Node) -> None:
    x, w, b = (list(node.inputs) + [None])[:3]
    out = node.output
    dtype = x.dtype
    fused = bool(node.attrs.get("activation"))
    if len(x.shape) == 2:
        cd = ctx.compute_dtype("Gemm", dtype)
        inputs = [ctx.cast(ctx.value(x), dtype, cd), ctx.cast(ctx.value(w), dtype, cd),
                  ctx.cast(ctx.value(b), dtype, cd)]
        target = None if (fused or cd != dtype) else out.name
        pre = ctx.add("Gemm", inputs, target, dtype=cd, shape=out.shape, transB=1)
    else:
        cd = ctx.compute_dtype("MatMul", dtype)
        w_t = _transposed(ctx, w, [1, 0], cd)
        target = None if (fused or cd != dtype or b is not None) else out.name
        pre = ctx.add("MatMul", [ctx.cast(ctx.value(x), dtype, cd), w_t], target, dtype=cd, shape=out.shape)
        if b is not None:
            target = None if (fused or cd != dtype) else out.name
            pre = ctx.add("Add", [pre, ctx.cast(ctx.value(b), dtype, cd)], target, dtype=cd, shape=out.shape)
    if cd != dtype:
        pre = ctx.cast(pre, cd, dtype, out.shape, out=None if fused else out.name)
    if pre != out.name:
        _apply_activation(ctx, node, pre, dtype)


# Activations onnxruntime's contrib FusedConv runs inside the convolution kernel:
# IR activation -> (FusedConv activation name, activation_params from the IR args).
_FUSED_CONV = {
    "relu": ("Relu", lambda args: None), "sigmoid": ("Sigmoid", lambda args: None),
    "tanh": ("Tanh", lambda args: None), "leaky_relu": ("LeakyRelu", lambda args: [args[0]]),
    "clamp": ("Clip", lambda args: [-3.4028234e38 if math.isnan(args[0]) else args[0],
                                    3.4028234e38 if math.isnan(args[1]) else args[1]]),
    "hardsigmoid": ("HardSigmoid", lambda args: [1.0 / 6.0, 0.5]),
}


def emit_conv(ctx: EmitContext, node: Node) -> None:
    x, w, b = (list(node.inputs) + [None])[:3]
    out = node.output
    dtype = x.dtype
    a = node.attrs
    fused = bool(a.get("activation"))
    if fused and a["activation"] in _FUSED_CONV and not ctx.standard_only and dtype == DType.float32:
        name, params = _FUSED_CONV[a["activation"]]
        ctx.add("FusedConv", [ctx.value(v) for v in (x, w, b)], out.name, domain=CONTRIB,
                kernel_shape=list(w.shape[2:]), strides=list(a["stride"]), pads=list(a["padding"]),
                dilations=list(a["dilation"]), group=a["groups"], activation=name,
                activation_params=params(a["activation_args"]))
        return
    cd = ctx.compute_dtype("Conv", dtype)
    inputs = [ctx.cast(ctx.value(v), dtype, cd) for v in (x, w, b)]
    target = None if (fused or cd != dtype) else out.name
    pre = ctx.add("Conv", inputs, target, dtype=cd, shape=out.shape, kernel_shape=list(w.shape[2:]),
                  strides=list(a["stride"]), pads=list(a["padding"]), dilations=list(a["dilation"]),
                  group=a["groups"])
    if cd != dtype:
        pre = ctx.cast(pre, cd, dtype, out.shape, out=None if fused else out.name)
    if pre != out.name:
        _apply_activation(ctx, node, pre, dtype)


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


# -- normalisation and softmax -----------------------------------------------------------------
def _filled(ctx: EmitContext, like: Value, value: float, dtype: DType, dims_from: tuple) -> str:
    """A tensor of ``value`` with shape ``dims_from`` (constant when static, else built from
    the run-time shape of ``like``, whose last len(dims_from) dims they are)."""
    if all(isinstance(d, int) for d in dims_from):
        return ctx.const(np.full(dims_from, value, dtype=dtype.numpy), hint="fill")
    shape = ctx.add("Shape", [ctx.value(like)], dtype=DType.int64, shape=(len(dims_from),),
                    start=len(like.shape) - len(dims_from))
    return ctx.add("ConstantOfShape", [shape], dtype=dtype, shape=dims_from,
                   value=numpy_helper.from_array(np.asarray([value], dtype=dtype.numpy)))


def emit_batch_norm(ctx: EmitContext, node: Node) -> None:
    x, mean, var, weight, bias = (list(node.inputs) + [None] * 5)[:5]
    dtype = x.dtype
    channels = (mean.shape[0],)
    scale = ctx.value(weight) if weight is not None else _filled(ctx, mean, 1.0, dtype, channels)
    shift = ctx.value(bias) if bias is not None else _filled(ctx, mean, 0.0, dtype, channels)
    inputs = [ctx.value(x), scale, shift, ctx.value(mean), ctx.value(var)]
    ctx.typed("BatchNormalization", inputs, dtype, node.output.name, node.output.shape,
              epsilon=float(node.attrs["eps"]))


def emit_layer_norm(ctx: EmitContext, node: Node) -> None:
    x, weight, bias = (list(node.inputs) + [None] * 3)[:3]
    nd = node.attrs["normalized_ndim"]
    dtype = x.dtype
    scale = ctx.value(weight) if weight is not None else _filled(ctx, x, 1.0, dtype, x.shape[len(x.shape) - nd:])
    ctx.typed("LayerNormalization", [ctx.value(x), scale, ctx.value(bias)], dtype, node.output.name,
              node.output.shape, axis=-nd, epsilon=float(node.attrs["eps"]))


def emit_group_norm(ctx: EmitContext, node: Node) -> None:
    """(x - mean) / sqrt(var + eps) over [N, groups, -1], reshaped back, then the per-channel
    affine (ONNX's GroupNormalization has changed meaning across opsets; this form does not)."""
    x, weight, bias = (list(node.inputs) + [None] * 3)[:3]
    dtype, shape, groups = x.dtype, x.shape, node.attrs["groups"]
    cd = ctx.compute_dtype("ReduceMean", dtype)

    def op(name, *args, shape_=None, **kw):
        return ctx.add(name, list(args), dtype=cd, shape=shape_, **kw)

    grouped = op("Reshape", ctx.cast(ctx.value(x), dtype, cd), ctx.ints([0, groups, -1], "groups"))
    mean = op("ReduceMean", grouped, ctx.ints([2], "axes"), keepdims=1)
    centered = op("Sub", grouped, mean)
    var = op("ReduceMean", op("Mul", centered, centered), ctx.ints([2], "axes"), keepdims=1)
    normed = op("Div", centered, op("Sqrt", op("Add", var, ctx.scalar(node.attrs["eps"], cd))))
    y = op("Reshape", normed, ctx.add("Shape", [ctx.value(x)], dtype=DType.int64, shape=(len(shape),)),
           shape_=shape)
    affine = [1, -1] + [1] * (len(shape) - 2)
    if weight is not None:
        y = op("Mul", y, op("Reshape", ctx.cast(ctx.value(weight), dtype, cd), ctx.ints(affine, "affine")),
               shape_=shape)
    if bias is not None:
        y = op("Add", y, op("Reshape", ctx.cast(ctx.value(bias), dtype, cd), ctx.ints(affine, "affine")),
               shape_=shape)
    _finish(ctx, y, cd, dtype, shape, node.output.name)


def emit_resize(ctx: EmitContext, node: Node) -> None:
    """ONNX Resize with the coordinate rules that reproduce F.interpolate: nearest = asymmetric +
    floor; linear = pytorch_half_pixel (or align_corners); cubic = half_pixel with A = -0.75."""
    x = node.inputs[0]
    a = node.attrs
    mode = a["mode"]
    if a["align_corners"]:
        transform = "align_corners"
    else:
        transform = {"nearest": "asymmetric", "linear": "pytorch_half_pixel", "cubic": "half_pixel"}[mode]
    if a["scales"]:
        scales = ctx.const(np.asarray([1.0, 1.0] + list(a["scales"]), np.float32), hint="scales")
        inputs = [ctx.value(x), "", scales]
    else:
        sizes = ctx.shape_input(tuple(x.shape[:2]) + tuple(a["sizes"]), x.shape, mode="expand") \
            if not all(isinstance(d, int) for d in x.shape[:2]) else ctx.ints(list(x.shape[:2]) + list(a["sizes"]),
                                                                               "sizes")
        inputs = [ctx.value(x), "", "", sizes]
    ctx.typed("Resize", inputs, x.dtype, node.output.name, node.output.shape, cast=[0], mode=mode,
              coordinate_transformation_mode=transform,
              nearest_mode="floor" if mode == "nearest" else None,
              cubic_coeff_a=-0.75 if mode == "cubic" else None, exclude_outside=0 if mode == "cubic" else None)


def _softmax_emitter(op_type: str) -> Emitter:
    def emit(ctx: EmitContext, node: Node) -> None:
        x = node.inputs[0]
        ctx.typed(op_type, [ctx.value(x)], x.dtype, node.output.name, node.output.shape, axis=node.attrs["axis"])

    emit.__name__ = f"emit_{op_type}"
    return emit


# -- pooling -----------------------------------------------------------------------------------
def _pool(ctx: EmitContext, node: Node, op_type: str, dilation: tuple, **attrs) -> None:
    """MaxPool / AveragePool. From opset 22 on, ONNX drops a ceil_mode window that would start
    in the end padding, as PyTorch (and the reference) do; older opsets keep it, so there the
    extra output positions are sliced off (the windows before them are the same)."""
    x = node.inputs[0]
    a = node.attrs
    out = node.output
    nd = len(a["kernel"])
    pool_attrs = dict(kernel_shape=list(a["kernel"]), strides=list(a["stride"]), pads=list(a["padding"]),
                      ceil_mode=int(a["ceil_mode"]), **attrs)
    onnx_shape = out.shape
    if a["ceil_mode"] and ctx.opset < 22:
        onnx_shape = out.shape[:2] + tuple(
            -(-(size + a["padding"][i] + a["padding"][nd + i] - d * (a["kernel"][i] - 1) - 1) // a["stride"][i]) + 1
            for i, (size, d) in enumerate(zip(x.shape[2:], dilation)))
    if onnx_shape == out.shape:
        ctx.typed(op_type, [ctx.value(x)], x.dtype, out.name, out.shape, **pool_attrs)
        return
    pooled = ctx.typed(op_type, [ctx.value(x)], x.dtype, None, onnx_shape, **pool_attrs)
    axes = list(range(2, 2 + nd))
    ctx.add("Slice", [pooled, ctx.ints([0] * nd, "starts"), ctx.ints(out.shape[2:], "ends"), ctx.ints(axes, "axes")],
            out.name)


def emit_max_pool(ctx: EmitContext, node: Node) -> None:
    _pool(ctx, node, "MaxPool", node.attrs["dilation"], dilations=list(node.attrs["dilation"]))


def emit_avg_pool(ctx: EmitContext, node: Node) -> None:
    # onnxruntime's AveragePool matches the reference (PyTorch) divisor for every combination
    # of ceil_mode and count_include_pad: with count_include_pad the divisor counts the explicit
    # padding but not the ceil_mode overhang (tested in tests/test_onnx_backend.py).
    a = node.attrs
    _pool(ctx, node, "AveragePool", (1,) * len(a["kernel"]), count_include_pad=int(a["count_include_pad"]))


def _adaptive_pool(ctx: EmitContext, node: Node, global_op: str, window_op: str, reduce_op: str) -> None:
    """Output 1: the global pool. Input sizes multiples of the output: one strided window pool.
    Otherwise, axis by axis, each bin [floor(i*L/O), ceil((i+1)*L/O)) sliced, reduced and
    concatenated (the bins are rectangles, so mean and max separate over axes)."""
    x = node.inputs[0]
    out_size = node.attrs["output_size"]
    spatial = x.shape[2:]
    if all(o == 1 for o in out_size):
        ctx.typed(global_op, [ctx.value(x)], x.dtype, node.output.name, node.output.shape)
        return
    if not all(isinstance(s, int) for s in spatial):
        raise ctx.unsupported(f"adaptive pooling of symbolic spatial dims {spatial} to {out_size} "
                              "(only output size 1 is supported there)")
    if not any(s % o for s, o in zip(spatial, out_size)):
        kernel = [s // o for s, o in zip(spatial, out_size)]
        ctx.typed(window_op, [ctx.value(x)], x.dtype, node.output.name, node.output.shape,
                  kernel_shape=kernel, strides=kernel, pads=[0] * (2 * len(kernel)))
        return
    cd = ctx.compute_dtype(reduce_op, x.dtype)
    current, shape = ctx.cast(ctx.value(x), x.dtype, cd), tuple(x.shape)
    for axis, (size, out) in enumerate(zip(spatial, out_size), start=2):
        bins = []
        for lo, hi in adaptive_bins(size, out):
            piece = ctx.add("Slice", [current, ctx.ints([lo], "starts"), ctx.ints([hi], "ends"),
                                      ctx.ints([axis], "axes")], dtype=cd)
            bins.append(ctx.add(reduce_op, [piece, ctx.ints([axis], "axes")], dtype=cd, keepdims=1))
        shape = shape[:axis] + (out,) + shape[axis + 1:]
        current = ctx.add("Concat", bins, dtype=cd, shape=shape, axis=axis)
    _finish(ctx, current, cd, x.dtype, node.output.shape, node.output.name)


def emit_adaptive_avg_pool(ctx: EmitContext, node: Node) -> None:
    _adaptive_pool(ctx, node, "GlobalAveragePool", "AveragePool", "ReduceMean")


def emit_adaptive_max_pool(ctx: EmitContext, node: Node) -> None:
    _adaptive_pool(ctx, node, "GlobalMaxPool", "MaxPool", "ReduceMax")


def emit_max_pool_with_indices(ctx: EmitContext, node: Node) -> None:
    """MaxPool's second output counts over the whole N, C, *spatial tensor; PyTorch's over one
    (N, C) plane: the remainder modulo the plane size converts it."""
    x = node.inputs[0]
    a = node.attrs
    values, indices = node.outputs
    if a["ceil_mode"] and ctx.opset < 22:
        raise ctx.unsupported("max pooling indices with ceil_mode need ONNX opset 22 or later")
    plane = 1
    for d in x.shape[2:]:
        if not isinstance(d, int):
            raise ctx.unsupported("max pooling indices over symbolic spatial dims")
        plane *= d
    cd = ctx.compute_dtype("MaxPool", x.dtype)
    flat = ctx.fresh(f"{node.name}_flat_indices")
    pooled = values.name if cd == x.dtype else ctx.fresh(f"{node.name}_values")
    ctx.add("MaxPool", [ctx.cast(ctx.value(x), x.dtype, cd)], [pooled, flat], kernel_shape=list(a["kernel"]),
            strides=list(a["stride"]), pads=list(a["padding"]), dilations=list(a["dilation"]),
            ceil_mode=int(a["ceil_mode"]))
    ctx.value_types[pooled] = (cd, values.shape)
    ctx.value_types[flat] = (DType.int64, indices.shape)
    if pooled != values.name:
        ctx.cast(pooled, cd, x.dtype, values.shape, out=values.name)
    ctx.add("Mod", [flat, ctx.scalar(plane, DType.int64)], indices.name, fmod=0)


def emit_conv_transpose(ctx: EmitContext, node: Node) -> None:
    x, weight, bias = (list(node.inputs) + [None] * 3)[:3]
    a = node.attrs
    ctx.typed("ConvTranspose", [ctx.value(x), ctx.value(weight), ctx.value(bias)], x.dtype, node.output.name,
              node.output.shape, strides=list(a["stride"]), pads=list(a["padding"]),
              output_padding=list(a["output_padding"]), dilations=list(a["dilation"]), group=a["groups"])


# -- attention ---------------------------------------------------------------------------------
def _attention_core(ctx: EmitContext, q: str, k_t: str, v: str, mask: Value | None, *, dtype: DType,
                    cd: DType, q_shape: tuple, k_shape: tuple, scale: float, is_causal: bool,
                    out: str | None, out_shape: tuple) -> str:
    """softmax(q @ k_t * scale [+ mask]) @ v on values already in compute dtype ``cd``."""
    s_shape = None
    if len(q_shape) >= 2 and len(k_shape) >= 2:
        try:
            s_shape = dims.broadcast(q_shape[:-2], k_shape[:-2]) + (q_shape[-2], k_shape[-2])
        except ValueError:
            s_shape = None
    s = ctx.add("MatMul", [q, k_t], dtype=cd, shape=s_shape)
    s = ctx.add("Mul", [s, ctx.scalar(scale, cd, "scale")], dtype=cd, shape=s_shape)
    neg_inf = ctx.scalar(-np.inf, cd, "neg_inf")
    if is_causal:
        lq, lk = q_shape[-2], k_shape[-2]
        if isinstance(lq, int) and isinstance(lk, int):
            keep = ctx.const(np.tril(np.ones((lq, lk), dtype=bool)), hint="causal_mask")
        else:
            size = ctx.add("Shape", [s], dtype=DType.int64, shape=(2,), start=-2)
            ones = ctx.add("ConstantOfShape", [size], dtype=DType.bool, shape=(lq, lk),
                           value=numpy_helper.from_array(np.asarray([True])))
            keep = ctx.add("Trilu", [ones], dtype=DType.bool, shape=(lq, lk), upper=0)
        s = ctx.add("Where", [keep, s, neg_inf], dtype=cd, shape=s_shape)
    if mask is not None:  # the mask may broadcast the scores: leave their shape to inference
        if mask.dtype == DType.bool:
            s = ctx.add("Where", [ctx.value(mask), s, neg_inf], dtype=cd)
        else:
            s = ctx.add("Add", [s, ctx.cast(ctx.value(mask), mask.dtype, cd)], dtype=cd)
        s_shape = None
    p = ctx.add("Softmax", [s], dtype=cd, shape=s_shape, axis=-1)
    if cd == dtype:
        return ctx.add("MatMul", [p, v], out, dtype=dtype, shape=out_shape)
    y = ctx.add("MatMul", [p, v], dtype=cd, shape=out_shape)
    return ctx.cast(y, cd, dtype, out_shape, out=out or ctx.fresh(f"{ctx._prefix()}_out"))


def _default_scale(ctx: EmitContext, head_dim) -> float:
    if not isinstance(head_dim, int):
        raise ctx.unsupported(f"default scale with a symbolic head dim '{head_dim}' (pass scale explicitly)")
    return 1.0 / math.sqrt(head_dim)


def emit_attention(ctx: EmitContext, node: Node) -> None:
    q, k, v, mask = (list(node.inputs) + [None])[:4]
    dtype = q.dtype
    cd = ctx.compute_dtype("MatMul", dtype)
    scale = node.attrs["scale"]
    scale = _default_scale(ctx, q.shape[-1]) if scale is None else scale
    perm = list(range(len(k.shape)))
    perm[-2], perm[-1] = perm[-1], perm[-2]
    k_t = _transposed(ctx, k, perm, cd)
    _attention_core(ctx, ctx.cast(ctx.value(q), dtype, cd), k_t, ctx.cast(ctx.value(v), dtype, cd), mask,
                    dtype=dtype, cd=cd, q_shape=q.shape, k_shape=k.shape, scale=scale,
                    is_causal=node.attrs["is_causal"], out=node.output.name, out_shape=node.output.shape)


def emit_multi_head_attention(ctx: EmitContext, node: Node) -> None:
    q, k, v = node.inputs
    heads = node.attrs["num_heads"]
    dtype = q.dtype
    if not ctx.standard_only and dtype == DType.float32:  # onnxruntime's fused attention kernel
        ctx.add("MultiHeadAttention", [ctx.value(q), ctx.value(k), ctx.value(v)], node.output.name,
                domain=CONTRIB, num_heads=heads, scale=node.attrs["scale"])
        return
    cd = ctx.compute_dtype("MatMul", dtype)
    _heads_attention(ctx, node, *((ctx.cast(ctx.value(t), dtype, cd), t.shape) for t in (q, k, v)), cd=cd)


def _heads_attention(ctx: EmitContext, node: Node, q: tuple, k: tuple, v: tuple, *, cd: DType) -> None:
    """multi_head_attention in standard ONNX on (name, [B, S, E] shape) pairs already in ``cd``:
    heads split by Reshape + Transpose, attention, heads merged back into ``node``'s output."""
    heads = node.attrs["num_heads"]
    dtype = node.output.dtype

    def head_dim(e):
        return dims.floordiv(e, heads)

    def split(value: tuple, perm: list[int]) -> str:
        name, (b, s, e) = value
        # Reshape [B, S, E] -> [B, S, H, E/H] (0 copies B and S, so symbolic sizes need no Shape op).
        split_shape = (b, s, heads, head_dim(e))
        r = ctx.add("Reshape", [name, ctx.ints([0, 0, heads, -1], "heads")], dtype=cd, shape=split_shape)
        return ctx.add("Transpose", [r], dtype=cd, shape=tuple(split_shape[p] for p in perm), perm=perm)

    qh = split(q, [0, 2, 1, 3])
    kh_t = split(k, [0, 2, 3, 1])  # heads, then k^T: [B, H, D, S]
    vh = split(v, [0, 2, 1, 3])
    b, sq, eq = q[1]
    sk, ek, ev = k[1][1], k[1][2], v[1][2]
    q_shape = (b, heads, sq, head_dim(eq))
    k_shape = (b, heads, sk, head_dim(ek))
    y_shape = (b, heads, sq, head_dim(ev))
    y = _attention_core(ctx, qh, kh_t, vh, None, dtype=cd, cd=cd, q_shape=q_shape, k_shape=k_shape,
                        scale=node.attrs["scale"], is_causal=False, out=None, out_shape=y_shape)
    merged = ctx.add("Transpose", [y], dtype=cd, shape=(b, sq, heads, y_shape[3]), perm=[0, 2, 1, 3])
    out = node.output
    if cd == dtype:
        ctx.add("Reshape", [merged, ctx.ints([0, 0, -1], "merge")], out.name)
    else:
        r = ctx.add("Reshape", [merged, ctx.ints([0, 0, -1], "merge")], dtype=cd, shape=out.shape)
        ctx.cast(r, cd, dtype, out.shape, out=out.name)


def emit_qkv_attention(ctx: EmitContext, node: Node) -> None:
    """onnxruntime's contrib ``Attention`` runs the packed projection and the attention in one
    kernel (measured 21 us against 28 us for three projections + MultiHeadAttention at
    [1, 32, 64], 4 heads). Standard ONNX: one MatMul (+ Add) into [B, S, 3E], Split, then the
    heads as multi_head_attention emits them."""
    x, w, b = (list(node.inputs) + [None])[:3]
    dtype = x.dtype
    rows = w.shape[0]
    if not ctx.standard_only and dtype == DType.float32 and w.is_const:
        bias = ctx.value(b) if b is not None else ctx.const(np.zeros(rows, np.float32), hint="qkv_bias")
        ctx.add("Attention", [ctx.value(x), _transposed(ctx, w, [1, 0], dtype), bias], node.output.name,
                domain=CONTRIB, num_heads=node.attrs["num_heads"], scale=node.attrs["scale"])
        return
    cd = ctx.compute_dtype("MatMul", dtype)
    bsz, s, _ = x.shape
    packed_shape = (bsz, s, rows)
    qkv = ctx.add("MatMul", [ctx.cast(ctx.value(x), dtype, cd), _transposed(ctx, w, [1, 0], cd)], dtype=cd,
                  shape=packed_shape)
    if b is not None:
        qkv = ctx.add("Add", [qkv, ctx.cast(ctx.value(b), dtype, cd)], dtype=cd, shape=packed_shape)
    part = (bsz, s, rows // 3)
    q, k, v = (ctx.fresh(f"{node.name}_{n}") for n in "qkv")
    ctx.add("Split", [qkv], [q, k, v], dtype=cd, shape=part, axis=-1, num_outputs=3)
    _heads_attention(ctx, node, (q, part), (k, part), (v, part), cd=cd)


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
    "reduce_sum": _reduce_emitter("ReduceSum"), "reduce_mean": _reduce_emitter("ReduceMean"),
    "reduce_max": _reduce_emitter("ReduceMax"), "reduce_min": _reduce_emitter("ReduceMin"),
    "argmax": emit_argmax, "reduce_prod": _reduce_emitter("ReduceProd"), "cumsum": emit_cumsum,
    "cumprod": emit_cumprod,
    "flip": emit_flip, "pad": emit_pad, "gather_elements": emit_gather_elements,
    "scatter_elements": emit_scatter_elements, "index": emit_index, "index_put": emit_index_put,
    "topk": emit_topk, "sort": emit_sort, "nonzero": emit_nonzero, "grid_sample": emit_grid_sample,
    "embedding_bag": emit_embedding_bag, "unique": emit_unique, "adaptive_max_pool": emit_adaptive_max_pool,
    "max_pool_with_indices": emit_max_pool_with_indices, "conv_transpose": emit_conv_transpose,
    "group_norm": emit_group_norm, "resize": emit_resize,
    "reshape": emit_reshape, "expand": emit_expand, "transpose": emit_transpose, "concat": emit_concat,
    "slice": emit_slice, "gather": emit_gather,
    "matmul": emit_matmul, "linear": emit_linear, "conv": emit_conv,
    "batch_norm": emit_batch_norm, "layer_norm": emit_layer_norm,
    "softmax": _softmax_emitter("Softmax"), "log_softmax": _softmax_emitter("LogSoftmax"),
    "max_pool": emit_max_pool, "avg_pool": emit_avg_pool, "adaptive_avg_pool": emit_adaptive_avg_pool,
    "attention": emit_attention, "multi_head_attention": emit_multi_head_attention,
    "qkv_attention": emit_qkv_attention,
    "quantize_linear": emit_quantize_linear, "dequantize_linear": emit_dequantize_linear,
    "dynamic_quantize_linear": emit_dynamic_quantize_linear, "matmul_integer": emit_matmul_integer,
}


def supported_ops() -> set[str]:
    """IR ops this backend has an emitter for."""
    return set(EMITTERS)


# -- the model ---------------------------------------------------------------------------------
def _value_info(name: str, dtype: DType, shape: tuple | None) -> onnx.ValueInfoProto:
    dims_ = None if shape is None else [d if isinstance(d, int) else str(d) for d in shape]
    return helper.make_tensor_value_info(name, ONNX_DTYPES[dtype], dims_)


# onnxruntime 1.32 implements QuantizeLinear / DequantizeLinear up to version 25 (opset 28 added a
# version it has no kernel for): a graph with quantization ops is emitted at opset 25 at most.
QDQ_MAX_OPSET = 25
_QDQ_OPS = frozenset({"quantize_linear", "dequantize_linear"})


def _quant_opset(graph: Graph, opset: int) -> int:
    if opset > QDQ_MAX_OPSET and any(n.op in _QDQ_OPS for n in graph.nodes):
        return QDQ_MAX_OPSET
    return opset


def emit_onnx(graph: Graph, *, opset: int = DEFAULT_OPSET, standard_only: bool = False,
              producer: str = "aot-compiler") -> onnx.ModelProto:
    """The ONNX model computing ``graph``. With ``standard_only`` only standard ONNX ops are
    used and the model passes ``onnx.checker`` full_check; otherwise onnxruntime's contrib
    kernels (FusedConv, MultiHeadAttention, Attention) are used where they apply, and the model passes
    the checker with shape inference that skips those contrib nodes."""
    max_opset = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= max_opset:
        raise CompileError(f"ONNX opset {opset} is not supported; use an opset from {MIN_OPSET} to {max_opset}")
    opset = _quant_opset(graph, opset)
    ctx = EmitContext(graph, opset, standard_only)
    for node in graph.nodes:
        ctx.current = node
        emitter = EMITTERS.get(node.op)
        if emitter is None:
            raise UnsupportedOpError(node.op, stage=STAGE, location=node.location,
                                     detail="the ONNX backend has no emitter for this op")
        try:
            emitter(ctx, node)
        except (UnsupportedOpError, CompileError):
            raise
        except Exception as exc:
            exc.add_note(f"while emitting {node.describe()} to ONNX")
            raise
        for out in node.outputs:
            ctx.value_types[out.name] = (out.dtype, out.shape)
    ctx.current = None

    # Graph outputs must be distinct node outputs: copy inputs, constants and repeats.
    output_names: list[str] = []
    seen: set[str] = set()
    for v in graph.outputs:
        name = ctx.value(v)
        if v.producer is None or name in seen:
            copy = ctx.fresh(f"{v.name}_out")
            ctx.add("Identity", [name], copy)
            name = copy
        seen.add(name)
        output_names.append(name)
        ctx.value_types[name] = (v.dtype, v.shape)

    inputs = [_value_info(v.name, v.dtype, v.shape) for v in graph.inputs]
    outputs = [_value_info(n, v.dtype, v.shape) for n, v in zip(output_names, graph.outputs)]
    io_names = {v.name for v in graph.inputs} | set(output_names) | set(ctx.initializers)
    value_info = [_value_info(n, dt, sh) for n, (dt, sh) in ctx.value_types.items()
                  if n not in io_names and sh is not None]
    onnx_graph = helper.make_graph(ctx.nodes, graph.name, inputs, outputs,
                                   initializer=list(ctx.initializers.values()), value_info=value_info)
    opset_imports = [helper.make_opsetid("", opset)]
    if ctx.uses_contrib:
        opset_imports.append(helper.make_opsetid(CONTRIB, 1))
    model = helper.make_model(onnx_graph, opset_imports=opset_imports, producer_name=producer)
    model.ir_version = helper.find_min_ir_version_for(opset_imports[:1])  # contrib domain: no IR rule

    # Fill in the types of helper values we did not type ourselves, then check strictly.
    try:
        # onnx has no schemas for contrib ops: strict inference only for standard-only models
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=not ctx.uses_contrib,
                                                     data_prop=True)
    except Exception as exc:
        raise _check_error(ctx, exc) from exc
    typed = {vi.name for vi in model.graph.value_info} | io_names
    for vi in inferred.graph.value_info:
        if vi.name not in typed:
            model.graph.value_info.append(vi)
            typed.add(vi.name)
    for name, (dt, _) in ctx.value_types.items():
        if name not in typed:
            model.graph.value_info.append(_value_info(name, dt, None))
    try:
        onnx.checker.check_model(model, full_check=not ctx.uses_contrib)
    except Exception as exc:
        raise _check_error(ctx, exc) from exc
    return model


def emit_target(graph: Graph, options: dict) -> tuple[dict[str, bytes], dict]:
    """The registry's entry point: the artifact payload (``model.onnx``) and target info."""
    opset = options.get("opset") or DEFAULT_OPSET
    standard_only = bool(options.get("onnx_standard_only"))
    model = emit_onnx(graph, opset=opset, standard_only=standard_only)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))  # may be lowered for QDQ
    info = {"opset": opset, "standard_only": standard_only}
    if _int4_weights(graph):
        info["session_config"] = dict(INT4_SESSION_CONFIG)
    elif _weight_only(graph):
        # onnxruntime keeps DequantizeLinear of an initializer unfolded (to keep QDQ groups whole) and
        # so dequantizes the weights on every call (1.2-3.5x slower); with QDQ handling off it folds
        # them once at load: int8 storage, float speed. The runtime applies this session option.
        info["session_config"] = {"session.disable_quant_qdq": "1"}
    tolerance = _quantized_tolerance(graph)
    if tolerance is not None:
        info["tolerance"] = tolerance
    return {"model.onnx": model.SerializeToString()}, info


# onnxruntime's fused int8 kernels (QGemm, QLinearConv) requantize the exact integer sum once where
# the QDQ reference sums dequantized floats: at a rounding tie an activation lands one step away,
# which moves an output by about that step times a weight. Verification allows a few such steps.
QUANT_VERIFY_STEPS = 4.0
QUANT_VERIFY_RTOL = 0.02


def _quantized_tolerance(graph: Graph) -> dict | None:
    """Verification tolerance for a graph with statically quantized activations, else None."""
    scales = [float(np.max(n.inputs[1].const)) for n in graph.nodes
              if n.op == "quantize_linear" and n.inputs[1].is_const]
    if not scales:
        return None
    return {"rtol": QUANT_VERIFY_RTOL, "atol": QUANT_VERIFY_STEPS * max(scales)}


# onnxruntime fuses DequantizeLinear(int4, blocked, axis 0) -> MatMul [-> Add] into MatMulNBits, but
# its earlier MatMulAddFusion turns a MatMul + Add that feeds an activation into a Gemm first, which
# leaves the DequantizeLinear running on every call (measured 1.7x slower than float on the digits
# MLP): that fusion is switched off. Accuracy level 1 keeps MatMulNBits in float32 like the
# reference; level 4, onnxruntime's default, quantizes activations to int8 (0.5% off the reference;
# 0.56x of float at batch 1 on the seed MLP, but 1.8x on digits-MLP-sized layers at batch 64).
INT4_SESSION_CONFIG = {"optimization.disable_specified_optimizers": "MatMulAddFusion",
                       "session.qdq_matmulnbits_accuracy_level": "1"}


def _int4_weights(graph: Graph) -> bool:
    return any(n.op == "dequantize_linear" and n.attrs.get("bits") == 4 for n in graph.nodes)


def _weight_only(graph: Graph) -> bool:
    """Only constant int8 weights dequantized: no quantized activations anywhere."""
    dq = [n for n in graph.nodes if n.op == "dequantize_linear"]
    return bool(dq) and all(n.inputs[0].is_const for n in dq) \
        and not any(n.op in ("quantize_linear", "dynamic_quantize_linear", "matmul_integer") for n in graph.nodes)


def _check_error(ctx: EmitContext, exc: Exception) -> OnnxEmitError:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    match = re.search(r"node name: ([^)\s]+)\)", str(exc))
    node = ctx.node_of.get(match.group(1)) if match else None
    where = f" for {node.describe()}" if node is not None else ""
    return OnnxEmitError(f"the ONNX backend emitted an invalid model{where}: {message}; "
                         "this is a compiler bug, please report it")


__all__ = ["DEFAULT_OPSET", "EMITTERS", "EmitContext", "OnnxEmitError", "emit_onnx", "emit_target", "supported_ops"]
