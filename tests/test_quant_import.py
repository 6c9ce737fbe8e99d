"""Already-quantized models (PT2E graphs with torch.ops.quantized_decomposed.*): PyTorch eager vs
the frontend + interpreter, and the emitted ONNX model vs the interpreter.

The graphs are written by hand in forward, the way ``convert_pt2e`` leaves them. PyTorch rounds
``x * (1 / scale)`` where the IR (like ONNX) rounds ``x / scale``: integers must match exactly
except where those two roundings disagree, which the tests compute independently and bound.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.ao.quantization.fx._decomposed  # registers quantized_decomposed
import torch.nn.functional as F
from torch import nn

from compiler.frontend import export_module, import_exported_program
from compiler.interpreter import run_graph
from op_check import Fn

qd = torch.ops.quantized_decomposed


def import_and_run(module: nn.Module, *inputs: torch.Tensor):
    graph = import_exported_program(export_module(module, inputs))
    got = run_graph(graph, [t.numpy() for t in inputs])
    with torch.no_grad():
        want = module(*inputs)
    want = want if isinstance(want, tuple) else (want,)
    return graph, got, [w.numpy() for w in want]


def tie_positions(x: np.ndarray, scale, axis: int | None = None) -> np.ndarray:
    """Where rounding x / scale (IR) and x * (1 / scale) (PyTorch) give different integers."""
    s = np.asarray(scale, np.float32)
    if axis is not None:
        shape = [1] * x.ndim
        shape[axis] = -1
        s = s.reshape(shape)
    return np.rint(x / s) != np.rint(x * (np.float32(1) / s))


def assert_ints_match(got: np.ndarray, want: np.ndarray, ties: np.ndarray) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    differ = got != want
    assert not (differ & ~ties).any(), f"{int((differ & ~ties).sum())} integers differ away from rounding ties"
    assert np.abs(got.astype(np.int64) - want.astype(np.int64)).max(initial=0) <= 1
    assert ties.mean() < 1e-4


@pytest.mark.parametrize("dtype, lo, hi, zero_point", [
    (torch.uint8, 0, 255, 128), (torch.int8, -128, 127, 0), (torch.int8, -127, 127, 3), (torch.uint8, 0, 200, 7),
])
def test_quantize_per_tensor_matches_torch(dtype, lo, hi, zero_point):
    scale = 0.0173
    x = torch.randn(4, 5, 33) * 2
    fn = Fn(lambda t: qd.quantize_per_tensor(t, scale, zero_point, lo, hi, dtype))
    _, (got,), (want,) = import_and_run(fn, x)
    assert_ints_match(got, want, tie_positions(x.numpy(), scale))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8])
def test_dequantize_per_tensor_matches_torch(dtype):
    info = torch.iinfo(dtype)
    q = torch.randint(info.min, info.max + 1, (3, 7, 5), dtype=dtype)
    fn = Fn(lambda t: qd.dequantize_per_tensor(t, 0.031, 5, info.min, info.max, dtype))
    _, (got,), (want,) = import_and_run(fn, q)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=0)


def test_per_channel_round_trip_matches_torch():
    scales = torch.rand(6, dtype=torch.float64) * 0.05 + 0.01
    zero_points = torch.randint(-10, 10, (6,), dtype=torch.int64)

    def fn(t):
        q = qd.quantize_per_channel(t, scales, zero_points, 1, -128, 127, torch.int8)
        return q, qd.dequantize_per_channel(q, scales, zero_points, 1, -128, 127, torch.int8)

    x = torch.randn(2, 6, 9)
    _, (got_q, got_x), (want_q, want_x) = import_and_run(Fn(fn), x)
    # torch computes per-channel in float64 here: compare against that rounding
    ties = np.rint(x.numpy() / scales.numpy().astype(np.float32)[:, None]) != \
        np.rint(x.numpy().astype(np.float64) * (1.0 / scales.numpy())[:, None])
    assert_ints_match(got_q, want_q, ties)
    np.testing.assert_allclose(got_x, want_x, rtol=1e-6, atol=1e-7)


class QuantizedLinear(nn.Module):
    """A PT2E-converted linear: int8 per-channel weight buffer, u8 activations per tensor."""

    def __init__(self, rng: np.random.Generator, in_f: int = 16, out_f: int = 8):
        super().__init__()
        w = rng.standard_normal((out_f, in_f)).astype(np.float32)
        scales = np.abs(w).max(axis=1) / 127
        self.register_buffer("w_q", torch.from_numpy(np.rint(w / scales[:, None]).astype(np.int8)))
        self.register_buffer("w_scale", torch.from_numpy(scales.astype(np.float64)))
        self.register_buffer("w_zp", torch.zeros(out_f, dtype=torch.int64))
        self.bias = nn.Parameter(torch.from_numpy(rng.standard_normal(out_f).astype(np.float32)))

    def forward(self, x):
        xq = qd.quantize_per_tensor(x, 0.02, 128, 0, 255, torch.uint8)
        xd = qd.dequantize_per_tensor(xq, 0.02, 128, 0, 255, torch.uint8)
        w = qd.dequantize_per_channel(self.w_q, self.w_scale, self.w_zp, 0, -127, 127, torch.int8)
        y = F.relu(F.linear(xd, w, self.bias))
        yq = qd.quantize_per_tensor(y, 0.05, 0, 0, 255, torch.uint8)
        return qd.dequantize_per_tensor(yq, 0.05, 0, 0, 255, torch.uint8)


def test_pt2e_linear_imports_and_runs_on_onnxruntime(rng):
    from backends.onnx.emit import emit_onnx
    from backends.onnx.runtime import session_from_model

    module = QuantizedLinear(rng).eval()
    x = torch.from_numpy(rng.uniform(-2, 2, (4, 16)).astype(np.float32))
    graph, (got,), (want,) = import_and_run(module, x)
    ops = graph.op_counts()
    assert ops["quantize_linear"] == 2 and ops["dequantize_linear"] == 3
    # one output step (0.05) where an input sits on a rounding tie; otherwise equal
    np.testing.assert_allclose(got, want, rtol=0, atol=0.05 + 1e-6)
    assert np.mean(got != want) < 0.05
    session = session_from_model(emit_onnx(graph).SerializeToString(), threads=1)
    (ort_out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    np.testing.assert_allclose(ort_out, got, rtol=0, atol=0.05 + 1e-6)


def test_dynamic_choose_qparams_matches_torch(rng):
    def fn(t):
        scale, zp = qd.choose_qparams.tensor(t, 0, 255, torch.finfo(torch.float32).eps, torch.uint8)
        q = qd.quantize_per_tensor.tensor(t, scale, zp, 0, 255, torch.uint8)
        return scale, zp, qd.dequantize_per_tensor.tensor(q, scale, zp, 0, 255, torch.uint8)

    x = torch.from_numpy(rng.uniform(-1.5, 3.0, (5, 12)).astype(np.float32))
    graph, (scale, zp, deq), (want_scale, want_zp, want_deq) = import_and_run(Fn(fn), x)
    assert "dynamic_quantize_linear" in graph.op_counts()
    np.testing.assert_allclose(scale, want_scale, rtol=1e-7)
    np.testing.assert_array_equal(zp, want_zp)
    np.testing.assert_allclose(deq, want_deq, rtol=0, atol=float(want_scale[0]) * 1.0001)


def test_unsupported_choose_qparams_names_the_op():
    from compiler.errors import UnsupportedOpError

    def fn(t):
        scale, zp = qd.choose_qparams.tensor(t, -128, 127, 1e-7, torch.int8)
        return qd.quantize_per_tensor.tensor(t, scale, zp, -128, 127, torch.int8)

    with pytest.raises(UnsupportedOpError, match="choose_qparams.*only uint8"):
        import_exported_program(export_module(Fn(fn), (torch.randn(3, 4),)))


def test_quantized_decomposed_ops_survive_decomposition():
    from compiler.frontend import _decomposition_table

    table = _decomposition_table()
    for op in (qd.quantize_per_tensor.default, qd.dequantize_per_tensor.default,
               qd.quantize_per_channel.default, qd.dequantize_per_channel.default, qd.choose_qparams.tensor):
        assert op not in table
