"""Calibration: the value ranges static quantization turns into scales and zero points.

The graph runs in the reference interpreter on each calibration batch; for every requested value
the calibrator records a range per batch and the ranges are combined over batches:

* ``minmax``: the smallest minimum and the largest maximum seen;
* ``percentile``: the 0.01th and 99.99th percentiles of each batch, averaged over batches (one
  outlier in a batch then cannot stretch the scale of the whole tensor).

Only one batch's values are held at a time, so memory stays at one forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from compiler.errors import CompileError
from compiler.interpreter import run_graph
from compiler.ir import Graph

CALIBRATORS = ("minmax", "percentile")
PERCENTILE = 99.99


def batch_range(values: np.ndarray, calibrator: str) -> tuple[float, float]:
    """(low, high) of one batch's values under ``calibrator``."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    if calibrator == "percentile":
        lo, hi = np.percentile(flat, [100.0 - PERCENTILE, PERCENTILE])
        return float(lo), float(hi)
    return float(flat.min()), float(flat.max())


def collect_ranges(graph: Graph, batches: Sequence[Sequence[np.ndarray]], names: set[str],
                   calibrator: str = "minmax") -> dict[str, tuple[float, float]]:
    """Calibrated (low, high) of every value named in ``names`` (graph inputs included)."""
    if calibrator not in CALIBRATORS:
        raise CompileError(f"unknown calibrator '{calibrator}'; choose one of {', '.join(CALIBRATORS)}")
    per_batch: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    for i, batch in enumerate(batches):
        batch = [np.asarray(a) for a in batch]
        try:
            _, values = run_graph(graph, batch, keep_values=True)
        except Exception as exc:
            raise CompileError(f"calibration batch {i} does not run through the model: {exc}") from exc
        values.update({v.name: a for v, a in zip(graph.inputs, batch)})
        for name in names:
            if values[name].size:
                per_batch[name].append(batch_range(values[name], calibrator))
    return {name: _combine(ranges, calibrator) for name, ranges in per_batch.items() if ranges}


def _combine(ranges: list[tuple[float, float]], calibrator: str) -> tuple[float, float]:
    lows, highs = np.array([r[0] for r in ranges]), np.array([r[1] for r in ranges])
    if calibrator == "percentile":
        return float(lows.mean()), float(highs.mean())
    return float(lows.min()), float(highs.max())


__all__ = ["CALIBRATORS", "PERCENTILE", "batch_range", "collect_ranges"]
