"""One TIR function per recurrent layer (all time steps, all directions) for the CPU target.

Unrolled in Relax, every time step was a dozen small kernels (the hidden-state matmul, a split,
the gate arithmetic, a stack), each a VM call with its own allocation, and the hidden matmul a
matrix-vector product on the generic schedule: 1.5x / 1.8x onnxruntime on the LSTM LM / GRU
tagger. Here a layer is

- the input projection x W_ih^T + b_ih of every step and direction at once, a GEMM over the
  T*B rows in register tiles of PROJ_ROWS x PROJ_TILE, the weights packed as
  [D*G*H / PROJ_TILE, I, PROJ_TILE], panel by panel (a panel stays in L1/L2 while every row tile
  passes over it; the packed GEMM rules of gemm.py ran these shapes at 19-28 GFLOP/s, reading the
  weights again for each row tile), into a scratch buffer;

then a serial loop over time (per direction; the backward one from the last step) whose body is

- the hidden-state product gh = h_{t-1} W_hh^T + b_hh, a register tile of ``TILE`` consecutive
  gate outputs for ``ROWS`` batch rows at a time, the weights packed at compile time as
  [D, G*H / TILE, H, TILE] so that each step of the reduction over h reads one contiguous TILE
  vector (the packing pads G*H to a TILE multiple with zero rows);
- the gate nonlinearities and the state update, vectorized over the hidden units, written
  straight into the outputs (y, and h_n / c_n, which also hold the running state).

At batch 1 the hidden product streams the packed W_hh from L2 (GRU tagger, 196 KB a direction)
or L3 (LSTM LM, 2.8 MB) once a step and runs near that bandwidth; two accumulator sets over
alternate k, or reading the tiles in reverse order on odd steps (to find the end of the last
step's stream in L2) measured no faster.

The vector widths are fixed here, not taken from the target: the Relax module is built once for
all CPU variants of an artifact. LLVM splits a 16-lane float vector into two AVX2 registers, and
a 64-wide tile is 4 AVX-512 or 8 AVX2 accumulators, so both variants get full-width code.

sigmoid and tanh are computed here from exp(-a), a >= 0, by range reduction (a = n ln2 + r,
|r| <= ln2 / 2, 2^n built in the exponent bits, e^r by its Taylor series to degree 7, relative
error ~2e-7), tanh near 0 by its own series (no cancellation). LLVM has no vector exp, and
libm's is one scalar call per element. Bounds are applied as ``select(x > bound, bound, x)``,
which is false for NaN: NaN inputs stay NaN, as in PyTorch.
"""

from __future__ import annotations

import math

from tvm import tirx
from tvm.script import tirx as T

# Gate outputs per register tile of the hidden-state product (see the module docstring).
TILE = 64
# Lanes of the vectorized gate loop.
LANES = 16
# Batch rows sharing one pass over the weights, at most (rows x TILE accumulators).
MAX_ROWS = 2
# The input projection's register tile: PROJ_ROWS rows x PROJ_TILE columns, 6 AVX-512 or 12 AVX2
# accumulators. Measured against 3 x 32 (6 / 12 registers too): the same with AVX-512, 0.7x the
# layer's time with AVX2 (its 16-register file then still holds the broadcast row values).
PROJ_TILE, PROJ_ROWS = 16, 6

# The kernels' dtype (a name, not a string literal, in the TVMScript signatures: pyflakes reads
# string annotations as forward references).
F32 = "float32"

_LN2_HI, _LN2_LO = 0.693145751953125, 1.42860682030941723212e-6  # ln 2 = hi + lo, hi exact in few bits


def _f(value: float):
    return tirx.const(value, "float32")


def _let(value, body):
    """``body(v)`` with ``v`` bound once to ``value`` (the value is used several times)."""
    var = tirx.Var("v", "float32")  # every value bound here is a float32 (vector lanes added later)
    return tirx.Let(var, value, body(var))


def _upper_bound(x, bound: float):
    """min(x, bound), NaN where x is NaN."""
    return tirx.Select(x > _f(bound), _f(bound), x)


def _exp_neg(a):
    """exp(-a) for 0 <= a <= 87 (a normal float: 2^-126 <= 2^n <= 1)."""
    def with_n(n):
        r = _let(-a - n * _f(_LN2_HI) - n * _f(_LN2_LO), lambda r: _taylor_exp(r))
        scale = tirx.reinterpret("float32", tirx.shift_left(tirx.Cast("int32", n) + 127, 23))
        return r * scale
    return _let(tirx.floor(-a * _f(1 / math.log(2)) + _f(0.5)), with_n)


def _taylor_exp(r):
    p = _f(1 / math.factorial(7))
    for k in range(6, -1, -1):
        p = p * r + _f(1 / math.factorial(k))
    return p


def sigmoid(x):
    """1 / (1 + e^-x) from e = exp(-|x|) in (0, 1]: e / (1 + e) for negative x (no overflow)."""
    return _let(x, _sigmoid)


def _sigmoid(x):
    def with_e(e):
        return _let(_f(1) / (_f(1) + e), lambda s: tirx.Select(x < _f(0), e * s, s))
    return _let(_exp_neg(_upper_bound(tirx.abs(x), 87.0)), with_e)


def tanh(x):
    """(1 - e) / (1 + e) with e = exp(-2|x|) and x's sign; |x| < 1/8 by the odd series to x^7
    (1 - e cancels there); tanh(9) is 1 in float32, so |x| is bounded by 9."""
    return _let(x, _tanh)


def _tanh(x):
    def with_a(a):
        def with_e(e):
            big = (_f(1) - e) / (_f(1) + e)
            return _let(big, lambda b: tirx.Select(x < _f(0), -b, b))
        x2 = x * x
        small = x + x * x2 * (_f(-1 / 3) + x2 * (_f(2 / 15) + x2 * _f(-17 / 315)))
        return tirx.Select(a < _f(0.125), small, _let(_exp_neg(_f(2) * _upper_bound(a, 9.0)), with_e))
    return _let(tirx.abs(x), with_a)


def batch_rows(batch: int) -> int:
    """Batch rows per pass over the weights: the largest divisor of ``batch`` up to MAX_ROWS."""
    return next(r for r in range(min(MAX_ROWS, batch), 0, -1) if batch % r == 0)


def packed_width(columns: int, tile: int = None) -> int:
    """``columns`` rounded up to whole tiles (of TILE unless given)."""
    tile = tile or TILE
    return -(-columns // tile) * tile


class _Shapes:
    """The static sizes of one layer's kernel."""

    def __init__(self, gates: int, t_len: int, batch: int, inputs: int, hidden: int, directions: int):
        self.H, self.B, self.D, self.TT, self.I = hidden, batch, directions, t_len, inputs
        self.GH, self.GP = gates * hidden, packed_width(gates * hidden)
        self.NT, self.ROWS, self.HV = self.GP // TILE, batch_rows(batch), hidden // LANES * LANES
        self.M, self.XP = t_len * batch, packed_width(directions * gates * hidden, PROJ_TILE)
        self.NX = self.XP // PROJ_TILE

    def step(self, t, d):
        """The time index that loop step t of direction d works on: the backward direction
        runs from the last step."""
        return t + d * (self.TT - 1 - 2 * t)


def lstm_kernel(t_len: int, batch: int, inputs: int, hidden: int, directions: int):
    """PrimFunc(x [T, B, I], wx [NX, I, PROJ_TILE], bx [NX*PROJ_TILE], w [D, NT, H, TILE],
    bias [D, NT*TILE], h0, c0 [D, B, H]) -> (y [T, B, D*H], h_n, c_n [D, B, H]).
    wx / bx: w_ih / b_ih of every direction ([D*4H, I]) packed; w / bias: w_hh / b_hh packed."""
    s = _Shapes(4, t_len, batch, inputs, hidden, directions)
    H, B, D, TT, I, GH, GP, NT, HV, M, XP, NX = (s.H, s.B, s.D, s.TT, s.I, s.GH, s.GP, s.NT, s.HV, s.M, s.XP,
                                                 s.NX)
    gemv, project, step = _gemv_macro(s), _projection_macro(s), s.step

    def gate(gx, gh, t, d, b, j, g):
        return gx[step(t, d) * B + b, d * GH + g * H + j] + gh[b, g * H + j]

    # Statements only, each value an expression: this TVM's vectorizer keeps a bound (let) variable
    # scalar while vectorizing its value, so nothing is bound across statements. Each gate's
    # value replaces its hidden product in gh (read just before), one nonlinearity per statement:
    # nested, the expressions took TVM's lowering and LLVM seconds.
    @T.macro
    def cell(gx, gh, y, hn, cn, d, t, b, j):
        gh[b, j] = sigmoid(gate(gx, gh, t, d, b, j, 0))  # i
        gh[b, j + H] = sigmoid(gate(gx, gh, t, d, b, j, 1))  # f
        gh[b, j + 2 * H] = tanh(gate(gx, gh, t, d, b, j, 2))  # g
        gh[b, j + 3 * H] = sigmoid(gate(gx, gh, t, d, b, j, 3))  # o
        cn[d, b, j] = gh[b, j + H] * cn[d, b, j] + gh[b, j] * gh[b, j + 2 * H]
        hn[d, b, j] = gh[b, j + 3 * H] * tanh(cn[d, b, j])
        y[step(t, d), b, d * H + j] = hn[d, b, j]

    @T.prim_func(private=True)
    def lstm_layer(x: T.Buffer((TT, B, I), F32), wx: T.Buffer((NX, I, PROJ_TILE), F32),
                   bx: T.Buffer((XP,), F32), w: T.Buffer((D, NT, H, TILE), F32),
                   bias: T.Buffer((D, GP), F32), h0: T.Buffer((D, B, H), F32),
                   c0: T.Buffer((D, B, H), F32), y: T.Buffer((TT, B, D * H), F32),
                   hn: T.Buffer((D, B, H), F32), cn: T.Buffer((D, B, H), F32)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        gx = T.alloc_buffer((M, XP), "float32")
        gh = T.alloc_buffer((B, GP), "float32")
        project(x, wx, bx, gx)
        for d in range(D):
            for b, j in T.grid(B, H):
                hn[d, b, j] = h0[d, b, j]
                cn[d, b, j] = c0[d, b, j]
            for t in range(TT):
                gemv(w, bias, hn, gh, d)
                for b in range(B):
                    for jo in range(HV // LANES):
                        for ji in T.vectorized(LANES):
                            cell(gx, gh, y, hn, cn, d, t, b, jo * LANES + ji)
                    for j in range(HV, H):
                        cell(gx, gh, y, hn, cn, d, t, b, j)

    return lstm_layer


def gru_kernel(t_len: int, batch: int, inputs: int, hidden: int, directions: int):
    """As ``lstm_kernel`` without c0 / c_n, for the GRU's 3 gates; bias is b_hh, which sits
    inside r·(W_hn h + b_hn)."""
    s = _Shapes(3, t_len, batch, inputs, hidden, directions)
    H, B, D, TT, I, GH, GP, NT, HV, M, XP, NX = (s.H, s.B, s.D, s.TT, s.I, s.GH, s.GP, s.NT, s.HV, s.M, s.XP,
                                                 s.NX)
    gemv, project, step = _gemv_macro(s), _projection_macro(s), s.step

    def row(t, d, b):
        return step(t, d) * B + b

    @T.macro
    def cell(gx, gh, y, hn, d, t, b, j):  # as in lstm_kernel
        gh[b, j] = sigmoid(gx[row(t, d, b), d * GH + j] + gh[b, j])  # r
        gh[b, j + H] = sigmoid(gx[row(t, d, b), d * GH + H + j] + gh[b, j + H])  # z
        gh[b, j + 2 * H] = tanh(gx[row(t, d, b), d * GH + 2 * H + j] + gh[b, j] * gh[b, j + 2 * H])  # n
        hn[d, b, j] = gh[b, j + 2 * H] + gh[b, j + H] * (hn[d, b, j] - gh[b, j + 2 * H])  # (1 - z)·n + z·h
        y[step(t, d), b, d * H + j] = hn[d, b, j]

    @T.prim_func(private=True)
    def gru_layer(x: T.Buffer((TT, B, I), F32), wx: T.Buffer((NX, I, PROJ_TILE), F32),
                  bx: T.Buffer((XP,), F32), w: T.Buffer((D, NT, H, TILE), F32),
                  bias: T.Buffer((D, GP), F32), h0: T.Buffer((D, B, H), F32),
                  y: T.Buffer((TT, B, D * H), F32), hn: T.Buffer((D, B, H), F32)):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        gx = T.alloc_buffer((M, XP), "float32")
        gh = T.alloc_buffer((B, GP), "float32")
        project(x, wx, bx, gx)
        for d in range(D):
            for b, j in T.grid(B, H):
                hn[d, b, j] = h0[d, b, j]
            for t in range(TT):
                gemv(w, bias, hn, gh, d)
                for b in range(B):
                    for jo in range(HV // LANES):
                        for ji in T.vectorized(LANES):
                            cell(gx, gh, y, hn, d, t, b, jo * LANES + ji)
                    for j in range(HV, H):
                        cell(gx, gh, y, hn, d, t, b, j)

    return gru_layer


def _gemv_macro(s: _Shapes):
    """gh[b, :] = bias[d] + h[d, b, :] W^T for every batch row, ROWS rows per pass over the
    packed weights, one TILE of outputs at a time in a register tile."""
    H, B, NT, ROWS = s.H, s.B, s.NT, s.ROWS

    @T.macro
    def gemv(w, bias, hn, gh, d):
        for b0 in range(B // ROWS):
            for jt in range(NT):
                acc = T.alloc_buffer((ROWS, TILE), "float32", scope="local")
                for bi in T.unroll(ROWS):
                    for v in T.vectorized(TILE):
                        acc[bi, v] = bias[d, jt * TILE + v]
                for k in range(H):
                    for bi in T.unroll(ROWS):
                        for v in T.vectorized(TILE):
                            acc[bi, v] = acc[bi, v] + hn[d, b0 * ROWS + bi, k] * w[d, jt, k, v]
                for bi in T.unroll(ROWS):
                    for v in T.vectorized(TILE):
                        gh[b0 * ROWS + bi, jt * TILE + v] = acc[bi, v]

    return gemv


def _projection_macro(s: _Shapes):
    """gx[m, :] = bx + x[m] wx^T for the T*B rows m = t*B + b of every step at once (a GEMM),
    one PROJ_TILE panel of the packed weights at a time (it stays in L1/L2 while every row tile
    of PROJ_ROWS rows passes over it; x is read once per panel)."""
    B, I, M, NX = s.B, s.I, s.M, s.NX
    R, MR = PROJ_ROWS, s.M // PROJ_ROWS * PROJ_ROWS

    @T.macro
    def rows_tile(x, wx, bx, gx, jt, m, rows):
        acc = T.alloc_buffer((rows, PROJ_TILE), "float32", scope="local")
        for r in T.unroll(rows):
            for v in T.vectorized(PROJ_TILE):
                acc[r, v] = bx[jt * PROJ_TILE + v]
        for k in range(I):
            for r in T.unroll(rows):
                for v in T.vectorized(PROJ_TILE):
                    acc[r, v] = acc[r, v] + x[(m + r) // B, (m + r) % B, k] * wx[jt, k, v]
        for r in T.unroll(rows):
            for v in T.vectorized(PROJ_TILE):
                gx[m + r, jt * PROJ_TILE + v] = acc[r, v]

    @T.macro
    def project(x, wx, bx, gx):
        for jt in range(NX):
            for m0 in range(M // R):
                rows_tile(x, wx, bx, gx, jt, m0 * R, R)
            if M % R != 0:
                rows_tile(x, wx, bx, gx, jt, MR, M - MR)

    return project
