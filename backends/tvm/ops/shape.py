"""TVM lowerings of the ops of ``compiler/ops/shape.py``: reshape, transpose, concat, slice,
expand, flip, pad."""

from __future__ import annotations

import numpy as np
from tvm.relax import op as R

from compiler.ops.shape import symbolic_slice_bound

from .common import Emitter, tvm_dtype


# -- shape ops ---------------------------------------------------------------------------------
def emit_reshape(ctx, node):
    out = node.output
    if any(d == 0 for d in out.shape):  # Relax reads a 0 in a new shape as "keep this dim"
        return R.zeros(ctx.shape(out.shape), tvm_dtype(out.dtype))
    return R.reshape(ctx.value(node.inputs[0]), ctx.shape(node.output.shape))


def emit_transpose(ctx, node):
    return R.permute_dims(ctx.value(node.inputs[0]), list(node.attrs["perm"]))


def emit_concat(ctx, node):
    rank = len(node.output.shape)
    return R.concat([ctx.value(v) for v in node.inputs], node.attrs["axis"] % rank)


def emit_slice(ctx, node):
    x = node.inputs[0]
    axis = node.attrs["axis"] % len(x.shape)
    start, end, step = node.attrs.get("start", 0), node.attrs.get("end", 2 ** 63 - 1), node.attrs.get("step", 1)
    n = x.shape[axis]
    if all(isinstance(d, int) for d in (n, start, end)):  # Python slice semantics, resolved here
        start, end, step = slice(start, end, step).indices(n)
        if len(range(start, end, step)) == 0:
            start, end = 0, 0
        return R.strided_slice(ctx.value(x), [axis], [start], [end], [step], assume_inbound=False)
    # A symbolic axis or bound: both bounds as positions inside the axis (torch.export checked
    # that symbolic bounds lie inside it), so that Relax infers the exact shape.
    start, end = (ctx.dim(symbolic_slice_bound(n, b)) for b in (start, end))
    return R.strided_slice(ctx.value(x), [axis], [start], [end], [step], assume_inbound=True)


def emit_expand(ctx, node):
    return R.broadcast_to(ctx.value(node.inputs[0]), ctx.shape(node.attrs["shape"]))


def emit_flip(ctx, node):
    x = ctx.value(node.inputs[0])
    for a in node.attrs["axes"]:
        x = ctx.emit(R.flip(x, a % len(node.output.shape)))
    return x


_PAD_MODES = ("constant", "reflect", "replicate", "circular")


def emit_pad(ctx, node):
    x = node.inputs[0]
    mode, pads, rank = node.attrs.get("mode", "constant"), list(node.attrs["pads"]), len(x.shape)
    if mode not in _PAD_MODES:
        raise ctx.unsupported(f"pad mode {mode!r} (supported: {', '.join(_PAD_MODES)})")
    if mode in ("constant", "reflect"):
        widths = [w for i in range(rank) for w in (pads[i], pads[rank + i])]
        value = float(np.asarray(node.attrs.get("value", 0.0)).astype(x.dtype.numpy))  # the reference casts too
        return R.nn.pad(ctx.value(x), widths, mode, value)
    # replicate / circular: concatenate edge slices per axis (Relax's "edge" mode pads zeros here)
    y = ctx.value(x)
    for axis in range(rank):
        before, after, n = pads[axis], pads[rank + axis], x.shape[axis]
        if not (before or after):
            continue
        if not isinstance(n, int):
            raise ctx.unsupported(f"{mode} padding of a symbolic dim")
        pieces = [_pad_piece(ctx, y, axis, n, before, mode, front=True), y,
                  _pad_piece(ctx, y, axis, n, after, mode, front=False)]
        y = ctx.emit(R.concat([p for p in pieces if p is not None], axis))
    return y


def _pad_piece(ctx, y, axis: int, n: int, width: int, mode: str, *, front: bool):
    if width == 0:
        return None
    if mode == "circular":
        begin, end = (n - width, n) if front else (0, width)
        return ctx.emit(R.strided_slice(y, [axis], [begin], [end]))
    edge = ctx.emit(R.strided_slice(y, [axis], [0 if front else n - 1], [1 if front else n]))
    return ctx.emit(R.repeat(edge, width, axis))


EMITTERS: dict[str, Emitter] = {
    "reshape": emit_reshape, "transpose": emit_transpose, "concat": emit_concat, "slice": emit_slice,
    "expand": emit_expand, "flip": emit_flip, "pad": emit_pad,
}
