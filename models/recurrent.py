"""Recurrent models with random weights: an LSTM language model and a GRU sequence tagger.

``LSTMLanguageModel``: the classic word-level LM (as PyTorch's word_language_model example):
embedding (10k words x 420) -> 2-layer LSTM (hidden 420) -> linear decoder to the vocabulary,
35 tokens, batch-first; 11.3 M parameters. ``GRUTagger``: embedding (5k x 100) -> bidirectional
GRU (hidden 128) -> linear to 17 tags (a POS tagger), 32 tokens. Input: int64 token ids
``(batch, seq_len)``; output: logits ``(batch, seq_len, vocab or tags)``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["LSTMLanguageModel", "GRUTagger"]

_INIT_SEED = 0
_INPUT_SEED = 2017


class LSTMLanguageModel(nn.Module):
    def __init__(self, vocab: int = 10000, embed: int = 420, hidden: int = 420, layers: int = 2,
                 seq_len: int = 35, seed: int = _INIT_SEED) -> None:
        super().__init__()
        self.vocab, self.seq_len = vocab, seq_len
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.embedding = nn.Embedding(vocab, embed)
            self.lstm = nn.LSTM(embed, hidden, layers, batch_first=True)
            self.decoder = nn.Linear(hidden, vocab)

    @classmethod
    def small(cls) -> "LSTMLanguageModel":
        """The same structure, narrow, over 7 tokens, for tests."""
        return cls(vocab=200, embed=24, hidden=32, seq_len=7)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embedding(tokens))
        return self.decoder(out)

    def example_inputs(self, batch: int = 1) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(_INPUT_SEED)
        return (torch.randint(0, self.vocab, (batch, self.seq_len), generator=g, dtype=torch.int64),)


class GRUTagger(nn.Module):
    def __init__(self, vocab: int = 5000, embed: int = 100, hidden: int = 128, tags: int = 17,
                 seq_len: int = 32, seed: int = _INIT_SEED) -> None:
        super().__init__()
        self.vocab, self.seq_len = vocab, seq_len
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.embedding = nn.Embedding(vocab, embed)
            self.gru = nn.GRU(embed, hidden, batch_first=True, bidirectional=True)
            self.classifier = nn.Linear(2 * hidden, tags)

    @classmethod
    def small(cls) -> "GRUTagger":
        """The same structure, narrow, over 6 tokens, for tests."""
        return cls(vocab=100, embed=16, hidden=24, tags=5, seq_len=6)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(self.embedding(tokens))
        return self.classifier(out)

    def example_inputs(self, batch: int = 1) -> tuple[torch.Tensor, ...]:
        g = torch.Generator().manual_seed(_INPUT_SEED)
        return (torch.randint(0, self.vocab, (batch, self.seq_len), generator=g, dtype=torch.int64),)
