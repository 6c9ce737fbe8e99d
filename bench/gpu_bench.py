"""GPU latency of our TVM cuda artifacts against PyTorch eager, for every zoo model.

For each model: compile with ``compiler.compile(target="cuda")`` (the arch of the local GPU,
verified against PyTorch), load it, and time it next to PyTorch eager, median of repeated calls
after warm-up, same inputs. PyTorch runs on the GPU when torch has CUDA, else on the CPU (the
table says which). Our timing includes the numpy -> GPU -> numpy copies of each call (what
``compiler.load`` users get); the eager timing synchronizes after each call.

    python bench/gpu_bench.py [--batch 1] [--models mlp,lenet]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import median_latency  # noqa: E402  (bench/bench.py, next to this file)


def median_s(fn) -> float:
    return median_latency(fn, min_runs=30, budget_s=2.0, max_runs=2000)


def card_name() -> str:
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout.strip()
        return out.splitlines()[0] if out else "unknown GPU"
    except (OSError, subprocess.SubprocessError):
        return "unknown GPU"


def bench_model(name: str, batch: int, device, tmp: Path) -> dict:
    import torch

    import compiler
    from models import ZOO

    model = ZOO[name].factory().eval()
    t0 = time.perf_counter()
    art = compiler.compile(model, model.example_inputs(), target="cuda", output=tmp / f"{name}.aot", progress=False)
    compile_s = time.perf_counter() - t0
    loaded = compiler.load(art.path)
    inputs = model.example_inputs(batch)
    arrays = [t.numpy() for t in inputs]
    ours = median_s(lambda: loaded(*arrays))
    dev_model = model.to(device)
    dev_inputs = [t.to(device) for t in inputs]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def eager():
        with torch.no_grad():
            dev_model(*dev_inputs)
        sync()

    torch_s = median_s(eager)
    return {"model": name, "compile_s": compile_s, "ours_ms": ours * 1e3, "torch_ms": torch_s * 1e3,
            "verified": bool(art.report.verification and art.report.verification.passed)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--models", default="")
    args = parser.parse_args(argv)
    import torch

    from backends.tvm.emit import gpu_present, local_gpu_arch
    from models import ZOO

    if not gpu_present():
        print("gpu_bench: no NVIDIA GPU/driver visible to TVM; nothing to measure", file=sys.stderr)
        return 2
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    names = [n for n in args.models.split(",") if n] or sorted(ZOO)
    rows, failures = [], []
    with tempfile.TemporaryDirectory(prefix="aot-gpu-bench-") as tmp:
        for name in names:
            try:
                rows.append(bench_model(name, args.batch, device, Path(tmp)))
            except Exception as exc:  # keep measuring the other models; report this one
                failures.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
    eager_where = "GPU" if device.type == "cuda" else "CPU (this torch has no CUDA)"
    print(f"\nGPU: {card_name()}  (arch {local_gpu_arch()}), batch {args.batch}, PyTorch eager on {eager_where}")
    print(f"{'model':<12} {'compile s':>9} {'ours ms':>9} {'eager ms':>9} {'ours/eager':>10} verified")
    for r in rows:
        print(f"{r['model']:<12} {r['compile_s']:>9.1f} {r['ours_ms']:>9.3f} {r['torch_ms']:>9.3f} "
              f"{r['ours_ms'] / r['torch_ms']:>10.2f} {'yes' if r['verified'] else 'NO'}")
    for f in failures:
        print(f"FAILED {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
