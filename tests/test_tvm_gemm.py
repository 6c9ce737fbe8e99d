"""The packed-weight GEMM path of the llvm target (backends/tvm/gemm.py) against numpy / TVM's
unscheduled build.

Each case checks which rule schedules the hot function (``PackedGemm`` where the rewrite applies,
the generic rules where it must not: non-constant weight, width not a vector multiple, symbolic
rows), then compares the compiled module's result. Shapes have leftover rows on purpose (5, 13,
49 = 8 * 6 + 1), both vector widths are built (AVX2's 8 lanes always; AVX-512's 16 lanes where
this CPU runs it).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from tvm import relax

from backends.tvm import cpu, gemm, pipeline  # noqa: E402
from test_tvm_schedules import _module, _rules, _run  # noqa: E402  (the one-function module helpers)

AVX2 = {"kind": "llvm", "mcpu": "x86-64-v3"}
AVX512 = {"kind": "llvm", "mcpu": "skylake-avx512"}


def _host_has_avx512() -> bool:
    from tvm.target.codegen import llvm_cpu_has_features, llvm_get_system_cpu

    host = tvm.target.Target({"kind": "llvm", "mcpu": llvm_get_system_cpu()})
    try:
        return bool(llvm_cpu_has_features(["avx512f"], host))
    except Exception:  # noqa: BLE001 - a CPU LLVM cannot describe
        return False


TARGETS = [pytest.param(AVX2, id="avx2"),
           pytest.param(AVX512, id="avx512", marks=pytest.mark.skipif(not _host_has_avx512(),
                                                                      reason="this CPU has no AVX-512"))]


@pytest.fixture(params=TARGETS)
def target(request):
    return tvm.target.Target(request.param)


def _hot_rule(rules: dict, fragment: str) -> str:
    picked = {r for name, r in rules.items() if fragment in name}
    assert len(picked) == 1, rules
    return picked.pop()


def _f32(rng, *shape):
    return rng.standard_normal(shape).astype("float32")


def test_micro_kernel_shapes():
    """Tiles fit the register files: AVX2 at most 12 accumulators, AVX-512 at most 24; the panel
    is a vector multiple dividing n, the tile's vectors divide the panel's."""
    for lanes, limit in ((8, 12), (16, 24)):
        for m in (1, 5, 7, 49, 56, 128, 1024):
            for n in (8, 16, 24, 48, 96, 512, 768, 3072):
                rows, panel = gemm.micro_kernel(m, n, lanes)
                vector = lanes
                if n % lanes:
                    # AVX-512 packs widths of an odd number of 8-lane halves with half registers.
                    vector = lanes // 2
                    if lanes == 8 or n % vector:
                        assert panel == 0
                        continue
                assert panel % vector == 0 and n % panel == 0
                rows, vectors = gemm.tile_shape(m, panel, vector)
                assert 1 <= rows <= m and rows * vectors <= limit and (panel // vector) % vectors == 0
    assert gemm.micro_kernel(128, 768, 8) == (4, 24)
    assert gemm.micro_kernel(49, 512, 8) == (6, 16) and gemm.tile_shape(49, 32, 16) == (7, 2)
    assert gemm.tile_shape(14, 32, 16) == (7, 2) and gemm.tile_shape(12, 16, 16) == (12, 1)
    assert gemm.tile_shape(13, 16, 8) == (6, 2)
    assert gemm.micro_kernel(128, 768, 16) == (8, 32)
    assert gemm.micro_kernel(100, 20, 8) == (0, 0) and gemm.micro_kernel(100, 20, 16) == (0, 0)
    assert gemm.micro_kernel(3136, 24, 16) == (4, 24)


def test_pack_weight_layout(rng):
    w = _f32(rng, 5, 48)
    packed = gemm.pack_weight(w, 16)
    assert packed.shape == (3, 5, 16)
    np.testing.assert_array_equal(packed[2, 4], w[4, 32:48])


@pytest.mark.parametrize("m,k,n", [(5, 37, 48), (16, 64, 96), (1, 100, 32), (2, 64, 768), (13, 40, 512), (49, 72, 64)])
def test_dense_bias_relu(rng, target, m, k, n):
    w, b = _f32(rng, k, n), _f32(rng, n)
    mod = _module([("x", (m, k))], lambda bb, x: relax.op.nn.relu(
        relax.op.add(relax.op.matmul(x, relax.const(w)), relax.const(b))))
    assert _hot_rule(_rules(mod, target), "packed_matmul") == "PackedGemm"
    x = _f32(rng, m, k)
    np.testing.assert_allclose(_run(pipeline.build(mod, target, {}), x), np.maximum(x @ w + b, 0),
                               rtol=1e-4, atol=1e-4)


def test_batched_rows_gelu_residual(rng, target):
    """[batch, seq, K] input, gelu epilogue (reads the accumulator twice) and a residual add."""
    w, b = _f32(rng, 24, 48), _f32(rng, 48)
    res = _f32(rng, 3, 7, 48)

    def body(bb, x):
        y = relax.op.nn.gelu(relax.op.add(relax.op.matmul(x, relax.const(w)), relax.const(b)))
        return relax.op.add(y, relax.const(res))

    mod = _module([("x", (3, 7, 24))], body)
    assert _hot_rule(_rules(mod, target), "packed_matmul") == "PackedGemm"
    x = _f32(rng, 3, 7, 24)
    z = (x @ w + b).astype("float64")
    want = 0.5 * z * (1 + np.vectorize(math.erf)(z / math.sqrt(2))) + res
    np.testing.assert_allclose(_run(pipeline.build(mod, target, {}), x), want, rtol=1e-4, atol=1e-4)


def test_no_epilogue_parallel_size(rng, target):
    """Large enough for the parallel outer loop, no epilogue, leftover rows."""
    w = _f32(rng, 96, 768)
    mod = _module([("x", (37, 96))], lambda bb, x: relax.op.matmul(x, relax.const(w)))
    assert _hot_rule(_rules(mod, target), "packed_matmul") == "PackedGemm"
    x = _f32(rng, 37, 96)
    np.testing.assert_allclose(_run(pipeline.build(mod, target, {}), x), x @ w, rtol=1e-4, atol=1e-4)


def test_wide_width_not_a_vector_multiple(rng, target):
    """A 1000-wide head: zero weight columns up to a vector multiple, the result sliced back."""
    w, b = _f32(rng, 40, 1000), _f32(rng, 1000)
    mod = _module([("x", (3, 40))], lambda bb, x: relax.op.add(relax.op.matmul(x, relax.const(w)), relax.const(b)))
    assert _hot_rule(_rules(mod, target), "packed_matmul") == "PackedGemm"
    x = _f32(rng, 3, 40)
    np.testing.assert_allclose(_run(pipeline.build(mod, target, {}), x), x @ w + b, rtol=1e-4, atol=1e-4)


def test_fallbacks(rng):
    """Not packed: a weight that is an input, a width that is no vector multiple, symbolic rows.
    The generic rule schedules them and the results stay right."""
    target = tvm.target.Target(AVX2)
    a, bm = _f32(rng, 6, 19), _f32(rng, 19, 40)
    mod = _module([("a", (6, 19)), ("b", (19, 40))], lambda bb, x, y: relax.op.matmul(x, y))
    rules = _rules(mod, target)
    assert not any("packed" in name for name in rules) and _hot_rule(rules, "matmul") == "TiledContraction"
    np.testing.assert_allclose(_run(pipeline.build(mod, target, {}), a, bm), a @ bm, rtol=1e-4, atol=1e-4)

    w = _f32(rng, 19, 20)  # a 5-wide vector tile: not padded (padded_width), not packable
    mod = _module([("x", (6, 19))], lambda bb, x: relax.op.matmul(x, relax.const(w)))
    rules = _rules(mod, target)
    assert not any("packed" in name for name in rules) and _hot_rule(rules, "matmul") == "TiledContraction"
    np.testing.assert_allclose(_run(pipeline.build(mod, target, {}), a), a @ w, rtol=1e-4, atol=1e-4)



@pytest.mark.parametrize("target_spec", [AVX2, "host"])
def test_symbolic_rows_are_padded_to_whole_tiles(rng, target_spec):
    """A dynamic row count (a sequence length): the rows are padded to whole register tiles
    inside the packed kernel and cropped back, so any count is right, the accumulators stay in a
    stack tile (keep_local_tiles_on_stack), and an epilogue (bias, gelu) follows."""
    from tvm.target.codegen import llvm_get_system_cpu

    target = tvm.target.Target(AVX2 if target_spec == AVX2 else {"kind": "llvm", "mcpu": llvm_get_system_cpu()})
    if target_spec == AVX2 and not {"avx2", "fma"} <= cpu.host_features():
        pytest.skip("runs x86-64-v3 (AVX2 + FMA) code: this host lacks it")
    rows = tvm.tirx.Var("n", "int64")
    w, b = _f32(rng, 19, 96), _f32(rng, 96)
    mod = _module([("x", (1, rows, 19))], lambda bb, x: relax.op.nn.relu(
        relax.op.add(relax.op.matmul(x, relax.const(w)), relax.const(b))))
    assert _hot_rule(_rules(mod, target), "packed_matmul") == "PackedGemm"
    executable = pipeline.build(mod, target, {})
    for count in (1, 7, 8, 13, 64):
        x = _f32(rng, 1, count, 19)
        np.testing.assert_allclose(_run(executable, x), np.maximum(x @ w + b, 0), rtol=1e-4, atol=1e-4)


def _conv_nhwc(x, w, stride, padding, dilation):
    """float64 numpy reference: x NHWC, w HWIO, padding (top, left, bottom, right)."""
    top, left, bottom, right = padding
    x = np.pad(x.astype(np.float64), [(0, 0), (top, bottom), (left, right), (0, 0)])
    kh, kw, _, _ = w.shape
    (sh, sw), (dh, dw) = stride, dilation
    oh = (x.shape[1] - dh * (kh - 1) - 1) // sh + 1
    ow = (x.shape[2] - dw * (kw - 1) - 1) // sw + 1
    out = 0
    for r in range(kh):
        for s in range(kw):
            patch = x[:, r * dh: r * dh + sh * (oh - 1) + 1: sh, s * dw: s * dw + sw * (ow - 1) + 1: sw, :]
            out = out + patch @ w[r, s].astype(np.float64)
    return out


@pytest.mark.parametrize("kernel,stride,padding,dilation", [
    (3, 1, 1, 1),     # ResNet's 3x3 convs (static ones go to Winograd)
    (3, 2, 1, 1),     # stride 2: the padded tiles read further into the widened input
    (1, 1, 0, 1),     # 1x1, no zero padding of its own: the input is widened anyway
    (3, 1, 2, 2),     # dilation 2
])
def test_conv2d_nhwc_over_symbolic_image_size(rng, target, kernel, stride, padding, dilation, monkeypatch):
    """A symbolic height and width: the packed conv runs whole register tiles of a width padded
    inside the kernel and crops them back, so every size is right (the width is the tile's row
    axis: 1 column, fewer than a tile, several tiles with a remainder). Winograd is off here (it
    takes the 3x3 stride-1 case over symbolic sizes too: test_tvm_winograd)."""
    from backends.tvm import winograd

    monkeypatch.setitem(winograd.MODE, "m", None)
    h, w = tvm.tirx.Var("h", "int64"), tvm.tirx.Var("w", "int64")
    weight, bias = _f32(rng, kernel, kernel, 8, 32), _f32(rng, 32)

    def body(bb, x):
        y = relax.op.nn.conv2d(x, relax.const(weight), strides=stride, padding=padding, dilation=dilation,
                               data_layout="NHWC", kernel_layout="HWIO")
        return relax.op.nn.relu(relax.op.add(y, relax.const(bias)))

    mod = _module([("x", (1, h, w, 8))], body)
    assert _hot_rule(_rules(mod, target), "packed_conv2d") == "PackedGemm"
    executable = pipeline.build(mod, target, {})
    for size in ((5, 1), (6, 7), (9, 19), (12, 40)):
        x = _f32(rng, 1, *size, 8)
        want = np.maximum(_conv_nhwc(x, weight, (stride, stride), (padding,) * 4, (dilation, dilation)) + bias, 0)
        np.testing.assert_allclose(_run(executable, x), want, rtol=1e-4, atol=1e-4, err_msg=str(size))


@pytest.mark.parametrize("shape,kernel,stride,padding,dilation", [
    ((1, 7, 7, 24), 3, 1, 1, 1),      # a 3x3 conv Winograd leaves (output under 8x8), 49 rows
    ((2, 9, 11, 5), 3, 2, 1, 1),      # stride 2, batch 2, odd sizes
    ((1, 6, 8, 16), 1, 1, 0, 1),      # 1x1 conv: a plain GEMM
    ((1, 10, 9, 3), 3, 1, 2, 2),      # dilation 2
    ((1, 4, 7, 8), 1, 1, 0, 1),       # AVX2: 7 rows leave leftovers, the map's 28 do not
    ((1, 7, 7, 8), 3, 1, 1, 1),       # 7 rows: a leftover row in every row of the map on AVX2
    ((2, 3, 13, 4), 1, 1, 0, 1),      # 13 rows: leftover rows in a partitioned block
    ((3, 14, 14, 16), 1, 1, 0, 1),    # AVX2: 14 rows leave leftovers, an image's 196 do not: the
                                      # rows of each image tiled at once, the epilogue per image
    ((2, 7, 7, 8), 1, 1, 0, 1),       # 7x7 maps at batch 2: 49 rows an image, no whole AVX2 tile
])
def test_conv2d_nhwc(rng, target, shape, kernel, stride, padding, dilation):
    n_out = 32
    w = _f32(rng, kernel, kernel, shape[3], n_out)
    bias = _f32(rng, n_out)

    def body(bb, x):
        y = relax.op.nn.conv2d(x, relax.const(w), strides=stride, padding=padding, dilation=dilation,
                               data_layout="NHWC", kernel_layout="HWIO")
        return relax.op.nn.relu(relax.op.add(y, relax.const(bias)))

    mod = _module([("x", shape)], body)
    assert _hot_rule(_rules(mod, target), "packed_conv2d") == "PackedGemm"
    x = _f32(rng, *shape)
    want = np.maximum(_conv_nhwc(x, w, (stride, stride), (padding,) * 4, (dilation, dilation)) + bias, 0)
    np.testing.assert_allclose(_run(pipeline.build(mod, target, {}), x), want, rtol=1e-4, atol=1e-4)


def test_conv2d_nchw_model(rng):
    """An NCHW model (the emitter's layout): ConvertLayout makes it NHWC, then it is packed."""
    target = tvm.target.Target(AVX2)
    w = _f32(rng, 16, 8, 3, 3)
    mod = _module([("x", (1, 8, 6, 6))], lambda bb, x: relax.op.nn.conv2d(x, relax.const(w), padding=(1, 1)))
    assert _hot_rule(_rules(mod, target), "packed_conv2d") == "PackedGemm"
    x = _f32(rng, 1, 8, 6, 6)
    want = _conv_nhwc(x.transpose(0, 2, 3, 1), w.transpose(2, 3, 1, 0), (1, 1), (1,) * 4, (1, 1))
    np.testing.assert_allclose(_run(pipeline.build(mod, target, {}), x), want.transpose(0, 3, 1, 2),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n,lanes,want", [
    (17, 16, 32),     # a 17-tag head: a 1-wide tile otherwise (scalar), padding doubles the work at most
    (13, 8, 16),      # the same on AVX2
    (7, 16, 7),       # padding would more than double the work: the generic rule's 7-wide tile
    (100, 16, 100),   # a 10-wide tile is vector enough
    (1000, 16, 1024), # wide heads: two vectors
    (48, 16, 48),     # narrow vector multiples stay
    (10000, 16, 10016),  # a wide odd number of vectors: two-vector panels
    (10000, 8, 10000),   # an even number of AVX2 vectors stays
])
def test_padded_width_policy(n, lanes, want):
    assert gemm.padded_width(n, lanes) == want
