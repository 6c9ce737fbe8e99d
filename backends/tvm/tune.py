"""MetaSchedule tuning for the CPU pipeline, and re-applying a saved tuning database.

``tune_or_apply(mod, target, options)`` takes the module after ``pipeline.prepare_module`` (the
fused PrimFuncs are the tuning tasks, and the database is keyed on their exact structure, so the
same preparation must run before tuning and before applying). With ``options["tune"] = N`` it
searches with a budget of N trials (both the global and the per-task limit), prints one line per
task and search round through ``options["progress"]`` (or stderr) and stores a JSON database in
``options["tuning_db"]``; with only ``tuning_db`` it applies the database without searching.
Functions the database lacks stay unscheduled here and get the search-free rules afterwards.

With ``options["rpc_tracker"]`` (``HOST:PORT``) and ``options["rpc_key"]``, candidates are still built
here in parallel but timed on every RPC server registered at that tracker under the key, through
MetaSchedule's RPC runner; the database has the same format either way. A server that dies or
hangs costs only its in-flight candidates (failed, with the reason in ``<tuning_db>/logs``); with
no server left the search stops with a one-line error and the database keeps what was measured.
While a search writes the database, a lock file in its directory keeps other runs out.

Two things this TVM wheel needs (measured, see the project's TVM notes): the stock builder fails
every candidate because tuning tasks are private PrimFuncs without a ``global_symbol``, so our
builder attaches one; and it must not import ``tvm.s_tir.tensor_intrin`` (about 28 s of CPU,
beyond the builder's timeout), which the stock builder does.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from compiler.errors import CompileError

from .runtime import allow_all_cores, usable_cores

DATABASE_FILES = ("database_workload.json", "database_tuning_record.json")
LOCK_FILE = ".lock"
DEFAULT_RPC_WAIT_S = 45.0  # how long a search waits for a first server under its key
DEFAULT_RPC_TIMEOUT_S = 30.0  # how long one candidate may take on a server before it counts as failed


@dataclass(frozen=True)
class RpcTarget:
    """Where candidates are timed: the servers registered at ``host:port`` under ``key``."""

    host: str
    port: int
    key: str
    wait_s: float = DEFAULT_RPC_WAIT_S
    timeout_s: float = DEFAULT_RPC_TIMEOUT_S

    @property
    def tracker(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> RpcTarget | None:
        if not options.get("rpc_tracker"):
            return None
        host, port = parse_tracker(options["rpc_tracker"])
        if not options.get("rpc_key"):
            raise CompileError("--rpc-tracker needs --rpc-key KEY: the key the RPC servers registered with")
        return cls(host, port, str(options["rpc_key"]),
                   float(options.get("rpc_wait") or DEFAULT_RPC_WAIT_S),
                   float(options.get("rpc_timeout") or DEFAULT_RPC_TIMEOUT_S))


def tune_or_apply(mod, target, options: dict[str, Any]):
    """Tune (when ``options["tune"]``) and then apply the database in ``options["tuning_db"]``."""
    budget = options.get("tune")
    db_dir = options.get("tuning_db")
    if budget and not db_dir:
        raise CompileError("tuning needs a database directory: pass tuning_db (--tuning-db DIR) with tune")
    if budget is not None and (not isinstance(budget, int) or budget < 1):
        raise CompileError(f"tune must be a positive number of trials, got {budget!r}")
    db_dir = os.fspath(db_dir)
    rpc = RpcTarget.from_options(options)
    if budget:
        seconds = tune(mod, target, budget, db_dir, options.get("progress"), rpc)
        if isinstance(options.get("stats"), dict):
            options["stats"].update(tuning_s=round(seconds, 1), trials=budget)
            if rpc is not None:
                options["stats"].update(rpc_tracker=rpc.tracker, rpc_key=rpc.key)
    elif not has_database(db_dir):
        raise CompileError(f"no tuning database in {db_dir} (expected {' and '.join(DATABASE_FILES)}); "
                           "run once with tune=N to create it")
    with database_lock(db_dir, exclusive=False):
        return apply_database(mod, target, db_dir)


@contextlib.contextmanager
def database_lock(db_dir: str, exclusive: bool):
    """Hold ``<db_dir>/.lock``: exclusively while a search writes the database, shared while a
    build reads it. Another run holding it is a one-line error, not a wait: a search can take
    hours. (An advisory ``flock``: it protects runs of this compiler, on one machine or on a
    file system that supports flock across machines.)"""
    if not os.path.isdir(db_dir):  # nothing to read yet; the caller says what is missing
        yield
        return
    path = os.path.join(db_dir, LOCK_FILE)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CompileError(f"the tuning database {db_dir} is in use by another tuning run (it holds {path}); "
                               "wait for it to finish or pass another --tuning-db") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def has_database(db_dir: str) -> bool:
    return all(os.path.isfile(os.path.join(db_dir, name)) for name in DATABASE_FILES)


def apply_database(mod, target, db_dir: str):
    """Replace every PrimFunc the database has a record for with its best schedule (marked
    scheduled, so the search-free rules leave it alone); functions the pipeline already scheduled
    keep their schedule."""
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    try:
        database = ms.database.JSONDatabase(work_dir=db_dir)
    except Exception as exc:  # noqa: BLE001 - TVM's own error types; its message is often empty
        raise CompileError(f"the tuning database in {db_dir} cannot be read ({type(exc).__name__}); delete it "
                           "and tune again") from None
    from .schedules import is_scheduled

    prescheduled = {gv: f for gv, f in mod.functions_items() if is_scheduled(f)}
    with tuning_target(target), database:
        mod = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
    for gv, func in prescheduled.items():  # a record of a same-shaped function must not replace them
        mod[gv] = func
    return mod


def tune(mod, target, budget: int, db_dir: str, progress=None, rpc: RpcTarget | None = None) -> float:
    """Search schedules for every PrimFunc of ``mod``; returns the tuning time in seconds.
    ``rpc``: time the candidates on the RPC servers it names instead of in local processes."""
    say = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    servers = wait_for_servers(rpc, say) if rpc is not None else 0
    os.makedirs(db_dir, exist_ok=True)
    with database_lock(db_dir, exclusive=True):
        return _search(mod, target, budget, db_dir, say, rpc, servers)


def _search(mod, target, budget: int, db_dir: str, say, rpc: RpcTarget | None, servers: int) -> float:
    from tvm.s_tir import meta_schedule as ms

    from .schedules import is_scheduled

    start = time.perf_counter()
    target = tuning_target(target)
    # Functions the pipeline scheduled itself (Winograd kernels) are not searched: MetaSchedule
    # only skips a task whose module is marked, not one whose function is.
    extracted = [t for t in ms.relax_integration.extract_tasks(mod, target) if not is_scheduled(_task_func(t))]
    with _meta_schedule_logging():
        contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
            extracted, work_dir=db_dir, num_threads=usable_cores(), seed=0)
    if not contexts:
        say("[tune] nothing to tune")
        return 0.0
    where = f"on {servers} RPC server(s) under key {rpc.key} at {rpc.tracker}" if rpc else "here"
    say(f"[tune] {len(contexts)} tasks, {budget} trials timed {where}, database {db_dir}")
    progress = _progress_callback([c.task_name for c in contexts], say, rpc)
    callbacks = [*ms.measure_callback.MeasureCallback.create("default"), progress]
    # Built here either way; for RPC as a shared library, which the server loads without a
    # compiler (MetaSchedule's default export is a .tar the server would have to link).
    builder = ms.builder.LocalBuilder(f_build=_make_f_build(), f_export=_make_f_export() if rpc else None,
                                      max_workers=usable_cores())
    runner = _rpc_runner(rpc, servers) if rpc else _local_runner()
    database = ms.database.JSONDatabase(work_dir=db_dir)
    try:
        ms.tune.tune_tasks(
            tasks=contexts, task_weights=weights, work_dir=db_dir,
            max_trials_global=budget, max_trials_per_task=budget, num_trials_per_iter=min(64, budget),
            builder=builder, runner=runner, database=database, measure_callbacks=callbacks)
    except Exception as exc:  # noqa: BLE001 - the callback's stop comes back wrapped in TVM's error type
        if not progress.no_server_left:
            raise
        raise CompileError(f"no RPC server left under key {rpc.key} after {progress.measured} of {budget} trials; "
                           f"the database holds what was measured") from exc
    _record_rule_schedules(extracted, target, database, builder, runner, say)
    elapsed = time.perf_counter() - start
    say(f"[tune] done in {elapsed:.1f} s")
    return elapsed


def _local_runner():
    from tvm.s_tir import meta_schedule as ms

    # The runner's worker processes inherit TVM_NUM_THREADS: without it every parallel candidate
    # was timed on one thread (of two) while the artifact runs on all cores.
    allow_all_cores()
    return ms.runner.LocalRunner()


def _rpc_runner(rpc: RpcTarget, servers: int):
    """MetaSchedule's RPC runner with one connection per server, each candidate bounded in time.

    The stock runner's worker pool has no time limit, so a hung server (alive to the tracker,
    never answering) would block its worker forever: here a candidate that takes longer than
    ``rpc.timeout_s`` is killed and recorded as failed ("RPCRunner: Timeout"), and the tracker
    never hands that server out again (it has not come back as free). Sessions are created by
    ``_make_create_session``, which fails at once when no server is left instead of queueing
    at the tracker forever."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.support.popen_pool import PopenPoolExecutor

    config = ms.runner.RPCConfig(tracker_host=rpc.host, tracker_port=rpc.port, tracker_key=rpc.key,
                                 session_timeout_sec=int(max(1, rpc.timeout_s)))
    runner = ms.runner.RPCRunner(config, max_workers=servers, f_create_session=_make_create_session(rpc))
    unbounded = runner.pool
    runner._inst.pool = PopenPoolExecutor(max_workers=servers, timeout=rpc.timeout_s + 5)
    unbounded.shutdown(wait=False)
    return runner


def _make_create_session(rpc: RpcTarget):
    """The RPC runner's session factory (sent by value to its worker processes, which need not
    import this project): asks the tracker first whether any server is still registered under
    the key, then for one of them. Without the first question a candidate would wait at the
    tracker for a server that never comes."""
    host, port, key, timeout = rpc.host, rpc.port, rpc.key, rpc.timeout_s
    read_summary = _summary_reader()

    def create_session(_config):
        from tvm import rpc as tvm_rpc

        registered = [s for s in read_summary(host, port, timeout)["server_info"]
                      if s.get("key") == "server:" + key]
        if not registered:
            raise RuntimeError(f"no RPC server left under key {key}")
        return tvm_rpc.connect_tracker(host, port).request(key, priority=1, session_timeout=timeout, max_retry=1)

    return create_session


def _summary_reader():
    """A function ``(host, port, timeout) -> the tracker's summary dict``, over TVM's tracker
    protocol with a socket timeout (TVM's own client retries a refused connection for a minute).
    Made by a factory so that it travels by value into the runner's worker processes."""

    def read_summary(host: str, port: int, timeout: float) -> dict:
        import json
        import socket
        import struct

        magic, summary_code, success = 0x2F271, 6, 0  # tvm.rpc.base: RPC_TRACKER_MAGIC, TrackerCode

        def receive(sock, size):
            data = b""
            while len(data) < size:
                chunk = sock.recv(size - len(data))
                if not chunk:
                    raise ConnectionError("the tracker closed the connection")
                data += chunk
            return data

        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(struct.pack("<i", magic))
            if struct.unpack("<i", receive(sock, 4))[0] != magic:
                raise ConnectionError("it answered, but not as a TVM RPC tracker")
            request = json.dumps([summary_code]).encode()
            sock.sendall(struct.pack("<i", len(request)) + request)
            (size,) = struct.unpack("<i", receive(sock, 4))
            answer = json.loads(receive(sock, size).decode())
        if not isinstance(answer, list) or len(answer) != 2 or answer[0] != success:
            raise ConnectionError(f"the tracker answered {str(answer)[:80]} to a summary request")
        return answer[1]

    return read_summary


def parse_tracker(address: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port); a one-line error for anything else."""
    host, sep, port = str(address).strip().rpartition(":")
    host = host.strip("[]")  # [::1]:9190
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise CompileError(f"--rpc-tracker '{address}' is not HOST:PORT (e.g. 192.168.1.10:9190)")
    return host, int(port)


def check_tracker(address: str, timeout: float = 5.0) -> dict:
    """The summary of the tracker at ``address``, or a one-line error saying it cannot be reached."""
    host, port = parse_tracker(address)
    try:
        return _summary_reader()(host, port, timeout)
    except (OSError, ValueError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        raise CompileError(f"cannot reach the RPC tracker at {host}:{port} ({why}); start one there with "
                           f"'python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port {port}'") from None


def servers_under_key(host: str, port: int, key: str, timeout: float = 5.0) -> int:
    """How many servers the tracker lists under ``key`` (busy or free)."""
    summary = _summary_reader()(host, port, timeout)
    return sum(1 for s in summary.get("server_info", []) if s.get("key") == "server:" + key)


def wait_for_servers(rpc: RpcTarget, say) -> int:
    """The number of servers under the key, waiting up to ``rpc.wait_s`` for a first one."""
    check_tracker(rpc.tracker)
    deadline = time.monotonic() + rpc.wait_s
    announced = False
    while True:
        count = servers_under_key(rpc.host, rpc.port, rpc.key)
        if count:
            return count
        if time.monotonic() >= deadline:
            raise CompileError(f"no RPC server registered under key {rpc.key} at {rpc.tracker} after "
                               f"{rpc.wait_s:g} s; start one with 'python -m tvm.exec.rpc_server --tracker "
                               f"{rpc.tracker} --key {rpc.key}' (or wait longer: --rpc-wait SECONDS)")
        if not announced:
            say(f"[tune] waiting up to {rpc.wait_s:g} s for an RPC server under key {rpc.key} at {rpc.tracker}")
            announced = True
        time.sleep(min(1.0, rpc.wait_s))


_quieted_logger = False  # whether tune() set MetaSchedule's logger level (not the user)


@contextlib.contextmanager
def _meta_schedule_logging():
    """Around MetaSchedule's logger set-up, which runs at every search (dictConfig):

    - its console handler takes the logger's level, DEBUG unless set, and then prints every round
      to stdout; keep it at warnings (the full log still goes to <tuning_db>/logs, and progress
      goes through ``say``). The set-up itself resets the level to DEBUG, so this is redone at
      every search unless the user chose a level;
    - it lists the logger's handlers by name, and one without a name (pytest's log capture, a
      user's own) makes it fail: those are detached meanwhile."""
    global _quieted_logger
    ms_logger = logging.getLogger("tvm.s_tir.meta_schedule")
    if ms_logger.level == logging.NOTSET or _quieted_logger:
        ms_logger.setLevel(logging.WARNING)
        _quieted_logger = True
    unnamed = [h for h in ms_logger.handlers if h.get_name() is None]
    for handler in unnamed:
        ms_logger.removeHandler(handler)
    try:
        yield
    finally:
        for handler in unnamed:
            ms_logger.addHandler(handler)


def _record_rule_schedules(extracted, target, database, builder, runner, say) -> None:
    """Measure each task's search-free schedule (``schedules.py``) with the search's own builder
    and runner, and commit it to the database as one more candidate. Applying the database takes
    the fastest record per task, so a search that found nothing better than the rules (a small
    budget, a task the search handles badly) keeps the rules' schedule instead of a slower one."""
    from tvm.s_tir import meta_schedule as ms

    from .schedules import first_schedule

    measured = []
    for task in extracted:
        func = _task_func(task)
        found = first_schedule(func, target)
        if found is not None:
            measured.append((task, task.dispatched[0], found[1], ms.arg_info.ArgInfo.from_prim_func(func)))
    if not measured:
        return
    built = builder.build([ms.builder.BuilderInput(sch.mod, target) for _, _, sch, _ in measured])
    device = "cpu" if target.kind.name == "llvm" else target.kind.name
    ran = runner.run([ms.runner.RunnerInput(b.artifact_path, device, args)
                      for b, (_, _, _, args) in zip(built, measured) if b.error_msg is None])
    results = iter(future.result() for future in ran)
    for b, (task, mod, sch, args) in zip(built, measured):
        result = next(results) if b.error_msg is None else None
        if result is None or result.error_msg is not None or not result.run_secs:
            why = b.error_msg if result is None else (result.error_msg or "no timing")
            say(f"[tune] rule schedule of {task.task_name} could not be measured ({why.strip().splitlines()[-1]}); "
                "the search's records stand")
            continue
        rule_us = _mean_us(result.run_secs)
        workload = database.commit_workload(mod)
        best = database.get_top_k(workload, 1)
        search_us = _mean_us(best[0].run_secs) if best else float("inf")
        record = ms.database.TuningRecord(sch.trace, workload, [float(t) for t in result.run_secs], target, args)
        if not _replays(record, workload):
            say(f"[tune] rule schedule of {task.task_name} cannot be stored (its trace does not replay from JSON); "
                "the search's records stand")
            continue
        database.commit_tuning_record(record)
        kept = "the rules' schedule" if rule_us < search_us else "the searched schedule"
        say(f"[tune] {task.task_name}: rules {rule_us:.1f} us, search {search_us:.1f} us: keeps {kept}")


def _task_func(task):
    """The PrimFunc an extracted task tunes (its dispatched module holds just that one)."""
    mod = task.dispatched[0]
    return mod[mod.get_global_vars()[0]]


def _replays(record, workload) -> bool:
    """Whether ``record`` survives the JSON round trip the database does when it is read back.
    Some traces do not (dlight's normalisation records a TransformBlockLayout whose index map this
    TVM cannot parse again), and one such record makes the whole database unreadable."""
    from tvm.s_tir import meta_schedule as ms

    try:
        ms.database.TuningRecord.from_json(record.as_json(), workload)
        return True
    except Exception:  # noqa: BLE001 - TVM raises its own error types here
        return False


def _mean_us(run_secs) -> float:
    values = [float(t) for t in run_secs]
    return 1e6 * sum(values) / len(values) if values else float("inf")


def tuning_target(target):
    """``target`` with the ``num-cores`` attribute MetaSchedule requires."""
    import tvm

    config = dict(target.export())
    if "num-cores" in config:
        return target
    config["num-cores"] = usable_cores()
    host = config.pop("host", None)
    return tvm.target.Target(config, host=host) if host else tvm.target.Target(config)


def _make_f_build():
    """The builder function. A local function: the builder's worker processes receive it by
    value (cloudpickle), so they need not import this project."""

    def f_build(mod, target, _params):
        from tvm.driver import build as tvm_build
        from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

        mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
        # Tasks are private functions; lowering to a callable needs an exported symbol.
        for gvar, func in list(mod.functions.items()):
            if func.attrs is None or "global_symbol" not in func.attrs:
                mod[gvar] = func.with_attr("global_symbol", gvar.name_hint)
        return tvm_build(mod, target=target)

    return f_build


def _make_f_export():
    """The builder's export for RPC: a shared library linked here (the stock export is a .tar
    that the server would have to link itself, with a compiler it may not have)."""

    def f_export(mod):
        import os
        import tempfile

        path = os.path.join(tempfile.mkdtemp(prefix="aot-tune-"), "candidate.so")
        mod.export_library(path)
        return path

    return f_export


class _NoServerLeft(Exception):
    """Raised by the progress callback to end a search whose servers are all gone."""


def _progress_callback(names: list[str], say, rpc: RpcTarget | None = None):
    """A measure callback that reports each task's trials and best latency as results arrive.
    With ``rpc``, it also reports candidates a server failed (with the reason) and stops the
    search (``_NoServerLeft``, flagged in ``no_server_left``) when the tracker lists no server
    under the key any more."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    @derived_object
    class Progress(ms.measure_callback.PyMeasureCallback):
        def __init__(self):
            self.trials = [0] * len(names)
            self.best = [float("inf")] * len(names)
            self.measured = 0
            self.no_server_left = False

        def apply(self, task_scheduler, task_id, candidates, builder_results, runner_results):
            self.trials[task_id] += len(candidates)
            lost = []
            for built, result in zip(builder_results, runner_results):
                if result.error_msg is None and result.run_secs:
                    self.measured += 1
                    secs = sum(float(s) for s in result.run_secs) / len(result.run_secs)
                    self.best[task_id] = min(self.best[task_id], secs)
                elif built.error_msg is None and result.error_msg and result.error_msg.startswith("RPCRunner"):
                    lost.append(_last_line(result.error_msg))
            best = self.best[task_id]
            shown = f"{best * 1e6:.1f} us" if best < float("inf") else "no valid candidate yet"
            say(f"[tune] task {task_id + 1}/{len(names)} {names[task_id]}: "
                f"{self.trials[task_id]} trials, best {shown}")
            if rpc is not None and lost:
                reasons = "; ".join(dict.fromkeys(lost))
                say(f"[tune] {len(lost)} candidate(s) failed on an RPC server, recorded as failed ({reasons})")
                if not self._servers_left():
                    self.no_server_left = True
                    raise _NoServerLeft(rpc.key)

        def _servers_left(self) -> bool:
            try:
                return servers_under_key(rpc.host, rpc.port, rpc.key) > 0
            except OSError:  # the tracker itself is gone: no server can be handed out
                return False

    return Progress()


def _last_line(message: str) -> str:
    lines = [line.strip() for line in str(message).strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no reason given"
