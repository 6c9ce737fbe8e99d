"""Unstructured magnitude pruning.

Rewrite: the constant weight of every conv, linear and matmul-with-a-constant-operand gets its
smallest-magnitude entries set to exactly 0 (``linear(x, W)`` -> ``linear(x, W * mask)``), so
that a fraction ``amount`` of the weights is zero: over all prunable weights together
(``scope="global"``, one threshold) or in each weight separately (``scope="layer"``).

Shapes and ops do not change, so dense kernels run no faster; the gain is storage: the artifact
is deflate-compressed and runs of zeros compress well. Biases are left alone (few parameters,
large effect). Ties at the threshold are broken by position so the count is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from compiler.errors import CompileError
from compiler.ir import Graph, Node, Value
from passes.base import Pass

SCOPES = ("global", "layer")


@dataclass(frozen=True)
class WeightSlot:
    """A prunable weight: ``node.inputs[index]`` is a float constant."""

    node: Node
    index: int

    @property
    def value(self) -> Value:
        return self.node.inputs[self.index]


def weight_slots(graph: Graph) -> list[WeightSlot]:
    """The constant float weights of conv / linear (input 1) and of matmul (either operand, rank >= 2)."""
    slots = []
    for node in graph.nodes:
        if node.op in ("conv", "linear"):
            candidates = [1]
        elif node.op == "matmul":
            candidates = [0, 1]
        else:
            continue
        for i in candidates:
            v = node.inputs[i]
            if v is not None and v.is_const and v.dtype.is_float and v.type.rank >= 2:
                slots.append(WeightSlot(node, i))
    return slots


def replace_constant(graph: Graph, slot: WeightSlot, array: np.ndarray, suffix: str) -> Value:
    """Point the slot at a new constant (the old one may be shared with another node)."""
    new = graph.add_constant(np.ascontiguousarray(array), f"{slot.value.name}_{suffix}")
    graph.set_input(slot.node, slot.index, new)
    return new


def check_amount(amount: float, what: str) -> float:
    amount = float(amount)
    if not 0.0 <= amount < 1.0:
        raise CompileError(f"{what}: amount must be a fraction in [0, 1), got {amount}; "
                           f"e.g. 0.5 prunes half")
    return amount


def _masks(arrays: list[np.ndarray], amount: float, scope: str) -> list[np.ndarray]:
    """Boolean keep-masks zeroing ``amount`` of the entries (smallest |w| first)."""
    if scope == "layer":
        return [_mask_one(a.ravel(), amount).reshape(a.shape) for a in arrays]
    flat = np.concatenate([np.abs(a.ravel()).astype(np.float64) for a in arrays]) if arrays else np.zeros(0)
    keep = _mask_one(flat, amount)
    out, start = [], 0
    for a in arrays:
        out.append(keep[start:start + a.size].reshape(a.shape))
        start += a.size
    return out


def _mask_one(flat: np.ndarray, amount: float) -> np.ndarray:
    count = int(round(amount * flat.size))
    keep = np.ones(flat.size, dtype=bool)
    if count:
        # stable argsort: equal magnitudes are pruned in index order, so the count is exact
        keep[np.argsort(np.abs(flat), kind="stable")[:count]] = False
    return keep


def prune_magnitude(graph: Graph, amount: float, *, scope: str = "global") -> dict:
    """Zero ``amount`` of the conv/linear/matmul weights by magnitude; returns the report."""
    amount = check_amount(amount, "magnitude pruning")
    if scope not in SCOPES:
        raise CompileError(f"unknown pruning scope '{scope}'; choose one of {', '.join(SCOPES)}")
    slots = weight_slots(graph)
    arrays = [np.asarray(s.value.const) for s in slots]
    layers = []
    for slot, array, keep in zip(slots, arrays, _masks(arrays, amount, scope)):
        pruned = np.where(keep, array, np.zeros_like(array))
        if amount > 0:
            replace_constant(graph, slot, pruned, "pruned")
        zeros = int(np.count_nonzero(pruned == 0))
        layers.append({"layer": slot.node.name, "op": slot.node.op, "weight": slot.value.name,
                       "shape": list(array.shape), "parameters": int(array.size), "zeros": zeros,
                       "sparsity": zeros / array.size if array.size else 0.0})
    if amount > 0:
        graph.remove_unused_constants()
    total = sum(l["parameters"] for l in layers)
    zeros = sum(l["zeros"] for l in layers)
    return {"structure": "unstructured", "scope": scope, "amount": amount, "prunable_parameters": total,
            "zeros": zeros, "sparsity": zeros / total if total else 0.0, "layers": layers,
            "skipped": _skipped(graph)}


def _skipped(graph: Graph) -> list[str]:
    """Weights of conv/linear layers that are not constants (already compressed or computed)."""
    out = []
    for node in graph.nodes:
        if node.op in ("conv", "linear") and not (node.inputs[1].is_const and node.inputs[1].dtype.is_float):
            out.append(f"{node.name}: weight %{node.inputs[1].name} is not a float constant (left as is)")
    return out


def format_report(report: dict) -> str:
    """One line per layer: 'fc1 linear [256, 64]: 90.0% zero'."""
    lines = [f"{report['structure']} pruning ({report['scope']}): {report['sparsity']:.1%} of "
             f"{report['prunable_parameters']} weights are zero"]
    lines += [f"  {l['layer']} {l['op']} {l['shape']}: {l['sparsity']:.1%} zero" for l in report["layers"]]
    lines += [f"  skipped {s}" for s in report["skipped"]]
    return "\n".join(lines)


class PruneMagnitude(Pass):
    """``prune``: see the module docstring. The last report is kept in ``self.report``."""

    name = "prune"

    def __init__(self, amount: float = 0.5, scope: str = "global"):
        self.amount = check_amount(amount, "magnitude pruning")
        self.scope = scope
        self.report: dict | None = None

    def run(self, graph: Graph) -> bool:
        self.report = prune_magnitude(graph, self.amount, scope=self.scope)
        return self.amount > 0 and bool(self.report["layers"])


__all__ = ["PruneMagnitude", "WeightSlot", "format_report", "prune_magnitude", "replace_constant", "weight_slots"]
