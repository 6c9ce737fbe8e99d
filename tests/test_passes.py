"""Passes: each rewrite checked structurally (op list) and numerically (interpreter before vs
after), and the PassManager's differential check shown to catch a wrong pass."""

from __future__ import annotations

import numpy as np
import pytest

from compiler.errors import IRError
from conftest import replace_first_relu_with_neg
from compiler.interpreter import run_graph
from compiler.ir import DType, Graph, TensorType
from compiler.text import op_list
from passes import (DEFAULT_PIPELINE, EliminateCommonSubexpressions, EliminateDeadCode, FoldBatchNorm,
                    FoldConstants, Pass, PassDriftError, PassManager, Simplify, make_pipeline)


def graph_with_foldable_and_dead_parts(rng):
    g = Graph("g")
    x = g.add_input("x", TensorType(DType.float32, ("batch", 4)))
    w = g.add_constant(rng.standard_normal((3, 4)).astype(np.float32), "w")
    scale = g.add_constant(np.asarray(2.0, np.float32), "scale")
    w2 = g.op("mul", w, scale)                       # constant subgraph: folds
    wt = g.op("transpose", g.op("transpose", w2, perm=[1, 0]), perm=[1, 0])
    y = g.op("linear", x, wt, None)
    g.op("exp", y)                                   # dead: nobody uses it
    g.set_outputs([g.op("relu", y)])
    return g


def numbers(g, x):
    return run_graph(g, [x])[0]


def test_fold_constants_evaluates_constant_subgraphs(rng):
    g = graph_with_foldable_and_dead_parts(rng)
    x = rng.standard_normal((5, 4)).astype(np.float32)
    before = numbers(g, x)
    assert FoldConstants().run(g) is True
    g.verify()
    assert op_list(g) == ["linear", "exp", "relu"]
    np.testing.assert_allclose(numbers(g, x), before, rtol=1e-6)
    assert FoldConstants().run(g) is False  # fixpoint


def test_fold_skips_outputs_that_would_bloat_the_artifact():
    g = Graph()
    x = g.add_input("x", TensorType(DType.float32, (1024, 1024)))
    one = g.add_constant(np.asarray(1.0, np.float32), "one")
    big = g.op("expand", one, shape=[1024, 1024])
    g.set_outputs([g.op("add", x, big)])
    assert FoldConstants().run(g) is False


def test_dce_removes_unused_nodes_and_constants(rng):
    g = graph_with_foldable_and_dead_parts(rng)
    g.add_constant(np.zeros(3, np.float32), "unused")
    assert EliminateDeadCode().run(g) is True
    assert "exp" not in op_list(g) and "unused" not in g.constants
    g.verify()
    assert EliminateDeadCode().run(g) is False


def test_pass_manager_records_each_pass(rng):
    g = graph_with_foldable_and_dead_parts(rng)
    x = rng.standard_normal((2, 4)).astype(np.float32)
    pm = PassManager(make_pipeline("fold,dce"), check_inputs=[x])
    assert pm.run(g) is True
    assert [r.name for r in pm.records] == ["fold", "dce"]
    fold, dce = pm.records
    assert fold.nodes_before == 6 and fold.nodes_after == 3 and dce.nodes_after == 2


class BreakRelu(Pass):
    """A deliberately wrong pass: relu -> neg."""

    name = "break_relu"

    def run(self, graph):
        return replace_first_relu_with_neg(graph)


class BreakTypes(Pass):
    name = "break_types"

    def run(self, graph):
        graph.nodes[0].outputs[0].type = TensorType(DType.float16, (1,))
        return True


def test_differential_check_names_the_wrong_pass(rng):
    g = graph_with_foldable_and_dead_parts(rng)
    x = rng.standard_normal((4, 4)).astype(np.float32)
    pm = PassManager([FoldConstants(), BreakRelu(), EliminateDeadCode()], check_inputs=[x])
    with pytest.raises(PassDriftError, match="break_relu"):
        pm.run(g)


def test_differential_check_names_the_first_differing_node(rng):
    class PerturbLinear(Pass):
        """Wrong on purpose: scales the first linear's weight (its output keeps its name)."""

        name = "perturb"

        def run(self, graph):
            node = next(n for n in graph.nodes if n.op == "linear")
            factor = graph.add_constant(np.asarray(1.5, np.float32), "factor")
            scaled = graph.insert_before(node, "mul", [node.inputs[1], factor]).output
            graph.set_input(node, 1, scaled)
            return True

    g = graph_with_foldable_and_dead_parts(rng)
    x = rng.standard_normal((4, 4)).astype(np.float32)
    with pytest.raises(PassDriftError, match=r"first differing value: %linear of node linear \(linear\)"):
        PassManager([PerturbLinear()], check_inputs=[x]).run(g)


def test_verify_after_each_pass_names_the_pass(rng):
    g = graph_with_foldable_and_dead_parts(rng)
    with pytest.raises(IRError, match="after pass break_types"):
        PassManager([BreakTypes()]).run(g)


def test_pipeline_spec_parsing():
    assert [p.name for p in make_pipeline(None)] == list(DEFAULT_PIPELINE)
    assert make_pipeline("none") == []
    from compiler.errors import CompileError
    with pytest.raises(CompileError, match="unknown pass"):
        make_pipeline("fold,bogus")


def test_cse_merges_equal_nodes_and_small_constants(rng):
    g = Graph()
    x = g.add_input("x", TensorType(DType.float32, (3, 4)))
    half_a = g.add_constant(np.asarray(0.5, np.float32), "half")
    half_b = g.add_constant(np.asarray(0.5, np.float32), "half")
    a = g.op("mul", g.op("exp", x), half_a)
    b = g.op("mul", g.op("exp", x), half_b)
    g.set_outputs([g.op("add", a, b)])
    xv = rng.standard_normal((3, 4)).astype(np.float32)
    before = numbers(g, xv)
    assert EliminateCommonSubexpressions().run(g)
    g.verify()
    assert op_list(g) == ["exp", "mul", "add"] and len(g.constants) == 1
    np.testing.assert_array_equal(numbers(g, xv), before)


def test_cse_keeps_nodes_with_different_attrs():
    g = Graph()
    x = g.add_input("x", TensorType(DType.float32, (3, 4)))
    g.set_outputs([g.op("add", g.op("softmax", x, axis=0), g.op("softmax", x, axis=1))])
    assert EliminateCommonSubexpressions().run(g) is False


def test_simplify_removes_identities(rng):
    g = Graph()
    x = g.add_input("x", TensorType(DType.float32, (2, 3, 4)))
    one = g.add_constant(np.ones((), np.float32), "one")
    zero = g.add_constant(np.zeros((4,), np.float32), "zero")
    y = g.op("reshape", x, shape=[2, 3, 4])                     # same shape
    y = g.op("transpose", g.op("transpose", y, perm=[0, 2, 1]), perm=[0, 2, 1])  # pair -> identity
    y = g.op("cast", y, dtype="float32")
    y = g.op("add", g.op("mul", y, one), zero)
    y = g.op("reshape", g.op("reshape", y, shape=[6, 4]), shape=[24])
    g.set_outputs([g.op("relu", y)])
    xv = rng.standard_normal((2, 3, 4)).astype(np.float32)
    before = numbers(g, xv)
    assert Simplify().run(g)
    EliminateDeadCode().run(g)
    g.verify()
    assert op_list(g) == ["reshape", "relu"]
    np.testing.assert_array_equal(numbers(g, xv), before)


def test_simplify_keeps_broadcasting_adds_and_real_transposes():
    g = Graph()
    x = g.add_input("x", TensorType(DType.float32, (1, 4)))
    zeros = g.add_constant(np.zeros((3, 4), np.float32), "zeros")   # broadcasts x to (3, 4)
    y = g.op("add", x, zeros)
    y = g.op("transpose", g.op("transpose", y, perm=[1, 0]), perm=[1, 0])
    g.set_outputs([g.op("transpose", y, perm=[1, 0])])
    Simplify().run(g)
    EliminateDeadCode().run(g)
    assert op_list(g) == ["add", "transpose"]


def _conv_bn_graph(rng, shared=False):
    g = Graph()
    x = g.add_input("x", TensorType(DType.float32, (2, 3, 8, 8)))
    const = lambda *s: g.add_constant(rng.standard_normal(s).astype(np.float32), "c")  # noqa: E731
    conv = g.op("conv", x, const(4, 3, 3, 3), const(4), stride=[1, 1], padding=[1, 1, 1, 1], dilation=[1, 1])
    var = g.add_constant(rng.uniform(0.5, 2, 4).astype(np.float32), "var")
    bn = g.op("batch_norm", conv, const(4), var, const(4), const(4), eps=1e-5)
    outs = [g.op("relu", bn)] + ([g.op("sigmoid", conv)] if shared else [])
    g.set_outputs(outs)
    return g


def test_fold_batch_norm_into_conv(rng):
    g = _conv_bn_graph(rng)
    xv = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    before = numbers(g, xv)
    assert FoldBatchNorm().run(g)
    g.verify()
    assert op_list(g) == ["conv", "relu"]
    np.testing.assert_allclose(numbers(g, xv), before, rtol=1e-5, atol=1e-5)


def test_fold_batch_norm_does_not_match_shared_conv_output(rng):
    from passes.fold_batch_norm import RULES
    from passes.rewrite import explain

    g = _conv_bn_graph(rng, shared=True)
    assert FoldBatchNorm().run(g) is False
    assert any("other users" in line for line in explain(g, RULES))


def test_fold_batch_norm_into_linear(rng):
    g = Graph()
    x = g.add_input("x", TensorType(DType.float32, ("batch", 5)))
    w = g.add_constant(rng.standard_normal((4, 5)).astype(np.float32), "w")
    stats = [g.add_constant(rng.uniform(0.5, 2, 4).astype(np.float32), "s") for _ in range(4)]
    g.set_outputs([g.op("batch_norm", g.op("linear", x, w, None), *stats, eps=1e-3)])
    xv = rng.standard_normal((3, 5)).astype(np.float32)
    before = numbers(g, xv)
    assert FoldBatchNorm().run(g)
    assert op_list(g) == ["linear"]
    np.testing.assert_allclose(numbers(g, xv), before, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("act,attrs", [("relu", {}), ("clamp", {"min": 0.0, "max": 6.0}), ("clamp", {"max": 0.5}),
                                       ("gelu", {"approximate": "tanh"}), ("hardswish", {}), ("sigmoid", {}),
                                       ("leaky_relu", {"negative_slope": 0.1}), ("silu", {})])
@pytest.mark.parametrize("layer", ["conv", "linear"])
def test_fuse_activation(rng, act, attrs, layer):
    from passes.fuse_activation import FuseActivation

    g = Graph()
    if layer == "conv":
        x = g.add_input("x", TensorType(DType.float32, (2, 3, 6, 6)))
        w = g.add_constant(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
        y = g.op("conv", x, w, None, stride=[1, 1], padding=[0, 0, 0, 0], dilation=[1, 1])
        xv = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    else:
        x = g.add_input("x", TensorType(DType.float32, (2, 5)))
        w = g.add_constant(rng.standard_normal((4, 5)).astype(np.float32), "w")
        y = g.op("linear", x, w, None)
        xv = rng.standard_normal((2, 5)).astype(np.float32)
    g.set_outputs([g.op(act, y, **attrs)])
    before = numbers(g, xv)
    assert FuseActivation().run(g)
    g.verify()
    assert op_list(g) == [layer]
    np.testing.assert_allclose(numbers(g, xv), before, rtol=1e-6, atol=1e-6)


def test_fuse_activation_skips_shared_output(rng):
    from passes.fuse_activation import FuseActivation

    g = Graph()
    x = g.add_input("x", TensorType(DType.float32, (2, 5)))
    w = g.add_constant(rng.standard_normal((4, 5)).astype(np.float32), "w")
    y = g.op("linear", x, w, None)
    g.set_outputs([g.op("relu", y), g.op("exp", y)])
    assert FuseActivation().run(g) is False
