"""Benchmark: real models compiled once with a dynamic dimension, run at several sizes.

BERT-base and GPT-2 small get a symbolic sequence axis (1..512), ResNet-18 a symbolic height and
width (128..256). Each is compiled once per target (``verify=False``) and the one artifact runs at
sequence lengths 8, 128, 512 (ResNet: 160x160 and 224x224). The anchor is
``torch.onnx.export(dynamo=True, dynamic_shapes=...)`` with the same dynamic axes, run by
onnxruntime. Batch 1, one thread everywhere; each latency is the median over interleaved rounds
(ours and the anchor called in turn), so a noisy neighbour slows both alike. The max abs error of
ours and of the anchor against PyTorch eager is printed at each size.

    python bench/bench_dynamic.py                                    # all three models, onnx and llvm
    python bench/bench_dynamic.py --targets onnx --models bert,gpt2
    python bench/bench_dynamic.py --quick                            # the models' small() variants

``--quick`` uses ``small()`` (32 positions: sequence 1..24 at 8, 16, 24; ResNet 33..64 at 48, 64)
and fewer rounds. Results also go to bench/results/dynamic-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import _quiet, ort_call, warm_up  # noqa: E402  (bench/bench.py, next to this file)
from bench_real import host_cpu, interleaved_medians  # noqa: E402

TARGETS = ("onnx", "llvm")


@dataclass(frozen=True)
class Case:
    """How one model's input is made dynamic: which axes, their (name, min, max), and the sizes
    to run."""
    axes: dict  # axis -> (name, min, max), all on input 0
    sizes: tuple[int, ...]

    def input_at(self, example, size: int):
        """The example input resized along every dynamic axis to ``size`` (random, seeded)."""
        import torch

        shape = list(example.shape)
        for axis in self.axes:
            shape[axis] = size
        g = torch.Generator().manual_seed(size)
        if example.dtype == torch.int64:
            return torch.randint(0, int(example.max()) + 1, shape, generator=g, dtype=torch.int64)
        return torch.randn(shape, generator=g)


def cases(quick: bool) -> dict[str, Case]:
    if quick:  # small() has 32 positions (GPT-2's causal-mask slice guards against 32 itself) and 32x32 images
        seq = Case({1: ("seq", 1, 24)}, (8, 16, 24))
        # From 33: at 32 and below small ResNet-18's last feature map is 1x1, which torch.export
        # specialises (a guard), so the range starts above it and the example is resized into it.
        image = Case({2: ("height", 33, 64), 3: ("width", 33, 64)}, (48, 64))
    else:
        seq = Case({1: ("seq", 1, 512)}, (8, 128, 512))
        image = Case({2: ("height", 128, 256), 3: ("width", 128, 256)}, (160, 224))
    return {"bert": seq, "gpt2": seq, "resnet18": image}


def anchor_bytes(model, inputs, case: Case) -> bytes:
    """``torch.onnx.export(dynamo=True)`` with the same dynamic axes as ours."""
    import torch

    dims = {axis: torch.export.Dim(name, min=lo, max=hi) for axis, (name, lo, hi) in case.axes.items()}
    with warnings.catch_warnings(), _quiet(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, inputs, dynamo=True, optimize=True, dynamic_shapes=(dims,))
        return program.model_proto.SerializeToString()


def compile_ours(model, inputs, case: Case, target: str, path: str) -> float:
    import compiler

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiler.compile(model, inputs, target=target, output=path, verify=False, dynamic_shapes={0: case.axes})
    return time.perf_counter() - t0


def one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:160]


def bench_model(name: str, case: Case, targets: list[str], quick: bool) -> list[dict]:
    """One row per (target, size); where our compile fails the anchor is still measured and the
    row carries the error."""
    import torch

    import compiler
    from models import get_real_model

    torch.set_num_threads(1)
    spec = get_real_model(name)
    model = (spec.factory.small() if quick else spec.factory()).eval()
    example = model.example_inputs(1)
    if any(not lo <= example[0].shape[axis] <= hi for axis, (_, lo, hi) in case.axes.items()):
        example = (case.input_at(example[0], case.sizes[0]),) + tuple(example[1:])
    rows = []
    print(f"[bench_dynamic] {name}: exporting the anchor ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
        anchor = anchor_bytes(model, example, case)
        anchor_error = None
    except Exception as exc:  # noqa: BLE001 - ours still gets measured
        anchor, anchor_error = None, one_line(exc)
    anchor_s = time.perf_counter() - t0
    anchor_only: dict[int, dict] = {}  # size -> the anchor's row where ours did not compile
    with tempfile.TemporaryDirectory() as tmp:
        for target in targets:
            print(f"[bench_dynamic] {name}: compiling {target} ...", file=sys.stderr, flush=True)
            path = os.path.join(tmp, f"{name}-{target}.aot")
            base = {"model": name, "target": target, "axes": {str(a): v for a, v in case.axes.items()},
                    "anchor_compile_s": anchor_s, "anchor_error": anchor_error}
            stage = "compile"
            try:
                base["compile_s"] = compile_ours(model, example, case, target, path)
                stage = "load"
                loaded = compiler.load(path, threads=1)
            except Exception as exc:  # noqa: BLE001 - recorded; the anchor still gets measured
                base["compile_error"], loaded = f"{stage} failed: {one_line(exc)}", None
            for size in case.sizes:
                print(f"[bench_dynamic] {name} {target}: size {size} ...", file=sys.stderr, flush=True)
                if loaded is None and size in anchor_only:  # measured already: ours failed on another target too
                    rows.append({**base, **anchor_only[size]})
                    continue
                row = measure(model, loaded, anchor, case, example[0], size, quick)
                if loaded is None:
                    anchor_only[size] = row
                rows.append({**base, **row})
            del loaded
    return rows


def measure(model, loaded, anchor, case: Case, example, size: int, quick: bool) -> dict:
    import torch

    x = case.input_at(example, size)
    feeds = [x.numpy()]
    with torch.no_grad():
        want = model(x).numpy()
    row: dict = {"size": size}
    candidates = {}
    if loaded is not None:
        try:
            row["err_ours"] = float(np.abs(loaded.run(feeds)[0] - want).max())
            candidates["ours"] = lambda: loaded.run(feeds)
        except Exception as exc:  # noqa: BLE001 - one size failing does not hide the others
            row["error"] = one_line(exc)
    if anchor is not None:
        call = ort_call(anchor, 1, feeds)
        row["err_ort"] = float(np.abs(call()[0] - want).max())
        candidates["ort"] = call
    if candidates:
        row["ms"] = interleaved_medians(candidates, min_rounds=3 if quick else 5, budget_s=2.0 if quick else 6.0,
                                        max_rounds=50)
    return row


def format_table(host: dict, rows: list[dict], quick: bool) -> str:
    lines = [f"host: {host['summary']}, {host['cores']} usable cores; batch 1, 1 thread"
             + ("; --quick (small() variants)" if quick else ""), "",
             "| model | dynamic | target | size | ours ms | torch.onnx+ORT ms | ours / ORT | max abs err ours "
             "| max abs err ORT | compile s (ours / torch.onnx) |", "|" + "---|" * 10]
    lines += table_lines(rows)
    notes = {f"{r['model']} {r['target']} size {r['size']}: {r['error']}" for r in rows if "error" in r}
    notes |= {f"{r['model']} {r['target']}: {r['compile_error']}" for r in rows if "compile_error" in r}
    notes |= {f"{r['model']}: torch.onnx export failed: {r['anchor_error']}" for r in rows if r.get("anchor_error")}
    return "\n".join(lines + sorted(notes))


def table_lines(rows: list[dict]) -> list[str]:
    lines = []
    for r in rows:
        dyn = ", ".join(f"{n} {lo}..{hi}" for n, lo, hi in r["axes"].values())
        head = f"| {r['model']} | {dyn} | {r['target']} "
        ms = r.get("ms", {})
        ours, ort = ms.get("ours"), ms.get("ort")
        size = f"{r['size']}x{r['size']}" if len(r["axes"]) == 2 else str(r["size"])
        lines.append(
            head + f"| {size} | {r['compile_error'].split(':')[0] if 'compile_error' in r else _num(ours, '.2f')} | {_num(ort, '.2f')} "
            f"| {f'{ours / ort:.2f}x' if ours and ort else 'n/a'} | {_num(r.get('err_ours'), '.1e')} "
            f"| {_num(r.get('err_ort'), '.1e')} | {_num(r.get('compile_s'), '.0f')} / {r['anchor_compile_s']:.0f} |")
    return lines


def _num(value, fmt: str) -> str:
    return "n/a" if value is None else format(value, fmt)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="bert,gpt2,resnet18", help="comma-separated, from bert, gpt2, resnet18")
    parser.add_argument("--targets", default="onnx,llvm", help="comma-separated, from onnx, llvm")
    parser.add_argument("--quick", action="store_true", help="the models' small() variants, fewer rounds")
    args = parser.parse_args(argv)
    table = cases(args.quick)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    bad = [m for m in names if m not in table] + [t for t in targets if t not in TARGETS]
    if bad or not names or not targets:
        print(f"error: unknown model/target {', '.join(bad) or '(none given)'}; models: {', '.join(table)}; "
              f"targets: {', '.join(TARGETS)}", file=sys.stderr)
        return 2
    cache = None
    if "AOT_COMPILER_CACHE" not in os.environ:  # the extracted llvm libraries are big: not the user's cache
        cache = tempfile.TemporaryDirectory(prefix="bench-dynamic-cache-")
        os.environ["AOT_COMPILER_CACHE"] = cache.name
    host = host_cpu()
    with _quiet():
        warm_up()
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    out = results / f"dynamic-{time.strftime('%Y%m%d-%H%M%S')}.json"
    rows: list[dict] = []
    for name in names:
        new_rows = bench_model(name, table[name], targets, args.quick)
        rows += new_rows
        # Each model's rows as soon as they exist: a crash in a later model keeps the earlier ones.
        print("\n".join(table_lines(new_rows)), file=sys.stderr, flush=True)
        out.write_text(json.dumps({"host": host, "quick": args.quick, "rows": rows}, indent=1))
    print(format_table(host, rows, args.quick))
    print(f"results: {out}", file=sys.stderr)
    if cache is not None:
        cache.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
