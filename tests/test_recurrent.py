"""The recurrent ops (compiler/ops/recurrent.py): nn.LSTM / nn.GRU imported as ``lstm`` / ``gru``
and run by the reference interpreter against PyTorch eager over a grid of configurations, then
the ONNX artifact (onnxruntime's LSTM/GRU kernels) and the llvm artifact (one TIR kernel per
layer, backends/tvm/recurrent_kernel.py, also over its own grid) against the interpreter.
Forms our ops do not express (projections) must keep PyTorch's decomposition, not fail."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from compiler.errors import UnsupportedOpError
from cpu_emulation import needs_qemu, run_as_cpu
from tests.op_check import check_backend, check_frontend, randn, run_onnx, run_tvm

# (cell, layers, bidirectional, batch_first, with initial state, bias, seq_len)
CONFIGS = [
    ("lstm", 1, False, False, False, True, 5),
    ("lstm", 2, False, True, True, True, 4),
    ("lstm", 2, True, True, False, True, 3),
    ("lstm", 1, True, False, True, False, 1),
    ("gru", 1, False, False, False, True, 5),
    ("gru", 2, True, False, True, True, 4),
    ("gru", 1, True, True, False, False, 3),
    ("gru", 2, False, True, True, True, 1),
]
IDS = ["-".join(str(p) for p in c) for c in CONFIGS]
INPUT, HIDDEN, BATCH = 6, 8, 2


class Recurrent(nn.Module):
    def __init__(self, cell, layers, bidirectional, batch_first, with_state, bias, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        kind = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = kind(INPUT, HIDDEN, layers, bias=bias, batch_first=batch_first, bidirectional=bidirectional)
        self.cell, self.with_state = cell, with_state

    def forward(self, x, *state):
        if not self.with_state:
            y, final = self.rnn(x)
        else:
            y, final = self.rnn(x, tuple(state) if self.cell == "lstm" else state[0])
        return (y,) + (tuple(final) if self.cell == "lstm" else (final,))


def _case(cell, layers, bidirectional, batch_first, with_state, bias, seq_len):
    with torch.random.fork_rng():
        module = Recurrent(cell, layers, bidirectional, batch_first, with_state, bias).eval()
    x = randn(*((BATCH, seq_len) if batch_first else (seq_len, BATCH)), INPUT, seed=1)
    states = layers * (2 if bidirectional else 1)
    inputs = [x] + [randn(states, BATCH, HIDDEN, seed=2 + k) for k in range(2 if cell == "lstm" else 1)
                    if with_state]
    return module, inputs


@pytest.fixture(scope="module", params=CONFIGS, ids=IDS)
def imported(request):
    """(graph, input arrays, interpreter outputs) of one configuration, checked against eager."""
    module, inputs = _case(*request.param)
    graph, arrays, reference = check_frontend(module, inputs, ops=(request.param[0],))
    assert graph.op_counts()[request.param[0]] == request.param[1]  # one op per layer
    return graph, arrays, reference


def test_reference_matches_eager(imported):
    graph, _, reference = imported
    assert all(abs(r).max() > 0 for r in reference)


def test_onnx_matches_interpreter(imported):
    graph, arrays, reference = imported
    check_backend(run_onnx, graph, arrays, reference, rtol=1e-5, atol=1e-6, name="onnx")


@pytest.mark.slow
@pytest.mark.parametrize("index", [1, 5])  # a batch-first LSTM with states, a bidirectional GRU
def test_llvm_matches_interpreter(index):
    module, inputs = _case(*CONFIGS[index])
    graph, arrays, reference = check_frontend(module, inputs, ops=(CONFIGS[index][0],))
    check_backend(run_tvm, graph, arrays, reference, rtol=1e-5, atol=1e-6, name="tvm-llvm")


# The llvm kernel (backends/tvm/recurrent_kernel.py), one op graph per case, against the interpreter:
# (cell, T, B, I, H, bidirectional, biases, initial states, weights constant). H 19 / 37 leave a
# scalar tail after the 16-lane gate loop, B 3 runs the hidden product a row at a time (B 2, 4: two
# rows per pass), T*B leaves remainders 0-4 after the projection's 6-row tiles; weights given as
# graph inputs take the Relax packing path instead of the compile-time one.
KERNEL_CASES = [
    ("lstm", 9, 1, 6, 19, False, True, False, True),
    ("lstm", 4, 3, 7, 16, True, True, True, True),
    ("lstm", 1, 4, 5, 37, True, False, True, True),
    ("lstm", 3, 2, 6, 8, True, True, True, False),
    ("gru", 7, 1, 5, 19, True, True, False, True),
    ("gru", 4, 3, 7, 32, False, True, True, True),
    ("gru", 1, 2, 4, 37, True, False, False, True),
    ("gru", 3, 2, 6, 8, True, True, True, False),
]


def _kernel_graph(cell, t_len, batch, inputs, hidden, bidirectional, biases, states, const_weights, x=None):
    """A one-layer ``cell`` graph (weights scaled as nn.LSTM/GRU initialise them) and its inputs."""
    from compiler.ir import DType, Graph, TensorType

    rng = np.random.default_rng(7)
    d, gates = 2 if bidirectional else 1, 4 if cell == "lstm" else 3
    scale = hidden ** -0.5
    shapes = [(d, gates * hidden, inputs), (d, gates * hidden, hidden)] + [(d, gates * hidden)] * (2 if biases else 0)
    weights = [rng.uniform(-scale, scale, s).astype(np.float32) for s in shapes]
    g = Graph(cell)
    arrays = [rng.uniform(-2, 2, (t_len, batch, inputs)).astype(np.float32) if x is None else x]
    values = [g.add_input("x", TensorType(DType("float32"), arrays[0].shape))]
    for k, w in enumerate(weights):
        if const_weights:
            values.append(g.add_constant(w, f"w{k}"))
        else:
            values.append(g.add_input(f"w{k}", TensorType(DType("float32"), w.shape)))
            arrays.append(w)
    if states:
        values += [None] * (4 - len(weights))  # absent biases before the states
        for k in range(2 if cell == "lstm" else 1):
            values.append(g.add_input(f"s{k}", TensorType(DType("float32"), (d, batch, hidden))))
            arrays.append(rng.uniform(-1, 1, (d, batch, hidden)).astype(np.float32))
    g.set_outputs(list(g.add_node(cell, values, {"hidden_size": hidden, "bidirectional": bidirectional}).outputs))
    return g, arrays


@pytest.mark.parametrize("case", KERNEL_CASES, ids=["-".join(map(str, c)) for c in KERNEL_CASES])
def test_llvm_kernel_matches_interpreter(case):
    from compiler.interpreter import run_graph

    graph, arrays = _kernel_graph(*case)
    reference = run_graph(graph, arrays)
    check_backend(run_tvm, graph, arrays, reference, rtol=1e-5, atol=1e-6, name="tvm-llvm")


def test_llvm_kernel_keeps_nan_and_saturates():
    """NaN in one step of one batch row: NaN exactly where the interpreter has it (that row, from
    that step on in the forward direction and up to it in the backward one); inputs far beyond the
    sigmoid/tanh range saturate instead of overflowing."""
    from compiler.interpreter import run_graph

    x = np.random.default_rng(3).uniform(-2, 2, (5, 2, 4)).astype(np.float32)
    x[2, 0, 1] = np.nan
    x[:, 1] *= 1e4  # row 1: gates at +-1e4 and beyond
    for cell in ("lstm", "gru"):
        graph, arrays = _kernel_graph(cell, 5, 2, 4, 19, True, True, False, True, x=x)
        with np.errstate(over="ignore"):  # the interpreter's exp(-x) overflows to inf (sigmoid 0)
            reference = run_graph(graph, arrays)
        got = run_tvm(graph, arrays)
        for g, w in zip(got, reference):
            np.testing.assert_array_equal(np.isnan(g), np.isnan(w))
            assert np.isnan(w).any() and not np.isnan(w).all()
            np.testing.assert_allclose(np.nan_to_num(g), np.nan_to_num(w), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_llvm_lowers_a_layer_to_one_kernel_call_however_long_the_sequence(cell):
    """One call of one TIR function per layer: the Relax program does not grow with the sequence
    length (unrolled, every step added a hidden matmul and its gate kernels). cuda keeps the
    unrolled form (the kernel is CPU code)."""
    from backends.tvm.lower import to_relax

    def calls(t_len, kind="llvm"):
        mod, _ = to_relax(_kernel_graph(cell, t_len, 2, 6, 8, True, True, True, True)[0], kind)
        kernels = [gv.name_hint for gv, f in mod.functions_items() if gv.name_hint.startswith(f"{cell}_layer")]
        return len(mod["main"].body.blocks[0].bindings), kernels

    short, long_ = calls(2), calls(9)
    assert short == long_ and short[1] == [f"{cell}_layer"], (short, long_)
    assert calls(9, "cuda")[1] == [] and calls(9, "cuda")[0] > long_[0]


def test_projections_keep_pytorchs_decomposition():
    torch.manual_seed(0)
    module = nn.LSTM(INPUT, HIDDEN, 2, proj_size=3).eval()
    graph, _, _ = check_frontend(lambda x: module(x)[0], [randn(4, BATCH, INPUT, seed=1)])
    assert "lstm" not in graph.op_counts()


def test_lstm_inside_a_model_matches_eager():
    from models import LSTMLanguageModel

    model = LSTMLanguageModel.small().eval()
    check_frontend(model, list(model.example_inputs(2)), ops=("lstm", "linear"), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_onnx_artifact_with_external_rnn_weights_loads(cls, tmp_path):
    """Weights and biases big enough to be external data: the emitter's intermediate (reordered,
    then concatenated) bias blocks must not stay initializers, or onnxruntime prunes them and
    refuses the values handed to it (full-size LSTM LM / GRU tagger artifacts failed to load)."""
    import compiler
    from backends.onnx.emit import EXTERNAL_MIN_BYTES

    torch.manual_seed(0)
    hidden = EXTERNAL_MIN_BYTES // 4  # one gate block of the bias alone reaches the threshold
    class Recurrent(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = cls(8, hidden, batch_first=True)

        def forward(self, t):
            return self.rnn(t)[0]

    model = Recurrent().eval()
    x = randn(2, 5, 8, seed=3)
    art = compiler.compile(model, (x,), target="onnx", output=tmp_path / "m.aot")
    with torch.no_grad():
        want = model(x).numpy()
    assert abs(art.load()(x.numpy()) - want).max() < 1e-4


def test_hls_refuses_in_one_line(tmp_path):
    import compiler

    torch.manual_seed(0)
    with pytest.raises(UnsupportedOpError, match="HLS backend does not support gru") as info:
        compiler.compile(nn.GRU(4, 8).eval(), (randn(3, 1, 4),), target="hls", output=tmp_path / "g.aot")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "g.aot").exists()


class _Stack(nn.Module):
    """A bidirectional LSTM (H 19: a scalar gate tail) into a GRU (H 32), batch 3."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lstm = nn.LSTM(6, 19, bidirectional=True)
        self.gru = nn.GRU(38, 32)

    def forward(self, x):
        return self.gru(self.lstm(x)[0])[0]


@needs_qemu
@pytest.mark.slow
def test_avx2_variant_of_the_recurrent_kernel_matches_eager(tmp_path):
    """The kernel's 16-lane vectors and 64-wide tiles split into AVX2 registers: the artifact's
    x86-64-v3 library, run as an AVX2-only CPU (qemu Haswell), gives eager's numbers."""
    import compiler

    model = _Stack().eval()
    x = randn(5, 3, 6, seed=4)
    path = tmp_path / "stack.aot"
    compiler.compile(model, (x,), target="llvm", output=path)
    np.save(tmp_path / "x.npy", x.numpy())
    code = (f"import numpy as np, compiler; m = compiler.load({str(path)!r}); "
            f"np.save({str(tmp_path / 'y.npy')!r}, m(np.load({str(tmp_path / 'x.npy')!r}))); "
            "print('LOADED', m._runner.library)")
    result = run_as_cpu(code, timeout=900)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert "LOADED model.x86-64-v3.so" in result.stdout, result.stdout
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), want, rtol=1e-4, atol=1e-5)
