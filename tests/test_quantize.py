"""passes.quantize on the trained digits MLP and CNN: each mode against the float model (accuracy),
the emitted ONNX against the interpreter, the size of the model, and onnxruntime's optimized graph
(no float conv / gemm / matmul left where quantization was asked); skip lists, calibrators, errors.
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import onnx
import pytest

from backends.onnx.emit import emit_onnx
from compiler.errors import CompileError
from compiler.interpreter import run_graph
from compiler.ir import DType, Graph, TensorType
from passes import EliminateDeadCode, PassManager, make_pipeline
from passes.calibrate import PERCENTILE, collect_ranges
from passes.quantize import quantize_graph, quantize_weight

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

BATCH = 64
FLOAT_LAYERS = {"Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul"}
INT8_LAYERS = {"QLinearConv", "QGemm", "QLinearMatMul", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
               "MatMulInteger", "ConvInteger"}


@functools.cache
def float_graph(kind: str) -> Graph:
    from compiler.frontend import export_module, import_exported_program
    from models.digits import digits_data, model_inputs, trained_model

    x = torch.from_numpy(model_inputs(kind, digits_data().x_test[:BATCH]).copy())
    graph = import_exported_program(export_module(trained_model(kind), (x,)))
    PassManager(make_pipeline(), verify=True).run(graph)
    return graph


def calibration(kind: str, batches: int = 8) -> list[list[np.ndarray]]:
    from models.digits import digits_data, model_inputs

    x = digits_data().x_train
    return [[model_inputs(kind, x[i * BATCH:(i + 1) * BATCH]).copy()] for i in range(batches)]


def test_batches(kind: str) -> tuple[list[np.ndarray], np.ndarray]:
    from models.digits import digits_data, model_inputs

    data = digits_data()
    n = len(data.x_test) // BATCH * BATCH
    return [model_inputs(kind, data.x_test[i:i + BATCH]).copy() for i in range(0, n, BATCH)], data.y_test[:n]


test_batches.__test__ = False  # a helper, not a test


def quantized(kind: str, mode: str, **kwargs) -> tuple[Graph, dict]:
    graph = copy.deepcopy(float_graph(kind))
    report = quantize_graph(graph, mode, calibration(kind) if mode == "int8" else None, **kwargs)
    EliminateDeadCode().run(graph)  # what compile() runs after quantization
    graph.remove_unused_constants()
    graph.verify()
    return graph, report


def ort_session(model: onnx.ModelProto, optimized_path=None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def relative_rms(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.sqrt(np.mean((got - want) ** 2)) / np.sqrt(np.mean(want ** 2)))


def accuracy(outputs: list[np.ndarray], labels: np.ndarray) -> float:
    return float((np.concatenate(outputs).argmax(axis=1) == labels).mean())


@pytest.fixture(scope="module", params=["mlp", "cnn"])
def kind(request):
    return request.param


@pytest.mark.parametrize("mode, max_drop_pp, max_size", [
    ("int8", 0.5, 0.30), ("int8-dynamic", 0.5, None), ("int8-weight", 0.5, 0.30)])
def test_mode_on_digits(kind, mode, max_drop_pp, max_size, tmp_path):
    graph, report = quantized(kind, mode)
    assert [v.name for v in graph.outputs] == [v.name for v in float_graph(kind).outputs]  # same signature
    batches, labels = test_batches(kind)
    float_model, model = emit_onnx(float_graph(kind)), emit_onnx(graph)
    optimized = tmp_path / "optimized.onnx"
    session = ort_session(model, optimized)
    name = session.get_inputs()[0].name
    ort_out = [session.run(None, {name: x})[0] for x in batches]
    interp_out = [run_graph(graph, [x])[0] for x in batches]
    float_out = [run_graph(float_graph(kind), [x])[0] for x in batches]

    # onnxruntime's fused int8 kernels round once where the QDQ reference rounds twice: the
    # logits agree to a few output steps and the predictions almost everywhere
    scale = max(np.abs(o).max() for o in interp_out)
    for got, want in zip(ort_out, interp_out):
        np.testing.assert_allclose(got, want, rtol=0, atol=0.02 * scale)
    assert np.mean(np.concatenate(ort_out).argmax(1) == np.concatenate(interp_out).argmax(1)) >= 0.99

    drop_pp = 100 * (accuracy(float_out, labels) - accuracy(ort_out, labels))
    assert drop_pp <= max_drop_pp, f"{mode} on {kind} loses {drop_pp:.2f} pp"
    size_ratio = len(model.SerializeToString()) / len(float_model.SerializeToString())
    assert size_ratio < (max_size if max_size is not None else 1.0), f"{mode} model is {size_ratio:.2f}x"

    ops = [n.op_type for n in onnx.load(str(optimized)).graph.node]
    n_float = sum(op in FLOAT_LAYERS for op in ops)
    n_int8 = sum(op in INT8_LAYERS for op in ops)
    if mode == "int8-weight":  # weight-only: the arithmetic stays float by design
        assert n_int8 == 0 and ops.count("DequantizeLinear") == len(report["quantized"])
    else:
        assert (n_float, n_int8) == (len(report["skipped"]), len(report["quantized"])), ops
        assert "ConvInteger" not in ops


def test_static_layers_are_the_fast_onnxruntime_kernels(tmp_path):
    """u8 activations with s8 weights: QLinearConv / QGemm, no s8 activation anywhere."""
    graph, report = quantized("cnn", "int8")
    ort_session(emit_onnx(graph), tmp_path / "o.onnx")
    optimized = onnx.load(str(tmp_path / "o.onnx"))
    ops = [n.op_type for n in optimized.graph.node]
    assert ops.count("QLinearConv") + ops.count("QGemm") == len(report["quantized"])
    for node in graph.nodes:
        if node.op == "quantize_linear":
            assert node.attrs["dtype"] == DType.uint8
    # the 1-input-channel conv stays float: onnxruntime's int8 conv is slower there (quantize_rules.py)
    assert [s["op"] for s in report["skipped"]] == ["conv"]


def test_dynamic_never_quantizes_conv():
    graph, report = quantized("cnn", "int8-dynamic")
    assert {s["op"] for s in report["skipped"]} == {"conv"}
    assert all("ConvInteger" in s["reason"] for s in report["skipped"])
    assert graph.op_counts().get("conv") == 2 and graph.op_counts()["matmul_integer"] == 2


def test_report_weight_errors_and_ranges_are_recomputable():
    _, report = quantized("mlp", "int8")
    base = float_graph("mlp")
    weights = [n.inputs[1].const for n in base.nodes if n.op == "linear"]
    for layer, w in zip(report["layers"], weights):
        q, qp = quantize_weight(w, 0, True)
        err = q.astype(np.float32) * qp.scale[:, None] - w
        assert layer["weight_error"]["max_abs"] == pytest.approx(float(np.abs(err).max()), rel=1e-6)
        assert layer["weight_error"]["max_abs"] <= float(qp.scale.max()) / 2 * 1.0001  # half a step
    x_all = np.concatenate([b[0] for b in calibration("mlp")])
    first = report["layers"][0]["input_range"]
    assert first == [pytest.approx(float(x_all.min())), pytest.approx(float(x_all.max()))]


@pytest.mark.parametrize("skip, expect_float", [(("linear",), 3), (("linear_relu",), 1)])
def test_skip_by_op_type_and_by_name(skip, expect_float, tmp_path):
    graph, report = quantized("mlp", "int8", skip=skip)
    assert len(report["skipped"]) == expect_float
    assert all(s["reason"] == "skipped on request" for s in report["skipped"])
    if skip == ("linear_relu",):
        assert "linear_relu" not in report["quantized"] and len(report["quantized"]) == 2
    ort_session(emit_onnx(graph), tmp_path / "o.onnx")
    ops = [n.op_type for n in onnx.load(str(tmp_path / "o.onnx")).graph.node]
    assert sum(op in FLOAT_LAYERS for op in ops) == expect_float


def test_static_without_calibration_is_a_clear_error():
    graph = copy.deepcopy(float_graph("mlp"))
    with pytest.raises(CompileError, match="needs calibration data"):
        quantize_graph(graph, "int8", None)
    with pytest.raises(CompileError, match="needs calibration data"):
        quantize_graph(graph, "int8", [])


@pytest.mark.parametrize("kwargs, message", [
    ({"mode": "int3"}, "unknown quantization mode 'int3'"),
    ({"mode": "int8-weight", "skip": ("nope",)}, "'nope' match no node name or op type.*linear_relu"),
    ({"mode": "int8-weight", "calibrator": "entropy"}, "unknown calibrator"),
    ({"mode": "int4-weight", "block_size": 24}, "int4 block size must be a power of two >= 16"),
])
def test_bad_arguments(kwargs, message):
    graph = copy.deepcopy(float_graph("mlp"))
    mode = kwargs.pop("mode")
    with pytest.raises(CompileError, match=message):
        quantize_graph(graph, mode, None, **kwargs)


def test_calibrators_against_numpy():
    g = Graph("cal")
    x = g.add_input("x", TensorType(DType.float32, (100_000,)))
    g.set_outputs([g.op("relu", x)])
    rng = np.random.default_rng(3)
    batches = [[rng.standard_normal(100_000).astype(np.float32)] for _ in range(3)]
    batches[1][0][17] = 80.0  # one outlier
    y = g.outputs[0].name
    minmax = collect_ranges(g, batches, {"x", y}, "minmax")
    assert minmax["x"] == (min(float(b[0].min()) for b in batches), 80.0)
    assert minmax[y][0] == 0.0
    pct = collect_ranges(g, batches, {"x"}, "percentile")["x"]
    want_hi = np.mean([np.percentile(b[0].astype(np.float64), PERCENTILE) for b in batches])
    assert pct[1] == pytest.approx(want_hi) and pct[1] < 10


def test_percentile_calibration_on_the_mlp_keeps_accuracy():
    graph, report = quantized("mlp", "int8", calibrator="percentile", per_channel=False)
    batches, labels = test_batches("mlp")
    float_acc = accuracy([run_graph(float_graph("mlp"), [x])[0] for x in batches], labels)
    acc = accuracy([run_graph(graph, [x])[0] for x in batches], labels)
    assert report["calibrator"] == "percentile" and not report["per_channel"]
    assert float_acc - acc <= 0.01


def test_linear_on_rank3_input_becomes_a_quantized_matmul(tmp_path):
    rng = np.random.default_rng(5)
    g = Graph("seq")
    x = g.add_input("x", TensorType(DType.float32, (2, 7, 32)))
    w1 = g.add_constant(rng.standard_normal((48, 32)).astype(np.float32) * 0.2, "w1")
    w2 = g.add_constant(rng.standard_normal((16, 48)).astype(np.float32) * 0.2, "w2")
    h = g.op("linear", x, w1, g.add_constant(rng.standard_normal(48).astype(np.float32), "b1"), activation="relu")
    g.set_outputs([g.op("linear", h, w2, None)])
    reference = copy.deepcopy(g)
    cal = [[rng.standard_normal((2, 7, 32)).astype(np.float32)] for _ in range(4)]
    report = quantize_graph(g, "int8", cal)
    assert len(report["quantized"]) == 2 and "linear" not in g.op_counts()
    inputs = [rng.standard_normal((2, 7, 32)).astype(np.float32)]
    want, got = run_graph(reference, inputs)[0], run_graph(g, inputs)[0]
    assert np.abs(got - want).max() <= 0.05 * np.abs(want).max()
    session = ort_session(emit_onnx(g), tmp_path / "o.onnx")
    ort_out = session.run(None, {"x": inputs[0]})[0]
    np.testing.assert_allclose(ort_out, got, rtol=0, atol=0.02 * np.abs(got).max())
    ops = [n.op_type for n in onnx.load(str(tmp_path / "o.onnx")).graph.node]
    assert not FLOAT_LAYERS & set(ops), ops


def test_compile_api_quantizes(tmp_path):
    """Through compiler.compile (the lead's glue): the artifact runs and is smaller."""
    import compiler
    from models.digits import digits_data, model_inputs, trained_model

    x = torch.from_numpy(model_inputs("mlp", digits_data().x_test[:BATCH]).copy())
    plain = compiler.compile(trained_model("mlp"), (x,), target="onnx", output=str(tmp_path / "f.aot"))
    # verification (on by default) uses the backend's tolerance for quantized activations
    art = compiler.compile(trained_model("mlp"), (x,), target="onnx", output=str(tmp_path / "q.aot"),
                           quantize=compiler.QuantizeOptions("int8", calibration=[tuple(b) for b in calibration("mlp")]))
    assert art.manifest["target_info"]["tolerance"]["atol"] > 0
    assert art.report.to_dict()["compression"]["quantization"]["quantized"]
    want = plain.load(threads=1)(x.numpy())
    got = art.load(threads=1)(x.numpy())
    assert np.mean(got.argmax(1) == want.argmax(1)) >= 0.98
    assert (tmp_path / "q.aot").stat().st_size < 0.5 * (tmp_path / "f.aot").stat().st_size


def test_conv_activations_other_than_relu_keep_the_conv_quantized(tmp_path):
    """hardswish cannot fold into a Q: the Q goes between the conv and it; relu6 (clamp) can. (The
    hardswish conv sums 16x3x3 = 144 products per output, enough for int8 to pay for the float
    hardswish; see passes/quantize_rules.py.)"""
    rng = np.random.default_rng(9)
    g = Graph("convs")
    x = g.add_input("x", TensorType(DType.float32, (4, 16, 10, 10)))

    def conv(v, cin, cout, **act):
        w = g.add_constant((rng.standard_normal((cout, cin, 3, 3)) * 0.2).astype(np.float32), "w")
        b = g.add_constant(rng.standard_normal(cout).astype(np.float32) * 0.1, "b")
        return g.op("conv", v, w, b, stride=(1, 1), padding=(1, 1, 1, 1), dilation=(1, 1), **act)

    h = conv(x, 16, 16, activation="hardswish")
    h = conv(h, 16, 32, activation="clamp", activation_args=(0.0, 6.0))
    g.set_outputs([conv(h, 32, 16)])
    g.name_outputs()
    reference = copy.deepcopy(g)
    cal = [[rng.standard_normal((4, 16, 10, 10)).astype(np.float32)] for _ in range(4)]
    report = quantize_graph(g, "int8", cal)
    assert len(report["quantized"]) == 3
    assert [v.name for v in g.outputs] == ["output"]  # a conv output keeps its name behind its Q/DQ
    inputs = [rng.standard_normal((4, 16, 10, 10)).astype(np.float32)]
    want, got = run_graph(reference, inputs)[0], run_graph(g, inputs)[0]
    assert relative_rms(got, want) < 0.05  # three 8-bit layers; values past the calibrated range clip
    session = ort_session(emit_onnx(g), tmp_path / "o.onnx")
    np.testing.assert_allclose(session.run(None, {"x": inputs[0]})[0], got, rtol=0, atol=0.02 * np.abs(got).max())
    ops = [n.op_type for n in onnx.load(str(tmp_path / "o.onnx")).graph.node]
    assert ops.count("QLinearConv") == 3 and not FLOAT_LAYERS & set(ops), ops


def test_weight_only_artifact_asks_onnxruntime_to_fold_the_weights(tmp_path):
    """int8 storage, float speed: with QDQ handling off onnxruntime folds DQ(weight) at load."""
    import onnxruntime as ort

    from backends.onnx.emit import emit_target

    graph, _ = quantized("cnn", "int8-weight")
    payload, info = emit_target(graph, {})
    assert info["session_config"] == {"session.disable_quant_qdq": "1"}
    assert "session_config" not in emit_target(quantized("cnn", "int8")[0], {})[1]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    for key, value in info["session_config"].items():
        options.add_session_config_entry(key, value)
    options.optimized_model_filepath = str(tmp_path / "o.onnx")
    session = ort.InferenceSession(payload["model.onnx"], options, providers=["CPUExecutionProvider"])
    x = test_batches("cnn")[0][0]
    np.testing.assert_allclose(session.run(None, {session.get_inputs()[0].name: x})[0], run_graph(graph, [x])[0],
                               rtol=1e-4, atol=1e-4)
    assert "DequantizeLinear" not in [n.op_type for n in onnx.load(str(tmp_path / "o.onnx")).graph.node]
