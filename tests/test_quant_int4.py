"""int4-weight quantization: blocked int4 linear/matmul weights (passes.quantize), stored packed two
a byte in ONNX and run by onnxruntime's MatMulNBits, lowered in float by TVM, rejected by HLS.

Backends are checked against the interpreter on the quantized graph at float tolerance (both
dequantize the same integers); the trained digits MLP for accuracy, artifact size (against the
float32 artifact built in the same test) and onnxruntime's optimized graph.
"""

from __future__ import annotations

import copy
import json
import zipfile

import numpy as np
import onnx
import pytest

from backends.onnx.emit import emit_target
from compiler.errors import CompileError, UnsupportedOpError
from compiler.interpreter import run_graph
from compiler.ir import DType, Graph, TensorType
from passes import EliminateDeadCode
from passes.quantize import quantize_graph, quantize_weight_int4

RTOL, ATOL = 1e-5, 1e-5
FLOAT_LAYERS = {"Gemm", "FusedGemm", "MatMul", "FusedMatMul"}
BATCH = 64


# -- helpers ---------------------------------------------------------------------------------------
def int4_graph(graph: Graph, **kwargs) -> tuple[Graph, dict]:
    """``graph`` quantized to int4-weight as compile() does it (then dead-code elimination)."""
    graph = copy.deepcopy(graph)
    report = quantize_graph(graph, "int4-weight", **kwargs)
    EliminateDeadCode().run(graph)
    graph.remove_unused_constants()
    graph.verify()
    return graph, report


def onnx_run_and_ops(graph: Graph, inputs: list[np.ndarray], tmp_path) -> tuple[list[np.ndarray], list[str]]:
    """The emitted model's outputs under the session options it asks for, and the op types of
    onnxruntime's optimized graph."""
    payload, info = emit_target(graph, {})
    return session_outputs_and_ops(payload["model.onnx"], info.get("session_config"), inputs, tmp_path)


def session_outputs_and_ops(model: bytes, config: dict | None, inputs, tmp_path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    outputs = session.run(None, dict(zip(names, inputs)))
    return outputs, [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]


def assert_close(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    for g, w in zip(got, want):
        scale = float(np.abs(w).max()) or 1.0
        np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL * scale)


def linear_graph(k: int, n: int, rng, *, activation: str = "relu") -> Graph:
    g = Graph("linear")
    x = g.add_input("x", TensorType(DType.float32, ("batch", k)))
    w = g.add_constant((rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32), "w")
    b = g.add_constant(rng.standard_normal(n).astype(np.float32), "b")
    g.set_outputs([g.op("linear", x, w, b, activation=activation)])
    return g


# -- the pass --------------------------------------------------------------------------------------
def test_blocked_weights_are_symmetric_int4_with_a_short_last_block():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((72, 5)).astype(np.float32)  # K = 72: blocks of 32, 32 and 8 rows
    q, scale = quantize_weight_int4(w, 32)
    assert q.dtype == np.int8 and q.shape == w.shape and q.min() >= -7 and q.max() <= 7
    assert scale.shape == (3, 5)
    np.testing.assert_allclose(scale[2], np.abs(w[64:]).max(axis=0) / 7, rtol=1e-6)
    per_row = np.repeat(scale, 32, axis=0)[:72]
    assert np.all(np.abs(q * per_row - w) <= per_row / 2 + 1e-6)  # round to nearest step


def test_linear_becomes_matmul_on_a_blocked_int4_dequantize():
    graph, report = int4_graph(linear_graph(72, 16, np.random.default_rng(1)))
    assert [n.op for n in graph.nodes] == ["dequantize_linear", "matmul", "add", "relu"]
    dq = graph.nodes[0]
    assert dq.attrs == {"axis": 0, "block_size": 32, "bits": 4}
    assert dq.inputs[0].shape == (72, 16) and dq.inputs[1].shape == (3, 16)
    assert report["quantized"] == ["linear"] and report["block_size"] == 32
    assert report["layers"][0]["weight_dtype"] == "int4"
    assert graph.nodes[1].name == "linear"  # the layer keeps its name


def test_conv_stays_float_and_is_named_in_the_report():
    g = Graph("conv")
    x = g.add_input("x", TensorType(DType.float32, (1, 4, 6, 6)))
    w = g.add_constant(np.ones((8, 4, 3, 3), np.float32), "w")
    g.set_outputs([g.op("conv", x, w, None, stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1), groups=1)])
    graph, report = int4_graph(g)
    assert [n.op for n in graph.nodes] == ["conv"]
    assert "conv stays float" in report["skipped"][0]["reason"]


def test_block_size_is_configurable():
    graph, report = int4_graph(linear_graph(128, 8, np.random.default_rng(2)), block_size=64)
    assert graph.nodes[0].inputs[1].shape == (2, 8) and report["block_size"] == 64


# -- ONNX ------------------------------------------------------------------------------------------
def test_linear_runs_as_matmulnbits_like_the_interpreter(tmp_path):
    rng = np.random.default_rng(3)
    graph, _ = int4_graph(linear_graph(72, 16, rng))
    x = [rng.standard_normal((5, 72)).astype(np.float32)]
    got, ops = onnx_run_and_ops(graph, x, tmp_path)
    assert_close(got, run_graph(graph, x))
    assert ops.count("MatMulNBits") == 1 and not FLOAT_LAYERS & set(ops), ops


def test_matmul_with_a_constant_weight_on_3d_input(tmp_path):
    rng = np.random.default_rng(4)
    g = Graph("matmul")
    x = g.add_input("x", TensorType(DType.float32, (2, 3, 96)))
    g.set_outputs([g.op("matmul", x, g.add_constant(rng.standard_normal((96, 24)).astype(np.float32), "w"))])
    graph, report = int4_graph(g)
    assert report["quantized"] == ["matmul"]
    inputs = [rng.standard_normal((2, 3, 96)).astype(np.float32)]
    got, ops = onnx_run_and_ops(graph, inputs, tmp_path)
    assert_close(got, run_graph(graph, inputs))
    assert ops.count("MatMulNBits") == 1 and not FLOAT_LAYERS & set(ops), ops


def test_weights_are_stored_as_packed_int4():
    graph, _ = int4_graph(linear_graph(72, 16, np.random.default_rng(5)))
    model = onnx.load_from_string(emit_target(graph, {})[0]["model.onnx"])
    weight = next(t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT4)
    assert list(weight.dims) == [72, 16] and len(weight.raw_data) == 72 * 16 // 2
    stored = onnx.numpy_helper.to_array(weight).astype(np.int8)
    np.testing.assert_array_equal(stored, graph.nodes[0].inputs[0].const)


def test_opsets_before_21_have_no_blocked_dequantize():
    from backends.onnx.emit import emit_onnx

    graph, _ = int4_graph(linear_graph(64, 16, np.random.default_rng(8)))
    with pytest.raises(UnsupportedOpError, match="opset 21"):
        emit_onnx(graph, opset=20)


# -- compile() on real models ----------------------------------------------------------------------
def optimized_ops_of(artifact_path: str, tmp_path, inputs) -> list[str]:
    with zipfile.ZipFile(artifact_path) as z:
        model, manifest = z.read("model.onnx"), json.loads(z.read("manifest.json"))
    config = manifest["target_info"].get("session_config")
    return session_outputs_and_ops(model, config, inputs, tmp_path)[1]


def payload_bytes(path: str) -> int:
    with zipfile.ZipFile(path) as z:
        return z.getinfo("model.onnx").file_size


def test_seed_mlp_with_k_not_a_multiple_of_the_block(tmp_path):
    """K = 1000 = 31 blocks of 32 + 8 rows: the last block is shorter, nothing is skipped."""
    torch = pytest.importorskip("torch")
    import compiler
    from models.mlp import SeedMLP

    model = SeedMLP()
    x = torch.randn(8, 1000, generator=torch.Generator().manual_seed(0))
    art = compiler.compile(model, (x,), output=str(tmp_path / "mlp.aot"), quantize="int4-weight",
                           dynamic_batch=True)
    quantization = art.report.compression["quantization"]
    assert len(quantization["quantized"]) == 3 and not quantization["skipped"]
    assert art.report.verification.passed  # the artifact against the interpreter on the int4 graph
    inputs = [x.numpy()]
    got = compiler.load(art.path, threads=1).run(inputs)
    assert_close(got, run_graph(art.graph, inputs))
    ops = optimized_ops_of(art.path, tmp_path, inputs)
    assert ops.count("MatMulNBits") == 3 and not FLOAT_LAYERS & set(ops), ops
    scales = [n.inputs[1].shape for n in art.graph.nodes if n.op == "dequantize_linear"]
    assert scales[0] == (32, 500)  # ceil(1000 / 32)


def test_digits_mlp_accuracy_size_and_kernels(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    import compiler
    from models.digits import digits_data, model_inputs, trained_mlp

    data = digits_data()
    n = len(data.x_test) // BATCH * BATCH
    batches = [model_inputs("mlp", data.x_test[i:i + BATCH]).copy() for i in range(0, n, BATCH)]
    model, example = trained_mlp(), (torch.from_numpy(batches[0]),)
    fp32 = compiler.compile(model, example, output=str(tmp_path / "fp32.aot"))
    int4 = compiler.compile(model, example, output=str(tmp_path / "int4.aot"), quantize="int4-weight")

    def accuracy(path: str) -> float:
        runner = compiler.load(path, threads=1)
        logits = np.concatenate([runner.run([b])[0] for b in batches])
        return float((logits.argmax(1) == data.y_test[:n]).mean())

    drop_pp = 100 * (accuracy(fp32.path) - accuracy(int4.path))
    assert drop_pp <= 1.0, f"int4-weight loses {drop_pp:.2f} pp on the digits MLP"
    ratio = payload_bytes(int4.path) / payload_bytes(fp32.path)
    assert ratio < 0.25, f"int4 model is {ratio:.3f}x of fp32"
    ops = optimized_ops_of(int4.path, tmp_path, batches[:1])
    assert ops.count("MatMulNBits") == 3 and not FLOAT_LAYERS & set(ops), ops
    assert "int4" in int4.report.compression["quantization"]["summary"]


# -- TVM and HLS -----------------------------------------------------------------------------------
def test_tvm_lowers_the_blocked_dequantize_like_the_interpreter():
    pytest.importorskip("tvm")
    from op_check import run_tvm

    rng = np.random.default_rng(6)
    graph, _ = int4_graph(linear_graph(72, 16, rng))
    x = [rng.standard_normal((5, 72)).astype(np.float32)]
    assert_close(run_tvm(graph, x), run_graph(graph, x))


def test_hls_rejects_int4_weight_naming_the_targets_that_run_it(tmp_path):
    torch = pytest.importorskip("torch")
    import compiler
    from models.mlp import SeedMLP

    with pytest.raises(CompileError, match=r"int4-weight.*'hls'.*onnx, llvm, cuda"):
        compiler.compile(SeedMLP(), (torch.randn(1, 1000),), target="hls", output=str(tmp_path / "m.aot"),
                         quantize="int4-weight")


def test_hls_backend_rejects_a_blocked_dequantize():
    from backends.hls.emit import emit_target as hls_emit

    graph, _ = int4_graph(linear_graph(64, 16, np.random.default_rng(7)))
    graph.inputs[0].type = TensorType(DType.float32, (1, 64))
    with pytest.raises(UnsupportedOpError, match="int4"):
        hls_emit(graph, {"target": "hls"})


@pytest.mark.parametrize("size", [24, 8, 0])
def test_bad_block_sizes_are_rejected_before_any_work(size):
    from compiler.driver.compression import CompressionOptions

    with pytest.raises(CompileError, match="power of two >= 16"):
        CompressionOptions(quantize="int4-weight", int4_block_size=size).check()
