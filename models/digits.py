"""Trained classifiers on scikit-learn's ``load_digits`` (8x8 handwritten digits, shipped inside
scikit-learn, so nothing is downloaded): the real models that compression, quantization and the
HLS target are measured on.

``digits_data()`` splits the 1797 images into 1347 train / 450 test (seed 0), scaled to [0, 1].
``trained_model("mlp" | "cnn")`` trains ``DigitsMLP`` (64-256-128-10) or ``DigitsCNN`` with Adam
and a fixed seed (a few seconds on one core) and caches the result for the process.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class DigitsData:
    x_train: np.ndarray  # float32 [N, 64] in [0, 1]
    y_train: np.ndarray  # int64 [N]
    x_test: np.ndarray
    y_test: np.ndarray

    def images(self, x: np.ndarray) -> np.ndarray:
        """``x`` ([N, 64]) as [N, 1, 8, 8] images for ``DigitsCNN``."""
        return x.reshape(-1, 1, 8, 8)


@functools.lru_cache(maxsize=1)
def digits_data(seed: int = 0) -> DigitsData:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    n_train = 1347
    return DigitsData(x[:n_train], y[:n_train], x[n_train:], y[n_train:])


class DigitsMLP(nn.Module):
    """64-256-128-10 multilayer perceptron on flattened 8x8 digits."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def example_inputs(self, batch: int = 1) -> tuple[torch.Tensor]:
        return (torch.from_numpy(digits_data().x_test[:batch].copy()),)


class DigitsCNN(nn.Module):
    """A small CNN on 1x8x8 digits: conv-relu, conv-relu, max-pool, flatten, linear-relu, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def example_inputs(self, batch: int = 1) -> tuple[torch.Tensor]:
        data = digits_data()
        return (torch.from_numpy(data.images(data.x_test[:batch]).copy()),)


_MODELS = {"mlp": DigitsMLP, "cnn": DigitsCNN}


def model_inputs(kind: str, x: np.ndarray) -> np.ndarray:
    """Flattened digits ``x`` shaped for the model ``kind``."""
    return x.reshape(-1, 1, 8, 8) if kind == "cnn" else x.reshape(-1, 64)


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, *, epochs: int = 40, lr: float = 1e-3,
          batch: int = 64, seed: int = 0) -> nn.Module:
    """Adam on cross-entropy, minibatches shuffled with ``seed``; returns ``model`` in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(xt), generator=generator)
        for start in range(0, len(xt), batch):
            idx = order[start:start + batch]
            optimizer.zero_grad()
            loss_fn(model(xt[idx]), yt[idx]).backward()
            optimizer.step()
    return model.eval()


def accuracy(predict, x: np.ndarray, y: np.ndarray) -> float:
    """Fraction of ``x`` whose argmax of ``predict(x)`` (numpy in, logits out) equals ``y``."""
    logits = np.asarray(predict(x))
    return float((logits.argmax(axis=1) == y).mean())


@functools.lru_cache(maxsize=None)
def trained_model(kind: str = "mlp", epochs: int = 40, seed: int = 0) -> nn.Module:
    """``DigitsMLP`` ("mlp") or ``DigitsCNN`` ("cnn") trained on the digits training split."""
    if kind not in _MODELS:
        raise ValueError(f"unknown digits model {kind!r}; choose one of {', '.join(_MODELS)}")
    data = digits_data()
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = _MODELS[kind]()
    finally:
        torch.random.set_rng_state(state)
    return train(model, model_inputs(kind, data.x_train), data.y_train, epochs=epochs, seed=seed)


def trained_mlp() -> nn.Module:
    """Factory for the CLI: ``compile models/digits.py:trained_mlp``."""
    return trained_model("mlp")


def trained_cnn() -> nn.Module:
    """Factory for the CLI: ``compile models/digits.py:trained_cnn``."""
    return trained_model("cnn")


def write_npz(directory: str, kind: str = "mlp") -> tuple[str, str]:
    """``calibration.npz`` (200 training images) and ``eval.npz`` (the test split with labels) for
    the CLI's --calibration and --eval, shaped for model ``kind``."""
    import os

    data = digits_data()
    calibration = os.path.join(directory, f"digits_{kind}_calibration.npz")
    evaluation = os.path.join(directory, f"digits_{kind}_eval.npz")
    np.savez(calibration, x=model_inputs(kind, data.x_train[:200]))
    np.savez(evaluation, x=model_inputs(kind, data.x_test), labels=data.y_test)
    return calibration, evaluation


def eager_accuracy(model: nn.Module, kind: str) -> float:
    data = digits_data()

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(model_inputs(kind, x).copy())).numpy()

    return accuracy(predict, data.x_test, data.y_test)


__all__ = ["DigitsCNN", "DigitsData", "DigitsMLP", "accuracy", "digits_data", "eager_accuracy", "model_inputs",
           "train", "trained_cnn", "trained_mlp", "trained_model", "write_npz"]


if __name__ == "__main__":  # python models/digits.py OUT_DIR: data files for the CLI examples
    import sys

    for kind in ("mlp", "cnn"):
        print(*write_npz(sys.argv[1] if len(sys.argv) > 1 else ".", kind))
