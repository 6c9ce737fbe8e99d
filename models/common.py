"""Helpers shared by the zoo models."""

from __future__ import annotations

import torch
from torch import nn


def randomize_batch_norms(module: nn.Module, seed: int) -> None:
    """Give every BatchNorm random affine parameters and running statistics (variance > 0), so a
    batch-norm folding bug shows in the numbers (fresh BN layers are the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.2)
