"""``compiler.load``: runner registry, input checks, outputs, and running without torch.

The runner here is a fake target (numpy only) registered for the test, so these tests do not
depend on any backend.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest

from compiler.driver import runtime
from compiler.driver.artifact import write_artifact
from compiler.errors import ArtifactError, CompileError, InputError
from compiler.driver.runtime import LoadedModel, load, register_runner
from conftest import ROOT

FAKE_MODULE = "tests_fake_aot_runner"


def _fake_load_runner(manifest, payload, threads):
    """Output i is ``inputs[0] * (i + 2)`` in the output's dtype; records what it was given."""
    fake = sys.modules[FAKE_MODULE]
    fake.loads.append({"threads": threads, "payload": dict(payload), "target": manifest["target"]})
    n_out = len(manifest["outputs"]) + manifest.get("fake_extra_outputs", 0)
    dtypes = [o["dtype"] for o in manifest["outputs"]] + ["float32"] * manifest.get("fake_extra_outputs", 0)

    def run(inputs):
        fake.calls.append([(a.shape, a.dtype, a.flags.c_contiguous, isinstance(a, np.ndarray)) for a in inputs])
        return [(inputs[0] * (i + 2)).astype(dtypes[i]) for i in range(n_out)]

    return run


@pytest.fixture
def fake_target(monkeypatch):
    module = types.ModuleType(FAKE_MODULE)
    module.load_runner = _fake_load_runner
    module.loads, module.calls = [], []
    monkeypatch.setitem(sys.modules, FAKE_MODULE, module)
    monkeypatch.setattr(runtime, "_RUNNERS", dict(runtime._RUNNERS))  # registrations end with the test
    register_runner("fake", FAKE_MODULE)
    return module


def spec(name, dtype, shape):
    return {"name": name, "dtype": dtype, "shape": list(shape)}


def make(tmp_path, inputs, outputs, target="fake", name="m.aot", **extra):
    path = tmp_path / name
    write_artifact(path, {"target": target, "inputs": inputs, "outputs": outputs, **extra},
                   {"model.bin": b"weights"})
    return path


@pytest.fixture
def two_inputs(tmp_path, fake_target):
    """x: float32[batch, 4], mask: bool[batch] -> y: float32[batch, 4]."""
    return load(make(tmp_path, [spec("x", "float32", ["batch", 4]), spec("mask", "bool", ["batch"])],
                     [spec("y", "float32", ["batch", 4])]))


def test_runs_with_correct_inputs(tmp_path, fake_target):
    m = load(make(tmp_path, [spec("x", "float32", ["batch", 1000])], [spec("y", "float32", ["batch", 1000])]),
             threads=2)
    assert isinstance(m, LoadedModel)
    assert fake_target.loads == [{"threads": 2, "payload": {"model.bin": b"weights"}, "target": "fake"}]
    x = np.arange(3000, dtype=np.float32).reshape(3, 1000)
    y = m(x)
    assert isinstance(y, np.ndarray)
    np.testing.assert_array_equal(y, x * 2)
    assert m.run([x])[0].shape == (3, 1000) and isinstance(m.run([x]), list)
    assert m.target == "fake" and m.input_names == ("x",) and m.output_names == ("y",)
    assert m.manifest["format"] == "aot-artifact" and m.path.endswith("m.aot") and m.threads == 2


def test_threads_default_is_none_and_bad_values_rejected(tmp_path, fake_target):
    path = make(tmp_path, [spec("x", "float32", [2])], [spec("y", "float32", [2])])
    load(path)
    assert fake_target.loads[-1]["threads"] is None
    for bad in (0, -1, 1.5, "2", True):
        with pytest.raises(InputError, match="threads must be a positive integer"):
            load(path, threads=bad)


def test_repr_and_signature(two_inputs):
    assert two_inputs.signature() == "(x: float32[batch, 4], mask: bool[batch]) -> y: float32[batch, 4]"
    r = repr(two_inputs)
    assert "target='fake'" in r and "x: float32[batch, 4]" in r and "m.aot" in r


def test_wrong_number_of_inputs(two_inputs):
    x = np.zeros((2, 4), np.float32)
    with pytest.raises(InputError, match=r"^expected 2 inputs \(x, mask\), got 1$"):
        two_inputs(x)
    with pytest.raises(InputError, match=r"expected 2 inputs \(x, mask\), got 3"):
        two_inputs.run([x, np.zeros(2, bool), x])


def test_one_input_count_message(tmp_path, fake_target):
    m = load(make(tmp_path, [spec("x", "float32", [2])], [spec("y", "float32", [2])]))
    with pytest.raises(InputError, match=r"expected 1 input \(x\), got 0"):
        m()
    with pytest.raises(InputError, match=r"run\(\[x\]\)"):
        m.run(np.zeros(2, np.float32))  # an array, not a list of arrays


def test_wrong_dtype_is_not_cast(two_inputs, fake_target):
    with pytest.raises(InputError, match="input 'x' has dtype float64, expected float32"):
        two_inputs(np.zeros((2, 4)), np.zeros(2, bool))
    with pytest.raises(InputError, match="input 'mask' has dtype int64, expected bool"):
        two_inputs(np.zeros((2, 4), np.float32), np.zeros(2, np.int64))
    with pytest.raises(InputError, match="input 'x' has dtype float64"):
        two_inputs([[1.0] * 4] * 2, [True, False])  # lists go through np.asarray: float64
    assert fake_target.calls == []


def test_non_native_byte_order_accepted(tmp_path, fake_target):
    m = load(make(tmp_path, [spec("x", "float32", [3])], [spec("y", "float32", [3])]))
    x = np.array([1, 2, 3], dtype=">f4")
    np.testing.assert_array_equal(m(x), [2, 4, 6])


def test_wrong_rank_or_static_dim(tmp_path, fake_target):
    m = load(make(tmp_path, [spec("x", "float32", ["batch", 1000])], [spec("y", "float32", ["batch", 1000])]))
    with pytest.raises(InputError, match=r"^input 'x' has shape \(1, 999\), expected \(batch, 1000\)$"):
        m(np.zeros((1, 999), np.float32))
    with pytest.raises(InputError, match=r"input 'x' has shape \(1000,\), expected \(batch, 1000\)"):
        m(np.zeros(1000, np.float32))
    with pytest.raises(InputError, match=r"input 'x' has shape \(1, 1, 1000\)"):
        m(np.zeros((1, 1, 1000), np.float32))


def test_inconsistent_symbolic_dims(two_inputs):
    with pytest.raises(InputError, match=r"^input 'mask' dim 0 is 3 but 'batch' is 2 from input 'x'$"):
        two_inputs(np.zeros((2, 4), np.float32), np.zeros(3, bool))


def test_symbol_repeated_within_one_input(tmp_path, fake_target):
    m = load(make(tmp_path, [spec("a", "float32", ["n", "n"])], [spec("y", "float32", ["n", "n"])]))
    assert m(np.eye(3, dtype=np.float32)).shape == (3, 3)
    with pytest.raises(InputError, match="input 'a' dim 1 is 4 but 'n' is 3 from input 'a'"):
        m(np.zeros((3, 4), np.float32))


def test_expression_dims_checked_after_symbols(tmp_path, fake_target):
    m = load(make(tmp_path, [spec("x", "float32", ["seq*2", 4]), spec("t", "int64", ["seq"])],
                  [spec("y", "float32", ["seq*2", 4])]))
    m(np.zeros((6, 4), np.float32), np.zeros(3, np.int64))
    with pytest.raises(InputError, match=r"input 'x' dim 0 is 5 but seq\*2 is 6"):
        m(np.zeros((5, 4), np.float32), np.zeros(3, np.int64))


def test_dynamic_dim_accepts_several_batch_sizes(two_inputs, fake_target):
    for batch in (1, 2, 7, 0):
        x = np.full((batch, 4), 1.5, np.float32)
        y = two_inputs(x, np.ones(batch, bool))
        assert y.shape == (batch, 4)
        np.testing.assert_array_equal(y, x * 2)
    assert [c[0][0] for c in fake_target.calls] == [(1, 4), (2, 4), (7, 4), (0, 4)]


def test_inputs_made_contiguous(two_inputs, fake_target):
    x = np.arange(32, dtype=np.float32).reshape(4, 8)[:, ::2]  # (4, 4), not contiguous
    assert not x.flags.c_contiguous
    y = two_inputs(x, np.ones(4, bool))
    np.testing.assert_array_equal(y, x * 2)
    assert all(contiguous and is_array for _, _, contiguous, is_array in fake_target.calls[-1])


def test_scalar_input(tmp_path, fake_target):
    m = load(make(tmp_path, [spec("s", "float32", [])], [spec("y", "float32", [])]))
    y = m(np.float32(3))
    assert y.shape == () and y == 6
    assert fake_target.calls[-1][0][0] == ()


def test_inputs_by_name(two_inputs):
    y = two_inputs.run({"mask": np.ones(2, bool), "x": np.ones((2, 4), np.float32)})
    np.testing.assert_array_equal(y[0], np.full((2, 4), 2, np.float32))
    with pytest.raises(InputError, match="missing 'mask'"):
        two_inputs.run({"x": np.ones((2, 4), np.float32)})


def test_one_vs_several_outputs(tmp_path, fake_target):
    ins = [spec("x", "int64", ["batch"])]
    one = load(make(tmp_path, ins, [spec("y", "int64", ["batch"])], name="one.aot"))
    two = load(make(tmp_path, ins, [spec("y", "int64", ["batch"]), spec("z", "float32", ["batch"])], name="two.aot"))
    x = np.array([1, 2, 3])
    assert isinstance(one(x), np.ndarray)
    out = two(x)
    assert isinstance(out, tuple) and len(out) == 2
    np.testing.assert_array_equal(out[0], x * 2)
    assert out[1].dtype == np.float32 and out[1].tolist() == [3, 6, 9]
    assert isinstance(two.run([x]), list) and len(two.run([x])) == 2
    assert two.signature().endswith("-> (y: int64[batch], z: float32[batch])")


def test_runner_output_count_checked(tmp_path, fake_target):
    m = load(make(tmp_path, [spec("x", "float32", [2])], [spec("y", "float32", [2])], fake_extra_outputs=1))
    with pytest.raises(ArtifactError, match="returned 2 outputs, the manifest lists 1"):
        m(np.zeros(2, np.float32))


def test_unknown_target(tmp_path, fake_target):
    path = make(tmp_path, [spec("x", "float32", [2])], [spec("y", "float32", [2])], target="quantum")
    with pytest.raises(ArtifactError, match=r"target 'quantum'.*known targets: (.*, )?fake, (.*, )?onnx"):
        load(path)


def test_runner_module_that_cannot_be_imported(tmp_path, fake_target):
    register_runner("llvm", "tests_no_such_module_for_llvm")
    path = make(tmp_path, [spec("x", "float32", [2])], [spec("y", "float32", [2])], target="llvm")
    with pytest.raises(ArtifactError, match="runtime for target 'llvm'.*cannot be imported"):
        load(path)


def test_runner_whose_dependency_is_missing(tmp_path, fake_target, monkeypatch):
    (tmp_path / "tests_runner_needing_pkg.py").write_text("import tests_not_installed_pkg\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    register_runner("cuda", "tests_runner_needing_pkg")
    path = make(tmp_path, [spec("x", "float32", [2])], [spec("y", "float32", [2])], target="cuda")
    with pytest.raises(ArtifactError, match="needs the Python package 'tests_not_installed_pkg'.*pip install"):
        load(path)


def test_load_checks_integrity_first(tmp_path, fake_target):
    with pytest.raises(ArtifactError, match="artifact not found"):
        load(tmp_path / "missing.aot")
    bad = tmp_path / "bad.aot"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ArtifactError, match="truncated or corrupt"):
        load(bad)
    assert fake_target.loads == []


def test_malformed_manifest_signature(tmp_path, fake_target):
    path = make(tmp_path, [{"name": "x", "dtype": "float32"}], [])
    with pytest.raises(ArtifactError, match=r"malformed manifest: inputs\[0\]"):
        load(path)


def test_input_errors_are_one_line_compile_errors(two_inputs):
    with pytest.raises(CompileError) as info:
        two_inputs(np.zeros((2, 5), np.float32), np.zeros(2, bool))
    assert "\n" not in str(info.value) and "'x'" in str(info.value)


RUNNER_FILE = '''
import numpy as np

def load_runner(manifest, payload, threads):
    scale = float(payload["model.bin"].decode())
    return lambda inputs: [inputs[0] * np.float32(scale)]
'''

NO_TORCH_SCRIPT = '''
import sys

class BlockTorch:
    """Makes ``import torch`` fail, as on a machine where torch is not installed."""
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"No module named {name!r} (blocked by the test)", name=name)
        return None

sys.meta_path.insert(0, BlockTorch())
sys.path[:0] = [ROOT, TMP]
try:
    import torch  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("torch was importable")

import numpy as np
from compiler.driver.runtime import load, register_runner
import compiler

register_runner("fake", "notorch_fake_runner")
m = compiler.load(ART, threads=1)
y = m(np.arange(6, dtype=np.float32).reshape(2, 3))
assert y.tolist() == [[0, 3, 6], [9, 12, 15]], y
heavy = [name for name in ("torch", "onnx", "onnxruntime") if name in sys.modules]
assert not heavy, heavy
print("OK", m.signature())
'''


def test_loads_and_runs_without_torch(tmp_path):
    (tmp_path / "notorch_fake_runner.py").write_text(RUNNER_FILE)
    art = tmp_path / "m.aot"
    write_artifact(art, {"target": "fake", "inputs": [spec("x", "float32", ["batch", 3])],
                         "outputs": [spec("y", "float32", ["batch", 3])]}, {"model.bin": b"3"})
    script = (f"ROOT, TMP, ART = {str(ROOT)!r}, {str(tmp_path)!r}, {str(art)!r}\n"
              + textwrap.dedent(NO_TORCH_SCRIPT))
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert proc.stdout.strip() == "OK (x: float32[batch, 3]) -> y: float32[batch, 3]"
