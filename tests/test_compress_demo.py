"""The compression walk-through of the seed MLP runs end to end and keeps its accuracy."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow
def test_compress_demo_runs():
    result = subprocess.run([sys.executable, "examples/compress_demo.py"], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "4. quantized to int8 and tested" in result.stdout
