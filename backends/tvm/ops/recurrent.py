"""TVM lowerings of the recurrent layers (``compiler/ops/recurrent.py``).

llvm, float32: one TIR function per layer (``backends/tvm/recurrent_kernel.py``: the input
projection of every step and direction as one GEMM, then a loop over time with the hidden-state
product, the gates and the state update), called once however long the sequence; the weights
are packed for it here (at compile time when they are constants). Other targets and dtypes: the
layer unrolled in Relax over the static sequence length (one input-projection matmul per
direction, then per step the hidden-state matmul and the gate arithmetic)."""

from __future__ import annotations

import numpy as np
from tvm import relax
from tvm.relax import op as R

from .. import recurrent_kernel
from .common import Emitter, tvm_dtype


def _packed(ctx, w, shape, tile: int, dtype: str, flat: bool = False):
    """A weight (or bias) seen as ``shape`` = [N, C, K] (or [N, C]; ``w`` None: zeros) packed as
    the kernel reads it, [N, C' / tile, K, tile] (or [N, C']), C zero-padded to whole tiles C'.
    ``flat`` (the projection of every direction at once, N = 1): without the N axis."""
    n, columns = shape[:2]
    width = recurrent_kernel.packed_width(columns, tile)
    if w is None or w.is_const:
        padded = np.zeros((n, width) + tuple(shape[2:]), np.dtype(dtype))
        if w is not None:
            padded[:, :columns] = w.const.reshape(shape)
        if len(shape) == 3:
            padded = padded.reshape(n, width // tile, tile, shape[2]).transpose(0, 1, 3, 2)
        return ctx.const(np.ascontiguousarray(padded[0] if flat else padded), dtype)
    value = R.nn.pad(R.reshape(ctx.value(w), shape), [0, 0, 0, width - columns] + [0, 0] * (len(shape) - 2))
    if len(shape) == 3:
        value = R.permute_dims(R.reshape(value, (n, width // tile, tile, shape[2])), [0, 1, 3, 2])
    if flat:
        value = R.reshape(value, (width // tile, shape[2], tile) if len(shape) == 3 else (width,))
    return ctx.emit(value)


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


def _unrolled(step, n_states: int) -> Emitter:
    """The layer unrolled in Relax (other targets, other dtypes): the hidden-state matmul and the
    gate arithmetic emitted per step."""

    def emit(ctx, node):
        x, w_ih, w_hh, b_ih, b_hh = (list(node.inputs) + [None] * 5)[:5]  # absent trailing biases
        states = list(node.inputs[5:]) + [None] * (n_states - len(node.inputs[5:]))
        t_len, batch, _ = x.shape
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


def _recurrent_emitter(kernel, step, gates: int, n_states: int) -> Emitter:
    unrolled = _unrolled(step, n_states)

    def emit(ctx, node):
        x, w_ih, w_hh, b_ih, b_hh = (list(node.inputs) + [None] * 5)[:5]  # absent trailing biases
        states = list(node.inputs[5:]) + [None] * (n_states - len(node.inputs[5:]))
        t_len, batch, _ = x.shape
        if not isinstance(t_len, int) or not isinstance(batch, int) or t_len == 0:
            raise ctx.unsupported("a recurrent layer needs a static, non-empty sequence length and batch on llvm/cuda")
        if ctx.target_kind != "llvm" or tvm_dtype(x.dtype) != "float32":
            return unrolled(ctx, node)  # the kernel is CPU code computing float32
        hidden, dt = node.attrs["hidden_size"], tvm_dtype(x.dtype)
        d, inputs = 2 if node.attrs["bidirectional"] else 1, x.shape[2]
        width = d * gates * hidden  # the input projection of every direction at once
        proj, tile = recurrent_kernel.PROJ_TILE, recurrent_kernel.TILE
        init = [ctx.value(s) if s is not None else ctx.const(np.zeros((d, batch, hidden)), dt) for s in states]
        args = [ctx.value(x), _packed(ctx, w_ih, (1, width, inputs), proj, dt, True),
                _packed(ctx, b_ih, (1, width), proj, dt, True),
                _packed(ctx, w_hh, (d, gates * hidden, hidden), tile, dt),
                _packed(ctx, b_hh, (d, gates * hidden), tile, dt), *init]
        gv = ctx.bb.add_func(kernel(t_len, batch, inputs, hidden, d), f"{node.op}_layer")
        state_type = relax.TensorType((d, batch, hidden), dt)
        out = ctx.emit(relax.call_tir(gv, args, [relax.TensorType((t_len, batch, d * hidden), dt)]
                                      + [state_type] * n_states))
        return [ctx.emit(relax.TupleGetItem(out, j)) for j in range(1 + n_states)]

    return emit


EMITTERS: dict[str, Emitter] = {"lstm": _recurrent_emitter(recurrent_kernel.lstm_kernel, _lstm_step, 4, 2),
                                "gru": _recurrent_emitter(recurrent_kernel.gru_kernel, _gru_step, 3, 1)}
