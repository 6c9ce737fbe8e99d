"""EfficientNet-Lite0 at its real size (ImageNet, 3x224x224, 1000 classes), random weights.

The architecture timm calls ``efficientnet_lite0`` written out here (no timm import, no
downloads): EfficientNet-B0's stages with the edge-friendly changes of the Lite family, i.e.
ReLU6 everywhere instead of swish, no squeeze-excite, and a fixed 32-channel stem and
1280-channel head. A 3x3 stride-2 stem conv, a depthwise-separable block, 15 MBConv blocks
(1x1 expand + ReLU6, 3x3 or 5x5 depthwise + ReLU6, 1x1 linear projection, residual add when the
shape is kept), a 1x1 conv to 1280 channels, global average pool and a linear classifier
(dropout and drop-path are the identity at inference and are left out). Padding is PyTorch's
symmetric ``kernel // 2`` (timm's ``efficientnet_lite0``; the ``tf_`` variant pads like
TensorFlow's "same"). Unlike MobileNetV2, five of its blocks use 5x5 depthwise convolutions.
"""

from __future__ import annotations

import torch
from torch import nn

from models.common import randomize_batch_norms
from models.mobilenet_v2 import InvertedResidualV2, _conv_bn, _divisible

__all__ = ["EfficientNetLite0"]

_INIT_SEED = 0
_BN_SEED = 1
_INPUT_SEED = 2003

# (expansion, depthwise kernel, first stride, output channels, repeats): EfficientNet-B0's stages.
_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
           (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0; ``width`` and ``image_size`` shrink it for fast tests (the stem and
    head keep their fixed widths at ``width`` 1.0, as in the Lite family).

    Input ``(batch, 3, image_size, image_size)``; output logits ``(batch, num_classes)``.
    """

    def __init__(self, num_classes: int = 1000, width: float = 1.0, image_size: int = 224,
                 seed: int = _INIT_SEED) -> None:
        super().__init__()
        self.image_size = image_size
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            in_ch = _divisible(32 * width)
            head_ch = _divisible(1280 * width)
            self.stem = _conv_bn(3, in_ch, 3, stride=2)
            blocks: list[nn.Module] = []
            for expansion, kernel, stride, channels, repeats in _STAGES:
                out_ch = _divisible(channels * width)
                for i in range(repeats):
                    blocks.append(InvertedResidualV2(in_ch, out_ch, stride if i == 0 else 1, expansion, kernel))
                    in_ch = out_ch
            self.blocks = nn.Sequential(*blocks)
            self.head = _conv_bn(in_ch, head_ch, 1)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Linear(head_ch, num_classes)
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out")
        randomize_batch_norms(self, seed + _BN_SEED)

    @classmethod
    def small(cls) -> "EfficientNetLite0":
        """All 16 blocks (3x3 and 5x5 depthwise) at a quarter of the width on 32x32 images, for tests."""
        return cls(num_classes=10, width=0.25, image_size=32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.head(self.blocks(self.stem(x))))
        return self.classifier(torch.flatten(x, 1))

    def example_inputs(self, batch: int = 1) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(_INPUT_SEED)
        return (torch.randn(batch, 3, self.image_size, self.image_size, generator=g),)
