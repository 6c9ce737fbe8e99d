"""Indexing, scans, padding, sorting, normalisation and resampling with PyTorch's semantics:
gather/scatter (with reductions), advanced indexing (several index tensors, None/ellipsis,
negative indices), index_put with accumulate, topk/sort, cumsum/cumprod/prod, flip, pads of
every mode, group/instance norm, interpolate in every mode.

Each case: PyTorch eager vs frontend + interpreter, then ONNX (onnxruntime) vs the interpreter.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from op_check import check_backends, check_frontend, gen, ints, randn


def distinct(*shape, seed=0):
    """Values without ties (sort and topk order ties by index; tested separately)."""
    n = 1
    for d in shape:
        n *= d
    return (torch.randperm(n, generator=gen(seed)).float() / 7 - 3).reshape(shape)


def _assign_columns(x, i, v):
    y = x.clone()
    y[:, i] = v
    return y


X = randn(3, 4, 5, seed=1)
IDX3 = ints(-3, 3, 2, 4, 5, seed=2)
SCATTER_IDX = torch.stack([torch.randperm(4, generator=gen(i))[:3] for i in range(5)], dim=1)  # [3, 5], unique per column

CASES = [
    # scans and reductions
    ("cumsum", lambda x: torch.cumsum(x, 1), (X,)),
    ("cumsum", lambda x: torch.cumsum(x, -1), (ints(-5, 5, 3, 6),)),
    ("cumsum", lambda x: torch.cumsum(x, 0), (ints(-5, 5, 4, 2).to(torch.int32),)),  # int32 -> int64 like torch
    ("cumprod", lambda x: torch.cumprod(x, 2), (randn(2, 3, 4, seed=3),)),
    ("cumprod", lambda x: torch.cumprod(x, 0), (ints(-3, 4, 5, 2),)),
    ("reduce_prod", lambda x: torch.prod(x, 1, keepdim=True), (randn(3, 4, seed=4),)),
    ("reduce_prod", lambda x: torch.prod(x), (ints(1, 4, 2, 3),)),
    # flip and pads
    ("flip", lambda x: torch.flip(x, [0, 2]), (X,)),
    ("flip", lambda x: torch.flip(x, [-1]), (ints(0, 9, 2, 5),)),
    ("pad", lambda x: F.pad(x, (1, 2)), (X,)),
    ("pad", lambda x: F.pad(x, (1, 2, 0, 3), value=-1.5), (X,)),
    ("pad", lambda x: F.pad(x, (2, 1, 1, 2), mode="reflect"), (randn(1, 2, 4, 5, seed=5),)),
    ("pad", lambda x: F.pad(x, (2, 1, 1, 2), mode="replicate"), (randn(1, 2, 4, 5, seed=5),)),
    ("pad", lambda x: F.pad(x, (2, 1), mode="circular"), (randn(1, 2, 5, seed=6),)),
    ("slice", lambda x: F.pad(x, (-1, 2)), (X,)),  # negative padding crops
    # gather / scatter
    ("gather_elements", lambda x, i: torch.gather(x, 1, i.abs() % 4), (X, IDX3[:, :3])),
    ("gather_elements", lambda x, i: torch.gather(x, -1, i.abs()), (X, IDX3[:3, :2, :3])),
    ("scatter_elements", lambda x, i, s: x.scatter(0, i, s), (randn(4, 5, seed=7), SCATTER_IDX, randn(3, 5, seed=8))),
    ("scatter_elements", lambda x, i: x.scatter(0, i, 2.5), (randn(4, 5, seed=7), SCATTER_IDX)),
    ("scatter_elements", lambda x, i, s: x.scatter_add(0, i, s), (randn(4, 5, seed=7), ints(0, 4, 6, 5),
                                                                  randn(6, 5, seed=9))),
    ("scatter_elements", lambda x, i, s: x.scatter_reduce(0, i, s, "amax"), (randn(4, 5, seed=7), ints(0, 4, 6, 5),
                                                                            randn(6, 5, seed=9))),
    ("scatter_elements", lambda x, i, s: x.scatter_reduce(1, i, s, "prod"), (randn(4, 5, seed=7), ints(0, 5, 4, 3),
                                                                            randn(4, 3, seed=9))),
    ("scatter_elements", lambda x, i, s: x.scatter_add(1, i, s), (ints(0, 9, 4, 5), ints(0, 5, 4, 3),
                                                                  ints(0, 9, 4, 7))),  # src larger than index
    ("scatter_elements", lambda x, i, s: x.scatter_reduce(0, i, s, "mean"), (randn(4, 5, seed=7), ints(0, 4, 6, 5),
                                                                            randn(6, 5, seed=9))),
    ("scatter_elements", lambda x, i, s: x.scatter_reduce(0, i, s, "mean", include_self=False),
     (randn(4, 5, seed=7), ints(0, 4, 3, 5), randn(3, 5, seed=9))),
    ("scatter_elements", lambda x, i, s: x.scatter_reduce(1, i, s, "amax", include_self=False),
     (randn(4, 5, seed=7), ints(0, 5, 4, 3), randn(4, 3, seed=9))),
    ("scatter_elements", lambda x, i, s: x.scatter_reduce(0, i, s, "mean"), (ints(-9, 9, 4, 5), ints(0, 4, 6, 5),
                                                                            ints(-9, 9, 6, 5))),
    ("scatter_elements", lambda x, i, s: x.scatter_reduce(0, i, s, "prod", include_self=False),
     (ints(-3, 4, 4, 5), ints(0, 4, 3, 5), ints(-3, 4, 3, 5))),
    # advanced indexing
    ("index", lambda x, i: x[i], (X, ints(-3, 3, 2, 2))),
    ("index", lambda x, i: x[:, i], (X, ints(-4, 4, 3))),
    ("index", lambda x, i, j: x[i, j], (X, ints(0, 3, 4), ints(-4, 4, 4))),
    ("index", lambda x, i, j: x[:, i, j], (X, ints(0, 4, 2, 1), ints(0, 5, 3))),  # adjacent: kept in place
    ("index", lambda x, i, j: x[i, :, j], (X, ints(0, 3, 2), ints(0, 5, 2))),  # separated: in front
    ("index", lambda x, i: x[..., i], (X, ints(0, 5, 2, 3))),
    ("index", lambda x, i: x[None, i], (X, ints(0, 3, 2))),
    ("index_put", lambda x, i, v: x.index_put((i,), v), (X, torch.tensor([2, 0]), randn(2, 4, 5, seed=10))),
    ("index_put", lambda x, i, j, v: x.index_put((i, j), v, accumulate=True),
     (X, torch.tensor([0, 1, 0, 0]), torch.tensor([1, 3, 1, -1]), randn(4, 5, seed=11))),
    ("index_put", lambda x, i, v: _assign_columns(x, i, v), (X, torch.tensor([3, 1]), randn(5, seed=12))),
    # sort / topk
    ("topk", lambda x: torch.topk(x, 3, dim=1), (distinct(3, 6, 2, seed=13),)),
    ("topk", lambda x: torch.topk(x, 2, dim=-1, largest=False), (distinct(4, 5, seed=14),)),
    ("sort", lambda x: torch.sort(x, dim=0), (distinct(5, 3, seed=15),)),
    ("sort", lambda x: torch.sort(x, dim=-1, descending=True), (distinct(2, 7, seed=16),)),
    ("sort", lambda x: torch.sort(x, stable=True), (torch.tensor([[2.0, 1.0, 2.0, 0.5, 1.0]]),)),
    ("sort", lambda x: torch.sort(x, stable=True, descending=True), (torch.tensor([[2, 1, 2, 0, 1]]),)),
    # normalisation
    ("group_norm", lambda x: F.group_norm(x, 2), (randn(2, 4, 3, 3, seed=17),)),
    ("group_norm", lambda x, w, b: F.group_norm(x, 3, w, b, eps=1e-3), (randn(2, 6, 5, seed=18), randn(6, seed=19),
                                                                         randn(6, seed=20))),
    # resampling
    ("resize", lambda x: F.interpolate(x, scale_factor=2, mode="nearest"), (randn(1, 2, 3, 4, seed=21),)),
    ("resize", lambda x: F.interpolate(x, size=(5, 7), mode="nearest"), (randn(1, 2, 3, 4, seed=21),)),
    ("resize", lambda x: F.interpolate(x, size=(5, 7), mode="bilinear"), (randn(1, 2, 3, 4, seed=21),)),
    ("resize", lambda x: F.interpolate(x, size=(2, 3), mode="bilinear"), (randn(1, 2, 5, 7, seed=22),)),
    ("resize", lambda x: F.interpolate(x, scale_factor=1.5, mode="bilinear", align_corners=True),
     (randn(1, 2, 4, 4, seed=23),)),
    ("resize", lambda x: F.interpolate(x, size=(6, 5), mode="bicubic"), (randn(1, 1, 4, 3, seed=24),)),
    ("resize", lambda x: F.interpolate(x, size=(6, 5), mode="bicubic", align_corners=True),
     (randn(1, 1, 4, 3, seed=24),)),
    ("resize", lambda x: F.interpolate(x, size=9, mode="linear"), (randn(2, 3, 4, seed=25),)),
    ("resize", lambda x: F.interpolate(x, scale_factor=2, mode="trilinear"), (randn(1, 1, 2, 3, 2, seed=26),)),
]


@pytest.mark.parametrize("op, fn, xs", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_op(op, fn, xs):
    graph, arrays, reference = check_frontend(fn, xs, ops=[op], rtol=1e-5, atol=1e-5)
    check_backends(graph, arrays, reference, rtol=1e-5, atol=1e-5)


def test_instance_norm():
    graph, arrays, reference = check_frontend(lambda x: F.instance_norm(x), (randn(2, 3, 4, 4, seed=27),),
                                              rtol=1e-5, atol=1e-5)
    check_backends(graph, arrays, reference, rtol=1e-5, atol=1e-5)


def test_topk_ties_take_the_lower_index_on_every_backend():
    # PyTorch leaves the order of ties unspecified; ours is defined (lower index first) and
    # every backend must agree with the interpreter on it.
    from compiler.interpreter import run_graph
    from op_check import import_fn

    x = torch.tensor([[3, 1, 3, 2], [5, 5, 5, 1]])
    _, graph = import_fn(lambda t: torch.topk(t, 2), (x,))
    values, indices = run_graph(graph, [x.numpy()])
    assert indices.tolist() == [[0, 2], [0, 1]] and values.tolist() == [[3, 3], [5, 5]]
    check_backends(graph, [x.numpy()], [values, indices])


NN_CASES = [
    ("conv_transpose", torch.nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1), (randn(2, 3, 5, 5),)),
    ("conv_transpose", torch.nn.ConvTranspose1d(4, 6, 3, stride=2, groups=2, dilation=2), (randn(1, 4, 7),)),
    ("conv_transpose", torch.nn.ConvTranspose3d(2, 2, 2, stride=(1, 2, 2), bias=False), (randn(1, 2, 3, 3, 3),)),
    ("conv_transpose", torch.nn.ConvTranspose2d(2, 3, 3, padding=2), (randn(1, 2, 4, 4),)),  # padding > k - 1 crops
    ("max_pool_with_indices", lambda x: F.max_pool2d(x, 2, return_indices=True), (randn(2, 3, 6, 6),)),
    ("max_pool_with_indices", lambda x: F.max_pool2d(x, 3, stride=2, padding=1, return_indices=True),
     (randn(1, 2, 7, 6),)),
    ("max_pool_with_indices", lambda x: F.max_pool1d(x, 3, dilation=2, return_indices=True), (randn(1, 2, 9),)),
    ("max_pool_with_indices", lambda x: F.max_pool3d(x, 2, return_indices=True), (randn(1, 2, 4, 4, 4),)),
    ("max_pool_with_indices", lambda x: F.max_pool2d(x, 2, return_indices=True),
     (torch.tensor([[[[1.0, 1.0, 0.0, 2.0], [1.0, 0.0, 2.0, 2.0]]]]),)),  # ties: the first maximum
    ("adaptive_max_pool", lambda x: F.adaptive_max_pool2d(x, (3, 3)), (randn(2, 3, 8, 7),)),
    ("adaptive_max_pool", lambda x: F.adaptive_max_pool2d(x, 2), (randn(2, 3, 8, 8),)),
    ("adaptive_max_pool", lambda x: F.adaptive_max_pool1d(x, 1), (randn(2, 3, 5),)),
    ("adaptive_avg_pool", lambda x: F.adaptive_avg_pool2d(x, (3, 5)), (randn(1, 2, 7, 9),)),  # uneven bins
]


@pytest.mark.parametrize("op, fn, xs", NN_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(NN_CASES)])
def test_nn_op(op, fn, xs):
    if isinstance(fn, torch.nn.Module):
        torch.manual_seed(0)
        fn = fn.eval()
    graph, arrays, reference = check_frontend(fn, xs, ops=[op], rtol=1e-5, atol=1e-5)
    check_backends(graph, arrays, reference, rtol=1e-5, atol=1e-5)


DATA_DEPENDENT = [
    ("nonzero", lambda x: torch.nonzero(x > 0), (X,)),
    ("nonzero", lambda x: torch.masked_select(x, x > 0.5), (X,)),
    ("nonzero", lambda x, m: torch.masked_select(x, m), (X, torch.rand(4, 1, generator=gen(30)) > 0.5)),
    ("nonzero", lambda x: x[x > 0], (X,)),
    ("nonzero", lambda x, m: x[:, m], (X, torch.tensor([True, False, True, True]))),
]


@pytest.mark.parametrize("op, fn, xs", DATA_DEPENDENT, ids=[f"{c[0]}-{i}" for i, c in enumerate(DATA_DEPENDENT)])
def test_data_dependent_sizes(op, fn, xs):
    graph, arrays, reference = check_frontend(fn, xs, ops=[op])
    check_backends(graph, arrays, reference)


def _bag(mode, **kw):
    torch.manual_seed(0)
    return torch.nn.EmbeddingBag(10, 3, mode=mode, **kw).eval()


GRID = torch.rand(2, 4, 5, 2, generator=gen(40)) * 2.4 - 1.2  # some positions outside [-1, 1]
MORE_OPS = [
    ("grid_sample", lambda x, g: F.grid_sample(x, g, align_corners=False), (randn(2, 3, 6, 7), GRID)),
    ("grid_sample", lambda x, g: F.grid_sample(x, g, align_corners=True), (randn(2, 3, 6, 7), GRID)),
    ("grid_sample", lambda x, g: F.grid_sample(x, g, mode="nearest", align_corners=False), (randn(2, 3, 6, 7), GRID)),
    ("grid_sample", lambda x, g: F.grid_sample(x, g, padding_mode="border", align_corners=False),
     (randn(2, 3, 6, 7), GRID)),
    ("grid_sample", lambda x, g: F.grid_sample(x, g, padding_mode="reflection", align_corners=True),
     (randn(2, 3, 6, 7), GRID)),
    ("grid_sample", lambda x, g: F.grid_sample(x, g, padding_mode="reflection", align_corners=False),
     (randn(2, 3, 6, 7), GRID * 2)),
    ("embedding_bag", _bag("mean"), (torch.tensor([1, 2, 4, 5, 4, 3, 2, 9]), torch.tensor([0, 3, 3]))),  # empty bag
    ("embedding_bag", _bag("sum"), (torch.tensor([1, 2, 4, 5, 4, 3, 2, 9]), torch.tensor([0, 5]))),
    ("embedding_bag", _bag("max"), (torch.tensor([1, 2, 4, 5, 4, 3, 2, 9]), torch.tensor([0, 2, 2, 7]))),
    ("embedding_bag", _bag("sum", include_last_offset=True), (torch.tensor([1, 2, 4, 5, 4, 3]),
                                                              torch.tensor([0, 2, 6]))),
    ("embedding_bag", _bag("mean", padding_idx=4), (torch.tensor([1, 4, 4, 5, 4, 3]), torch.tensor([0, 2, 3]))),
    ("embedding_bag", lambda i, o, w, bag=_bag("sum"): bag(i, o, per_sample_weights=w),
     (torch.tensor([1, 2, 4, 5]), torch.tensor([0, 1]), torch.rand(4, generator=gen(41)))),
]


@pytest.mark.parametrize("op, fn, xs", MORE_OPS, ids=[f"{c[0]}-{i}" for i, c in enumerate(MORE_OPS)])
def test_sampling_and_bags(op, fn, xs):
    graph, arrays, reference = check_frontend(fn, xs, ops=[op], rtol=1e-5, atol=1e-5)
    check_backends(graph, arrays, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fn, x", [
    (lambda t: torch.unique(t, return_counts=True, return_inverse=True), torch.tensor([[3, 1, 3], [2, 1, 7]])),
    (lambda t: torch.unique(t), torch.tensor([0.5, -1.0, 0.5, 2.0])),
    (lambda t: torch.unique(t, return_counts=True), torch.tensor([4, 4, 4], dtype=torch.int32)),
])
def test_unique_has_a_data_dependent_size(fn, x):
    graph, arrays, reference = check_frontend(fn, (x,), ops=["unique"])
    check_backends(graph, arrays, reference)
