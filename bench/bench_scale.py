"""Benchmark: compile time, memory and artifact size as models grow, next to torch.onnx.export.

For synthetic MLP stacks (square Linear + ReLU layers) and pre-LayerNorm transformer encoder
stacks (``models.transformer.TinyTransformer`` at BERT-like widths) of a given parameter size,
each size in a fresh subprocess:

- compile: ``compiler.compile(verify=False)`` wall time and its peak RSS, and
  ``torch.onnx.export(dynamo=True)`` of the same module in the same process (the anchor), timed
  the same way, alternating (``--rounds``, minimum of each); the ratio is ours / torch's (below
  1.0: we are faster);
- load: in another fresh subprocess, ``compiler.load`` wall time, its peak RSS, the RSS it still
  holds when it returns ("held"), and the first run's latency.

Peak RSS is the process's high-water mark (VmHWM, reset through /proc/self/clear_refs before each
phase) minus its RSS before the phase, divided by the model's parameter bytes: the memory a phase
adds on top of the model the user already holds (compile) or of a bare runtime process (load).
Compile counts the process tree: the llvm target builds its libraries in forked processes, whose
own pages (sampled every 10 ms) are added to the compiling process's RSS at the same moment.

    python bench/bench_scale.py                          # MLP and transformer, 10 MB .. 400 MB
    python bench/bench_scale.py --kinds mlp --sizes 2200  # the > 2 GB case (needs ~10 GB free)
    python bench/bench_scale.py --kinds bert,gpt2        # BERT-base- and GPT-2-sized encoders
    python bench/bench_scale.py --no-torch               # skip the anchor (e.g. when it runs out of memory)
    python bench/bench_scale.py --targets onnx,llvm      # also (or only) the llvm target

llvm artifacts are compiled with the default options (both portable CPU variants) and loaded on
this machine (its best variant).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_SIZES_MB = (10, 50, 200, 400)
MLP_LAYERS = 4
FIXED = {  # real-size configurations: TinyTransformer keyword arguments
    "bert": dict(vocab=30522, seq_len=128, d_model=768, n_heads=12, d_ff=3072, n_layers=12, num_classes=2),
    "gpt2": dict(vocab=50257, seq_len=128, d_model=768, n_heads=12, d_ff=3072, n_layers=12, num_classes=50257),
}


# -- the models ------------------------------------------------------------------------------------
def build(kind: str, size_mb: float):
    """(module, example inputs) for ``kind`` at about ``size_mb`` MB of float32 parameters."""
    import torch

    torch.manual_seed(0)
    if kind == "mlp":
        width = int(math.sqrt(size_mb * 1e6 / 4 / MLP_LAYERS))
        layers = []
        for _ in range(MLP_LAYERS):
            layers += [torch.nn.Linear(width, width), torch.nn.ReLU()]
        return torch.nn.Sequential(*layers).eval(), (torch.randn(1, width),)
    from models.transformer import TinyTransformer

    if kind in FIXED:
        config = FIXED[kind]
    else:  # "transformer": 12 layers of width d (about 12 d^2 parameters each), vocab 1000
        d_model = max(64, int(math.sqrt(size_mb * 1e6 / 4 / 12 / 12)) // 64 * 64)
        config = dict(vocab=1000, seq_len=128, d_model=d_model, n_heads=d_model // 64, d_ff=4 * d_model,
                      n_layers=12, num_classes=10)
    model = TinyTransformer(**config).eval()
    return model, (torch.randint(0, config["vocab"], (1, config["seq_len"])),)


# -- measuring (in a subprocess) -------------------------------------------------------------------
def _rss() -> int:
    return _status("VmRSS")


def _peak() -> int:
    return _status("VmHWM")


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


class TreePeak:
    """The peak of this process's RSS plus the pages only its descendants map (the llvm target
    builds its libraries in forked processes: what they share with this one is in its RSS),
    sampled every 10 ms while the block runs, in ``peak``. (Also used by
    tests/test_tvm_compile_memory.py.)"""

    def __enter__(self):
        import threading

        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())

    def _sample(self) -> None:
        while not self._stop.is_set():
            pid = os.getpid()
            self.peak = max(self.peak, _rss() + sum(_private(k) for k in _descendants(pid)))
            time.sleep(0.01)


def _descendants(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = [int(k) for k in f.read().split()]
    except OSError:
        return []
    return kids + [d for k in kids for d in _descendants(k)]


def _private(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return sum(int(line.split()[1]) * 1024 for line in f
                       if line.startswith(("Private_Clean:", "Private_Dirty:")))
    except OSError:
        return 0


def measure_compile(kind: str, size_mb: float, path: str, torch_anchor: bool, rounds: int,
                    target: str = "onnx") -> dict:
    """Ours and the anchor alternately, ``rounds`` times each (the first pays torch.export's and
    the exporters' one-time start-up, whichever runs first): the minimum of each, and the peak RSS
    of our first compile."""
    import torch

    import compiler

    model, inputs = build(kind, size_mb)
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    ours, theirs, peak, phases = [], [], 0, {}
    for i in range(rounds):
        before = _rss()
        _reset_peak()
        t0 = time.perf_counter()
        with torch.no_grad(), TreePeak() as tree:
            art = compiler.compile(model, inputs, target=target, output=path, verify=False)
        ours.append(time.perf_counter() - t0)
        if i == 0:
            peak = max(_peak(), tree.peak) - before
        phases = art.report.phases
        del art
        if torch_anchor:
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                _torch_export(model, inputs, os.path.join(tmp, "m.onnx"))
                theirs.append(time.perf_counter() - t0)
    result = {"param_bytes": param_bytes, "compile_s": min(ours), "compile_peak": peak,
              "artifact_bytes": os.path.getsize(path), "phases": phases}
    if theirs:
        result["torch_s"] = min(theirs)
    return result


def _torch_export(model, inputs, path: str) -> None:
    import contextlib
    import io
    import warnings

    import torch

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, inputs, path, dynamo=True, optimize=True)


def measure_load(path: str, kind: str, size_mb: float, target: str = "onnx") -> dict:
    import numpy as np

    import compiler

    # A bare runtime process: the runtime's imports done before the baseline.
    if target == "onnx":
        importlib.import_module("onnxruntime")
    else:
        from backends.tvm.runtime import import_tvm

        import_tvm()

    _model_inputs = None
    if kind == "mlp":
        width = int(math.sqrt(size_mb * 1e6 / 4 / MLP_LAYERS))
        _model_inputs = [np.random.default_rng(0).standard_normal((1, width), dtype=np.float32)]
    before = _rss()
    _reset_peak()
    t0 = time.perf_counter()
    loaded = compiler.load(path)
    load_s = time.perf_counter() - t0
    held = _rss() - before
    if _model_inputs is None:
        spec = loaded.inputs[0]
        _model_inputs = [np.zeros([1 if isinstance(d, str) else d for d in spec.shape], dtype=spec.dtype)]
    t0 = time.perf_counter()
    loaded(*_model_inputs)
    first_s = time.perf_counter() - t0
    return {"load_s": load_s, "first_run_s": first_s, "load_peak": _peak() - before, "load_held": held}


def _child(args) -> None:
    if args.child == "compile":
        out = measure_compile(args.kind, args.size, args.path, not args.no_torch, args.rounds, args.target)
    else:
        out = measure_load(args.path, args.kind, args.size, args.target)
    print("RESULT " + json.dumps(out))


def _run_child(phase: str, kind: str, size: float, path: str, no_torch: bool, rounds: int = 1,
               target: str = "onnx") -> dict:
    cmd = [sys.executable, __file__, "--child", phase, "--kind", kind, "--size", str(size), "--path", path,
           "--rounds", str(rounds), "--target", target]
    if no_torch:
        cmd.append("--no-torch")
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"error": f"{phase} failed (rc {proc.returncode}): {tail[0][:160]}"}


# -- the table -------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kinds", default="mlp,transformer", help="mlp, transformer, bert, gpt2 (comma list)")
    parser.add_argument("--sizes", default=",".join(str(s) for s in DEFAULT_SIZES_MB),
                        help="parameter MB per model (mlp, transformer)")
    parser.add_argument("--no-torch", action="store_true", help="skip the torch.onnx.export anchor")
    parser.add_argument("--rounds", type=int, default=2,
                        help="compile rounds per model, ours and torch's alternating; the minimum counts")
    parser.add_argument("--targets", default="onnx", help="onnx, llvm (comma list)")
    parser.add_argument("--target", default="onnx", help=argparse.SUPPRESS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--kind", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return

    header = (f"{'model':<26}{'params MB':>10}{'artifact MB':>12}{'compile s':>10}{'torch s':>9}{'ratio':>7}"
              f"{'compile RSS':>12}{'load s':>8}{'1st run s':>10}{'load RSS':>9}{'held':>7}")
    print(header + "\n" + "-" * len(header))
    for kind, target in [(k, t) for k in args.kinds.split(",") for t in args.targets.split(",")]:
        sizes = [0.0] if kind in FIXED else [float(s) for s in args.sizes.split(",")]
        for size in sizes:
            label = (kind if kind in FIXED else f"{kind}-{size:g}MB") + f" {target}"
            with tempfile.TemporaryDirectory() as tmp:
                path = os.path.join(tmp, "model.aot")
                c = _run_child("compile", kind, size, path, args.no_torch, args.rounds, target)
                if "error" in c:
                    print(f"{label:<26}{c['error']}")
                    continue
                ld = _run_child("load", kind, size, path, args.no_torch, target=target)
            pb = c["param_bytes"]
            torch_s = c.get("torch_s")
            ratio = f"{c['compile_s'] / torch_s:>6.2f}x" if torch_s else f"{'-':>7}"
            load = (f"{ld['load_s']:>8.2f}{ld['first_run_s']:>10.3f}{ld['load_peak'] / pb:>8.2f}x"
                    f"{ld['load_held'] / pb:>6.2f}x"
                    if "error" not in ld else "  " + ld["error"])
            print(f"{label:<26}{pb / 1e6:>10.1f}{c['artifact_bytes'] / 1e6:>12.1f}{c['compile_s']:>10.2f}"
                  f"{torch_s if torch_s else float('nan'):>9.2f}{ratio}{c['compile_peak'] / pb:>11.2f}x{load}",
                  flush=True)
            phases = " ".join(f"{k} {v:.2f}" for k, v in c["phases"].items())
            print(f"{'':<26}phases: {phases}", flush=True)
    print("\nRSS columns: peak resident memory the phase adds, over the parameter bytes "
          "(compile on top of the model, its build processes included; load on top of a bare runtime "
          "process; held: what load still holds when it returns).")


if __name__ == "__main__":
    main()
