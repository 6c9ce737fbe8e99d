"""The reference interpreter: runs a Graph with each op's numpy reference.

This is the spec. Every backend, pass and the frontend are tested against it. It binds symbolic
dims from the input shapes, resolves symbolic ``shape`` attributes, and checks every produced
value against its IR type, so an op whose reference and type rule disagree is caught at once.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from compiler import dims
from compiler.errors import InputError
from compiler.ir import Graph, Node, TensorType, Value
from compiler.ops import get_op


class InterpreterError(RuntimeError):
    """An op failed or produced a value that does not match its IR type."""


def bind_symbols(values: Sequence[Value], arrays: Sequence[np.ndarray]) -> dict[str, int]:
    """Sizes of the symbolic dims that appear directly in the input types."""
    bindings: dict[str, int] = {}
    for value, array in zip(values, arrays):
        if array.ndim != value.type.rank:
            raise InputError(f"input '{value.name}' has shape {array.shape}, expected rank {value.type.rank}")
        for dim, size in zip(value.shape, array.shape):
            if dims.is_symbol(dim):
                if bindings.setdefault(dim, size) != size:
                    raise InputError(f"input '{value.name}': dim '{dim}' is {size} here but {bindings[dim]} elsewhere")
            elif isinstance(dim, int) and dim != size:
                raise InputError(f"input '{value.name}' has shape {array.shape}, expected {value.type}")
    return bindings


def concrete_shape(t: TensorType, bindings: Mapping[str, int]) -> tuple[int, ...]:
    return dims.evaluate_shape(t.shape, bindings)


def _bound_attrs(node: Node, bindings: Mapping[str, int]) -> dict:
    opdef = get_op(node.op)
    attrs = dict(node.attrs)
    for name, spec in opdef.attrs.items():
        if spec.kind == "shape":
            attrs[name] = dims.evaluate_shape(attrs[name], bindings)
        elif spec.kind == "dim":
            attrs[name] = dims.evaluate(attrs[name], bindings)
    return attrs


def _bind_data_dependent(out: Value, result: np.ndarray, bindings) -> None:
    """A symbol first seen on an op's output (nonzero's row count) takes its size from the
    result: its size depends on the data, not on the input shapes."""
    if not isinstance(bindings, dict) or result.ndim != out.type.rank:
        return
    for dim, size in zip(out.shape, result.shape):
        if dims.is_symbol(dim) and dim not in bindings:
            bindings[dim] = int(size)


def run_node(node: Node, args: list[np.ndarray | None], bindings: Mapping[str, int]) -> list[np.ndarray]:
    opdef = get_op(node.op)
    try:
        results = opdef.evaluate(args, _bound_attrs(node, bindings))
    except Exception as exc:
        raise InterpreterError(f"while interpreting {node.describe()}: {exc}") from exc
    for out, result in zip(node.outputs, results):
        _bind_data_dependent(out, result, bindings)
        expected = concrete_shape(out.type, bindings)
        if result.dtype != out.dtype.numpy or result.shape != expected:
            raise InterpreterError(
                f"{node.describe()} produced {result.dtype}{list(result.shape)}, its type says "
                f"{out.dtype}{list(expected)} (the op's reference and type rule disagree)")
    return results


def run_graph(graph: Graph, inputs: Sequence[np.ndarray], *,
              keep_values: bool = False) -> list[np.ndarray] | tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """Outputs of ``graph`` on ``inputs``; with ``keep_values`` also every value by name."""
    if len(inputs) != len(graph.inputs):
        raise InputError(f"graph {graph.name} takes {len(graph.inputs)} inputs, got {len(inputs)}")
    arrays = [np.asarray(a) for a in inputs]
    for value, array in zip(graph.inputs, arrays):
        if array.dtype != value.dtype.numpy:
            raise InputError(f"input '{value.name}' has dtype {array.dtype}, expected {value.dtype}")
    bindings = bind_symbols(graph.inputs, arrays)
    env: dict[int, np.ndarray] = {id(v): a for v, a in zip(graph.inputs, arrays)}
    env.update({id(v): v.const for v in graph.constants.values()})
    named: dict[str, np.ndarray] = {}
    for node in graph.nodes:
        args = [env[id(v)] if v is not None else None for v in node.inputs]
        for out, result in zip(node.outputs, run_node(node, args, bindings)):
            env[id(out)] = result
            if keep_values:
                named[out.name] = result
    outputs = [env[id(v)] for v in graph.outputs]
    return (outputs, named) if keep_values else outputs
