"""The model zoo itself: every entry builds deterministically, runs, and exports with
torch.export, with a static and with a dynamic batch dim."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import models
from models import ZOO, ModelSpec, get_model

OUT_SHAPES = {"mlp": (1,), "lenet": (10,), "resnet": (10,), "mobilenet": (10,), "transformer": (10,)}
NAMES = sorted(ZOO)


def _build(name: str) -> torch.nn.Module:
    return ZOO[name].factory().eval()


def _batch_dynamic_shapes(inputs):
    batch = torch.export.Dim("batch", min=1, max=1024)
    return tuple({0: batch} for _ in inputs)


def test_registry():
    assert set(ZOO) == {"mlp", "lenet", "resnet", "mobilenet", "transformer"}
    for name, spec in ZOO.items():
        assert isinstance(spec, ModelSpec) and spec.name == name and spec.description
        assert issubclass(spec.factory, torch.nn.Module)
        assert get_model(name) is spec
    with pytest.raises(dataclasses.FrozenInstanceError):
        ZOO["mlp"].name = "x"
    with pytest.raises(KeyError, match="mlp.*transformer"):
        get_model("nope")
    for sym in models.__all__:
        assert hasattr(models, sym)


@pytest.mark.parametrize("name", NAMES)
def test_runs_with_expected_shape(name):
    model = _build(name)
    for batch in (1, 3):
        inputs = model.example_inputs(batch)
        assert isinstance(inputs, tuple) and all(isinstance(t, torch.Tensor) for t in inputs)
        assert all(t.shape[0] == batch for t in inputs)
        want_dtype = torch.int64 if name == "transformer" else torch.float32
        assert all(t.dtype == want_dtype for t in inputs)
        with torch.no_grad():
            out = model(*inputs)
        assert out.shape == (batch, *OUT_SHAPES[name])
        assert out.dtype == torch.float32
        assert torch.isfinite(out).all()
        assert out.abs().max() > 0


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_and_leaves_global_rng_alone(name):
    state = torch.random.get_rng_state()
    a, b = _build(name), _build(name)
    assert torch.equal(torch.random.get_rng_state(), state), "constructing a model moved the global RNG"
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    xa, xb = a.example_inputs(2), b.example_inputs(2)
    assert all(torch.equal(p, q) for p, q in zip(xa, xb))
    assert torch.equal(torch.random.get_rng_state(), state), "example_inputs moved the global RNG"
    with torch.no_grad():
        assert torch.equal(a(*xa), b(*xb))


@pytest.mark.parametrize("name", ["resnet", "mobilenet"])
def test_batch_norm_stats_are_non_trivial(name):
    bns = [m for m in _build(name).modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns
    for bn in bns:
        assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))
        assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
        assert (bn.running_var > 0).all()
        assert not torch.allclose(bn.weight, torch.ones_like(bn.weight))
        assert not torch.allclose(bn.bias, torch.zeros_like(bn.bias))


def test_eval_is_deterministic_without_dropout():
    for name in NAMES:
        model = _build(name)
        x = model.example_inputs(2)
        with torch.no_grad():
            assert torch.equal(model(*x), model(*x))


@pytest.mark.parametrize("name", NAMES)
def test_exports_static(name):
    model = _build(name)
    inputs = model.example_inputs()
    ep = torch.export.export(model, inputs, strict=False)
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(*inputs), model(*inputs), rtol=1e-5, atol=1e-6)
    decomposed = ep.run_decompositions()
    with torch.no_grad():
        torch.testing.assert_close(decomposed.module()(*inputs), model(*inputs), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_exports_dynamic_batch(name):
    model = _build(name)
    # A batch-1 example would be specialised to 1 (0/1 specialisation) and export would refuse
    # the dynamic dim; trace with batch 2 instead.
    inputs = model.example_inputs(2)
    ep = torch.export.export(model, inputs, dynamic_shapes=_batch_dynamic_shapes(inputs), strict=False)
    placeholders = [n for n in ep.graph.nodes if n.op == "placeholder" and n.name in ep.graph_signature.user_inputs]
    assert placeholders and all(not isinstance(n.meta["val"].shape[0], int) for n in placeholders)
    x3 = model.example_inputs(3)
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(*x3), model(*x3), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_exports_dynamic_batch_from_batch_one_size_oblivious(name):
    # With backed_size_oblivious, a batch-1 example does not pin the batch dim to 1.
    model = _build(name)
    inputs = model.example_inputs(1)
    with torch.fx.experimental._config.patch(backed_size_oblivious=True):
        ep = torch.export.export(model, inputs, dynamic_shapes=_batch_dynamic_shapes(inputs), strict=False)
    x3 = model.example_inputs(3)
    with torch.no_grad():
        torch.testing.assert_close(ep.module()(*x3), model(*x3), rtol=1e-5, atol=1e-6)
