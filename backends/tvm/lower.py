"""Our IR ``Graph`` -> a Relax ``IRModule`` (function ``main``), built with ``relax.BlockBuilder``.

Each node is lowered by its op's entry in ``EMITTERS`` (``backends/tvm/ops/``, one module per op
family). Weights are bound as ``relax.const``; symbolic dims become ``tirx.Var``s shared by every
input that names them, so one module runs any batch size.

Imports tvm at module level: it is imported only by ``backends.tvm.emit`` (the registry imports
that only when a TVM target is used).
"""

from __future__ import annotations

import tvm
from tvm import relax

from compiler.errors import UnsupportedOpError
from compiler.ir import Graph, Node

from .ops import EMITTERS
from .ops.common import LowerContext, tvm_dtype


def supported_ops() -> set[str]:
    return set(EMITTERS)


# -- the module --------------------------------------------------------------------------------
def to_relax(graph: Graph, target_kind: str = "llvm") -> tuple[tvm.IRModule, dict]:
    """The Relax module computing ``graph`` (function ``main``: the graph inputs in order, a
    tuple of the graph outputs) and lowering notes for target_info. ``target_kind`` (``llvm`` or
    ``cuda``) lets an emitter use a hand-written kernel of that kind (recurrent layers)."""
    bb = relax.BlockBuilder()
    ctx = LowerContext(graph, bb, target_kind)
    params = []
    for v in graph.inputs:
        var = relax.Var(v.name, relax.TensorType(ctx.shape(v.shape), tvm_dtype(v.dtype)))
        ctx.env[id(v)] = var
        params.append(var)
    with bb.function("main", params):
        with bb.dataflow():
            for node in graph.nodes:
                _emit_node(ctx, node)
            ctx.node = None
            outs = [ctx.value(v) for v in graph.outputs]
            # One output: the tensor itself (the VM then returns it without a wrapping Array,
            # which costs a microsecond or two per call to unpack).
            result = bb.emit_output(outs[0] if len(outs) == 1 else relax.Tuple(outs))
        bb.emit_func_output(result)
    return bb.get(), {"dequantized": ctx.dequantized}


def _emit_node(ctx: LowerContext, node: Node) -> None:
    ctx.node = node
    emitter = EMITTERS.get(node.op)
    if emitter is None:
        raise ctx.unsupported("the TVM backend has no emitter for this op")
    try:
        result = emitter(ctx, node)
    except (UnsupportedOpError, ValueError, TypeError) as exc:
        if isinstance(exc, UnsupportedOpError):
            raise
        raise ctx.unsupported(f"Relax rejected it ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") \
            from exc
    results = result if isinstance(result, (list, tuple)) else [result]
    for out, expr in zip(node.outputs, results):
        ctx.env[id(out)] = ctx.emit(expr) if not isinstance(expr, relax.Var) else expr


__all__ = ["EMITTERS", "supported_ops", "to_relax"]
