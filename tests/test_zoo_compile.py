"""Every zoo model compiles to ONNX, verifies against PyTorch, and runs from its artifact with a
static and with a dynamic batch; through the API here and through the CLI for the seed MLP."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import compiler
from models import ZOO
from passes import DEFAULT_PIPELINE


@pytest.mark.parametrize("name", sorted(ZOO))
@pytest.mark.parametrize("dynamic_batch", [False, True], ids=["static", "dynamic"])
def test_zoo_model_compiles_and_matches_torch(name, dynamic_batch, tmp_path):
    model = ZOO[name].factory().eval()
    art = compiler.compile(model, model.example_inputs(), target="onnx", output=tmp_path / f"{name}.aot",
                           dynamic_batch=dynamic_batch)
    assert art.report.verification.passed, art.report.verification.summary()
    assert art.report.verification.cases >= 4
    loaded = compiler.load(art.path)
    batch = 3 if dynamic_batch else 1
    inputs = model.example_inputs(batch)
    with torch.no_grad():
        want = model(*inputs).numpy()
    got = loaded(*[t.numpy() for t in inputs])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    manifest = art.manifest
    assert [o["name"] for o in manifest["outputs"]] == ["output"]
    assert manifest["target"] == "onnx" and manifest["passes"] == list(DEFAULT_PIPELINE)
    if dynamic_batch:
        assert all(i["shape"][0] == "batch" for i in manifest["inputs"])


def test_seed_mlp_through_cli(tmp_path):
    from compiler.driver.cli import main

    out = tmp_path / "mlp.aot"
    assert main(["models/mlp.py:SeedMLP", "-o", str(out), "-q"]) == 0
    loaded = compiler.load(out)
    assert loaded.manifest["inputs"][0]["shape"] == [1, 1000]
    assert loaded(np.ones((1, 1000), np.float32)).shape == (1, 1)
