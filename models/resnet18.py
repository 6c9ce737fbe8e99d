"""ResNet-18 at its real size (ImageNet, 3x224x224, 1000 classes), with random weights.

The torchvision architecture written out here (no torchvision import, no downloads): a 7x7
stride-2 stem conv + BN + ReLU, a 3x3 stride-2 max pool, four stages of two BasicBlocks
(64, 128, 256, 512 channels; stages 2-4 start with stride 2 and a 1x1 conv + BN projection),
global average pool and a linear classifier. Convolutions get torchvision's He init and every
BatchNorm random running statistics, so a wrong batch-norm fold shows in the numbers.
"""

from __future__ import annotations

import torch
from torch import nn

from models.common import randomize_batch_norms
from models.resnet import BasicBlock

__all__ = ["ResNet18"]

_INIT_SEED = 0
_BN_SEED = 1
_INPUT_SEED = 2001


class ResNet18(nn.Module):
    """ResNet-18; ``widths``, ``blocks`` and ``image_size`` shrink it for fast tests.

    Input ``(batch, 3, image_size, image_size)``; output logits ``(batch, num_classes)``.
    """

    def __init__(self, num_classes: int = 1000, widths: tuple[int, ...] = (64, 128, 256, 512),
                 blocks: tuple[int, ...] = (2, 2, 2, 2), image_size: int = 224, seed: int = _INIT_SEED) -> None:
        super().__init__()
        self.image_size = image_size
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.stem = nn.Sequential(
                nn.Conv2d(3, widths[0], 7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(widths[0]),
                nn.ReLU(),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
            stages: list[nn.Module] = []
            in_ch = widths[0]
            for i, (width, count) in enumerate(zip(widths, blocks)):
                stride = 1 if i == 0 else 2
                stage = [BasicBlock(in_ch, width, stride)] + [BasicBlock(width, width, 1) for _ in range(count - 1)]
                stages.append(nn.Sequential(*stage))
                in_ch = width
            self.stages = nn.Sequential(*stages)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(in_ch, num_classes)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        randomize_batch_norms(self, seed + _BN_SEED)

    @classmethod
    def small(cls) -> "ResNet18":
        """The same structure at a fraction of the cost, for tests."""
        return cls(num_classes=10, widths=(8, 16, 16, 32), blocks=(1, 1, 1, 1), image_size=32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))

    def example_inputs(self, batch: int = 1) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(_INPUT_SEED)
        return (torch.randn(batch, 3, self.image_size, self.image_size, generator=g),)
