"""The seed's compression walk-through on its own MLP (1000-500-100-1): train -> compress ->
fine-tune -> quantize -> test, every step through the public API.

The task is a synthetic binary classification (scikit-learn's ``make_classification``, fixed
seed: nothing is downloaded). Fine-tuning runs on the pruned float graph and quantization comes
last, because int8 post-training quantization needs the final weights to calibrate against.

    python examples/compress_demo.py        # (make compress-demo) writes out/seed_*.aot
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def data(seed: int = 0):
    from sklearn.datasets import make_classification

    x, y = make_classification(n_samples=3000, n_features=1000, n_informative=40, n_redundant=20,
                               class_sep=1.5, random_state=seed)
    x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
    y = y.astype(np.float32).reshape(-1, 1)
    return x[:2400], y[:2400], x[2400:], y[2400:]


def train(model: nn.Module, x, y, epochs: int = 6, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(xt))
        for start in range(0, len(xt), 64):
            idx = order[start:start + 64]
            optimizer.zero_grad()
            loss_fn(model(xt[idx]), yt[idx]).backward()
            optimizer.step()
    return model.eval()


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float(((np.asarray(logits) > 0) == (y > 0.5)).mean())


def main() -> int:
    warnings.filterwarnings("ignore", category=FutureWarning)  # torch's own deprecation notices
    import compiler
    from compiler.driver.finetune import finetune
    from models.mlp import SeedMLP

    out = ROOT / "out"
    out.mkdir(exist_ok=True)
    x_train, y_train, x_test, y_test = data()
    example = (torch.from_numpy(x_test[:1]),)

    model = train(SeedMLP(), x_train, y_train)
    with torch.no_grad():
        float_acc = accuracy(model(torch.from_numpy(x_test)).numpy(), y_test)
    fp32 = compiler.compile(model, example, dynamic_batch=True, output=out / "seed_fp32.aot")
    print(f"1. trained float MLP: test accuracy {float_acc:.2%}, artifact {os.path.getsize(fp32.path):,} bytes")

    pruned = compiler.compile(model, example, dynamic_batch=True, prune=compiler.PruneOptions(0.5, structure="channel"),
                              output=out / "seed_pruned.aot")
    pruned_acc = accuracy(pruned.load()(x_test), y_test)
    params = pruned.report.compression
    print(f"2. compressed (50% of channels pruned): parameters {params['parameters_before']:,} -> "
          f"{params['parameters_after']:,}, test accuracy {pruned_acc:.2%}")

    tuned = finetune(pruned.graph, x_train, y_train, epochs=3, loss="bce")
    with torch.no_grad():
        tuned_acc = accuracy(tuned(torch.from_numpy(x_test)).numpy(), y_test)
    print(f"3. fine-tuned the pruned graph (as a torch module): test accuracy {tuned_acc:.2%}")

    final = compiler.compile(tuned, example, dynamic_batch=True, quantize=compiler.QuantizeOptions(
                                 "int8", calibration=[(x_train[i:i + 64],) for i in range(0, 512, 64)]),
                             output=out / "seed_pruned_int8.aot")
    final_acc = accuracy(compiler.load(final.path)(x_test), y_test)
    size = os.path.getsize(final.path)
    print(f"4. quantized to int8 and tested: accuracy {final_acc:.2%} (float {float_acc:.2%}), artifact "
          f"{size:,} bytes ({size / os.path.getsize(fp32.path):.2f}x of float)")
    drop = float_acc - final_acc
    if drop > 0.02:
        print(f"accuracy dropped by {drop:.2%}, more than 2 points", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
