"""Where an llvm artifact's time goes: the top kernels of a model by total time.

Compiles MODEL (a models.REAL or zoo name) with ``target="llvm"`` (default target options, no
tuning database, unless --tuning-db is given), loads it with ``compiler.load`` and runs it under the
Relax VM's instrument hook (``vm.set_instrument``: called before and after every call the VM makes),
summing the time of each kernel symbol. Prints, per kernel: calls per run, ms per run, share of the
run, the shapes of its arguments (inputs then outputs, as the VM passes them) and, for GEMM-like
kernels (matmul, dense, conv, Winograd), GFLOP/s from TVM's FLOP estimate of the scheduled PrimFunc
(``tvm.s_tir.analysis.estimate_tir_flops``, so a fused epilogue's few FLOPs count too).

    python bench/profile_tvm.py bert
    python bench/profile_tvm.py resnet18 --batch 8 --threads 0 --top 30
    python bench/profile_tvm.py mobilenet_v2 --variant x86-64-v4-vnni     # build one variant only
    python bench/profile_tvm.py gpt2 --artifact gpt2.aot          # profile an existing artifact (no GFLOP/s)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GEMM_LIKE = ("matmul", "dense", "conv", "winograd")


def model_and_inputs(name: str, batch: int):
    from models import REAL, ZOO

    spec = REAL.get(name) or ZOO.get(name)
    if spec is None:
        raise SystemExit(f"error: unknown model {name!r}; known: {', '.join([*REAL, *ZOO])}")
    model = spec.factory().eval()
    return model, model.example_inputs(batch)


def compile_with_flops(model, inputs, path: str, options: dict, variant: str | None = None) -> tuple[float, dict[str, float]]:
    """Compile to ``path``; returns (seconds, FLOPs per PrimFunc name). The FLOPs come from the
    scheduled module the backend builds, caught by wrapping ``pipeline.lower`` for this one compile
    (the library keeps the PrimFuncs' names, so they match the VM's call symbols). ``variant``:
    build only that one of the portable CPU variants (the one ``load`` would pick), to save time."""
    import compiler
    from backends.options import LlvmOptions
    from backends.tvm import emit, pipeline

    flops: dict[str, float] = {}
    original = pipeline.lower

    def lower_and_count(mod, target, *args, **kwargs):
        scheduled = original(mod, target, *args, **kwargs)
        flops.update(_primfunc_flops(scheduled))
        return scheduled

    pipeline.lower = lower_and_count
    portable = emit.PORTABLE_VARIANTS
    if variant is not None:
        emit.PORTABLE_VARIANTS = tuple(v for v in portable if v[0] == variant)
        if not emit.PORTABLE_VARIANTS:
            raise SystemExit(f"error: unknown variant {variant!r}; known: {', '.join(v[0] for v in portable)}")
    try:
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compiler.compile(model, inputs, target=LlvmOptions(**options), output=path, verify=False)
        return time.perf_counter() - t0, flops
    finally:
        pipeline.lower = original
        emit.PORTABLE_VARIANTS = portable


def _primfunc_flops(mod) -> dict[str, float]:
    import tvm
    from tvm.s_tir.analysis import estimate_tir_flops

    out = {}
    for gv, func in mod.functions.items():
        if isinstance(func, tvm.tirx.PrimFunc):
            try:
                out[gv.name_hint] = float(estimate_tir_flops(tvm.IRModule({gv.name_hint: func})))
            except Exception:  # noqa: BLE001 - an estimate we cannot get is shown as n/a
                pass
    return out


def profile(loaded, feeds: list[np.ndarray], runs: int) -> tuple[dict, float]:
    """Per symbol: {"calls", "seconds", "shapes"} summed over ``runs`` instrumented runs, and the
    median wall time of one uninstrumented run (seconds)."""
    import tvm

    vm = loaded._runner.vm
    main = vm["main"]
    # main takes the artifact's weights after the inputs
    args = [tvm.runtime.tensor(a) for a in feeds] + list(getattr(loaded._runner, "weights", ()))
    main(*args)  # warm-up: first-call allocations and page faults stay out of the profile
    walls = []
    for _ in range(max(3, runs)):
        t0 = time.perf_counter()
        main(*args)
        walls.append(time.perf_counter() - t0)

    stats: dict[str, dict] = defaultdict(lambda: {"calls": 0, "seconds": 0.0, "shapes": None})
    started: list[float] = []

    def instrument(func, symbol, before_run, ret, *call_args):
        if before_run:
            started.append(time.perf_counter())
        else:
            entry = stats[symbol]
            entry["seconds"] += time.perf_counter() - started.pop()
            entry["calls"] += 1
            if entry["shapes"] is None:
                entry["shapes"] = [tuple(int(d) for d in a.shape) for a in call_args if hasattr(a, "shape")]
        return 0  # VMInstrumentReturnKind.NO_OP: run the call

    vm.set_instrument(instrument)
    try:
        for _ in range(runs):
            main(*args)
    finally:
        vm.set_instrument(None)
    for entry in stats.values():
        entry["calls"] //= runs
        entry["seconds"] /= runs
    return dict(stats), float(np.median(walls))


def format_profile(stats: dict, wall_s: float, flops: dict[str, float], top: int) -> str:
    total = sum(e["seconds"] for e in stats.values())
    lines = [f"one run: {1e3 * wall_s:.2f} ms uninstrumented (median), {1e3 * total:.2f} ms summed over "
             f"{sum(e['calls'] for e in stats.values())} calls to {len(stats)} symbols (instrumented)", "",
             "| kernel | calls | ms / run | share | ms / call | GFLOP/s | argument shapes (first call) |",
             "|---|---|---|---|---|---|---|"]
    ranked = sorted(stats.items(), key=lambda kv: -kv[1]["seconds"])
    for symbol, e in ranked[:top]:
        per_call = e["seconds"] / max(e["calls"], 1)
        gflops = "-"
        if symbol in flops and any(k in symbol for k in GEMM_LIKE) and per_call > 0:
            gflops = f"{flops[symbol] / per_call / 1e9:.1f}"
        shapes = ", ".join("x".join(map(str, s)) for s in (e["shapes"] or []))
        lines.append(f"| {symbol} | {e['calls']} | {1e3 * e['seconds']:.3f} | {100 * e['seconds'] / total:.1f}% "
                     f"| {1e3 * per_call:.3f} | {gflops} | {shapes} |")
    rest = ranked[top:]
    if rest:
        lines.append(f"| ({len(rest)} more) | {sum(e['calls'] for _, e in rest)} "
                     f"| {1e3 * sum(e['seconds'] for _, e in rest):.3f} "
                     f"| {100 * sum(e['seconds'] for _, e in rest) / total:.1f}% | | | |")
    gemm = [(s, e) for s, e in stats.items() if s in flops and any(k in s for k in GEMM_LIKE)]
    if gemm:
        seconds = sum(e["seconds"] for _, e in gemm)
        work = sum(flops[s] * e["calls"] for s, e in gemm)
        lines += ["", f"GEMM-like kernels: {1e3 * seconds:.2f} ms / run ({100 * seconds / total:.1f}%), "
                      f"{work / 1e9:.2f} GFLOP, {work / seconds / 1e9:.1f} GFLOP/s overall"]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a models.REAL or zoo name (resnet18, mobilenet_v2, bert, gpt2, ...)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="TVM threads, 0 = all usable cores")
    parser.add_argument("--runs", type=int, default=5, help="instrumented runs to average")
    parser.add_argument("--top", type=int, default=20, help="kernels to list")
    parser.add_argument("--cpu", help="llvm mcpu (default: the host's)")
    parser.add_argument("--variant", help="build only this portable CPU variant (x86-64-v3, x86-64-v4-vnni)")
    parser.add_argument("--tuning-db", help="apply this tuning database directory")
    parser.add_argument("--artifact", help="profile this existing llvm artifact instead of compiling MODEL")
    args = parser.parse_args(argv)

    import compiler

    model, inputs = model_and_inputs(args.model, args.batch)
    feeds = [t.numpy() for t in inputs]
    flops: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = args.artifact
        if path is None:
            path = os.path.join(tmp, f"{args.model}.aot")
            options = {k: v for k, v in (("cpu", args.cpu), ("tuning_db", args.tuning_db)) if v}
            print(f"[profile_tvm] compiling {args.model} batch {args.batch} for llvm ...", file=sys.stderr, flush=True)
            seconds, flops = compile_with_flops(model, inputs, path, options, args.variant)
            print(f"[profile_tvm] compiled in {seconds:.1f} s", file=sys.stderr, flush=True)
        loaded = compiler.load(path, threads=args.threads or None)
        if loaded.manifest.get("target") != "llvm":
            print(f"error: {path} is a '{loaded.manifest.get('target')}' artifact; profile_tvm needs an llvm one",
                  file=sys.stderr)
            return 2
        stats, wall = profile(loaded, feeds, args.runs)
    threads = args.threads or len(os.sched_getaffinity(0))
    print(f"{args.model}, batch {args.batch}, {threads} thread(s), mean of {args.runs} instrumented runs")
    print(format_profile(stats, wall, flops, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
