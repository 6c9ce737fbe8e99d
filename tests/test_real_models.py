"""The real-size models (models.REAL): their reduced configurations through our frontend and the
reference interpreter against PyTorch eager (fast), and each full-size model compiled to ONNX,
verified and run from its artifact against eager (slow)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import compiler
from compiler.frontend import export_module, import_exported_program
from compiler.interpreter import run_graph
from models import REAL, ZOO, EfficientNetLite0, get_real_model

NAMES = sorted(REAL)
# Real sizes, as in the papers / reference implementations: parameter counts and output shapes.
PARAMS_MILLIONS = {"resnet18": 11.69, "mobilenet_v2": 3.50, "efficientnet_lite0": 4.65, "bert": 108.89,
                   "gpt2": 124.44, "lstm_lm": 11.24, "gru_tagger": 0.68}


def test_registry_is_separate_from_the_zoo():
    assert set(REAL) == set(PARAMS_MILLIONS)
    assert not set(REAL) & set(ZOO)
    for name, spec in REAL.items():
        assert spec.name == name and spec.description and get_real_model(name) is spec
    with pytest.raises(KeyError, match="bert.*resnet18"):
        get_real_model("nope")


@pytest.mark.parametrize("name", NAMES)
def test_small_config_through_frontend_and_interpreter_matches_eager(name):
    model = REAL[name].factory.small().eval()
    # One export with a symbolic batch, run at two batch sizes: exporting is most of the cost.
    graph = import_exported_program(export_module(model, model.example_inputs(2), dynamic_batch=True))
    for batch in (1, 3):
        inputs = model.example_inputs(batch)
        assert all(t.shape[0] == batch for t in inputs)
        with torch.no_grad():
            want = model(*inputs).numpy()
        (got,) = run_graph(graph, [t.numpy() for t in inputs])
        assert got.shape == want.shape and np.abs(want).max() > 0
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_small_configs_are_deterministic_and_leave_global_rng_alone():
    state = torch.random.get_rng_state()
    for name in NAMES:
        a, b = REAL[name].factory.small(), REAL[name].factory.small()
        for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
            assert ka == kb and torch.equal(va, vb), (name, ka)
        assert all(torch.equal(p, q) for p, q in zip(a.example_inputs(2), b.example_inputs(2)))
    assert torch.equal(torch.random.get_rng_state(), state)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_full_size_compiles_to_onnx_and_matches_eager(name, tmp_path):
    model = REAL[name].factory().eval()
    params = sum(p.numel() for p in model.parameters())
    assert params / 1e6 == pytest.approx(PARAMS_MILLIONS[name], abs=0.01)
    inputs = model.example_inputs(1)
    art = compiler.compile(model, inputs, target="onnx", output=tmp_path / f"{name}.aot")
    assert art.report.verification.passed, art.report.verification.summary()
    with torch.no_grad():
        want = model(*inputs).numpy()
    got = compiler.load(art.path)(*[t.numpy() for t in inputs])
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)


def test_efficientnet_lite0_full_width_on_small_images_compiles_to_onnx_and_matches_eager(tmp_path):
    """Every real-size layer and weight of EfficientNet-Lite0 (its 3x3 and 5x5, stride-1 and
    stride-2 depthwise convs, BN folds, ReLU6, residual adds) on 64x64 images, so it stays fast."""
    model = EfficientNetLite0(image_size=64).eval()
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(PARAMS_MILLIONS["efficientnet_lite0"],
                                                                                abs=0.01)
    inputs = model.example_inputs(2)
    art = compiler.compile(model, inputs, target="onnx", output=tmp_path / "effnet.aot")
    assert art.report.verification.passed, art.report.verification.summary()
    with torch.no_grad():
        want = model(*inputs).numpy()
    got = compiler.load(art.path)(*[t.numpy() for t in inputs])
    assert got.shape == (2, 1000) and np.abs(want).max() > 0
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
