"""Benchmark: our ONNX artifacts against the anchors, measured side by side in one run.

For each zoo model: compile time of `compiler.compile` (export + import + passes + emit + write,
no verification) next to `torch.onnx.export(dynamo=True)`; and inference latency (median) of
PyTorch eager, of torch.onnx's model under onnxruntime, and of our artifact through
`compiler.load`, with onnxruntime at full graph optimisation and the same thread count.
Ratios below 1.0 mean we are faster.

A second table compares our TVM llvm artifact (`compiler.compile(target="llvm")`, run through
`compiler.load`) with the same torch.onnx model under onnxruntime, both at one thread and at all
threads, measured side by side (`--no-tvm` skips it; it is skipped with a note when TVM or the
llvm target is unavailable).

    python bench/bench.py                     # all zoo models, 1 thread
    python bench/bench.py --threads 0 --models mlp,resnet --batch 8
    python bench/bench.py --no-tvm
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 3
sys.path.insert(0, str(ROOT))


def median_latency(fn, *, min_runs: int = 20, budget_s: float = 1.0, max_runs: int | None = 10_000) -> float:
    """Median seconds per call after warm-up; runs until both the run count and budget are met
    (or ``max_runs`` calls were timed). The other bench scripts import it from here."""
    for _ in range(5):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < budget_s:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if max_runs is not None and len(times) >= max_runs:
            break
    return float(np.median(times))


def geomean(values) -> float:
    return float(np.exp(np.mean(np.log(list(values)))))


def torch_onnx_bytes(model, inputs) -> bytes:
    """The anchor: ``torch.onnx.export(dynamo=True, optimize=True)`` of ``model``, serialized,
    with its progress prints and warnings silenced."""
    import torch

    with warnings.catch_warnings(), _quiet(), torch.no_grad():
        warnings.simplefilter("ignore")
        return torch.onnx.export(model, inputs, dynamo=True, optimize=True).model_proto.SerializeToString()


def ort_session(model_bytes: bytes, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])


def ort_call(model_bytes: bytes, threads: int, feeds: list[np.ndarray]):
    """The anchor as a candidate for ``interleaved``: one onnxruntime run on ``feeds``."""
    session = ort_session(model_bytes, threads)
    names = [i.name for i in session.get_inputs()]
    return lambda: session.run(None, dict(zip(names, feeds)))


def interleaved(candidates: dict, rounds: int = ROUNDS) -> dict[str, float]:
    """Best median ms per candidate over interleaved rounds: a noisy neighbour on a shared
    machine then slows all candidates alike instead of whichever ran at the time."""
    import torch

    best = {k: float("inf") for k in candidates}
    with torch.no_grad():
        for _ in range(rounds):
            for key, fn in candidates.items():
                best[key] = min(best[key], 1e3 * median_latency(fn, budget_s=0.4))
    return best


def bench_tvm(name: str, batch: int) -> dict:
    """Our llvm artifact against torch.onnx + onnxruntime, at 1 thread and at all threads."""
    import torch

    import compiler
    from models import get_model

    model = get_model(name).factory().eval()
    inputs = model.example_inputs(batch)
    feeds = [t.numpy() for t in inputs]
    row: dict = {"model": name, "batch": batch}
    model_bytes = torch_onnx_bytes(model, inputs)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        art = compiler.compile(model, inputs, target="llvm", output=os.path.join(tmp, f"{name}.aot"), verify=False)
        row["llvm_compile_s"] = time.perf_counter() - t0
        for label, threads in (("1", 1), ("all", 0)):
            torch.set_num_threads(threads or os.cpu_count())
            # Loaded per thread count: the TVM runtime sets its thread pool when it loads.
            ours = compiler.load(art.path, threads=threads or None)
            candidates = {"ort": ort_call(model_bytes, threads, feeds),
                          "llvm": lambda o=ours: o.run(feeds)}
            vm_call = _bare_vm_call(ours, feeds)
            if vm_call is not None:
                candidates["vm"] = vm_call
            best = interleaved(candidates)
            row[f"ort_{label}_ms"], row[f"llvm_{label}_ms"] = best["ort"], best["llvm"]
            row[f"ratio_{label}"] = best["llvm"] / best["ort"]
            row[f"vm_ratio_{label}"] = best.get("vm", float("nan")) / best["ort"]
    return row


def _bare_vm_call(ours, feeds):
    """The artifact's Relax VM called on tensors made once: separates kernel quality from the
    per-call cost of converting numpy arrays (like "ours session" in the ONNX table)."""
    vm = getattr(getattr(ours, "_runner", None), "vm", None)
    if vm is None:
        return None
    import tvm

    main = vm["main"]
    # main takes the artifact's weights after the inputs
    args = [tvm.runtime.tensor(a) for a in feeds] + list(getattr(ours._runner, "weights", ()))
    return lambda: main(*args)


def format_tvm_table(rows: list[dict]) -> str:
    head = ("| model | batch | ORT 1 thread ms | llvm 1 thread ms | llvm / ORT (1) | ORT all ms | llvm all ms "
            "| llvm / ORT (all) | bare VM / ORT (1, all) | llvm compile s |")
    lines = ["TVM llvm artifact (load()) vs torch.onnx + onnxruntime", "", head, "|" + "---|" * 10]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['batch']} | n/a: {r['error']} |" + " |" * 7)
            continue
        lines.append(f"| {r['model']} | {r['batch']} | {r['ort_1_ms']:.3f} | {r['llvm_1_ms']:.3f} | {r['ratio_1']:.2f}x "
                     f"| {r['ort_all_ms']:.3f} | {r['llvm_all_ms']:.3f} | {r['ratio_all']:.2f}x "
                     f"| {r['vm_ratio_1']:.2f}x, {r['vm_ratio_all']:.2f}x | {r['llvm_compile_s']:.2f} |")
    good = [r for r in rows if "error" not in r]
    if good:
        geo = {k: geomean(r[f"ratio_{k}"] for r in good) for k in ("1", "all")}
        lines += ["", (f"geometric mean llvm / ORT: {geo['1']:.2f}x at 1 thread, {geo['all']:.2f}x at all threads "
                       "through load()"),
                  "bare VM: the artifact's Relax VM on prepared TVM tensors (no numpy conversion per call)"]
    return "\n".join(lines)


def tvm_rows(models: list[str], batch: int) -> list[dict]:
    """One row per model; a model whose llvm compile fails gets a row naming the error."""
    rows = []
    for name in models:
        print(f"[bench] {name} (llvm) ...", file=sys.stderr, flush=True)
        try:
            rows.append(bench_tvm(name, batch))
        except Exception as exc:  # noqa: BLE001 - the ONNX table must still print
            rows.append({"model": name, "batch": batch, "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:120]})
    return rows


def bench_model(name: str, batch: int, threads: int) -> dict:
    import torch

    import compiler
    from models import get_model

    torch.set_num_threads(max(threads, 1) if threads else os.cpu_count())
    model = get_model(name).factory().eval()
    inputs = model.example_inputs(batch)
    feeds = [t.numpy() for t in inputs]
    row: dict = {"model": name, "batch": batch}

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        art = compiler.compile(model, inputs, target="onnx", output=os.path.join(tmp, f"{name}.aot"), verify=False)
        row["ours_compile_s"] = time.perf_counter() - t0
        ours = compiler.load(art.path, threads=threads or None)
        row["ours_nodes"] = art.report.nodes

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            buffer = io.BytesIO()
            t0 = time.perf_counter()
            with torch.no_grad(), _quiet():
                program = torch.onnx.export(model, inputs, dynamo=True, optimize=True)
            program.model_proto.SerializeToString()
            row["torch_onnx_compile_s"] = time.perf_counter() - t0
            buffer.write(program.model_proto.SerializeToString())
        anchor = ort_session(buffer.getvalue(), threads)
        row["torch_onnx_nodes"] = len(program.model_proto.graph.node)
        anchor_names = [i.name for i in anchor.get_inputs()]

        # The same graph without our input checks: separates graph quality from wrapper cost.
        session = ours._runner.session
        names = [i.name for i in session.get_inputs()]
        candidates = {
            "eager_ms": lambda: model(*inputs),
            "torch_onnx_ort_ms": lambda: anchor.run(None, dict(zip(anchor_names, feeds))),
            "ours_ms": lambda: ours.run(feeds),
            "ours_session_ms": lambda: session.run(None, dict(zip(names, feeds))),
        }
        # Interleave rounds and keep each candidate's best median: a noisy neighbour on a shared
        # machine then slows all candidates alike instead of whichever ran at the time.
        best = {k: float("inf") for k in candidates}
        with torch.no_grad():
            for _ in range(ROUNDS):
                for key, fn in candidates.items():
                    best[key] = min(best[key], 1e3 * median_latency(fn, budget_s=0.4))
        row.update(best)
    row["vs_torch_onnx"] = row["ours_ms"] / row["torch_onnx_ort_ms"]
    row["session_vs_torch_onnx"] = row["ours_session_ms"] / row["torch_onnx_ort_ms"]
    row["vs_eager"] = row["ours_ms"] / row["eager_ms"]
    row["compile_vs_torch_onnx"] = row["ours_compile_s"] / row["torch_onnx_compile_s"]
    return row


def _have_tvm() -> bool:
    import importlib.util

    return importlib.util.find_spec("tvm") is not None


class _quiet:
    """Silence torch.onnx's progress prints on stdout."""

    def __enter__(self):
        self._stdout = sys.stdout
        sys.stdout = io.StringIO()

    def __exit__(self, *exc):
        sys.stdout = self._stdout


def warm_up() -> None:
    """Compile a tiny model once with both tools so one-time import costs are not charged to
    the first model measured."""
    import torch

    import compiler

    tiny = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU()).eval()
    x = (torch.randn(1, 4),)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(), _quiet():
        warnings.simplefilter("ignore")
        compiler.compile(tiny, x, output=os.path.join(tmp, "tiny.aot"), verify=False)
        torch.onnx.export(tiny, x, dynamo=True)


def format_table(rows: list[dict], threads: int) -> str:
    head = ("| model | batch | eager ms | torch.onnx+ORT ms | ours ms (load()) | ours / torch.onnx "
            "| ours session / torch.onnx | ours / eager | compile s (ours / torch.onnx) | nodes (ours / torch.onnx) |")
    lines = [f"threads: {threads or 'all'}", "", head, "|" + "---|" * 10]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['eager_ms']:.3f} | {r['torch_onnx_ort_ms']:.3f} | {r['ours_ms']:.3f} "
            f"| {r['vs_torch_onnx']:.2f}x | {r['session_vs_torch_onnx']:.2f}x | {r['vs_eager']:.2f}x | {r['ours_compile_s']:.2f} / "
            f"{r['torch_onnx_compile_s']:.2f} ({r['compile_vs_torch_onnx']:.2f}x) "
            f"| {r['ours_nodes']} / {r['torch_onnx_nodes']} |")
    ratios = [r["vs_torch_onnx"] for r in rows]
    geo = geomean(ratios)
    compile_geo = geomean(r["compile_vs_torch_onnx"] for r in rows)
    lines.append("")
    session_geo = geomean(r["session_vs_torch_onnx"] for r in rows)
    lines.append(f"geometric mean latency ours / torch.onnx+ORT: {geo:.2f}x through load() "
                 f"({session_geo:.2f}x for the bare onnxruntime session); compile time: {compile_geo:.2f}x")
    return "\n".join(lines)


def main(argv=None) -> int:
    from models import ZOO

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(ZOO), help="comma-separated zoo names")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads, 0 = all cores")
    parser.add_argument("--output", help="also write the table to this file")
    parser.add_argument("--no-tvm", dest="tvm", action="store_false", help="skip the TVM llvm table")
    args = parser.parse_args(argv)
    from backends.tvm.cpu import host_summary

    host = f"host CPU: {host_summary()}"
    print(host, flush=True)
    warm_up()
    models = [m.strip() for m in args.models.split(",")]
    rows = []
    for name in models:
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        rows.append(bench_model(name, args.batch, args.threads))
    table = format_table(rows, args.threads)
    if args.tvm:
        table += "\n\n" + (format_tvm_table(tvm_rows(models, args.batch)) if _have_tvm()
                            else "TVM llvm table skipped: tvm is not installed")
    print(table)
    if args.output:
        Path(args.output).write_text(host + "\n\n" + table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
