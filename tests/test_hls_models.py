"""HLS backend on zoo models: the seed MLP and LeNet (C simulation within 2e-2 of PyTorch at
ap_fixed<16,6>, inputs on the fixed-point grid) and the trained digits MLP end to end through
``compiler.compile(target="hls")`` + ``compiler.load`` (argmax agreement with PyTorch >= 0.99)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from backends.hls import emit
from backends.hls.runtime import load_runner
from tests.test_hls_layers import hls_cache, hls_cache_dir, ir_graph, needs_gxx, on_grid  # noqa: F401

MAX_ABS = 2e-2


def zoo(name: str):
    if name == "seed_mlp":
        from models.mlp import SeedMLP

        torch.manual_seed(0)
        return SeedMLP().eval(), torch.randn(8, 1000)
    from models.lenet import LeNet

    model = LeNet().eval()
    return model, model.example_inputs(8)[0]


@pytest.mark.parametrize("name", ["seed_mlp", "lenet"])
def test_zoo_emulator_close_to_torch(name):
    model, x = zoo(name)
    low = emit.lower_graph(ir_graph(model, x), {"target": "hls", "hls_precision": "ap_fixed<16,6>"})
    xq = on_grid(x.numpy(), low.inputs[0].type)
    want = model(torch.from_numpy(xq)).detach().numpy()
    assert np.max(np.abs(low.emulate([xq])[0] - want)) <= MAX_ABS


@needs_gxx
@pytest.mark.parametrize("name", ["seed_mlp", "lenet"])
def test_zoo_csim_close_to_torch(name):
    model, x = zoo(name)
    graph = ir_graph(model, x)
    options = {"target": "hls", "hls_precision": "ap_fixed<16,6>"}
    payload, info = emit.emit_target(graph, options)
    low = emit.lower_graph(graph, options)
    xq = on_grid(x.numpy(), low.inputs[0].type)
    got = load_runner({}, payload, threads=2)([xq])[0]
    np.testing.assert_array_equal(got, low.emulate([xq])[0])
    want = model(torch.from_numpy(xq)).detach().numpy()
    err = float(np.max(np.abs(got - want)))
    print(f"{name}: C-sim max abs error vs PyTorch {err:.3g}, build {info['csim_build_seconds']:.1f} s, "
          f"estimates {info['estimates']['total']}")
    assert err <= MAX_ABS


@needs_gxx
def test_digits_mlp_end_to_end(tmp_path):
    import compiler
    from models.digits import digits_data, trained_model

    model = trained_model("mlp").eval()
    data = digits_data()
    art = compiler.compile(model, (torch.from_numpy(data.x_test[:4].copy()),), target="hls",
                           output=str(tmp_path / "digits.aot"), dynamic_batch=True)
    assert art.report.target_info["tolerance"]["atol"] > 0
    run = compiler.load(art.path)
    ours = np.asarray(run(data.x_test)).argmax(axis=1)
    theirs = model(torch.from_numpy(data.x_test)).detach().numpy().argmax(axis=1)
    agreement = float(np.mean(ours == theirs))
    print(f"digits MLP: argmax agreement {agreement:.4f}, accuracy {np.mean(ours == data.y_test):.4f}")
    assert agreement >= 0.99
