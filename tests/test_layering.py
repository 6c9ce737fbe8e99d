"""Layering: the IR, the interpreter and the passes import no torch, onnx or tvm, and loading an
artifact's package does not pull torch in."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT

LIGHT_MODULES = ["compiler", "compiler.ir", "compiler.ops", "compiler.interpreter", "compiler.text",
                 "compiler.dims", "passes", "compiler.runtime", "compiler.artifact"]


def test_core_modules_import_no_heavy_frameworks():
    code = (
        "import sys\n"
        f"for m in {LIGHT_MODULES!r}: __import__(m)\n"
        "heavy = [m for m in ('torch', 'onnx', 'onnxruntime', 'tvm') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"heavy imports: {out.stdout.strip()}"
