"""Prepare the GPU check folder: cuda artifacts, inputs, CPU fp32 references, the model code and
check.py, plus (when the tool has it) the runtime bundle, in at most 60 MiB.

    python bench/gpu_check/prepare.py [--out build/gpu_check] [--arch sm_90] [--target cuda|llvm]

Cases: every zoo model at batch 1 and 64, and ResNet-18 and BERT-base at batch 1 and 8 in their
``small()`` form (same architecture, reduced widths/depth): at full size their fp32 weights
(ResNet-18 42 MiB, BERT-base 384 MiB as artifacts) do not fit the 60 MiB pack next to the ~27 MiB
runtime. References are PyTorch eager on the CPU in fp32. ``--target llvm`` builds the same
folder with CPU artifacts, for ``check.py --cpu-dry-run`` (the tests). The folder is then copied to
the GPU machine and ``python3 check.py`` run there (see check.py).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

MAX_PACK_BYTES = 60 << 20
BUNDLE_COMMAND = ["-m", "compiler.driver.tool", "bundle"]
BUNDLE_ARGS = ["--python", "3.12"]  # the default platform, manylinux_2_28_x86_64, has the TVM wheels


def cases(quick: bool = False) -> list[dict]:
    """(case name, model source, batch) for each artifact to build."""
    from models import REAL, ZOO

    zoo = sorted(ZOO) if not quick else ["mlp", "lenet"]
    out = [{"name": f"{n}_b{b}", "model": n, "kind": "zoo", "batch": b} for n in zoo for b in (1, 64)]
    if not quick:
        out += [{"name": f"{n}_small_b{b}", "model": n, "kind": "real_small", "batch": b}
                for n in ("resnet18", "bert") for b in (1, 8) if n in REAL]
    return out


def build_model(case: dict):
    from models import REAL, ZOO

    if case["kind"] == "zoo":
        return ZOO[case["model"]].factory().eval()
    return REAL[case["model"]].factory.small().eval()


def prepare_case(case: dict, out: Path, target) -> dict:
    import numpy as np
    import torch

    import compiler

    model = build_model(case)
    inputs = model.example_inputs(case["batch"])
    art = out / "artifacts" / f"{case['name']}.aot"
    compiler.compile(model, inputs, target=target, output=art, verify=False)
    with torch.no_grad():
        ref = model(*inputs)
    refs = [ref] if isinstance(ref, torch.Tensor) else list(ref)
    arrays = {f"input{i}": t.detach().numpy() for i, t in enumerate(inputs)}
    arrays.update({f"ref{i}": t.detach().float().numpy() for i, t in enumerate(refs)})
    np.savez(out / "data" / f"{case['name']}.npz", **arrays)
    return {**case, "artifact": f"artifacts/{art.name}", "data": f"data/{case['name']}.npz",
            "inputs": len(inputs), "outputs": len(refs), "artifact_bytes": art.stat().st_size}


def add_bundle(out: Path) -> str:
    """Run the bundle command into ``out/bundle``; a clear note when this checkout lacks it."""
    cmd = [sys.executable, *BUNDLE_COMMAND, str(out / "bundle"), *BUNDLE_ARGS]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=_env())
    if proc.returncode != 0:
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return f"bundle step skipped: `{' '.join(cmd[1:])}` failed here ({last[0][:200]}); check.py needs it on a " \
               "machine without TVM"
    return "bundle: " + str(out / "bundle")


def _env():
    import os

    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "build" / "gpu_check"))
    parser.add_argument("--arch", default="sm_90")
    parser.add_argument("--target", choices=["cuda", "llvm"], default="cuda")
    parser.add_argument("--quick", action="store_true", help="two small zoo models only (tests)")
    parser.add_argument("--no-bundle", action="store_true", help="skip the runtime bundle (tests, dry runs)")
    args = parser.parse_args(argv)
    import compiler

    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    for sub in ("artifacts", "data"):
        (out / sub).mkdir(parents=True)
    target = compiler.CudaOptions(cuda_arch=args.arch) if args.target == "cuda" else "llvm"
    done = []
    for case in cases(args.quick):
        done.append(prepare_case(case, out, target))
        print(f"{case['name']}: {done[-1]['artifact_bytes'] / 2**20:.1f} MiB", flush=True)
    shutil.copytree(ROOT / "models", out / "models", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(Path(__file__).with_name("check.py"), out / "check.py")
    (out / "cases.json").write_text(json.dumps({"target": args.target, "arch": args.arch, "cases": done}, indent=1))
    print(add_bundle(out) if not args.no_bundle else "bundle step skipped (--no-bundle)")
    total = folder_bytes(out)
    print(f"pack: {out} {total / 2**20:.1f} MiB (limit {MAX_PACK_BYTES >> 20} MiB)")
    if total > MAX_PACK_BYTES:
        biggest = sorted(done, key=lambda c: -c["artifact_bytes"])[:3]
        print("prepare: the pack exceeds the limit; biggest artifacts: "
              + ", ".join(f"{c['name']} {c['artifact_bytes'] / 2**20:.1f} MiB" for c in biggest), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
