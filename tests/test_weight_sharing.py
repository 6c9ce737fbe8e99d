"""Weight sharing: k-means codebooks stored as uint8 indices + a float codebook.

Differential: the clustered graph is checked against the original graph with each weight
replaced by its nearest codebook entry computed here, and against onnxruntime.
"""

from __future__ import annotations

import copy
import zlib

import numpy as np
import pytest

from backends.onnx.emit import emit_onnx
from compiler.errors import CompileError
from compiler.interpreter import run_graph
from passes import EliminateDeadCode
from passes.prune_magnitude import prune_magnitude, weight_slots
from passes.share_weights import ShareWeights, cluster_weight, kmeans_1d, share_weights
from test_pruning import DIGITS_CNN, assert_valid_everywhere, mlp_graph, pipeline_graph


def stored(gather) -> tuple[np.ndarray, np.ndarray]:
    """(codebook, uint8 indices) behind a shared weight's gather(codebook, cast(indices))."""
    cast = gather.inputs[1].producer
    assert cast.op == "cast" and cast.inputs[0].is_const
    return gather.inputs[0].const, cast.inputs[0].const


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_codebook_has_at_most_2_to_the_bits_entries_and_indices_are_nearest(rng, bits):
    w = rng.standard_normal((30, 17)).astype(np.float32)
    codebook, indices = cluster_weight(w, bits)
    assert indices.dtype == np.uint8 and indices.shape == w.shape
    assert codebook.dtype == w.dtype and codebook.size <= 2 ** bits
    distance = np.abs(w[..., None] - codebook.astype(np.float64))
    chosen = np.take_along_axis(distance, indices[..., None].astype(int), axis=-1)[..., 0]
    np.testing.assert_array_equal(chosen, distance.min(axis=-1))


def test_kmeans_beats_its_own_linear_initialisation(rng):
    values = np.concatenate([rng.normal(-1, 0.05, 500), rng.normal(0.3, 0.05, 500), [4.0]])
    centroids, assign = kmeans_1d(values, 4)
    start = np.linspace(values.min(), values.max(), 4)
    initial_error = np.min(np.abs(values[:, None] - start), axis=1) ** 2
    assert np.mean((centroids[assign] - values) ** 2) < np.mean(initial_error)
    again, assign_again = kmeans_1d(values, 4)  # deterministic
    np.testing.assert_array_equal(again, centroids)
    np.testing.assert_array_equal(assign_again, assign)


def test_few_distinct_values_are_kept_exactly(rng):
    w = rng.choice(np.array([-0.5, 0.25, 2.0], np.float32), size=(6, 5))
    codebook, indices = cluster_weight(w, 2)
    np.testing.assert_array_equal(codebook[indices], w)


def test_pruned_zeros_stay_exactly_zero(rng):
    g = mlp_graph(rng)
    prune_magnitude(g, 0.8)
    zeros = [s.value.const == 0 for s in weight_slots(g)]
    share_weights(g, 3)
    gathers = [n for n in g.nodes if n.op == "gather"]
    for zero, node in zip(zeros, gathers):
        codebook, indices = stored(node)
        np.testing.assert_array_equal(codebook[indices] == 0, zero)


def test_shared_graph_computes_with_the_codebook_weights(rng):
    g = mlp_graph(rng)
    reference = copy.deepcopy(g)
    report = share_weights(g, 4)
    x = [rng.standard_normal((3, 12)).astype(np.float32)]
    for slot in weight_slots(reference):  # each weight snapped to the nearest codebook entry
        codebook, indices = cluster_weight(slot.value.const, 4)
        reference.set_input(slot.node, slot.index, reference.add_constant(codebook[indices], "snapped"))
    np.testing.assert_array_equal(run_graph(g, x)[0], run_graph(reference, x)[0])
    assert len(report["layers"]) == 3 and all(l["centroids"] <= 16 for l in report["layers"])


def test_the_onnx_model_stores_uint8_indices_and_gets_smaller():
    g, x = pipeline_graph("digits_mlp")
    dense = emit_onnx(g).SerializeToString()
    report = share_weights(g, 4)
    EliminateDeadCode().run(g)  # the only pass that runs after compression: it keeps the gather
    assert sum(n.op == "gather" for n in g.nodes) == len(report["layers"]) == 3
    model = emit_onnx(g)
    shared = model.SerializeToString()
    assert any(t.data_type == 2 for t in model.graph.initializer)  # TensorProto.UINT8
    assert len(shared) < 0.3 * len(dense)
    assert len(zlib.compress(shared)) < 0.3 * len(zlib.compress(dense))
    assert report["weight_bytes_after"] < 0.3 * report["weight_bytes_before"]


@pytest.mark.parametrize("name", ["lenet", "resnet", "mobilenet", DIGITS_CNN])
def test_shared_zoo_models_stay_valid_and_close(name):
    g, x = pipeline_graph(name)
    want = run_graph(g, x)[0]
    share_weights(g, 8)
    assert_valid_everywhere(g, x)
    got = run_graph(g, x)[0]
    # 256 centroids: the outputs move by much less than their spread
    assert np.abs(got - want).max() < 0.05 * (np.abs(want).max() + 1e-6)


def test_weight_sharing_rejects_bad_bits(rng):
    for bits in (0, 9, 2.5):
        with pytest.raises(CompileError, match="1..8"):
            share_weights(mlp_graph(rng), bits)


def test_share_weights_pass(rng):
    g = mlp_graph(rng)
    p = ShareWeights(2)
    assert p.name == "share_weights" and p(g).modified
    assert all(stored(n)[1].dtype == np.uint8 for n in g.nodes if n.op == "gather")
    assert not ShareWeights(2)(g).modified  # weights are no longer constants: nothing left to share
