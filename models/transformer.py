"""A tiny pre-LayerNorm Transformer encoder for sequence classification.

Exercises int64 token inputs and ``embedding``, a learned positional parameter added with
broadcasting, ``layer_norm``, separate q/k/v linears on rank-3 tensors, ``view``/``reshape`` +
``transpose`` to and from heads with a symbolic batch dim, ``scaled_dot_product_attention``,
``gelu``, residual adds, and a ``mean`` over the sequence dim.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["TinyTransformer", "EncoderLayer", "SelfAttention"]

_INIT_SEED = 0
_INPUT_SEED = 1004


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate q/k/v projections."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        assert d_model % n_heads == 0
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        b, s = t.shape[0], t.shape[1]
        return t.reshape(b, s, self.n_heads, self.head_dim).transpose(1, 2)   # (B, H, S, Dh)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape[0], x.shape[1], x.shape[2]
        q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
        y = F.scaled_dot_product_attention(q, k, v)                            # (B, H, S, Dh)
        y = y.transpose(1, 2).reshape(b, s, d)
        return self.out(y)


class EncoderLayer(nn.Module):
    """x + attn(ln1(x)); x + mlp(ln2(x))."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, n_heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, d_ff)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(d_ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(self.act(self.fc1(self.ln2(x))))


class TinyTransformer(nn.Module):
    """Embedding(1000, 64) + positions (32), 2 encoder layers, LN, mean over seq, linear 64->10.

    Input: int64 token ids ``(batch, 32)``.
    """

    def __init__(self, vocab: int = 1000, seq_len: int = 32, d_model: int = 64, n_heads: int = 4,
                 d_ff: int = 256, n_layers: int = 2, num_classes: int = 10, seed: int = _INIT_SEED) -> None:
        super().__init__()
        self.vocab = vocab
        self.seq_len = seq_len
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.embed = nn.Embedding(vocab, d_model)
            self.pos = nn.Parameter(torch.randn(1, seq_len, d_model) * 0.02)
            self.layers = nn.ModuleList(EncoderLayer(d_model, n_heads, d_ff) for _ in range(n_layers))
            self.ln_f = nn.LayerNorm(d_model)
            self.head = nn.Linear(d_model, num_classes)
            # Non-trivial LayerNorm affine parameters, so a fused layer norm that drops them shows.
            with torch.no_grad():
                for m in self.modules():
                    if isinstance(m, nn.LayerNorm):
                        m.weight.copy_(torch.rand(d_model) + 0.5)
                        m.bias.copy_(torch.randn(d_model) * 0.1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.pos                 # (B, S, D)
        for layer in self.layers:
            x = layer(x)
        x = self.ln_f(x).mean(dim=1)                      # (B, D)
        return self.head(x)

    def example_inputs(self, batch: int = 1) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(_INPUT_SEED)
        return (torch.randint(0, self.vocab, (batch, self.seq_len), generator=g, dtype=torch.int64),)
