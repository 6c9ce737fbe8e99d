"""ONNX emitters of the recurrent layers (``compiler/ops/recurrent.py``): one ONNX LSTM / GRU
node per IR layer, which onnxruntime runs with its fused kernels.

ONNX orders the gates differently from PyTorch (whose order the IR keeps): LSTM i, f, g, o ->
ONNX i, o, f, c; GRU r, z, n -> ONNX z, r, h. The gate blocks of the weights and biases are
permuted here (in numpy for constant weights, by a Gather otherwise). PyTorch's GRU applies the
reset gate after the hidden-state matmul: ONNX's ``linear_before_reset=1``.
"""

from __future__ import annotations

import numpy as np

from backends.onnx.ops.common import EmitContext, Emitter
from compiler.ir import DType, Node, Value

_GATE_ORDER = {"LSTM": (0, 3, 1, 2), "GRU": (1, 0, 2)}  # ONNX gate k is PyTorch gate _GATE_ORDER[k]


def _reordered(ctx: EmitContext, v: Value, order: tuple[int, ...], hidden: int) -> str:
    """``v`` [D, G*H, ...] with its gate blocks (axis 1) in ONNX order."""
    rows = np.concatenate([np.arange(g * hidden, (g + 1) * hidden) for g in order])
    if v.is_const:
        return ctx.const(np.ascontiguousarray(np.take(v.const, rows, axis=1)), hint="rnn_weight")
    return ctx.add("Gather", [ctx.value(v), ctx.ints(rows, "gate_rows")], axis=1, dtype=v.dtype)


def _padded(inputs) -> list:
    """The first five inputs (x, w_ih, w_hh, b_ih, b_hh), trailing optional ones absent as None."""
    return (list(inputs) + [None] * 5)[:5]


def _bias(ctx: EmitContext, node: Node, op_type: str, hidden: int) -> str:
    """ONNX's B [D, 2*G*H]: the input bias then the hidden bias (an absent one is zeros)."""
    x, _, w_hh, b_ih, b_hh = _padded(node.inputs)
    if b_ih is None and b_hh is None:
        return ""
    zeros = np.zeros((w_hh.shape[0], w_hh.shape[1]), x.dtype.numpy)
    parts = [_reordered(ctx, b, _GATE_ORDER[op_type], hidden) if b is not None else ctx.const(zeros)
             for b in (b_ih, b_hh)]
    if all(p in ctx.const_arrays for p in parts):
        return ctx.const(np.concatenate([ctx.const_arrays[p] for p in parts], axis=1), hint="rnn_bias")
    return ctx.add("Concat", parts, axis=1, dtype=x.dtype)


def _recurrent_emitter(op_type: str) -> Emitter:
    def emit(ctx: EmitContext, node: Node) -> None:
        x, w_ih, w_hh = node.inputs[:3]
        if x.dtype not in (DType.float32, DType.float64):
            raise ctx.unsupported(f"onnxruntime's {op_type} runs float32/float64 only, got {x.dtype}")
        hidden, bidirectional = node.attrs["hidden_size"], node.attrs["bidirectional"]
        order = _GATE_ORDER[op_type]
        states = [ctx.value(s) if s is not None else "" for s in node.inputs[5:]]
        inputs = [ctx.value(x), _reordered(ctx, w_ih, order, hidden), _reordered(ctx, w_hh, order, hidden),
                  _bias(ctx, node, op_type, hidden), ""] + states
        y, *finals = node.outputs
        t, b, _ = x.shape
        d = 2 if bidirectional else 1
        y4 = ctx.fresh(f"{node.name}_y")  # ONNX's Y is [T, D, B, H]
        ctx.value_types[y4] = (x.dtype, (t, d, b, hidden))
        extra = {"linear_before_reset": 1} if op_type == "GRU" else {}
        ctx.add(op_type, inputs, [y4] + [f.name for f in finals], hidden_size=hidden,
                direction="bidirectional" if bidirectional else "forward", **extra)
        if d == 1:
            ctx.add("Squeeze", [y4, ctx.ints([1], "axis")], y.name, dtype=x.dtype, shape=y.shape)
            return
        steps = ctx.add("Transpose", [y4], perm=[0, 2, 1, 3], dtype=x.dtype, shape=(t, b, d, hidden))
        ctx.add("Reshape", [steps, ctx.ints([0, 0, d * hidden], "shape")], y.name, dtype=x.dtype, shape=y.shape)

    emit.__name__ = f"emit_{op_type.lower()}"
    return emit


EMITTERS: dict[str, Emitter] = {"lstm": _recurrent_emitter("LSTM"), "gru": _recurrent_emitter("GRU")}
