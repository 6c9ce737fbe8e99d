"""The project's seed model: a 1000-500-100-1 multilayer perceptron.

Exercises the simplest compiler path: ``linear`` (addmm / matmul + bias after decomposition),
``relu`` and a rank-2 float32 input with a batch dimension.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SeedMLP"]

_INIT_SEED = 0
_INPUT_SEED = 1000


class SeedMLP(nn.Module):
    """Linear 1000->500, ReLU, Linear 500->100, ReLU, Linear 100->1. Input ``(batch, 1000)``."""

    def __init__(self, in_features: int = 1000, hidden: tuple[int, int] = (500, 100), out_features: int = 1,
                 seed: int = _INIT_SEED) -> None:
        super().__init__()
        self.in_features = in_features
        # Fork the global RNG so construction is deterministic without disturbing the caller's RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.fc1 = nn.Linear(in_features, hidden[0])
            self.fc2 = nn.Linear(hidden[0], hidden[1])
            self.fc3 = nn.Linear(hidden[1], out_features)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.fc1(x))
        x = self.relu(self.fc2(x))
        return self.fc3(x)

    def example_inputs(self, batch: int = 1) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(_INPUT_SEED)
        return (torch.randn(batch, self.in_features, generator=g),)
