"""Helpers shared by the zoo models."""

from __future__ import annotations

import math

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


def init_transformer_weights(module: nn.Module, std: float = 0.02) -> None:
    """BERT/GPT-2 initialisation (normal(0, std) weights, zero biases) with random LayerNorm affine
    parameters, so a fused layer norm that drops its scale or shift shows in the numbers."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                m.weight.normal_(0.0, std)
                if getattr(m, "bias", None) is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.LayerNorm):
                m.weight.copy_(torch.rand(m.weight.shape) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape) * 0.1)


def multi_head_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n_heads: int,
                         keep: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) [masked]) v over ``n_heads`` heads, written out as Hugging Face's
    eager attention does (matmul, scale, mask, softmax, matmul). ``q``, ``k``, ``v``: (B, S, D);
    ``keep``: an optional (S, S) bool mask, False where a query must not see a key."""
    b, s, d = q.shape
    head_dim = d // n_heads

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(b, s, n_heads, head_dim).transpose(1, 2)                 # (B, H, S, Dh)

    scores = torch.matmul(split(q), split(k).transpose(-1, -2)) / math.sqrt(head_dim)
    if keep is not None:
        scores = torch.where(keep, scores, torch.finfo(scores.dtype).min)
    context = torch.matmul(torch.softmax(scores, dim=-1), split(v))              # (B, H, S, Dh)
    return context.transpose(1, 2).reshape(b, s, d)
