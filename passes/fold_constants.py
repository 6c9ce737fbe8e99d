"""Constant folding.

Rewrite: a node whose inputs are all constants is evaluated with the reference interpreter and
its outputs become constants (``x = add(c1, c2)`` -> ``x = const``). Folding is skipped when the
result would be much larger than its inputs (an ``expand`` of a scalar to a big tensor would only
bloat the artifact), and for quantization ops: ``dequantize_linear(int8 weight)`` must stay,
since folding it would store the weight in float again.
"""

from __future__ import annotations

from compiler.interpreter import run_node
from compiler.ir import Graph
from compiler.ops import get_op
from passes.base import Pass

MAX_GROWTH_BYTES = 1 << 20  # fold when the result adds at most 1 MiB beyond its inputs


class FoldConstants(Pass):
    name = "fold"

    def run(self, graph: Graph) -> bool:
        changed = False
        for node in list(graph.nodes):
            inputs = [v for v in node.inputs if v is not None]
            if not inputs or not all(v.is_const for v in inputs):
                continue
            if not all(o.type.is_static for o in node.outputs):
                continue
            if "quant" in get_op(node.op).tags:
                continue  # quantized storage is the point of these nodes
            if any(o is v for o in node.outputs for v in graph.outputs):
                continue  # graph outputs stay computed: backends expect produced outputs
            in_bytes = sum(v.const.nbytes for v in inputs)
            out_bytes = sum(o.type.numel * o.dtype.itemsize for o in node.outputs)
            if out_bytes > in_bytes + MAX_GROWTH_BYTES:
                continue
            args = [v.const if v is not None else None for v in node.inputs]
            for out, array in zip(node.outputs, run_node(node, args, {})):
                graph.replace_all_uses_with(out, graph.add_constant(array, out.name))
            graph.remove_node(node)
            changed = True
        if changed:
            graph.remove_unused_constants()
        return changed
