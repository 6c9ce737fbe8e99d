"""TVM backend (target llvm): differential tests against the reference interpreter (the spec).

The shared op matrix (``tests/op_cases.py``) runs through ``to_relax`` + ``pipeline.build`` +
the Relax VM; zoo models compile end to end with ``compiler.compile(target="llvm")`` (which
verifies against PyTorch); a dynamic-batch artifact runs at two batch sizes; the library cache
is reused on a second load. TVM's CPU kernels are slow without schedules: inputs stay small.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from op_cases import CASES, LOOSE, In, assert_outputs_match, rand, single_op

from backends.tvm import emit as tvm_emit
from backends.tvm import lower
from backends.tvm import runtime as tvm_runtime
from compiler.errors import UnsupportedOpError
from compiler.interpreter import run_graph
from compiler.ir import DType, Graph, TensorType


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AOT_COMPILER_CACHE", str(tmp_path / "cache"))


def run_tvm(graph: Graph, inputs: list[np.ndarray], target: str = "llvm") -> list[np.ndarray]:
    payload, info = tvm_emit.emit_target(graph, {"target": target})
    manifest = {"target": target, "target_info": info, "inputs": [v.name for v in graph.inputs]}
    return tvm_runtime.load_runner(manifest, payload, threads=1)(inputs)


def check(graph: Graph, inputs: list[np.ndarray], tol):
    expected = run_graph(graph, inputs)
    assert_outputs_match(expected, run_tvm(graph, inputs), tol)


@pytest.mark.parametrize("op, build, tol", CASES)
def test_op_matches_interpreter(op, build, tol):
    graph, inputs = build(np.random.default_rng(20240611))
    check(graph, inputs, tol)


def _quant_cases():
    from test_quant_ops import (
        QUANT_CASES,  # the quantization ops' cases of the ONNX matrix
    )

    return QUANT_CASES


@pytest.mark.parametrize("op, build", _quant_cases())
def test_quant_op_matches_interpreter(op, build):
    graph, inputs = build(np.random.default_rng(20240611))
    check(graph, inputs, (1e-6, 1e-6))


def test_every_onnx_op_has_an_emitter():
    from backends.onnx.emit import supported_ops as onnx_ops

    missing = sorted(onnx_ops() - lower.supported_ops())
    assert not missing, f"ops the ONNX backend emits but TVM does not: {missing}"


def test_op_without_emitter_names_op_and_location(monkeypatch):
    graph, _ = single_op("relu", In("float32", (2, 3)))(np.random.default_rng(0))
    graph.nodes[0].location = "model.py:12"
    monkeypatch.delitem(lower.EMITTERS, "relu")
    with pytest.raises(UnsupportedOpError, match=r"relu at model.py:12"):
        lower.to_relax(graph)


def _dynamic_graph() -> Graph:
    rng = np.random.default_rng(1)
    g = Graph("dyn")
    x = g.add_input("x", TensorType(DType.float32, ("batch", 6)))
    w = g.add_constant(rng.standard_normal((5, 6)).astype(np.float32), "w")
    h = g.op("linear", x, w, None, activation="relu")
    y = g.op("reshape", h, shape=("batch", 5, 1))
    g.set_outputs([g.op("softmax", y, axis=1)])
    return g


def test_dynamic_batch_one_artifact_two_batches():
    g = _dynamic_graph()
    payload, info = tvm_emit.emit_target(g, {"target": "llvm"})
    run = tvm_runtime.load_runner({"target_info": info, "inputs": ["x"]}, payload, threads=1)
    rng = np.random.default_rng(2)
    for batch in (1, 7):
        x = rand(rng, "float32", (batch, 6))
        assert_outputs_match(run_graph(g, [x]), run([x]), LOOSE)


def test_out_of_range_token_ids_are_clamped_not_a_crash():
    # TVM's "fast" take reads out of bounds (a segfault on a bad token id); ours clamps.
    g = Graph("embed")
    ids = g.add_input("ids", TensorType(DType.int64, (1, 3)))
    table = np.arange(20, dtype=np.float32).reshape(5, 4)
    g.set_outputs([g.op("gather", g.add_constant(table, "table"), ids, axis=0)])
    (got,) = run_tvm(g, [np.array([[1, 7, 100]], dtype=np.int64)])
    np.testing.assert_array_equal(got[0], table[[1, 4, 4]])


def test_outputs_are_fresh_arrays_not_views_of_model_memory():
    # The runner hands outputs over through DLPack; a constant or pass-through output must still
    # come back as the caller's own copy, or writing to it would corrupt the next call.
    g = Graph("passthrough")
    x = g.add_input("x", TensorType(DType.float32, (2, 3)))
    g.set_outputs([x, g.add_constant(np.ones((2, 3), np.float32), "ones")])
    payload, info = tvm_emit.emit_target(g, {"target": "llvm"})
    run = tvm_runtime.load_runner({"target_info": info, "inputs": ["x"]}, payload, threads=1)
    first = run([np.zeros((2, 3), np.float32)])
    first[0][...] = 5
    first[1][...] = 7
    second = run([np.full((2, 3), 2, np.float32)])
    np.testing.assert_array_equal(second[0], np.full((2, 3), 2, np.float32))
    np.testing.assert_array_equal(second[1], np.ones((2, 3), np.float32))
    np.testing.assert_array_equal(first[0], np.full((2, 3), 5, np.float32))


def test_target_records_host_cpu_and_cpu_option():
    g = _dynamic_graph()
    _, info = tvm_emit.emit_target(g, {"target": "llvm", "cpu": "host"})
    assert info["tvm_target"] == {"kind": "llvm", "mcpu": str(tvm.target.codegen.llvm_get_system_cpu())}
    assert info["tvm_version"] == tvm.__version__
    _, info = tvm_emit.emit_target(g, {"target": "llvm", "cpu": "x86-64"})
    assert info["tvm_target"]["mcpu"] == "x86-64"


def test_library_cache_is_reused(tmp_path):
    g = _dynamic_graph()
    payload, info = tvm_emit.emit_target(g, {"target": "llvm"})
    manifest = {"target_info": info, "inputs": ["x"]}
    first = tvm_runtime.load_runner(manifest, payload, threads=1)
    stat1 = os.stat(first.library_path)
    second = tvm_runtime.load_runner(manifest, payload, threads=2)
    stat2 = os.stat(second.library_path)
    assert first.library_path == second.library_path
    assert str(first.library_path).startswith(str(tmp_path / "cache" / "tvm"))
    assert (stat1.st_ino, stat1.st_mtime_ns) == (stat2.st_ino, stat2.st_mtime_ns)
    assert [p.name for p in (tmp_path / "cache" / "tvm").iterdir()] == [first.library_path.name]  # no temp files


def test_threads_sets_tvm_pool():
    tvm_runtime.set_threads(1)
    assert tvm.runtime.num_threads() == 1


def test_all_cores_cap_respects_the_users_setting(monkeypatch):
    monkeypatch.delenv("TVM_NUM_THREADS", raising=False)
    tvm_runtime.allow_all_cores()
    assert os.environ["TVM_NUM_THREADS"] == str(tvm_runtime.usable_cores())
    monkeypatch.setenv("TVM_NUM_THREADS", "3")
    tvm_runtime.allow_all_cores()
    assert os.environ["TVM_NUM_THREADS"] == "3"


def test_load_imports_no_tvm_for_onnx():
    import subprocess
    import sys

    code = ("import sys, compiler.driver.runtime, backends.onnx.runtime; "
            "assert 'tvm' not in sys.modules, 'tvm imported'")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": "."})


# -- zoo ----------------------------------------------------------------------------------------
def _zoo_names():
    from models import ZOO

    return sorted(ZOO)


@pytest.mark.parametrize("name", _zoo_names())
def test_zoo_model_compiles_and_verifies_on_llvm(name, tmp_path):
    import torch

    import compiler
    from models import ZOO

    model = ZOO[name].factory().eval()
    art = compiler.compile(model, model.example_inputs(), target="llvm", output=tmp_path / f"{name}.aot")
    assert art.report.verification.passed, art.report.verification.summary()
    inputs = model.example_inputs(1)
    with torch.no_grad():
        want = model(*inputs).numpy()
    got = compiler.load(art.path, threads=1)(*[t.numpy() for t in inputs])
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
    assert art.manifest["target_info"]["tvm_target"]["kind"] == "llvm"


def test_zoo_dynamic_batch_runs_two_batch_sizes(tmp_path):
    import torch

    import compiler
    from models import ZOO

    model = ZOO["lenet"].factory().eval()
    art = compiler.compile(model, model.example_inputs(), target="llvm", output=tmp_path / "lenet.aot",
                           dynamic_batch=True)
    loaded = compiler.load(art.path, threads=1)
    for batch in (1, 5):
        inputs = model.example_inputs(batch)
        with torch.no_grad():
            want = model(*inputs).numpy()
        np.testing.assert_allclose(loaded(*[t.numpy() for t in inputs]), want, rtol=1e-3, atol=1e-4)


def test_kernels_no_rule_covers_still_compile_and_are_named_in_the_report(tmp_path):
    """A kernel none of the search-free rules takes (here the 3-wide sum after topk) runs on TVM's
    default lowering; the manifest and the report name it."""
    import torch

    import compiler

    class OddKernels(torch.nn.Module):
        def forward(self, x):
            return torch.cumsum(x, 1) + torch.topk(x, 3, dim=1).values.sum(1, keepdim=True)

    model = OddKernels()
    x = torch.randn(4, 37)
    from backends.options import LlvmOptions

    art = compiler.compile(model, (x,), target=LlvmOptions(cpu="host"), output=tmp_path / "m.aot")
    fallen = art.manifest["target_info"]["schedules"]["unscheduled"]
    assert fallen and all(isinstance(name, str) for name in fallen)
    assert "fell back:" in art.report.format() and fallen[0] in art.report.format()
    np.testing.assert_allclose(art.load()(x.numpy()), model(x).numpy(), rtol=1e-5, atol=1e-5)
