"""Structured channel pruning by L1 norm.

Rewrite: for a conv (groups == 1) or linear layer ``P`` with a constant weight, the output
channels with the smallest L1 norm are removed physically: ``P``'s weight rows and bias entries
go, and so do the matching input channels (columns) of every layer that reads them:
``conv(x, W[C_out, C_in])`` -> ``conv(x, W[keep, :])`` and ``next(W2[:, C_out])`` ->
``next(W2[:, keep])``. The next layers get smaller matmuls, so this is a real speed-up.

Channels are followed through ops that keep each channel separate: elementwise unary ops,
pooling, depthwise convs (groups == channels: their weights, biases and ``groups`` shrink with
the channel), binary elementwise ops (a broadcast operand is left alone, a constant operand with
the full channel count is sliced), a flatten ``reshape`` (channel ``c`` becomes columns
``c*H*W .. (c+1)*H*W - 1`` of the next linear) and ``concat`` along the channel axis (each
input's channels sit at an offset).

Layers whose channels meet in a binary op (a residual add; a squeeze-excite multiply) are tied:
they are pruned together, by their summed L1 norms, or not at all. A layer whose channels reach
a graph output or an op this pass cannot follow is not pruned (and the report says why), so the
graph's inputs and outputs keep their shapes. Kept channel counts are rounded up to a multiple
of ``multiple_of`` (onnxruntime's blocked conv layouts are slower for other counts), never
below 1 and never above the original count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from compiler.errors import CompileError
from compiler.ir import Graph, Node, Value
from compiler.ops import get_op
from passes.base import Pass
from passes.prune_magnitude import check_amount

POOLS = ("max_pool", "avg_pool", "adaptive_avg_pool", "adaptive_max_pool")


@dataclass(frozen=True)
class Segment:
    """``count`` channels of one group (None: channels this pass never prunes), each taking
    ``repeat`` consecutive positions along the axis (a flattened channel's H*W columns)."""

    group: int | None
    count: int
    repeat: int = 1


@dataclass(frozen=True)
class Layout:
    """Where pruneable channels lie in a value: along ``axis``, in ``segments`` order."""

    axis: int
    segments: tuple[Segment, ...]

    @property
    def size(self) -> int:
        return sum(s.count * s.repeat for s in self.segments)

    def groups(self) -> list[int]:
        return [s.group for s in self.segments if s.group is not None]


@dataclass
class Analysis:
    producers: list[Node] = field(default_factory=list)          # group id -> layer
    layouts: dict[int, Layout] = field(default_factory=dict)      # id(value) -> layout
    parent: list[int] = field(default_factory=list)              # union-find over group ids
    blocked: dict[int, str] = field(default_factory=dict)        # group id -> reason
    followers: dict[int, list[Node]] = field(default_factory=dict)  # group -> depthwise convs

    def new_group(self, node: Node) -> int:
        self.producers.append(node)
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a: int, b: int) -> None:
        self.parent[self.find(a)] = self.find(b)

    def block(self, layout: Layout, reason: str) -> None:
        for g in layout.groups():
            self.blocked.setdefault(g, reason)


# -- analysis ----------------------------------------------------------------------------------
def _is_producer(node: Node) -> bool:
    weight = node.inputs[1] if len(node.inputs) > 1 else None
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    if weight is None or not weight.is_const or (bias is not None and not bias.is_const):
        return False
    if node.op == "conv":
        return node.attrs["groups"] == 1
    return node.op == "linear"


def _is_depthwise(node: Node) -> bool:
    w = node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    groups = node.attrs["groups"]
    return (w.is_const and (bias is None or bias.is_const) and groups > 1 and w.shape[0] == groups
            and w.shape[1] == 1 and node.inputs[0].shape[1] == groups)


def analyse(graph: Graph) -> Analysis:
    """Follow every prunable layer's output channels to the layers that consume them."""
    a = Analysis()
    for node in graph.nodes:
        traced = [(i, v, a.layouts[id(v)]) for i, v in enumerate(node.inputs)
                  if v is not None and id(v) in a.layouts]
        if traced:
            _visit(a, node, traced)
        if node.op in ("conv", "linear") and _is_producer(node):
            out = node.output
            a.layouts[id(out)] = Layout(1 if node.op == "conv" else out.type.rank - 1,
                                        (Segment(a.new_group(node), out.shape[1 if node.op == "conv" else -1]),))
    for v in graph.outputs:
        if id(v) in a.layouts:
            a.block(a.layouts[id(v)], f"its channels reach the graph output %{v.name}")
    return a


def _visit(a: Analysis, node: Node, traced: list[tuple[int, Value, Layout]]) -> None:
    """Set the layout of ``node``'s output from its traced inputs, or block their groups."""
    op = node.op
    first = traced[0][2]
    if op in ("conv", "linear"):
        _visit_layer(a, node, traced)
    elif "unary" in get_op(op).tags and len(node.outputs) == 1:
        a.layouts[id(node.output)] = first
    elif op in POOLS and first.axis == 1:
        a.layouts[id(node.output)] = first
    elif "elementwise" in get_op(op).tags and len(node.outputs) == 1:
        _visit_broadcast(a, node, traced)
    elif op == "reshape":
        _visit_reshape(a, node, first)
    elif op == "concat":
        _visit_concat(a, node, traced)
    else:
        for _, v, layout in traced:
            a.block(layout, f"{node.describe()} reads its channels (%{v.name}) and pruning cannot follow a {op}")


def _visit_layer(a: Analysis, node: Node, traced) -> None:
    for i, v, layout in traced:
        x = node.inputs[0]
        if i != 0:
            a.block(layout, f"{node.describe()} uses it as a weight or bias")
        elif node.op == "linear" and layout.axis == x.type.rank - 1 and node.inputs[1].is_const:
            pass  # a sink: the weight's columns follow
        elif node.op == "conv" and layout.axis == 1 and node.attrs["groups"] == 1 and node.inputs[1].is_const:
            pass  # a sink: the weight's input channels follow
        elif node.op == "conv" and layout.axis == 1 and _is_depthwise(node):
            a.layouts[id(node.output)] = layout
            for g in layout.groups():
                a.followers.setdefault(g, []).append(node)
        else:
            a.block(layout, f"{node.describe()} reads its channels in a way pruning cannot follow "
                            f"(grouped conv, non-constant weight, or not the feature axis)")


def _visit_broadcast(a: Analysis, node: Node, traced) -> None:
    out = node.output
    rank = out.type.rank
    axes = {layout.axis + rank - v.type.rank for _, v, layout in traced}
    ref = traced[0][2]
    if len(axes) != 1:
        for _, _, layout in traced:
            a.block(layout, f"{node.describe()} combines channels along different axes")
        return
    axis = axes.pop()
    for _, v, layout in traced[1:]:
        if not _tie(a, ref, layout):
            a.block(ref, f"{node.describe()} combines channel layouts that do not line up")
            a.block(layout, f"{node.describe()} combines channel layouts that do not line up")
            return
    for i, v in enumerate(node.inputs):
        if v is None or id(v) in a.layouts:
            continue
        k = axis - (rank - v.type.rank)
        if k >= 0 and v.shape[k] != 1 and not v.is_const:
            a.block(ref, f"{node.describe()} combines the channels with %{v.name}, which pruning cannot shrink")
            return
    if out.shape[axis] != ref.size:
        a.block(ref, f"{node.describe()} broadcasts the channel axis")
        return
    a.layouts[id(out)] = Layout(axis, ref.segments)


def _tie(a: Analysis, x: Layout, y: Layout) -> bool:
    """Union the groups of two layouts that meet elementwise; False when they do not line up."""
    if len(x.segments) != len(y.segments):
        return False
    pairs = list(zip(x.segments, y.segments))
    if any(s.count != t.count or s.repeat != t.repeat or (s.group is None) != (t.group is None) for s, t in pairs):
        return False
    for s, t in pairs:
        if s.group is not None:
            a.union(s.group, t.group)
    return True


def _visit_reshape(a: Analysis, node: Node, layout: Layout) -> None:
    src, dst = node.inputs[0].shape, node.output.shape
    ax = layout.axis
    inner = src[ax + 1:]
    if tuple(dst[:ax + 1]) == tuple(src[:ax + 1]):  # the channel axis and all before it stay
        a.layouts[id(node.output)] = layout
    elif (len(dst) == ax + 1 and tuple(dst[:ax]) == tuple(src[:ax]) and all(isinstance(d, int) for d in inner)
          and dst[ax] == layout.size * math.prod(inner)):
        spatial = math.prod(inner)  # flatten: each channel becomes ``spatial`` consecutive columns
        a.layouts[id(node.output)] = Layout(ax, tuple(Segment(s.group, s.count, s.repeat * spatial)
                                                      for s in layout.segments))
    else:
        a.block(layout, f"{node.describe()} reshapes the channel axis (only flattening it is followed)")


def _visit_concat(a: Analysis, node: Node, traced) -> None:
    axis = node.attrs["axis"] % node.output.type.rank
    traced_by_index = {i: layout for i, _, layout in traced}
    if any(layout.axis != axis for layout in traced_by_index.values()) or \
            any(v is not None and not isinstance(v.shape[axis], int) for v in node.inputs):
        for layout in traced_by_index.values():
            a.block(layout, f"{node.describe()} concatenates along another axis than the channels")
        return
    segments: list[Segment] = []
    for i, v in enumerate(node.inputs):
        if i in traced_by_index:
            segments += traced_by_index[i].segments
        elif v is not None:
            segments.append(Segment(None, v.shape[axis]))
    a.layouts[id(node.output)] = Layout(axis, tuple(segments))


# -- decision ------------------------------------------------------------------------------------
def kept_count(channels: int, amount: float, multiple_of: int) -> int:
    """Channels kept: (1 - amount) of them, rounded up to a multiple, within [1, channels]."""
    want = channels * (1.0 - amount)
    rounded = math.ceil(round(want, 9) / multiple_of) * multiple_of
    return max(1, min(channels, rounded))


def _l1(node: Node) -> np.ndarray:
    w = np.abs(np.asarray(node.inputs[1].const, dtype=np.float64))
    return w.reshape(w.shape[0], -1).sum(axis=1)


def _decide(a: Analysis, amount: float, multiple_of: int) -> tuple[dict[int, np.ndarray], list[dict], list[dict]]:
    """Kept channel indices per root group, and report entries for pruned and skipped groups."""
    members: dict[int, list[int]] = {}
    for g in range(len(a.producers)):
        members.setdefault(a.find(g), []).append(g)
    keep: dict[int, np.ndarray] = {}
    pruned, skipped = [], []
    for root, gs in members.items():
        names = [a.producers[g].name for g in gs]
        followers = [n.name for g in gs for n in a.followers.get(g, [])]
        reasons = [a.blocked[g] for g in gs if g in a.blocked]
        channels = int(a.producers[gs[0]].inputs[1].shape[0])
        if reasons:
            skipped.append({"layers": names, "channels": channels, "reason": reasons[0]})
            continue
        n = kept_count(channels, amount, multiple_of)
        importance = sum(_l1(a.producers[g]) for g in gs)
        order = np.argsort(-importance, kind="stable")  # largest L1 first; ties keep the lower index
        keep[root] = np.sort(order[:n])
        pruned.append({"layers": names, "followers": followers, "channels": channels, "kept": n,
                       "kept_indices": keep[root].tolist()})
    return keep, pruned, skipped


# -- rewrite -------------------------------------------------------------------------------------
def _indices(a: Analysis, layout: Layout, keep: dict[int, np.ndarray]) -> np.ndarray:
    """Positions along the layout's axis that survive."""
    parts, offset = [], 0
    for s in layout.segments:
        root = a.find(s.group) if s.group is not None else None
        chosen = keep.get(root, np.arange(s.count)) if root is not None else np.arange(s.count)
        parts.append(offset + (chosen[:, None] * s.repeat + np.arange(s.repeat)).ravel())
        offset += s.count * s.repeat
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _take(graph: Graph, node: Node, index: int, positions: np.ndarray, axis: int) -> None:
    v = node.inputs[index]
    if v is None or v.shape[axis] == len(positions):
        return
    new = graph.add_constant(np.ascontiguousarray(np.take(v.const, positions, axis=axis)), f"{v.name}_pruned")
    graph.set_input(node, index, new)


def _rewrite(graph: Graph, a: Analysis, keep: dict[int, np.ndarray]) -> None:
    producer_group = {id(n): g for g, n in enumerate(a.producers)}
    for node in list(graph.nodes):
        for i, v in enumerate(node.inputs):
            if v is None or id(v) not in a.layouts:
                continue
            positions = _indices(a, a.layouts[id(v)], keep)
            if node.op in ("conv", "linear") and i == 0:
                depthwise = node.op == "conv" and node.attrs["groups"] > 1
                _take(graph, node, 1, positions, 0 if depthwise else 1)
                if depthwise:
                    _take(graph, node, 2, positions, 0)
                    _set_attrs(node, groups=len(positions))
        if id(node) in producer_group:
            root = a.find(producer_group[id(node)])
            if root in keep:
                _take(graph, node, 1, keep[root], 0)
                _take(graph, node, 2, keep[root], 0)
        out_layout = a.layouts.get(id(node.outputs[0]))
        if out_layout is not None and "elementwise" in get_op(node.op).tags:
            _slice_constant_operands(graph, node, out_layout, _indices(a, out_layout, keep))
        if node.op == "reshape" and id(node.output) in a.layouts:
            layout = a.layouts[id(node.output)]
            shape = list(node.attrs["shape"])
            shape[layout.axis] = len(_indices(a, layout, keep))
            _set_attrs(node, shape=tuple(shape))
        _retype(node)


def _slice_constant_operands(graph: Graph, node: Node, layout: Layout, positions: np.ndarray) -> None:
    rank = node.output.type.rank
    for i, v in enumerate(node.inputs):
        if v is not None and v.is_const:
            k = layout.axis - (rank - v.type.rank)
            if k >= 0 and v.shape[k] != 1:
                _take(graph, node, i, positions, k)


def _set_attrs(node: Node, **changes) -> None:
    # The IR has no attribute setter: attrs are plain data that no use-list depends on. The node
    # keeps its identity (and name, which the report refers to).
    node.attrs = get_op(node.op).check_attrs({**node.attrs, **changes}, node.op)


def _retype(node: Node) -> None:
    """Re-infer output types after inputs shrank (nodes are visited in topological order)."""
    types = get_op(node.op).infer_types([v.type if v is not None else None for v in node.inputs], node.attrs)
    for out, t in zip(node.outputs, types):
        out.type = t


# -- entry points --------------------------------------------------------------------------------
def prune_channels(graph: Graph, amount: float, *, multiple_of: int = 16) -> dict:
    """Remove ``amount`` of the output channels of every prunable layer; returns the report."""
    amount = check_amount(amount, "channel pruning")
    if int(multiple_of) < 1:
        raise CompileError(f"channel multiple must be >= 1, got {multiple_of}")
    before = graph.parameter_count()
    a = analyse(graph)
    keep, pruned, skipped = _decide(a, amount, int(multiple_of))
    keep = {root: idx for root, idx in keep.items()
            if len(idx) < a.producers[root].inputs[1].shape[0]}
    if keep:
        _rewrite(graph, a, keep)
        graph.remove_unused_constants()
    return {"structure": "channel", "amount": amount, "multiple_of": int(multiple_of), "groups": pruned,
            "skipped": skipped, "parameters_before": before, "parameters_after": graph.parameter_count()}


def format_report(report: dict) -> str:
    lines = [f"channel pruning {report['amount']:.0%} (multiples of {report['multiple_of']}): "
             f"{report['parameters_before']} -> {report['parameters_after']} parameters"]
    for g in report["groups"]:
        note = "" if g["kept"] < g["channels"] else f" (unchanged: rounding up to a multiple of {report['multiple_of']})"
        lines.append(f"  {', '.join(g['layers'])}: {g['channels']} -> {g['kept']} channels{note}")
    for s in report["skipped"]:
        lines.append(f"  skipped {', '.join(s['layers'])}: {s['reason']}")
    return "\n".join(lines)


class PruneChannels(Pass):
    """``prune_channels``: see the module docstring. The last report is kept in ``self.report``."""

    name = "prune_channels"

    def __init__(self, amount: float = 0.5, multiple_of: int = 16):
        self.amount = check_amount(amount, "channel pruning")
        self.multiple_of = multiple_of
        self.report: dict | None = None

    def run(self, graph: Graph) -> bool:
        self.report = prune_channels(graph, self.amount, multiple_of=self.multiple_of)
        return self.report["parameters_after"] != self.report["parameters_before"]


__all__ = ["PruneChannels", "analyse", "format_report", "kept_count", "prune_channels"]
