"""Benchmark: real architectures at real sizes (models.REAL), ours against onnxruntime.

For each model, batch size and thread count: median latency of our llvm artifact (default target
options, no tuning database) and of our onnx artifact, both through ``compiler.load``; of
``torch.onnx.export(dynamo=True)`` + onnxruntime (the anchor); and of PyTorch eager. Ratios are
against the anchor (below 1.0: faster than onnxruntime); the geometric mean of each ratio is
printed per thread count, with the compile time of each of our targets and the host CPU at the top.

Calls are interleaved (one call of each candidate per round, in turn), so a noisy neighbour on a
shared machine slows every candidate alike, and each latency is the median over the rounds.

    python bench/bench_real.py                                  # all real models, batch 1 and 8, 1 and all threads
    python bench/bench_real.py --models resnet18,bert --batch 1 --threads 1 --quick
    python bench/bench_real.py --cpu x86-64-v3 --threads 1    # our AVX2 build (onnxruntime as the host allows)

Results also go to bench/results/real-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import _quiet, geomean, ort_call, torch_onnx_bytes, warm_up  # noqa: E402  (bench/bench.py, next to this file)

CANDIDATES = ("llvm", "onnx", "ort", "eager")
OURS = ("llvm", "onnx")


def host_cpu() -> dict:
    """The CPU line (model, x86-64 level, VNNI: ``backends.tvm.cpu`` owns that logic) and the
    cores this process may use."""
    from backends.tvm.cpu import host_summary

    return {"summary": host_summary(), "cores": len(os.sched_getaffinity(0))}


def interleaved_medians(candidates: dict, *, min_rounds: int, budget_s: float, max_rounds: int = 200) -> dict[str, float]:
    """Median ms per candidate, the candidates called in turn once per round (after one warm-up
    call each) until ``min_rounds`` rounds are done and ``budget_s`` seconds have passed."""
    import torch

    times: dict[str, list[float]] = {k: [] for k in candidates}
    with torch.no_grad():
        for fn in candidates.values():
            fn()
        start = time.perf_counter()
        rounds = 0
        while rounds < min_rounds or (time.perf_counter() - start < budget_s and rounds < max_rounds):
            for key, fn in candidates.items():
                t0 = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - t0)
            rounds += 1
    return {k: 1e3 * float(np.median(v)) for k, v in times.items()}


def compile_ours(model, inputs, target: str, path: str, cpu: str | None = None) -> float:
    """Seconds for ``compiler.compile`` (no verification) to write our ``target`` artifact
    (``cpu``: the llvm artifact built for that CPU alone, e.g. x86-64-v3)."""
    import compiler

    options = compiler.LlvmOptions(cpu=cpu) if target == "llvm" and cpu else target
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiler.compile(model, inputs, target=options, output=path, verify=False)
    return time.perf_counter() - t0


def output_errors(model, inputs, feeds, loaded: dict) -> dict[str, float]:
    """max |ours - eager| / max |eager| per loaded artifact: the compiles are unverified, so the
    bench checks what it times."""
    import torch

    with torch.no_grad():
        want = model(*inputs).numpy()
    scale = float(np.abs(want).max()) or 1.0
    return {t: float(np.abs(m.run(feeds)[0] - want).max()) / scale for t, m in loaded.items()}


def bench_model(name: str, batch: int, thread_counts: list[int], quick: bool, cpu: str | None = None) -> list[dict]:
    """One row per thread count for ``name`` at ``batch``; a target that fails to compile is left
    out of the rows with its error recorded."""
    import torch

    import compiler
    from models import get_real_model

    model = get_real_model(name).factory().eval()
    inputs = model.example_inputs(batch)
    feeds = [t.numpy() for t in inputs]
    base = {"model": name, "batch": batch, "compile_s": {}, "errors": {}}
    t0 = time.perf_counter()
    anchor = torch_onnx_bytes(model, inputs)
    base["compile_s"]["torch.onnx"] = time.perf_counter() - t0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for target in OURS:
            print(f"[bench_real] {name} batch {batch}: compiling {target} ...", file=sys.stderr, flush=True)
            path = os.path.join(tmp, f"{name}-{target}.aot")
            try:
                base["compile_s"][target] = compile_ours(model, inputs, target, path, cpu)
                paths[target] = path
            except Exception as exc:  # noqa: BLE001 - the other candidates still get measured
                base["errors"][target] = f"{type(exc).__name__}: {exc}".splitlines()[0][:160]
        for threads in thread_counts:
            n = threads or len(os.sched_getaffinity(0))
            torch.set_num_threads(n)
            print(f"[bench_real] {name} batch {batch}: measuring at {n} thread(s) ...", file=sys.stderr, flush=True)
            # Loaded per thread count: the TVM runtime sets its thread pool when it loads.
            loaded = {t: compiler.load(p, threads=n) for t, p in paths.items()}
            if "max_error" not in base:
                base["max_error"] = output_errors(model, inputs, feeds, loaded)
            candidates = {t: (lambda m=m: m.run(feeds)) for t, m in loaded.items()}
            candidates["ort"] = ort_call(anchor, n, feeds)
            candidates["eager"] = lambda: model(*inputs)
            ms = interleaved_medians(candidates, min_rounds=3 if quick else 7, budget_s=5.0 if quick else 20.0)
            row = {**base, "threads": n, "ms": ms,
                   "vs_ort": {k: v / ms["ort"] for k, v in ms.items() if k != "ort"}}
            rows.append(row)
            del loaded, candidates
    return rows


def format_table(host: dict, rows: list[dict], cpu: str | None = None) -> str:
    built = f"; llvm built for --cpu {cpu} only" if cpu else ""
    lines = [f"host: {host['summary']}, {host['cores']} usable cores{built}",
             "", "| model | batch | threads | llvm ms | onnx ms | ORT ms | eager ms | llvm / ORT | onnx / ORT "
             "| eager / ORT | compile s (llvm, onnx, torch.onnx) |", "|" + "---|" * 11]

    def cell(row, key, fmt):
        value = row["ms"].get(key) if fmt == "ms" else row["vs_ort"].get(key)
        if value is None:
            return "n/a"
        return f"{value:.2f}" if fmt == "ms" else f"{value:.2f}x"

    for r in rows:
        c = r["compile_s"]
        compile_cell = ", ".join(f"{c[k]:.0f}" if k in c else "failed" for k in ("llvm", "onnx", "torch.onnx"))
        lines.append(f"| {r['model']} | {r['batch']} | {r['threads']} | {cell(r, 'llvm', 'ms')} | {cell(r, 'onnx', 'ms')} "
                     f"| {cell(r, 'ort', 'ms')} | {cell(r, 'eager', 'ms')} | {cell(r, 'llvm', 'x')} | {cell(r, 'onnx', 'x')} "
                     f"| {cell(r, 'eager', 'x')} | {compile_cell} |")
    lines.append("")
    for threads in sorted({r["threads"] for r in rows}):
        parts = []
        for key in ("llvm", "onnx", "eager"):
            ratios = [r["vs_ort"][key] for r in rows if r["threads"] == threads and key in r["vs_ort"]]
            if ratios:
                parts.append(f"{key} {geomean(ratios):.2f}x ({len(ratios)} rows)")
        lines.append(f"geometric mean vs onnxruntime at {threads} thread(s): " + ", ".join(parts))
    checked = {(r["model"], r["batch"]): r.get("max_error") for r in rows}
    lines += [f"{m} batch {b}: max |ours - eager| / max |eager|: "
              + ", ".join(f"{t} {e:.1e}" for t, e in err.items()) for (m, b), err in checked.items() if err]
    errors = [f"{r['model']} batch {r['batch']}: {target} failed to compile: {error}"
              for r in rows for target, error in r["errors"].items()]
    return "\n".join(lines + list(dict.fromkeys(errors)))  # each row of a model repeats its errors


def main(argv=None) -> int:
    from models import REAL

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(REAL), help=f"comma-separated, from {', '.join(REAL)}")
    parser.add_argument("--batch", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--threads", default="1,0", help="comma-separated thread counts, 0 = all usable cores")
    parser.add_argument("--quick", action="store_true", help="fewer rounds per measurement (3, ~5 s)")
    parser.add_argument("--cpu", default=None,
                        help="build the llvm artifact for this CPU alone (e.g. x86-64-v3: our AVX2 code on this "
                             "host; onnxruntime still picks the host's best kernels)")
    args = parser.parse_args(argv)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in REAL]
    if unknown:
        print(f"error: unknown model(s) {', '.join(unknown)}; known: {', '.join(REAL)}", file=sys.stderr)
        return 2
    try:
        batches = [int(b) for b in args.batch.split(",")]
        thread_counts = [int(t) for t in args.threads.split(",")]
    except ValueError:
        print("error: --batch and --threads take comma-separated integers, e.g. --batch 1,8", file=sys.stderr)
        return 2
    # The llvm libraries load() extracts (hundreds of MB for BERT and GPT-2) go to a cache that
    # this run removes, not the user's.
    cache = None
    if "AOT_COMPILER_CACHE" not in os.environ:
        cache = tempfile.TemporaryDirectory(prefix="bench-real-cache-")
        os.environ["AOT_COMPILER_CACHE"] = cache.name
    host = host_cpu()
    print(f"host: {host['summary']}", file=sys.stderr)
    with _quiet():
        warm_up()
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    out = results / f"real-{time.strftime('%Y%m%d-%H%M%S')}.json"
    rows: list[dict] = []
    failures: list[str] = []
    for name in names:
        for batch in batches:
            try:
                rows.extend(bench_model(name, batch, thread_counts, args.quick, args.cpu))
            except Exception as exc:  # noqa: BLE001 - the other models still get measured
                failures.append(f"{name} batch {batch}: {type(exc).__name__}: {exc}".splitlines()[0][:200])
                print(f"[bench_real] {failures[-1]}", file=sys.stderr, flush=True)
            # Written after every model, so a long run that dies late keeps what it measured.
            out.write_text(json.dumps({"host": host, "quick": args.quick, "cpu": args.cpu, "rows": rows,
                                       "failures": failures},
                                      indent=1) + "\n")
    table = format_table(host, rows, args.cpu) if rows else "no model was measured"
    print("\n".join([table, *failures]))
    print(f"results: {out.relative_to(ROOT)}", file=sys.stderr)
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
