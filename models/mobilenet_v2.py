"""MobileNetV2 at its real size (ImageNet, 3x224x224, width 1.0, 1000 classes), random weights.

The torchvision architecture written out here: a 3x3 stride-2 stem conv, 17 inverted residual
blocks (1x1 expand + ReLU6, 3x3 depthwise + ReLU6, 1x1 linear projection, residual add when the
shape is kept) following the paper's (t, c, n, s) table, a 1x1 conv to 1280 channels, global
average pool and a linear classifier (dropout is the identity at inference and is left out).
"""

from __future__ import annotations

import torch
from torch import nn

from models.common import randomize_batch_norms

__all__ = ["MobileNetV2"]

_INIT_SEED = 0
_BN_SEED = 1
_INPUT_SEED = 2002

# (expansion t, output channels c, repeats n, first stride s), from the MobileNetV2 paper.
_BLOCKS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def _divisible(channels: float, divisor: int = 8) -> int:
    """Round to a multiple of ``divisor`` without losing more than 10% (torchvision's rule)."""
    rounded = max(divisor, int(channels + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * channels else rounded


def _conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, relu6: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
    ]
    if relu6:
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


class InvertedResidualV2(nn.Module):
    """[1x1 expand + ReLU6] -> kxk depthwise + ReLU6 -> 1x1 project (+ x when shapes match); no
    squeeze-excite. MobileNetV2 uses k = 3; EfficientNet-Lite's MBConv blocks are this block with
    k = 3 or 5, and with ``expansion == 1`` it is the depthwise-separable block."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int, kernel: int = 3) -> None:
        super().__init__()
        hidden = in_ch * expansion
        self.use_residual = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = [_conv_bn(in_ch, hidden, 1)] if expansion != 1 else []
        layers += [_conv_bn(hidden, hidden, kernel, stride=stride, groups=hidden), _conv_bn(hidden, out_ch, 1, relu6=False)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2; ``width`` and ``image_size`` shrink it for fast tests.

    Input ``(batch, 3, image_size, image_size)``; output logits ``(batch, num_classes)``.
    """

    def __init__(self, num_classes: int = 1000, width: float = 1.0, image_size: int = 224,
                 seed: int = _INIT_SEED) -> None:
        super().__init__()
        self.image_size = image_size
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            in_ch = _divisible(32 * width)
            last_ch = _divisible(1280 * max(1.0, width))
            layers: list[nn.Module] = [_conv_bn(3, in_ch, 3, stride=2)]
            for expansion, channels, repeats, stride in _BLOCKS:
                out_ch = _divisible(channels * width)
                for i in range(repeats):
                    layers.append(InvertedResidualV2(in_ch, out_ch, stride if i == 0 else 1, expansion))
                    in_ch = out_ch
            layers.append(_conv_bn(in_ch, last_ch, 1))
            self.features = nn.Sequential(*layers)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Linear(last_ch, num_classes)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out")
        randomize_batch_norms(self, seed + _BN_SEED)

    @classmethod
    def small(cls) -> "MobileNetV2":
        """All 17 blocks at a quarter of the width on 32x32 images, for tests."""
        return cls(num_classes=10, width=0.25, image_size=32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))

    def example_inputs(self, batch: int = 1) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(_INPUT_SEED)
        return (torch.randn(batch, 3, self.image_size, self.image_size, generator=g),)
