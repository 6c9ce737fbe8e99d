"""Running TVM artifacts without TVM's compiler library: ``compiler.load`` of an llvm artifact in a
process where ``libtvm_compiler.so`` cannot load gives the interpreter's outputs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]

tvm = pytest.importorskip("tvm")

# What a runtime-only TVM leaves out: the compiler library and the sources/headers it builds from.
_COMPILER_PARTS = shutil.ignore_patterns("libtvm_compiler.so", "3rdparty", "src", "include", "__pycache__")


def _tvm_without_compiler(root: Path) -> Path:
    """A copy of the installed tvm package without libtvm_compiler.so, in ``root``."""
    shutil.copytree(Path(tvm.__file__).parent, root / "tvm", ignore=_COMPILER_PARTS)
    assert not list((root / "tvm").rglob("libtvm_compiler.so"))
    return root


def _mlp_artifact(tmp_path: Path):
    from compiler.driver.api import compile as compile_model
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).eval()
    x = torch.randn(2, 8)
    path = tmp_path / "mlp.aot"
    compile_model(model, (x,), target="llvm", output=str(path))
    with torch.no_grad():
        expected = model(x).numpy()
    return path, x.numpy(), expected


RUN_WITHOUT_COMPILER = """
import sys
import numpy as np
import compiler, tvm
model = compiler.load(sys.argv[1])
out = model(np.load(sys.argv[2]))
assert tvm.base._RUNTIME_ONLY, "tvm loaded its compiler library"
assert "tvm_compiler" not in tvm.base._LOADED_LIBS
assert "tvm.relax" not in sys.modules, "tvm.relax was imported"
np.save(sys.argv[3], out)
"""


def test_llvm_artifact_runs_without_the_compiler_library(tmp_path):
    art, x, expected = _mlp_artifact(tmp_path)
    runtime_only = _tvm_without_compiler(tmp_path / "site")
    np.save(tmp_path / "x.npy", x)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(runtime_only), str(REPO)]),
           "AOT_COMPILER_CACHE": str(tmp_path / "cache")}
    env.pop("TVM_USE_RUNTIME_LIB", None)
    subprocess.run([sys.executable, "-c", RUN_WITHOUT_COMPILER, str(art), str(tmp_path / "x.npy"),
                    str(tmp_path / "y.npy")], check=True, env=env, cwd=tmp_path)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-4, atol=1e-5)
