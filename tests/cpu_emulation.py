"""Run a Python snippet as another x86 CPU, to check behaviour this host's CPU cannot show.

Debian's ``qemu-user`` runs one process as an AVX2-only CPU (``qemu-x86_64 -cpu Haswell``: AVX2 +
FMA, no AVX-512, no VNNI); ``.ci/run`` installs it. Emulation is slow (about 100x): keep such
tests few and small, and mark them ``slow`` when they take more than a few seconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

AVX2_ONLY_CPU = "Haswell"


def qemu_binary() -> str | None:
    return shutil.which("qemu-x86_64") or shutil.which("qemu-x86_64-static")


needs_qemu = pytest.mark.skipif(qemu_binary() is None,
                                reason="qemu-x86_64 not installed (apt-get install qemu-user; .ci/run does)")


def run_as_cpu(code: str, cpu: str = AVX2_ONLY_CPU, timeout: float = 300,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``python -c code`` from the repository root under ``qemu-x86_64 -cpu CPU``."""
    qemu = qemu_binary()
    if qemu is None:
        pytest.skip("qemu-x86_64 not installed")
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([qemu, "-cpu", cpu, sys.executable, "-c", code], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
