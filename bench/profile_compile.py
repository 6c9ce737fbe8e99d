"""Where an llvm compile's time goes: the phases of ``compiler.compile(..., target="llvm", verify=False)``.

Times, for MODEL (a models.REAL or zoo name), the frontend (torch.export, import, graph passes:
``CompileReport.phases``), then inside the emit phase: lowering to Relax, ``prepare_portable`` and,
per CPU variant, ``schedule_target_kernels``, ``schedule_module`` (our search-free rules),
``tvm.compile``'s Relax pipeline, its TIR pipeline, LLVM code generation (``codegen_build``: IR
and LLVM's optimizer), and ``export_bytes`` (machine code and link). The per-variant phases are
taken by wrapping those functions in this process, so they are reported with ``--jobs 1`` (the
variants built here one after the other); with the default jobs the variants are built in worker
processes and only the totals (wall, and CPU of this process and its children) are reported.

    python bench/profile_compile.py --model resnet18
    python bench/profile_compile.py --model bert --jobs 1      # per-variant phase breakdown
    python bench/profile_compile.py --model resnet18 --cpu host --cprofile 30
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import os
import pstats
import resource
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and its waited-for children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


class Timings:
    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.order: list[str] = []
        self.variant = ""

    def wrap(self, owner, name: str, label: str, per_variant: bool = True):
        """Replace ``owner.name`` by a wrapper adding its wall time under ``label``."""
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            if per_variant and label == "schedule_target_kernels":
                self.variant = _target_name(args[1]) if len(args) > 1 else ""
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                key = f"{self.variant}: {label}" if per_variant and self.variant else label
                if key not in self.seconds:
                    self.order.append(key)
                self.seconds[key] += time.perf_counter() - start

        setattr(owner, name, timed)


def _target_name(target) -> str:
    return str(target.attrs.get("mcpu", target.kind.name)) if hasattr(target, "attrs") else str(target)


def instrument(timings: Timings) -> None:
    import tvm
    from tvm import relax

    from backends.tvm import emit, lower, pipeline

    timings.wrap(lower, "to_relax", "lower to Relax", per_variant=False)
    timings.wrap(pipeline, "prepare_portable", "prepare_portable", per_variant=False)
    timings.wrap(pipeline, "schedule_target_kernels", "schedule_target_kernels")
    timings.wrap(pipeline, "schedule_module", "schedule_module (our rules)")
    timings.wrap(emit, "export_bytes", "export (machine code, link)")
    import importlib

    tir_build = importlib.import_module("tvm.tirx.build")
    timings.wrap(tir_build, "codegen_build", "LLVM codegen (IR + opt)")
    original_pipeline = relax.get_default_pipeline

    def default_pipeline(target):
        inner = original_pipeline(target)

        @tvm.transform.module_pass(opt_level=0, name="TimedRelaxPipeline")
        def timed(mod, _ctx):
            start = time.perf_counter()
            out = inner(mod)
            key = f"{timings.variant}: tvm.compile Relax pipeline"
            if key not in timings.seconds:
                timings.order.append(key)
            timings.seconds[key] += time.perf_counter() - start
            return out

        return timed

    relax.get_default_pipeline = default_pipeline
    original_tir = tvm.tirx.build

    @functools.wraps(original_tir)
    def tir_build_timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original_tir(*args, **kwargs)
        finally:
            key = f"{timings.variant}: tvm.compile TIR build (pipeline + LLVM codegen)"
            if key not in timings.seconds:
                timings.order.append(key)
            timings.seconds[key] += time.perf_counter() - start

    tvm.tirx.build = tir_build_timed


def model_and_inputs(name: str):
    from models import REAL, ZOO

    spec = REAL.get(name) or ZOO.get(name)
    if spec is None:
        raise SystemExit(f"error: unknown model {name!r}; known: {', '.join([*REAL, *ZOO])}")
    model = spec.factory().eval()
    return model, model.example_inputs(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18", help="models.REAL or zoo name (default resnet18)")
    parser.add_argument("--cpu", default=None, help="llvm option cpu (default: the portable variants)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="AOT_COMPILE_JOBS for this run: 1 builds the variants one after the other in this "
                             "process (per-variant phases timed); default: the compiler's own choice")
    parser.add_argument("--cprofile", type=int, default=0, metavar="N",
                        help="also run under cProfile and print the N functions with the most cumulative time")
    parser.add_argument("--progress", action="store_true", help="print the compiler's progress lines")
    args = parser.parse_args(argv)
    if args.jobs is not None:
        os.environ["AOT_COMPILE_JOBS"] = str(args.jobs)
    warnings.filterwarnings("ignore")
    import compiler

    model, inputs = model_and_inputs(args.model)
    timings = Timings()
    instrument(timings)
    from backends.options import LlvmOptions

    options = LlvmOptions(cpu=args.cpu)
    profiler = cProfile.Profile() if args.cprofile else None
    with tempfile.TemporaryDirectory() as tmp:
        wall0, cpu0 = time.perf_counter(), cpu_seconds()
        if profiler:
            profiler.enable()
        report = compiler.compile(model, inputs, target=options, output=os.path.join(tmp, "m.aot"), verify=False,
                                  progress=args.progress).report
        if profiler:
            profiler.disable()
        wall, cpu = time.perf_counter() - wall0, cpu_seconds() - cpu0
    print(f"{args.model}: llvm {args.cpu or 'portable'} compile {wall:.1f} s wall, {cpu:.1f} s CPU "
          f"(this process and its children), jobs {os.environ.get('AOT_COMPILE_JOBS', 'default')}")
    for phase, seconds in report.phases.items():
        print(f"  {phase:<58} {seconds:7.2f} s")
    for key in timings.order:
        print(f"    {key:<56} {timings.seconds[key]:7.2f} s")
    schedules = report.target_info.get("schedules", {})
    if schedules:
        print(f"  fused functions: {schedules}")
    if profiler:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(args.cprofile)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
