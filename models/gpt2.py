"""A GPT-2-sized decoder (12 layers, hidden 768, 12 heads, 128 tokens, vocabulary 50257) with its
language-model head, random weights, written the way Hugging Face's ``GPT2LMHeadModel`` computes
it (no transformers import).

Token + learned position embeddings; each block is pre-LN: fused q/k/v projection (768 -> 2304),
causal eager attention (matmul, scale, ``where`` with the lower-triangular mask, softmax, matmul),
output projection + residual, then MLP (dense to 3072, tanh-approximated GELU, dense) + residual;
a final LayerNorm and the LM head, a 768 x 50257 GEMM tied to the token embedding as in GPT-2.
Input: int64 token ids ``(batch, seq_len)``; output: logits ``(batch, seq_len, vocab)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from models.common import init_transformer_weights, multi_head_attention

__all__ = ["GPT2Decoder"]

_INIT_SEED = 0
_INPUT_SEED = 2004


class GPT2Block(nn.Module):
    def __init__(self, hidden: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(hidden)
        self.c_attn = nn.Linear(hidden, 3 * hidden)
        self.attn_proj = nn.Linear(hidden, hidden)
        self.ln_2 = nn.LayerNorm(hidden)
        self.c_fc = nn.Linear(hidden, ffn)
        self.act = nn.GELU(approximate="tanh")
        self.mlp_proj = nn.Linear(ffn, hidden)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        q, k, v = self.c_attn(self.ln_1(x)).chunk(3, dim=-1)
        x = x + self.attn_proj(multi_head_attention(q, k, v, self.heads, keep))
        return x + self.mlp_proj(self.act(self.c_fc(self.ln_2(x))))


class GPT2Decoder(nn.Module):
    """GPT-2 (small) by default; ``layers``, ``hidden``, ``heads``, ``vocab``, ``seq_len`` shrink it
    for fast tests."""

    def __init__(self, layers: int = 12, hidden: int = 768, heads: int = 12, vocab: int = 50257,
                 seq_len: int = 128, max_positions: int = 1024, seed: int = _INIT_SEED) -> None:
        super().__init__()
        self.vocab = vocab
        self.seq_len = seq_len
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.wte = nn.Embedding(vocab, hidden)
            self.wpe = nn.Embedding(max_positions, hidden)
            self.blocks = nn.ModuleList(GPT2Block(hidden, heads, 4 * hidden) for _ in range(layers))
            self.ln_f = nn.LayerNorm(hidden)
            self.lm_head = nn.Linear(hidden, vocab, bias=False)
            init_transformer_weights(self)
            # GPT-2 scales the residual projections by 1/sqrt(2 * layers) at initialisation.
            with torch.no_grad():
                for block in self.blocks:
                    for proj in (block.attn_proj, block.mlp_proj):
                        proj.weight.normal_(0.0, 0.02 / math.sqrt(2 * layers))
        self.lm_head.weight = self.wte.weight  # tied, as in GPT-2
        self.register_buffer("position_ids", torch.arange(max_positions).unsqueeze(0), persistent=False)
        self.register_buffer("causal", torch.ones(max_positions, max_positions, dtype=torch.bool).tril(),
                             persistent=False)

    @classmethod
    def small(cls) -> "GPT2Decoder":
        """Two narrow blocks over 16 tokens with a 1000-word vocabulary, for tests."""
        return cls(layers=2, hidden=64, heads=4, vocab=1000, seq_len=16, max_positions=32)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        s = tokens.shape[1]
        x = self.wte(tokens) + self.wpe(self.position_ids[:, :s])
        keep = self.causal[:s, :s]
        for block in self.blocks:
            x = block(x, keep)
        return self.lm_head(self.ln_f(x))

    def example_inputs(self, batch: int = 1) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(_INPUT_SEED)
        return (torch.randint(0, self.vocab, (batch, self.seq_len), generator=g, dtype=torch.int64),)
