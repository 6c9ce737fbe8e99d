"""Pruning passes: unstructured magnitude pruning and structured channel pruning.

Differential throughout: magnitude pruning is checked against an independent numpy ranking of
the weights; channel pruning against the unpruned graph whose removed channels were zeroed first
(same numbers, the channels just are not there any more), and every pruned zoo model against
onnxruntime.
"""

from __future__ import annotations

import copy
import functools
import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from backends.onnx.emit import emit_onnx  # noqa: E402
from backends.onnx.runtime import session_from_model  # noqa: E402
from compiler.errors import CompileError  # noqa: E402
from compiler.interpreter import run_graph  # noqa: E402
from compiler.ir import DType, Graph, TensorType  # noqa: E402
from passes.prune_channels import PruneChannels, kept_count, prune_channels  # noqa: E402
from passes.prune_magnitude import PruneMagnitude, prune_magnitude, weight_slots  # noqa: E402

ZOO_CNNS = ("lenet", "resnet", "mobilenet")
# training the digits CNN takes ~11 s on one core (the MLP ~3 s): its cases are marked slow
DIGITS_CNN = pytest.param("digits_cnn", marks=pytest.mark.slow)


# -- helpers ---------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _pipeline_graph(name: str) -> tuple[Graph, tuple[np.ndarray, ...]]:
    from compiler.frontend import export_module, import_exported_program
    from passes import PassManager, make_pipeline

    if name.startswith("digits_"):
        from models.digits import trained_model

        model = trained_model(name.split("_")[1])
        inputs = model.example_inputs(4)
    else:
        from models import get_model

        model = get_model(name).factory()
        inputs = model.example_inputs(2)
    graph = import_exported_program(export_module(model, inputs, dynamic_batch=True))
    PassManager(make_pipeline()).run(graph)
    return graph, tuple(t.numpy() for t in inputs)


def pipeline_graph(name: str) -> tuple[Graph, list[np.ndarray]]:
    """A fresh copy of the zoo/digits model's graph after the default pipeline, and its inputs."""
    graph, inputs = _pipeline_graph(name)
    return copy.deepcopy(graph), list(inputs)


def mlp_graph(rng, sizes=(12, 20, 16, 5)) -> Graph:
    g = Graph("mlp")
    x = g.add_input("x", TensorType(DType.float32, ("batch", sizes[0])))
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        w = g.add_constant(rng.standard_normal((n_out, n_in)).astype(np.float32), f"w{i}")
        b = g.add_constant(rng.standard_normal(n_out).astype(np.float32), f"b{i}")
        x = g.op("linear", x, w, b, activation="relu" if i < len(sizes) - 2 else "")
    g.set_outputs([x])
    return g


def conv(g: Graph, x, rng, out_ch: int, *, groups: int = 1, activation: str = "relu"):
    in_ch = x.shape[1]
    w = g.add_constant(rng.standard_normal((out_ch, in_ch // groups, 3, 3)).astype(np.float32), "w")
    b = g.add_constant(rng.standard_normal(out_ch).astype(np.float32), "b")
    return g.op("conv", x, w, b, stride=(1, 1), padding=(1, 1, 1, 1), dilation=(1, 1), groups=groups,
                activation=activation)


def onnx_outputs(graph: Graph, inputs: list[np.ndarray]) -> list[np.ndarray]:
    session = session_from_model(emit_onnx(graph).SerializeToString(), threads=1)
    names = [i.name for i in session.get_inputs()]
    return session.run(None, dict(zip(names, inputs)))


def assert_valid_everywhere(graph: Graph, inputs: list[np.ndarray]) -> None:
    """verify(), the interpreter runs, and onnxruntime agrees with it."""
    graph.verify()
    want = run_graph(graph, inputs)
    for w, got in zip(want, onnx_outputs(graph, inputs)):
        np.testing.assert_allclose(got, w, rtol=1e-4, atol=1e-5)


def zero_channels_like(graph: Graph, report: dict) -> None:
    """Zero, in the unpruned ``graph``, the channels the report says were removed (weight rows
    and bias entries of each pruned layer and of the depthwise convs that followed it)."""
    by_name = {n.name: n for n in graph.nodes}
    for group in report["groups"]:
        removed = sorted(set(range(group["channels"])) - set(group["kept_indices"]))
        for name in group["layers"] + group["followers"]:
            node = by_name[name]
            for index in (1, 2):
                v = node.inputs[index] if index < len(node.inputs) else None
                if v is not None:
                    array = np.array(v.const, copy=True)
                    array[removed] = 0
                    graph.set_input(node, index, graph.add_constant(array, v.name + "_zeroed"))


# -- magnitude pruning -----------------------------------------------------------------------------
@pytest.mark.parametrize("amount", [0.3, 0.9])
def test_global_magnitude_pruning_zeroes_exactly_the_smallest_weights(rng, amount):
    g = mlp_graph(rng)
    before = [np.array(s.value.const) for s in weight_slots(g)]
    report = prune_magnitude(g, amount, scope="global")
    after = [s.value.const for s in weight_slots(g)]
    flat_before = np.concatenate([np.abs(w.ravel()) for w in before])
    flat_after = np.concatenate([w.ravel() for w in after])
    pruned = flat_after == 0
    assert pruned.sum() == round(amount * flat_before.size)
    assert flat_before[pruned].max() <= flat_before[~pruned].min()  # one threshold over all layers
    assert np.array_equal(flat_after[~pruned], np.concatenate([w.ravel() for w in before])[~pruned])
    assert report["sparsity"] == pytest.approx(pruned.mean())
    assert [l["zeros"] for l in report["layers"]] == [int((w == 0).sum()) for w in after]


def test_per_layer_scope_prunes_each_layer_to_the_amount(rng):
    g = mlp_graph(rng)
    before = [np.array(s.value.const) for s in weight_slots(g)]
    prune_magnitude(g, 0.5, scope="layer")
    for w0, slot in zip(before, weight_slots(g)):
        w = slot.value.const
        pruned = w == 0
        assert pruned.sum() == round(0.5 * w.size)
        assert np.abs(w0[pruned]).max() <= np.abs(w0[~pruned]).min()


def test_pruned_graph_computes_with_the_zeroed_weights(rng):
    g = mlp_graph(rng)
    x = [rng.standard_normal((3, 12)).astype(np.float32)]
    reference = copy.deepcopy(g)
    prune_magnitude(g, 0.6)
    for slot, ref_slot in zip(weight_slots(g), weight_slots(reference)):  # same weights, zeros applied by hand
        masked = np.where(slot.value.const == 0, 0, ref_slot.value.const).astype(np.float32)
        reference.set_input(ref_slot.node, ref_slot.index, reference.add_constant(masked, "masked"))
    np.testing.assert_array_equal(run_graph(g, x)[0], run_graph(reference, x)[0])


def test_magnitude_pruning_shrinks_the_deflated_onnx_model():
    g, _ = pipeline_graph("digits_mlp")
    dense = len(zlib.compress(emit_onnx(g).SerializeToString()))
    prune_magnitude(g, 0.9)
    sparse = len(zlib.compress(emit_onnx(g).SerializeToString()))
    assert sparse < 0.5 * dense  # 90% zeros: the payload is dominated by the 10% survivors


def test_magnitude_pruning_shrinks_the_compiled_artifact(tmp_path):
    import os

    import compiler
    from models.digits import trained_model

    model = trained_model("mlp")
    example = model.example_inputs(2)
    dense = compiler.compile(model, example, output=tmp_path / "dense.aot")
    sparse = compiler.compile(model, example, output=tmp_path / "sparse.aot", prune=0.9)
    assert os.path.getsize(sparse.path) < 0.5 * os.path.getsize(dense.path)


@pytest.mark.parametrize("name", ZOO_CNNS)
def test_magnitude_pruned_zoo_models_stay_valid(name):
    g, x = pipeline_graph(name)
    report = prune_magnitude(g, 0.7)
    assert report["sparsity"] == pytest.approx(0.7, abs=1e-4)
    assert_valid_everywhere(g, x)


def test_magnitude_pruning_rejects_bad_arguments(rng):
    with pytest.raises(CompileError, match="fraction"):
        prune_magnitude(mlp_graph(rng), 1.0)
    with pytest.raises(CompileError, match="choose one of global, layer"):
        prune_magnitude(mlp_graph(rng), 0.5, scope="blocks")


def test_prune_pass_keeps_its_report(rng):
    g = mlp_graph(rng)
    p = PruneMagnitude(0.5, scope="layer")
    assert p.name == "prune" and p(g).modified
    assert p.report["scope"] == "layer" and len(p.report["layers"]) == 3


# -- channel pruning -------------------------------------------------------------------------------
def test_kept_count_rounds_up_to_the_multiple_within_bounds():
    for channels in (1, 6, 16, 24, 64, 72, 256):
        for amount in (0.0, 0.3, 0.5, 0.9):
            for multiple in (1, 8, 16):
                n = kept_count(channels, amount, multiple)
                assert 1 <= n <= channels
                assert n >= channels * (1 - amount) - 1e-9  # never prunes more than asked
                assert n % multiple == 0 or n == channels
                assert n - multiple < max(channels * (1 - amount), 1)  # the smallest such multiple


def test_amount_zero_changes_nothing(rng):
    g, x = pipeline_graph("resnet")
    before = {n: np.array(v.const) for n, v in g.constants.items()}
    report = prune_channels(g, 0.0)
    assert {n: v.const.shape for n, v in g.constants.items()} == {n: a.shape for n, a in before.items()}
    assert all(np.array_equal(g.constants[n].const, a) for n, a in before.items())
    assert all(grp["kept"] == grp["channels"] for grp in report["groups"])


@pytest.mark.parametrize("name", ZOO_CNNS + ("digits_mlp", DIGITS_CNN))
@pytest.mark.parametrize("multiple_of", [1, 16])
def test_pruning_zeroed_channels_gives_the_same_outputs(name, multiple_of):
    g, x = pipeline_graph(name)
    pruned = copy.deepcopy(g)
    report = prune_channels(pruned, 0.5, multiple_of=multiple_of)
    zero_channels_like(g, report)
    want, got = run_graph(g, x)[0], run_graph(pruned, x)[0]
    # removing terms that are exactly zero from the sums: equal up to summation order
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert got.shape == want.shape
    assert_valid_everywhere(pruned, x)
    if multiple_of == 1:
        assert report["parameters_after"] < 0.6 * report["parameters_before"]


@pytest.mark.parametrize("name", ZOO_CNNS + ("digits_mlp", DIGITS_CNN))
def test_channel_pruned_zoo_models_keep_multiples_and_their_outputs(name):
    g, x = pipeline_graph(name)
    outputs = [v.type for v in g.outputs]
    report = prune_channels(g, 0.5)
    assert [v.type for v in g.outputs] == outputs
    assert any(grp["kept"] < grp["channels"] for grp in report["groups"])
    for grp in report["groups"]:
        assert grp["kept"] % 16 == 0 or grp["kept"] == grp["channels"]
    assert any("graph output" in s["reason"] for s in report["skipped"])


def test_residual_adds_tie_the_layers_that_meet():
    g, _ = pipeline_graph("resnet")
    adds = [n for n in g.nodes if n.op == "add"]
    report = prune_channels(g, 0.5, multiple_of=1)
    tied = [set(grp["layers"]) for grp in report["groups"] if len(grp["layers"]) > 1]
    for add in adds:  # the producers of both operands of every add are pruned as one group
        producers = {v.producer.name for v in add.inputs if v.producer.op == "conv"}
        if len(producers) == 2:
            assert any(producers <= t for t in tied)


def test_squeeze_excite_and_depthwise_follow_their_expand_conv():
    g, x = pipeline_graph("mobilenet")
    depthwise = [n.name for n in g.nodes if n.op == "conv" and n.attrs["groups"] > 1]
    report = prune_channels(g, 0.5)
    followers = {f for grp in report["groups"] for f in grp["followers"]}
    assert set(depthwise) <= followers
    for node in g.nodes:
        if node.op == "conv" and node.attrs["groups"] > 1:
            assert node.attrs["groups"] == node.inputs[1].shape[0] == node.inputs[0].shape[1]


def test_concat_offsets_are_followed(rng):
    g = Graph("cat")
    x = g.add_input("x", TensorType(DType.float32, (2, 3, 6, 6)))
    a, b = conv(g, x, rng, 8), conv(g, x, rng, 6)
    joined = g.op("concat", x, a, b, axis=1)  # the input's own channels are never pruned
    y = conv(g, joined, rng, 4, activation="")
    g.set_outputs([y])
    inputs = [rng.standard_normal((2, 3, 6, 6)).astype(np.float32)]
    pruned = copy.deepcopy(g)
    report = prune_channels(pruned, 0.5, multiple_of=1)
    assert sorted(grp["kept"] for grp in report["groups"]) == [3, 4]
    zero_channels_like(g, report)
    np.testing.assert_allclose(run_graph(pruned, inputs)[0], run_graph(g, inputs)[0], rtol=1e-6, atol=1e-6)
    assert_valid_everywhere(pruned, inputs)


def test_a_layer_feeding_an_op_it_cannot_follow_is_skipped_with_the_reason(rng):
    g = Graph("t")
    x = g.add_input("x", TensorType(DType.float32, (2, 3, 6, 6)))
    a = conv(g, x, rng, 8)
    t = g.op("transpose", a, perm=(0, 2, 3, 1))
    g.set_outputs([g.op("relu", t)])
    before = g.parameter_count()
    report = prune_channels(g, 0.5, multiple_of=1)
    assert report["groups"] == [] and g.parameter_count() == before
    assert "transpose" in report["skipped"][0]["reason"]


def test_an_add_with_an_unprunable_operand_blocks_the_layer(rng):
    g = Graph("t")
    x = g.add_input("x", TensorType(DType.float32, (2, 8, 6, 6)))
    a = conv(g, x, rng, 8)
    y = conv(g, g.op("add", a, x), rng, 4)
    g.set_outputs([y])
    report = prune_channels(g, 0.5, multiple_of=1)
    assert [s["layers"] for s in report["skipped"]][0] == [a.producer.name]
    assert "cannot shrink" in report["skipped"][0]["reason"]


def test_channel_pruning_gets_smaller_and_faster_inputs_to_the_next_layer():
    g, _ = pipeline_graph("digits_mlp")
    report = prune_channels(g, 0.5)
    shapes = [n.inputs[1].shape for n in g.nodes if n.op == "linear"]
    assert shapes == [(128, 64), (64, 128), (10, 64)]
    assert PruneChannels(0.5).name == "prune_channels"
    assert report["parameters_after"] == g.parameter_count()


def test_channel_pruning_rejects_bad_arguments(rng):
    with pytest.raises(CompileError, match="fraction"):
        prune_channels(mlp_graph(rng), -0.1)
    with pytest.raises(CompileError, match="multiple"):
        prune_channels(mlp_graph(rng), 0.5, multiple_of=0)
