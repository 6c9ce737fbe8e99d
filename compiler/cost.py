"""Static cost of a graph: FLOPs from each op's rule, with symbolic dims bound to a size
(batch 1 unless told otherwise) so reports compare like with like."""

from __future__ import annotations

from typing import Mapping

from compiler import dims
from compiler.ir import Graph
from compiler.ops import get_op


def graph_flops(graph: Graph, bindings: Mapping[str, int] | None = None, default: int = 1) -> int:
    """Total FLOPs; every symbol not in ``bindings`` counts as ``default``."""
    bindings = dict(bindings or {})

    def concrete(shape):
        for d in shape:
            for s in dims.symbols_in(d):
                bindings.setdefault(s, default)
        return dims.evaluate_shape(shape, bindings)

    total = 0
    for node in graph.nodes:
        ins = [concrete(v.shape) if v is not None else None for v in node.inputs]
        outs = [concrete(v.shape) for v in node.outputs]
        total += get_op(node.op).count_flops(ins, outs, node.attrs)
    return total
