"""TVM lowerings of the recurrent layers (``compiler/ops/recurrent.py``), unrolled in Relax over
a static sequence length: the input projection of every step is one matmul ([T*B, I] x [I, G*H]),
only the hidden-state matmul and the gate arithmetic are emitted per step."""

from __future__ import annotations

import numpy as np
from tvm import relax
from tvm.relax import op as R

from .common import Emitter, tvm_dtype


def _transposed(ctx, v, k: int):
    """Direction ``k`` of a weight [D, G*H, n] as [n, G*H] (a bias [D, G*H] as [G*H])."""
    if v is None:
        return None
    if v.is_const:
        block = v.const[k]
        return ctx.const(np.ascontiguousarray(block.T), v.dtype)
    block = ctx.emit(R.take(ctx.value(v), relax.const(k, "int64"), axis=0))
    return ctx.emit(R.permute_dims(block)) if len(v.shape) == 3 else block


def _state(ctx, v, k: int, zeros):
    return zeros if v is None else ctx.emit(R.take(ctx.value(v), relax.const(k, "int64"), axis=0))


def _lstm_step(ctx, gx, gh, state):
    i, f, g, o = (relax.TupleGetItem(ctx.emit(R.split(ctx.emit(gx + gh), 4, axis=-1)), j) for j in range(4))
    c = ctx.emit(R.sigmoid(f) * state[1] + R.sigmoid(i) * R.tanh(g))
    return [ctx.emit(R.sigmoid(o) * R.tanh(c)), c]


def _gru_step(ctx, gx, gh, state):
    xs, hs = ctx.emit(R.split(gx, 3, axis=-1)), ctx.emit(R.split(gh, 3, axis=-1))
    x_r, x_z, x_n = (relax.TupleGetItem(xs, j) for j in range(3))
    h_r, h_z, h_n = (relax.TupleGetItem(hs, j) for j in range(3))
    r, z = ctx.emit(R.sigmoid(x_r + h_r)), ctx.emit(R.sigmoid(x_z + h_z))
    n = ctx.emit(R.tanh(x_n + r * h_n))
    return [ctx.emit(n + z * (state[0] - n))]  # (1 - z)·n + z·h


def _recurrent_emitter(step, n_states: int) -> Emitter:
    def emit(ctx, node):
        x, w_ih, w_hh, b_ih, b_hh = (list(node.inputs) + [None] * 5)[:5]  # absent trailing biases
        states = list(node.inputs[5:]) + [None] * (n_states - len(node.inputs[5:]))
        t_len, batch, _ = x.shape
        if not isinstance(t_len, int) or not isinstance(batch, int) or t_len == 0:
            raise ctx.unsupported("a recurrent layer needs a static, non-empty sequence length and batch on llvm/cuda")
        hidden, dt = node.attrs["hidden_size"], tvm_dtype(x.dtype)
        zeros = ctx.const(np.zeros((batch, hidden)), dt)
        outputs, finals = [], []
        for k in range(2 if node.attrs["bidirectional"] else 1):
            projected = ctx.emit(R.matmul(ctx.value(x), _transposed(ctx, w_ih, k)))  # [T, B, G*H], all steps
            if b_ih is not None:
                projected = ctx.emit(projected + _transposed(ctx, b_ih, k))
            steps = ctx.emit(R.split(projected, t_len, axis=0))
            w_h, b_h = _transposed(ctx, w_hh, k), _transposed(ctx, b_hh, k)
            state = [_state(ctx, s, k, zeros) for s in states]
            ys = [None] * t_len
            for t in (range(t_len) if k == 0 else reversed(range(t_len))):
                gx = ctx.emit(R.squeeze(relax.TupleGetItem(steps, t), [0]))
                gh = ctx.emit(R.matmul(state[0], w_h))
                state = step(ctx, gx, gh if b_h is None else ctx.emit(gh + b_h), state)
                ys[t] = state[0]
            outputs.append(ctx.emit(R.stack(ys, axis=0)))
            finals.append(state)
        y = outputs[0] if len(outputs) == 1 else ctx.emit(R.concat(outputs, axis=-1))
        return [y] + [ctx.emit(R.stack([f[j] for f in finals], axis=0)) for j in range(n_states)]

    return emit


EMITTERS: dict[str, Emitter] = {"lstm": _recurrent_emitter(_lstm_step, 2), "gru": _recurrent_emitter(_gru_step, 1)}
