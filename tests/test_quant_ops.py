"""The quantization ops: numpy references against PyTorch's quantizer and onnxruntime's kernels,
and every ONNX emitter against the interpreter (integers exactly, floats within 1e-6).

``QUANT_CASES`` (op, builder) are the quantization rows of the per-op backend matrix
(tests/op_cases.py extends its CASES with them); this module imports torch only inside the tests
that compare with PyTorch.

PyTorch rounds ``x * (1 / scale)``, ONNX and the IR ``x / scale``: against PyTorch the integers
must match everywhere except where those two roundings disagree (computed independently here).
"""

from __future__ import annotations

import numpy as np
import pytest

from backends.onnx.emit import emit_onnx
from backends.onnx.runtime import session_from_model
from compiler.interpreter import run_graph
from compiler.ir import DType, Graph, TensorType
from compiler.ops import get_op


def run_ort(graph: Graph, inputs: list[np.ndarray]) -> list[np.ndarray]:
    session = session_from_model(emit_onnx(graph).SerializeToString(), threads=1)
    return session.run(None, {i.name: a for i, a in zip(session.get_inputs(), inputs)})


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    if want.dtype.kind in "iu":
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def assert_onnx_matches_interpreter(graph: Graph, inputs: list[np.ndarray]) -> list[np.ndarray]:
    want = run_graph(graph, inputs)
    got = run_ort(graph, inputs)
    for g, w in zip(got, want):
        assert_same(g, w)
    return want


# -- cases for the per-op ONNX matrix --------------------------------------------------------------
def _per_channel(rng, n, dtype):
    lo, hi = (0, 255) if dtype == DType.uint8 else (-20, 20)
    return rng.uniform(0.01, 0.2, n).astype(np.float32), rng.integers(lo, hi, n).astype(dtype.numpy)


def quantize_case(dtype: DType, per_channel: bool, axis: int = 1, with_zp: bool = True):
    def build(rng):
        g = Graph("q")
        x = g.add_input("x", TensorType(DType.float32, (2, 6, 5)))
        if per_channel:
            scale, zp = _per_channel(rng, 6 if axis == 1 else 5, dtype)
        else:
            scale, zp = np.float32(0.037), np.asarray(7 if dtype == DType.uint8 else -3, dtype.numpy)
        zp_value = g.add_constant(np.asarray(zp), "zp") if with_zp else None
        q = g.op("quantize_linear", x, g.add_constant(np.asarray(scale), "scale"), zp_value, axis=axis, dtype=dtype)
        g.set_outputs([q])
        return g, [rng.uniform(-12, 12, (2, 6, 5)).astype(np.float32)]
    return build


def dequantize_case(dtype: DType, per_channel: bool, axis: int = 1):
    def build(rng):
        g = Graph("dq")
        x = g.add_input("x", TensorType(dtype, (2, 6, 5)))
        if per_channel:
            scale, zp = _per_channel(rng, 6 if axis == 1 else 5, dtype)
        else:
            scale, zp = np.float32(0.037), np.asarray(9, dtype.numpy)
        g.set_outputs([g.op("dequantize_linear", x, g.add_constant(np.asarray(scale), "scale"),
                            g.add_constant(np.asarray(zp), "zp"), axis=axis)])
        info = np.iinfo(dtype.numpy)
        return g, [rng.integers(max(info.min, -5000), min(info.max, 5000) + 1, (2, 6, 5)).astype(dtype.numpy)]
    return build


def dynamic_case(low: float, high: float):
    def build(rng):
        g = Graph("dyn")
        x = g.add_input("x", TensorType(DType.float32, (4, 9)))
        g.set_outputs(list(g.add_node("dynamic_quantize_linear", [x]).outputs))
        return g, [rng.uniform(low, high, (4, 9)).astype(np.float32)]
    return build


def matmul_integer_case(a_dtype: DType, b_dtype: DType, per_column: bool):
    def build(rng):
        g = Graph("mmi")
        a = g.add_input("a", TensorType(a_dtype, (3, 4, 7)))
        b_arr = rng.integers(-128, 128, (7, 5)).astype(np.int8) if b_dtype == DType.int8 else \
            rng.integers(0, 256, (7, 5)).astype(np.uint8)
        b_zp = rng.integers(-3, 4, 5 if per_column else ()).astype(b_dtype.numpy) if b_dtype == DType.int8 else \
            rng.integers(0, 256, 5 if per_column else ()).astype(np.uint8)
        a_zp = np.asarray(100 if a_dtype == DType.uint8 else -7, a_dtype.numpy)
        g.set_outputs([g.op("matmul_integer", a, g.add_constant(b_arr, "b"), g.add_constant(a_zp, "a_zp"),
                            g.add_constant(np.asarray(b_zp), "b_zp"))])
        info = np.iinfo(a_dtype.numpy)
        return g, [rng.integers(info.min, info.max + 1, (3, 4, 7)).astype(a_dtype.numpy)]
    return build


def dequantize_int4_case(dtype: DType, shape: tuple, axis: int, block_size: int, *, constant: bool, with_zp: bool):
    """Blocked ``bits=4`` dequantize (int4-weight): a constant x is stored packed two a byte in
    ONNX, a run-time x stays int8/uint8; ``shape[axis]`` need not be a multiple of the block."""
    def build(rng):
        g = Graph("dq4")
        lo, hi = (-8, 7) if dtype == DType.int8 else (0, 15)
        values = rng.integers(lo, hi + 1, shape).astype(dtype.numpy)
        x = g.add_constant(values, "x") if constant else g.add_input("x", TensorType(dtype, shape))
        blocks = list(shape)
        blocks[axis] = -(-shape[axis] // block_size)
        scale = g.add_constant(rng.uniform(0.01, 0.2, blocks).astype(np.float32), "scale")
        zp = g.add_constant(rng.integers(lo, hi + 1, blocks).astype(dtype.numpy), "zp") if with_zp else None
        g.set_outputs([g.op("dequantize_linear", x, scale, zp, axis=axis, block_size=block_size, bits=4)])
        return g, [] if constant else [values]
    return build


QUANT_CASES = [
    pytest.param("quantize_linear", quantize_case(DType.uint8, False), id="quantize-u8-tensor"),
    pytest.param("quantize_linear", quantize_case(DType.int8, False), id="quantize-s8-tensor"),
    pytest.param("quantize_linear", quantize_case(DType.int8, True), id="quantize-s8-channel"),
    pytest.param("quantize_linear", quantize_case(DType.uint8, True, axis=-1), id="quantize-u8-channel-last"),
    pytest.param("quantize_linear", quantize_case(DType.uint8, False, with_zp=False), id="quantize-u8-no-zp"),
    pytest.param("dequantize_linear", dequantize_case(DType.uint8, False), id="dequantize-u8-tensor"),
    pytest.param("dequantize_linear", dequantize_case(DType.int8, True), id="dequantize-s8-channel"),
    pytest.param("dequantize_linear", dequantize_case(DType.int32, True, axis=2), id="dequantize-s32-channel"),
    pytest.param("dequantize_linear", dequantize_int4_case(DType.int8, (40, 6), 0, 16, constant=True, with_zp=False),
                 id="dequantize-int4-blocked-const"),
    pytest.param("dequantize_linear", dequantize_int4_case(DType.uint8, (5, 33), -1, 16, constant=True, with_zp=True),
                 id="dequantize-uint4-blocked-const-odd-zp"),
    pytest.param("dequantize_linear", dequantize_int4_case(DType.int8, (2, 40, 6), 1, 32, constant=False, with_zp=True),
                 id="dequantize-int4-blocked-input-zp"),
    pytest.param("dynamic_quantize_linear", dynamic_case(-2.0, 5.0), id="dynamic-mixed"),
    pytest.param("dynamic_quantize_linear", dynamic_case(0.5, 3.0), id="dynamic-positive"),
    pytest.param("dynamic_quantize_linear", dynamic_case(-4.0, -1.0), id="dynamic-negative"),
    pytest.param("dynamic_quantize_linear", dynamic_case(0.0, 0.0), id="dynamic-all-zero"),
    pytest.param("matmul_integer", matmul_integer_case(DType.uint8, DType.int8, True), id="matmul_integer-u8s8-col"),
    pytest.param("matmul_integer", matmul_integer_case(DType.uint8, DType.uint8, False), id="matmul_integer-u8u8"),
    pytest.param("matmul_integer", matmul_integer_case(DType.int8, DType.int8, False), id="matmul_integer-s8s8"),
]


@pytest.mark.parametrize("op, build", QUANT_CASES)
def test_quant_op_onnx_matches_interpreter(op, build):
    graph, inputs = build(np.random.default_rng(20240611))
    assert {n.op for n in graph.nodes} == {op}
    assert_onnx_matches_interpreter(graph, inputs)


def test_quant_ops_are_all_covered():
    from compiler.ops import all_ops

    quant_ops = {name for name, d in all_ops().items() if d.family == "quant"}
    assert quant_ops == {p.values[0] for p in QUANT_CASES}


# -- references against PyTorch --------------------------------------------------------------------
def ties(x: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Where rounding x / scale and x * (1 / scale) give different integers."""
    return np.rint(x / scale) != np.rint(x * (np.float32(1) / scale))


def assert_equal_off_ties(got: np.ndarray, want: np.ndarray, at_ties: np.ndarray) -> None:
    differ = got.astype(np.int64) != want.astype(np.int64)
    assert not (differ & ~at_ties).any()
    assert np.abs(got.astype(np.int64) - want.astype(np.int64)).max(initial=0) <= 1


@pytest.mark.parametrize("dtype, tdtype, zero_point", [(DType.uint8, "quint8", 128), (DType.int8, "qint8", -4)])
def test_quantize_per_tensor_reference_matches_torch(dtype, tdtype, zero_point):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((64, 257)) * 4).astype(np.float32)  # saturates at both ends too
    scale = np.float32(0.0213)
    ours = get_op("quantize_linear").reference(x, np.asarray(scale), np.asarray(zero_point, dtype.numpy), axis=1,
                                               dtype=dtype)
    theirs = torch.quantize_per_tensor(torch.from_numpy(x), float(scale), zero_point, getattr(torch, tdtype))
    assert_equal_off_ties(ours, theirs.int_repr().numpy(), ties(x, scale))
    # and back: dequantize of the same integers is the same float
    back = get_op("dequantize_linear").reference(ours, np.asarray(scale), np.asarray(zero_point, dtype.numpy), axis=1)
    q = torch._make_per_tensor_quantized_tensor(torch.from_numpy(ours), float(scale), zero_point)
    np.testing.assert_array_equal(back, q.dequantize().numpy())


@pytest.mark.parametrize("axis", [0, 1])
def test_quantize_per_channel_reference_matches_torch(axis):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((8, 6, 5)) * 3).astype(np.float32)
    n = x.shape[axis]
    scale = rng.uniform(0.01, 0.1, n).astype(np.float32)
    zp = rng.integers(-10, 10, n).astype(np.int8)
    ours = get_op("quantize_linear").reference(x, scale, zp, axis=axis, dtype=DType.int8)
    theirs = torch.quantize_per_channel(torch.from_numpy(x), torch.from_numpy(scale.astype(np.float64)),
                                        torch.from_numpy(zp.astype(np.int64)), axis, torch.qint8)
    shape = [1, 1, 1]
    shape[axis] = n
    assert_equal_off_ties(ours, theirs.int_repr().numpy(), ties(x, scale.reshape(shape)))
    back = get_op("dequantize_linear").reference(theirs.int_repr().numpy(), scale, zp, axis=axis)
    np.testing.assert_allclose(back, theirs.dequantize().numpy(), rtol=1e-6, atol=0)


def test_quantize_rounds_half_to_even_and_saturates():
    torch = pytest.importorskip("torch")
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 1000.0, -1000.0], np.float32)
    ours = get_op("quantize_linear").reference(x, np.asarray(np.float32(1)), np.asarray(0, np.int8), axis=0,
                                               dtype=DType.int8)
    want = torch.clamp(torch.round(torch.from_numpy(x)), -128, 127).to(torch.int8).numpy()  # torch.round: half even
    np.testing.assert_array_equal(ours, want)


def test_matmul_integer_reference_is_exact():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, (5, 300)).astype(np.uint8)
    b = rng.integers(-128, 128, (300, 4)).astype(np.int8)
    b_zp = np.array([0, 1, -2, 3], np.int8)
    ours = get_op("matmul_integer").reference(a, b, np.asarray(128, np.uint8), b_zp)
    want = (torch.from_numpy(a.astype(np.int64)) - 128) @ (torch.from_numpy(b.astype(np.int64)) - torch.from_numpy(
        b_zp.astype(np.int64)))
    np.testing.assert_array_equal(ours, want.numpy().astype(np.int32))


# -- type rules ------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale_shape, zp, message", [
    ((4,), np.zeros(4, np.int8), "has 4 scales for 6 channels"),
    ((), np.asarray(0, np.uint8), "zero_point is uint8, expected int8"),
    ((2, 3), np.zeros((2, 3), np.int8), "0-d .*or 1-d"),
])
def test_quantize_type_errors(scale_shape, zp, message):
    g = Graph("bad")
    x = g.add_input("x", TensorType(DType.float32, (2, 6)))
    scale = g.add_constant(np.ones(scale_shape, np.float32), "s")
    with pytest.raises(ValueError, match=message):
        g.op("quantize_linear", x, scale, g.add_constant(zp, "z"), axis=1, dtype=DType.int8)


def test_quantize_to_int32_is_refused_by_the_onnx_backend():
    from compiler.errors import UnsupportedOpError

    g = Graph("q32")
    x = g.add_input("x", TensorType(DType.float32, (3,)))
    g.set_outputs([g.op("quantize_linear", x, g.add_constant(np.float32(0.1), "s"), None, axis=0,
                        dtype=DType.int32)])
    with pytest.raises(UnsupportedOpError, match="no int32 output"):
        emit_onnx(g)
