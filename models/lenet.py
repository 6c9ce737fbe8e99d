"""LeNet-5 for 28x28 grayscale images.

Exercises 2-D convolution with and without padding, ``max_pool2d``, ``flatten`` of an NCHW
tensor (``torch.flatten(x, 1)``: a reshape with a symbolic batch dim) and a small linear head.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LeNet"]

_INIT_SEED = 0
_INPUT_SEED = 1001


class LeNet(nn.Module):
    """conv(1->6,5x5,p2)-relu-pool, conv(6->16,5x5)-relu-pool, 400-120-84-10. Input ``(batch,1,28,28)``."""

    def __init__(self, num_classes: int = 10, seed: int = _INIT_SEED) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.conv1 = nn.Conv2d(1, 6, kernel_size=5, padding=2)
            self.conv2 = nn.Conv2d(6, 16, kernel_size=5)
            self.fc1 = nn.Linear(16 * 5 * 5, 120)
            self.fc2 = nn.Linear(120, 84)
            self.fc3 = nn.Linear(84, num_classes)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.relu(self.conv1(x)))   # (B, 6, 14, 14)
        x = self.pool(self.relu(self.conv2(x)))   # (B, 16, 5, 5)
        x = torch.flatten(x, 1)                   # (B, 400)
        x = self.relu(self.fc1(x))
        x = self.relu(self.fc2(x))
        return self.fc3(x)

    def example_inputs(self, batch: int = 1) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(_INPUT_SEED)
        return (torch.randn(batch, 1, 28, 28, generator=g),)
