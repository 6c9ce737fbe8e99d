"""Search-free CPU schedule for depthwise convolution in NHWC (MobileNet's 3x3 stride-1/2 convs).

A depthwise convolution legalizes to one reduction block
``out[n, y, x, c] += pad[n, y*s + ry, x*s + rx, c] * w[ry, rx, 0, c]`` (one input channel per
group), usually after a zero-padding block and before a bias/ReLU6 epilogue. It is no GEMM: each
output needs only KH*KW multiply-adds and the input is read about once, so the kernel is bound by
memory and by how much it re-reads. ``DepthwiseConv`` (in ``schedules.cpu_rules()``, before the
generic ``TiledContraction``) schedules it as:

- channels innermost and vectorized one register at a time; a register tile of ``cols`` output
  columns x ``vectors`` channel registers, the whole KH x KW window unrolled over it, so each
  weight vector is loaded once per tile and reused ``cols`` times;
- output rows in tiles of ``rows``; the zero padding is computed per row tile (only the
  ``(rows - 1) * s + KH`` input rows it needs, while they are in cache), not as a full padded copy
  of the input before the kernel;
- the epilogue (bias, clip) computed per register tile while it is in registers;
- the (batch, row tile) loop fused and parallel when the function is large.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.base import ScheduleRule

# Output columns per register tile at most (each column x vector is one accumulator).
MAX_COLS = 8
# Output rows per padding tile at most: the padded input rows of a tile are re-copied by the next
# tile only where the windows overlap (KH - s rows), so taller tiles copy less but lower the
# parallelism of small feature maps.
MAX_ROWS = 4


class DepthwiseConv(ScheduleRule):
    """A fused PrimFunc with one depthwise NHWC convolution block; anything else: None."""

    def apply(self, func, target, _tunable):
        from .schedules import _int, vector_lanes

        if not isinstance(func, tirx.PrimFunc):
            return None
        sch = s_tir.Schedule(func)
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
        names = [sch.get(b).name_hint for b in blocks]
        found = [i for i, b in enumerate(blocks) if _is_depthwise(sch, b)]
        if len(found) != 1:
            return None
        at = found[0]
        main = names[at]
        block = sch.get_sblock(main)
        loops = sch.get_loops(block)
        extents = [_int(sch.get(lp).extent) for lp in loops]
        if None in extents[1:]:
            return None  # only the batch may be symbolic
        pad = _padding_producer(sch, block)
        for name in reversed(names[:at]):
            if pad is None or name != sch.get(pad).name_hint:
                sch.compute_inline(sch.get_sblock(name))  # raises (no match) when it cannot
        lanes = vector_lanes(target, 32)
        _schedule(sch, main, pad, names[at + 1:], lanes)
        return sch


def _is_depthwise(sch, block) -> bool:
    """One reduction block over (n, y, x, c | ry, rx, rc) with rc of extent 1 whose data read
    indexes channel c itself: a group per channel, one output channel per group."""
    stmt = sch.get(block)
    iters = stmt.iter_vars
    kinds = "".join("S" if iv.iter_type == tirx.IterVar.DataPar else "R" for iv in iters)
    if kinds != "SSSSRRR" or len(stmt.reads) != 2 or len(stmt.writes) != 1:
        return False
    if int(iters[6].dom.extent) != 1 or not str(stmt.writes[0].source.dtype).startswith("float"):
        return False
    n, y, x, c, ry, rx, rc = (iv.var for iv in iters)
    data, weight = stmt.reads
    if len(data.region) != 4 or len(weight.region) != 4:
        return False
    from tvm.sym.analyzer import Analyzer

    analyzer = Analyzer()

    def is_channel(index) -> bool:  # c, or c + rc (rc has extent 1)
        return any(_is_zero(analyzer.simplify(index - want)) for want in (c, c + rc))

    out = stmt.writes[0].region
    return (is_channel(data.region[3].min) and is_channel(weight.region[3].min)
            and all(r.min.same_as(v) for r, v in zip(out, (n, y, x, c))))


def _is_zero(expr) -> bool:
    return isinstance(expr, tirx.IntImm) and int(expr) == 0


def _padding_producer(sch, block):
    """The block producing the convolution's data operand when it is zero padding, else None."""
    from .schedules import _has_condition

    producers = sch.get_producers(block)
    data = sch.get(block).reads[0].source
    for p in producers:
        stmt = sch.get(p)
        if any(w.source.same_as(data) for w in stmt.writes) and _has_condition(stmt):
            return p
    return None


def _largest_divisor(n: int, limit: int) -> int:
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def _schedule(sch, main: str, pad, epilogue: list[str], lanes: int) -> None:
    from .schedules import MAX_ACCUMULATORS, PARALLEL_MIN_WORK, TiledContraction, _int, _try, _work

    block = sch.get_sblock(main)
    n, y, x, c, ry, rx, rc = sch.get_loops(block)
    channels, out_rows, out_cols = (_int(sch.get(lp).extent) for lp in (c, y, x))
    if channels % lanes:
        lanes = _largest_divisor(channels, lanes)
    budget = MAX_ACCUMULATORS.get(lanes * 32, 12)
    vectors = 2 if channels % (2 * lanes) == 0 and budget >= 2 * MAX_COLS else 1
    cols = _largest_divisor(out_cols, min(MAX_COLS, budget // vectors))
    rows = _largest_divisor(out_rows, MAX_ROWS)
    parallel = _work(sch, block) >= PARALLEL_MIN_WORK

    yo, yi = sch.split(y, [None, rows])
    xo, xi = sch.split(x, [None, cols])
    co, cv, cl = sch.split(c, [None, vectors, lanes])
    sch.reorder(n, yo, yi, xo, co, ry, rx, rc, xi, cv, cl)
    # The epilogue per register tile (every block but the last inlined into the next).
    inlined = [_try(sch.compute_inline, sch.get_sblock(name)) for name in epilogue[:-1]]
    if not all(inlined):
        raise ValueError("an epilogue block that cannot be inlined")
    if epilogue:
        tail = sch.get_sblock(epilogue[-1])
        sch.reverse_compute_at(tail, co, preserve_unit_loops=False)
        TiledContraction._vectorize_split(sch, sch.get_loops(tail)[-1], lanes)
    if pad is not None:
        sch.compute_at(pad, yo, preserve_unit_loops=False)
        TiledContraction._vectorize_split(sch, sch.get_loops(pad)[-1], lanes)
    outer = sch.fuse(n, yo)
    if parallel:
        sch.parallel(outer)
    for loop in (ry, rx, rc, xi, cv):
        sch.unroll(loop)
    sch.vectorize(cl)
    sch.decompose_reduction(block, ry)
