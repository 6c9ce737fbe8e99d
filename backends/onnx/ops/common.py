"""What every ONNX emitter shares: ``EmitContext`` (collects the ONNX nodes, initializers and
value types while the emitters run; fresh names, shared constants, casts into a dtype onnxruntime's
CPU kernels implement, run-time symbolic dims), the dtype tables it reads (``ONNX_DTYPES``,
``ORT_CPU_TYPES``), the ``Emitter`` signature ``(ctx, node) -> None`` and ``_finish``.

This module imports onnx and numpy only: no torch, no onnxruntime.
"""

from __future__ import annotations

import ast
import re
from typing import Callable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from compiler import dims
from compiler.errors import UnsupportedOpError
from compiler.ir import DType, Graph, Node, Value


STAGE = "the ONNX backend"
CONTRIB = "com.microsoft"  # onnxruntime's contrib operator domain


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
        # Not copied (a big weight may be a view of the model's own): initializers are never written.
        array = np.asarray(array, dtype=np_dtype)
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


# -- shared by the family modules --------------------------------------------------------------
def _finish(ctx, result: str, cd: DType, dtype: DType, shape, out) -> str:
    """Name ``result`` (computed in ``cd``) ``out`` in ``dtype``."""
    if cd != dtype:
        return ctx.cast(result, cd, dtype, shape, out=out or ctx.fresh(f"{ctx._prefix()}_out"))
    if out is not None:
        return ctx.add("Identity", [result], out, dtype=dtype, shape=shape)
    return result
