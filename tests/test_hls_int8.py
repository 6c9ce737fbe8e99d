"""HLS int8 kernels on QDQ graphs from the static int8 pass (passes.quantize): C simulation ==
integer emulator bit for bit; each integer layer against the interpreter fed the same integer
inputs (equal codes except at rounding ties: the interpreter rounds float32 x/scale half to even,
the kernels round the exact product by a 31-bit multiplier half up); and the whole graph against
the interpreter within the reported tolerance."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn

from backends.hls import emit, emulate
from backends.hls.runtime import load_runner
from compiler.interpreter import run_graph
from passes.quantize import quantize_graph
from tests.test_hls_layers import hls_cache, hls_cache_dir, ir_graph, needs_gxx  # noqa: F401


@pytest.fixture(scope="module")
def qdq():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 5)).eval()
    graph = ir_graph(model, torch.randn(2, 20))
    rng = np.random.default_rng(0)
    quantize_graph(graph, "int8", [[rng.standard_normal((128, 20)).astype(np.float32)]])
    assert any(n.op == "quantize_linear" for n in graph.nodes)
    low = emit.lower_graph(graph, {"target": "hls"})
    x = rng.standard_normal((200, 20)).astype(np.float32)
    return graph, low, x


def test_qdq_pattern_becomes_integer_layers(qdq):
    _, low, _ = qdq
    kinds = [layer.kind for layer in low.layers]
    assert kinds == ["quantize", "qdense", "qdense", "qdense"]
    assert all(layer.p["w"].dtype.kind == "i" and np.abs(layer.p["w"]).max() <= 127
               for layer in low.layers if layer.kind == "qdense")


def test_integer_layers_match_interpreter_codes(qdq):
    graph, low, x = qdq
    _, values = run_graph(graph, [x], keep_values=True)
    checked = 0
    for layer in low.layers:
        if layer.kind != "qdense" or "value" not in layer.p:
            continue
        source = next(prev for prev in low.layers if prev.output is layer.inputs[0])
        x_codes = values[source.p["value"]].astype(np.int64)  # the interpreter's own input codes
        ours = emulate.KERNELS[layer.kind](layer, x_codes)
        diff = np.abs(ours - values[layer.p["value"]].astype(np.int64))
        assert diff.max() <= 1 and np.mean(diff == 0) >= 0.99, layer.name
        checked += 1
    assert checked == 2


def test_graph_matches_interpreter(qdq):
    graph, low, x = qdq
    tol = emit.tolerance(low.inputs, low.layers)
    np.testing.assert_allclose(low.emulate([x])[0], run_graph(graph, [x])[0], rtol=tol["rtol"], atol=tol["atol"])


@needs_gxx
def test_csim_equals_integer_emulator(qdq):
    graph, low, x = qdq
    payload, _ = emit.emit_target(graph, {"target": "hls"})
    np.testing.assert_array_equal(load_runner({}, payload, threads=1)([x])[0], low.emulate([x])[0])


@needs_gxx
def test_digits_int8_end_to_end(tmp_path):
    """compile(quantize="int8", target="hls"): the QDQ graph runs as int8 kernels in C-sim."""
    import compiler
    from models.digits import digits_data, trained_model

    model, data = trained_model("mlp").eval(), digits_data()
    art = compiler.compile(model, (torch.from_numpy(data.x_test[:4].copy()),), target="hls", dynamic_batch=True,
                           output=str(tmp_path / "digits_int8.aot"), quantize=compiler.QuantizeOptions("int8", calibration=[[data.x_train[:256]]]))
    assert "quantize_linear" in art.graph.op_counts()
    ours = np.asarray(compiler.load(art.path)(data.x_test)).argmax(axis=1)
    theirs = model(torch.from_numpy(data.x_test)).detach().numpy().argmax(axis=1)
    assert np.mean(ours == theirs) >= 0.99
