"""Winograd F(4x4, 3x3) convolution for the llvm target: 4x fewer multiplies than a direct conv.

``rewrite_pass()`` (run by ``pipeline.prepare_module`` after ConvertLayout, before LegalizeOps)
replaces each ``relax.nn.conv2d`` that is NHWC/HWIO, 3x3, stride 1, dilation 1, groups 1, float32,
with a constant weight and a static input shape, whose output is at least ``MIN_OUTPUT`` (8) on
each side and whose input has at least ``MIN_CHANNELS`` (3) channels, by three calls (any
padding; partial edge tiles are computed on zero padding and cropped). A symbolic height and width
(static batch and channels, at most ``SYMBOLIC_MAX_CHANNELS``) take the ``*_rows`` variants of the
three, whose tiles are laid out per tile row (see ``ROW_BLOCK``):

- ``winograd_input``: zero padding, then V = B^T d B per 6x6 input tile d (stride 4), channel
  innermost, the transform written out over the nonzero entries of B^T (row pass into a per-tile
  buffer, then column pass; the alpha axes are Select chains that fold once unrolled);
- ``winograd_gemm``: a batched GEMM over the 36 tile positions, M = V U, with
  U = G g G^T computed at compile time in numpy (float64, then float32) and bound as a constant;
- ``winograd_output``: Y = A^T M A per tile, cropped to the output; its op pattern is
  out-elementwise-fusable, so FuseOps puts the bias add, residual add and relu after the
  convolution into the same PrimFunc (``fused_winograd_output_add_add1_maximum``).

V and M are laid out [P/TP, 6, 6, TP, C] (TP = up to 16 tiles): in [6, 6, P, C] the 36 planes of
a tile were P*C*4 bytes apart, a multiple of 4 KiB, and every tile's 36 stores hit one L1 set.
``schedule_pass()`` (after FuseTIR) schedules the transforms (tile loop outermost and parallel
when large, then a loop over chunks of 16 channels, inside it the alpha loops unrolled and the
chunk vectorized) and the GEMM (rows x vectors accumulators
kept in registers over the whole reduction and stored straight to M: TiledContraction's 1 KiB
local accumulator goes to the heap, one alloc/free per tile, 36 -> 22 us on the 32x32x16 conv at
F(2,3)) and marks them scheduled, so tuning and the search-free rules leave them alone.

Measured (AMD EPYC Zen 4, AVX-512; per conv, 1 thread, batch 1; direct = TiledContraction's conv):

  conv (NHWC in, HWIO)          direct   F(2,3) in+gemm+out   F(4,3) in+gemm+out
  [1,32,32,16] x [3,3,16,16]    45 us    4.5+22.3+2.9 = 30    5.3+12.6+2.3 = 20
  [1,16,16,32] x [3,3,32,32]    43 us    3.4+20.3+1.8 = 26    3.9+11.4+2.0 = 17
  [1,8,8,64]   x [3,3,64,64]    44 us    2.8+19.3+1.2 = 23    1.8+11.0+1.3 = 14
  [1,32,32,3]  x [3,3,3,16]     12 us                         2.7+2.7+2.3  = 8

Compile time: the transforms used to unroll the alpha loops around all C channels (C / lanes
vectors each), so a kernel's unrolled body grew with C and TVM's TIR passes (CommonSubexprElim,
Simplify, RemoveNoOp) and LLVM took 0.3-4.2 s per kernel, most at 8 lanes; unrolled over one
16-channel chunk (a loop over the chunks around it) each takes 0.1-0.3 s whatever C. Per
ResNet-18 3x3 conv (its 7x7x512 ones stay direct, under MIN_OUTPUT), compile s / run us at 1
thread, before -> after (run times move ~10% between runs on this shared VM):

  x86-64-v3 (8 lanes)   input                       output
  56x56x64              0.85 s / 143 -> 0.27 / 124  0.62 s / 73 -> 0.14 / 62
  28x28x128             2.36 s / 100 -> 0.31 / 79   1.21 s / 45 -> 0.21 / 30
  14x14x256             4.20 s / 48  -> 0.30 / 47   2.02 s / 30 -> 0.15 / 28
  x86-64-v4 (16 lanes)
  56x56x64              0.40 s / 117 -> 0.14 / 103  0.31 s / 61 -> 0.08 / 46
  28x28x128             1.16 s / 84  -> 0.13 / 61   0.62 s / 29 -> 0.08 / 21
  14x14x256             1.96 s / 51  -> 0.13 / 42   0.88 s / 22 -> 0.07 / 19

At 8 lanes the input transform's row pass (T) stays per tile over all channels (14x14x256: 69 us
when per chunk). ResNet-18 whole compile (2 variants) 100 -> 23 s wall; latency unchanged or
slightly better (batch 1, 1 thread: 24.6 -> 24.3 ms; x86-64-v3 alone 31.4 -> 30.7 ms).

Zoo ResNet, 1 thread: 1.06x onnxruntime -> 0.63x (F(4,3); 0.79x with F(2,3)). Error vs a float64
convolution: ~1e-6 of the output's range for F(4,3) on these shapes (tests bound it at 1e-4).
"""

from __future__ import annotations

import numpy as np

PREFIX = "wino_"


def matrices(m: int):
    """(B^T, G, A^T) in float64 for F(m x m, 3 x 3)."""
    if m == 2:
        bt = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
        g = [[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]]
        at = [[1, 1, 1, 0], [0, 1, -1, -1]]
    elif m == 4:
        bt = [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
              [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]
        g = [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
             [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]
        at = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]
    else:
        raise ValueError(f"F({m},3) is not implemented")
    return np.array(bt, np.float64), np.array(g, np.float64), np.array(at, np.float64)


def weight_transform(weight_hwio: np.ndarray, m: int) -> np.ndarray:
    """U[a, b, c, k] = (G w[:, :, c, k] G^T)[a, b], in float64, returned as float32."""
    _, g, _ = matrices(m)
    u = np.einsum("ai,ijck,bj->abck", g, weight_hwio.astype(np.float64), g)
    return u.astype(weight_hwio.dtype)


def _sparse_sum(row, load):
    """sum_i row[i] * load(i), written out over the nonzero coefficients (+-1 as add/sub,
    positive terms first so that no negation is needed unless all are negative)."""
    from tvm import tirx

    terms = []
    for i, coef in enumerate(row):
        if coef == 0:
            continue
        term = load(i)
        if abs(coef) != 1:
            term = term * tirx.const(abs(float(coef)), term.dtype)
        terms.append((coef > 0, term))
    terms.sort(key=lambda t: not t[0])
    positive, expr = terms[0]
    if not positive:
        expr = tirx.const(0, expr.dtype) - expr
    for positive, term in terms[1:]:
        expr = expr + term if positive else expr - term
    return expr


def _select(index, exprs):
    """exprs[index] as a chain of Selects (folded once the index loop is unrolled)."""
    from tvm import tirx

    out = exprs[-1]
    for i in range(len(exprs) - 2, -1, -1):
        out = tirx.Select(index == i, exprs[i], out)
    return out


def geometry(h, w, padding, m):
    """(output height, width, tile rows, tile columns); symbolic where h, w are."""
    pt, pl, pb, pr = padding
    ho, wo = h + pt + pb - 2, w + pl + pr - 2
    return ho, wo, _ceil_div(ho, m), _ceil_div(wo, m)


def _ceil_div(a, b: int):
    from tvm import tirx

    # floor((a - 1) / b) + 1 rather than floor((a + b - 1) / b): in this form the analyzer proves
    # that index // b of an index below a stays below it (the region cover checks).
    return -(-a // b) if isinstance(a, int) else tirx.floordiv(a - 1, b) + 1


def _dims(shape) -> list:
    """A TE shape with its static entries as Python ints (symbolic ones stay expressions)."""
    from tvm import tirx

    return [int(s) if isinstance(s, (int, tirx.IntImm)) else s for s in shape]


# -- symbolic image sizes ------------------------------------------------------------------------
# With a symbolic height and width the tiles are laid out per tile row, in blocks of ROW_BLOCK
# tiles along the row (the last block completed with copies of the row's last tile): V, M
# [N, TH, TW', a, b, ROW_BLOCK, C] with TW' = ceil(TW / ROW_BLOCK). Every index then divides by a
# constant; a flat tile index divided by the symbolic tile count, in each of the unrolled
# transform's reads, took 11 s to compile per conv.
ROW_BLOCK = 4


def input_transform_rows(x, padding, m):
    """x [N,H,W,C] (H, W symbolic) -> V[n, i, jb, a, b, ji, c] for tile (n, i, jb * ROW_BLOCK + ji)."""
    from tvm import te, tirx

    bt, _, _ = matrices(m)
    alpha = m + 2
    n_, h, w, c_ = _dims(x.shape)
    pt, pl, _, _ = padding
    _, _, th, tw = geometry(h, w, padding, m)
    blocks = _ceil_div(tw, ROW_BLOCK)
    zero = tirx.const(0, x.dtype)
    xp = te.compute((n_, th * m + 2, tw * m + 2, c_), lambda n, y, z, c: tirx.if_then_else(
        tirx.all(y >= pt, y < pt + h, z >= pl, z < pl + w), x[n, y - pt, z - pl, c], zero), name=PREFIX + "pad")
    t = te.compute((n_, th, blocks * ROW_BLOCK, alpha, alpha, c_), lambda n, i, j, a, z, c: _select(
        a, [_sparse_sum(bt[r], lambda k: xp[n, i * m + k, tirx.min(j, tw - 1) * m + z, c]) for r in range(alpha)]),
        name=PREFIX + "T")
    return te.compute((n_, th, blocks, alpha, alpha, ROW_BLOCK, c_), lambda n, i, jb, a, b, ji, c: _select(
        b, [_sparse_sum(bt[r], lambda k: t[n, i, jb * ROW_BLOCK + ji, a, k, c]) for r in range(alpha)]),
        name=PREFIX + "V")


def batched_gemm_rows(v, u):
    """M[n, i, jb, a, b, ji, k] = sum_c V[n, i, jb, a, b, ji, c] U[a, b, c, k]."""
    from tvm import te

    n_, th, blocks, alpha, _, rb, c_ = _dims(v.shape)
    k_ = int(u.shape[3])
    rc = te.reduce_axis((0, c_), name="rc")
    return te.compute((n_, th, blocks, alpha, alpha, rb, k_), lambda n, i, jb, a, b, ji, k: te.sum(
        v[n, i, jb, a, b, ji, rc] * u[a, b, rc, k], axis=rc), name=PREFIX + "M")


def output_transform_rows(mm, ho, wo, m):
    """M [n, i, jb, a, b, ji, k] -> y[n, h, w, k] = (A^T M_(n, i, j) A)[h % m, w % m]."""
    from tvm import te

    _, _, at = matrices(m)
    alpha = m + 2
    n_, th, _, _, _, rb, k_ = _dims(mm.shape)
    tw = _ceil_div(wo, m)
    mo = te.compute((n_, th, tw, alpha, m, k_), lambda n, i, j, a, z, k: _select(
        z, [_sparse_sum(at[r], lambda b: mm[n, i, j // rb, a, b, j % rb, k]) for r in range(m)]), name=PREFIX + "Mo")
    return te.compute((n_, ho, wo, k_), lambda n, h, w, k: _select(
        h % m, [_sparse_sum(at[r], lambda a: mo[n, h // m, w // m, a, w % m, k]) for r in range(m)]),
        name=PREFIX + "Y")


def input_transform(x, padding, m):
    """x [N,H,W,C] -> V[a, b, p, c] = (B^T d_p B)[a, b] for tile p = (n, th, tw)."""
    from tvm import te, tirx

    bt, _, _ = matrices(m)
    alpha = m + 2
    n_, h, w, c_ = [int(s) for s in x.shape]
    pt, pl, _, _ = padding
    _, _, th, tw = geometry(h, w, padding, m)
    hp, wp = th * m + 2, tw * m + 2
    zero = tirx.const(0, x.dtype)
    xp = te.compute((n_, hp, wp, c_), lambda n, y, z, c: tirx.if_then_else(
        tirx.all(y >= pt, y < pt + h, z >= pl, z < pl + w), x[n, y - pt, z - pl, c], zero), name=PREFIX + "pad")
    tiles = th * tw
    tp = tile_block(n_ * tiles)
    t = te.compute((n_, th, tw, alpha, alpha, c_), lambda n, i, j, a, z, c: _select(
        a, [_sparse_sum(bt[r], lambda k: xp[n, i * m + k, j * m + z, c]) for r in range(alpha)]), name=PREFIX + "T")

    def v_at(po, a, b, pi, c):
        p = po * tp + pi
        return _select(b, [_sparse_sum(bt[r], lambda k: t[p // tiles, p % tiles // tw, p % tw, a, k, c])
                           for r in range(alpha)])

    return te.compute((n_ * tiles // tp, alpha, alpha, tp, c_), v_at, name=PREFIX + "V")


def tile_block(tiles: int) -> int:
    """Tiles per block of the transformed layouts V/M [P/TP, a, b, TP, C]: the 16 or 36 planes of
    one tile are then 64 bytes apart, not P*C*4 (a multiple of 4 KiB, which made every tile's
    stores conflict in the same L1 set)."""
    return max(d for d in range(1, 17) if tiles % d == 0)


def batched_gemm(v, u):
    """M[po, a, b, pi, k] = sum_c V[po, a, b, pi, c] U[a, b, c, k]."""
    from tvm import te

    po_, alpha, _, tp, c_ = [int(s) for s in v.shape]
    k_ = int(u.shape[3])
    rc = te.reduce_axis((0, c_), name="rc")
    return te.compute((po_, alpha, alpha, tp, k_),
                      lambda po, a, b, pi, k: te.sum(v[po, a, b, pi, rc] * u[a, b, rc, k], axis=rc),
                      name=PREFIX + "M")


def output_transform(mm, n_, ho, wo, m):
    """M [po, a, b, pi, k] -> y[n, h, w, k] = (A^T M_p A)[h % m, w % m], p = po * TP + pi."""
    from tvm import te

    _, _, at = matrices(m)
    alpha = m + 2
    tp = int(mm.shape[3])
    k_ = int(mm.shape[4])
    th, tw = -(-ho // m), -(-wo // m)
    tiles = th * tw

    def mo_at(n, i, j, a, z, k):
        p = n * tiles + i * tw + j
        return _select(z, [_sparse_sum(at[r], lambda b: mm[p // tp, a, b, p % tp, k]) for r in range(m)])

    mo = te.compute((n_, th, tw, alpha, m, k_), mo_at, name=PREFIX + "Mo")
    return te.compute((n_, ho, wo, k_), lambda n, h, w, k: _select(
        h % m, [_sparse_sum(at[r], lambda a: mo[n, h // m, w // m, a, w % m, k]) for r in range(m)]),
        name=PREFIX + "Y")


def eligible(call):
    """Whether a relax.nn.conv2d call is one Winograd takes (see module docstring)."""
    import tvm

    if getattr(call.op, "name", "") != "relax.nn.conv2d":
        return False
    a = call.attrs
    if str(a.data_layout) != "NHWC" or str(a.kernel_layout) != "HWIO" or str(a.out_layout) != "NHWC":
        return False
    if [int(s) for s in a.strides] != [1, 1] or [int(d) for d in a.dilation] != [1, 1] or int(a.groups) != 1:
        return False
    x, w = call.args
    if not isinstance(w, tvm.ir.expr.GenericConst) or not hasattr(w.value, "numpy"):
        return False
    if str(w.value.dtype) != "float32" or str(x.ty.dtype) != "float32":
        return False
    if a.out_dtype is not None and str(a.out_dtype) not in ("", "void", "float32"):
        return False
    shape = getattr(x.ty, "shape", None)
    if shape is None or len(shape.values) != 4 or not all(isinstance(shape.values[i], tvm.tirx.IntImm) for i in (0, 3)):
        return False
    return tuple(w.value.shape[:2]) == (3, 3)


def choose_m(x_shape, padding):
    """Tile size for an eligible convolution, or None to keep it direct: ``MODE["m"]`` where the
    output is at least MIN_OUTPUT x MIN_OUTPUT and the input has at least MIN_CHANNELS channels
    (measured faster on every such ResNet conv; smaller outputs waste most of a 6x6 tile and
    were not measured)."""
    if MODE["m"] is None or x_shape[3] < MIN_CHANNELS:
        return None
    ho, wo, _, _ = geometry(x_shape[1], x_shape[2], padding, MODE["m"])
    if not (isinstance(ho, int) and isinstance(wo, int)):
        return MODE["m"] if x_shape[3] <= SYMBOLIC_MAX_CHANNELS else None
    if ho < MIN_OUTPUT or wo < MIN_OUTPUT:
        return None
    return MODE["m"]


# The tile size (4: F(4x4,3x3); 2: F(2x2,3x3); None: off) and the smallest output side rewritten.
MODE = {"m": 4}
MIN_OUTPUT = 8
# Fewer input channels stay direct: the 3-channel ResNet stem was measured faster (12 -> 8 us);
# 1 and 2 channels were not measured.
MIN_CHANNELS = 3
# A symbolic image size: Winograd up to this many input channels (the size is unknown; CNNs reach
# 512 channels at their smallest maps, under MIN_OUTPUT, where the direct packed conv stays:
# a 7x7x512 conv measured 2.3 ms direct, 6.2 ms Winograd).
SYMBOLIC_MAX_CHANNELS = 256


def rewrite_pass():
    """Relax pass: eligible NHWC 3x3 stride-1 convs -> input transform, batched GEMM with the
    pre-transformed weight, output transform."""
    from tvm import relax

    from .pipeline import _relax_function_pass

    @relax.expr_functor.mutator
    class Winograd(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not eligible(call):
                return call
            x, w = call.args
            xs = _dims(x.ty.shape.values)
            wn = w.value.numpy()
            padding = [int(p) for p in call.attrs.padding]
            m = choose_m(xs, padding)
            if m is None:
                return call
            ho, wo, _, _ = geometry(xs[1], xs[2], padding, m)
            u = relax.const(weight_transform(wn, m))
            if not isinstance(ho, int) or not isinstance(wo, int):
                return self._rows(x, u, padding, ho, wo, m)
            v = self.builder_.emit(self.builder_.call_te(input_transform, x, padding, m,
                                                         primfunc_name_hint="winograd_input"))
            mm = self.builder_.emit(self.builder_.call_te(batched_gemm, v, u, primfunc_name_hint="winograd_gemm"))
            return self.builder_.call_te(output_transform, mm, xs[0], ho, wo, m,
                                         primfunc_name_hint="winograd_output",
                                         primfunc_attrs={"op_pattern": 4})

        def _rows(self, x, u, padding, ho, wo, m):
            v = self.builder_.emit(self.builder_.call_te(input_transform_rows, x, padding, m,
                                                         primfunc_name_hint="winograd_input"))
            mm = self.builder_.emit(self.builder_.call_te(batched_gemm_rows, v, u, primfunc_name_hint="winograd_gemm"))
            return self.builder_.call_te(output_transform_rows, mm, ho, wo, m, primfunc_name_hint="winograd_output",
                                         primfunc_attrs={"op_pattern": 4})

    return _relax_function_pass(Winograd, "Winograd")


def schedule_pass(target=None):
    """Module pass: schedule the fused PrimFuncs holding the input / output transforms and the
    GEMM for ``target`` (default: the current target, else AVX-512 widths), marked scheduled, so
    tuning and the search-free rules leave them alone."""
    import tvm

    from .schedules import SCHEDULED

    @tvm.transform.module_pass(opt_level=0, name="WinogradSchedule")
    def run(mod, _ctx):
        current = target or tvm.target.Target.current(allow_none=True)
        updates = {}
        for gv, func in mod.functions_items():
            if not isinstance(func, tvm.tirx.PrimFunc):
                continue
            sch = schedule_transform(func, current)
            if sch is not None:
                updates[gv] = sch.mod["main"].with_attr(SCHEDULED, True)
        for gv, func in updates.items():
            mod[gv] = func
        return mod

    return run


def _lanes(target):
    from .schedules import vector_lanes

    if target is None:
        return 16
    return vector_lanes(target, 32)


def _vec(sch, loop, lanes):
    from .schedules import TiledContraction

    TiledContraction._vectorize_split(sch, loop, lanes)


def schedule_transform(func, target):
    """A schedule for a fused PrimFunc holding a Winograd transform or the GEMM, or None (not
    one, or a primitive failed: the function is then left to the search-free rules)."""
    from tvm import s_tir

    try:
        sch = s_tir.Schedule(func)
        blocks = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
    except Exception:  # noqa: BLE001 - not in block form (e.g. a hand-written PrimFunc): not ours
        return None
    has_input, has_output = _find(blocks, "V") is not None, _find(blocks, "Mo") is not None
    try:
        if has_input and not has_output:
            _schedule_input(sch, blocks, _lanes(target))
        elif has_output and not has_input:
            _schedule_output(sch, blocks, _lanes(target))
        elif blocks == [PREFIX + "M"]:
            _schedule_gemm(sch, sch.get_sblock(blocks[0]), _lanes(target))
        else:
            return None
    except Exception:  # noqa: BLE001 - any schedule error: leave the function to the rules
        return None
    return sch


def _unroll_tile(sch, rows, cols, channels, lanes):
    """One tile's two small axes unrolled (their Select chains then fold), channels vectorized
    (``channels`` is one chunk: _split_channels; unrolling around all C made compiles slow)."""
    sch.unroll(rows)
    sch.unroll(cols)
    _vec(sch, channels, lanes)


CHANNEL_CHUNK = 16


def _split_channels(sch, loop, lanes):
    """(outer, inner) of the channel loop: CHANNEL_CHUNK channels (one 64-byte line; at least one
    vector) per outer iteration, a loop, not unrolled, so that a tile's unrolled transform is as
    wide as that chunk whatever C is."""
    extent = int(sch.get(loop).extent)
    chunk = max(lanes, CHANNEL_CHUNK)
    if extent > chunk and extent % chunk == 0:
        return sch.split(loop, [None, chunk])
    return sch.split(loop, [1, None])


def _symbolic_loops(sch, loops) -> list:
    """The loops of ``loops`` with a symbolic extent."""
    from .schedules import _int

    return [lp for lp in loops if _int(sch.get(lp).extent) is None]


def _find(blocks, stem):
    for b in blocks:
        if b == PREFIX + stem or b.startswith(PREFIX + stem + "_"):
            return b
    return None


def _schedule_input(sch, blocks, lanes):
    from .schedules import PARALLEL_MIN_ELEMENTS, _vectorize_parallel, _work

    v = sch.get_sblock(_find(blocks, "V"))
    t = sch.get_sblock(_find(blocks, "T"))
    # Any producer other than pad/T (fused injective ops before the conv) is inlined.
    for name in blocks:
        if name not in (_find(blocks, "V"), _find(blocks, "T"), _find(blocks, "pad")):
            sch.compute_inline(sch.get_sblock(name))
    *outer, a, b, pi, c = sch.get_loops(v)
    co, c = _split_channels(sch, c, lanes)
    sch.reorder(*outer, pi, co, a, b, c)
    symbolic = _symbolic_loops(sch, outer)
    # Over a symbolic size (outer = n, tile row, row block) the tile loops stay nested: fused,
    # every read's index would divide by a symbolic extent.
    p = pi if symbolic else sch.fuse(*outer, pi)
    # Where the row pass goes was measured per width (1 thread, Zen 4): per chunk with 16 lanes
    # (28x28x128: 77 -> 61 us), per tile over all channels with 8 (14x14x256: 69 -> 52 us).
    if lanes < CHANNEL_CHUNK:
        sch.compute_at(t, p, preserve_unit_loops=False)
        ta, tz, tc = sch.get_loops(t)[-3:]
        tco, tc = _split_channels(sch, tc, lanes)
        sch.reorder(tco, ta, tz, tc)
        _unroll_tile(sch, ta, tz, tc, lanes)
    else:
        sch.compute_at(t, co, preserve_unit_loops=False)
        _unroll_tile(sch, *sch.get_loops(t)[-3:], lanes)
    big = _work(sch, v) >= PARALLEL_MIN_ELEMENTS
    _unroll_tile(sch, a, b, c, lanes)
    if big:
        sch.parallel(symbolic[0] if symbolic else p)
    pad = _find(blocks, "pad")
    if pad is not None:
        _vectorize_parallel(sch, sch.get_sblock(pad), lanes)


def _schedule_output(sch, blocks, lanes):
    from .schedules import PARALLEL_MIN_ELEMENTS, _work

    mo_name, y_name = _find(blocks, "Mo"), _find(blocks, "Y")
    mo = sch.get_sblock(mo_name)
    after = blocks[blocks.index(y_name):]
    before = [b for b in blocks[:blocks.index(y_name)] if b != mo_name]
    for name in before:
        sch.compute_inline(sch.get_sblock(name))
    for name in after[:-1]:
        sch.compute_inline(sch.get_sblock(name))
    last = sch.get_sblock(after[-1])
    m = int(sch.get(mo).iter_vars[4].dom.extent)
    n, h, w, k = sch.get_loops(last)
    ho, hi = sch.split(h, [None, m])
    wo, wi = sch.split(w, [None, m])
    ko, k = _split_channels(sch, k, lanes)
    sch.reorder(n, ho, wo, ko, hi, wi, k)
    symbolic = _symbolic_loops(sch, [n, ho, wo])
    fused = symbolic[0] if symbolic else sch.fuse(n, ho, wo)
    sch.compute_at(mo, ko, preserve_unit_loops=False)
    _unroll_tile(sch, *sch.get_loops(mo)[-3:], lanes)
    _unroll_tile(sch, hi, wi, k, lanes)
    if _work(sch, last) >= PARALLEL_MIN_ELEMENTS:
        sch.parallel(fused)


def _gemm_tile(tiles: int, vectors: int, limit: int) -> tuple[int, int]:
    """(vectors, rows) of the GEMM's register tile: the most accumulators (rows x vectors, rows
    dividing ``tiles``, vectors dividing ``vectors``) within ``limit``, ties to 2 vectors then fewer.
    Taking the widest vector count first left 7-tile blocks at 1 x 4 accumulators (13.7 GFLOP/s
    on ResNet-18's 28x28 stage; 7 x 2 keeps the FMA units busy)."""
    from .schedules import _largest_divisor

    best = None
    for vn in (2, 1, 3, 4):
        if vectors % vn:
            continue
        tr = _largest_divisor(tiles, max(1, limit // vn))
        if best is None or tr * vn > best[0] * best[1]:
            best = (tr, vn)
    return best[1], best[0]


def _schedule_gemm(sch, block, lanes):
    """Register-tiled batched GEMM accumulating in registers: rows x (vn vectors) accumulators
    over the whole (short: C) reduction, written straight to M (no local copy: with 16x16 floats
    it is 1 KiB, which TVM puts on the heap, one alloc/free per tile)."""
    from .schedules import MAX_ACCUMULATORS, PARALLEL_MIN_WORK, _largest_divisor, _work

    *outer, a, b, pi, k, rc = sch.get_loops(block)
    tp, kk = int(sch.get(pi).extent), int(sch.get(k).extent)
    if kk % lanes:
        vec = _largest_divisor(kk, lanes)
        vn = 1
        tr = _largest_divisor(tp, max(1, MAX_ACCUMULATORS.get(lanes * 32, 12)))
    else:
        vn, tr = _gemm_tile(tp, kk // lanes, MAX_ACCUMULATORS.get(lanes * 32, 12))
        vec = lanes * vn
    ko, ki = sch.split(k, [None, vec])
    pio, pii = sch.split(pi, [None, tr])
    sch.reorder(*outer, a, b, pio, ko, rc, pii, ki)
    symbolic = _symbolic_loops(sch, outer)
    fused = sch.fuse(a, b, pio, ko) if symbolic else sch.fuse(*outer, a, b, pio, ko)
    if _work(sch, block) >= PARALLEL_MIN_WORK:
        sch.parallel(symbolic[0] if symbolic else fused)
    sch.unroll(pii)
    if vec > lanes:
        kio, kii = sch.split(ki, [None, lanes])
        sch.unroll(kio)
        sch.vectorize(kii)
    else:
        sch.vectorize(ki)
    sch.decompose_reduction(block, rc)
