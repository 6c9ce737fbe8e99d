"""ONNX emitters of the reductions (``compiler/ops/reduce.py``)."""

from __future__ import annotations

import numpy as np

from backends.onnx.ops.common import EmitContext, Emitter, _finish
from compiler.ir import DType, Node


# -- reductions --------------------------------------------------------------------------------
def _reduce_emitter(op_type: str) -> Emitter:
    def emit(ctx: EmitContext, node: Node) -> None:
        x = node.inputs[0]
        rank = len(x.shape)
        # Normalised and deduplicated; empty (or a rank-0 input) reduces every axis, which ONNX
        # does when the axes input is absent and noop_with_empty_axes is 0.
        axes = sorted({a % rank for a in node.attrs["axes"]}) if rank else []
        inputs = [ctx.value(x)] + ([ctx.ints(axes, "axes")] if axes else [])
        ctx.typed(op_type, inputs, x.dtype, node.output.name, node.output.shape, cast=[0],
                  keepdims=int(node.attrs["keepdim"]), noop_with_empty_axes=0)

    emit.__name__ = f"emit_{op_type}"
    return emit


def emit_cumsum(ctx: EmitContext, node: Node) -> None:
    x = node.inputs[0]
    axis = node.attrs["axis"] % max(len(x.shape), 1)
    ctx.typed("CumSum", [ctx.value(x), ctx.const(np.asarray(axis, np.int64), hint="axis")], x.dtype,
              node.output.name, node.output.shape, cast=[0])


def emit_cumprod(ctx: EmitContext, node: Node) -> None:
    """ONNX has no CumProd: product over a [.., n, n] lower-triangular expansion (exact, O(n^2)
    memory, so only for a static axis)."""
    x = node.inputs[0]
    rank = len(x.shape)
    axis = node.attrs["axis"] % max(rank, 1)
    n = x.shape[axis] if rank else 1
    if not isinstance(n, int):
        raise ctx.unsupported("cumprod along a symbolic dim")
    cd = ctx.compute_dtype("ReduceProd", x.dtype)
    xc = ctx.cast(ctx.value(x), x.dtype, cd)
    if rank == 0:
        _finish(ctx, xc, cd, x.dtype, (), node.output.name)
        return
    # rows[..., j, i] = x[..., i] where i <= j else 1; the product over i is the running product.
    moved = xc if axis == rank - 1 else ctx.add("Transpose", [xc], dtype=cd, perm=[d for d in range(rank) if d != axis]
                                                 + [axis])
    rows = ctx.add("Unsqueeze", [moved, ctx.ints([-2], "axes")], dtype=cd)
    lower = ctx.const(np.tril(np.ones((n, n), bool)), hint="tril")
    masked = ctx.add("Where", [lower, rows, ctx.scalar(1, cd)], dtype=cd)
    product = ctx.add("ReduceProd", [masked, ctx.ints([-1], "axes")], dtype=cd, keepdims=0)
    if axis != rank - 1:
        perm = list(range(rank - 1))
        perm.insert(axis, rank - 1)
        product = ctx.add("Transpose", [product], dtype=cd, perm=perm)
    _finish(ctx, product, cd, x.dtype, node.output.shape, node.output.name)


def emit_argmax(ctx: EmitContext, node: Node) -> None:
    x = node.inputs[0]
    ctx.typed("ArgMax", [ctx.value(x)], x.dtype, node.output.name, node.output.shape, fixed_dtype=DType.int64,
              axis=node.attrs["axis"], keepdims=int(node.attrs["keepdim"]), select_last_index=0)


# -- the table ---------------------------------------------------------------------------------
EMITTERS: dict[str, Emitter] = {
    "reduce_sum": _reduce_emitter("ReduceSum"), "reduce_mean": _reduce_emitter("ReduceMean"),
    "reduce_max": _reduce_emitter("ReduceMax"), "reduce_min": _reduce_emitter("ReduceMin"),
    "argmax": emit_argmax, "reduce_prod": _reduce_emitter("ReduceProd"), "cumsum": emit_cumsum,
    "cumprod": emit_cumprod,
}
