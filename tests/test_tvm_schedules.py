"""The search-free CPU schedules of backends/tvm, each against numpy or the unscheduled module.

Every case builds a small Relax module, checks that the rule meant for its hot PrimFunc is the
one that takes it (so a rule that silently stops matching fails here), compiles it with the
pipeline and compares with numpy (or with TVM's unscheduled build where numpy has no short
reference, e.g. convolution). Shapes have remainders on purpose (37, 23, 19, ...).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from tvm import relax

from backends.tvm import gemm, pipeline, schedules
from compiler.errors import CompileError


@pytest.fixture(scope="module")
def target():
    from tvm.target.codegen import llvm_get_system_cpu

    return tvm.target.Target({"kind": "llvm", "mcpu": llvm_get_system_cpu()})


def _module(params, body):
    """A one-function Relax module: ``params`` = [(name, shape)], ``body(bb, *vars)`` -> output."""
    bb = relax.BlockBuilder()
    args = [relax.Var(name, relax.TensorType(shape, "float32")) for name, shape in params]
    with bb.function("main", args):
        with bb.dataflow():
            out = bb.emit_output(body(bb, *args))
        bb.emit_func_output(out)
    return bb.get()


def _run(executable, *arrays):
    vm = relax.VirtualMachine(executable, tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(a) for a in arrays]).numpy()


def _unscheduled(mod, target, *arrays):
    """TVM's own build without our preparation or rules: the reference for ops numpy lacks."""
    return _run(tvm.compile(mod, target=target), *arrays)


def _rules(mod, target, convert_layout=True) -> dict[str, str | None]:
    prepared = pipeline.prepare_module(mod, convert_layout=convert_layout, target=target)
    return {gv.name_hint: schedules.rule_for(f, target) for gv, f in prepared.functions.items()
            if isinstance(f, tvm.tirx.PrimFunc)}


def _assert_rule(rules: dict, fragment: str, rule: str) -> None:
    picked = {name: r for name, r in rules.items() if fragment in name}
    assert picked, f"no PrimFunc named like {fragment!r} in {sorted(rules)}"
    assert set(picked.values()) == {rule}, picked


def _const(rng, *shape):
    return rng.standard_normal(shape).astype("float32")


@pytest.mark.parametrize("m,k,n", [(5, 37, 23), (16, 64, 48), (1, 100, 7), (3, 40, 512)])
def test_dense_bias_relu(rng, target, m, k, n):
    w, b = _const(rng, k, n), _const(rng, n)
    mod = _module([("x", (m, k))], lambda bb, x: relax.op.nn.relu(
        relax.op.add(relax.op.matmul(x, relax.const(w)), relax.const(b))))
    # A constant weight whose width is a vector multiple is packed (tests/test_tvm_gemm.py).
    lanes = schedules.vector_lanes(target)
    packed = gemm.micro_kernel(m, gemm.padded_width(n, lanes), lanes)[1]
    _assert_rule(_rules(mod, target), "matmul", "PackedGemm" if packed else "TiledContraction")
    x = _const(rng, m, k)
    got = _run(pipeline.build(mod, target, {}), x)
    np.testing.assert_allclose(got, np.maximum(x @ w + b, 0), rtol=1e-4, atol=1e-4)


def test_dense_with_gelu_epilogue(rng, target):
    """gelu reads the accumulator twice (x * erf(x)): the epilogue must be fused whole (inlining
    block by block once left a read of a buffer nothing wrote)."""
    import math

    w, b = _const(rng, 24, 48), _const(rng, 48)
    mod = _module([("x", (2, 5, 24))], lambda bb, x: relax.op.nn.gelu(
        relax.op.add(relax.op.matmul(x, relax.const(w)), relax.const(b))))
    packed = gemm.micro_kernel(5, 48, schedules.vector_lanes(target))[1]
    _assert_rule(_rules(mod, target), "matmul", "PackedGemm" if packed else "TiledContraction")
    x = _const(rng, 2, 5, 24)
    z = (x @ w + b).astype("float64")
    want = 0.5 * z * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))
    np.testing.assert_allclose(_run(pipeline.build(mod, target, {}), x), want, rtol=1e-4, atol=1e-5)


def test_dense_avx2_target(rng):
    """The AVX2 tiling (8 lanes, fewer accumulators) on a CPU without AVX-512 in its target."""
    avx2 = tvm.target.Target({"kind": "llvm", "mcpu": "haswell"})
    w = _const(rng, 70, 40)
    mod = _module([("x", (9, 70))], lambda bb, x: relax.op.matmul(x, relax.const(w)))
    _assert_rule(_rules(mod, avx2), "matmul", "PackedGemm" if gemm.micro_kernel(9, 40, 8)[1] else "TiledContraction")
    x = _const(rng, 9, 70)
    np.testing.assert_allclose(_run(pipeline.build(mod, avx2, {}), x), x @ w, rtol=1e-4, atol=1e-4)


def test_batch_matmul(rng, target):
    mod = _module([("a", (2, 7, 19)), ("b", (2, 19, 33))], lambda bb, a, b: relax.op.matmul(a, b))
    _assert_rule(_rules(mod, target), "matmul", "TiledContraction")
    a, b = _const(rng, 2, 7, 19), _const(rng, 2, 19, 33)
    np.testing.assert_allclose(_run(pipeline.build(mod, target, {}), a, b), a @ b, rtol=1e-4, atol=1e-4)


def _conv_module(rng, groups=1):
    w = _const(rng, 12, 6 // groups, 3, 3)
    bias = _const(rng, 1, 12, 1, 1)
    return _module([("x", (2, 6, 11, 9))], lambda bb, x: relax.op.nn.relu(relax.op.add(
        relax.op.nn.conv2d(x, relax.const(w), strides=(2, 1), padding=(1, 1), groups=groups),
        relax.const(bias))))


@pytest.mark.parametrize("groups", [1, 6])
@pytest.mark.parametrize("nhwc", [True, False])
def test_conv2d(rng, target, nhwc, groups):
    """NHWC (the pipeline's layout) and NCHW; dense and grouped/depthwise-like convolution."""
    mod = _conv_module(rng, groups)
    _assert_rule(_rules(mod, target, convert_layout=nhwc), "conv2d", "TiledContraction")
    x = _const(rng, 2, 6, 11, 9)
    prepared = pipeline.schedule_module(pipeline.prepare_module(mod, convert_layout=nhwc), target)
    got = _run(tvm.compile(prepared, target=target), x)
    np.testing.assert_allclose(got, _unscheduled(mod, target, x), rtol=1e-4, atol=1e-4)


def test_max_pool(rng, target):
    mod = _module([("x", (1, 5, 9, 9))], lambda bb, x: relax.op.nn.max_pool2d(x, (2, 2), (2, 2)))
    x = _const(rng, 1, 5, 9, 9)
    want = x[:, :, :8, :8].reshape(1, 5, 4, 2, 4, 2).max(axis=(3, 5))
    np.testing.assert_allclose(_run(pipeline.build(mod, target, {}), x), want)


def test_softmax(rng, target):
    mod = _module([("x", (3, 37))], lambda bb, x: relax.op.nn.softmax(x, axis=-1))
    _assert_rule(_rules(mod, target), "softmax", "Reduction")
    x = _const(rng, 3, 37)
    e = np.exp(x - x.max(-1, keepdims=True))
    np.testing.assert_allclose(_run(pipeline.build(mod, target, {}), x), e / e.sum(-1, keepdims=True),
                               rtol=1e-5, atol=1e-6)


def test_layer_norm(rng, target):
    gamma, beta = _const(rng, 24), _const(rng, 24)
    mod = _module([("x", (4, 10, 24))], lambda bb, x: relax.op.nn.layer_norm(
        x, relax.const(gamma), relax.const(beta), axes=[-1], epsilon=1e-5))
    _assert_rule(_rules(mod, target), "layer_norm", "Reduction")
    x = _const(rng, 4, 10, 24)
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    want = (x - mean) / np.sqrt(var + 1e-5) * gamma + beta
    np.testing.assert_allclose(_run(pipeline.build(mod, target, {}), x), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("op", ["gelu", "gelu_tanh", "exp", "tanh"])
def test_fast_math_stays_within_tolerance(rng, target, op):
    """gelu/gelu_tanh/exp/tanh run as TVM's polynomial forms: compare with numpy/math on a wide
    range (and gelu_tanh with a NaN, which stays NaN)."""
    import math

    x = (_const(rng, 6, 50) * 4).astype("float32")
    x[0, 0] = np.nan if op == "gelu_tanh" else x[0, 0]
    relax_op = {"gelu": relax.op.nn.gelu, "gelu_tanh": relax.op.nn.gelu_tanh, "exp": relax.op.exp,
                "tanh": relax.op.tanh}[op]
    erf = np.vectorize(math.erf)
    want = {"gelu": lambda v: 0.5 * v * (1 + erf(v / math.sqrt(2))), "exp": np.exp, "tanh": np.tanh,
            "gelu_tanh": lambda v: 0.5 * v * (1 + np.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3)))}[op](
        x.astype("float64"))
    mod = _module([("x", (6, 50))], lambda bb, v: relax_op(v))
    got = _run(pipeline.build(mod, target, {}), x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_gelu_tanh_calls_no_scalar_tanh(target):
    """The tanh gelu (GPT-2's) is the polynomial form: no libm tanhf call per element."""
    mod = _module([("x", (4, 64))], lambda bb, v: relax.op.nn.gelu_tanh(v))
    prepared = pipeline.prepare_module(mod, target=target)
    text = "\n".join(f.script() for f in prepared.functions.values() if isinstance(f, tvm.tirx.PrimFunc))
    assert "tanh" in text.lower() and "T.tanh(" not in text


def test_mean_over_sequence(rng, target):
    mod = _module([("x", (2, 9, 40))], lambda bb, x: relax.op.mean(x, axis=[1]))
    x = _const(rng, 2, 9, 40)
    np.testing.assert_allclose(_run(pipeline.build(mod, target, {}), x), x.mean(1), rtol=1e-5, atol=1e-6)


def test_injective_chain(rng, target):
    c = _const(rng, 17)
    mod = _module([("x", (3, 5, 17)), ("y", (3, 5, 17))], lambda bb, x, y: relax.op.permute_dims(
        relax.op.nn.relu(relax.op.multiply(relax.op.add(x, y), relax.const(c))), [2, 0, 1]))
    rules = _rules(mod, target)
    assert set(rules.values()) == {"Injective"}, rules
    x, y = _const(rng, 3, 5, 17), _const(rng, 3, 5, 17)
    want = np.maximum((x + y) * c, 0).transpose(2, 0, 1)
    np.testing.assert_allclose(_run(pipeline.build(mod, target, {}), x, y), want, rtol=1e-6)


def test_symbolic_batch(rng, target):
    """A dynamic batch dim: rules must not split symbolic loops, and results stay exact."""
    w, b = _const(rng, 40, 32), _const(rng, 32)
    n = tvm.tirx.Var("n", "int64")
    mod = _module([("x", (n, 40))], lambda bb, x: relax.op.nn.softmax(relax.op.nn.relu(
        relax.op.add(relax.op.matmul(x, relax.const(w)), relax.const(b)))))
    rules = _rules(mod, target)
    assert None not in rules.values(), rules
    executable = pipeline.build(mod, target, {})
    for batch in (1, 5, 16):
        x = _const(rng, batch, 40)
        z = np.maximum(x @ w + b, 0)
        e = np.exp(z - z.max(-1, keepdims=True))
        np.testing.assert_allclose(_run(executable, x), e / e.sum(-1, keepdims=True), rtol=1e-4, atol=1e-6)


def test_symbolic_rows_with_a_width_of_no_lane_divisor(rng, target):
    """Symbolic rows and a prime width (GPT-2's 50257-word head, shrunk): a one-column tile,
    so nothing below the tile loop is vectorized (the row loop once was: a build error)."""
    w = _const(rng, 24, 37)
    n = tvm.tirx.Var("n", "int64")
    mod = _module([("x", (1, n, 24))], lambda bb, x: relax.op.matmul(x, relax.const(w)))
    assert None not in _rules(mod, target).values()
    executable = pipeline.build(mod, target, {})
    for rows in (1, 9):
        x = _const(rng, 1, rows, 24)
        np.testing.assert_allclose(_run(executable, x), x @ w, rtol=1e-4, atol=1e-5)


def test_symbolic_rows_with_a_padded_width(rng, target):
    """Symbolic rows and a constant weight wide enough to be padded to a vector multiple (a
    word head): packed with padded rows, the padded columns cropped, every row right."""
    width = gemm.PAD_MIN_WIDTH + 5
    w = _const(rng, 24, width)
    n = tvm.tirx.Var("n", "int64")
    mod = _module([("x", (1, n, 24))], lambda bb, x: relax.op.matmul(x, relax.const(w)))
    _assert_rule(_rules(mod, target), "packed_matmul", "PackedGemm")
    executable = pipeline.build(mod, target, {})
    for rows in (1, 5, 9):
        x = _const(rng, 1, rows, 24)
        np.testing.assert_allclose(_run(executable, x), x @ w, rtol=1e-4, atol=1e-5)


def test_register_tiles_stay_on_the_stack(target):
    """TVM lowers every ``local`` buffer to TVMBackendAllocWorkspace (a pointer LLVM cannot tell
    from the operands, so a tile of accumulators went to memory on every reduction step); our
    TIR pipeline keeps the small ones as stack allocas."""
    # Static shapes: the tiled contraction's accumulator tile is its only local buffer (over a
    # symbolic extent the kernel also stores its padded product, a workspace by right).
    mod = _module([("a", (32, 64)), ("b", (64, 48))], lambda bb, a, b: relax.op.matmul(a, b))
    lowered = pipeline.lower(mod, target)
    with tvm.transform.PassContext(opt_level=3), target:
        tir = relax.get_default_pipeline(target)(lowered)
    tir = tvm.IRModule({gv: f for gv, f in tir.functions.items() if isinstance(f, tvm.tirx.PrimFunc)})

    def workspace_calls(tir_pipeline):
        source = tvm.tirx.build(tir, target=target, pipeline=tir_pipeline).inspect_source("ll")
        return source.count("load ptr, ptr @__TVMBackendAllocWorkspace")

    assert workspace_calls("default") > 0  # the accumulator tile (what this test is about)
    assert workspace_calls(pipeline.cpu_tir_pipeline()) == 0


@pytest.mark.parametrize("channels,rule", [(256, "PackedGemm"), (36, "TiledContraction")])
def test_symbolic_image_size_conv(rng, target, channels, rule):
    """Symbolic height and width with more output channels than one register tile: the packed
    conv over a padded width (a vector multiple of channels) or the tiled conv (36 channels: no
    panel fits) keeps its rule (no fallback to the slow reduction) and writes exactly its tiles
    (a fused loop over symbolic extents once made the tiled conv write past the output: heap
    corruption on a dynamic-size ResNet-18)."""
    w, b = _const(rng, channels, 16, 3, 3) * 0.2, _const(rng, 1, channels, 1, 1)
    h, wd = tvm.tirx.Var("h", "int64"), tvm.tirx.Var("w", "int64")
    mod = _module([("x", (1, 16, h, wd))], lambda bb, x: relax.op.nn.relu(relax.op.add(relax.op.nn.conv2d(
        x, relax.const(w), strides=2, padding=1), relax.const(b))))
    _assert_rule(_rules(mod, target), "conv2d", rule)
    ours, reference = pipeline.build(mod, target, {}), tvm.compile(mod, target=target)
    for size in ((9, 9), (14, 23), (32, 16)):
        x = _const(rng, 1, 16, *size)
        np.testing.assert_allclose(_run(ours, x), _run(reference, x), rtol=1e-4, atol=1e-4)


def test_mlp_end_to_end(rng, target):
    """The seed MLP's shape after padding (1000-512-112-1), batch 1 and 16, through build()."""
    ws = [_const(rng, 1000, 512) * 0.05, _const(rng, 512, 112) * 0.05, _const(rng, 112, 1) * 0.05]
    bs = [_const(rng, 512), _const(rng, 112), _const(rng, 1)]

    def body(bb, x):
        for i, (w, b) in enumerate(zip(ws, bs)):
            x = bb.emit(relax.op.add(relax.op.matmul(x, relax.const(w)), relax.const(b)))
            if i < 2:
                x = bb.emit(relax.op.nn.relu(x))
        return x

    for batch in (1, 16):
        mod = _module([("x", (batch, 1000))], body)
        x = _const(rng, batch, 1000)
        want = x
        for i, (w, b) in enumerate(zip(ws, bs)):
            want = want @ w + b
            want = np.maximum(want, 0) if i < 2 else want
        np.testing.assert_allclose(_run(pipeline.build(mod, target, {}), x), want, rtol=1e-4, atol=1e-4)


def test_unmatched_function_still_runs(rng, target):
    """A function no rule takes (cumulative sum: a scan) compiles unscheduled and is correct."""
    mod = _module([("x", (4, 9))], lambda bb, x: relax.op.cumsum(x, axis=1))
    x = _const(rng, 4, 9)
    np.testing.assert_allclose(_run(pipeline.build(mod, target, {}), x), np.cumsum(x, 1), rtol=1e-5, atol=1e-5)


def test_vector_lanes_follow_target():
    avx512 = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512"})
    avx2 = tvm.target.Target({"kind": "llvm", "mcpu": "haswell"})
    assert schedules.vector_lanes(avx512) == 2 * schedules.vector_lanes(avx2)
    assert schedules.vector_lanes(avx2) * 32 >= 256


def test_tune_without_database_is_a_compile_error(target):
    mod = _module([("x", (2, 3))], lambda bb, x: relax.op.nn.relu(x))
    with pytest.raises(CompileError, match="tuning_db"):
        pipeline.build(mod, target, {"tune": 4})


def test_missing_database_is_a_compile_error(target, tmp_path):
    mod = _module([("x", (2, 3))], lambda bb, x: relax.op.nn.relu(x))
    with pytest.raises(CompileError, match="no tuning database"):
        pipeline.build(mod, target, {"tuning_db": str(tmp_path)})


def _linear_chain_graph(rng, widths, activation="relu"):
    from compiler.ir import DType, Graph, TensorType

    graph = Graph("chain")
    value = graph.add_input("x", TensorType(DType.float32, ("batch", widths[0])))
    for i, (w_in, w_out) in enumerate(itertools.pairwise(widths)):
        weight = graph.add_constant(_const(rng, w_out, w_in), "w")
        bias = graph.add_constant(_const(rng, w_out), "b")
        act = activation if i < len(widths) - 2 else ""
        value = graph.op("linear", value, weight, bias, activation=act)
    graph.set_outputs([value])
    graph.name_outputs()
    return graph


@pytest.mark.parametrize("activation", ["relu", "gelu", "sigmoid"])
def test_prepare_graph_pads_linear_chains_exactly(rng, target, activation):
    """Hidden widths 13 and 7 become 16; the graph's results, inputs and outputs do not change."""
    from compiler.interpreter import run_graph

    graph = _linear_chain_graph(rng, [20, 13, 7, 1], activation)
    x = _const(rng, 3, 20)
    (before,) = run_graph(graph, [x])
    signature = ([(v.name, v.type) for v in graph.inputs], [(v.name, v.type) for v in graph.outputs])
    graph = pipeline.prepare_graph(graph, target)
    graph.verify()
    (after,) = run_graph(graph, [x])
    widths = [n.inputs[1].shape[0] for n in graph.nodes if n.op == "linear"]
    assert widths == [16, 16, 1]
    assert ([(v.name, v.type) for v in graph.inputs], [(v.name, v.type) for v in graph.outputs]) == signature
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-6)


def test_prepare_graph_leaves_shared_hidden_values(rng, target):
    """A hidden value that is also a graph output keeps its width."""
    graph = _linear_chain_graph(rng, [20, 13, 7])
    first = next(n for n in graph.nodes if n.op == "linear")
    graph.set_outputs(list(graph.outputs) + [first.output])
    pipeline.prepare_graph(graph, target)
    assert [n.inputs[1].shape[0] for n in graph.nodes if n.op == "linear"] == [13, 7]


def test_conv_bias_of_lower_rank_fuses_into_the_kernel(rng, target):
    """A bias shaped [C,1,1] (rank 3 against the rank-4 conv): the pipeline gives it rank 4 so
    ConvertLayout keeps the add in NHWC and FuseOps puts it in the convolution's kernel."""
    w, bias = _const(rng, 16, 3, 3, 3), _const(rng, 16)
    # Stride 2: a stride-1 3x3 conv of this size becomes Winograd kernels (tests/test_tvm_winograd.py).
    mod = _module([("x", (1, 3, 10, 10))], lambda bb, x: relax.op.nn.relu(relax.op.add(
        relax.op.nn.conv2d(x, relax.const(w), strides=(2, 2), padding=(1, 1)),
        relax.op.reshape(relax.const(bias), [16, 1, 1]))))
    rules = _rules(mod, target)
    fused = [name for name in rules if "conv2d" in name and "add" in name]
    assert fused and rules[fused[0]] in ("TiledContraction", "PackedGemm"), rules
    x = _const(rng, 1, 3, 10, 10)
    np.testing.assert_allclose(_run(pipeline.build(mod, target, {}), x), _unscheduled(mod, target, x),
                               rtol=1e-4, atol=1e-4)


def test_unreadable_tuning_database_is_a_compile_error(target, tmp_path):
    mod = _module([("x", (2, 3))], lambda bb, x: relax.op.nn.relu(x))
    (tmp_path / "database_workload.json").write_text("not json\n")
    (tmp_path / "database_tuning_record.json").write_text("[0, 1]\n")
    with pytest.raises(CompileError, match="cannot be read.*tune again"):
        pipeline.build(mod, target, {"tuning_db": str(tmp_path)})
