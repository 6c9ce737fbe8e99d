"""int8 artifacts compute the interpreter's integers on every x86 CPU, with or without VNNI.

Without VNNI (AVX2, AVX-512F) onnxruntime's u8 x s8 kernels multiply uint8 activations by int8
weights and add each pair of adjacent products into a saturating int16 lane (``vpmaddubsw``), then
widen to int32. So a sum is exact iff every pair a0 * w0 + a1 * w1 (a in the uint8 range, w the
stored int8 weights, zero points not yet subtracted) fits int16. Two guarantees make that hold:

* the quantize pass stores weights that meet uint8 activations in [-WEIGHT_QMAX, WEIGHT_QMAX]
  (7 bits), which keeps the fast u8 x s8 kernels;
* the ONNX backend stores any other constant int8 weight holding a value outside [-64, 63] (PT2E
  imports, hand-built ``matmul_integer``) as uint8 with its zero point moved by 128: the same
  integers, run on u8 x u8 kernels, which never saturate.

The first tests prove the bound from the emitted graphs, on any host: for every weight that can
reach an integer kernel, the worst pair sum (from the dtypes' ranges and the weight's values) fits
int16, and the worst int32 accumulation (K products) fits int32 (our TVM lowering widens to int32
before the matmul, so only that bound applies there). The last ones run a few emitted models as an
AVX2-only CPU under qemu and compare with the interpreter, including a control model with
full-range weights that must come out wrong there (so the emulation really shows the saturation).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from backends.onnx.emit import emit_onnx
from compiler.interpreter import run_graph
from cpu_emulation import needs_qemu, run_as_cpu
from passes import EliminateDeadCode
from passes.quantize import WEIGHT_QMAX, quantize_graph

torch = pytest.importorskip("torch")

U8 = np.iinfo(np.uint8)
I16 = np.iinfo(np.int16)
I32 = np.iinfo(np.int32)
# Inputs of the integer ONNX ops that hold the weight (the operand paired with uint8 activations)
WEIGHT_INPUT = {"MatMulInteger": 1, "ConvInteger": 1}


# -- the bound, computed from an emitted model -------------------------------------------------------
def integer_weights(model: onnx.ModelProto) -> list[tuple[str, np.ndarray, int]]:
    """(name, stored values, K) of every constant integer weight an onnxruntime integer kernel can
    read: a dequantized weight feeding Conv / Gemm / MatMul (onnxruntime fuses those into
    QLinearConv / QGemm / QLinearMatMul) and MatMulInteger's b. K: products per output."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    dequantized = {n.output[0]: n.input[0] for n in model.graph.node
                   if n.op_type == "DequantizeLinear" and n.input[0] in inits}
    found = []
    for node in model.graph.node:
        if node.op_type in WEIGHT_INPUT:
            name = node.input[WEIGHT_INPUT[node.op_type]]
        elif node.op_type in ("Conv", "Gemm", "MatMul") and node.input[1] in dequantized:
            name = dequantized[node.input[1]]
        else:
            continue
        w = inits[name]
        if w.dtype.kind not in "iu" or w.ndim < 2:
            continue
        transposed = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
        k = int(np.prod(w.shape[1:])) if node.op_type in ("Conv", "ConvInteger") or transposed else w.shape[0]
        found.append((name, w, k))
    return found


def pair_sum_range(w: np.ndarray) -> tuple[int, int]:
    """Extremes of a0 * w0 + a1 * w1 over uint8 a0, a1 and two of the stored weights: what a
    u8 x s8 kernel holds in one int16 lane. (A uint8 weight runs on u8 x u8 kernels, whose
    16-bit operands and 32-bit pair sums cannot saturate: its lane bound is int32.)"""
    lo, hi = min(int(w.min()), 0), max(int(w.max()), 0)
    return 2 * U8.max * lo, 2 * U8.max * hi


def assert_saturation_impossible(model: onnx.ModelProto) -> int:
    """The proof for one model; returns how many integer weights it checked."""
    weights = integer_weights(model)
    for name, w, k in weights:
        if w.dtype == np.int8:
            lo, hi = pair_sum_range(w)
            assert I16.min <= lo and hi <= I16.max, f"{name}: u8 x s8 pair sums reach [{lo}, {hi}]"
        # int32 accumulation (onnxruntime and our TVM lowering): K products of (a - a_zp) and
        # (w - w_zp), each at most 255 in magnitude for any 8-bit values and zero points
        worst = k * U8.max * U8.max
        assert worst <= I32.max, f"{name}: {k} products can reach {worst} in int32"
    return len(weights)


# -- models ------------------------------------------------------------------------------------------
def zoo_quantized(name: str, mode: str):
    from compiler.frontend import export_module, import_exported_program
    from models import ZOO
    from passes import PassManager, make_pipeline

    model = ZOO[name].factory().eval()
    example = model.example_inputs(4)
    graph = import_exported_program(export_module(model, example))
    PassManager(make_pipeline(), verify=True).run(graph)
    rng = np.random.default_rng(0)  # random calibration: scales only matter for the int32 bound
    calibration = [[(rng.standard_normal(t.shape).astype(np.float32) if t.is_floating_point()
                     else t.numpy()) for t in example] for _ in range(2)]
    report = quantize_graph(graph, mode, calibration if mode == "int8" else None)
    EliminateDeadCode().run(graph)
    graph.remove_unused_constants()
    return graph, report


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["int8", "int8-dynamic"])
@pytest.mark.parametrize("name", ["mlp", "lenet", "resnet", "mobilenet", "transformer"])
def test_zoo_int8_weights_cannot_saturate(name, mode):
    graph, report = zoo_quantized(name, mode)
    model = emit_onnx(graph)
    checked = assert_saturation_impossible(model)
    assert checked >= len(report["quantized"]) > 0
    # the quantize pass's own weights are 7-bit: none needed the backend's uint8 form
    assert all(w.dtype == np.int8 and np.abs(w).max() <= WEIGHT_QMAX for _, w, _ in integer_weights(model))


@pytest.mark.slow  # trains the digits models (shared with test_quantize.py in one process)
@pytest.mark.parametrize("mode", ["int8", "int8-dynamic"])
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_digits_int8_weights_cannot_saturate(kind, mode):
    from test_quantize import quantized

    graph, report = quantized(kind, mode)
    assert assert_saturation_impossible(emit_onnx(graph)) >= len(report["quantized"]) > 0


def test_the_proof_rejects_full_range_weights():
    """The check can fail: raw full-range int8 weights in a MatMulInteger break the int16 bound."""
    w = np.array([[127, -3], [127, 5]], np.int8)
    model = raw_matmul_integer_model(w)
    with pytest.raises(AssertionError, match="pair sums"):
        assert_saturation_impossible(model)


def test_backend_stores_full_range_weights_as_uint8():
    """A hand-built matmul_integer with full-range int8 weights: emitted as u8 x u8 (same integers),
    which the proof accepts and onnxruntime computes exactly."""
    from backends.onnx.runtime import session_from_model

    graph, arrays, _ = full_range_matmul_integer()
    model = emit_onnx(graph)
    assert assert_saturation_impossible(model) == 1
    assert [w.dtype for _, w, _ in integer_weights(model)] == [np.uint8]
    session = session_from_model(model.SerializeToString(), threads=1)
    np.testing.assert_array_equal(session.run(None, {session.get_inputs()[0].name: arrays[0]})[0],
                                  run_graph(graph, arrays)[0])


# -- an AVX2-only CPU, emulated -----------------------------------------------------------------------
def full_range_matmul_integer():
    """The op-level case: uint8 x full-range int8 (extremes included), per-column weight zero points."""
    from compiler.ir import DType, Graph, TensorType

    rng = np.random.default_rng(3)
    k, n = 96, 12
    w = rng.integers(-128, 128, (k, n)).astype(np.int8)
    w[:, 0], w[:, 1] = 127, -128
    a = rng.integers(0, 256, (2, 5, k)).astype(np.uint8)
    a[0, 0] = 255
    g = Graph("matmul_integer_full_range")
    x = g.add_input("a", TensorType(DType.uint8, a.shape))
    g.set_outputs([g.op("matmul_integer", x, g.add_constant(w, "w"), g.add_constant(np.uint8(7), "a_zp"),
                        g.add_constant(rng.integers(-3, 4, n).astype(np.int8), "w_zp"))])
    return g, [a], w


def raw_matmul_integer_model(w: np.ndarray) -> onnx.ModelProto:
    """A raw ONNX MatMulInteger of uint8 input by ``w`` (what an emitter without the uint8 form
    would write), the control for the emulation."""
    a = helper.make_tensor_value_info("a", onnx.TensorProto.UINT8, [None, w.shape[0]])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.INT32, None)
    node = helper.make_node("MatMulInteger", ["a", "w"], ["y"])
    graph = helper.make_graph([node], "raw", [a], [y], [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def pt2e_linear():
    """The PT2E-imported linear of test_quant_import (full-range int8 weights, uint8 activations)."""
    from compiler.frontend import export_module, import_exported_program
    from test_quant_import import QuantizedLinear

    rng = np.random.default_rng(5)
    module = QuantizedLinear(rng, in_f=64, out_f=16).eval()
    x = rng.uniform(-2, 2, (8, 64)).astype(np.float32)
    return import_exported_program(export_module(module, (torch.from_numpy(x),))), [x]


def digits_mlp_artifact(tmp_path, mode: str):
    """compile(quantize=mode) of the trained digits MLP (verified on this host) and three test batches."""
    import compiler
    from models.digits import trained_model
    from test_quantize import calibration, test_batches

    batches, _ = test_batches("mlp")
    art = compiler.compile(trained_model("mlp"), (torch.from_numpy(batches[0]),), target="onnx",
                           output=str(tmp_path / f"mlp_{mode}.aot"),
                           quantize=compiler.QuantizeOptions(mode, calibration=[tuple(b) for b in calibration("mlp")]
                                                             if mode == "int8" else None))
    return art, batches[:3]


# The emulated process: numpy, onnxruntime and compiler.load only (no torch), one thread.
EMULATED = """
import json
import numpy as np
import compiler
from backends.onnx.runtime import session_from_model
spec = json.load(open({spec!r}))
out = {{}}
for name, model_path in spec["onnx"].items():
    s = session_from_model(open(model_path, "rb").read(), threads=1)
    out[name] = s.run(None, {{s.get_inputs()[0].name: np.load(spec["inputs"][name])}})[0]
batches = np.load(spec["batches"])
for mode, path in spec["artifacts"].items():
    m = compiler.load(path, threads=1)
    out[mode] = np.stack([m(x) for x in batches])
np.savez(spec["result"], **out)
"""


@pytest.fixture(scope="module")
def avx2_run(tmp_path_factory):
    """Every emulated case in one qemu process (its start and onnxruntime's import cost seconds)."""
    tmp = tmp_path_factory.mktemp("avx2")
    mm_graph, mm_inputs, w = full_range_matmul_integer()
    pt_graph, pt_inputs = pt2e_linear()
    cases = {"matmul_integer": (emit_onnx(mm_graph), mm_inputs[0]),
             "raw_full_range": (raw_matmul_integer_model(w), mm_inputs[0].reshape(-1, w.shape[0])),
             "pt2e_linear": (emit_onnx(pt_graph), pt_inputs[0])}
    spec = {"onnx": {}, "inputs": {}, "result": str(tmp / "result.npz")}
    for name, (model, x) in cases.items():
        spec["onnx"][name] = str(tmp / f"{name}.onnx")
        spec["inputs"][name] = str(tmp / f"{name}.npy")
        onnx.save(model, spec["onnx"][name])
        np.save(spec["inputs"][name], x)
    arts = {}
    for mode in ("int8", "int8-weight"):
        arts[mode], batches = digits_mlp_artifact(tmp, mode)
    spec["artifacts"] = {mode: str(art.path) for mode, art in arts.items()}
    spec["batches"] = str(tmp / "batches.npy")
    np.save(spec["batches"], np.stack(batches))
    (tmp / "spec.json").write_text(json.dumps(spec))
    proc = run_as_cpu(EMULATED.format(spec=str(tmp / "spec.json")), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = dict(np.load(spec["result"]))
    want = {"matmul_integer": run_graph(mm_graph, mm_inputs)[0],
            "raw_full_range": (mm_inputs[0].reshape(-1, w.shape[0]).astype(np.int64) @ w.astype(np.int64)),
            "pt2e_linear": run_graph(pt_graph, pt_inputs)[0]}
    return result, want, arts, batches


@needs_qemu
@pytest.mark.slow
def test_integer_matmuls_are_exact_on_avx2(avx2_run):
    result, want, _, _ = avx2_run
    # the control: raw full-range weights do saturate on the emulated CPU
    assert np.abs(result["raw_full_range"].astype(np.int64) - want["raw_full_range"]).max() > 0
    np.testing.assert_array_equal(result["matmul_integer"], want["matmul_integer"])
    # PT2E QDQ linear (u8 activations, full-range weights): onnxruntime's fused kernel rounds its
    # output once where the QDQ reference rounds twice: at most one output step (0.05) apart
    np.testing.assert_allclose(result["pt2e_linear"], want["pt2e_linear"], rtol=0, atol=0.05 + 1e-6)


@needs_qemu
@pytest.mark.slow
def test_static_int8_digits_mlp_is_exact_on_avx2(avx2_run):
    """The artifact compile() verified on this host, run as an AVX2-only CPU: within the artifact's
    own verification tolerance of the interpreter, and equal to this host's onnxruntime (up to the
    float rounding of the requantization)."""
    result, _, arts, batches = avx2_run
    art = arts["int8"]
    tolerance = art.manifest["target_info"]["tolerance"]
    want = np.stack([run_graph(art.graph, [x])[0] for x in batches])
    here = np.stack([art.load(threads=1)(x) for x in batches])
    np.testing.assert_allclose(result["int8"], want, rtol=tolerance["rtol"], atol=tolerance["atol"])
    np.testing.assert_allclose(result["int8"], here, rtol=0, atol=1e-5 * float(np.abs(here).max()))


@needs_qemu
@pytest.mark.slow
def test_weight_only_int8_keeps_8_bits_and_float_arithmetic_on_avx2(avx2_run):
    """int8-weight dequantizes its full-range (+-127) weights to float at load: no integer kernel,
    so the emulated CPU matches the interpreter like a float model does."""
    result, _, arts, batches = avx2_run
    art = arts["int8-weight"]
    weights = [n.inputs[0].const for n in art.graph.nodes if n.op == "dequantize_linear"]
    assert weights and max(int(np.abs(w).max()) for w in weights) > WEIGHT_QMAX  # really 8-bit
    want = np.stack([run_graph(art.graph, [x])[0] for x in batches])
    np.testing.assert_allclose(result["int8-weight"], want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))
