"""bench/gpu_check: the folder prepare.py builds and the flow of check.py, run here on the CPU
(``--target llvm`` artifacts, ``check.py --cpu-dry-run``); without a GPU, check.py in its GPU mode
exits 2 with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tvm")
ROOT = Path(__file__).resolve().parent.parent


def _run(args, cwd, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    proc = _run([str(ROOT / "bench/gpu_check/prepare.py"), "--out", str(out), "--target", "llvm", "--quick",
                 "--no-bundle"], ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


@pytest.mark.slow
def test_prepare_packs_artifacts_references_models_and_check(folder):
    spec = json.loads((folder / "cases.json").read_text())
    assert spec["target"] == "llvm" and spec["cases"]
    for case in spec["cases"]:
        assert (folder / case["artifact"]).is_file() and (folder / case["data"]).is_file()
    assert (folder / "check.py").is_file() and (folder / "models" / "__init__.py").is_file()


@pytest.mark.slow
def test_check_dry_run_verifies_and_times_every_case(folder, tmp_path):
    out = tmp_path / "results.md"
    proc = _run(["check.py", "--cpu-dry-run", "--no-torch-compile", "--budget-s", "0.05", "--out", str(out)], folder)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    text = out.read_text()
    names = [c["name"] for c in json.loads((folder / "cases.json").read_text())["cases"]]
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| model")]
    assert [r.split("|")[1].strip() for r in rows] == names
    assert all(r.rstrip("| ").endswith("yes") for r in rows)


@pytest.mark.slow
def test_check_dry_run_fails_on_a_wrong_reference(folder, tmp_path):
    import numpy as np

    spec = json.loads((folder / "cases.json").read_text())
    case = spec["cases"][0]
    bad = tmp_path / "bad"
    bad.mkdir()
    data = dict(np.load(folder / case["data"]))
    data["ref0"] = data["ref0"] + 1.0
    np.savez(bad / "case.npz", **data)
    (bad / "artifact.aot").symlink_to(folder / case["artifact"])
    (bad / "cases.json").write_text(json.dumps({**spec, "cases": [{**case, "data": "case.npz",
                                                                  "artifact": "artifact.aot"}]}))
    proc = _run([str(folder / "check.py"), "--folder", str(bad), "--cpu-dry-run", "--no-torch-compile",
                 "--budget-s", "0.05", "--out", str(tmp_path / "r.md")], folder)
    assert proc.returncode == 1 and "| NO |" in proc.stdout


def test_check_without_gpu_exits_2_with_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    (tmp_path / "cases.json").write_text(json.dumps({"target": "cuda", "arch": "sm_90", "cases": []}))
    proc = _run([str(ROOT / "bench/gpu_check/check.py"), "--folder", str(tmp_path)], tmp_path, timeout=120)
    assert proc.returncode == 2 and "no CUDA GPU" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
