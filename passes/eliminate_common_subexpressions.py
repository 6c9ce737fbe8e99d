"""Common-subexpression elimination.

Rewrite: two nodes with the same op, the same inputs (by identity) and equal attributes compute
the same value; uses of the later one move to the earlier one. Small constants with equal
contents (scalars such as the 0.5 of several GELUs) are merged first so the nodes that read
them become equal too.
"""

from __future__ import annotations

import numpy as np

from compiler.ir import Graph
from passes.base import Pass

SMALL_CONSTANT = 64  # elements; bigger weights are never equal by accident, skip hashing them


class EliminateCommonSubexpressions(Pass):
    name = "cse"

    def run(self, graph: Graph) -> bool:
        changed = self._merge_constants(graph)
        seen: dict[tuple, list] = {}
        for node in list(graph.nodes):
            key = (node.op, tuple(id(v) if v is not None else None for v in node.inputs),
                   tuple(sorted((k, repr(v)) for k, v in node.attrs.items())))
            if key in seen and not any(o is v for o in node.outputs for v in graph.outputs):
                for old, new in zip(node.outputs, seen[key]):
                    graph.replace_all_uses_with(old, new)
                graph.remove_node(node)
                changed = True
            else:
                seen[key] = list(node.outputs)
        return changed

    @staticmethod
    def _merge_constants(graph: Graph) -> bool:
        canonical: dict[tuple, object] = {}
        changed = False
        outputs = {id(v) for v in graph.outputs}
        for value in list(graph.constants.values()):
            if value.const.size > SMALL_CONSTANT or id(value) in outputs:
                continue
            key = (value.dtype, value.shape, np.ascontiguousarray(value.const).tobytes())
            first = canonical.setdefault(key, value)
            if first is not value:
                graph.replace_all_uses_with(value, first)
                changed = True
        if changed:
            graph.remove_unused_constants()
        return changed
