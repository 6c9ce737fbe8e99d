"""Tuning over TVM's RPC tracker with real components: a tracker and RPC servers on localhost
(``python -m tvm.exec.rpc_tracker`` / ``rpc_server``, started and always killed here), a short
search timed on them, the database re-applied without search, a server killed mid-run, and the
one-line errors for bad addresses, unreachable trackers, keys with no server and a database in use.
"""

from __future__ import annotations

import fcntl
import os
import signal
import threading
import time

import numpy as np
import pytest
import torch

tvm = pytest.importorskip("tvm")

import compiler
from backends.tvm import tune
from backends.tvm.rpc_cluster import LocalCluster, free_port
from compiler.driver.cli import main
from compiler.errors import CompileError


def _one_line_error(capsys, *args) -> str:
    code = main([str(a) for a in args])
    _, err = capsys.readouterr()
    lines = [line for line in err.strip().splitlines() if not line.startswith("[compile]")]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    return lines[0]


def test_tracker_address_that_does_not_parse(capsys, tmp_path):
    line = _one_line_error(capsys, "models/mlp.py:SeedMLP", "--target", "llvm", "--tune", "4", "--tuning-db",
                           tmp_path / "db", "--rpc-tracker", "nohost", "--rpc-key", "k", "-o", tmp_path / "m.aot")
    assert "--rpc-tracker 'nohost' is not HOST:PORT" in line


def test_unreachable_tracker_fails_before_any_work(capsys, tmp_path):
    """The model path does not exist: the tracker error coming first shows it came before any work."""
    port = free_port()
    line = _one_line_error(capsys, tmp_path / "missing.pt2", "--target", "llvm", "--tune", "4", "--tuning-db",
                           tmp_path / "db", "--rpc-tracker", f"127.0.0.1:{port}", "--rpc-key", "k",
                           "-o", tmp_path / "m.aot")
    assert f"cannot reach the RPC tracker at 127.0.0.1:{port}" in line
    assert not (tmp_path / "db").exists()


@pytest.mark.parametrize("values, message", [
    ({"rpc_key": "k"}, "--rpc-key needs --rpc-tracker"),
    ({"rpc_tracker": "127.0.0.1:1", "rpc_key": "k"}, "use it with --tune"),
    ({"tune": 4, "tuning_db": "db", "rpc_tracker": "127.0.0.1:1"}, "needs --rpc-key"),
    ({"tune": 4, "tuning_db": "db", "rpc_tracker": "127.0.0.1:1", "rpc_key": "k", "rpc_wait": 0},
     "--rpc-wait must be a positive"),
])
def test_rpc_options_go_together(values, message):
    with pytest.raises(CompileError, match=message):
        compiler.LlvmOptions(**values)


def test_database_in_use_by_another_run_is_one_line(tmp_path):
    db = tmp_path / "db"
    db.mkdir()
    with open(db / tune.LOCK_FILE, "a+") as other_run:  # another open file: flock conflicts as across processes
        fcntl.flock(other_run, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(CompileError, match="is in use by another tuning run"):
            with tune.database_lock(str(db), exclusive=True):
                pass
    with tune.database_lock(str(db), exclusive=True):  # released: free again
        pass


# -- with a tracker and servers -------------------------------------------------------------------
def _cluster(servers: int, key: str):
    pytest.importorskip("tornado")
    pytest.importorskip("xgboost")
    return LocalCluster(servers=servers, key=key)


@pytest.fixture
def two_servers():
    cluster = _cluster(2, "test-two")
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def one_server_to_kill():
    cluster = _cluster(2, "test-kill")
    cluster.start()
    yield cluster
    cluster.stop()


class _Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(32, 16)

    def forward(self, x):
        return torch.relu(self.fc(x))


def _model():
    torch.manual_seed(0)
    return _Linear().eval(), (torch.randn(8, 32),)


def _check_artifact(path, model, inputs):
    got = compiler.load(path).run([t.numpy() for t in inputs])[0]
    np.testing.assert_allclose(got, model(*inputs).detach().numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_tuning_on_two_servers_then_reapplied_without_search(two_servers, tmp_path, monkeypatch):
    model, inputs = _model()
    db = tmp_path / "db"
    tuned = compiler.compile(model, inputs, output=tmp_path / "tuned.aot",
                             target=compiler.LlvmOptions(cpu="host", tune=8, tuning_db=str(db),
                                                         rpc_tracker=two_servers.tracker, rpc_key="test-two"))
    assert tune.has_database(str(db))
    assert tuned.report.target_info["schedules"]["rpc_key"] == "test-two"
    _check_artifact(tuned.path, model, inputs)

    def no_search(*args, **kwargs):
        raise AssertionError("a build with only tuning_db must not search")

    monkeypatch.setattr(tune, "tune", no_search)
    again = compiler.compile(model, inputs, output=tmp_path / "again.aot",
                             target=compiler.LlvmOptions(cpu="host", tuning_db=str(db)))
    assert again.report.target_info["schedules"]["from_database"] >= 1
    _check_artifact(again.path, model, inputs)


def _when_busy(cluster, action) -> threading.Event:
    """Run ``action()`` once, from a watcher thread, as soon as the tracker shows one of the
    cluster's servers timing a candidate; the returned event is set once it has run."""
    done = threading.Event()
    total = len(cluster.servers)

    def watch():
        host, port = tune.parse_tracker(cluster.tracker)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            free = tune._summary_reader()(host, port, 5)["queue_info"].get(cluster.key, {}).get("free", total)
            if free < total:
                action()
                done.set()
                return
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()
    return done


@pytest.mark.slow
def test_a_server_killed_mid_run_costs_only_its_candidates(one_server_to_kill, tmp_path):
    cluster = one_server_to_kill
    killed = _when_busy(cluster, lambda: cluster.kill_server(0))
    model, inputs = _model()
    tuned = compiler.compile(model, inputs, output=tmp_path / "tuned.aot",
                             target=compiler.LlvmOptions(cpu="host", tune=8, tuning_db=str(tmp_path / "db"),
                                                         rpc_tracker=cluster.tracker, rpc_key="test-kill"))
    assert killed.is_set()
    assert tune.servers_under_key(*tune.parse_tracker(cluster.tracker), cluster.key) == 1
    _check_artifact(tuned.path, model, inputs)


@pytest.mark.slow
def test_a_server_that_hangs_mid_run_costs_only_its_candidates(one_server_to_kill, tmp_path):
    """A server stopped (SIGSTOP: alive, registered, answering nothing) while it times a
    candidate: that candidate fails after --rpc-timeout and the search finishes on the other."""
    cluster = one_server_to_kill
    hung = _when_busy(cluster, lambda: os.killpg(cluster.servers[0].pid, signal.SIGSTOP))
    model, inputs = _model()
    try:
        started = time.monotonic()
        tuned = compiler.compile(model, inputs, output=tmp_path / "tuned.aot",
                                 target=compiler.LlvmOptions(cpu="host", tune=8, tuning_db=str(tmp_path / "db"),
                                                             rpc_tracker=cluster.tracker, rpc_key="test-kill",
                                                             rpc_timeout=10))
        elapsed = time.monotonic() - started
    finally:
        if hung.is_set():
            os.killpg(cluster.servers[0].pid, signal.SIGCONT)
    assert hung.is_set()
    assert elapsed < 600
    _check_artifact(tuned.path, model, inputs)


@pytest.mark.slow
def test_no_server_left_stops_with_one_line(tmp_path):
    """One server, killed as soon as it times a candidate: the search stops with the one line, and
    what the database holds stays readable."""
    from backends.tvm import pipeline
    from tvm import relax

    cluster = _cluster(1, "test-last")
    with cluster:
        _when_busy(cluster, lambda: cluster.kill_server(0))
        w = np.random.default_rng(0).standard_normal((32, 16)).astype("float32")
        bb = relax.BlockBuilder()
        x = relax.Var("x", relax.TensorType((8, 32), "float32"))
        with bb.function("main", [x]):
            with bb.dataflow():
                out = bb.emit_output(relax.op.nn.relu(relax.op.matmul(x, relax.const(w))))
            bb.emit_func_output(out)
        target = tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu()})
        db = tmp_path / "db"
        with pytest.raises(CompileError, match=r"^no RPC server left under key test-last after \d+ of 8 trials; "
                                               "the database holds what was measured$"):
            pipeline.lower(bb.get(), target, {"tune": 8, "tuning_db": str(db), "progress": lambda line: None,
                                              "rpc_tracker": cluster.tracker, "rpc_key": "test-last"})
        pipeline.lower(bb.get(), target, {"tuning_db": str(db)})  # still readable


@pytest.mark.slow
def test_key_with_no_server_waits_then_one_line(tmp_path):
    cluster = _cluster(0, "test-empty")
    with cluster:
        rpc = tune.RpcTarget(*tune.parse_tracker(cluster.tracker), key="nobody", wait_s=1.0)
        start = time.monotonic()
        with pytest.raises(CompileError, match="no RPC server registered under key nobody .* after 1 s"):
            tune.wait_for_servers(rpc, lambda line: None)
        assert time.monotonic() - start < 30
