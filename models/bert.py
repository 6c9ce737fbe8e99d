"""A BERT-base-sized encoder (12 layers, hidden 768, 12 heads, FFN 3072, 128 tokens), random
weights, written the way Hugging Face's ``BertModel`` computes it (no transformers import).

Embeddings: word + learned position + token-type (all type 0), then LayerNorm (eps 1e-12).
Each layer is post-LN: separate q/k/v projections, eager attention (matmul, scale, softmax,
matmul), output projection + residual + LayerNorm, then FFN (dense, exact GELU, dense) + residual
+ LayerNorm. Input: int64 token ids ``(batch, seq_len)``; output: the last hidden state
``(batch, seq_len, hidden)``.
"""

from __future__ import annotations

import torch
from torch import nn

from models.common import init_transformer_weights, multi_head_attention

__all__ = ["BertEncoder"]

_INIT_SEED = 0
_INPUT_SEED = 2003
_LN_EPS = 1e-12


class BertLayer(nn.Module):
    def __init__(self, hidden: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.attn_out = nn.Linear(hidden, hidden)
        self.attn_norm = nn.LayerNorm(hidden, eps=_LN_EPS)
        self.intermediate = nn.Linear(hidden, ffn)
        self.act = nn.GELU()
        self.output = nn.Linear(ffn, hidden)
        self.out_norm = nn.LayerNorm(hidden, eps=_LN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context = multi_head_attention(self.query(x), self.key(x), self.value(x), self.heads)
        x = self.attn_norm(x + self.attn_out(context))
        return self.out_norm(x + self.output(self.act(self.intermediate(x))))


class BertEncoder(nn.Module):
    """BERT-base by default; ``layers``, ``hidden``, ``heads``, ``ffn``, ``vocab``, ``seq_len``
    shrink it for fast tests."""

    def __init__(self, layers: int = 12, hidden: int = 768, heads: int = 12, ffn: int = 3072, vocab: int = 30522,
                 seq_len: int = 128, max_positions: int = 512, seed: int = _INIT_SEED) -> None:
        super().__init__()
        self.vocab = vocab
        self.seq_len = seq_len
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.word = nn.Embedding(vocab, hidden)
            self.position = nn.Embedding(max_positions, hidden)
            self.token_type = nn.Embedding(2, hidden)
            self.embed_norm = nn.LayerNorm(hidden, eps=_LN_EPS)
            self.layers = nn.ModuleList(BertLayer(hidden, heads, ffn) for _ in range(layers))
            init_transformer_weights(self)
        self.register_buffer("position_ids", torch.arange(max_positions).unsqueeze(0), persistent=False)
        self.register_buffer("token_type_ids", torch.zeros(1, max_positions, dtype=torch.int64), persistent=False)

    @classmethod
    def small(cls) -> "BertEncoder":
        """Two narrow layers over 16 tokens, for tests."""
        return cls(layers=2, hidden=64, heads=4, ffn=256, vocab=1000, seq_len=16, max_positions=32)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        s = tokens.shape[1]
        x = self.word(tokens) + self.position(self.position_ids[:, :s]) + self.token_type(self.token_type_ids[:, :s])
        x = self.embed_norm(x)
        for layer in self.layers:
            x = layer(x)
        return x

    def example_inputs(self, batch: int = 1) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(_INPUT_SEED)
        return (torch.randint(0, self.vocab, (batch, self.seq_len), generator=g, dtype=torch.int64),)
