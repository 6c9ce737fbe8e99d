"""The `compile` command end to end: happy paths through each model source kind, and every bad
input from the Foundation issue (one clear line, exit status 2, nothing half-written)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import compiler
from compiler.driver.cli import main
from conftest import ROOT, replace_first_relu_with_neg

NET_PY = textwrap.dedent("""
    import torch
    import torch.nn as nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.fc1 = nn.Linear(6, 8)
            self.fc2 = nn.Linear(8, 3)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(x)))

        def example_inputs(self):
            return (torch.randn(2, 6),)

    class Det(nn.Module):
        def forward(self, x):
            return torch.linalg.det(x)
""")


@pytest.fixture
def net_py(tmp_path):
    path = tmp_path / "net.py"
    path.write_text(NET_PY)
    return path


def load_net(net_py):
    import importlib.util

    spec = importlib.util.spec_from_file_location("net_under_test", net_py)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Net().eval()


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str):
    lines = [line for line in err.strip().splitlines() if not line.startswith("[compile]")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err


def test_factory_spec_compiles_verifies_and_loads(net_py, tmp_path, capsys):
    out_path = tmp_path / "net.aot"
    code, out, err = run_cli(capsys, f"{net_py}:Net", "-o", out_path)
    assert code == 0, err
    assert "verify:     ok" in out and "linear x2" in out
    model = compiler.load(out_path)
    x = np.random.default_rng(0).standard_normal((2, 6)).astype(np.float32)
    with torch.no_grad():
        want = load_net(net_py)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model(x), want, rtol=1e-5, atol=1e-6)


def test_pt2_dynamic_batch_and_report_json(net_py, tmp_path, capsys):
    net = load_net(net_py)
    pt2 = tmp_path / "net.pt2"
    torch.export.save(torch.export.export(net, net.example_inputs()), pt2)
    out_path, report = tmp_path / "dyn.aot", tmp_path / "report.json"
    code, _, err = run_cli(capsys, pt2, "--dynamic-batch", "-o", out_path, "--report-json", report)
    assert code == 0, err
    import json

    data = json.loads(report.read_text())
    assert data["inputs"][0]["shape"] == ["batch", 6] and data["verification"]["passed"]
    model = compiler.load(out_path)
    for batch in (1, 7):
        x = np.random.default_rng(batch).standard_normal((batch, 6)).astype(np.float32)
        with torch.no_grad():
            np.testing.assert_allclose(model(x), net(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-6)


def test_torchscript_with_input_shape(net_py, tmp_path, capsys):
    ts = tmp_path / "net.ts"
    torch.jit.save(torch.jit.script(load_net(net_py)), ts)
    code, _, err = run_cli(capsys, ts, "--input-shape", "2x6", "-o", tmp_path / "ts.aot")
    assert code == 0, err


def test_pickled_module_needs_trust_pickle(net_py, tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(net_py.parent))  # the pickle refers to the class as net.Net
    import net

    pickled = tmp_path / "net.pt"
    torch.save(net.Net(), pickled)
    out_path = tmp_path / "p.aot"
    code, _, err = run_cli(capsys, pickled, "--input-shape", "2x6", "-o", out_path)
    assert code == 2 and "--trust-pickle" in err
    assert_one_line_error(err)
    assert not out_path.exists()
    code, _, err = run_cli(capsys, pickled, "--trust-pickle", "--input-shape", "2x6", "-o", out_path)
    assert code == 0, err
    assert out_path.exists()
    sys.modules.pop("net", None)


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04garbage", b"hello,world\n1,2\n", bytes(range(256)) * 4],
                         ids=["empty", "corrupt-zip", "csv", "random"])
def test_bad_model_files_exit_2_with_one_line(tmp_path, capsys, content):
    bad = tmp_path / "model.pt2"
    bad.write_bytes(content)
    code, _, err = run_cli(capsys, bad, "-o", tmp_path / "x.aot")
    assert code == 2
    assert_one_line_error(err)
    assert not (tmp_path / "x.aot").exists()


def test_truncated_pt2(net_py, tmp_path, capsys):
    net = load_net(net_py)
    pt2 = tmp_path / "net.pt2"
    torch.export.save(torch.export.export(net, net.example_inputs()), pt2)
    data = pt2.read_bytes()
    pt2.write_bytes(data[: len(data) // 2])
    code, _, err = run_cli(capsys, pt2)
    assert code == 2 and ("truncated" in err or "corrupt" in err)
    assert_one_line_error(err)


def test_missing_model_file(tmp_path, capsys):
    code, _, err = run_cli(capsys, tmp_path / "nope.pt2")
    assert code == 2 and "not found" in err
    assert_one_line_error(err)


def test_unsupported_op_names_op_and_line(net_py, tmp_path, capsys):
    code, _, err = run_cli(capsys, f"{net_py}:Det", "--input-shape", "3x3", "-o", tmp_path / "d.aot")
    assert code == 2
    assert_one_line_error(err)
    assert "aten._linalg_det" in err and "net.py" in err and "torch.linalg.det(x)" in err
    assert not (tmp_path / "d.aot").exists()


def test_output_in_missing_directory(net_py, tmp_path, capsys):
    target = tmp_path / "missing" / "net.aot"
    code, _, err = run_cli(capsys, f"{net_py}:Net", "-o", target)
    assert code == 2 and "does not exist" in err
    assert_one_line_error(err)
    assert not target.parent.exists()


def test_verification_failure_exits_1_and_writes_nothing(net_py, tmp_path, capsys, monkeypatch):
    import passes
    from passes.base import Pass

    class WrongRelu(Pass):
        """relu -> neg: a deliberately wrong rewrite the verification must catch."""

        name = "wrong"

        def run(self, graph):
            return replace_first_relu_with_neg(graph)

    monkeypatch.setitem(passes.PASSES, "wrong", WrongRelu)
    out_path = tmp_path / "bad.aot"
    code, _, err = run_cli(capsys, f"{net_py}:Net", "--passes", "wrong", "-o", out_path)
    assert code == 1 and "verification failed" in err
    assert not out_path.exists() and list(tmp_path.glob("*.aot*")) == []
    # --check-passes names the pass before anything is emitted
    code, _, err = run_cli(capsys, f"{net_py}:Net", "--passes", "wrong", "--check-passes", "-o", out_path)
    assert code == 3 and "pass wrong changed output" in err


def test_print_and_dump_ir(net_py, tmp_path, capsys):
    dump = tmp_path / "ir"
    dump.mkdir()
    code, _, err = run_cli(capsys, f"{net_py}:Net", "-o", tmp_path / "n.aot", "--print-ir-after-all",
                           "--dump-ir", dump, "--no-verify")
    assert code == 0
    assert "// IR after pass fold" in err and "linear(" in err
    assert sorted(p.name for p in dump.iterdir())[:2] == ["01_fold.ir", "02_simplify.ir"]


def test_console_script_runs_as_a_subprocess(net_py, tmp_path):
    out_path = tmp_path / "sub.aot"
    proc = subprocess.run([sys.executable, "-m", "compiler.driver.cli", f"{net_py}:Net", "-o", str(out_path), "-q"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and out_path.exists()


@pytest.mark.parametrize("flags, message", [
    (["--target", "onnx", "--tune", "4"], "do not apply to target 'onnx'"),
    (["--target", "llvm", "--tune", "4"], "tuning needs a database directory"),
    (["--target", "cuda", "--tune", "4", "--tuning-db", "db"], "'tune' is for target(s) llvm"),
    (["--target", "llvm", "--cuda-arch", "sm_90"], "'cuda_arch' is for target(s) cuda"),
    (["--target", "onnx", "--hls-precision", "ap_fixed<8,3>"], "'hls_precision' is for target"),
    (["--target", "hls", "--hls-precision-map", "{oops"], "not valid JSON"),
])
def test_target_options_are_checked_before_any_work(flags, message, capsys, tmp_path):
    from compiler.driver.cli import main

    assert main(["models/mlp.py:SeedMLP", "-o", str(tmp_path / "m.aot"), "-q", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "m.aot").exists()
