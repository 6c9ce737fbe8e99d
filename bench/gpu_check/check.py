"""Run in the folder prepare.py made, on the GPU machine, with its own python3 (torch with CUDA,
numpy; TVM only from the folder's bundle/):

    python3 check.py [--cap-s 40] [--out results.md]
    python3 check.py --cpu-dry-run    # same flow with llvm artifacts on the CPU (tests)

For every case in cases.json: load the artifact, check max |ours - ref| / max |ref| <= 1e-4
against the CPU fp32 reference, then time (median, after warm-up) ``load()``'s numpy path, the VM
on device-resident tensors, PyTorch eager on the GPU and ``torch.compile`` (TF32 off; skipped for
a case once compiling it passes the time cap, and said so). Prints a markdown table with the card
name and writes it to results.md. Exits 2 with one line when there is no GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REL_TOL = 1e-4


def setup_paths(folder: Path) -> None:
    """The folder (models/) and its bundle (compiler + TVM runtime) first on the import path; the
    embedded CUDA source compiled by nvcc when it is on PATH (TVM's NVRTC path otherwise)."""
    import os
    import shutil

    if shutil.which("nvcc"):
        os.environ.setdefault("TVM_CUDA_COMPILE_MODE", "nvcc")
    for path in (folder / "bundle", folder):
        if path.is_dir() and str(path) not in sys.path:
            sys.path.insert(0, str(path))


def environment_problem(folder: Path) -> str | None:
    """One line saying why this Python cannot run the check (the bundle is for another Python, or
    torch is missing), or None."""
    bundle_json = folder / "bundle" / "bundle.json"
    if bundle_json.is_file():
        from backends.tvm.runtime import bundle_problem

        problem = bundle_problem(bundle_json)
        if problem:
            return problem
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        return f"the reference and timing side needs torch, which this python cannot import ({exc})"
    return None


def median_ms(fn, sync, budget_s: float, min_runs: int = 5, max_runs: int = 200) -> float:
    fn()
    sync()  # warm-up
    times, start = [], time.perf_counter()
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() - start < budget_s):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def rel_err(ours, refs) -> float:
    import numpy as np

    worst = 0.0
    for o, r in zip(ours, refs):
        o, r = np.asarray(o, dtype=np.float64), np.asarray(r, dtype=np.float64)
        worst = max(worst, float(np.max(np.abs(o - r))) / max(float(np.max(np.abs(r))), 1e-30))
    return worst


def device_resident_ms(loaded, arrays, on_gpu: bool, budget_s: float):
    """The artifact's VM on tensors already on the device (no host copies), or None when the
    loaded model exposes no VM (another runner)."""
    import tvm

    vm = getattr(getattr(loaded, "_runner", None), "vm", None)
    if vm is None:
        return None
    dev = tvm.cuda(0) if on_gpu else tvm.cpu(0)
    # main takes the artifact's weights after the inputs
    tensors = [tvm.runtime.tensor(a, dev) for a in arrays] + list(getattr(loaded._runner, "weights", ()))
    main = vm["main"]
    return median_ms(lambda: main(*tensors), dev.sync, budget_s)


def torch_model(case: dict):
    from models import REAL, ZOO

    if case["kind"] == "zoo":
        return ZOO[case["model"]].factory().eval()
    return REAL[case["model"]].factory.small().eval()


def check_case(case: dict, folder: Path, device: str, args) -> dict:
    import numpy as np
    import torch

    import compiler

    data = np.load(folder / case["data"])
    arrays = [data[f"input{i}"] for i in range(case["inputs"])]
    refs = [data[f"ref{i}"] for i in range(case["outputs"])]
    loaded = compiler.load(folder / case["artifact"])
    out = loaded(*arrays)
    row = {"name": case["name"], "model": case["model"], "batch": case["batch"],
           "err": rel_err(out if isinstance(out, tuple) else (out,), refs)}
    on_gpu = device == "cuda"
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    row["numpy_ms"] = median_ms(lambda: loaded(*arrays), lambda: None, args.budget_s)
    row["device_ms"] = device_resident_ms(loaded, arrays, on_gpu, args.budget_s)
    model = torch_model(case).to(device)
    inputs = [torch.from_numpy(a).to(device) for a in arrays]
    with torch.no_grad():
        row["eager_ms"] = median_ms(lambda: model(*inputs), sync, args.budget_s)
        row["compile_ms"], row["compile_note"] = None, ""
        if args.no_torch_compile:
            row["compile_note"] = "torch.compile not run"
        else:
            compiled = torch.compile(model)
            t = time.perf_counter()
            compiled(*inputs)
            sync()
            first_s = time.perf_counter() - t
            if first_s > args.cap_s:
                row["compile_note"] = f"torch.compile skipped: compiling took {first_s:.0f} s > cap {args.cap_s:.0f} s"
            else:
                row["compile_ms"] = median_ms(lambda: compiled(*inputs), sync, args.budget_s)
    return row


def table(rows: list[dict], card: str, failures: list[str]) -> str:
    def ms(v):
        return f"{v:.3f}" if v is not None else "n/a"

    def ratio(a, b):
        return f"{a / b:.2f}" if a is not None and b else "n/a"

    lines = [f"GPU check on {card}; relative error limit {REL_TOL:g}", "",
             "| model | batch | ours numpy ms | ours device ms | eager ms | torch.compile ms | device/eager | "
             "device/compile | max rel err | ok |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['batch']} | {ms(r['numpy_ms'])} | {ms(r['device_ms'])} | {ms(r['eager_ms'])} | "
                     f"{ms(r['compile_ms'])} | {ratio(r['device_ms'], r['eager_ms'])} | "
                     f"{ratio(r['device_ms'], r['compile_ms'])} | {r['err']:.1e} | "
                     f"{'yes' if r['err'] <= REL_TOL else 'NO'} |")
    notes = [f"- {r['name']}: {r['compile_note']}" for r in rows if r["compile_note"]]
    return "\n".join(lines + [""] + notes + [f"- FAILED {f}" for f in failures]) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", default=str(HERE))
    parser.add_argument("--cpu-dry-run", action="store_true", help="llvm artifacts, everything on the CPU")
    parser.add_argument("--budget-s", type=float, default=2.0, help="timing budget per measurement")
    parser.add_argument("--cap-s", type=float, default=40.0, help="torch.compile time cap per case")
    parser.add_argument("--no-torch-compile", action="store_true")
    parser.add_argument("--out", default="results.md")
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    setup_paths(folder)
    problem = environment_problem(folder)
    if problem:
        print(f"check.py: {problem}", file=sys.stderr)
        return 2
    import torch

    spec = json.loads((folder / "cases.json").read_text())
    if args.cpu_dry_run:
        device, card = "cpu", "CPU (dry run)"
        if spec["target"] != "llvm":
            print("check.py: --cpu-dry-run needs a folder prepared with --target llvm", file=sys.stderr)
            return 2
    else:
        if not torch.cuda.is_available():
            print("check.py: no CUDA GPU visible to torch here; run it on the GPU machine (or --cpu-dry-run)",
                  file=sys.stderr)
            return 2
        device, card = "cuda", torch.cuda.get_device_name(0)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    rows, failures = [], []
    for case in spec["cases"]:
        try:
            rows.append(check_case(case, folder, device, args))
        except Exception as exc:  # keep checking the others; report this one
            failures.append(f"{case['name']}: {type(exc).__name__}: {str(exc).strip()[:200]}")
        print(f"{case['name']}: {'done' if rows and rows[-1]['name'] == case['name'] else failures[-1]}",
              file=sys.stderr, flush=True)
    text = table(rows, card, failures)
    print(text)
    Path(args.out).write_text(text)
    bad = [r for r in rows if r["err"] > REL_TOL]
    return 1 if failures or bad else 0


if __name__ == "__main__":
    sys.exit(main())
