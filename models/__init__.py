"""The model zoo: small, deterministic models that exercise the compiler end to end.

Every model class is constructible with no arguments, builds the same weights every time
(without touching the caller's global RNG), and has ``example_inputs(batch=1)`` returning a
tuple of deterministic random inputs with ``batch`` as dim 0.

=============  ==================  ===============================================================
name           class               exercises
=============  ==================  ===============================================================
mlp            ``SeedMLP``         linear, relu (the seed model, 1000-500-100-1)
lenet          ``LeNet``           conv2d, max_pool2d, flatten, linear
resnet         ``SmallResNet``     conv + BatchNorm (non-trivial stats), residual add, GAP
mobilenet      ``MobileNetLike``   depthwise conv, hardswish, squeeze-excite, inverted residual
transformer    ``TinyTransformer`` embedding, layer_norm, SDPA attention, gelu, mean
=============  ==================  ===============================================================
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .lenet import LeNet
from .mlp import SeedMLP
from .mobilenet import MobileNetLike
from .resnet import SmallResNet
from .transformer import TinyTransformer

__all__ = [
    "ZOO",
    "ModelSpec",
    "get_model",
    "SeedMLP",
    "LeNet",
    "SmallResNet",
    "MobileNetLike",
    "TinyTransformer",
]


@dataclass(frozen=True)
class ModelSpec:
    """A zoo entry: ``factory()`` builds the model (an ``nn.Module`` with ``example_inputs``)."""

    name: str
    factory: type[torch.nn.Module]
    description: str


ZOO: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("mlp", SeedMLP, "seed MLP 1000-500-100-1: linear, relu"),
        ModelSpec("lenet", LeNet, "LeNet-5 on 1x28x28: conv2d, max_pool2d, flatten, linear"),
        ModelSpec("resnet", SmallResNet,
                  "CIFAR-style ResNet on 3x32x32: conv+batch norm, residual add, projection shortcut, "
                  "global average pool"),
        ModelSpec("mobilenet", MobileNetLike,
                  "MobileNetV3-style on 3x64x64: depthwise conv, hardswish, hardsigmoid, squeeze-excite, "
                  "inverted residual"),
        ModelSpec("transformer", TinyTransformer,
                  "pre-LN Transformer encoder on 32 int64 tokens: embedding, layer_norm, "
                  "scaled_dot_product_attention, gelu, mean"),
    )
}


def get_model(name: str) -> ModelSpec:
    """The zoo entry called ``name``; ``KeyError`` naming the known models if there is none."""
    try:
        return ZOO[name]
    except KeyError:
        raise KeyError(f"unknown zoo model {name!r}; known models: {', '.join(sorted(ZOO))}") from None
