"""ONNX backend: differential tests against the reference interpreter (the spec).

Every op in the registry has at least one hand-built graph run through ``run_graph`` and through
``emit_onnx`` + onnxruntime. Tolerances: ints and bools exact; float32 rtol = atol = 1e-5;
conv, attention and normalisation atol 1e-4 (the reference accumulates in float64, onnxruntime in
float32 with a different summation order); float16 rtol = atol = 2e-3 (onnxruntime's CPU kernels
compute those ops in float32 and round once, the reference rounds per numpy op). ``emit_onnx``
itself runs ``onnx.checker.check_model(full_check=True)`` on every model emitted here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from backends.onnx.emit import DEFAULT_OPSET, EMITTERS, emit_onnx, supported_ops  # noqa: E402
from backends.onnx.runtime import load_runner, session_from_model  # noqa: E402
from compiler.errors import InputError, UnsupportedOpError  # noqa: E402
from compiler.interpreter import run_graph  # noqa: E402
from compiler.ir import DType, Graph, TensorType  # noqa: E402
from compiler.ops import all_ops  # noqa: E402
from compiler.ops.nn import FUSABLE_ACTIVATIONS  # noqa: E402

EXACT = (0.0, 0.0)
F32 = (1e-5, 1e-5)      # (rtol, atol)
LOOSE = (1e-5, 1e-4)    # conv, attention, norms
F16 = (2e-3, 2e-3)


# -- helpers -----------------------------------------------------------------------------------
def rand(rng: np.random.Generator, dtype: str, shape: tuple, low: float = -3.0, high: float = 3.0, *,
         discrete: bool = False) -> np.ndarray:
    """Random data of ``dtype``: uniform floats, integers in [low, high], fair bools. ``discrete``
    floats are small integers (so comparisons see equal values)."""
    dt = np.dtype(dtype)
    if dt == np.bool_:
        return rng.random(shape) < 0.5
    if dt.kind in "iu" or discrete:
        return rng.integers(int(low), int(high) + 1, size=shape).astype(dt)
    return rng.uniform(low, high, size=shape).astype(dt)


@dataclass
class In:
    """A graph input of ``dtype``/``shape`` (dims may be symbolic when ``data`` is given)."""
    dtype: str
    shape: tuple
    low: float = -3.0
    high: float = 3.0
    discrete: bool = False
    data: Callable[[np.random.Generator], np.ndarray] | None = None

    def array(self, rng):
        return self.data(rng) if self.data else rand(rng, self.dtype, self.shape, self.low, self.high,
                                                      discrete=self.discrete)


@dataclass
class Const:
    """A constant: ``value`` is an array or a function of the rng."""
    value: Any


def single_op(op: str, *specs, **attrs) -> Callable[[np.random.Generator], tuple[Graph, list]]:
    """Builder of a one-node graph applying ``op`` to inputs/constants/None described by ``specs``."""

    def build(rng):
        g = Graph(op)
        values, arrays = [], []
        for i, spec in enumerate(specs):
            if spec is None:
                values.append(None)
            elif isinstance(spec, Const):
                arr = spec.value(rng) if callable(spec.value) else np.asarray(spec.value)
                values.append(g.add_constant(arr, f"c{i}"))
            else:
                arr = spec.array(rng)
                values.append(g.add_input(f"x{i}", TensorType(DType(spec.dtype), tuple(spec.shape))))
                arrays.append(arr)
        g.set_outputs(list(g.add_node(op, values, attrs).outputs))
        return g, arrays

    return build


def run_onnx(graph: Graph, inputs: list[np.ndarray], opset: int = DEFAULT_OPSET):
    model = emit_onnx(graph, opset=opset)
    session = session_from_model(model.SerializeToString(), threads=1)
    names = [i.name for i in session.get_inputs()]
    return session.run(None, dict(zip(names, inputs))), model


def assert_outputs_match(expected, actual, tol=F32):
    assert len(expected) == len(actual)
    for e, a in zip(expected, actual):
        assert a.dtype == e.dtype, f"dtype {a.dtype} != {e.dtype}"
        assert a.shape == e.shape, f"shape {a.shape} != {e.shape}"
        if np.issubdtype(e.dtype, np.floating):
            np.testing.assert_allclose(a, e, rtol=tol[0], atol=tol[1])
        else:
            np.testing.assert_array_equal(a, e)


def assert_fully_typed(model) -> None:
    """Every value has a dtype and a shape (inputs, outputs, value_info or initializers)."""
    typed = {vi.name: vi.type.tensor_type for vi in
             [*model.graph.value_info, *model.graph.output, *model.graph.input]}
    for node in model.graph.node:
        for out in node.output:
            assert out in typed, f"{out} ({node.op_type}) has no value_info"
            assert typed[out].elem_type != 0 and typed[out].HasField("shape"), f"{out} is not fully typed"


def check(graph: Graph, inputs: list[np.ndarray], tol=F32, opset: int = DEFAULT_OPSET):
    expected = run_graph(graph, inputs)
    actual, model = run_onnx(graph, inputs, opset)
    assert_outputs_match(expected, actual, tol)
    assert_fully_typed(model)
    return model


def away_from_zero(dtype, shape, low=0.5, high=2.0):
    def data(rng):
        mag = rng.uniform(low, high, size=shape)
        return (mag * np.where(rng.random(shape) < 0.5, -1, 1)).astype(dtype)
    return data


def bool_mask_with_true_per_row(shape):
    def data(rng):
        m = rng.random(shape) < 0.5
        m[..., 0] = True  # every query row keeps one key (a fully masked row is NaN everywhere)
        return m
    return data


# -- per-op cases ------------------------------------------------------------------------------
CASES: list = []


def case(case_id: str, op: str, *specs, tol=F32, **attrs):
    CASES.append(pytest.param(op, single_op(op, *specs, **attrs), tol, id=case_id))


S = (2, 3, 4)
# unary float math
for _op, _lo, _hi in [("neg", -3, 3), ("abs", -3, 3), ("exp", -3, 3), ("log", 0.1, 5), ("sqrt", 0, 5),
                      ("rsqrt", 0.1, 5), ("sin", -4, 4), ("cos", -4, 4), ("tanh", -3, 3), ("erf", -3, 3),
                      ("floor", -3, 3), ("ceil", -3, 3), ("sigmoid", -10, 10), ("relu", -3, 3),
                      ("silu", -6, 6), ("hardsigmoid", -5, 5), ("hardswish", -5, 5)]:
    case(f"{_op}-f32", _op, In("float32", S, _lo, _hi))
case("reciprocal-f32", "reciprocal", In("float32", S, data=away_from_zero(np.float32, S)))
case("gelu-none", "gelu", In("float32", S, -4, 4))
case("gelu-tanh", "gelu", In("float32", S, -4, 4), approximate="tanh")
case("clamp-both", "clamp", In("float32", S), min=-0.5, max=1.25)
case("clamp-min", "clamp", In("float32", S), min=0.1)
case("clamp-max", "clamp", In("float32", S), max=-0.2)
case("clamp-i32", "clamp", In("int32", S, -10, 10), min=-3.0, max=4.0)
case("clamp-i64-frac", "clamp", In("int64", S, -10, 10), min=-2.5, max=3.7)
case("leaky_relu-default", "leaky_relu", In("float32", S))
case("leaky_relu-0.2", "leaky_relu", In("float32", (5,)), negative_slope=0.2)
case("logical_not", "logical_not", In("bool", S))
# other dtypes (onnxruntime lacks some kernels: the backend widens and casts back)
case("neg-i64", "neg", In("int64", S, -100, 100))
case("neg-i32", "neg", In("int32", S, -100, 100))
case("neg-i8", "neg", In("int8", S, -127, 127))
case("neg-u8", "neg", In("uint8", S, 0, 255))
case("abs-i32", "abs", In("int32", S, -100, 100))
case("abs-i8", "abs", In("int8", S, -127, 127))
case("relu-i64", "relu", In("int64", S, -5, 5))
case("relu-i32", "relu", In("int32", S, -5, 5))
case("relu-i16", "relu", In("int16", S, -5, 5))
case("relu-u8", "relu", In("uint8", S, 0, 255))
case("exp-f16", "exp", In("float16", S, -2, 2), tol=F16)
case("sigmoid-f64", "sigmoid", In("float64", S, -5, 5))
case("tanh-f64", "tanh", In("float64", S))
case("gelu-f64", "gelu", In("float64", S))  # onnxruntime's Gelu is float32-only: computed in float32
case("hardswish-f16", "hardswish", In("float16", S, -5, 5), tol=F16)
case("rsqrt-f16", "rsqrt", In("float16", S, 0.5, 4), tol=F16)
case("silu-f16", "silu", In("float16", S), tol=F16)
# cast
case("cast-f32-i32", "cast", In("float32", S, -5, 5), dtype="int32")  # truncation toward zero
case("cast-f32-i64", "cast", In("float32", S, -5, 5), dtype="int64")
case("cast-f32-u8", "cast", In("float32", S, 0, 250), dtype="uint8")
case("cast-f32-bool", "cast", In("float32", S, -1, 1, discrete=True), dtype="bool")
case("cast-i64-f32", "cast", In("int64", S, -1000, 1000), dtype="float32")
case("cast-bool-f32", "cast", In("bool", S), dtype="float32")
case("cast-i64-bool", "cast", In("int64", S, -2, 2), dtype="bool")
case("cast-i32-i8-wraps", "cast", In("int32", S, -300, 300), dtype="int8")
case("cast-f32-f16", "cast", In("float32", S), dtype="float16")
case("cast-f16-f64", "cast", In("float16", S), dtype="float64")

# binary, with broadcasting
case("add-f32-bcast", "add", In("float32", (2, 3, 4)), In("float32", (3, 1)))
case("add-i64", "add", In("int64", (4,), -50, 50), In("int64", (2, 4), -50, 50))
case("add-i8-wraps", "add", In("int8", S, -128, 127), In("int8", S, -128, 127))
case("add-f16", "add", In("float16", S), In("float16", (4,)), tol=F16)
case("sub-f32-bcast", "sub", In("float32", (2, 1, 4)), In("float32", (3, 1)))
case("sub-i32", "sub", In("int32", S, -50, 50), In("int32", S, -50, 50))
case("sub-const", "sub", Const(np.float32(1.5)), In("float32", S))
case("mul-f32-scalar", "mul", In("float32", S), In("float32", ()))
case("mul-i64", "mul", In("int64", S, -20, 20), In("int64", (1, 3, 1), -20, 20))
case("div-f32", "div", In("float32", S), In("float32", (3, 4), data=away_from_zero(np.float32, (3, 4))))
case("div-f64", "div", In("float64", S), In("float64", (4,), data=away_from_zero(np.float64, (4,))))
case("pow-f32", "pow", In("float32", S, 0.1, 3), In("float32", S, -2, 2))
case("pow-f32-square", "pow", In("float32", S), Const(np.float32(2.0)))
case("pow-i64", "pow", In("int64", S, -4, 4), In("int64", (4,), 0, 3))
case("pow-i32", "pow", In("int32", S, -4, 4), In("int32", S, 0, 3))
case("maximum-f32", "maximum", In("float32", S), In("float32", (4,)))
case("maximum-i32", "maximum", In("int32", S, -9, 9), In("int32", S, -9, 9))
case("maximum-bool", "maximum", In("bool", S), In("bool", S))
case("minimum-f32", "minimum", In("float32", (2, 1, 4)), In("float32", (3, 1)))
case("minimum-i16", "minimum", In("int16", S, -9, 9), In("int16", S, -9, 9))
case("minimum-f16", "minimum", In("float16", S), In("float16", S), tol=F16)
for _op in ["eq", "ne", "lt", "le", "gt", "ge"]:
    case(f"{_op}-f32", _op, In("float32", S, -2, 2, discrete=True), In("float32", (3, 4), -2, 2, discrete=True))
    case(f"{_op}-i64", _op, In("int64", S, -2, 2), In("int64", (4,), -2, 2))
case("eq-bool", "eq", In("bool", S), In("bool", S))
case("lt-bool", "lt", In("bool", S), In("bool", (4,)))
case("ge-f16", "ge", In("float16", S, -2, 2, discrete=True), In("float16", S, -2, 2, discrete=True))
case("le-i8", "le", In("int8", S, -2, 2), In("int8", S, -2, 2))
case("logical_and", "logical_and", In("bool", S), In("bool", (3, 1)))
case("logical_or", "logical_or", In("bool", (4,)), In("bool", S))
case("where-f32", "where", In("bool", (2, 1, 4)), In("float32", (3, 4)), In("float32", (2, 3, 1)))
case("where-i64", "where", In("bool", S), In("int64", S, -9, 9), In("int64", (), -9, 9))
case("where-bool", "where", In("bool", S), In("bool", S), In("bool", (4,)))
case("where-f16", "where", In("bool", S), In("float16", S), In("float16", S), tol=EXACT)

# reductions
R = (2, 3, 4, 5)
case("reduce_sum-axis1", "reduce_sum", In("float32", R), axes=(1,))
case("reduce_sum-neg-keep", "reduce_sum", In("float32", R), axes=(-1,), keepdim=True)
case("reduce_sum-two-axes", "reduce_sum", In("float32", R), axes=(0, 2))
case("reduce_sum-all", "reduce_sum", In("float32", R), axes=())
case("reduce_sum-all-keep", "reduce_sum", In("float32", R), axes=(), keepdim=True)
case("reduce_sum-i32", "reduce_sum", In("int32", R, -100, 100), axes=(1, -1))
case("reduce_sum-i64-all", "reduce_sum", In("int64", R, -100, 100), axes=())
case("reduce_sum-i8-wraps", "reduce_sum", In("int8", R, -128, 127), axes=(2,))
case("reduce_sum-bool", "reduce_sum", In("bool", R), axes=(1,))
case("reduce_sum-dup-axes", "reduce_sum", In("float32", R), axes=(1, -3, 3))
case("reduce_sum-scalar", "reduce_sum", In("float32", ()), axes=())
case("reduce_mean-keep", "reduce_mean", In("float32", R), axes=(1, 2), keepdim=True)
case("reduce_mean-all", "reduce_mean", In("float32", R), axes=())
case("reduce_mean-neg", "reduce_mean", In("float32", R), axes=(-2,))
case("reduce_mean-f16", "reduce_mean", In("float16", R), axes=(-1,), tol=F16)
case("reduce_max-neg", "reduce_max", In("float32", R), axes=(-1,))
case("reduce_max-keep", "reduce_max", In("float32", R), axes=(0, 3), keepdim=True)
case("reduce_max-i64", "reduce_max", In("int64", R, -1000, 1000), axes=(1,))
case("reduce_max-bool", "reduce_max", In("bool", R), axes=(2,))
case("reduce_max-i16", "reduce_max", In("int16", R, -1000, 1000), axes=(1,))
case("reduce_min-all", "reduce_min", In("float32", R), axes=())
case("reduce_min-i32-keep", "reduce_min", In("int32", R, -1000, 1000), axes=(2,), keepdim=True)
case("argmax-last", "argmax", In("float32", R), axis=-1)
case("argmax-keep", "argmax", In("float32", R), axis=1, keepdim=True)
case("argmax-ties", "argmax", In("int64", R, 0, 2), axis=0)  # ties: first index, as numpy
case("argmax-i32", "argmax", In("int32", R, -9, 9), axis=2)

# shape ops
case("reshape-static", "reshape", In("float32", S), shape=(4, 6))
case("reshape-to-rank1", "reshape", In("int64", S), shape=(24,))
case("reshape-add-ones", "reshape", In("bool", S), shape=(1, 2, 1, 12))
case("reshape-literal-zero", "reshape", In("float32", (2, 0, 3)), shape=(0, 6))
case("transpose-3d", "transpose", In("float32", S), perm=(2, 0, 1))
case("transpose-4d", "transpose", In("int64", (2, 3, 4, 5)), perm=(0, 2, 1, 3))
case("concat-3-inputs", "concat", In("float32", (2, 1, 4)), In("float32", (2, 3, 4)), In("float32", (2, 2, 4)), axis=1)
case("concat-neg-axis-i64", "concat", In("int64", (2, 3)), In("int64", (2, 1)), axis=-1)
case("concat-one-input", "concat", In("float32", S), axis=0)
case("concat-with-const", "concat", Const(np.arange(4, dtype=np.float32).reshape(1, 4)), In("float32", (3, 4)), axis=0)
case("slice-basic", "slice", In("float32", (4, 6)), axis=1, start=1, end=3)
case("slice-neg-start-step", "slice", In("float32", (4, 10)), axis=-1, start=-7, step=2)
case("slice-end-beyond", "slice", In("int64", (5, 3)), axis=0, start=2, end=100)
case("slice-start-beyond", "slice", In("float32", (5, 3)), axis=0, start=7, end=9)
case("slice-neg-end", "slice", In("float32", (2, 9)), axis=1, start=1, end=-2, step=3)
case("slice-huge-end", "slice", In("float32", (3, 4)), axis=1, start=-2, end=2 ** 63 - 1)
case("gather-embedding", "gather", Const(lambda rng: rng.standard_normal((10, 4)).astype(np.float32)),
     In("int64", (2, 5), -10, 9), axis=0)
case("gather-axis1-i32", "gather", In("float32", (3, 5, 2)), In("int32", (4,), -5, 4), axis=1)
case("gather-neg-axis-u8", "gather", In("float32", (3, 5)), In("uint8", (2, 2), 0, 4), axis=-1)
case("gather-scalar-index", "gather", In("int64", (6, 3)), In("int64", (), -6, 5), axis=0)
case("expand-basic", "expand", In("float32", (3, 1)), shape=(2, 3, 4))
case("expand-same", "expand", In("int64", (1,)), shape=(5,))
case("expand-bool", "expand", In("bool", (1, 4)), shape=(3, 4))

# matmul / linear
case("matmul-2d", "matmul", In("float32", (3, 4)), In("float32", (4, 5)))
case("matmul-batched", "matmul", In("float32", (2, 3, 4)), In("float32", (4, 5)))
case("matmul-bcast-4d", "matmul", In("float32", (2, 1, 3, 4)), In("float32", (3, 4, 2)))
case("matmul-1d-2d", "matmul", In("float32", (4,)), In("float32", (4, 5)))
case("matmul-2d-1d", "matmul", In("float32", (3, 4)), In("float32", (4,)))
case("matmul-1d-1d", "matmul", In("float32", (4,)), In("float32", (4,)))
case("matmul-i32", "matmul", In("int32", (3, 4), -5, 5), In("int32", (4, 2), -5, 5))
case("matmul-i64", "matmul", In("int64", (2, 3, 4), -5, 5), In("int64", (4, 2), -5, 5))
case("matmul-f16", "matmul", In("float16", (3, 4), -1, 1), In("float16", (4, 5), -1, 1), tol=(5e-3, 5e-3))


def _w(*shape):
    return Const(lambda rng: (rng.standard_normal(shape) / math.sqrt(shape[-1])).astype(np.float32))


case("linear-2d-bias", "linear", In("float32", (3, 8)), _w(5, 8), _w(5))
case("linear-2d-nobias", "linear", In("float32", (3, 8)), _w(5, 8))
case("linear-3d-bias", "linear", In("float32", (2, 3, 8)), _w(5, 8), _w(5))
case("linear-3d-nobias", "linear", In("float32", (2, 3, 8)), _w(5, 8))
case("linear-1d", "linear", In("float32", (8,)), _w(5, 8), _w(5))
case("linear-weight-input", "linear", In("float32", (2, 3, 8)), In("float32", (5, 8)), In("float32", (5,)))
case("linear-2d-weight-input", "linear", In("float32", (3, 8)), In("float32", (5, 8)))
for _act, (_op, _fixed, _names) in FUSABLE_ACTIVATIONS.items():
    _args = {0: (), 1: (0.2,), 2: (-0.5, 0.75)}[len(_names)]
    case(f"linear-fused-{_act}", "linear", In("float32", (3, 8)), _w(5, 8), _w(5), activation=_act,
         activation_args=_args)
case("linear-fused-clamp-nan-min", "linear", In("float32", (2, 3, 8)), _w(5, 8), _w(5), activation="clamp",
     activation_args=(float("nan"), 0.5))
case("linear-fused-gelu-3d", "linear", In("float32", (2, 3, 8)), _w(5, 8), None, activation="gelu_tanh")
case("linear-f64", "linear", In("float64", (2, 3, 8)),
     Const(lambda rng: rng.standard_normal((5, 8))), Const(lambda rng: rng.standard_normal(5)))
case("linear-f16-fused", "linear", In("float16", (3, 8), -1, 1),
     Const(lambda rng: (rng.standard_normal((5, 8)) / 3).astype(np.float16)), None, activation="relu",
     tol=(5e-3, 5e-3))

# convolution
case("conv1d-stride-dil-groups-pad", "conv", In("float32", (2, 4, 11)), _w(6, 2, 3), _w(6), stride=(2,),
     padding=(1, 2), dilation=(2,), groups=2, tol=LOOSE)
case("conv2d-basic", "conv", In("float32", (2, 3, 7, 6)), _w(4, 3, 3, 3), None, stride=(1, 1),
     padding=(1, 1, 1, 1), dilation=(1, 1), tol=LOOSE)
case("conv2d-stride-asym-pad", "conv", In("float32", (1, 3, 8, 7)), _w(5, 3, 3, 2), _w(5), stride=(2, 3),
     padding=(0, 1, 2, 0), dilation=(1, 1), tol=LOOSE)
case("conv2d-groups-dilation", "conv", In("float32", (2, 4, 9, 9)), _w(6, 2, 3, 3), _w(6), stride=(1, 2),
     padding=(2, 1, 2, 1), dilation=(2, 1), groups=2, tol=LOOSE)
case("conv2d-depthwise", "conv", In("float32", (2, 4, 6, 6)), _w(8, 1, 3, 3), _w(8), stride=(1, 1),
     padding=(1, 1, 1, 1), dilation=(1, 1), groups=4, tol=LOOSE)
case("conv2d-1x1", "conv", In("float32", (2, 8, 5, 5)), _w(3, 8, 1, 1), _w(3), stride=(1, 1),
     padding=(0, 0, 0, 0), dilation=(1, 1), tol=LOOSE)
case("conv3d", "conv", In("float32", (1, 2, 4, 5, 5)), _w(3, 2, 2, 3, 3), _w(3), stride=(1, 2, 1),
     padding=(0, 1, 1, 1, 0, 1), dilation=(1, 1, 1), tol=LOOSE)
case("conv2d-fused-relu", "conv", In("float32", (2, 3, 6, 6)), _w(4, 3, 3, 3), _w(4), stride=(1, 1),
     padding=(1, 1, 1, 1), dilation=(1, 1), activation="relu", tol=LOOSE)
case("conv2d-fused-hardswish", "conv", In("float32", (2, 3, 6, 6)), _w(4, 3, 3, 3), _w(4), stride=(2, 2),
     padding=(1, 1, 1, 1), dilation=(1, 1), activation="hardswish", tol=LOOSE)
case("conv2d-fused-clamp", "conv", In("float32", (2, 3, 6, 6)), _w(4, 3, 3, 3), None, stride=(1, 1),
     padding=(0, 0, 0, 0), dilation=(1, 1), activation="clamp", activation_args=(0.0, 6.0), tol=LOOSE)
case("conv2d-f64", "conv", In("float64", (1, 2, 5, 5)),
     Const(lambda rng: rng.standard_normal((3, 2, 3, 3))), None, stride=(1, 1), padding=(1, 1, 1, 1),
     dilation=(1, 1), tol=LOOSE)  # onnxruntime's Conv is float32-only: computed in float32

# normalisation, softmax
_pos = Const(lambda rng: rng.uniform(0.5, 2.0, 4).astype(np.float32))
case("batch_norm-4d", "batch_norm", In("float32", (2, 4, 3, 3)), _w(4), _pos, _w(4), _w(4), eps=1e-3, tol=LOOSE)
case("batch_norm-2d", "batch_norm", In("float32", (5, 4)), _w(4), _pos, _w(4), _w(4), tol=LOOSE)
case("batch_norm-no-affine", "batch_norm", In("float32", (2, 4, 5)), _w(4), _pos, tol=LOOSE)
case("batch_norm-no-weight", "batch_norm", In("float32", (2, 4, 5)), _w(4), _pos, None, _w(4), tol=LOOSE)
case("batch_norm-no-bias", "batch_norm", In("float32", (2, 4, 5)), _w(4), _pos, _w(4), tol=LOOSE)
case("layer_norm-1", "layer_norm", In("float32", (2, 3, 8)), _w(8), _w(8), tol=LOOSE)
case("layer_norm-2-weight-only", "layer_norm", In("float32", (2, 3, 4)), _w(3, 4), None, normalized_ndim=2,
     eps=1e-6, tol=LOOSE)
case("layer_norm-no-affine", "layer_norm", In("float32", (4, 6)), tol=LOOSE)
case("layer_norm-bias-only", "layer_norm", In("float32", (4, 6)), None, _w(6), tol=LOOSE)
case("softmax-last", "softmax", In("float32", S, -5, 5), axis=-1)
case("softmax-axis1", "softmax", In("float32", S, -5, 5), axis=1)
case("softmax-f64", "softmax", In("float64", S, -5, 5), axis=0)
case("log_softmax-last", "log_softmax", In("float32", S, -5, 5), axis=-1)
case("log_softmax-axis0", "log_softmax", In("float32", S, -5, 5), axis=0)

# pooling
P = (2, 3, 7, 7)
case("max_pool-k3s2p1", "max_pool", In("float32", P), kernel=(3, 3), stride=(2, 2), padding=(1, 1, 1, 1),
     dilation=(1, 1))
case("max_pool-ceil", "max_pool", In("float32", (2, 3, 8, 8)), kernel=(3, 3), stride=(2, 2),
     padding=(0, 0, 0, 0), dilation=(1, 1), ceil_mode=True)
case("max_pool-ceil-pad-drop", "max_pool", In("float32", (1, 2, 5, 5)), kernel=(2, 2), stride=(2, 2),
     padding=(1, 1, 1, 1), dilation=(1, 1), ceil_mode=True)
case("max_pool-dilation", "max_pool", In("float32", P), kernel=(2, 3), stride=(1, 2), padding=(1, 0, 1, 0),
     dilation=(2, 2))
case("max_pool-asym-pad", "max_pool", In("float32", P, -3, -1), kernel=(3, 3), stride=(2, 2),
     padding=(0, 1, 2, 1), dilation=(1, 1))  # all-negative input: padding must never win
case("max_pool-1d", "max_pool", In("float32", (2, 3, 10)), kernel=(3,), stride=(2,), padding=(1, 1),
     dilation=(1,), ceil_mode=True)
case("max_pool-i8", "max_pool", In("int8", P, -128, 127), kernel=(2, 2), stride=(2, 2), padding=(1, 1, 1, 1),
     dilation=(1, 1))
case("max_pool-i32", "max_pool", In("int32", P, -1000, 1000), kernel=(2, 2), stride=(2, 2),
     padding=(0, 0, 0, 0), dilation=(1, 1))
case("avg_pool-k2s2", "avg_pool", In("float32", (2, 3, 8, 6)), kernel=(2, 2), stride=(2, 2),
     padding=(0, 0, 0, 0))
case("avg_pool-pad-incl", "avg_pool", In("float32", P), kernel=(3, 3), stride=(2, 2), padding=(1, 1, 1, 1))
case("avg_pool-pad-excl", "avg_pool", In("float32", P), kernel=(3, 3), stride=(2, 2), padding=(1, 1, 1, 1),
     count_include_pad=False)
for _cip in (True, False):
    _tag = "incl" if _cip else "excl"
    case(f"avg_pool-ceil-overhang-{_tag}", "avg_pool", In("float32", (2, 3, 6, 6)), kernel=(3, 3),
         stride=(2, 2), padding=(1, 1, 1, 1), ceil_mode=True, count_include_pad=_cip)
    case(f"avg_pool-ceil-nopad-{_tag}", "avg_pool", In("float32", (2, 3, 8, 7)), kernel=(3, 2),
         stride=(2, 2), padding=(0, 0, 0, 0), ceil_mode=True, count_include_pad=_cip)
    case(f"avg_pool-ceil-drop-{_tag}", "avg_pool", In("float32", (1, 2, 5, 5)), kernel=(2, 2),
         stride=(2, 2), padding=(1, 1, 1, 1), ceil_mode=True, count_include_pad=_cip)
    case(f"avg_pool-1d-ceil-asym-{_tag}", "avg_pool", In("float32", (2, 3, 10)), kernel=(4,), stride=(3,),
         padding=(2, 1), ceil_mode=True, count_include_pad=_cip)
case("adaptive-global", "adaptive_avg_pool", In("float32", (2, 3, 7, 5)), output_size=(1, 1))
case("adaptive-divisible", "adaptive_avg_pool", In("float32", (2, 3, 8, 6)), output_size=(4, 3))
case("adaptive-identity", "adaptive_avg_pool", In("float32", (2, 3, 4, 4)), output_size=(4, 4))
case("adaptive-1d", "adaptive_avg_pool", In("float32", (2, 3, 12)), output_size=(4,))
case("adaptive-global-1d", "adaptive_avg_pool", In("float32", (2, 3, 9)), output_size=(1,))

# attention
Q, K, V = (2, 3, 5, 8), (2, 3, 6, 8), (2, 3, 6, 4)
case("attention-plain", "attention", In("float32", Q), In("float32", K), In("float32", V), tol=LOOSE)
case("attention-scale", "attention", In("float32", Q), In("float32", K), In("float32", V), scale=0.5, tol=LOOSE)
case("attention-causal-square", "attention", In("float32", (2, 5, 8)), In("float32", (2, 5, 8)),
     In("float32", (2, 5, 3)), is_causal=True, tol=LOOSE)
case("attention-causal-rect", "attention", In("float32", (2, 3, 4, 8)), In("float32", K), In("float32", V),
     is_causal=True, tol=LOOSE)
case("attention-bool-mask", "attention", In("float32", Q), In("float32", K), In("float32", V),
     In("bool", (5, 6), data=bool_mask_with_true_per_row((5, 6))), tol=LOOSE)
case("attention-float-mask", "attention", In("float32", Q), In("float32", K), In("float32", V),
     In("float32", (2, 1, 5, 6)), tol=LOOSE)
case("attention-bool-mask-causal", "attention", In("float32", Q), In("float32", K), In("float32", V),
     Const(bool_mask_with_true_per_row((2, 1, 5, 6))), is_causal=True, scale=0.3, tol=LOOSE)
case("attention-const-kv-bcast", "attention", In("float32", Q), _w(1, 3, 6, 8), _w(1, 3, 6, 4), tol=LOOSE)
case("attention-2d", "attention", In("float32", (5, 8)), In("float32", (6, 8)), In("float32", (6, 3)), tol=LOOSE)
case("mha-self", "multi_head_attention", In("float32", (2, 5, 8)), In("float32", (2, 5, 8)),
     In("float32", (2, 5, 8)), num_heads=2, scale=0.5, tol=LOOSE)
case("mha-cross", "multi_head_attention", In("float32", (2, 4, 12)), In("float32", (2, 7, 12)),
     In("float32", (2, 7, 6)), num_heads=3, scale=1 / math.sqrt(4), tol=LOOSE)


@pytest.mark.parametrize("op, build, tol", CASES)
def test_op_matches_interpreter(op, build, tol):
    graph, inputs = build(np.random.default_rng(20240611))
    assert {n.op for n in graph.nodes} == {op}
    check(graph, inputs, tol)


def test_every_registry_op_has_an_emitter_and_a_case():
    assert supported_ops() == set(all_ops())
    assert set(EMITTERS) == set(all_ops())
    covered = {p.values[0] for p in CASES}
    assert covered == set(all_ops()), f"ops without a test case: {sorted(set(all_ops()) - covered)}"


# Cases whose ONNX form depends on the opset: ceil_mode pools (ONNX drops a window starting in
# the end padding only from opset 22 on) and bool ReduceMax (opset 20).
OPSET_SENSITIVE = {"max_pool-ceil-pad-drop", "avg_pool-ceil-drop-incl", "avg_pool-ceil-drop-excl",
                   "avg_pool-ceil-overhang-incl", "max_pool-1d", "reduce_max-bool", "gelu-tanh", "gelu-f64"}


@pytest.mark.parametrize("opset", [18, 21])
@pytest.mark.parametrize("op, build, tol", [p for p in CASES if p.id in OPSET_SENSITIVE])
def test_opset_sensitive_ops_on_older_opsets(opset, op, build, tol):
    graph, inputs = build(np.random.default_rng(20240611))
    assert check(graph, inputs, tol, opset=opset).opset_import[0].version == opset


@pytest.mark.parametrize("opset", [18, 20, 21])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_older_opsets(opset, approximate):
    """Opset < 20 has no Gelu: the Erf / Tanh composition is used."""
    rng = np.random.default_rng(7)
    g = Graph("gelu")
    x = g.add_input("x", TensorType(DType.float32, (3, 4)))
    y = g.op("gelu", x, approximate=approximate)
    g.set_outputs([g.op("reduce_sum", y, axes=(1,)), g.op("layer_norm", y), g.op("hardswish", y)])
    model = check(g, [rand(rng, "float32", (3, 4))], LOOSE, opset=opset)
    assert model.opset_import[0].version == opset
    assert any(n.op_type == "Gelu" for n in model.graph.node) == (opset >= 20)


# -- model structure ---------------------------------------------------------------------------
def _conv_net_graph(rng) -> Graph:
    g = Graph("net")
    x = g.add_input("image", TensorType(DType.float32, (2, 3, 8, 8)))
    w = g.add_constant(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "conv_w")
    y = g.op("conv", x, w, None, stride=(1, 1), padding=(1, 1, 1, 1), dilation=(1, 1), activation="relu")
    y = g.op("max_pool", y, kernel=(2, 2), stride=(2, 2), padding=(0, 0, 0, 0), dilation=(1, 1))
    y = g.op("reshape", y, shape=(2, 64))
    fc = g.add_constant(rng.standard_normal((10, 64)).astype(np.float32), "fc_w")
    y = g.op("linear", y, fc)
    g.set_outputs([g.op("softmax", y, axis=-1)])
    return g


def test_model_is_fully_typed_and_named_after_the_ir():
    rng = np.random.default_rng(1)
    g = _conv_net_graph(rng)
    model = emit_onnx(g)
    onnx.checker.check_model(model, full_check=True)
    typed = {vi.name: vi for vi in list(model.graph.value_info) + list(model.graph.output)
             + list(model.graph.input)}
    for node in model.graph.node:
        for out in node.output:
            assert out in typed, f"{out} has no value_info"
            t = typed[out].type.tensor_type
            assert t.elem_type != 0 and t.HasField("shape"), f"{out} is not fully typed"
    onnx_nodes = {n.name for n in model.graph.node}
    assert {n.name for n in g.nodes} <= onnx_nodes
    onnx_values = {o for n in model.graph.node for o in n.output}
    assert {o.name for n in g.nodes for o in n.outputs} <= onnx_values
    assert {i.name for i in model.graph.initializer} >= {"conv_w", "fc_w"}  # 2-D linear: Gemm(transB=1)
    assert_fully_typed(model)
    assert model.producer_name == "aot-compiler"
    check(g, [rand(rng, "float32", (2, 3, 8, 8))], LOOSE)


def test_linear_nd_stores_transposed_weight_not_a_runtime_transpose():
    rng = np.random.default_rng(2)
    g = Graph("lin")
    x = g.add_input("x", TensorType(DType.float32, (2, 3, 8)))
    w = g.add_constant(rng.standard_normal((5, 8)).astype(np.float32), "w")
    g.set_outputs([g.op("linear", x, w, g.add_constant(np.ones(5, np.float32), "b"))])
    model = check(g, [rand(rng, "float32", (2, 3, 8))])
    assert "Transpose" not in {n.op_type for n in model.graph.node}
    weights = [onnx.numpy_helper.to_array(i) for i in model.graph.initializer if i.dims == [8, 5]]
    assert len(weights) == 1 and np.array_equal(weights[0], w.const.T)


def test_outputs_that_are_inputs_constants_or_repeats_are_copied():
    rng = np.random.default_rng(3)
    g = Graph("io")
    x = g.add_input("x", TensorType(DType.float32, (2, 3)))
    c = g.add_constant(rng.standard_normal((2, 3)).astype(np.float32), "c")
    y = g.op("add", x, c)
    g.set_outputs([y, x, c, y])
    model = check(g, [rand(rng, "float32", (2, 3))])
    names = [o.name for o in model.graph.output]
    assert len(set(names)) == 4 and names[0] == y.name


def test_invalid_emitted_model_is_reported_with_the_ir_node(monkeypatch):
    from backends.onnx.emit import OnnxEmitError

    def broken(ctx, node):  # transposes: the output contradicts the IR type [2, 3]
        ctx.add("Transpose", [ctx.value(node.inputs[0])], node.output.name, perm=[1, 0])

    g = Graph("broken")
    x = g.add_input("x", TensorType(DType.float32, (2, 3)))
    g.set_outputs([g.op("exp", g.op("relu", x, location="model.py:3 in forward"))])
    monkeypatch.setitem(EMITTERS, "relu", broken)
    with pytest.raises(OnnxEmitError, match=r"node relu \(relu\) from model.py:3"):
        emit_onnx(g)


def test_unsupported_adaptive_pool_of_symbolic_size_raises():
    g = Graph("adaptive")
    x = g.add_input("x", TensorType(DType.float32, ("batch", 2, "h", 4)))
    g.set_outputs([g.op("adaptive_avg_pool", x, output_size=(2, 2))])
    with pytest.raises(UnsupportedOpError, match="symbolic"):
        emit_onnx(g)


def test_op_without_emitter_raises_unsupported(monkeypatch):
    g = Graph("missing")
    x = g.add_input("x", TensorType(DType.float32, (2,)))
    g.set_outputs([g.op("exp", x)])
    monkeypatch.delitem(EMITTERS, "exp")
    with pytest.raises(UnsupportedOpError, match="exp"):
        emit_onnx(g)


def test_bad_opset_is_refused():
    g = Graph("g")
    x = g.add_input("x", TensorType(DType.float32, (2,)))
    g.set_outputs([g.op("exp", x)])
    with pytest.raises(Exception, match="opset"):
        emit_onnx(g, opset=11)


# -- symbolic dims -----------------------------------------------------------------------------
def _dynamic_graph(rng) -> Graph:
    g = Graph("dynamic")
    x = g.add_input("x", TensorType(DType.float32, ("batch", 4, 6)))
    w = g.add_constant((rng.standard_normal((8, 24)) / 5).astype(np.float32), "w")
    b = g.add_constant(rng.standard_normal(8).astype(np.float32), "b")
    flat = g.op("reshape", x, shape=("batch", 24))                 # symbol kept in place: 0
    h = g.op("linear", flat, w, b, activation="relu")              # Gemm
    h3 = g.op("reshape", h, shape=("batch", 2, 4))
    h3 = g.op("linear", h3, g.add_constant(rng.standard_normal((4, 4)).astype(np.float32), "w2"))  # MatMul
    e = g.op("expand", g.op("reshape", h3, shape=("batch", 1, 2, 4)), shape=("batch", 3, 2, 4))
    rows = g.op("reshape", x, shape=("batch*4", 6))                # expression dim: -1
    table = g.add_constant(rng.standard_normal((1, 6)).astype(np.float32), "table")
    tiled = g.op("expand", table, shape=("batch*4", 6))            # expression computed from Shape
    summed = g.op("add", rows, tiled)
    back = g.op("reshape", summed, shape=(2, "batch*2", 6))         # reshape from an expression dim
    s = g.op("softmax", g.op("reduce_mean", e, axes=(1,)), axis=-1)
    g.set_outputs([s, back, g.op("concat", flat, flat, axis=0)])
    return g


@pytest.mark.parametrize("batch", [1, 3, 7])
def test_dynamic_batch_matches_interpreter(batch):
    rng = np.random.default_rng(11)
    g = _dynamic_graph(rng)
    model = check(g, [rand(rng, "float32", (batch, 4, 6))], LOOSE)
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_param == "batch"
    assert [d.dim_param for d in model.graph.output[1].type.tensor_type.shape.dim][1] == "batch*2"


def test_dynamic_two_symbols_reshape_uses_runtime_shape():
    rng = np.random.default_rng(12)
    g = Graph("two")
    x = g.add_input("x", TensorType(DType.float32, ("batch", "seq", 4)))
    y = g.op("reshape", x, shape=("seq", "batch", 4))  # neither dim in place: built from Shape
    z = g.op("attention", y, y, y, is_causal=True)    # symbolic causal mask (Trilu)
    m = g.op("multi_head_attention", x, x, x, num_heads=2, scale=0.7)
    g.set_outputs([z, m, g.op("layer_norm", m)])
    model = emit_onnx(g)
    assert "Trilu" in {n.op_type for n in model.graph.node}
    for batch, seq in [(1, 3), (3, 2), (2, 5)]:
        x_ = rand(rng, "float32", (batch, seq, 4))
        assert_outputs_match(run_graph(g, [x_]), run_onnx(g, [x_])[0], LOOSE)


# -- the runtime ---------------------------------------------------------------------------------
def test_load_runner():
    rng = np.random.default_rng(5)
    g = _conv_net_graph(rng)
    payload = {"model.onnx": emit_onnx(g).SerializeToString()}
    run = load_runner({"target": "onnx"}, payload, threads=1)
    x = rand(rng, "float32", (2, 3, 8, 8))
    assert_outputs_match(run_graph(g, [x]), run([x]), LOOSE)
    with pytest.raises(InputError):
        run([x, x])
    with pytest.raises(InputError):
        run([x[:1, :2]])
    assert callable(load_runner({}, payload, threads=None))


def test_backend_imports_no_torch_and_runtime_no_onnx():
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys\n"
        "import backends.onnx.runtime\n"
        "assert 'onnx' not in sys.modules and 'torch' not in sys.modules, 'runtime'\n"
        "import backends.onnx.emit\n"
        "assert 'torch' not in sys.modules, 'emit'\n"
    )
    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True)


# -- PyTorch end to end --------------------------------------------------------------------------
torch = None


def _torch():
    global torch
    torch = pytest.importorskip("torch")
    return torch


def _mlp():
    nn = _torch().nn
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.GELU(), nn.Linear(16, 3))


def _convnet():
    nn = _torch().nn
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2), nn.Hardswish(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))


def _attention_block():
    torch = _torch()
    nn, F = torch.nn, torch.nn.functional

    class Block(nn.Module):
        def __init__(self, dim=16, heads=2):
            super().__init__()
            self.heads = heads
            self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
            self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(approximate="tanh"), nn.Linear(2 * dim, dim))

        def forward(self, x):
            b, s, d = x.shape
            qkv = self.qkv(self.norm1(x))
            q, k, v = qkv[..., :d], qkv[..., d:2 * d], qkv[..., 2 * d:]
            q, k, v = (t.reshape(b, s, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.proj(y.transpose(1, 2).reshape(b, s, d))
            return x + self.mlp(self.norm2(x))

    return Block()


@pytest.mark.parametrize("factory, shape, dynamic", [
    (_mlp, (4, 12), False),
    (_mlp, (4, 12), True),
    (_convnet, (2, 3, 16, 16), False),
    (_convnet, (2, 3, 16, 16), True),
    (_attention_block, (2, 6, 16), False),
    (_attention_block, (2, 6, 16), True),
], ids=["mlp", "mlp-dynamic", "convnet", "convnet-dynamic", "attention", "attention-dynamic"])
def test_torch_end_to_end(factory, shape, dynamic):
    torch = _torch()
    from compiler.frontend import export_module, import_exported_program

    torch.manual_seed(0)
    module = factory().eval()
    example = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    graph = import_exported_program(export_module(module, (example,), dynamic_batch=dynamic), name="model")
    session = session_from_model(emit_onnx(graph).SerializeToString(), threads=1)
    batches = [shape[0], 3] if dynamic else [shape[0]]
    for batch in batches:
        x = torch.randn(batch, *shape[1:], generator=torch.Generator().manual_seed(batch))
        with torch.no_grad():
            want = module(x).numpy()
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


# -- type-rule regressions found by these tests (compiler/ops) ------------------------------------
def test_attention_broadcasting_value_batch():
    rng = np.random.default_rng(21)
    g = Graph("attention")
    shapes = [(1, 2, 3, 4), (1, 2, 5, 4), (2, 2, 5, 4)]
    q, k, v = (g.add_input(n, TensorType(DType.float32, s)) for n, s in zip("qkv", shapes))
    g.set_outputs([g.op("attention", q, k, v)])
    check(g, [rand(rng, "float32", s) for s in shapes], LOOSE)


def test_expand_type_rule_rejects_shrinking():
    g = Graph("expand")
    x = g.add_input("x", TensorType(DType.float32, (3,)))
    with pytest.raises(ValueError):
        g.op("expand", x, shape=(1,))


# -- onnxruntime contrib fast paths and --onnx-standard-only ---------------------------------------
def _fused_graph():
    rng = np.random.default_rng(5)
    g = Graph("fused")
    x = g.add_input("x", TensorType(DType.float32, ("batch", 3, 8, 8)))
    s = g.add_input("s", TensorType(DType.float32, ("batch", 6, 16)))
    w = g.add_constant(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    y = g.op("conv", x, w, None, stride=[1, 1], padding=[1, 1, 1, 1], dilation=[1, 1],
             activation="clamp", activation_args=(0.0, 6.0))
    z = g.op("multi_head_attention", s, s, s, num_heads=4, scale=0.25)
    g.set_outputs([y, z])
    feeds = [rng.standard_normal((2, 3, 8, 8)).astype(np.float32), rng.standard_normal((2, 6, 16)).astype(np.float32)]
    return g, feeds


@pytest.mark.parametrize("standard_only", [False, True], ids=["contrib", "standard"])
def test_contrib_fast_paths_and_standard_only(standard_only):
    import onnx

    g, feeds = _fused_graph()
    model = emit_onnx(g, standard_only=standard_only)
    op_types = {n.op_type for n in model.graph.node}
    domains = {o.domain for o in model.opset_import}
    if standard_only:
        assert "com.microsoft" not in domains and not {"FusedConv", "MultiHeadAttention"} & op_types
        onnx.checker.check_model(model, full_check=True)
    else:
        assert {"FusedConv", "MultiHeadAttention"} <= op_types and "com.microsoft" in domains
    session = session_from_model(model.SerializeToString())
    got = session.run(None, dict(zip([i.name for i in session.get_inputs()], feeds)))
    for have, want in zip(got, run_graph(g, feeds)):
        np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-5)
