"""The per-op case matrix shared by the backend tests (ONNX, TVM): hand-built one-node graphs
with their inputs, and the tolerance each case is compared with against the reference
interpreter. ``CASES`` holds ``pytest.param(op, build, tol, id=...)``; ``build(rng)`` returns
``(graph, inputs)``.

Tolerances: ints and bools exact; float32 rtol = atol = 1e-5; conv, attention and normalisation
atol 1e-4 (the reference accumulates in float64, backends in float32 with another summation
order); float16 rtol = atol = 2e-3 (backends may compute in float32 and round once, the
reference rounds per numpy op).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from compiler.ir import DType, Graph, TensorType
from compiler.ops.nn import FUSABLE_ACTIVATIONS

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


def assert_outputs_match(expected, actual, tol=F32):
    assert len(expected) == len(actual)
    for e, a in zip(expected, actual):
        assert a.dtype == e.dtype, f"dtype {a.dtype} != {e.dtype}"
        assert a.shape == e.shape, f"shape {a.shape} != {e.shape}"
        if np.issubdtype(e.dtype, np.floating):
            np.testing.assert_allclose(a, e, rtol=tol[0], atol=tol[1])
        else:
            np.testing.assert_array_equal(a, e)



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


# Recurrent layers (x [T, B, I], weights [D, G*H, I|H], biases [D, G*H], states [D, B, H]).
case("lstm-bidirectional-states", "lstm", In("float32", (4, 2, 5), -1, 1), _w(2, 12, 5), _w(2, 12, 3), _w(2, 12),
     _w(2, 12), In("float32", (2, 2, 3), -1, 1), In("float32", (2, 2, 3), -1, 1), tol=LOOSE, hidden_size=3,
     bidirectional=True)
case("gru-nobias", "gru", In("float32", (3, 2, 4), -1, 1), _w(1, 9, 4), _w(1, 9, 3), tol=LOOSE, hidden_size=3)
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
case("qkv-attention-bias", "qkv_attention", In("float32", (2, 5, 8)), _w(24, 8), _w(24), num_heads=2,
     scale=0.5, tol=LOOSE)
case("qkv-attention-nobias-wide-input", "qkv_attention", In("float32", (2, 4, 10)), _w(36, 10), num_heads=3,
     scale=1 / math.sqrt(4), tol=LOOSE)
case("qkv-attention-weight-input", "qkv_attention", In("float32", (2, 5, 8)), In("float32", (24, 8)),
     In("float32", (24,)), num_heads=4, scale=0.3, tol=LOOSE)

# padding, indexing, sorting, transposed convolution
case("pad-constant", "pad", In("float32", S), pads=(0, 1, 2, 1, 0, 1), value=1.5)
case("pad-reflect", "pad", In("float32", (2, 5, 6)), pads=(0, 0, 2, 0, 1, 3), mode="reflect")
case("pad-replicate", "pad", In("int64", (2, 3, 4)), pads=(0, 1, 1, 0, 2, 2), mode="replicate")
case("pad-circular", "pad", In("float32", (2, 3, 5)), pads=(0, 0, 2, 0, 1, 3), mode="circular")
case("gather_elements-axis1", "gather_elements", In("float32", (3, 5, 2)), In("int64", (3, 4, 2), -5, 4), axis=1)
case("sort-asc", "sort", In("float32", (3, 7)), axis=-1)
case("sort-desc-axis0", "sort", In("float32", (5, 4)), axis=0, descending=True)
case("topk-largest", "topk", In("float32", (3, 8)), k=3, axis=-1)
case("topk-smallest-axis0", "topk", In("float32", (6, 4)), k=2, axis=0, largest=False)
case("conv_transpose-2d", "conv_transpose", In("float32", (2, 4, 5, 5)), _w(4, 3, 3, 3), _w(3), stride=(2, 2),
     padding=(1, 1, 1, 1), output_padding=(1, 1), dilation=(1, 1), tol=LOOSE)
case("conv_transpose-1d-groups", "conv_transpose", In("float32", (1, 4, 7)), _w(4, 2, 3), None, stride=(2,),
     padding=(0, 1), output_padding=(0,), dilation=(1,), groups=2, tol=LOOSE)


def _distinct_index(shape, n, axis):
    """Scatter indices without repeats along ``axis`` (repeated writes have no defined order)."""
    def data(rng):
        perm = np.argsort(rng.random(shape[:axis] + (n,) + shape[axis + 1:]), axis=axis)
        return np.take(perm, np.arange(shape[axis]), axis=axis).astype(np.int64)
    return data


case("scatter_elements-none", "scatter_elements", In("float32", (4, 5)),
     In("int64", (3, 5), data=_distinct_index((3, 5), 4, 0)), In("float32", (3, 5)), axis=0)
case("scatter_elements-add-bigger-src", "scatter_elements", In("float32", (3, 6)), In("int64", (3, 4), -6, 5),
     In("float32", (3, 5)), axis=1, reduction="add")
case("scatter_elements-max-i64", "scatter_elements", In("int64", (5, 3), -9, 9), In("int64", (4, 3), 0, 4),
     In("int64", (4, 3), -9, 9), axis=0, reduction="max")
case("index-one-axis", "index", In("float32", (4, 5, 3)), In("int64", (2, 2), -5, 4), axes=(1,))
case("index-adjacent", "index", In("float32", (2, 4, 5, 3)), In("int64", (3,), -4, 3), In("int64", (2, 1), 0, 4),
     axes=(1, 2))
case("index-split", "index", In("int64", (4, 3, 5)), In("int32", (2,), 0, 3), In("int64", (2,), -5, 4), axes=(0, 2))
case("adaptive_max-uneven", "adaptive_max_pool", In("float32", (2, 3, 7, 5)), output_size=(3, 2))
case("adaptive_max-1d", "adaptive_max_pool", In("float32", (2, 3, 9)), output_size=(4,))
_table = Const(lambda rng: rng.standard_normal((10, 4)).astype(np.float32))
_bag_idx = In("int64", (9,), data=lambda rng: np.array([1, 2, 4, 5, 4, 3, 2, 9, 0], np.int64))
_bag_offsets = Const(np.array([0, 3, 3, 7], np.int64))  # the second bag is empty
for _mode in ("sum", "mean", "max"):
    case(f"embedding_bag-{_mode}", "embedding_bag", _table, _bag_idx, _bag_offsets, mode=_mode)
case("embedding_bag-last-offset-pad", "embedding_bag", _table, _bag_idx, Const(np.array([0, 3, 6, 8], np.int64)),
     mode="mean", include_last_offset=True, padding_idx=4)
case("embedding_bag-weighted", "embedding_bag", _table, _bag_idx, _bag_offsets, In("float32", (9,)), mode="sum")
case("resize-nearest-up", "resize", In("float32", (1, 2, 3, 4)), sizes=(6, 7), mode="nearest")
case("resize-linear-down", "resize", In("float32", (2, 2, 8, 6)), sizes=(5, 4), mode="linear")
case("resize-linear-align", "resize", In("float32", (1, 3, 4, 5)), sizes=(7, 9), mode="linear", align_corners=True)
case("resize-cubic-scales", "resize", In("float32", (1, 2, 4, 4)), sizes=(8, 8), mode="cubic", scales=(2.0, 2.0))
case("resize-linear-1d", "resize", In("float32", (2, 3, 5)), sizes=(9,), mode="linear")
case("nonzero-bool", "nonzero", In("bool", (3, 4)), count="n")
case("nonzero-f32", "nonzero", In("float32", (2, 3, 4), -1, 1, discrete=True), count="n")
case("unique-i64", "unique", In("int64", (3, 5), -3, 3), count="u")
case("unique-f32", "unique", In("float32", (7,), -2, 2, discrete=True), count="u")
case("index_put-one-axis", "index_put", In("float32", (4, 5, 3)), In("float32", (2, 3)),
     In("int64", (2,), data=lambda rng: np.array([3, -5], np.int64)), axes=(1,))
case("index_put-adjacent-accumulate", "index_put", In("float32", (2, 4, 5)), In("float32", (3,)),
     In("int64", (3,), data=lambda rng: np.array([1, 1, 3], np.int64)),
     In("int64", (3,), data=lambda rng: np.array([0, 0, 4], np.int64)), axes=(1, 2), accumulate=True)
case("index_put-split-bcast", "index_put", In("int64", (4, 3, 5), -9, 9), In("int64", (), -9, 9),
     In("int64", (2,), data=lambda rng: np.array([0, 3], np.int64)),
     In("int64", (2,), data=lambda rng: np.array([1, -1], np.int64)), axes=(0, 2))
case("max_pool_idx-k3s2p1", "max_pool_with_indices", In("float32", P), kernel=(3, 3), stride=(2, 2),
     padding=(1, 1, 1, 1), dilation=(1, 1))
case("max_pool_idx-ties-dil", "max_pool_with_indices", In("int32", P, 0, 2), kernel=(2, 3), stride=(1, 2),
     padding=(1, 0, 1, 0), dilation=(2, 1))
case("max_pool_idx-1d", "max_pool_with_indices", In("float32", (2, 3, 10)), kernel=(3,), stride=(2,),
     padding=(1, 1), dilation=(1,))
for _gmode in ("bilinear", "nearest"):
    for _gpad in ("zeros", "border", "reflection"):
        for _ac in (False, True):
            case(f"grid_sample-{_gmode}-{_gpad}-{'ac' if _ac else 'noac'}", "grid_sample", In("float32", (2, 3, 5, 6)),
                 In("float32", (2, 4, 3, 2), -1.3, 1.3), mode=_gmode, padding_mode=_gpad, align_corners=_ac)

# more unary math, integer division, bitwise, scans, group norm
for _op, _lo, _hi in [("tan", -1.2, 1.2), ("asin", -0.99, 0.99), ("acos", -0.99, 0.99), ("atan", -5, 5),
                      ("sinh", -3, 3), ("cosh", -3, 3), ("asinh", -5, 5), ("acosh", 1.01, 5), ("atanh", -0.95, 0.95),
                      ("expm1", -2, 2), ("log1p", -0.9, 5), ("log2", 0.1, 9), ("log10", 0.1, 9), ("trunc", -3, 3),
                      ("elu", -3, 3)]:
    case(f"{_op}-f32", _op, In("float32", S, _lo, _hi))
case("round-half-even", "round", In("float32", S, -3, 3, data=lambda rng: (rng.integers(-6, 7, S) / 2).astype(np.float32)))
case("isinf", "isinf", In("float32", (5,), data=lambda rng: np.array([1, np.inf, -np.inf, 0, 2], np.float32)))
case("elu-params", "elu", In("float32", S), alpha=0.5, scale=1.5, input_scale=2.0)
case("atan2", "atan2", In("float32", S), In("float32", S))


def _nonzero_ints(dtype, shape, low=1, high=5):
    def data(rng):
        mag = rng.integers(low, high + 1, size=shape)
        return (mag * np.where(rng.random(shape) < 0.5, -1, 1)).astype(dtype)
    return data


for _op in ("floor_div", "remainder", "fmod", "trunc_div"):
    case(f"{_op}-i64", _op, In("int64", S, -20, 20), In("int64", (4,), data=_nonzero_ints(np.int64, (4,))))
    case(f"{_op}-f32", _op, In("float32", S, -9, 9), In("float32", (3, 4), data=away_from_zero(np.float32, (3, 4))))
case("floor_div-i32", "floor_div", In("int32", S, -20, 20), In("int32", S, data=_nonzero_ints(np.int32, S)))
for _op in ("bitwise_and", "bitwise_or", "bitwise_xor"):
    case(f"{_op}-i32", _op, In("int32", S, -100, 100), In("int32", (4,), -100, 100))
    case(f"{_op}-bool", _op, In("bool", S), In("bool", S))
case("cumsum-axis1", "cumsum", In("float32", S), axis=1)
case("cumsum-i64-neg", "cumsum", In("int64", S, -9, 9), axis=-1)
case("cumprod-axis0", "cumprod", In("float32", S, 0.5, 1.5), axis=0)
case("reduce_prod-axis", "reduce_prod", In("float32", R, 0.5, 1.5), axes=(1,))
case("reduce_prod-i64-keep", "reduce_prod", In("int64", R, -2, 2), axes=(-1,), keepdim=True)
case("flip-two-axes", "flip", In("float32", S), axes=(0, -1))
case("group_norm-affine", "group_norm", In("float32", (2, 6, 3, 3)), _w(6), _w(6), groups=3, tol=LOOSE)
case("group_norm-plain-1d", "group_norm", In("float32", (2, 4, 5)), groups=2, eps=1e-3, tol=LOOSE)

# quantization (ONNX semantics)
case("quantize-u8-tensor", "quantize_linear", In("float32", S, -5, 5), Const(np.float32(0.037)),
     Const(np.uint8(7)), dtype=DType.uint8)
case("quantize-s8-channel", "quantize_linear", In("float32", S, -5, 5),
     Const(np.array([0.05, 0.02, 0.1], np.float32)), Const(np.array([1, -3, 0], np.int8)), axis=1, dtype=DType.int8)
case("dequantize-s8-channel-last", "dequantize_linear", In("int8", S, -128, 127),
     Const(np.array([0.05, 0.02, 0.1, 0.3], np.float32)), Const(np.array([1, -3, 0, 2], np.int8)), axis=-1)
case("dequantize-u8-no-zp", "dequantize_linear", In("uint8", S, 0, 255), Const(np.float32(0.02)))
case("dequantize-int4-blocked", "dequantize_linear", In("int8", (40, 6), -8, 7),  # int4-weight; last block short
     Const(lambda rng: rng.uniform(0.01, 0.2, (2, 6)).astype(np.float32)), axis=0, block_size=32, bits=4)
case("dynamic_quantize", "dynamic_quantize_linear", In("float32", S, -2, 5))
case("matmul_integer-u8s8", "matmul_integer", In("uint8", (3, 4, 7), 0, 255),
     Const(lambda rng: rng.integers(-128, 128, (7, 5)).astype(np.int8)), Const(np.uint8(100)),
     Const(np.array([1, -2, 0, 3, -1], np.int8)))
