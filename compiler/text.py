"""Readable text form of a Graph, for humans, dumps and golden tests.

    graph mlp(%x: float32[batch, 1000]) {
      const %fc1_weight: float32[500, 1000]
      %linear = linear(%x, %fc1_weight, %fc1_bias)          # model.py:12
      %relu = relu(%linear)
      return %relu
    }
"""

from __future__ import annotations

from compiler.ir import Graph, Node


def _format_attr(value) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(str(v) for v in value) + "]"
    if isinstance(value, str):
        return repr(value)
    return str(value)


def _non_default_attrs(node: Node) -> dict:
    """Attributes that differ from the op's defaults (fused-activation fields stay hidden
    until a pass sets them)."""
    from compiler.ops import get_op

    specs = get_op(node.op).attrs
    return {k: v for k, v in node.attrs.items()
            if k not in specs or specs[k].required or specs[k].default != v}


def format_node(node: Node, *, with_types: bool = True, with_location: bool = True) -> str:
    outs = ", ".join(f"%{o.name}" + (f": {o.type}" if with_types else "") for o in node.outputs)
    args = ", ".join("None" if v is None else f"%{v.name}" for v in node.inputs)
    attrs = ", ".join(f"{k}={_format_attr(v)}" for k, v in _non_default_attrs(node).items())
    line = f"{outs} = {node.op}({args}" + (f"; {attrs}" if attrs else "") + ")"
    if with_location and node.location:
        line += f"  # {node.location}"
    return line


def format_graph(graph: Graph, *, with_types: bool = True, with_location: bool = False) -> str:
    params = ", ".join(f"%{v.name}: {v.type}" for v in graph.inputs)
    lines = [f"graph {graph.name}({params}) {{"]
    for v in graph.constants.values():
        lines.append(f"  const %{v.name}: {v.type}")
    for node in graph.nodes:
        lines.append("  " + format_node(node, with_types=with_types, with_location=with_location))
    lines.append("  return " + ", ".join(f"%{v.name}" for v in graph.outputs))
    lines.append("}")
    return "\n".join(lines)


def op_list(graph: Graph) -> list[str]:
    """The ops in graph order: the compact form golden pass tests compare."""
    return [n.op for n in graph.nodes]
