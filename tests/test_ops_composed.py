"""Ops PyTorch decomposes (or we translate) into compositions of IR ops: recurrent layers as
exported, masked/indexed updates, norms, distances, attention with masks, 0-d and empty
tensors, out-of-range slices. Each case: eager vs frontend + interpreter, then ONNX vs interpreter.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from op_check import check_backends, check_frontend, randn


def module(factory):
    torch.manual_seed(0)
    return factory().eval()


X4 = randn(2, 3, 8, 8, seed=1)
Q = randn(1, 2, 5, 4, seed=2)

CASES = {
    "lstm": (module(lambda: nn.LSTM(4, 5, batch_first=True)), (randn(2, 3, 4, seed=3),)),
    "gru_2_layers": (module(lambda: nn.GRU(4, 5, num_layers=2)), (randn(3, 2, 4, seed=4),)),
    "rnn_bidirectional": (module(lambda: nn.RNN(4, 5, bidirectional=True)), (randn(3, 2, 4, seed=5),)),
    "masked_fill": (lambda x: x.masked_fill(x > 0, 2.0), (X4,)),
    "masked_scatter": (lambda x, m, s: x.masked_scatter(m, s), (X4, X4 > 0, randn(2 * 3 * 8 * 8, seed=6))),
    "index_add": (lambda x, i, s: x.index_add(1, i, s), (X4, torch.tensor([0, 2]), randn(2, 2, 8, 8, seed=7))),
    "index_fill": (lambda x, i: x.index_fill(1, i, -1.0), (X4, torch.tensor([0, 2]))),
    "index_select": (lambda x, i: x.index_select(2, i), (X4, torch.tensor([7, 0, 3]))),
    "arange": (lambda x: x + torch.arange(1, 17, 2), (X4,)),
    "zero_d": (lambda x: x * 2 + 1, (torch.tensor(3.0),)),
    "empty": (lambda x: x.sum(0) + 1, (torch.randn(0, 4),)),
    "sdpa_causal": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), (Q, Q * 2, Q - 1)),
    "sdpa_bool_mask": (lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m),
                       (Q, Q * 2, Q - 1, torch.eye(5, dtype=torch.bool) | (randn(5, 5, seed=8) > 0))),
    "sdpa_grouped_query": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, enable_gqa=True),
                           (randn(2, 4, 5, 8, seed=35), randn(2, 2, 5, 8, seed=36), randn(2, 2, 5, 8, seed=37))),
    "sdpa_grouped_query_causal": (lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                                                  enable_gqa=True),
                                  (randn(6, 3, 8, seed=38), randn(2, 3, 8, seed=39), randn(2, 3, 8, seed=40))),
    "sdpa_float_mask": (lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m),
                        (Q, Q * 2, Q - 1, randn(5, 5, seed=9))),
    "diagonal": (lambda x: torch.diagonal(x, 1, -2, -1), (X4,)),
    "diagonal_separated": (lambda x: torch.diagonal(x, -1, 1, 3), (X4,)),
    "clamp_tensor": (lambda x, lo: torch.clamp(x, min=lo, max=lo + 1), (X4, torch.zeros(8))),
    "pow_scalar_base": (lambda x: 2 ** x, (X4,)),
    "avg_pool_divisor": (lambda x: F.avg_pool2d(x, 3, divisor_override=2), (X4,)),
    "cdist": (lambda a, b: torch.cdist(a, b), (randn(4, 3, seed=10), randn(5, 3, seed=11))),
    "cdist_p1": (lambda a, b: torch.cdist(a, b, p=1), (randn(2, 4, 3, seed=10), randn(2, 5, 3, seed=11))),
    "vector_norm": (lambda x: torch.linalg.vector_norm(x, 2, -1), (X4,)),
    "vector_norm_p3": (lambda x: torch.linalg.vector_norm(x, 3, (1, 2), keepdim=True), (X4,)),
    "cosine_similarity": (lambda a, b: F.cosine_similarity(a, b), (X4, X4 * 2 + 1)),
    "bucketize": (lambda x, b: torch.bucketize(x, b), (X4, torch.tensor([-1.0, 0.0, 1.0]))),
    "bucketize_right": (lambda x, b: torch.bucketize(x, b, right=True), (torch.tensor([0.0, 1.0, 2.5]),
                                                                          torch.tensor([0.0, 1.0, 2.0]))),
    "one_hot": (lambda i: F.one_hot(i, 5), (torch.tensor([0, 3, 1]),)),
    "tril": (lambda x: torch.tril(x), (X4,)),
    "roll": (lambda x: torch.roll(x, 2, 3), (X4,)),
    "slice_out_of_range": (lambda x: x[:, 5:100], (X4,)),
    "negative_slice": (lambda x: x[..., -3:], (X4,)),
    "pixel_shuffle": (lambda x: F.pixel_shuffle(x, 2), (randn(1, 8, 3, 3, seed=12),)),
    "nearest_exact": (lambda x: F.interpolate(x, size=(5, 5), mode="nearest-exact"), (X4,)),
    "logsumexp": (lambda x: torch.logsumexp(x, 1), (X4,)),
    "einsum": (lambda a, b: torch.einsum("bij,bjk->bik", a, b), (randn(2, 3, 4, seed=13), randn(2, 4, 5, seed=14))),
    "argsort": (lambda x: torch.argsort(x, dim=1, stable=True), (X4,)),
    "prelu": (module(lambda: nn.PReLU(3)), (X4,)),
    "local_response_norm": (lambda x: F.local_response_norm(x, 2), (X4,)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_composed(name):
    fn, xs = CASES[name]
    graph, arrays, reference = check_frontend(fn, xs, rtol=1e-5, atol=1e-5)
    check_backends(graph, arrays, reference, rtol=1e-5, atol=1e-5)


MORE = {
    "empty_then_fill": (lambda x: torch.empty(3, 4).fill_(2.0) + x, (randn(3, 4, seed=20),)),
    "copy_broadcast": (lambda x, y: x.clone().copy_(y) * 2, (randn(3, 4, seed=21), randn(4, seed=22))),
    "slice_scatter": (lambda x, s: torch.slice_scatter(x, s, 1, 1, 7, 2), (randn(2, 8, 3, seed=23),
                                                                        randn(2, 3, 3, seed=24))),
    "slice_scatter_dim0": (lambda x, s: torch.slice_scatter(x, s, 0, 0, 2), (randn(4, 3, seed=23), randn(2, 3, seed=24))),
    "select_scatter": (lambda x, s: torch.select_scatter(x, s, 2, -1), (randn(2, 3, 4, seed=25), randn(2, 3, seed=26))),
    "pdist": (lambda x: F.pdist(x), (randn(5, 3, seed=27),)),
    "pdist_p1": (lambda x: F.pdist(x, p=1), (randn(4, 3, seed=27),)),
    "fold": (lambda x: F.fold(x, (5, 6), (2, 3), padding=1, stride=(2, 1)), (randn(2, 2 * 6, 18, seed=28),)),
    "fold_dilated": (lambda x: F.fold(x, (4, 4), 2, dilation=2), (randn(1, 3 * 4, 4, seed=29),)),
    "unfold_fold": (lambda x: F.fold(F.unfold(x, 2, stride=2), (6, 6), 2, stride=2), (randn(1, 2, 6, 6, seed=30),)),
    "sparse_addmm_of_dense": (lambda c, a, b: torch.sparse.addmm(c, a, b, beta=0.8, alpha=0.5),
                              (randn(4, 5, seed=32), randn(4, 3, seed=33), randn(3, 5, seed=34))),
    "adaptive_avg_pool3d": (lambda x: F.adaptive_avg_pool3d(x, (2, 2, 1)), (randn(1, 2, 4, 6, 3, seed=31),)),
}


@pytest.mark.parametrize("name", list(MORE))
def test_more_composed(name):
    fn, xs = MORE[name]
    graph, arrays, reference = check_frontend(fn, xs, rtol=1e-5, atol=1e-5)
    check_backends(graph, arrays, reference, rtol=1e-5, atol=1e-5)
