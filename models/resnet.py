"""A small CIFAR-style ResNet (one BasicBlock per stage).

Exercises conv + BatchNorm (inference form, with non-trivial running statistics so that a wrong
batch-norm fold shows in the numbers), residual ``add`` + ``relu``, strided convolutions with a
1x1 conv+BN projection shortcut, ``adaptive_avg_pool2d(1)`` (global average pool), ``flatten``
and a linear classifier.
"""

from __future__ import annotations

import torch
from torch import nn

from models.common import randomize_batch_norms

__all__ = ["SmallResNet", "BasicBlock"]

_INIT_SEED = 0
_BN_SEED = 1
_INPUT_SEED = 1002


class BasicBlock(nn.Module):
    """conv3x3-bn-relu-conv3x3-bn + shortcut, then relu."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU()
        if stride != 1 or in_ch != out_ch:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_ch),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """stem 3->16, stages 16 / 32 (s2) / 64 (s2), GAP, linear 64->10. Input ``(batch,3,32,32)``."""

    def __init__(self, num_classes: int = 10, widths: tuple[int, int, int] = (16, 32, 64),
                 seed: int = _INIT_SEED) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.stem = nn.Sequential(
                nn.Conv2d(3, widths[0], 3, padding=1, bias=False),
                nn.BatchNorm2d(widths[0]),
                nn.ReLU(),
            )
            self.layer1 = BasicBlock(widths[0], widths[0], stride=1)
            self.layer2 = BasicBlock(widths[0], widths[1], stride=2)
            self.layer3 = BasicBlock(widths[1], widths[2], stride=2)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(widths[2], num_classes)
        randomize_batch_norms(self, seed + _BN_SEED)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(self.pool(x), 1)
        return self.fc(x)

    def example_inputs(self, batch: int = 1) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(_INPUT_SEED)
        return (torch.randn(batch, 3, 32, 32, generator=g),)
