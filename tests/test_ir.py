"""The IR: building, mutation through Graph methods, verify(), printing, and the op registry."""

from __future__ import annotations

import numpy as np
import pytest

from compiler import dims
from compiler.errors import IRError
from compiler.interpreter import InterpreterError, run_graph
from compiler.ir import DType, Graph, TensorType
from compiler.ops import all_ops, get_op
from compiler.text import format_graph, op_list


def small_graph():
    g = Graph("g")
    x = g.add_input("x", TensorType(DType.float32, ("batch", 4)))
    w = g.add_constant(np.arange(12, dtype=np.float32).reshape(3, 4) / 10, "w")
    h = g.op("linear", x, w, None)
    y = g.op("relu", h)
    g.set_outputs([y])
    return g, x, h, y


def test_types_are_inferred_with_symbolic_dims():
    g, _, h, y = small_graph()
    assert h.type == TensorType(DType.float32, ("batch", 3))
    assert y.type == h.type
    g.verify()


def test_symbolic_slices_infer_their_length_and_run():
    """Slice bounds may be symbolic dims; lengths whose symbols cancel become ints."""
    g = Graph("g")
    x = g.add_input("x", TensorType(DType.float32, ("seq", 3)))
    table = g.add_constant(np.arange(40, dtype=np.float32).reshape(10, 4), "table")
    head = g.op("slice", table, axis=0, start=0, end="seq")   # table[:seq]
    last = g.op("slice", x, axis=0, start=-1)                   # x[-1:]
    tail = g.op("slice", x, axis=0, start=1, step=2)            # x[1::2]
    assert head.type.shape == ("seq", 4) and last.type.shape == (1, 3)
    assert [dims.evaluate(tail.type.shape[0], {"seq": n}) for n in (1, 2, 7, 8)] == [0, 1, 3, 4]
    g.set_outputs([head, last, tail])
    array = np.arange(21, dtype=np.float32).reshape(7, 3)
    got = run_graph(g, [array])
    for result, want in zip(got, (np.arange(40, dtype=np.float32).reshape(10, 4)[:7], array[-1:], array[1::2])):
        np.testing.assert_array_equal(result, want)
    with pytest.raises(ValueError, match="must be dim"):
        g.op("slice", x, axis=0, end="seq +")


def test_use_lists_follow_mutation():
    g, x, h, y = small_graph()
    neg = g.insert_before(y.producer, "neg", [h]).output
    g.set_input(y.producer, 0, neg)
    assert [u.node.op for u in h.uses] == ["neg"]
    assert [u.node.op for u in neg.uses] == ["relu"]
    g.verify()
    g.replace_all_uses_with(neg, h)
    g.remove_node(neg.producer)
    assert op_list(g) == ["linear", "relu"]
    g.verify()


def test_remove_node_refuses_used_outputs():
    g, _, h, _ = small_graph()
    with pytest.raises(IRError, match="still used"):
        g.remove_node(h.producer)


def test_verify_catches_stale_type_and_use_before_def():
    g, x, h, y = small_graph()
    y.type = TensorType(DType.float32, ("batch", 5))
    with pytest.raises(IRError, match="op infers"):
        g.verify()
    g, x, h, y = small_graph()
    g.nodes.reverse()
    with pytest.raises(IRError, match="before it is defined"):
        g.verify()
    g.toposort()
    g.verify()


def test_binary_ops_require_one_dtype():
    g = Graph()
    a = g.add_input("a", TensorType(DType.float32, (2,)))
    b = g.add_input("b", TensorType(DType.int64, (2,)))
    with pytest.raises(ValueError, match="cast"):
        g.op("add", a, b)


def test_attrs_are_checked():
    g = Graph()
    a = g.add_input("a", TensorType(DType.float32, (2, 3)))
    with pytest.raises(ValueError, match="needs attribute"):
        g.op("softmax", a)
    with pytest.raises(ValueError, match="no attribute"):
        g.op("softmax", a, axis=1, bogus=2)
    with pytest.raises(ValueError, match="must be int"):
        g.op("softmax", a, axis=1.5)


def test_printer_shows_types_and_attrs():
    g, *_ = small_graph()
    text = format_graph(g)
    assert "graph g(%x: float32[batch, 4])" in text
    assert "linear(%x, %w, None)" in text
    assert text.strip().endswith("}")


def test_interpreter_binds_symbols_and_checks_inputs(rng):
    g, *_ = small_graph()
    for batch in (1, 5):
        x = rng.standard_normal((batch, 4)).astype(np.float32)
        (y,) = run_graph(g, [x])
        np.testing.assert_allclose(y, np.maximum(x @ g.constants["w"].const.T, 0), rtol=1e-6)
    from compiler.errors import InputError
    with pytest.raises(InputError, match="dtype"):
        run_graph(g, [np.zeros((2, 4))])
    with pytest.raises(InputError, match="shape"):
        run_graph(g, [np.zeros((2, 5), np.float32)])


def test_interpreter_names_the_node_whose_reference_disagrees_with_its_type(monkeypatch):
    g, *_ = small_graph()
    opdef = get_op("relu")
    monkeypatch.setattr(opdef, "reference", lambda x: x.astype(np.float64))
    with pytest.raises(InterpreterError, match=r"relu.*disagree"):
        run_graph(g, [np.ones((2, 4), np.float32)])


def test_every_op_has_doc_type_rule_and_reference():
    for name, opdef in all_ops().items():
        assert callable(opdef.infer) and callable(opdef.reference), name
        assert opdef.family in {"elementwise", "nn", "shape", "reduce", "indexing", "quant", "recurrent"}, name


def test_flops_use_each_ops_rule_with_batch_bound_to_one():
    from compiler.cost import graph_flops

    g, *_ = small_graph()                      # linear [batch,4] x [3,4]^T, then relu
    assert graph_flops(g) == 2 * 1 * 3 * 4 + 3
    assert graph_flops(g, {"batch": 10}) == 2 * 10 * 3 * 4 + 30
    c = Graph()
    x = c.add_input("x", TensorType(DType.float32, (1, 2, 5, 5)))
    w = c.add_constant(np.ones((4, 1, 3, 3), np.float32), "w")
    c.set_outputs([c.op("conv", x, w, None, stride=[1, 1], padding=[0] * 4, dilation=[1, 1], groups=2)])
    assert graph_flops(c) == 2 * (1 * 4 * 3 * 3) * (1 * 3 * 3)


def test_copy_is_independent_and_handles_long_chains():
    from compiler.interpreter import run_graph

    g = Graph("chain")
    x = g.add_input("x", TensorType(DType.float32, (3,)))
    v = x
    for _ in range(3000):  # deeper than Python's recursion limit
        v = g.op("add", v, g.add_constant(np.ones(3, np.float32), "one"))
    g.set_outputs([v])
    twin = g.copy()
    twin.verify()
    assert [n.name for n in twin.nodes] == [n.name for n in g.nodes]
    twin.set_outputs([twin.nodes[-2].output])
    twin.remove_node(twin.nodes[-1])
    assert len(g.nodes) == 3000 and len(twin.nodes) == 2999
    np.testing.assert_array_equal(run_graph(g, [np.zeros(3, np.float32)])[0], np.full(3, 3000, np.float32))
