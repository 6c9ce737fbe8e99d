"""Recurrent layers: one layer of an LSTM or a GRU, over a whole sequence, in one or both
directions, with PyTorch's weight layout and gate order (LSTM: i, f, g, o; GRU: r, z, n, with
the reset gate applied after the hidden-state matmul, i.e. ONNX's linear_before_reset=1).

One op is one layer, sequence-first (``x`` [T, B, I]), as ONNX's LSTM/GRU: the frontend chains
layers and transposes batch-first inputs. Inputs, with D = 2 if bidirectional else 1 and G the
gate count (4 for LSTM, 3 for GRU):

* ``w_ih`` [D, G*H, I], ``w_hh`` [D, G*H, H]; ``b_ih`` / ``b_hh`` [D, G*H] (optional: no bias);
* ``h0`` [D, B, H] (and for LSTM ``c0``), optional: zeros.

Outputs: ``y`` [T, B, D*H] (forward then backward hidden state of each step), ``h_n`` [D, B, H]
(and for LSTM ``c_n``), the final states of each direction (the backward one is at t = 0).
"""

from __future__ import annotations

import numpy as np

from compiler.ir import TensorType
from compiler.ops import Attr, defop

_ATTRS = {"hidden_size": Attr("int"), "bidirectional": Attr("bool", False)}


def _recurrent_type(gates: int, n_states: int):
    def infer(x, w_ih, w_hh, b_ih=None, b_hh=None, *states, hidden_size, bidirectional):
        d, h = 2 if bidirectional else 1, hidden_size
        if x.rank != 3 or not x.dtype.is_float:
            raise ValueError(f"a recurrent layer expects a float input [T, B, I], got {x}")
        t, b, i = x.shape
        expected = {"w_ih": (w_ih, (d, gates * h, i)), "w_hh": (w_hh, (d, gates * h, h)),
                    "b_ih": (b_ih, (d, gates * h)), "b_hh": (b_hh, (d, gates * h))}
        expected.update({f"state {k}": (s, (d, b, h)) for k, s in enumerate(states)})
        for name, (typ, shape) in expected.items():
            if typ is not None and (typ.shape != shape or typ.dtype != x.dtype):
                raise ValueError(f"recurrent layer {name} must be {x.dtype}{list(shape)}, got {typ}")
        state = TensorType(x.dtype, (d, b, h))
        return (TensorType(x.dtype, (t, b, d * h)),) + (state,) * n_states
    return infer


def _flops(in_shapes, out_shapes, **_) -> int:
    """Both matmuls of every step and direction, plus a few operations per gate element."""
    t, b, i = in_shapes[0]
    d, gh, h = in_shapes[2]
    return 2 * d * t * b * gh * (i + h) + 8 * d * t * b * gh


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _directions(x, w_ih, w_hh, b_ih, b_hh, states, step):
    """Runs ``step(input projection, hidden projection, states) -> new states`` over time in each
    direction (the backward one from the last step) and stacks the outputs as PyTorch does."""
    t_len, batch, _ = x.shape
    d, gh, h = w_hh.shape
    outputs, finals = [], []
    for k in range(d):
        bias_x = b_ih[k] if b_ih is not None else np.zeros(gh, x.dtype)
        bias_h = b_hh[k] if b_hh is not None else np.zeros(gh, x.dtype)
        state = [s[k] if s is not None else np.zeros((batch, h), x.dtype) for s in states]
        projected = x @ w_ih[k].T + bias_x  # the input projection of every step at once
        ys = [None] * t_len
        order = range(t_len) if k == 0 else reversed(range(t_len))
        for t in order:
            state = step(projected[t], state[0] @ w_hh[k].T + bias_h, state)
            ys[t] = state[0]
        outputs.append(np.stack(ys) if t_len else np.zeros((0, batch, h), x.dtype))
        finals.append(state)
    y = np.concatenate(outputs, axis=-1).astype(x.dtype)
    return (y,) + tuple(np.stack([f[j] for f in finals]).astype(x.dtype) for j in range(len(states)))


def _lstm_step(gx, gh, state):
    i, f, g, o = np.split(gx + gh, 4, axis=-1)
    c = _sigmoid(f) * state[1] + _sigmoid(i) * np.tanh(g)
    return [_sigmoid(o) * np.tanh(c), c]


def _gru_step(gx, gh, state):
    xr, xz, xn = np.split(gx, 3, axis=-1)
    hr, hz, hn = np.split(gh, 3, axis=-1)
    r, z = _sigmoid(xr + hr), _sigmoid(xz + hz)
    n = np.tanh(xn + r * hn)
    return [(1 - z) * n + z * state[0]]


@defop("lstm", ["x", "w_ih", "w_hh", "b_ih?", "b_hh?", "h0?", "c0?"], infer=_recurrent_type(4, 2),
       attrs=_ATTRS, tags=("recurrent",), flops=_flops)
def lstm(x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, c0=None, *, hidden_size, bidirectional):
    """One LSTM layer as ``torch.nn.LSTM`` (gates i, f, g, o): c' = σ(f)·c + σ(i)·tanh(g),
    h' = σ(o)·tanh(c'); returns (y [T, B, D*H], h_n, c_n)."""
    return _directions(x, w_ih, w_hh, b_ih, b_hh, [h0, c0], _lstm_step)


@defop("gru", ["x", "w_ih", "w_hh", "b_ih?", "b_hh?", "h0?"], infer=_recurrent_type(3, 1),
       attrs=_ATTRS, tags=("recurrent",), flops=_flops)
def gru(x, w_ih, w_hh, b_ih=None, b_hh=None, h0=None, *, hidden_size, bidirectional):
    """One GRU layer as ``torch.nn.GRU`` (gates r, z, n): n = tanh(W_in x + b_in + r·(W_hn h + b_hn)),
    h' = (1 - z)·n + z·h; returns (y [T, B, D*H], h_n)."""
    return _directions(x, w_ih, w_hh, b_ih, b_hh, [h0], _gru_step)
