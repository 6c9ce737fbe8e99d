"""HLS backend, per layer type: C simulation == numpy emulator (bit for bit) and emulator ~=
reference interpreter (within the fixed-point tolerance the backend reports).

Inputs are put on the input type's grid so the comparison against the interpreter measures the
kernels' rounding, not the input quantization. Tests that build the C simulation are skipped
(with the reason) when g++ or the ap_types headers are missing.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn

from backends.hls import build, emit, fixed
from backends.hls.layers import LUT_RANGES
from backends.hls.runtime import load_runner
from compiler.interpreter import run_graph

NO_TOOLCHAIN = build.toolchain_problem()
needs_gxx = pytest.mark.skipif(NO_TOOLCHAIN is not None, reason=f"C simulation unavailable: {NO_TOOLCHAIN}")


@pytest.fixture(scope="session")
def hls_cache_dir(tmp_path_factory):
    """One cache per test session (worker): the precompiled ap_types header is built once."""
    return tmp_path_factory.mktemp("hls-cache")


@pytest.fixture(autouse=True)
def hls_cache(hls_cache_dir, monkeypatch):
    """Never write the user's ~/.cache from tests."""
    monkeypatch.setenv("AOT_COMPILER_CACHE", str(hls_cache_dir))
    return hls_cache_dir


def ir_graph(module: nn.Module, x: torch.Tensor, passes=None):
    """The IR graph compile() would emit (default pass pipeline unless ``passes`` is given)."""
    from compiler.frontend import export_module, import_exported_program
    from passes import PassManager, make_pipeline

    graph = import_exported_program(export_module(module.eval(), (x,), dynamic_batch=True), name="t")
    PassManager(make_pipeline(passes), verify=True).run(graph)
    graph.name_outputs()
    return graph


def on_grid(x: np.ndarray, t: fixed.FixedType) -> np.ndarray:
    return fixed.dequantize(fixed.quantize(x, t), t)


class Act(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(12, 12), nn.Linear(12, 12)

    def forward(self, x):
        return self.b(torch.relu(self.a(x))) + x


class PoolBN(nn.Module):
    """A standalone batch norm (nothing to fold it into) after a pool."""

    def __init__(self):
        super().__init__()
        self.pool, self.bn = nn.MaxPool2d(2), nn.BatchNorm2d(3)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.uniform_(-0.5, 0.5)

    def forward(self, x):
        return self.bn(self.pool(x))


def lin(act=None, n_in=24, n_out=10):
    torch.manual_seed(0)
    layers = [nn.Linear(n_in, n_out)] + ([act] if act is not None else [])
    return nn.Sequential(*layers)


CASES = {
    # name: (module factory, input shape)
    "linear": (lambda: lin(), (6, 24)),
    "linear_relu": (lambda: lin(nn.ReLU()), (6, 24)),
    "linear_relu6": (lambda: lin(nn.ReLU6()), (6, 24)),
    "linear_leaky": (lambda: lin(nn.LeakyReLU(0.1)), (6, 24)),
    "linear_sigmoid": (lambda: lin(nn.Sigmoid()), (6, 24)),
    "linear_tanh": (lambda: lin(nn.Tanh()), (6, 24)),
    "softmax": (lambda: nn.Sequential(lin(), nn.Softmax(dim=1)), (6, 24)),
    "standalone_acts": (lambda: Act(lambda x: torch.tanh(x) + torch.sigmoid(x) + nn.functional.leaky_relu(x, 0.2)
                                    + torch.clamp(x, -1.0, 2.0)), (6, 16)),
    "conv2d": (lambda: nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU()), (2, 3, 9, 8)),
    "conv2d_groups_dilation": (lambda: nn.Conv2d(4, 6, 3, padding=(2, 1), dilation=(2, 1), groups=2), (2, 4, 7, 7)),
    "conv1d": (lambda: nn.Sequential(nn.Conv1d(3, 5, 3, padding=1), nn.Tanh()), (2, 3, 12)),
    "max_pool": (lambda: nn.MaxPool2d(3, stride=2, padding=1), (2, 3, 8, 8)),
    "avg_pool": (lambda: nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False), (2, 3, 8, 8)),
    "avg_pool_pad": (lambda: nn.AvgPool2d(2, stride=2, padding=1), (2, 3, 7, 7)),
    "pool1d": (lambda: nn.Sequential(nn.MaxPool1d(2), nn.AvgPool1d(2)), (2, 3, 12)),
    "global_avg": (lambda: nn.AdaptiveAvgPool2d(1), (2, 5, 6, 6)),
    "add": (lambda: Residual(), (6, 12)),
    "batch_norm": (lambda: PoolBN(), (2, 3, 6, 6)),
    "conv_flatten_linear": (lambda: nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 5, 7)),
                            (3, 2, 6, 7)),
}


def prepared(name: str, options=None):
    factory, shape = CASES[name]
    torch.manual_seed(1)
    module = factory().eval()
    x = torch.randn(*shape) * 1.5
    graph = ir_graph(module, x)
    options = {"target": "hls", **(options or {})}
    low = emit.lower_graph(graph, options)
    arrays = [on_grid(x.numpy(), t.type) for t in low.inputs]
    return graph, options, low, arrays


@pytest.mark.parametrize("name", sorted(CASES))
def test_emulator_matches_interpreter(name):
    graph, _, low, arrays = prepared(name)
    tol = emit.tolerance(low.inputs, low.layers)
    ours = low.emulate(arrays)
    spec = run_graph(graph, arrays)
    for a, b in zip(ours, spec):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=tol["rtol"], atol=tol["atol"])


@needs_gxx
@pytest.mark.parametrize("name", sorted(CASES))
def test_csim_equals_emulator(name):
    graph, options, low, arrays = prepared(name)
    payload, _info = emit.emit_target(graph, options)
    run = load_runner({}, payload, threads=1)
    for c, e in zip(run(arrays), low.emulate(arrays)):
        np.testing.assert_array_equal(c, e)
    # off-grid inputs too: the bridge's float -> ap_fixed conversion must round like the emulator
    raw = [np.random.default_rng(3).standard_normal(a.shape).astype(np.float32) * 3 for a in arrays]
    for c, e in zip(run(raw), low.emulate(raw)):
        np.testing.assert_array_equal(c, e)


def test_flatten_permutes_linear_weights():
    """conv -> flatten -> linear: the HLS arrays are channels-last, the linear's weight columns
    are permuted at compile time; without that the result would be a different function."""
    graph, _, low, arrays = prepared("conv_flatten_linear")
    dense = next(layer for layer in low.layers if layer.kind == "dense")
    assert not np.array_equal(dense.inputs[0].perm, np.arange(dense.inputs[0].size))
    spec = run_graph(graph, arrays)[0]
    np.testing.assert_allclose(low.emulate(arrays)[0], spec, atol=emit.tolerance(low.inputs, low.layers)["atol"])
    dense.p["w"] = dense.p["w"][:, np.argsort(dense.inputs[0].perm)]  # undo the permutation
    assert np.max(np.abs(low.emulate(arrays)[0] - spec)) > 0.1


def test_lookup_tables_within_one_step():
    """sigmoid/tanh tables: error at most half a bin times the slope plus half an output LSB."""
    _graph, _, low, _arrays = prepared("standalone_acts")
    for layer in low.layers:
        act = layer.p.get("act", {})
        if act.get("kind") != "lut":
            continue
        lo, bits = LUT_RANGES[act["fn"]]
        x = np.linspace(lo, -lo - 2.0 ** -bits, 4001)
        tin, tout = layer.inputs[0].type, layer.output.type
        codes = fixed.quantize(x, tin)
        from backends.hls.emulate import lut_index

        got = fixed.dequantize(act["table"][lut_index(codes, tin.frac, (lo, bits))], tout)
        xq = fixed.dequantize(codes, tin).astype(np.float64)
        want = 1 / (1 + np.exp(-xq)) if act["fn"] == "sigmoid" else np.tanh(xq)
        slope = 0.25 if act["fn"] == "sigmoid" else 1.0
        assert np.max(np.abs(got - want)) <= slope * 2.0 ** -bits + 2.0 ** -tout.frac


@needs_gxx
def test_testbench_passes(tmp_path):
    """The generated tb/<proj>_test.cpp, built with g++, reproduces tb_data (the emulator's outputs)."""
    import subprocess
    import tarfile

    graph, options, _, _ = prepared("conv_flatten_linear")
    payload, info = emit.emit_target(graph, options)
    with tarfile.open(fileobj=__import__("io").BytesIO(payload[emit.PROJECT_FILE])) as tar:
        tar.extractall(tmp_path, filter="data")
    root = tmp_path / info["project"]
    exe = root / "tb.out"
    subprocess.run([build.compiler_path(), "-O1", "-std=c++14", "-w", "-isystem", str(build.ap_types_dir()),
                    "-Ifirmware", f"firmware/{info['project']}.cpp", f"tb/{info['project']}_test.cpp", "-o", str(exe)],
                   cwd=root, check=True)
    done = subprocess.run([str(exe)], cwd=root, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout
    assert "PASS" in done.stdout
