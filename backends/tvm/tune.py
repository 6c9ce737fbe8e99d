"""MetaSchedule tuning for the CPU pipeline, and re-applying a saved tuning database.

``tune_or_apply(mod, target, options)`` takes the module after ``pipeline.prepare_module`` (the
fused PrimFuncs are the tuning tasks, and the database is keyed on their exact structure, so the
same preparation must run before tuning and before applying). With ``options["tune"] = N`` it
searches with a budget of N trials (both the global and the per-task limit), prints one line per
task and search round through ``options["progress"]`` (or stderr) and stores a JSON database in
``options["tuning_db"]``; with only ``tuning_db`` it applies the database without searching.
Functions the database lacks stay unscheduled here and get the search-free rules afterwards.

Two things this TVM wheel needs (measured, see the project's TVM notes): the stock builder fails
every candidate because tuning tasks are private PrimFuncs without a ``global_symbol``, so our
builder attaches one; and it must not import ``tvm.s_tir.tensor_intrin`` (about 28 s of CPU,
beyond the builder's timeout), which the stock builder does.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from typing import Any

from compiler.errors import CompileError

from .runtime import allow_all_cores, usable_cores

DATABASE_FILES = ("database_workload.json", "database_tuning_record.json")


def tune_or_apply(mod, target, options: dict[str, Any]):
    """Tune (when ``options["tune"]``) and then apply the database in ``options["tuning_db"]``."""
    budget = options.get("tune")
    db_dir = options.get("tuning_db")
    if budget and not db_dir:
        raise CompileError("tuning needs a database directory: pass tuning_db (--tuning-db DIR) with tune")
    if budget is not None and (not isinstance(budget, int) or budget < 1):
        raise CompileError(f"tune must be a positive number of trials, got {budget!r}")
    db_dir = os.fspath(db_dir)
    if budget:
        seconds = tune(mod, target, budget, db_dir, options.get("progress"))
        if isinstance(options.get("stats"), dict):
            options["stats"].update(tuning_s=round(seconds, 1), trials=budget)
    elif not has_database(db_dir):
        raise CompileError(f"no tuning database in {db_dir} (expected {' and '.join(DATABASE_FILES)}); "
                           "run once with tune=N to create it")
    return apply_database(mod, target, db_dir)


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


def tune(mod, target, budget: int, db_dir: str, progress=None) -> float:
    """Search schedules for every PrimFunc of ``mod``; returns the tuning time in seconds."""
    from tvm.s_tir import meta_schedule as ms

    from .schedules import is_scheduled

    say = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    os.makedirs(db_dir, exist_ok=True)
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
    say(f"[tune] {len(contexts)} tasks, {budget} trials, database {db_dir}")
    callbacks = list(ms.measure_callback.MeasureCallback.create("default"))
    callbacks.append(_progress_callback([c.task_name for c in contexts], say))
    builder = ms.builder.LocalBuilder(f_build=_make_f_build(), max_workers=usable_cores())
    # The runner's worker processes inherit TVM_NUM_THREADS: without it every parallel candidate
    # was timed on one thread (of two) while the artifact runs on all cores.
    allow_all_cores()
    runner = ms.runner.LocalRunner()
    database = ms.database.JSONDatabase(work_dir=db_dir)
    ms.tune.tune_tasks(
        tasks=contexts, task_weights=weights, work_dir=db_dir,
        max_trials_global=budget, max_trials_per_task=budget, num_trials_per_iter=min(64, budget),
        builder=builder, runner=runner, database=database, measure_callbacks=callbacks)
    _record_rule_schedules(extracted, target, database, builder, runner, say)
    elapsed = time.perf_counter() - start
    say(f"[tune] done in {elapsed:.1f} s")
    return elapsed


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


def _progress_callback(names: list[str], say):
    """A measure callback that reports each task's trials and best latency as results arrive."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    @derived_object
    class Progress(ms.measure_callback.PyMeasureCallback):
        def __init__(self):
            self.trials = [0] * len(names)
            self.best = [float("inf")] * len(names)

        def apply(self, task_scheduler, task_id, candidates, builder_results, runner_results):
            self.trials[task_id] += len(candidates)
            for result in runner_results:
                if result.error_msg is None and result.run_secs:
                    secs = sum(float(s) for s in result.run_secs) / len(result.run_secs)
                    self.best[task_id] = min(self.best[task_id], secs)
            best = self.best[task_id]
            shown = f"{best * 1e6:.1f} us" if best < float("inf") else "no valid candidate yet"
            say(f"[tune] task {task_id + 1}/{len(names)} {names[task_id]}: "
                f"{self.trials[task_id]} trials, best {shown}")

    return Progress()
