"""`make demo`: compile the seed MLP (1000-500-100-1) to ONNX, load the artifact, run it, and
check it against PyTorch eager.

Runs the same steps a user would: the `compile` CLI writes out/mlp.aot (printing its report),
then `compiler.load` runs it with numpy in and numpy out.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    out_dir = ROOT / "out"
    out_dir.mkdir(exist_ok=True)
    artifact = out_dir / "mlp.aot"
    cli = Path(sys.executable).parent / "compile"
    cmd = [str(cli), "models/mlp.py:SeedMLP", "--target", "onnx", "--dynamic-batch", "-o", str(artifact)]
    print("$ compile " + " ".join(cmd[1:]), flush=True)
    status = subprocess.call(cmd, cwd=ROOT)
    if status != 0:
        return status

    import torch

    import compiler
    from models.mlp import SeedMLP

    model = compiler.load(artifact)
    print(f"\nloaded {model}")
    x = np.random.default_rng(0).standard_normal((8, 1000)).astype(np.float32)
    y = model(x)
    with torch.no_grad():
        expected = SeedMLP().eval()(torch.from_numpy(x)).numpy()
    err = float(np.max(np.abs(y - expected)))
    print(f"ran a batch of {x.shape[0]}: output {y.dtype}{list(y.shape)}, first values {y[:3, 0].round(5).tolist()}")
    print(f"check against PyTorch eager: max abs error {err:.3g} -> {'OK' if err < 1e-4 else 'MISMATCH'}")
    return 0 if err < 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
