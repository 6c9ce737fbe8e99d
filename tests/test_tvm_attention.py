"""Attention and matmuls over a symbolic sequence on the llvm target (backends/tvm/attention.py,
softmax.py and gemm.padded_matmul), against numpy at lengths around the padding multiple.

Each case also checks which kernels the pipeline made: without the padding, a symbolic length
left the matmuls on TVM's reduction fallback (q @ k^T at 0.5 GFLOP/s) and the softmax on a loop
with a bounds test per element, both correct but 10-50x slower, so a pass that silently stops
matching fails here rather than only in a benchmark.
"""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from tvm import relax  # noqa: E402

from backends.tvm import pipeline, softmax  # noqa: E402
from test_tvm_schedules import _module, _rules, _run  # noqa: E402

HEADS, DIM = 2, 24
LENGTHS = (1, 7, 16, 17, 40)


@pytest.fixture(scope="module")
def target():
    from tvm.target.codegen import llvm_get_system_cpu

    return tvm.target.Target({"kind": "llvm", "mcpu": llvm_get_system_cpu()})


def _softmax(s):
    e = np.exp(s - s.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _attention_module(mask: str | None):
    """q, k, v [1, HEADS, seq, DIM] with a symbolic seq: softmax(q @ k^T * c [mask]) @ v, the
    masks as BERT (additive [1, 1, 1, seq]) and GPT-2 (``where`` with a [1, 1, seq, seq] bool)
    apply them."""
    seq = tvm.tirx.Var("seq", "int64")
    params = [("q", (1, HEADS, seq, DIM)), ("k", (1, HEADS, seq, DIM)), ("v", (1, HEADS, seq, DIM))]
    if mask == "add":
        params.append(("mask", (1, 1, 1, seq)))
    if mask == "where":
        params.append(("mask", (1, 1, seq, seq)))

    def body(bb, q, k, v, *rest):
        kt = bb.emit(relax.op.permute_dims(k, [0, 1, 3, 2]))
        s = bb.emit(relax.op.multiply(relax.op.matmul(q, kt), relax.const(np.float32(0.2))))
        if mask == "add":
            s = bb.emit(relax.op.add(s, rest[0]))
        if mask == "where":
            keep = bb.emit(relax.op.greater(rest[0], relax.const(np.float32(0.0))))
            s = bb.emit(relax.op.where(keep, s, relax.const(np.float32(-np.inf))))
        return relax.op.matmul(bb.emit(relax.op.nn.softmax(s, -1)), v)

    return _module(params, body)


def _reference(q, k, v, mask, kind):
    s = q.astype(np.float64) @ k.transpose(0, 1, 3, 2) * 0.2
    if kind == "add":
        s = s + mask
    if kind == "where":
        s = np.where(mask > 0, s, -np.inf)
    return _softmax(s) @ v


@pytest.mark.parametrize("mask", [None, "add", "where"])
def test_attention_over_a_symbolic_sequence(rng, target, mask):
    mod = _attention_module(mask)
    rules = _rules(mod, target)
    assert softmax.OUTPUT in rules, sorted(rules)  # the padded softmax, not TVM's
    matmuls = {name: rule for name, rule in rules.items() if "matmul" in name}
    assert len(matmuls) == 2 and set(matmuls.values()) == {"TiledContraction"}, rules
    executable = pipeline.build(mod, target, {})
    for seq in LENGTHS:
        q, k, v = (rng.standard_normal((1, HEADS, seq, DIM)).astype("float32") for _ in range(3))
        extra = []
        if mask == "add":
            extra = [np.where(rng.random((1, 1, 1, seq)) < 0.3, -1e4, 0).astype("float32")]
        if mask == "where":
            extra = [np.tril(np.ones((seq, seq), "float32"))[None, None]]
        got = _run(executable, q, k, v, *extra)
        np.testing.assert_allclose(got, _reference(q, k, v, *(extra or [None]), mask), rtol=2e-5, atol=2e-5,
                                   err_msg=f"seq {seq}")


def test_other_chains_keep_tvms_attention(rng, target):
    """A score chain the pass does not know (an exp between the matmul and the softmax) is left
    as it is, and stays right."""
    seq = tvm.tirx.Var("seq", "int64")

    def body(bb, q, k, v):
        s = bb.emit(relax.op.exp(relax.op.matmul(q, bb.emit(relax.op.permute_dims(k, [0, 2, 1])))))
        return relax.op.matmul(bb.emit(relax.op.nn.softmax(s, -1)), v)

    mod = _module([("q", (1, seq, 8)), ("k", (1, seq, 8)), ("v", (1, seq, 8))], body)
    assert softmax.OUTPUT not in _rules(mod, target)
    executable = pipeline.build(mod, target, {})
    q, k, v = (rng.standard_normal((1, 5, 8)).astype("float32") * 0.3 for _ in range(3))
    want = _softmax(np.exp(q @ k.transpose(0, 2, 1))) @ v
    np.testing.assert_allclose(_run(executable, q, k, v), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows_symbolic,width_symbolic", [(True, False), (False, True), (True, True)])
def test_activation_matmul_over_symbolic_extents(rng, target, rows_symbolic, width_symbolic):
    """Two run-time operands with a symbolic row count and/or width (not attention): padded to
    whole register tiles inside the kernel (gemm.padded_matmul) and cropped, an epilogue after."""
    n = tvm.tirx.Var("n", "int64")
    rows, width = (n if rows_symbolic else 5), (n if width_symbolic else 40)
    mod = _module([("a", (rows, 19)), ("b", (19, width))],
                  lambda bb, a, b: relax.op.nn.relu(relax.op.matmul(a, b)))
    rules = _rules(mod, target)
    assert {r for name, r in rules.items() if "matmul" in name} == {"TiledContraction"}, rules
    executable = pipeline.build(mod, target, {})
    for count in (1, 3, 16, 33):
        a = rng.standard_normal((count if rows_symbolic else 5, 19)).astype("float32")
        b = rng.standard_normal((19, count if width_symbolic else 40)).astype("float32")
        np.testing.assert_allclose(_run(executable, a, b), np.maximum(a @ b, 0), rtol=1e-5, atol=1e-5)



def test_layers_share_one_softmax_kernel(rng, target):
    """Every layer's softmax of one shape calls the same scheduled function (a kernel per layer
    made a 12-layer encoder compile 12 copies)."""
    seq = tvm.tirx.Var("seq", "int64")

    def body(bb, q, k, v):
        for _ in range(3):
            s = bb.emit(relax.op.matmul(q, bb.emit(relax.op.permute_dims(k, [0, 1, 3, 2]))))
            q = bb.emit(relax.op.matmul(bb.emit(relax.op.nn.softmax(s, -1)), v))
        return q

    mod = _module([(name, (1, HEADS, seq, DIM)) for name in "qkv"], body)
    assert [name for name in _rules(mod, target) if softmax.OUTPUT in name] == [softmax.OUTPUT]
    q, k, v = (rng.standard_normal((1, HEADS, 9, DIM)).astype("float32") * 0.5 for _ in range(3))
    want = q
    for _ in range(3):
        want = _softmax(want @ k.transpose(0, 1, 3, 2)) @ v
    np.testing.assert_allclose(_run(pipeline.build(mod, target, {}), q, k, v), want, rtol=1e-5, atol=1e-5)
