"""The compiler's typed graph IR.

A ``Graph`` holds ``Value``s (typed SSA edges) and ``Node``s (operator applications). A value knows
the node that produces it and every (node, input index) that uses it; node inputs are a tuple
changed only through ``Graph`` methods, so a pass can iterate over ``graph.nodes`` while it
rewrites. Constants (weights) are values with ``const`` set and no producer.

Types: ``TensorType(dtype, shape)`` where a dim is an ``int`` or a ``str`` naming a symbolic
size ("batch") or an arithmetic expression over such names ("batch*4"; see ``compiler.dims``).

This module imports numpy only: no torch, onnx or tvm (checked by a test).
"""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np

from compiler.errors import IRError

Dim = int | str
Shape = tuple[Dim, ...]


class DType(enum.Enum):
    """Element types. The value is the numpy dtype name, which is also the name in artifacts."""

    float16 = "float16"
    float32 = "float32"
    float64 = "float64"
    bfloat16 = "bfloat16"
    int8 = "int8"
    int16 = "int16"
    int32 = "int32"
    int64 = "int64"
    uint8 = "uint8"
    bool = "bool"

    @property
    def numpy(self) -> np.dtype:
        if self is DType.bfloat16:
            raise IRError("bfloat16 has no numpy dtype; cast it to float32 first")
        return np.dtype(self.value)

    @property
    def is_float(self) -> bool:
        return self in (DType.float16, DType.float32, DType.float64, DType.bfloat16)

    @property
    def is_int(self) -> bool:
        return self in (DType.int8, DType.int16, DType.int32, DType.int64, DType.uint8)

    @property
    def itemsize(self) -> int:
        return 2 if self is DType.bfloat16 else self.numpy.itemsize

    @staticmethod
    def from_numpy(dtype: Any) -> DType:
        name = np.dtype(dtype).name
        try:
            return DType(name)
        except ValueError:
            raise IRError(f"numpy dtype {name} has no IR equivalent") from None

    def __repr__(self) -> str:
        return f"DType.{self.name}"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class TensorType:
    dtype: DType
    shape: Shape

    def __post_init__(self):
        if not isinstance(self.dtype, DType):
            raise IRError(f"TensorType dtype must be a DType, got {self.dtype!r}")
        for d in self.shape:
            if isinstance(d, bool) or not isinstance(d, (int, str)):
                raise IRError(f"dim must be int or str, got {d!r} in {self.shape!r}")
            if isinstance(d, int) and d < 0:
                raise IRError(f"negative dim in {self.shape!r}")
        object.__setattr__(self, "shape", tuple(self.shape))

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    @property
    def numel(self) -> int | None:
        """Element count, or None when a dim is symbolic."""
        return int(np.prod(self.shape, dtype=np.int64)) if self.is_static else None

    def __str__(self) -> str:
        return f"{self.dtype}[{', '.join(str(d) for d in self.shape)}]"


def type_of_array(array: np.ndarray) -> TensorType:
    return TensorType(DType.from_numpy(array.dtype), tuple(int(d) for d in array.shape))


@dataclass(eq=False)
class Use:
    node: Node
    index: int


class Value:
    """A typed tensor edge: a graph input, a constant, or a node output."""

    __slots__ = ("name", "type", "producer", "output_index", "uses", "const")

    def __init__(self, name: str, type: TensorType, *, const: np.ndarray | None = None):
        self.name = name
        self.type = type
        self.producer: Node | None = None
        self.output_index = 0
        self.uses: list[Use] = []
        self.const = const

    @property
    def dtype(self) -> DType:
        return self.type.dtype

    @property
    def shape(self) -> Shape:
        return self.type.shape

    @property
    def is_const(self) -> bool:
        return self.const is not None

    def users(self) -> list[Node]:
        """Distinct consuming nodes, in first-use order."""
        seen: dict[int, Node] = {}
        for use in self.uses:
            seen.setdefault(id(use.node), use.node)
        return list(seen.values())

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type}"


@dataclass(eq=False)
class Node:
    """One operator application. Mutate only through Graph methods."""

    op: str
    inputs: tuple[Value | None, ...]
    outputs: tuple[Value, ...]
    attrs: dict[str, Any]
    name: str
    location: str | None = None  # "model.py:42 in forward: x = self.fc(x)"
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def output(self) -> Value:
        if len(self.outputs) != 1:
            raise IRError(f"node {self.name} ({self.op}) has {len(self.outputs)} outputs")
        return self.outputs[0]

    def describe(self) -> str:
        """'node %17 (conv) from model.py:42', for error messages."""
        where = f" from {self.location}" if self.location else ""
        return f"node {self.name} ({self.op}){where}"

    def __repr__(self) -> str:
        return f"<Node {self.name} {self.op}>"


class Graph:
    """An ordered list of nodes with graph inputs, outputs and constants."""

    def __init__(self, name: str = "main"):
        self.name = name
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.constants: dict[str, Value] = {}
        self.nodes: list[Node] = []
        self._names: set[str] = set()
        self._node_names: set[str] = set()
        self._counter = itertools.count()

    # -- naming -----------------------------------------------------------------------------
    def unique_name(self, hint: str = "v") -> str:
        """A value name not used before in this graph."""
        return self._fresh(hint, self._names)

    def unique_node_name(self, hint: str = "n") -> str:
        return self._fresh(hint, self._node_names)

    def _fresh(self, hint: str, taken: set[str]) -> str:
        hint = "".join(c if c.isalnum() or c == "_" else "_" for c in hint) or "v"
        name = hint
        while name in taken:
            name = f"{hint}_{next(self._counter)}"
        taken.add(name)
        return name

    def copy(self) -> Graph:
        """An independent copy: same names, types, attrs and node order; constants share their
        (read-only by convention) arrays. Iterative, so long graphs copy without deep recursion
        (``copy.deepcopy`` recurses along producer chains)."""
        new = Graph(self.name)
        new._names, new._node_names = set(self._names), set(self._node_names)  # fresh names stay unique
        mapping: dict[int, Value] = {}

        def clone(v: Value) -> Value:
            twin = Value(v.name, v.type, const=v.const)
            mapping[id(v)] = twin
            return twin

        new.inputs = [clone(v) for v in self.inputs]
        new.constants = {name: clone(v) for name, v in self.constants.items()}
        for node in self.nodes:
            inputs = tuple(mapping[id(v)] if v is not None else None for v in node.inputs)
            outputs = tuple(clone(v) for v in node.outputs)
            twin = Node(node.op, inputs, outputs, dict(node.attrs), node.name, node.location, dict(node.meta))
            for i, out in enumerate(outputs):
                out.producer, out.output_index = twin, i
            for i, value in enumerate(inputs):
                if value is not None:
                    value.uses.append(Use(twin, i))
            new.nodes.append(twin)
        new.outputs = [mapping[id(v)] for v in self.outputs]
        return new

    # -- building ---------------------------------------------------------------------------
    def add_input(self, name: str, type: TensorType) -> Value:
        value = Value(self.unique_name(name), type)
        self.inputs.append(value)
        return value

    def add_constant(self, array: np.ndarray, name: str = "const") -> Value:
        array = np.asarray(array)
        value = Value(self.unique_name(name), type_of_array(array), const=array)
        self.constants[value.name] = value
        return value

    def set_outputs(self, values: Sequence[Value]) -> None:
        self.outputs = list(values)

    def make_node(self, op: str, inputs: Sequence[Value | None], attrs: dict[str, Any] | None = None,
                  *, name: str | None = None, location: str | None = None,
                  output_names: Sequence[str] | None = None) -> Node:
        """Create a node (types inferred from the op registry) without inserting it."""
        from compiler.ops import get_op

        opdef = get_op(op)
        attrs = opdef.check_attrs(attrs or {}, op)
        in_types = [v.type if v is not None else None for v in inputs]
        out_types = opdef.infer_types(in_types, attrs)
        node_name = self.unique_node_name(name or op)
        if output_names is None:
            output_names = [node_name] if len(out_types) == 1 else [f"{node_name}_{i}" for i in range(len(out_types))]
        outputs = tuple(Value(self.unique_name(n), t) for n, t in zip(output_names, out_types))
        node = Node(op, tuple(inputs), outputs, attrs, node_name, location)
        for i, out in enumerate(outputs):
            out.producer, out.output_index = node, i
        for i, value in enumerate(inputs):
            if value is not None:
                value.uses.append(Use(node, i))
        return node

    def add_node(self, op: str, inputs: Sequence[Value | None], attrs: dict[str, Any] | None = None,
                 **kwargs) -> Node:
        """Create a node and append it at the end of the graph."""
        node = self.make_node(op, inputs, attrs, **kwargs)
        self.nodes.append(node)
        return node

    def insert_before(self, anchor: Node, op: str, inputs: Sequence[Value | None],
                      attrs: dict[str, Any] | None = None, **kwargs) -> Node:
        node = self.make_node(op, inputs, attrs, **kwargs)
        self.nodes.insert(self._index(anchor), node)
        return node

    def op(self, op: str, *inputs: Value | None, location: str | None = None, **attrs) -> Value:
        """Append a single-output node; returns its output. Handy for building and rewriting."""
        return self.add_node(op, list(inputs), attrs, location=location).output

    # -- mutation ---------------------------------------------------------------------------
    def set_input(self, node: Node, index: int, value: Value | None) -> None:
        old = node.inputs[index]
        if old is not None:
            old.uses = [u for u in old.uses if not (u.node is node and u.index == index)]
        node.inputs = node.inputs[:index] + (value,) + node.inputs[index + 1:]
        if value is not None:
            value.uses.append(Use(node, index))

    def replace_all_uses_with(self, old: Value, new: Value) -> None:
        """Point every use of ``old`` (and graph outputs) at ``new``."""
        if old is new:
            return
        for use in list(old.uses):
            self.set_input(use.node, use.index, new)
        self.outputs = [new if v is old else v for v in self.outputs]

    def remove_node(self, node: Node) -> None:
        """Remove a node whose outputs are unused."""
        for out in node.outputs:
            if out.uses or any(out is v for v in self.outputs):
                raise IRError(f"cannot remove {node.describe()}: output %{out.name} is still used")
        for i in range(len(node.inputs)):
            self.set_input(node, i, None)
        self.nodes.pop(self._index(node))

    def rename_value(self, value: Value, name: str) -> None:
        """Give ``value`` a new unique name (the name may get a suffix if taken)."""
        self._names.discard(value.name)
        if value.is_const:
            del self.constants[value.name]
        value.name = self.unique_name(name)
        if value.is_const:
            self.constants[value.name] = value

    def name_outputs(self) -> None:
        """Name graph outputs 'output' (one) or 'output_0', 'output_1', ... (several)."""
        names = ["output"] if len(self.outputs) == 1 else [f"output_{i}" for i in range(len(self.outputs))]
        for value, name in zip(self.outputs, names):
            if value.name != name and value.producer is not None:
                self.rename_value(value, name)

    def remove_unused_constants(self) -> int:
        outputs = {id(v) for v in self.outputs}
        dead = [n for n, v in self.constants.items() if not v.uses and id(v) not in outputs]
        for name in dead:
            del self.constants[name]
        return len(dead)

    def _index(self, node: Node) -> int:
        for i, n in enumerate(self.nodes):
            if n is node:
                return i
        raise IRError(f"{node.describe()} is not in graph {self.name}")

    def toposort(self) -> None:
        """Reorder nodes so every node comes after its producers (stable otherwise)."""
        position = {id(n): i for i, n in enumerate(self.nodes)}
        indegree = {id(n): 0 for n in self.nodes}
        for n in self.nodes:
            indegree[id(n)] = len({id(v.producer) for v in n.inputs if v is not None and v.producer is not None})
        import heapq

        ready = [(position[id(n)], n) for n in self.nodes if indegree[id(n)] == 0]
        heapq.heapify(ready)
        order: list[Node] = []
        while ready:
            _, n = heapq.heappop(ready)
            order.append(n)
            for user in {id(u): u for out in n.outputs for u in out.users()}.values():
                indegree[id(user)] -= 1
                if indegree[id(user)] == 0:
                    heapq.heappush(ready, (position[id(user)], user))
        if len(order) != len(self.nodes):
            raise IRError("graph has a cycle")
        self.nodes = order

    # -- queries ----------------------------------------------------------------------------
    def values(self) -> Iterator[Value]:
        yield from self.inputs
        yield from self.constants.values()
        for n in self.nodes:
            yield from n.outputs

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for n in self.nodes:
            counts[n.op] = counts.get(n.op, 0) + 1
        return dict(sorted(counts.items()))

    def parameter_count(self) -> int:
        return int(sum(v.const.size for v in self.constants.values()))

    def parameter_bytes(self) -> int:
        return int(sum(v.const.nbytes for v in self.constants.values()))

    def __str__(self) -> str:
        from compiler.text import format_graph

        return format_graph(self)

    # -- invariants -------------------------------------------------------------------------
    def verify(self) -> None:
        """Check structural and type invariants; raise IRError naming the first broken one."""
        from compiler.ops import get_op

        defined: set[int] = {id(v) for v in self.inputs} | {id(v) for v in self.constants.values()}
        names: set[str] = set()
        for v in itertools.chain(self.inputs, self.constants.values()):
            if v.name in names:
                raise IRError(f"duplicate value name %{v.name}")
            names.add(v.name)
        for v in self.constants.values():
            if v.const is None or type_of_array(v.const) != v.type:
                raise IRError(f"constant %{v.name} array does not match its type {v.type}")
        expected_uses: dict[int, list[tuple[int, int]]] = {}
        for node in self.nodes:
            for i, v in enumerate(node.inputs):
                if v is None:
                    continue
                if id(v) not in defined:
                    raise IRError(f"{node.describe()} input {i} (%{v.name}) is used before it is defined")
                expected_uses.setdefault(id(v), []).append((id(node), i))
            opdef = get_op(node.op)
            try:
                attrs = opdef.check_attrs(node.attrs, node.op)
                inferred = opdef.infer_types([v.type if v is not None else None for v in node.inputs], attrs)
            except Exception as exc:  # re-raise with the node's provenance
                raise IRError(f"{node.describe()}: {exc}") from exc
            if len(inferred) != len(node.outputs):
                raise IRError(f"{node.describe()} has {len(node.outputs)} outputs, op infers {len(inferred)}")
            for out, t in zip(node.outputs, inferred):
                if out.type != t:
                    raise IRError(f"{node.describe()} output %{out.name} is {out.type}, op infers {t}")
                if out.producer is not node:
                    raise IRError(f"output %{out.name} of {node.describe()} has a wrong producer")
                if out.name in names:
                    raise IRError(f"duplicate value name %{out.name}")
                names.add(out.name)
                defined.add(id(out))
        for v in self.values():
            actual = sorted((id(u.node), u.index) for u in v.uses)
            if actual != sorted(expected_uses.get(id(v), [])):
                raise IRError(f"use-list of %{v.name} is out of date")
        for v in self.outputs:
            if id(v) not in defined:
                raise IRError(f"graph output %{v.name} is not defined")
