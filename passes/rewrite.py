"""Pattern rewriting: rules are data, a driver applies them to a fixpoint.

A ``RewriteRule`` names the op it anchors on, a ``match(graph, node)`` that returns a match
object or a ``NoMatch`` saying *why* the pattern does not apply, and a ``rewrite(graph, match)``
that builds the replacement and rewires uses. ``apply_rules`` walks the graph, applies the first
rule that matches each node, and repeats until nothing changes; ``explain`` reports, per node,
why each rule did not match (used in tests and when debugging a fusion that did not fire).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from compiler.ir import Graph, Node, Value


@dataclass(frozen=True)
class NoMatch:
    reason: str

    def __bool__(self) -> bool:
        return False


@dataclass(frozen=True)
class RewriteRule:
    name: str
    anchor: str                                   # op of the node the pattern is rooted at
    match: Callable[[Graph, Node], Any]            # match object, or NoMatch(reason)
    rewrite: Callable[[Graph, Any], None]


def apply_rules(graph: Graph, rules: Sequence[RewriteRule], max_rounds: int = 20) -> bool:
    """Apply rules until a fixpoint; returns whether anything changed."""
    by_anchor: dict[str, list[RewriteRule]] = {}
    for rule in rules:
        by_anchor.setdefault(rule.anchor, []).append(rule)
    changed = False
    for _ in range(max_rounds):
        round_changed = False
        for node in list(graph.nodes):
            if not _alive(graph, node):
                continue
            for rule in by_anchor.get(node.op, ()):
                m = rule.match(graph, node)
                if m is not None and not isinstance(m, NoMatch):
                    rule.rewrite(graph, m)
                    round_changed = True
                    break
        if not round_changed:
            break
        changed = True
        remove_dead_nodes(graph)
    return changed


def explain(graph: Graph, rules: Sequence[RewriteRule]) -> list[str]:
    """'rule @node: reason' for every anchor node a rule refused."""
    lines = []
    for node in graph.nodes:
        for rule in rules:
            if rule.anchor == node.op:
                m = rule.match(graph, node)
                if isinstance(m, NoMatch):
                    lines.append(f"{rule.name} @{node.name}: {m.reason}")
    return lines


def _alive(graph: Graph, node: Node) -> bool:
    """False for a node an earlier rewrite in this round left without users (DCE removes it
    after the round; matching it again would rewrite dead code)."""
    return any(out.uses or any(out is v for v in graph.outputs) for out in node.outputs)


def remove_dead_nodes(graph: Graph) -> None:
    from passes.eliminate_dead_code import EliminateDeadCode

    EliminateDeadCode().run(graph)


# -- helpers for match functions ------------------------------------------------------------------
def producer(value: Value | None, op: str | tuple[str, ...]) -> Node | None:
    """The node producing ``value`` when it is one of ``op``."""
    if value is None or value.producer is None:
        return None
    ops = (op,) if isinstance(op, str) else op
    return value.producer if value.producer.op in ops else None


def single_use(graph: Graph, value: Value) -> bool:
    """Used by exactly one node input and not a graph output (safe to fold into its user)."""
    return len(value.uses) == 1 and not any(v is value for v in graph.outputs)


def scalar_constant(value: Value | None) -> float | None:
    """The number a constant holds when all its elements are equal (broadcast scalar)."""
    import numpy as np

    if value is None or value.const is None or value.const.size == 0:
        return None
    flat = value.const.reshape(-1)
    if not np.all(flat == flat[0]):
        return None
    return float(flat[0])
