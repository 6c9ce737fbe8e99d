"""Pass infrastructure: a Pass rewrites a Graph in place and says whether it changed it; the
PassManager runs an explicit pipeline, verifies the graph after every pass, records what each
pass did, and can run a differential check that names the first pass whose numbers drift.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from compiler.errors import IRError
from compiler.ir import Graph


@dataclass
class PassResult:
    modified: bool


class Pass:
    """Subclasses set ``name`` and implement ``run(graph) -> bool`` (True when modified)."""

    name = "pass"

    def run(self, graph: Graph) -> bool:
        raise NotImplementedError

    def __call__(self, graph: Graph) -> PassResult:
        return PassResult(bool(self.run(graph)))

    def __repr__(self) -> str:
        return f"<Pass {self.name}>"


@dataclass
class PassRecord:
    name: str
    modified: bool
    seconds: float
    nodes_before: int
    nodes_after: int
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class PassDriftError(Exception):
    """A pass changed the graph's numbers beyond tolerance (a compiler bug)."""

    exit_code = 3


@dataclass
class PassManager:
    passes: Sequence[Pass]
    verify: bool = True
    check_inputs: Sequence[np.ndarray] | None = None  # enables the differential check
    rtol: float = 1e-5
    atol: float = 1e-6
    records: list[PassRecord] = field(default_factory=list)
    after_pass: Callable[[Pass, Graph], None] | None = None  # e.g. print or dump the IR

    def run(self, graph: Graph) -> bool:
        from compiler.interpreter import run_graph

        from compiler.cost import graph_flops

        reference = None
        if self.check_inputs is not None:
            reference, self._values = run_graph(graph, self.check_inputs, keep_values=True)
        changed = False
        flops = graph_flops(graph)
        for p in self.passes:
            nodes, params, flops_before = len(graph.nodes), graph.parameter_count(), flops
            start = time.perf_counter()
            modified = p(graph).modified
            seconds = time.perf_counter() - start
            if self.verify:
                try:
                    graph.verify()
                except IRError as exc:
                    raise IRError(f"after pass {p.name}: {exc}") from exc
            flops = graph_flops(graph) if modified else flops_before
            self.records.append(PassRecord(p.name, modified, seconds, nodes, len(graph.nodes), params,
                                           graph.parameter_count(), flops_before, flops))
            if self.after_pass is not None:
                self.after_pass(p, graph)
            if reference is not None and modified:
                self._check(p, graph, reference)
            changed |= modified
        return changed

    def _close(self, want: np.ndarray, got: np.ndarray) -> bool:
        return want.shape == got.shape and np.allclose(got, want, rtol=self.rtol, atol=self.atol, equal_nan=True)

    def _check(self, p: Pass, graph: Graph, reference: list[np.ndarray]) -> None:
        from compiler.interpreter import run_graph

        outputs, values = run_graph(graph, self.check_inputs, keep_values=True)
        for i, (want, got) in enumerate(zip(reference, outputs)):
            if not self._close(want, got):
                err = float(np.max(np.abs(got.astype(np.float64) - want))) if want.shape == got.shape else float("inf")
                raise PassDriftError(f"pass {p.name} changed output {i} (max abs error {err:.3g} > "
                                     f"rtol {self.rtol}, atol {self.atol}){self._first_difference(graph, values)}")
        self._values = values

    def _first_difference(self, graph: Graph, values: dict[str, np.ndarray]) -> str:
        """'; first differing value: %x of node ...' for the earliest node (in graph order) whose
        output exists before and after the pass and changed."""
        for node in graph.nodes:
            for out in node.outputs:
                before = self._values.get(out.name)
                if before is not None and not self._close(before, values[out.name]):
                    return f"; first differing value: %{out.name} of {node.describe()}"
        return ""
