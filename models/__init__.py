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

``REAL`` lists real architectures at their real sizes, with random weights, for benchmarks (too
big for the default test suite, so the zoo tests do not pick them up). Each class also has a
``small()`` constructor, the same structure at a fraction of the size, for fast tests.

=============  ==================  ===============================================================
name           class               model
=============  ==================  ===============================================================
resnet18       ``ResNet18``        ResNet-18, 3x224x224, 1000 classes
mobilenet_v2   ``MobileNetV2``     MobileNetV2 width 1.0, 3x224x224, 1000 classes
efficientnet_lite0 ``EfficientNetLite0`` EfficientNet-Lite0 (timm ``efficientnet_lite0``), 3x224x224
bert           ``BertEncoder``     BERT-base encoder: 12 layers, hidden 768, 12 heads, 128 tokens
gpt2           ``GPT2Decoder``     GPT-2 small + tied LM head (vocab 50257), causal, 128 tokens
lstm_lm        ``LSTMLanguageModel`` 2-layer LSTM word LM (10k words, hidden 420), 35 tokens
gru_tagger     ``GRUTagger``       embedding + bidirectional GRU (hidden 128) + linear, 32 tokens
=============  ==================  ===============================================================
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .bert import BertEncoder
from .efficientnet_lite import EfficientNetLite0
from .gpt2 import GPT2Decoder
from .lenet import LeNet
from .mlp import SeedMLP
from .mobilenet import MobileNetLike
from .mobilenet_v2 import MobileNetV2
from .recurrent import GRUTagger, LSTMLanguageModel
from .resnet import SmallResNet
from .resnet18 import ResNet18
from .transformer import TinyTransformer

__all__ = [
    "ZOO",
    "REAL",
    "ModelSpec",
    "get_model",
    "get_real_model",
    "SeedMLP",
    "LeNet",
    "SmallResNet",
    "MobileNetLike",
    "TinyTransformer",
    "ResNet18",
    "MobileNetV2",
    "EfficientNetLite0",
    "BertEncoder",
    "GPT2Decoder",
    "LSTMLanguageModel",
    "GRUTagger",
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


REAL: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("resnet18", ResNet18, "ResNet-18 on 3x224x224, 1000 classes"),
        ModelSpec("mobilenet_v2", MobileNetV2, "MobileNetV2 (width 1.0) on 3x224x224, 1000 classes"),
        ModelSpec("efficientnet_lite0", EfficientNetLite0,
                  "EfficientNet-Lite0 on 3x224x224, 1000 classes: ReLU6 MBConv blocks with 3x3 and 5x5 depthwise "
                  "convolutions, no squeeze-excite"),
        ModelSpec("bert", BertEncoder, "BERT-base encoder: 12 layers, hidden 768, 12 heads, FFN 3072, 128 tokens"),
        ModelSpec("gpt2", GPT2Decoder,
                  "GPT-2 small decoder: 12 layers, hidden 768, 12 heads, causal, 128 tokens, tied LM head over "
                  "50257 words"),
        ModelSpec("lstm_lm", LSTMLanguageModel,
                  "LSTM language model: embedding 10k x 420, 2-layer LSTM (hidden 420), decoder to 10k words, "
                  "35 tokens"),
        ModelSpec("gru_tagger", GRUTagger,
                  "GRU tagger: embedding 5k x 100, bidirectional GRU (hidden 128), linear to 17 tags, 32 tokens"),
    )
}


def get_model(name: str) -> ModelSpec:
    """The zoo entry called ``name``; ``KeyError`` naming the known models if there is none."""
    try:
        return ZOO[name]
    except KeyError:
        raise KeyError(f"unknown zoo model {name!r}; known models: {', '.join(sorted(ZOO))}") from None


def get_real_model(name: str) -> ModelSpec:
    """The real-size entry called ``name``; ``KeyError`` naming the known ones if there is none."""
    try:
        return REAL[name]
    except KeyError:
        raise KeyError(f"unknown real model {name!r}; known models: {', '.join(sorted(REAL))}") from None
