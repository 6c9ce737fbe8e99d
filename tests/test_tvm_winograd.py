"""Winograd F(4x4,3x3) convolution of backends/tvm/winograd.py, differential.

Each case builds a Relax module (NCHW conv2d with a constant weight, bias and relu, as our
emitter makes it), compiles it with the llvm pipeline with the rewrite on and off, checks that
the rewrite took the convolution (winograd_* PrimFuncs) or left it (the conditions), and
compares both with a float64 numpy convolution. Shapes include odd H/W, padding 0 and 2, tile
counts that are not multiples of 16, and batch 3.
"""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from tvm import relax

from backends.tvm import cpu, pipeline, schedules, winograd


@pytest.fixture(scope="module")
def target():
    from tvm.target.codegen import llvm_get_system_cpu

    return tvm.target.Target({"kind": "llvm", "mcpu": llvm_get_system_cpu()})


def _conv_module(x_shape, weight, bias, padding, stride=1):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(x_shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(weight), strides=stride, padding=padding))
            y = bb.emit(relax.op.add(y, relax.const(bias.reshape(1, -1, 1, 1))))
            out = bb.emit_output(relax.op.nn.relu(y))
        bb.emit_func_output(out)
    return bb.get()


def _reference(x, weight, bias, padding, stride=1):
    """float64 NCHW convolution + bias + relu."""
    pt, pl, pb, pr = padding
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    kh, kw = weight.shape[2:]
    ho = (xp.shape[2] - kh) // stride + 1
    wo = (xp.shape[3] - kw) // stride + 1
    out = np.zeros((x.shape[0], weight.shape[0], ho, wo))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i:i + stride * ho:stride, j:j + stride * wo:stride]
            out += np.einsum("nchw,kc->nkhw", patch, weight[:, :, i, j].astype(np.float64))
    return np.maximum(out + bias.reshape(1, -1, 1, 1), 0)


def _build_run(mod, target, x, m):
    saved = dict(winograd.MODE)
    winograd.MODE["m"] = m
    try:
        with target:
            prepared = pipeline.prepare_module(mod)
        names = [gv.name_hint for gv, f in prepared.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
        executable = pipeline.build(mod, target)
    finally:
        winograd.MODE.update(saved)
    vm = relax.VirtualMachine(executable, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy(), names


CASES = [
    # (N, C, H, W), K, padding
    ((1, 16, 32, 32), 16, (1, 1, 1, 1)),
    ((1, 64, 8, 8), 64, (1, 1, 1, 1)),
    ((1, 8, 13, 11), 12, (1, 1, 1, 1)),
    ((2, 16, 12, 10), 24, (0, 0, 0, 0)),
    ((3, 9, 9, 17), 7, (2, 2, 2, 2)),
    ((1, 16, 10, 12), 16, (0, 1, 2, 1)),
]


@pytest.mark.parametrize("x_shape,k,padding", CASES)
def test_winograd_matches_direct_and_float64(target, x_shape, k, padding):
    rng = np.random.default_rng(sum(x_shape) + k)
    c = x_shape[1]
    weight = (rng.standard_normal((k, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)
    bias = rng.standard_normal(k).astype(np.float32) * 0.1
    x = rng.standard_normal(x_shape).astype(np.float32)
    mod = _conv_module(x_shape, weight, bias, padding)
    ref = _reference(x, weight, bias, padding)
    wino, names = _build_run(mod, target, x, 4)
    assert any(n.startswith("winograd_gemm") for n in names), names
    assert any("winograd_output" in n and "relu" in n for n in names), f"relu not fused: {names}"
    direct, direct_names = _build_run(mod, target, x, None)
    assert not any("winograd" in n for n in direct_names)
    scale = np.abs(ref).max()
    assert np.abs(direct - ref).max() <= 1e-5 * scale
    # F(4x4,3x3) in float32: measured ~1e-6 of the output's range; 1e-4 is the bound.
    assert np.abs(wino - ref).max() <= 1e-4 * scale, np.abs(wino - ref).max() / scale


@pytest.mark.skipif(not {"avx2", "fma"} <= cpu.host_features(),
                    reason="runs x86-64-v3 (AVX2 + FMA) code: this host lacks it")
@pytest.mark.parametrize("x_shape,k,padding", [CASES[1], CASES[2], ((1, 32, 10, 9), 32, (1, 1, 1, 1))])
def test_winograd_8_lanes_matches_float64(x_shape, k, padding):
    """The x86-64-v3 (AVX2, 8-lane) schedule: the input transform's row pass runs per tile over
    all channels there, per 16-channel chunk at 16 lanes (the host target above)."""
    rng = np.random.default_rng(sum(x_shape) + k + 1)
    c = x_shape[1]
    weight = (rng.standard_normal((k, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)
    bias = rng.standard_normal(k).astype(np.float32) * 0.1
    x = rng.standard_normal(x_shape).astype(np.float32)
    v3 = tvm.target.Target({"kind": "llvm", "mcpu": "x86-64-v3"})
    wino, names = _build_run(_conv_module(x_shape, weight, bias, padding), v3, x, 4)
    assert any(n.startswith("winograd_gemm") for n in names), names
    ref = _reference(x, weight, bias, padding)
    assert np.abs(wino - ref).max() <= 1e-4 * np.abs(ref).max()


def test_f2_matches_float64(target):
    rng = np.random.default_rng(7)
    weight = (rng.standard_normal((16, 16, 3, 3)) / 12).astype(np.float32)
    bias = np.zeros(16, np.float32)
    x = rng.standard_normal((1, 16, 11, 14)).astype(np.float32)
    mod = _conv_module(x.shape, weight, bias, (1, 1, 1, 1))
    out, names = _build_run(mod, target, x, 2)
    assert any(n.startswith("winograd_gemm") for n in names)
    ref = _reference(x, weight, bias, (1, 1, 1, 1))
    assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()


@pytest.mark.parametrize("channels,padding", [(16, (1, 1, 1, 1)), (12, (0, 1, 2, 1))])
def test_winograd_over_symbolic_image_size(target, channels, padding):
    """A symbolic height and width: tiles per tile row in blocks of ROW_BLOCK (the last block
    completed with copies of the row's last tile), all three kernels scheduled by this module
    (and compiled in seconds: a flat tile index took 11 s per kernel), right at sizes of one
    tile, a partial tile and several blocks."""
    h, w = tvm.tirx.Var("h", "int64"), tvm.tirx.Var("w", "int64")
    rng = np.random.default_rng(channels)
    weight = (rng.standard_normal((16, channels, 3, 3)) / np.sqrt(9 * channels)).astype(np.float32)
    bias = rng.standard_normal(16).astype(np.float32) * 0.1
    mod = _conv_module((1, channels, h, w), weight, bias, padding)
    with target:
        prepared = pipeline.prepare_module(mod)
    kernels = {gv.name_hint: f for gv, f in prepared.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}
    wino = [name for name in kernels if "winograd" in name]
    assert len(wino) == 3 and all(schedules.is_scheduled(kernels[name]) for name in wino), sorted(kernels)
    vm = relax.VirtualMachine(pipeline.build(mod, target), tvm.cpu())
    for size in ((3, 3), (6, 9), (21, 34)):
        x = rng.standard_normal((1, channels, *size)).astype(np.float32)
        ref = _reference(x, weight, bias, padding)
        got = vm["main"](tvm.runtime.tensor(x)).numpy()
        assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max(), size


@pytest.mark.parametrize("x_shape,stride,padding", [((1, 16, 16, 16), 2, (1, 1, 1, 1)),
                                                    ((1, 16, 6, 6), 1, (1, 1, 1, 1)),
                                                    ((1, 2, 32, 32), 1, (1, 1, 1, 1))])
def test_conditions_keep_direct_conv(target, x_shape, stride, padding):
    """Stride 2, outputs under MIN_OUTPUT and fewer than MIN_CHANNELS inputs stay direct."""
    rng = np.random.default_rng(3)
    weight = (rng.standard_normal((16, x_shape[1], 3, 3)) / 12).astype(np.float32)
    bias = np.zeros(16, np.float32)
    x = rng.standard_normal(x_shape).astype(np.float32)
    mod = _conv_module(x_shape, weight, bias, padding, stride)
    out, names = _build_run(mod, target, x, 4)
    assert not any("winograd" in n for n in names), names
    ref = _reference(x, weight, bias, padding, stride)
    assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()


def test_weight_transform_is_exact_in_float64():
    """A^T [(G g G^T) * (B^T d B)] A equals the 3x3 correlation of a 6x6 (4x4) tile."""
    rng = np.random.default_rng(0)
    for m in (2, 4):
        bt, g, at = winograd.matrices(m)
        d = rng.standard_normal((m + 2, m + 2))
        w = rng.standard_normal((3, 3))
        y = at @ ((g @ w @ g.T) * (bt @ d @ bt.T)) @ at.T
        direct = np.array([[np.sum(d[i:i + 3, j:j + 3] * w) for j in range(m)] for i in range(m)])
        np.testing.assert_allclose(y, direct, rtol=1e-12, atol=1e-12)


def test_zoo_resnet_verifies_with_winograd(tmp_path):
    import compiler
    from models import get_model

    model = get_model("resnet").factory().eval()
    inputs = model.example_inputs(2)
    artifact = compiler.compile(model, inputs, target="llvm", output=str(tmp_path / "resnet.aot"))
    assert artifact.report.verification.passed
