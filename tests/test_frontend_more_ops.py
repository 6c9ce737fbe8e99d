"""Frontend handlers built from existing IR ops (split, full, max/min.dim, var, sign, repeat, ...).

Each case is differential twice: through the reference interpreter against PyTorch eager, and
compiled end to end to ONNX through the public API (which verifies against torch itself), then
loaded and compared again.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import compiler
from compiler.frontend import export_module, import_exported_program
from compiler.interpreter import run_graph
from op_check import Fn


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=_gen(seed + sum(shape)))


def randint(low, high, *shape, dtype=torch.int64, seed=0):
    return torch.randint(low, high, shape, generator=_gen(seed + sum(shape)), dtype=dtype)


def _flatten(value):
    if isinstance(value, (tuple, list)):
        return tuple(t for v in value for t in _flatten(v))
    return (value,)


def _compare(got, want):
    want = _flatten(want)
    got = got if isinstance(got, (tuple, list)) else (got,)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        w = w.numpy()
        g = np.asarray(g)
        assert g.dtype == w.dtype and g.shape == w.shape, (g.dtype, g.shape, w.dtype, w.shape)
        if w.dtype.kind in "iub":
            np.testing.assert_array_equal(g, w)
        else:
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def check(fn, inputs, tmp_path, *, dynamic_batch=False, other_batch=None, ops=None):
    """Interpreter vs eager, then ONNX artifact (verified by compile) vs eager."""
    module = Fn(fn).eval()
    graph = import_exported_program(export_module(module, inputs, dynamic_batch=dynamic_batch))
    if ops is not None:
        assert set(ops) <= set(graph.op_counts()), graph.op_counts()
    cases = [inputs] + ([other_batch] if other_batch is not None else [])
    for case in cases:
        with torch.no_grad():
            want = module(*case)
        _compare(run_graph(graph, [t.numpy() for t in case]), want)
    art = compiler.compile(module, inputs, target="onnx", output=tmp_path / "m.aot", dynamic_batch=dynamic_batch)
    loaded = compiler.load(art.path)
    for case in cases:
        with torch.no_grad():
            want = module(*case)
        _compare(loaded(*[t.numpy() for t in case]), want)
    return graph


X = randn(4, 6)
I = randint(-5, 5, 4, 6)

CASES = {
    # split_with_sizes (split.Tensor and chunk decompose to it)
    "split": (lambda x: x.split(2, 1), (X,)),
    "split_sizes": (lambda x: tuple(t * 2 for t in x.split([1, 3], 0)), (X,)),
    "chunk_uneven": (lambda x: x.chunk(4, -1), (randn(2, 3, 7),)),
    # full.default / full_like.default (zeros, ones, new_*, fill_, scalar fills decompose to them)
    "full": (lambda x: x + torch.full((4, 6), 2.5), (X,)),
    "zeros_int": (lambda x: (x > 0).to(torch.int32) + torch.zeros(6, dtype=torch.int32), (X,)),
    "ones_like": (lambda x: torch.ones_like(x) * x, (X,)),
    "full_like_int_trunc": (lambda i: torch.full_like(i, 3) + i, (I,)),
    "new_full": (lambda x: x.new_full((2, 3), 7), (X,)),
    "fill_bool": (lambda x: torch.full_like(x > 0, True), (X,)),
    # max.dim / min.dim / max.default / min.default / argmin.default
    "max_dim": (lambda x: x.max(1), (X,)),
    "min_dim_keep": (lambda x: x.min(-1, keepdim=True), (X,)),
    "min_dim_int_ties": (lambda i: i.min(0), (randint(-2, 2, 5, 3),)),
    "max_dim_int_ties": (lambda i: i.max(1), (randint(-2, 2, 5, 3),)),
    "max_min_dim_bool_u8": (lambda i: ((i > 0).max(1), (i > 0).min(0), i.abs().to(torch.uint8).min(1)), (I,)),
    "max_min_all": (lambda x: (x.max(), x.min()), (X,)),
    "argmin": (lambda x: (x.argmin(1), x.argmin(), x.argmin(0, keepdim=True)), (X,)),
    "argmin_int_ties": (lambda i: i.argmin(0), (randint(-2, 2, 5, 3),)),
    # var.correction / var_mean.correction (std decomposes to var + sqrt)
    "var": (lambda x: x.var(1), (X,)),
    "var_all": (lambda x: x.var(), (X,)),
    "std_keepdim_corr0": (lambda x: x.std((0, 2), keepdim=True, correction=0), (randn(3, 4, 5),)),
    "var_unbiased_false": (lambda x: torch.var(x, -1, unbiased=False), (X,)),
    "var_mean": (lambda x: torch.var_mean(x, 1, correction=2), (X,)),
    # sign, repeat, logical_xor, isnan, any / all, addbmm
    "sign": (lambda x: torch.sign(torch.where(x > 1, torch.tensor(float("nan")), x)), (X,)),
    "sign_int": (lambda i: torch.sign(i), (I,)),
    "sign_uint8_bool": (lambda i: (torch.sign(i.abs().to(torch.uint8)), torch.sign(i > 0)), (I,)),
    "repeat": (lambda x: x.repeat(2, 1, 3), (X,)),
    "repeat_same_rank": (lambda x: x.repeat(3, 1), (X,)),
    "logical_xor": (lambda x: torch.logical_xor(x > 0, x < 0.5), (X,)),
    "isnan": (lambda x: torch.isnan(torch.where(x > 1, torch.tensor(float("nan")), x)), (X,)),
    "any_all": (lambda x: ((x > 0).any(1), (x > 1).any(), (x > -1).all(0), (x > -3).all(),
                           (x > 0).any((0, 1), keepdim=True)), (X,)),
    "addbmm": (lambda m, b, c: torch.addbmm(m, b, c, beta=0.5, alpha=2.0),
               (randn(3, 5), randn(2, 3, 4), randn(2, 4, 5))),
    "addbmm_default": (lambda m, b, c: torch.addbmm(m, b, c), (randn(5), randn(2, 3, 4), randn(2, 4, 5))),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_op(name, tmp_path):
    fn, inputs = CASES[name]
    check(fn, inputs, tmp_path)


def test_split_dynamic_batch(tmp_path):
    check(lambda x: x.split([2, 4], 1), (randn(3, 6),), tmp_path, dynamic_batch=True, other_batch=(randn(5, 6),))


def test_full_like_dynamic_batch_is_an_expand(tmp_path):
    graph = check(lambda x: torch.zeros_like(x) + torch.full_like(x, 2.0) * x, (randn(3, 6),), tmp_path,
                  dynamic_batch=True, other_batch=(randn(7, 6),), ops=["expand"])
    assert graph.inputs[0].shape[0] == "batch"


def test_max_min_dim_var_repeat_dynamic_batch(tmp_path):
    def fn(x):
        values, idx = x.max(-1)
        low, arg = x.min(1, keepdim=True)
        return values, idx, low, arg, x.var(1), x.repeat(2, 3)

    check(fn, (randn(3, 6),), tmp_path, dynamic_batch=True, other_batch=(randn(5, 6),))


def test_large_static_fill_is_not_folded(tmp_path):
    graph = check(lambda x: x + torch.ones(300, 300), (randn(300, 300),), tmp_path, ops=["expand"])
    assert all(c.const.size <= 1 for c in graph.constants.values())


def test_symbolic_fill_value_is_refused():
    from compiler.errors import UnsupportedOpError

    module = Fn(lambda x: x + torch.full((6,), x.shape[0]))
    with pytest.raises(UnsupportedOpError, match="fill value"):
        import_exported_program(export_module(module, (randn(3, 6),), dynamic_batch=True))
