"""A small MobileNetV3-style network.

Exercises depthwise convolution (``groups == channels``), ``hardswish`` / ``hardsigmoid``,
squeeze-excite (global average pool -> 1x1 convs -> channel-wise ``mul`` with broadcasting),
inverted residual blocks with and without the residual ``add``, a stride-2 block, and conv + BN
with non-trivial running statistics.
"""

from __future__ import annotations

import torch
from torch import nn

from models.common import randomize_batch_norms

__all__ = ["MobileNetLike", "InvertedResidual", "SqueezeExcite"]

_INIT_SEED = 0
_BN_SEED = 1
_INPUT_SEED = 1003


def _conv_bn(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1,
             act: type[nn.Module] | None = None) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class SqueezeExcite(nn.Module):
    """x * hardsigmoid(conv1x1(relu(conv1x1(avgpool(x)))))."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.relu = nn.ReLU()
        self.expand = nn.Conv2d(reduced, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.gate(self.expand(self.relu(self.reduce(self.pool(x)))))
        return x * s


class InvertedResidual(nn.Module):
    """expand 1x1 -> depthwise 3x3 -> squeeze-excite -> project 1x1 (+ residual when shapes match)."""

    def __init__(self, in_ch: int, expand_ch: int, out_ch: int, stride: int, act: type[nn.Module]) -> None:
        super().__init__()
        self.use_residual = stride == 1 and in_ch == out_ch
        self.expand = _conv_bn(in_ch, expand_ch, 1, act=act)
        self.depthwise = _conv_bn(expand_ch, expand_ch, 3, stride=stride, groups=expand_ch, act=act)
        self.se = SqueezeExcite(expand_ch, max(8, expand_ch // 4))
        self.project = _conv_bn(expand_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.se(self.depthwise(self.expand(x))))
        if self.use_residual:
            out = out + x
        return out


class MobileNetLike(nn.Module):
    """stem 3->16 s2, blocks 16->16 (ReLU), 16->24 s2, 24->24 (Hardswish), head 1x1 -> GAP -> 10.

    Input ``(batch, 3, 64, 64)``.
    """

    def __init__(self, num_classes: int = 10, seed: int = _INIT_SEED) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.stem = _conv_bn(3, 16, 3, stride=2, act=nn.Hardswish)
            self.blocks = nn.Sequential(
                InvertedResidual(16, 32, 16, stride=1, act=nn.ReLU),        # residual
                InvertedResidual(16, 64, 24, stride=2, act=nn.Hardswish),   # downsample, no residual
                InvertedResidual(24, 72, 24, stride=1, act=nn.Hardswish),   # residual
            )
            self.head_conv = nn.Conv2d(24, 96, 1)
            self.head_act = nn.Hardswish()
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Linear(96, num_classes)
        randomize_batch_norms(self, seed + _BN_SEED)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        x = self.pool(self.head_act(self.head_conv(x)))
        return self.classifier(torch.flatten(x, 1))

    def example_inputs(self, batch: int = 1) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(_INPUT_SEED)
        return (torch.randn(batch, 3, 64, 64, generator=g),)
