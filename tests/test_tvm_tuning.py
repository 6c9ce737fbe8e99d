"""MetaSchedule tuning through build(options): the database is written, then re-applied without
searching, and gives the same kernels and correct results.

Slow: MetaSchedule's task setup imports TVM's tensor-intrinsic library (~28 s of CPU) and the
builder/runner start worker processes, so even a 4-trial search takes about 45 s on 2 cores.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
pytest.importorskip("xgboost")

import tvm_ffi
from tvm import relax

from backends.tvm import pipeline, tune

pytestmark = pytest.mark.slow


def _tiny_module(w):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((8, 32), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.nn.relu(relax.op.matmul(x, relax.const(w))))
        bb.emit_func_output(out)
    return bb.get()


def _prim_funcs(mod) -> dict:
    return {gv.name_hint: f for gv, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}


def test_tune_writes_database_and_reapplies_it(tmp_path, monkeypatch):
    from tvm.target.codegen import llvm_get_system_cpu

    target = tvm.target.Target({"kind": "llvm", "mcpu": llvm_get_system_cpu()})
    rng = np.random.default_rng(0)
    w = rng.standard_normal((32, 16)).astype("float32")
    mod = _tiny_module(w)
    db = tmp_path / "db"
    lines: list[str] = []

    tuned = pipeline.lower(mod, target, {"tune": 4, "tuning_db": str(db), "progress": lines.append})
    assert tune.has_database(str(db))
    records = (db / "database_tuning_record.json").read_text().splitlines()
    assert records and all(json.loads(r) for r in records)
    assert any("task 1/1" in line and "trials" in line for line in lines), lines

    def no_search(*args, **kwargs):
        raise AssertionError("a build with only tuning_db must not search")

    monkeypatch.setattr(tune, "tune", no_search)
    reapplied = pipeline.lower(mod, target, {"tuning_db": str(db)})
    rules_only = pipeline.lower(mod, target, {})
    (name,) = _prim_funcs(tuned)
    assert tvm_ffi.structural_equal(_prim_funcs(tuned)[name], _prim_funcs(reapplied)[name])
    # The rules' schedule was measured and stored next to the searched ones; the database keeps
    # whichever ran faster, and the progress line says which.
    (verdict,) = [line for line in lines if "rules" in line and "keeps" in line]
    rules_won = "keeps the rules' schedule" in verdict
    assert tvm_ffi.structural_equal(_prim_funcs(reapplied)[name], _prim_funcs(rules_only)[name]) == rules_won

    x = rng.standard_normal((8, 32)).astype("float32")
    executable = pipeline.build(mod, target, {"tuning_db": str(db)})
    got = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(got, np.maximum(x @ w, 0), rtol=1e-4, atol=1e-4)


def test_tuning_leaves_the_pipelines_winograd_kernels_alone(tmp_path):
    """The Winograd kernels are scheduled by the pipeline: no search task for them, and applying
    the database (whose records could match their structure) keeps them as they were."""
    from tvm.target.codegen import llvm_get_system_cpu

    target = tvm.target.Target({"kind": "llvm", "mcpu": llvm_get_system_cpu()})
    w = np.random.default_rng(1).standard_normal((16, 16, 3, 3)).astype("float32")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 16, 8, 8), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.nn.relu(relax.op.nn.conv2d(x, relax.const(w), padding=(1, 1))))
        bb.emit_func_output(out)
    mod = bb.get()
    lines: list[str] = []
    stats: dict = {}
    tuned = pipeline.lower(mod, target, {"tune": 4, "tuning_db": str(tmp_path / "db"), "progress": lines.append,
                                         "stats": stats})
    winograd = {n: f for n, f in _prim_funcs(tuned).items() if "winograd" in n}
    assert len(winograd) == 3 and stats["by_pipeline"] == 3, (list(_prim_funcs(tuned)), stats)
    assert not any("winograd" in line for line in lines), lines
    untuned = _prim_funcs(pipeline.lower(mod, target, {}))
    assert all(tvm_ffi.structural_equal(f, untuned[n]) for n, f in winograd.items())
