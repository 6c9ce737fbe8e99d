"""HLS backend: precision planning (overflow warnings, auto mode, per-layer overrides), errors for
unsupported ops, the project layout, estimates, csynth reports and the runtime's rebuild path."""

from __future__ import annotations

import io
import math
import re
import tarfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn

from backends.hls import build, emit, estimate, runtime
from compiler.errors import ArtifactError, CompileError, UnsupportedOpError
from compiler.interpreter import run_graph
from tests.test_hls_layers import (  # noqa: F401
    hls_cache,
    hls_cache_dir,
    ir_graph,
    needs_gxx,
    prepared,
)


def big_output_mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    with torch.no_grad():
        model[2].weight.mul_(200.0)  # outputs far beyond ap_fixed<16,6>'s +-32
    return model.eval(), torch.randn(4, 16)


def test_overflow_warns_and_names_the_layer():
    model, x = big_output_mlp()
    graph = ir_graph(model, x)
    low = emit.lower_graph(graph, {"target": "hls"})
    report = emit.overflow_report(low.plan, graph, low.inputs, low.layers)
    last = graph.nodes[-1].name
    assert any(e["layer"] == last and e["what"] == "values" for e in report)
    ours, spec = low.emulate(low.calibration)[0], run_graph(graph, low.calibration)[0]
    assert np.max(np.abs(ours - spec)) > 1.0  # saturated: the warning is about a real error


def test_emit_reports_overflow(tmp_path, monkeypatch):
    monkeypatch.setattr(build, "toolchain_problem", lambda: "skipped in this test")
    model, x = big_output_mlp()
    with pytest.warns(emit.HLSOverflowWarning, match=r"ap_fixed<16,6>.*hls_precision_map"):
        _, info = emit.emit_target(ir_graph(model, x), {"target": "hls"})
    assert info["overflow"] and info["runnable_here"] is False


def test_auto_precision_fits_the_ranges():
    model, x = big_output_mlp()
    graph = ir_graph(model, x)
    low = emit.lower_graph(graph, {"target": "hls", "hls_precision": "auto"})
    assert emit.overflow_report(low.plan, graph, low.inputs, low.layers) == []
    spec = run_graph(graph, low.calibration)[0]
    err = np.max(np.abs(low.emulate(low.calibration)[0] - spec))
    assert err <= 2e-2 * np.max(np.abs(spec))
    assert low.layers[-1].output.type.integer > 6  # it grew where the values are large


def test_precision_map_overrides_one_layer():
    graph, options, _, _ = prepared("linear_relu")
    name = graph.nodes[0].name
    low = emit.lower_graph(graph, {**options, "hls_precision_map": {name: "ap_fixed<10,4>"}})
    assert str(low.layers[0].output.type) == "ap_fixed<10,4>"
    with pytest.raises(CompileError, match="unknown layer"):
        emit.emit_target(graph, {**options, "hls_precision_map": {"no_such_layer": "ap_fixed<8,3>"}})
    with pytest.raises(CompileError, match="ap_fixed<16,6>"):
        emit.lower_graph(graph, {**options, "hls_precision": "float"})


def test_unsupported_op_names_op_and_location():
    class Sine(nn.Module):
        def forward(self, x):
            return torch.sin(x) + 1

    graph = ir_graph(Sine(), torch.randn(2, 4))
    with pytest.raises(UnsupportedOpError) as err:
        emit.emit_target(graph, {"target": "hls"})
    assert err.value.op == "sin" and "HLS" in str(err.value) and "forward" in str(err.value)


def test_unsupported_attribute_is_refused():
    graph = ir_graph(nn.MaxPool2d(2, ceil_mode=True), torch.randn(1, 2, 5, 5))
    with pytest.raises(UnsupportedOpError, match="ceil_mode"):
        emit.emit_target(graph, {"target": "hls"})


def project_files(payload, proj):
    with tarfile.open(fileobj=io.BytesIO(payload[emit.PROJECT_FILE])) as tar:
        return {m.name[len(proj) + 1:]: tar.extractfile(m).read().decode() for m in tar.getmembers()}


def test_project_layout_and_synthesizable_firmware(monkeypatch):
    monkeypatch.setattr(build, "toolchain_problem", lambda: "skipped in this test")
    graph, options, low, _ = prepared("conv_flatten_linear")
    payload, info = emit.emit_target(graph, {**options, "hls_part": "xc7z020clg400-1", "hls_clock_ns": 10})
    proj = info["project"]
    files = project_files(payload, proj)
    for rel in (f"firmware/{proj}.cpp", f"firmware/{proj}.h", "firmware/defines.h", "firmware/parameters.h",
                f"tb/{proj}_test.cpp", "tb_data/tb_input_features.dat", "tb_data/tb_output_predictions.dat",
                "build_prj.tcl", "project.json", f"bridge/{proj}_bridge.cpp"):
        assert rel in files, rel
    assert len([f for f in files if f.startswith("firmware/weights/")]) == 4  # w, b of conv and linear
    assert "xc7z020clg400-1" in files["build_prj.tcl"] and "-period 10.0" in files["build_prj.tcl"]
    firmware = "".join(v for k, v in files.items() if k.startswith("firmware/"))
    assert not re.search(r"\b(malloc|new|std::|iostream|vector)\b", firmware)
    assert "#pragma HLS DATAFLOW" in files[f"firmware/{proj}.cpp"]
    assert "{" in files["firmware/weights/w1.h"] and "ap_fixed" not in files["firmware/weights/w1.h"]
    # weights are integer codes: dequantized they match the IR's weights within half an LSB
    w = graph.nodes[0].inputs[1].const
    codes = low.layers[0].p["w"]
    lsb = 2.0 ** -low.layers[0].p["weight_t"].frac
    assert np.max(np.abs(codes * lsb - w.transpose(0, 2, 3, 1))) <= lsb / 2


def test_reuse_factor_and_estimates():
    graph, options, _, _ = prepared("linear_relu")
    low = emit.lower_graph(graph, {**options, "reuse_factor": 7})  # 240 weights: 7 is no divisor
    layer = low.layers[0]
    rf = layer.p["reuse"]["reuse_factor"]
    assert layer.p["w"].size % rf == 0 and abs(rf - 7) <= 1
    est = estimate.layer_estimate(layer)
    assert est["multipliers"] == math.ceil(np.count_nonzero(layer.p["w"]) / rf)
    assert est["ii"] == rf and est["weight_bits"] == (layer.p["w"].size + layer.p["b"].size) * 16
    assert est["latency_cycles"] == rf + math.ceil(math.log2(layer.p["n_in"])) + 3
    assert estimate.dsp_per_multiplier(16, 16) == 1 and estimate.dsp_per_multiplier(4, 16) == 0


def test_read_csynth(tmp_path):
    report = tmp_path / "myproject_prj" / "solution1" / "syn" / "report"
    report.mkdir(parents=True)
    values = {"Best-caseLatency": 11, "Worst-caseLatency": 13, "Interval-min": 5, "BRAM_18K": 2, "DSP": 40}
    (report / "csynth.xml").write_text(
        "<profile><PerformanceEstimates><SummaryOfOverallLatency>"
        + "".join(f"<{k}>{values[k]}</{k}>" for k in ("Best-caseLatency", "Worst-caseLatency", "Interval-min"))
        + "</SummaryOfOverallLatency></PerformanceEstimates><AreaEstimates><Resources>"
        + "".join(f"<{k}>{values[k]}</{k}>" for k in ("BRAM_18K", "DSP")) + "</Resources></AreaEstimates></profile>")
    got = estimate.read_csynth(tmp_path)
    assert (got["latency_cycles"], got["ii"], got["bram18"], got["dsp"]) == (13, 5, 2, 40)
    rows = estimate.compare({"latency_cycles": 9, "ii": 4}, got)
    assert rows[0] == {"quantity": "latency_cycles", "estimate": 9, "csynth": 13}
    with pytest.raises(FileNotFoundError):
        estimate.read_csynth(tmp_path / "empty")


@needs_gxx
def test_runtime_rebuilds_from_project_and_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("AOT_COMPILER_CACHE", str(tmp_path))
    graph, options, low, arrays = prepared("linear_tanh")
    payload, _ = emit.emit_target(graph, options)
    first = runtime.load_runner({}, payload, threads=1)(arrays)[0]
    assert (tmp_path / "hls" / f"{build.sha256(payload[emit.LIB_FILE])}.so").exists()
    without_lib = {k: v for k, v in payload.items() if k != emit.LIB_FILE}
    again = runtime.load_runner({}, without_lib, threads=1)(arrays)[0]
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(again, low.emulate(arrays)[0])


def test_runtime_without_toolchain_says_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("AOT_COMPILER_CACHE", str(tmp_path))
    monkeypatch.setattr(build, "compiler_path", lambda: None)
    graph, options, _, _ = prepared("linear")
    payload, info = emit.emit_target(graph, options)
    assert emit.LIB_FILE not in payload and "g++" in info["not_runnable_reason"]
    with pytest.raises(ArtifactError, match="g\\+\\+"):
        runtime.load_runner({}, payload, threads=1)
