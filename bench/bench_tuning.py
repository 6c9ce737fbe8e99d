"""Benchmark: TVM llvm artifacts with a MetaSchedule tuning database, against the search-free
schedules and onnxruntime, measured side by side in one run.

For each zoo model (or real-size model of ``models.REAL``, e.g. ``--models resnet18``): tune with a trial budget into ``<db>/<model>`` (reported: tuning time), then
compile once more from that database alone (no search; reported: compile time), and time three
things through the same harness as ``bench/bench.py``: torch.onnx + onnxruntime, our untuned
llvm artifact and our tuned one, at one thread and at all threads. A database already present
is reused (``--retune`` searches again), so a second run only measures.

    python bench/bench_tuning.py --models mlp,resnet --trials 256 --db tuning/

With ``--rpc-tracker local`` it compares tuning over TVM's RPC tracker with 1 and with 2 servers
started here (each pinned to one core with taskset): tuning wall time and the tuned latency
(timed here, interleaved with the untuned artifact). With ``--rpc-tracker HOST:PORT --rpc-key KEY``
it tunes once on the servers registered there.

    python bench/bench_tuning.py --rpc-tracker local --models mlp --trials 64
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import bench  # noqa: E402  (bench/bench.py, next to this file)
from models import ZOO  # noqa: E402


def model_spec(name: str):
    """The zoo entry called ``name``, else the real-size one (``models.REAL``)."""
    from models import REAL, get_model, get_real_model

    return get_real_model(name) if name in REAL and name not in ZOO else get_model(name)


def bench_tuned(name: str, batch: int, trials: int, db_root: str, retune: bool) -> dict:
    import torch

    import compiler
    from backends.tvm import tune as tvm_tune

    model = model_spec(name).factory().eval()
    inputs = model.example_inputs(batch)
    feeds = [t.numpy() for t in inputs]
    db = os.path.join(db_root, name)
    row: dict = {"model": name, "batch": batch, "trials": trials}
    model_bytes = bench.torch_onnx_bytes(model, inputs)
    with tempfile.TemporaryDirectory() as tmp:
        if retune or not tvm_tune.has_database(db):
            print(f"[bench] tuning {name}: {trials} trials into {db}", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            compiler.compile(model, inputs, output=os.path.join(tmp, "search.aot"), verify=False,
                             target=compiler.LlvmOptions(tune=trials, tuning_db=db))
            row["tune_s"] = time.perf_counter() - t0
        else:
            row["tune_s"] = float("nan")  # reused an existing database
            row["trials"] = "reused"
        plain = compiler.compile(model, inputs, target="llvm", output=os.path.join(tmp, "plain.aot"), verify=False)
        t0 = time.perf_counter()
        tuned = compiler.compile(model, inputs, output=os.path.join(tmp, "tuned.aot"), verify=False,
                                 target=compiler.LlvmOptions(tuning_db=db))
        row["apply_s"] = time.perf_counter() - t0
        for label, threads in (("1", 1), ("all", 0)):
            torch.set_num_threads(threads or os.cpu_count())
            # Loaded per thread count: the TVM runtime sets its (process-wide) pool when it loads,
            # so the two artifacts are loaded with the same count.
            ours_plain = compiler.load(plain.path, threads=threads or None)
            ours_tuned = compiler.load(tuned.path, threads=threads or None)
            best = bench.interleaved({"ort": bench.ort_call(model_bytes, threads, feeds),
                                      "plain": lambda o=ours_plain: o.run(feeds),
                                      "tuned": lambda o=ours_tuned: o.run(feeds)})
            for key in best:
                row[f"{key}_{label}_ms"] = best[key]
            row[f"plain_ratio_{label}"] = best["plain"] / best["ort"]
            row[f"tuned_ratio_{label}"] = best["tuned"] / best["ort"]
            expected = ours_plain.run(feeds)
            for a, b in zip(expected, ours_tuned.run(feeds)):  # a tuned schedule must not change numbers
                np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    return row


def bench_rpc(name: str, batch: int, trials: int, db_root: str, tracker: str, key: str | None) -> list[dict]:
    """Tune ``name`` through an RPC tracker: with 1 and with 2 local pinned servers (``tracker ==
    "local"``), or once on the servers at ``tracker`` under ``key``."""
    import compiler
    from backends.tvm.rpc_cluster import LocalCluster

    model = model_spec(name).factory().eval()
    inputs = model.example_inputs(batch)
    feeds = [t.numpy() for t in inputs]
    setups = [(n, None) for n in (1, 2)] if tracker == "local" else [(None, (tracker, key))]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        plain = compiler.compile(model, inputs, target=compiler.LlvmOptions(cpu="host"),
                                 output=os.path.join(tmp, "plain.aot"), verify=False)
        for servers, remote in setups:
            cluster = LocalCluster(servers=servers, key="bench", cores=[[i % os.cpu_count()] for i in range(servers)]) \
                if servers else None
            label = f"{servers} local" if servers else f"{remote[0]} {remote[1]}"
            db = os.path.join(db_root, f"{name}-rpc-{servers or 'remote'}")
            shutil.rmtree(db, ignore_errors=True)  # each setup searches from scratch: comparable wall times
            try:
                if cluster:
                    cluster.start()
                address, rpc_key = (cluster.tracker, "bench") if cluster else remote
                print(f"[bench] tuning {name}: {trials} trials on RPC servers ({label})", file=sys.stderr, flush=True)
                t0 = time.perf_counter()
                tuned = compiler.compile(model, inputs, output=os.path.join(tmp, "tuned.aot"), verify=False,
                                         target=compiler.LlvmOptions(cpu="host", tune=trials, tuning_db=db,
                                                                     rpc_tracker=address, rpc_key=rpc_key))
                tune_s = time.perf_counter() - t0
            finally:
                if cluster:
                    cluster.stop()
            ours_plain, ours_tuned = compiler.load(plain.path), compiler.load(tuned.path)
            best = bench.interleaved({"plain": lambda: ours_plain.run(feeds), "tuned": lambda: ours_tuned.run(feeds)})
            rows.append({"model": name, "servers": label, "trials": trials, "tune_s": tune_s,
                         "plain_ms": best["plain"], "tuned_ms": best["tuned"]})
            print(format_rpc_table(rows[-1:]).splitlines()[2], file=sys.stderr, flush=True)
    return rows


def format_rpc_table(rows: list[dict]) -> str:
    lines = ["| model | servers | trials | tuning wall s | untuned ms | tuned ms | tuned / untuned |", "|" + "---|" * 7]
    for r in rows:
        lines.append(f"| {r['model']} | {r['servers']} | {r['trials']} | {r['tune_s']:.0f} | {r['plain_ms']:.3f} "
                     f"| {r['tuned_ms']:.3f} | {r['tuned_ms'] / r['plain_ms']:.2f}x |")
    return "\n".join(lines)


def format_table(rows: list[dict]) -> str:
    head = ("| model | trials | tuning s | compile from db s | ORT 1 thread ms | untuned / ORT (1) | tuned / ORT (1) "
            "| ORT all ms | untuned / ORT (all) | tuned / ORT (all) |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['trials']} | n/a: {r['error']} |" + " |" * 7)
            continue
        tune_s = "-" if np.isnan(r["tune_s"]) else f"{r['tune_s']:.0f}"
        lines.append(f"| {r['model']} | {r['trials']} | {tune_s} | {r['apply_s']:.1f} | {r['ort_1_ms']:.3f} "
                     f"| {r['plain_ratio_1']:.2f}x | {r['tuned_ratio_1']:.2f}x | {r['ort_all_ms']:.3f} "
                     f"| {r['plain_ratio_all']:.2f}x | {r['tuned_ratio_all']:.2f}x |")
    good = [r for r in rows if "error" not in r]
    if good:
        def geo(key):
            return bench.geomean(r[key] for r in good)
        lines += ["", f"geometric mean tuned / ORT: {geo('tuned_ratio_1'):.2f}x at 1 thread, "
                      f"{geo('tuned_ratio_all'):.2f}x at all threads (untuned: {geo('plain_ratio_1'):.2f}x, "
                      f"{geo('plain_ratio_all'):.2f}x)"]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(ZOO), help="comma-separated zoo or models.REAL names")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--trials", type=int, default=256, help="MetaSchedule trial budget per model")
    parser.add_argument("--db", default="tuning", help="database root; one subdirectory per model")
    parser.add_argument("--retune", action="store_true", help="search again even where a database exists")
    parser.add_argument("--output", help="also write the table to this file")
    parser.add_argument("--rpc-tracker", metavar="HOST:PORT|local",
                        help="tune over TVM's RPC tracker: 'local' compares 1 and 2 servers started here")
    parser.add_argument("--rpc-key", help="with --rpc-tracker HOST:PORT: the servers' key")
    args = parser.parse_args(argv)
    if args.rpc_tracker:
        from compiler.errors import CompileError

        try:
            rows = [r for name in args.models.split(",") if name
                    for r in bench_rpc(name, args.batch, args.trials, args.db, args.rpc_tracker, args.rpc_key)]
        except CompileError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        table = format_rpc_table(rows)
        print(table)
        if args.output:
            Path(args.output).write_text(table + "\n")
        return 0
    rows = []
    for name in [m for m in args.models.split(",") if m]:
        try:
            rows.append(bench_tuned(name, args.batch, args.trials, args.db, args.retune))
        except Exception as exc:  # noqa: BLE001 - one model failing must not hide the others
            rows.append({"model": name, "trials": args.trials,
                         "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:120]})
        print(format_table(rows[-1:]).splitlines()[2],
              file=sys.stderr, flush=True)
    table = format_table(rows)
    print(table)
    if args.output:
        Path(args.output).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
