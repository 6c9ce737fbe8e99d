"""Weight sharing (k-means codebooks, as in Han et al.'s Deep Compression).

Rewrite: each constant float weight ``W`` of a conv, linear or matmul is clustered into at most
``2**bits`` values and replaced by ``gather(codebook, cast(indices, int32))``, where ``codebook`` is a
small float constant and ``indices`` a uint8 constant of ``W``'s shape:
``linear(x, W)`` -> ``linear(x, gather(codebook, cast(indices), axis=0))``. The artifact then stores
one byte per weight plus the codebook (and the bytes deflate further when bits < 8).

Clustering is 1-D k-means per layer: centroids start evenly spaced over [min, max] (deterministic,
and it keeps the rare large weights, which matter most), then a few Lloyd iterations. Exact zeros
(from pruning) get a centroid of exactly 0 of their own, so sparsity survives sharing.

The cast and gather must stay runtime ops: constant folding would turn it back into a float weight.
The compression step runs after the optimisation pipeline and only dead-code elimination runs
after it (see compiler/driver/compression.py), which keeps the gather.
"""

from __future__ import annotations

import numpy as np

from compiler.errors import CompileError
from compiler.ir import DType, Graph
from passes.base import Pass
from passes.prune_magnitude import weight_slots

LLOYD_ITERATIONS = 12


def kmeans_1d(values: np.ndarray, k: int, iterations: int = LLOYD_ITERATIONS) -> tuple[np.ndarray, np.ndarray]:
    """(sorted centroids [<= k], index of each value's centroid); deterministic."""
    flat = values.ravel().astype(np.float64)
    lo, hi = float(flat.min()), float(flat.max())
    distinct = np.unique(flat)
    if distinct.size <= k:  # already few values: the codebook is exact
        return distinct, np.searchsorted(distinct, flat)
    centroids = np.linspace(lo, hi, k)
    for _ in range(iterations):
        assign = _nearest(centroids, flat)
        sums = np.bincount(assign, weights=flat, minlength=k)
        counts = np.bincount(assign, minlength=k)
        moved = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)  # empty cluster: stays
        if np.allclose(moved, centroids, rtol=0, atol=1e-12):
            break
        centroids = np.sort(moved)
    return centroids, _nearest(centroids, flat)


def _nearest(sorted_centroids: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid: in 1-D the boundaries are the midpoints."""
    midpoints = (sorted_centroids[1:] + sorted_centroids[:-1]) / 2
    return np.searchsorted(midpoints, flat)


def cluster_weight(weight: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(codebook of ``weight``'s dtype, uint8 indices shaped like ``weight``)."""
    k = 2 ** bits
    zero = weight == 0
    if zero.any() and not zero.all() and k > 1:
        # pruned zeros keep their own exact centroid (index 0); the rest share k - 1 centroids
        centroids, assign = kmeans_1d(weight[~zero], k - 1)
        codebook = np.concatenate([[0.0], centroids])
        indices = np.zeros(weight.shape, dtype=np.uint8)
        indices[~zero] = assign + 1
    else:
        codebook, assign = kmeans_1d(weight, k)
        indices = assign.astype(np.uint8).reshape(weight.shape)
    return codebook.astype(weight.dtype), indices


def check_bits(bits: int) -> int:
    if int(bits) != bits or not 1 <= int(bits) <= 8:
        raise CompileError(f"weight sharing bits must be an integer 1..8 (uint8 indices), got {bits}")
    return int(bits)


def share_weights(graph: Graph, bits: int) -> dict:
    """Replace each conv/linear/matmul constant weight by a ``bits``-bit codebook; returns the report."""
    bits = check_bits(bits)
    layers = []
    for slot in weight_slots(graph):
        weight = np.asarray(slot.value.const)
        codebook, indices = cluster_weight(weight, bits)
        error = float(np.sqrt(np.mean((codebook[indices].astype(np.float64) - weight) ** 2)))
        name = slot.value.name
        codebook_v = graph.add_constant(codebook, f"{name}_codebook")
        indices_v = graph.add_constant(indices, f"{name}_indices")
        # an explicit cast node: backends convert a constant's dtype at emit time, which would
        # store the indices as int64 (8x the bytes); a cast op runs at load/run time instead
        wide = graph.insert_before(slot.node, "cast", [indices_v], {"dtype": DType.int32},
                                   name=f"{name}_indices_int", location=slot.node.location).output
        gathered = graph.insert_before(slot.node, "gather", [codebook_v, wide], {"axis": 0},
                                       name=f"{name}_shared", location=slot.node.location).output
        graph.set_input(slot.node, slot.index, gathered)
        layers.append({"layer": slot.node.name, "op": slot.node.op, "weight": name, "shape": list(weight.shape),
                       "parameters": int(weight.size), "centroids": int(codebook.size),
                       "bytes_before": int(weight.nbytes), "bytes_after": int(codebook.nbytes + indices.nbytes),
                       "rms_error": error})
    graph.remove_unused_constants()
    before = sum(l["bytes_before"] for l in layers)
    after = sum(l["bytes_after"] for l in layers)
    return {"bits": bits, "layers": layers, "weight_bytes_before": before, "weight_bytes_after": after,
            "ratio": after / before if before else 1.0}


class ShareWeights(Pass):
    """``share_weights``: see the module docstring. The last report is kept in ``self.report``."""

    name = "share_weights"

    def __init__(self, bits: int = 4):
        self.bits = check_bits(bits)
        self.report: dict | None = None

    def run(self, graph: Graph) -> bool:
        self.report = share_weights(graph, self.bits)
        return bool(self.report["layers"])


__all__ = ["ShareWeights", "cluster_weight", "kmeans_1d", "share_weights"]
