"""Running TVM artifacts without TVM's compiler library: ``compiler.load`` of an llvm artifact in a
process where ``libtvm_compiler.so`` cannot load gives the interpreter's outputs."""

from __future__ import annotations

import json
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


# Runs the bundle as on a machine with only Python and numpy: any other top-level module that is
# neither in the standard library nor in the bundle is blocked (torch, onnx, the installed tvm, and
# what tvm_ffi needs besides: typing_extensions).
BLOCK_AND_RUN = """
import os, runpy, sys
bundle = os.path.dirname(os.path.abspath(sys.argv[1]))
class Block:
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top in sys.stdlib_module_names or top == "numpy" or top.startswith("_"):
            return None
        if os.path.exists(os.path.join(bundle, top)) or os.path.exists(os.path.join(bundle, top + ".py")):
            return None
        raise ImportError(f"blocked: {name}")
sys.meta_path.insert(0, Block())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.fixture(scope="module")
def llvm_bundle(tmp_path_factory):
    """A bundle for this Python from the installed packages, holding one llvm artifact."""
    from compiler.driver.bundle import build

    root = tmp_path_factory.mktemp("bundle")
    art, x, expected = _mlp_artifact(root)
    out = build(str(root / "rt"), artifacts=[str(art)], tarball=True)
    return out, x, expected


def _run_bundled(bundle: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TVM_USE_RUNTIME_LIB")}
    env["AOT_COMPILER_CACHE"] = str(cwd / "cache")
    return subprocess.run([sys.executable, "-s", "-c", BLOCK_AND_RUN, str(bundle / "run.py"), *args],
                          capture_output=True, text=True, env=env, cwd=cwd)


def test_bundle_runs_llvm_artifact_without_torch_or_compiler(llvm_bundle, tmp_path):
    bundle, x, expected = llvm_bundle
    assert not list(bundle.rglob("libtvm_compiler.so")) and not (bundle / "tvm" / "relax").exists()
    assert not (bundle / "backends" / "tvm" / "emit.py").exists()
    assert Path(f"{bundle}.tar.gz").is_file()
    np.save(tmp_path / "x.npy", x)
    done = _run_bundled(bundle, [str(bundle / "artifacts" / "mlp.aot"), "--input", str(tmp_path / "x.npy"),
                                 "-o", str(tmp_path / "y.npz")], tmp_path)
    assert done.returncode == 0, done.stderr
    got = np.load(tmp_path / "y.npz")
    np.testing.assert_allclose(got[got.files[0]], expected, rtol=1e-4, atol=1e-5)


def test_bundle_for_another_python_says_so_in_one_line(llvm_bundle, tmp_path):
    bundle, _x, _expected = llvm_bundle
    other = tmp_path / "other"
    shutil.copytree(bundle, other)
    info = json.loads((other / "bundle.json").read_text())
    info["python"] = "3.99"
    (other / "bundle.json").write_text(json.dumps(info))
    done = _run_bundled(other, [str(other / "artifacts" / "mlp.aot")], tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Python 3.99" in lines[0] and "--python" in lines[0], done.stderr


def test_runtime_modules_leave_out_the_compile_side():
    from compiler.driver.bundle import runtime_modules

    modules = runtime_modules(REPO)
    assert {"compiler.driver.runtime", "backends.tvm.runtime", "backends.onnx.runtime"} <= set(modules)
    assert not [m for m in modules if m.startswith(("compiler.frontend", "passes", "backends.tvm.emit"))]


@pytest.mark.slow
def test_bundle_for_python_312_from_the_wheels(tmp_path):
    from compiler.driver.bundle import build

    out = build(str(tmp_path / "rt312"), python="3.12", platform_tag="manylinux_2_28_x86_64")
    assert list((out / "tvm_ffi").glob("core.cpython-312-*.so"))
    assert (out / "tvm" / "lib" / "libtvm_runtime.so").is_file() and not (out / "tvm" / "relax").exists()
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    assert size < 40 * 2**20, size
