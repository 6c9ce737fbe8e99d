"""Dead-code elimination.

Rewrite: remove every node none of whose outputs reaches a graph output, then drop constants
nobody uses. Ops here have no side effects, so unused means removable.
"""

from __future__ import annotations

from compiler.ir import Graph
from passes.base import Pass


class EliminateDeadCode(Pass):
    name = "dce"

    def run(self, graph: Graph) -> bool:
        live = {id(v) for v in graph.outputs}
        removed = False
        for node in reversed(list(graph.nodes)):
            if any(id(o) in live for o in node.outputs):
                live.update(id(v) for v in node.inputs if v is not None)
            else:  # consumers come later and were removed first, so no uses remain
                graph.remove_node(node)
                removed = True
        return graph.remove_unused_constants() > 0 or removed
