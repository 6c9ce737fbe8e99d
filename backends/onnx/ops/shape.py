"""ONNX emitters of the shape ops (``compiler/ops/shape.py``): data movement without arithmetic."""

from __future__ import annotations

from backends.onnx.ops.common import EmitContext, Emitter
from compiler.ir import Node


INT64_MAX = 2 ** 63 - 1
INT64_MIN = -(2 ** 63)


# -- shape ops ---------------------------------------------------------------------------------
def emit_reshape(ctx: EmitContext, node: Node) -> None:
    x = node.inputs[0]
    target = node.attrs["shape"]
    has_zero = any(isinstance(d, int) and d == 0 for d in target)
    shape = ctx.shape_input(target, x.shape, mode="reshape")
    ctx.add("Reshape", [ctx.value(x), shape], node.output.name, allowzero=1 if has_zero else None)


def emit_expand(ctx: EmitContext, node: Node) -> None:
    x = node.inputs[0]
    shape = ctx.shape_input(node.attrs["shape"], x.shape, mode="expand")
    ctx.add("Expand", [ctx.value(x), shape], node.output.name)


def emit_transpose(ctx: EmitContext, node: Node) -> None:
    ctx.add("Transpose", [ctx.value(node.inputs[0])], node.output.name, perm=list(node.attrs["perm"]))


def emit_concat(ctx: EmitContext, node: Node) -> None:
    ctx.add("Concat", [ctx.value(v) for v in node.inputs], node.output.name, axis=node.attrs["axis"])


def _clamp64(v: int) -> int:
    return max(INT64_MIN, min(INT64_MAX, int(v)))


def emit_slice(ctx: EmitContext, node: Node) -> None:
    a = node.attrs
    # ONNX Slice clamps out-of-range starts/ends like Python for a positive step; ends beyond
    # int64 (Python ints are unbounded) are clamped to INT64_MAX, which means "to the end".
    inputs = [ctx.value(node.inputs[0]), _bound(ctx, a["start"], "starts"), _bound(ctx, a["end"], "ends"),
              ctx.ints([a["axis"]], "axes"), ctx.ints([a["step"]], "steps")]
    ctx.add("Slice", inputs, node.output.name)


def _bound(ctx: EmitContext, bound, name: str) -> str:
    """A Slice start/end input: a constant, or a symbolic dim computed at run time."""
    return ctx.ints([_clamp64(bound)], name) if isinstance(bound, int) else ctx.dim_tensor(bound)


def emit_flip(ctx: EmitContext, node: Node) -> None:
    x = node.inputs[0]
    axes = sorted({a % len(x.shape) for a in node.attrs["axes"]})
    if not axes:
        ctx.add("Identity", [ctx.value(x)], node.output.name)
        return
    n = len(axes)  # a negative step walks from the last element to before the first
    ctx.add("Slice", [ctx.value(x), ctx.ints([-1] * n, "starts"), ctx.ints([-(2 ** 63)] * n, "ends"),
                      ctx.ints(axes, "axes"), ctx.ints([-1] * n, "steps")], node.output.name)


_ONNX_PAD_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def emit_pad(ctx: EmitContext, node: Node) -> None:
    x = node.inputs[0]
    mode = node.attrs["mode"]
    if mode == "circular" and ctx.opset < 19:
        raise ctx.unsupported("circular padding needs ONNX opset 19 or later")
    value = ctx.scalar(node.attrs["value"], x.dtype) if mode == "constant" else ""
    ctx.add("Pad", [ctx.value(x), ctx.ints(node.attrs["pads"], "pads"), value], node.output.name,
            mode=_ONNX_PAD_MODES[mode])


# -- the table ---------------------------------------------------------------------------------
EMITTERS: dict[str, Emitter] = {
    "reshape": emit_reshape, "expand": emit_expand, "transpose": emit_transpose, "concat": emit_concat,
    "slice": emit_slice, "flip": emit_flip, "pad": emit_pad,
}
