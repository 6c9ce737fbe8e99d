"""Packed-weight GEMM for the llvm target: constant-weight matmuls and convolutions at BLAS speed.

``rewrite_pass(target)`` (run by ``pipeline.prepare_module`` after ConvertLayout/Winograd, before
LegalizeOps) replaces, for float32 operands with static shapes:

- ``relax.matmul(x, W)`` with ``W`` a constant [K, N] and ``x`` of rank >= 2 by
  ``packed_matmul(x, Wp)``;
- ``relax.nn.conv2d(x, W)`` NHWC/HWIO, groups 1, ``W`` a constant [KH, KW, C, N], by
  ``packed_conv2d(x, Wp)`` (an implicit GEMM: K = KH * KW * C, the zero padding a block of its
  own, no im2col buffer);

where ``Wp = W.reshape(K, N // P, P).transpose(1, 0, 2)`` is the weight packed at compile time
into panels of ``P`` output columns (``P`` = two vector registers on AVX-512, two or three on
AVX2, see ``micro_kernel``), so the kernel reads each panel contiguously along K (a weight of
1 MiB or more that the variant builds share is not packed here: the build gets a placeholder and
the packed bytes are made when the artifact is written, ``params.DeferredWeights``). Both calls are
out-elementwise-fusable: FuseOps puts the bias, activation and residual add after them into the
same PrimFunc. N must be a multiple of the vector width (on AVX-512: of 8, half a register), else the op is left alone (the generic
``TiledContraction`` rule takes it), except a matmul at least ``PAD_MIN_WIDTH`` wide: its weight
gets zero columns up to a vector multiple and the result is sliced back to N.

``PackedGemm`` (the first of ``schedules.cpu_rules()``) schedules a fused PrimFunc holding such a
block: a ``rows`` x ``P`` register tile of C (rows x P/lanes accumulators, rows and vectors
unrolled, the lane loop vectorized) kept over the whole reduction, the reduction loops outermost
among the tile's, the panel loop and the row-tile loop fused and parallel. Rows come from the
target and M: a divisor of M when a good one exists, so that the epilogue is computed per tile
while C is still in cache; otherwise the leftover rows are a second block (``loop_partition``)
tiled over several panels and the epilogue is a separate vectorized pass (so is a GEMM of
too few rows for the tile: batch-1 linear layers, one tile over several panels). Weights larger than
half of L2 are walked panel-outermost (each panel reused from L2 by every row tile), smaller ones
row-tile-outermost (the whole weight stays in cache, each row tile of A in L1).

Measured (the pipeline's kernel for x @ W + b then relu, 1 thread, interleaved with
onnxruntime's MatMul + Add + Relu, medians; AMD EPYC Zen 4 shared with other jobs, onnxruntime
itself at 11-30 GFLOP/s on the large shapes), time / onnxruntime, before -> after:

  M x K x N           AVX2 build (x86-64-v3)   AVX-512 build (znver4)
  128 x 768 x 3072    8.05 -> 1.13             5.84 -> 0.96
  128 x 3072 x 768    5.84 -> 0.87             2.34 -> 0.74
  128 x 768 x 2304    3.38 -> 1.10             1.73 -> 0.90
  128 x 768 x 768     2.39 -> 0.97             2.16 -> 1.00
  49 x 4608 x 512     7.44 -> 0.96-1.03        3.58 -> 1.00
  1024 x 768 x 3072   6.83 -> 0.88             3.20 -> 1.04
  8 x 768 x 768       13.6 -> 0.95             1.25 -> 0.85
"""

from __future__ import annotations

import numpy as np

MATMUL = "packed_matmul"
CONV = "packed_conv2d"
PAD = "packed_pad"
PADDED = "padded_matmul"
# Weights up to this many bytes are kept whole in cache and walked row-tile-outermost.
SMALL_WEIGHT_BYTES = 256 << 10
# Matmuls at least this wide whose width is no vector multiple are padded to one (``padded_width``).
PAD_MIN_WIDTH = 256


def micro_kernel(m: int, n: int, lanes: int) -> tuple[int, int]:
    """(rows, panel columns) of the register tile for C = [m, n] (m: the tiled row axis) with
    ``lanes``-wide vectors; panel 0 when n is not a multiple of ``lanes`` (not packable), except
    on AVX-512 for a multiple of 8: panels of 8-lane vectors.

    AVX-512 (16 lanes, 32 registers): 8 x 32 (16 accumulators), else 7/12/6 rows, whichever
    divides m (measured 0.84-0.94x onnxruntime). AVX2 (8 lanes, 16 registers): 4 x 24 or 6 x 16
    (12 accumulators; 7 x 16 spills, measured 2x slower).
    """
    if n % lanes:
        half = lanes // 2
        if half < 8 or n % half:
            return 0, 0
        # A width of an odd number of half registers (MobileNetV2's 24-channel 1x1 convs on
        # AVX-512): half-width (256-bit) vectors, three to a panel where they fit.
        panel = 3 * half if n % (3 * half) == 0 else half
        return tile_rows(m, panel, half), panel
    if lanes < 16 and n % (3 * lanes) == 0 and m is not None and m % 4 == 0:
        return 4, 3 * lanes
    panel = 2 * lanes if n % (2 * lanes) == 0 else lanes
    return tile_rows(m, panel, lanes), panel


def padded_width(n: int, lanes: int) -> int:
    """n, or for a wide matmul whose width is no vector multiple (a 1000-class head, GPT-2's
    50257-word LM head) n rounded up to two vectors: the weight gets zero columns and the result
    is sliced back (at most 2 * lanes / n extra work). A narrow width whose widest vector tile
    would be under half a register (a 17-tag head: a 1-wide tile, scalar code at 5 GFLOP/s) is
    rounded up to one vector when that at most doubles the work. A wide width of an odd number of
    vectors (a 10000-word decoder) gets one more: two-vector panels, a tile of twice the
    accumulators (35 x 420 x 10000: 3.24 -> 2.92 ms)."""
    if n % lanes == 0 and (n % (2 * lanes) == 0 or n < PAD_MIN_WIDTH):
        return n
    if n < PAD_MIN_WIDTH:
        widest = max(d for d in range(1, lanes + 1) if n % d == 0)
        return -(-n // lanes) * lanes if widest < lanes // 2 and n > lanes // 2 else n
    return -(-n // (2 * lanes)) * (2 * lanes)


def tile_rows(m: int, panel: int, lanes: int) -> int:
    """Rows of the register tile for a ``panel``-column panel (see ``tile_shape``)."""
    return tile_shape(m, panel, lanes)[0]


def tile_shape(m: int, panel: int, lanes: int) -> tuple[int, int]:
    """(rows, vectors) of the register tile in a ``panel``-column panel: the first preferred
    shape whose rows divide m (no leftover rows), else the first preferred (leftover rows get a
    block of their own), rows at most m. A tile of fewer vectors than the panel walks the panel
    in several passes (AVX-512 14 x 16 in a 32-column panel). On AVX2, 6 x 16 with a leftover row
    beat 7 x 8 (7 accumulators) at 49 x 4608 x 512: 0.96-1.03x onnxruntime against 1.21-1.59x."""
    vectors = max(panel // lanes, 1)
    if lanes >= 16:
        prefs = {1: [(14, 1), (12, 1), (16, 1), (8, 1), (7, 1)],
                 2: [(8, 2), (7, 2), (12, 2), (6, 2), (14, 1), (4, 2)],
                 3: [(6, 3), (4, 3), (8, 3), (5, 3)]}.get(vectors, [(max(1, 16 // vectors), vectors)])
    else:
        prefs = {1: [(12, 1), (8, 1), (6, 1), (7, 1)], 2: [(6, 2), (4, 2), (5, 2)],
                 3: [(4, 3)]}.get(vectors, [(max(1, 12 // vectors), vectors)])
    if m is None:  # symbolic rows, padded to whole tiles of the preferred shape
        return prefs[0]
    for rows, vn in prefs:
        if m % rows == 0:
            return rows, vn
    return min(prefs[0][0], m), prefs[0][1]


def pack_weight(w: np.ndarray, panel: int) -> np.ndarray:
    """[K, N] -> [N / panel, K, panel]: each panel of ``panel`` columns contiguous along K."""
    from .ops.common import aligned_empty

    k, n = w.shape
    packed = aligned_empty((n // panel, k, panel), w.dtype)  # aligned: TVM takes it without a copy
    packed[...] = w.reshape(k, n // panel, panel).transpose(1, 0, 2)
    return packed


def packed_matmul(x, wp, row_tile: int | None = None):
    """TE: x [..., K] @ the packed weight wp [N / P, K, P] -> [..., N]. ``row_tile``: the
    (symbolic) rows are padded with zero rows to a multiple of it, so that the kernel runs whole
    register tiles with no bounds test inside, and the result is cropped back."""
    from tvm import te, tirx

    panels, k_extent, panel = (int(s) for s in wp.shape)
    k = te.reduce_axis((0, k_extent), name="k")
    a = x
    if row_tile is not None:
        rows = x.shape[-2]
        a = te.compute((*x.shape[:-2], tirx.floordiv(rows + row_tile - 1, row_tile) * row_tile, x.shape[-1]),
                       lambda *i: tirx.if_then_else(i[-2] < rows, x[i], tirx.const(0, x.dtype)), name=PAD)

    def body(*idx):
        j = idx[-1]
        return te.sum(a[(*idx[:-1], k)] * wp[j // panel, k, j % panel], axis=k)

    c = te.compute((*a.shape[:-1], panels * panel), body, name=MATMUL)
    if row_tile is None:
        return c
    return te.compute((*x.shape[:-1], panels * panel), lambda *i: c[i], name="packed_crop")


def padded_matmul(a, b, row_tile: int, col_tile: int):
    """TE: a [..., M, K] @ b [..., K, N] (same leading axes, both computed at run time) with M
    rounded up to a multiple of ``row_tile`` and N to one of ``col_tile`` (1: left as is), then
    cropped back to [..., M, N]. For a symbolic sequence (attention's q @ k^T and p @ v): the
    kernel then runs whole register tiles and never tests a bound in its inner loops. The extra
    rows read the last real row again (a clamped index, inlined into the kernel; no copy of a);
    the extra columns of b are zeros (a copy of b, K x N: small next to the product)."""
    from tvm import te, tirx

    *batch, rows, depth = a.shape
    width = b.shape[-1]

    def padded(extent, tile):
        return extent if tile == 1 else tirx.floordiv(extent + tile - 1, tile) * tile

    a_rows = te.compute((*batch, padded(rows, row_tile), depth),
                        lambda *i: a[(*i[:-2], tirx.min(i[-2], rows - 1), i[-1])], name="padded_rows")
    bp = b
    if col_tile != 1:
        bp = te.compute((*batch, depth, padded(width, col_tile)), lambda *i: tirx.if_then_else(
            i[-1] < width, b[i], tirx.const(0, b.dtype)), name="padded_columns")
    k = te.reduce_axis((0, depth), name="k")
    c = te.compute((*batch, padded(rows, row_tile), padded(width, col_tile)), lambda *i: te.sum(
        a_rows[(*i[:-2], i[-2], k)] * bp[(*i[:-2], k, i[-1])], axis=k), name=PADDED)
    return te.compute((*batch, rows, width), lambda *i: c[i], name="padded_crop")


def padded_matmul_tiles(rows, width, lanes: int) -> tuple[int, int]:
    """(row_tile, col_tile) for ``padded_matmul`` of a [rows, width] product (extents, symbolic or
    not): a symbolic width is padded to two vectors, symbolic rows to the register tile's rows
    that the tiling rule picks for that width; 1 where no padding is needed (a static extent, or
    one already padded to whole tiles, as ``attention.pad_pass`` pads its lengths)."""
    from .schedules import TiledContraction, _provably_multiple, tile_row_limit

    if _dim(width) is None:
        padded = _provably_multiple(width, lanes)
        col_tile, vectors = (1, 2 if _provably_multiple(width, 2 * lanes) else 1) if padded else (2 * lanes, 2)
    else:
        col_tile, (tile, vectors) = 1, TiledContraction._vector_tile(_dim(width), lanes)
        if tile is None or _dim(width) % lanes:
            vectors = 1
    row_tile = 1
    if _dim(rows) is None and not _provably_multiple(rows, 8):
        row_tile = tile_row_limit(lanes * 32, vectors)
    return row_tile, col_tile


def packed_conv2d(x, wp, kernel, strides, padding, dilation, row_tile: int | None = None):
    """TE: NHWC x (*) the packed HWIO weight wp [N / P, KH * KW * C, P] -> NHWC [.., N].
    ``row_tile``: (for a symbolic image size) the output width is padded to a multiple of it, the
    zero-padded input widened to match, and the result cropped back, so that the kernel runs
    whole register tiles along the width with no bounds test inside."""
    from tvm import te, tirx

    n, h, w, c = x.shape
    kh, kw = kernel
    (sh, sw), (dh, dw) = strides, dilation
    top, left, bottom, right = padding
    panels, _, panel = (int(s) for s in wp.shape)
    oh = tirx.floordiv(h + top + bottom - dh * (kh - 1) - 1, sh) + 1
    ow = tirx.floordiv(w + left + right - dw * (kw - 1) - 1, sw) + 1
    width = w + left + right
    if row_tile is not None:
        padded_ow = tirx.floordiv(ow + row_tile - 1, row_tile) * row_tile
        width = (padded_ow - 1) * sw + dw * (kw - 1) + 1  # the columns the padded tiles read
    else:
        padded_ow = ow
    if top or left or bottom or right or row_tile is not None:
        zero = tirx.const(0.0, x.dtype)
        xp = te.compute((n, h + top + bottom, width, c), lambda b, i, j, q: tirx.if_then_else(
            tirx.all(i >= top, i < h + top, j >= left, j < w + left), x[b, i - top, j - left, q], zero), name=PAD)
    else:
        xp = x
    r = te.reduce_axis((0, kh), name="r")
    s = te.reduce_axis((0, kw), name="s")
    q = te.reduce_axis((0, c), name="q")
    y = te.compute((n, oh, padded_ow, panels * panel), lambda b, i, j, o: te.sum(
        xp[b, i * sh + r * dh, j * sw + s * dw, q] * wp[o // panel, (r * kw + s) * c + q, o % panel],
        axis=[r, s, q]), name=CONV)
    if row_tile is None:
        return y
    return te.compute((n, oh, ow, panels * panel), lambda *i: y[i], name="packed_crop")


def rewrite_pass(target=None, deferred=None):
    """Relax pass: constant-weight float32 matmuls and NHWC convolutions -> packed-weight calls.
    ``deferred`` (``params.DeferredWeights``): a weight that is one of its sources gets a
    placeholder for its packed copy (made when the artifact is written), not the copy."""
    import tvm
    from tvm import relax

    from .ops.common import shared_tensor
    from .pipeline import _relax_function_pass

    lanes = _lanes(target)

    @relax.expr_functor.mutator
    class Pack(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not isinstance(call.op, tvm.ir.Op):
                return call
            new = None
            if call.op.name == "relax.matmul":
                new = self._matmul(call)
            elif call.op.name == "relax.nn.conv2d":
                new = self._conv(call)
            return call if new is None else new

        def _matmul(self, call):
            x, w = call.args
            xs = _static_shape(x)
            if not _is_const(w):
                return self._activation_matmul(call)
            if not _f32(x, w, call):
                return None
            wn = _const_array(w)  # a view of the constant's memory: copied only into its packed form
            if wn.ndim != 2:
                return None
            width = wn.shape[1]
            padded = padded_width(width, lanes)
            if xs is None:
                xs = _rows_may_vary(x)
                rows, panel = micro_kernel(None, padded, lanes) if xs else (0, 0)
                if not panel:
                    # No packed kernel, but a width with no vector multiple still gets its zero
                    # columns, so that the generic rule vectorizes it (GPT-2's 50257-word head
                    # ran scalar: 19-34x onnxruntime).
                    return None if padded == width else self._sliced(
                        relax.op.matmul(x, relax.const(shared_tensor(_zero_columns(wn, padded)))), width)
                # Symbolic rows (a dynamic sequence): padded to whole register tiles inside the kernel.
                y = self.builder_.call_te(packed_matmul, x, self._packed(x, wn, panel, padded), rows,
                                          primfunc_name_hint=MATMUL, primfunc_attrs={"op_pattern": 4})
                return y if padded == width else self._sliced(y, width)
            if len(xs) < 2:
                return None
            _, panel = micro_kernel(xs[-2], padded, lanes)
            if not panel:
                return None
            y = self.builder_.call_te(packed_matmul, x, self._packed(x, wn, panel, padded), primfunc_name_hint=MATMUL,
                                      primfunc_attrs={"op_pattern": 4})
            return y if padded == width else self._sliced(y, width)

        def _packed(self, x, weight, panel: int, columns: int):
            """The constant ``weight`` [K, N] zero-padded to ``columns`` in panels of ``panel``:
            a placeholder for it when it is a deferred source (and ``x`` is no constant, so that
            nothing folds the placeholder's contents), else the packed copy, shared with TVM."""
            if deferred is not None and not _is_const(x):
                holder = deferred.placeholder(weight, panel, columns)
                if holder is not None:
                    return relax.const(shared_tensor(holder))
            return relax.const(shared_tensor(pack_weight(_zero_columns(weight, columns), panel)))

        def _activation_matmul(self, call):
            """Both operands computed at run time, with a symbolic row count or width (attention
            over a dynamic sequence): padded to whole register tiles inside the kernel."""
            x, y = call.args
            xs, ys = _shape_values(x), _shape_values(y)
            if (not _f32(x, y, call) or xs is None or ys is None or len(xs) < 2 or len(xs) != len(ys)
                    or not all(_same_dim(p, q) for p, q in zip(xs[:-2], ys[:-2]))):
                return None
            rows, depth, width = _dim(xs[-2]), _dim(xs[-1]), _dim(ys[-1])
            if rows is not None and width is not None:
                return None  # static: the tiling rule handles it as it is
            if (depth is not None and depth < 1) or (rows is not None and rows < 1):
                return None
            row_tile, col_tile = padded_matmul_tiles(xs[-2], ys[-1], lanes)
            if row_tile == 1 and col_tile == 1:
                return None
            return self.builder_.call_te(padded_matmul, x, y, row_tile, col_tile, primfunc_name_hint=PADDED,
                                         primfunc_attrs={"op_pattern": 4})

        def _sliced(self, y, width: int):
            """``y`` cut back to its first ``width`` columns (the padding dropped)."""
            y = self.builder_.emit(y)
            return relax.op.strided_slice(y, axes=[len(y.ty.shape.values) - 1], begin=[0], end=[width])

        def _conv(self, call):
            x, w = call.args
            a = call.attrs
            xs = _shape_values(x)
            if (not _is_const(w) or xs is None or len(xs) != 4 or not _f32(x, w, call) or int(a.groups) != 1
                    or str(a.data_layout) != "NHWC" or str(a.kernel_layout) != "HWIO"
                    or str(a.out_layout) not in ("", "NHWC") or _dim(xs[0]) is None or _dim(xs[3]) is None):
                return None  # (a symbolic batch keeps the generic rule)
            wn = _const_array(w)
            kh, kw, c, n_out = wn.shape
            width = _dim(call.ty.shape.values[2])
            rows, panel = micro_kernel(width, n_out, lanes)
            if not panel:
                return None
            # A symbolic image size (the width is the GEMM's row axis): whole register tiles of
            # a padded width, cropped back.
            row_tile = rows if width is None else None
            wp = self._packed(x, wn.reshape(kh * kw * c, n_out), panel, n_out)
            return self.builder_.call_te(
                packed_conv2d, x, wp, (kh, kw), [int(v) for v in a.strides], [int(v) for v in a.padding],
                [int(v) for v in a.dilation], row_tile, primfunc_name_hint=CONV, primfunc_attrs={"op_pattern": 4})

    return _relax_function_pass(Pack, "PackWeights")


def _lanes(target) -> int:
    import tvm

    from .schedules import vector_lanes

    target = target or tvm.target.Target.current(allow_none=True)
    return 16 if target is None else vector_lanes(target, 32)


def _const_array(const) -> np.ndarray:
    """A constant's array: a view of its memory (DLPack), or a copy where that is not possible."""
    try:
        return np.from_dlpack(const.value)
    except (TypeError, ValueError, BufferError, RuntimeError):
        return const.value.numpy()


def _zero_columns(w: np.ndarray, columns: int) -> np.ndarray:
    """``w`` [K, N] with zero columns up to ``columns`` (``w`` itself when there are none)."""
    if columns == w.shape[1]:
        return w
    return np.concatenate([w, np.zeros((w.shape[0], columns - w.shape[1]), w.dtype)], axis=1)


def _is_const(expr) -> bool:
    import tvm

    return isinstance(expr, tvm.ir.expr.GenericConst) and hasattr(expr.value, "numpy")


def _rows_may_vary(expr):
    """The shape of a matmul's left operand with None for its row axis (second to last), when
    that axis is the only symbolic one; else None."""
    values = getattr(getattr(expr.ty, "shape", None), "values", None)
    if values is None or len(values) < 2:
        return None
    try:
        return [int(v) for v in values[:-2]] + [None, int(values[-1])]
    except (TypeError, ValueError):
        return None


def _shape_values(expr):
    values = getattr(getattr(expr.ty, "shape", None), "values", None)
    return None if values is None else list(values)


def _dim(value):
    """A shape value as an int, or None when it is symbolic."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _same_dim(a, b) -> bool:
    import tvm_ffi

    return tvm_ffi.structural_equal(a, b)


def _static_shape(expr):
    shape = getattr(expr.ty, "shape", None)
    values = getattr(shape, "values", None)
    if values is None:
        return None
    try:
        return [int(v) for v in values]
    except (TypeError, ValueError):  # a symbolic dim
        return None


def _f32(*exprs) -> bool:
    return all(str(getattr(e.ty, "dtype", "")) == "float32" for e in exprs)


# -- the schedule ------------------------------------------------------------------------------
def _rule_base():
    from tvm.s_tir.dlight.base import ScheduleRule

    return ScheduleRule


class PackedGemm(_rule_base()):
    """Schedules a fused PrimFunc holding one ``packed_matmul``/``packed_conv2d`` block (see the
    module docstring); any other function: None."""

    def apply(self, func, target, _tunable):
        from tvm import s_tir, tirx

        if not isinstance(func, tirx.PrimFunc):
            return None
        sch = s_tir.Schedule(func)
        names = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
        mains = [n for n in names if _is_main(n)]
        if len(mains) != 1:
            return None
        main = mains[0]
        at = names.index(main)
        leftovers = [n for n in reversed(names[:at]) if not _inline_producer(sch, n)]
        epilogue = names[at + 1:]
        lanes = _lanes(target)
        leftovers += _schedule_main(sch, main, epilogue, lanes)
        from .schedules import _vectorize_parallel

        for name in leftovers:
            _vectorize_parallel(sch, sch.get_sblock(name), lanes)
        return sch


def _is_main(name: str) -> bool:
    return any(name == p or name.startswith(p + "_") for p in (MATMUL, CONV)) and not name.startswith(PAD)


def _inline_producer(sch, name: str) -> bool:
    """Inline an injective producer into its consumer (the GEMM's operand reads); the zero
    padding stays a block (inlined, its bounds test would run in the innermost loop)."""
    from .schedules import _try

    return not name.startswith(PAD) and _try(sch.compute_inline, sch.get_sblock(name))


def _schedule_main(sch, main: str, epilogue: list[str], lanes: int) -> list[str]:
    """Tile the GEMM block; returns the blocks left for a plain vectorized pass."""
    from .schedules import PARALLEL_MIN_WORK, _int, _try, _work

    block = sch.get_sblock(main)
    stmt = sch.get(block)
    wp = stmt.reads[-1].source
    panel, k_extent = int(wp.shape[2]), int(wp.shape[1])
    if panel % lanes:
        lanes = panel if panel < lanes else _largest_pow2_divisor(panel)
    loops = sch.get_loops(block)
    spatial = [lp for lp, iv in zip(loops, stmt.iter_vars) if iv.iter_type == 0]
    reduce_ = [lp for lp, iv in zip(loops, stmt.iter_vars) if iv.iter_type != 0]
    if len(spatial) < 2 or any(_int(sch.get(lp).extent) is None for lp in [*spatial[-1:], *reduce_]):
        raise ValueError("needs static column and reduction axes")
    if any(_int(sch.get(lp).extent) is None for lp in spatial[:-1]) and _int(sch.get(spatial[-2]).extent) is not None:
        raise ValueError("symbolic outer axes need padded (symbolic) rows")
    outer, m_loop, j_loop = spatial[:-2], spatial[-2], spatial[-1]
    m = _int(sch.get(m_loop).extent)
    n = _int(sch.get(j_loop).extent)
    rows, vectors = tile_shape(m, panel, lanes)
    parallel = _work(sch, block) >= PARALLEL_MIN_WORK
    panel_outer = k_extent * n * 4 > SMALL_WEIGHT_BYTES
    # Every epilogue block but the last is inlined into its consumer; the last is computed per
    # tile when the rows divide evenly, else it stays a separate pass.
    inlined = [_try(sch.compute_inline, sch.get_sblock(name)) for name in epilogue[:-1]]
    left = [name for name, done in zip(epilogue, inlined) if not done]
    tail = epilogue[-1] if epilogue else None
    if m is None:
        # Symbolic rows padded to whole tiles (packed_matmul's row_tile): the tile loops stay
        # unfused (their indices would divide by the symbolic tile count), the accumulators get
        # a local tile (kept on the stack: pipeline.keep_local_tiles_on_stack), the cropped
        # epilogue is a pass of its own.
        write_back = sch.cache_write(block, 0, "local")
        anchor = _tile(sch, block, outer, m_loop, j_loop, reduce_, (rows, vectors), panel, lanes, panel_outer,
                       parallel, fuse=False)
        from .schedules import TiledContraction

        sch.reverse_compute_at(write_back, anchor, preserve_unit_loops=False)
        loops = TiledContraction._tile_write_back_loops(sch, write_back, anchor, rows * panel)
        TiledContraction._vectorize_split(sch, loops[-1], lanes)
        return left + ([tail] if tail else [])
    if rows * vectors * 2 < _accumulators(lanes):
        # Few rows (batch-1 linear layers): one tile spans several panels to keep the FMA units
        # busy; the epilogue, over m x n elements only, stays a separate pass.
        _leftover_tile(sch, block, m, panel, lanes, n, parallel)
        return left + ([tail] if tail else [])
    if m % rows == 0:
        tile = _tile(sch, block, outer, m_loop, j_loop, reduce_, (rows, vectors), panel, lanes, panel_outer,
                     parallel)
        if tail is not None and not left and _try(sch.reverse_compute_at, sch.get_sblock(tail), tile, False):
            _vectorize_tile(sch, sch.get_sblock(tail), lanes)
            return []
        return left + ([tail] if tail else [])
    if len(outer) >= 2 and tail is not None and not left:
        per_image = m * _extent_product(sch, outer[1:])
        image_shape = tile_shape(per_image, panel, lanes)
        if per_image % image_shape[0] == 0:
            # Leftover rows in every output row but none over a whole image: tile each image's
            # rows at once under the batch loop, and run the epilogue per image while its
            # output is still in cache (over the whole batch, the epilogue's separate pass
            # re-read C from memory: MobileNetV2's 14x14 1x1 convs on AVX2 at batch 8, 32 ->
            # ~100 GFLOP/s).
            m_loop = sch.fuse(*outer[1:], m_loop)
            _tile(sch, block, [], m_loop, j_loop, reduce_, image_shape, panel, lanes, panel_outer, parallel)
            if _try(sch.reverse_compute_at, sch.get_sblock(tail), outer[0], False):
                _vectorize_tile(sch, sch.get_sblock(tail), lanes)
                return []
            return [tail]
    total = m * _extent_product(sch, outer)
    fused_shape = tile_shape(total, panel, lanes)
    if outer and total % fused_shape[0] == 0:
        # Leftover rows in every row of the output but none over all of them: tile the rows of
        # all the outer axes at once (the epilogue then stays a separate pass).
        m_loop = sch.fuse(*outer, m_loop)
        _tile(sch, block, [], m_loop, j_loop, reduce_, fused_shape, panel, lanes, panel_outer, parallel)
        return left + ([tail] if tail else [])
    sch.loop_partition(m_loop, [m - m % rows, None])
    blocks = _partition_blocks(sch, main)
    _tile(sch, blocks[0], None, None, None, None, (rows, vectors), panel, lanes, panel_outer, parallel)
    _leftover_tile(sch, blocks[1], m % rows, panel, lanes, n, parallel)
    return left + ([tail] if tail else [])


def _accumulators(lanes: int) -> int:
    from .schedules import MAX_ACCUMULATORS

    return MAX_ACCUMULATORS.get(lanes * 32, 12)


def _extent_product(sch, loops) -> int:
    total = 1
    for lp in loops:
        total *= int(sch.get(lp).extent)
    return total


def _partition_blocks(sch, main: str):
    """The two GEMM blocks ``loop_partition`` made (main rows, leftover rows), in that order."""
    found = []

    def walk(block):
        for child in sch.get_child_blocks(block):
            name = sch.get(child).name_hint
            if name.startswith(main) and not name.endswith("_partition") and not name.endswith("_common"):
                found.append(child)
            else:
                walk(child)

    walk(sch.get_sblock("root"))
    if len(found) != 2:
        raise ValueError(f"expected two partitioned blocks, found {len(found)}")
    return found


def _loops_of(sch, block):
    """(outer spatial, row, column, reduction loops) of a GEMM block in its normal form."""
    stmt = sch.get(block)
    loops = sch.get_loops(block)
    iters = stmt.iter_vars
    # Bound innermost-first: loop_partition's wrapper blocks hide the loops above the partitioned
    # one (their iters are then bound to loops this query does not return).
    count = min(len(loops), len(iters))
    loops, iters = loops[len(loops) - count:], iters[len(iters) - count:]
    spatial = [lp for lp, iv in zip(loops, iters) if iv.iter_type == 0]
    reduce_ = [lp for lp, iv in zip(loops, iters) if iv.iter_type != 0]
    return spatial[:-2], spatial[-2], spatial[-1], reduce_


def _tile(sch, block, outer, m_loop, j_loop, reduce_, shape, panel, lanes, panel_outer, parallel, fuse=True):
    """A (rows x vectors) register tile over the whole reduction, the panel walked in
    panel / (vectors * lanes) passes; returns the fused outer loop (``fuse=False``: the tile
    loops stay nested, the outermost parallel; returns the innermost)."""
    if m_loop is None:
        outer, m_loop, j_loop, reduce_ = _loops_of(sch, block)
        outer = []  # loop_partition's shared loops stay serial above the partition
    rows, vectors = shape
    jo, jq, jv, jl = sch.split(j_loop, [None, panel // (vectors * lanes), vectors, lanes])
    mo, mi = sch.split(m_loop, [None, rows])
    tiles = [jo, *outer, mo] if panel_outer else [*outer, mo, jo]
    sch.reorder(*tiles, jq, *reduce_, mi, jv, jl)
    fused = (sch.fuse(*tiles) if len(tiles) > 1 else tiles[0]) if fuse else tiles[-1]
    if parallel:
        # Unfused: the first loop of more than one iteration (a batch of 1 would leave it serial).
        _try_parallel(sch, fused if fuse else next((lp for lp in tiles if _extent_is_not_one(sch, lp)), tiles[0]))
    sch.unroll(mi)
    sch.unroll(jv)
    sch.vectorize(jl)
    sch.decompose_reduction(block, reduce_[0])
    return fused


def _extent_is_not_one(sch, loop) -> bool:
    from .schedules import _int

    return _int(sch.get(loop).extent) != 1


def _leftover_tile(sch, block, rows, panel, lanes, n, parallel):
    """The leftover rows (fewer than a tile) over several panels at once, to keep about as many
    accumulators as the main tile."""
    from .schedules import _largest_divisor

    _, m_loop, j_loop, reduce_ = _loops_of(sch, block)
    vectors = panel // lanes
    target_acc = _accumulators(lanes) * 2 // 3
    width = _largest_divisor(n // panel, max(1, target_acc // (rows * vectors)))
    jo, jw, jv, jl = sch.split(j_loop, [None, width, vectors, lanes])
    sch.reorder(jo, *reduce_, m_loop, jw, jv, jl)
    if parallel:
        _try_parallel(sch, jo)
    sch.unroll(m_loop)
    sch.unroll(jw)
    sch.unroll(jv)
    sch.vectorize(jl)
    sch.decompose_reduction(block, reduce_[0])
    return jo


def _vectorize_tile(sch, block, lanes):
    """The per-tile epilogue: rows unrolled, columns vectorized one register at a time."""
    from .schedules import TiledContraction

    loops = sch.get_loops(block)
    TiledContraction._vectorize_split(sch, loops[-1], lanes)


def _try_parallel(sch, loop) -> None:
    """Parallel when the schedule allows it (loop_partition's blocks may not: they then run
    serially, which is correct)."""
    from .schedules import _try

    _try(sch.parallel, loop)


def _largest_pow2_divisor(n: int) -> int:
    return n & -n
