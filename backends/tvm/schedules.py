"""Search-free CPU schedules for the fused PrimFuncs of a Relax module: one rule per class.

The rules follow dlight's ``ScheduleRule`` API (``apply(func, target, tunable)`` returns a
schedule, or ``None`` when the function is not of the rule's class) and are tried in order by
``cpu_rules()``; the first rule that returns a schedule wins, and a function no rule takes stays
unscheduled (correct, only slow).

- ``PackedGemm`` (``backends/tvm/gemm.py``): the packed-weight GEMM / implicit-GEMM convolution
  the pipeline made of constant-weight matmuls and convolutions, with its epilogue.
- ``DepthwiseConv`` (``backends/tvm/depthwise.py``): NHWC depthwise convolution with its padding
  computed per row tile and its epilogue per register tile.
- ``TiledContraction``: one reduction block (dense, matmul, batch-matmul, convolution, pooling,
  mean) with its injective producers and epilogue: a register-tiled micro-kernel that vectorizes
  the innermost output axis with the target's vector width, keeps the accumulators in a local
  buffer, writes back through the fused epilogue and runs its outer loops in parallel.
- dlight's CPU ``Reduction`` and ``GEMV`` for softmax/layernorm-like functions.
- ``Injective``: inline everything into the last block, vectorize its innermost axis, parallel
  outer loops.

Every rule copes with symbolic extents (the dynamic batch) by not splitting those loops, and a
rule that raises is treated as not matching (``Guarded``), so scheduling never breaks a build.
"""

from __future__ import annotations

import math
import re

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.analysis.common_analysis import get_sblockrealize
from tvm.s_tir.dlight.base import ScheduleRule

# At most this many vector accumulators per micro-kernel: AVX-512 has 32 registers, AVX2 16, and
# the kernel also needs a few for the broadcast operand and the loaded weights.
MAX_ACCUMULATORS = {512: 24, 256: 12}
# Below this many multiply-adds (elements, for injective blocks) a kernel runs serially: waking
# the thread pool costs a few microseconds, more on a busy machine (measured: batch-1 MobileNet
# and Transformer ran 1.6-2x slower on 2 threads than on 1 with a threshold of 32K; at 512K the
# seed MLP's 1000x500 layer stayed serial and its 2-thread latency was 2x onnxruntime's, at 256K
# it is 1.06x and MobileNet/Transformer are unchanged).
PARALLEL_MIN_WORK = 1 << 18
PARALLEL_MIN_ELEMENTS = 1 << 18


def vector_lanes(target, dtype_bits: int = 32) -> int:
    """Lanes of one SIMD register for ``dtype_bits`` elements on ``target``: 512-bit registers
    where the target's CPU has AVX-512, else AVX2's 256 bits on x86 (LLVM's own vector-width
    query reports 512 for any x86 mcpu in this TVM, so it is not used there), else 128."""
    from tvm.target.codegen import llvm_cpu_has_features

    try:
        wide = llvm_cpu_has_features(["avx512f"], target)
    except Exception:  # noqa: BLE001 - a target LLVM cannot describe
        wide = False
    bits = 512 if wide else 256 if _is_x86(target) else 128
    return max(bits // dtype_bits, 1)


def _is_x86(target) -> bool:
    import platform

    triple = str(target.attrs.get("mtriple", "") or "") or platform.machine()
    return triple.startswith(("x86", "i686", "AMD64"))


def _int(extent):
    """The extent as a Python int, or None when it is symbolic."""
    return int(extent) if isinstance(extent, (int, tirx.IntImm)) else None


def tile_row_limit(vector_bits: int, vectors: int) -> int:
    """The most rows of a register tile ``vectors`` registers wide: as many as the accumulators
    allow, at most 16."""
    return max(1, min(16, MAX_ACCUMULATORS.get(vector_bits, 12) // vectors))


def _provably_multiple(extent, factor: int) -> bool:
    """Whether a (symbolic) extent is a multiple of ``factor`` for every value of its variables,
    e.g. a length padded to whole tiles."""
    from tvm.sym.analyzer import Analyzer

    return Analyzer().can_prove_equal(tirx.floormod(extent, factor), 0)


def _largest_divisor(n: int, limit: int) -> int:
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


class Guarded(ScheduleRule):
    """Wraps a rule so that a schedule primitive it cannot apply means "no match"."""

    def __init__(self, rule: ScheduleRule):
        self.rule = rule

    def apply(self, func, target, tunable):
        try:
            sch = self.rule.apply(func, target, tunable)
            if sch is not None:
                _check_well_formed(sch)
            return sch
        except Exception:  # noqa: BLE001 - any schedule error: leave the function to the next rule
            return None

    def __repr__(self) -> str:
        return f"Guarded({type(self.rule).__name__})"


def _check_well_formed(sch) -> None:
    """Raise when a schedule produced IR that does not lower (e.g. a read of a buffer that lost
    its producer): schedule primitives in this TVM do not always check their preconditions."""
    from tvm.s_tir.analysis import verify_well_formed

    for sch_item in ([sch] if not isinstance(sch, list) else sch):
        verify_well_formed(sch_item.mod, assert_mode=True)


class TiledContraction(ScheduleRule):
    """One reduction block whose innermost spatial axis is the output's innermost index."""

    def apply(self, func, target, _tunable):
        if not isinstance(func, tirx.PrimFunc):
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if not infos:
            return None
        reductions = [i for i, b in enumerate(infos) if not b.is_injective()]
        if len(reductions) != 1 or not re.fullmatch("S+R+", infos[reductions[0]].dom_kind()):
            return None
        main = infos[reductions[0]]
        names = [b.name for b in infos]
        if not _output_contiguous_in_last_axis(sch, main):
            return None
        leftovers = []
        for b in reversed(infos[: reductions[0]]):
            # Padding stays a block of its own: inlined, its bounds test would run in the
            # innermost loop of the kernel.
            if _has_condition(sch.get(b.block_rv)) or not _try(sch.compute_inline, b.block_rv):
                leftovers.append(b.name)
        block = sch.get_sblock(main.name)
        epilogue = names[reductions[0] + 1:]
        leftovers += self._tile(sch, block, epilogue, target)
        lanes = vector_lanes(target, _out_bits(sch, block))
        for name in leftovers:
            _vectorize_parallel(sch, sch.get_sblock(name), lanes)
        return sch

    def _tile(self, sch, block, epilogue, target):
        loops = sch.get_loops(block)
        kinds = _loop_kinds(sch, block, loops)
        spatial = [lp for lp, k in zip(loops, kinds) if k == "S"]
        reduce_ = [lp for lp, k in zip(loops, kinds) if k == "R"]
        lanes = vector_lanes(target, _out_bits(sch, block))
        columns = sch.get(spatial[-1]).extent
        vec_tile, vn = self._vector_tile(_int(columns), lanes)
        if vec_tile is None:
            # A symbolic width is tiled only when it is padded to whole vectors (gemm's
            # padded_matmul): a tile with a bounds test runs scalar.
            vn = next((v for v in (2, 1) if _provably_multiple(columns, lanes * v)), 0)
            if not vn:
                raise ValueError("symbolic innermost axis")
            vec_tile = lanes * vn
        rows_extent = sch.get(spatial[-2]).extent if len(spatial) > 1 else None
        rows = _int(rows_extent) if rows_extent is not None else None
        row_limit = tile_row_limit(lanes * _out_bits(sch, block), vn)
        if rows:
            tr = _largest_divisor(rows, row_limit)
        elif rows_extent is not None:  # symbolic rows padded to whole tiles, or one-row tiles
            tr = next((t for t in range(row_limit, 1, -1) if _provably_multiple(rows_extent, t)), 1)
        else:
            tr = 1
        v_o, v_i = sch.split(spatial[-1], [None, vec_tile])
        outer = spatial[:-1] + [v_o]
        if len(spatial) > 1 and rows is None and tr == 1:
            # Symbolic rows (a dynamic sequence) get one-row tiles: the column tile goes outside
            # the rows so that its slice of the operand is reused from cache by every row (row
            # outermost streamed GPT-2's whole 154 MB head once per token).
            outer = spatial[:-2] + [v_o, spatial[-2]]
        inner = [v_i]
        if tr > 1:
            r_o, r_i = sch.split(spatial[-2], [None, tr])
            outer = spatial[:-2] + [r_o, v_o]
            inner = [r_i, v_i]
        sch.reorder(*outer, *reduce_, *inner)
        if all(_int(sch.get(lp).extent) is not None for lp in outer):
            anchor = parallel = sch.fuse(*outer) if len(outer) > 1 else outer[0]
        else:
            # Symbolic extents stay separate loops: reverse_compute_at below a fused loop with
            # a symbolic divisor over-approximates the write-back region in this TVM (and its
            # guard misses the upper bound, so it writes past the output).
            anchor, parallel = outer[-1], next((lp for lp in outer if _int(sch.get(lp).extent) != 1), outer[0])
        output_shape = list(sch.get(block).writes[0].source.shape)
        write_back = sch.cache_write(block, 0, "local")
        leftovers = self._fuse_epilogue(sch, epilogue, output_shape)
        sch.reverse_compute_at(write_back, anchor, preserve_unit_loops=False)
        tile_loops = self._tile_write_back_loops(sch, write_back, anchor, tr * vec_tile)
        if tile_loops:
            self._vectorize_split(sch, tile_loops[-1], lanes)
        if _work(sch, block) >= PARALLEL_MIN_WORK:
            sch.parallel(parallel)
        if tr > 1:
            sch.unroll(inner[0])
        self._vectorize_split(sch, inner[-1], lanes)
        sch.decompose_reduction(block, reduce_[0])
        return leftovers

    @staticmethod
    def _tile_write_back_loops(sch, write_back, anchor, elements: int) -> list:
        """The write-back's loops under ``anchor``; raises (so the rule does not match) unless
        they cover exactly one register tile: a wider region means bound inference lost track
        of the tile, and the kernel would write outside it."""
        loops = sch.get_loops(write_back)
        below = loops[[sch.get(lp).same_as(sch.get(anchor)) for lp in loops].index(True) + 1:]
        extents = [_int(sch.get(lp).extent) for lp in below]
        if None in extents or math.prod(extents) != elements:
            raise ValueError(f"write-back region {extents} is not one {elements}-element tile")
        return below

    @staticmethod
    def _fuse_epilogue(sch, epilogue: list[str], output_shape: list) -> list[str]:
        """Inline the epilogue into the write-back: first every intermediate block into its
        consumers, then the last block into the write-back. Reverse-inlining blocks one by one
        is wrong when the accumulator feeds two of them (gelu reads ``x`` twice): this TVM then
        leaves a read of a buffer nothing writes. An epilogue writing another shape than the
        contraction's (a crop of padded columns) stays a block: reverse-inlined, it wrote the
        padded tile's extra columns past the rows of its smaller output. Returns the blocks
        left standing."""
        inlined = [_try(sch.compute_inline, sch.get_sblock(name)) for name in epilogue[:-1]]
        same_shape = bool(epilogue) and str(list(sch.get(sch.get_sblock(epilogue[-1])).writes[0].source.shape)) \
            == str(output_shape)
        if same_shape and all(inlined) and _try(sch.reverse_compute_inline, sch.get_sblock(epilogue[-1])):
            return []
        return [name for name, done in zip(epilogue, [*inlined, False]) if not done]

    @staticmethod
    def _vectorize_split(sch, loop, lanes):
        """Vectorize ``loop`` one register at a time: a loop of several registers' width is split
        and its outer part unrolled (LLVM handles odd-sized wide vectors poorly)."""
        extent = _int(sch.get(loop).extent)
        if extent is not None and extent > lanes and extent % lanes == 0:
            outer, loop = sch.split(loop, [None, lanes])
            sch.unroll(outer)
        sch.vectorize(loop)

    @staticmethod
    def _vector_tile(extent, lanes):
        """(elements per micro-kernel row, vectors per row) for an innermost extent."""
        if extent is None:
            return None, 1
        if extent <= lanes:
            return extent, 1
        if extent % lanes:
            part = _largest_divisor(extent, lanes)
            return part, 1
        vn = _largest_divisor(extent // lanes, 8 if lanes >= 16 else 4)
        return lanes * vn, vn


class Injective(ScheduleRule):
    """Elementwise / broadcast / reshape / transpose chains: inline into the last block,
    vectorize its innermost axis, run the outer loops in parallel when large."""

    def apply(self, func, target, _tunable):
        if not isinstance(func, tirx.PrimFunc):
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if not infos or not all(b.is_injective() for b in infos):
            return None
        for b in reversed(infos[:-1]):
            _try(sch.compute_inline, b.block_rv)
        lanes = vector_lanes(target, _out_bits(sch, infos[-1].block_rv))
        for block in sch.get_child_blocks(sch.get_sblock("root")):
            _vectorize_parallel(sch, block, lanes)
        return sch


def _vectorize_parallel(sch, block, lanes: int) -> None:
    """Innermost axis vectorized (the whole axis when it is short and static), outer axes fused
    and parallel when the block writes many elements."""
    loops = sch.get_loops(block)
    if not loops or any(iv.iter_type != tirx.IterVar.DataPar for iv in sch.get(block).iter_vars):
        return
    extents = [_int(sch.get(lp).extent) for lp in loops]
    outer = loops[:-1]
    last = extents[-1]
    if last is not None and last > lanes and last % lanes == 0:
        o, inner = sch.split(loops[-1], [None, lanes])
        outer = outer + [o]
        sch.vectorize(inner)
    elif last is not None and 1 < last <= lanes:
        sch.vectorize(loops[-1])
    total = 1
    for e in extents:
        total *= e if e is not None else 64
    if outer and total >= PARALLEL_MIN_ELEMENTS:
        if None in extents[:len(outer)]:  # fusing symbolic loops can fail in this TVM: the first one runs parallel
            sch.parallel(next((lp for lp, e in zip(outer, extents) if e != 1), outer[0]))
        else:
            sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])


def _output_contiguous_in_last_axis(sch, info) -> bool:
    """True when the block's innermost spatial iter indexes the output's innermost dimension:
    then vector lanes write consecutive elements."""
    stmt = sch.get(info.block_rv)
    spatial_vars = [it.var for it in info.iters if it.kind == "S"]
    if len(stmt.writes) != 1:
        return False
    last = stmt.writes[0].region[-1].min
    return isinstance(last, tirx.Var) and last.same_as(spatial_vars[-1])


def _has_condition(stmt) -> bool:
    """Whether a block computes a select/if_then_else (e.g. zero padding). TVM's Python API
    exposes no TIR statement visitor in this version, so this reads the block's printed form."""
    text = str(stmt)
    return "if_then_else" in text or "T.Select" in text


def _out_bits(sch, block) -> int:
    return sch.get(block).writes[0].source.dtype.bits if sch.get(block).writes else 32


def _loop_kinds(sch, block, loops) -> list[str]:
    """"S"/"R" per loop when each block iter is bound to exactly its own loop (the normal form
    ``normalize_prim_func`` leaves); raises otherwise, so the rule does not match."""
    stmt = sch.get(block)
    loop_vars = [sch.get(lp).loop_var for lp in loops]
    bindings = list(get_sblockrealize(sch, block).iter_values)
    if len(bindings) != len(loop_vars) or not all(b.same_as(v) for b, v in zip(bindings, loop_vars)):
        raise ValueError("block iters are not bound one-to-one to loops")
    return ["S" if iv.iter_type == tirx.IterVar.DataPar else "R" for iv in stmt.iter_vars]


def _work(sch, block) -> int:
    """Iterations of the block's loop nest (symbolic extents count as 64)."""
    total = 1
    for lp in sch.get_loops(block):
        e = _int(sch.get(lp).extent)
        total *= e if e is not None else 64
    return total


def _try(primitive, *args) -> bool:
    try:
        primitive(*args)
        return True
    except Exception:  # noqa: BLE001 - e.g. a producer that cannot be inlined stays a block
        return False


def cpu_rules() -> list[ScheduleRule]:
    """The CPU rules in the order they are tried."""
    from tvm.s_tir import dlight

    from .depthwise import DepthwiseConv
    from .gemm import PackedGemm

    return [Guarded(PackedGemm()), Guarded(DepthwiseConv()), Guarded(TiledContraction()), Guarded(dlight.cpu.Reduction()),
            Guarded(dlight.cpu.GEMV()), Guarded(Injective())]


# The PrimFunc attribute saying a function is scheduled (by the tuning database or the pipeline):
# the rules and MetaSchedule's task extraction leave such a function alone.
SCHEDULED = "tirx.is_scheduled"


def is_scheduled(func) -> bool:
    return isinstance(func, tirx.PrimFunc) and func.attrs is not None and bool(func.attrs.get(SCHEDULED, False))


def first_schedule(func, target):
    """(rule name, schedule) from the first rule that schedules ``func``, or None: it stays
    unscheduled. What ``dlight.ApplyDefaultSchedule(*cpu_rules())`` picks for one function."""
    for rule in cpu_rules():
        sch = rule.apply(func, target, False)
        if sch is not None:
            return type(rule.rule).__name__, sch
    return None


def rule_for(func, target) -> str | None:
    """The name of the first rule that schedules ``func`` (None: it stays unscheduled); for
    tests and diagnostics."""
    found = first_schedule(func, target)
    return found[0] if found else None


# -- GPU ----------------------------------------------------------------------------------------
class EpilogueInGemmDomain(ScheduleRule):
    """dlight's ``gpu.Matmul`` only for a GEMM whose fused epilogue stays on the GEMM's output
    elements. Matmul computes the epilogue in the write-back of each thread's tile, so it must
    inline every later block there; a block that broadcasts the GEMM's result over more elements
    (squeeze-excite: the [N, C, 1, 1] gate times the [N, C, H, W] feature map, fused into the 1x1
    convolution) cannot be, and Matmul asserts. Such a function goes to the next rule (Fallback:
    the GEMM and the broadcast as two thread-mapped loops)."""

    def __init__(self, rule: ScheduleRule):
        self.rule = rule

    def apply(self, func, target, tunable):
        if not isinstance(func, tirx.PrimFunc) or _epilogue_widens(func):
            return None
        return self.rule.apply(func, target, tunable)

    def __repr__(self) -> str:
        return f"EpilogueInGemmDomain({type(self.rule).__name__})"


def _epilogue_widens(func) -> bool:
    """True when a block after the function's single reduction block iterates over more points
    than the reduction's spatial domain (proved with TVM's analyzer, so symbolic batches count)."""
    from tvm.sym import Analyzer

    sch = s_tir.Schedule(func)
    blocks = [sch.get(b) for b in sch.get_child_blocks(sch.get_sblock("root"))] if _has_root(sch) else []
    reductions = [i for i, b in enumerate(blocks) if any(iv.iter_type == tirx.IterVar.CommReduce
                                                        for iv in b.iter_vars)]
    if len(reductions) != 1:
        return False
    analyzer = Analyzer()
    domain = _points(blocks[reductions[0]], tirx.IterVar.DataPar)
    return any(not analyzer.can_prove_equal(_points(b, tirx.IterVar.DataPar), domain)
               for b in blocks[reductions[0] + 1:])


def _has_root(sch) -> bool:
    try:
        sch.get_sblock("root")
        return True
    except Exception:  # noqa: BLE001 - a function without a root block: not a fused kernel
        return False


def _points(block, iter_type):
    """The product of ``block``'s iterator extents of ``iter_type``."""
    total = tirx.IntImm("int64", 1)
    for iv in block.iter_vars:
        if iv.iter_type == iter_type:
            total = total * tirx.Cast("int64", iv.dom.extent)
    return total


def gpu_rules() -> list[ScheduleRule]:
    """The GPU rules in the order they are tried: TVM's default dlight list (Matmul, GEMV,
    Reduction, GeneralReduction, Fallback) with Matmul kept to the functions it can schedule, and
    every rule guarded, so that a rule that cannot schedule a function hands it to the next one."""
    from tvm.s_tir import dlight

    return [Guarded(EpilogueInGemmDomain(dlight.gpu.Matmul())), Guarded(dlight.gpu.GEMV()),
            Guarded(dlight.gpu.Reduction()), Guarded(dlight.gpu.GeneralReduction()), Guarded(dlight.gpu.Fallback())]


def unscheduled_functions(mod) -> list[str]:
    """Names of the PrimFuncs of ``mod`` that no rule scheduled."""
    return sorted(gv.name_hint for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)
                  and not is_scheduled(f))


def first_gpu_schedule(func, target):
    """(rule name, schedule) from the first GPU rule that schedules ``func``, or None; for tests
    and diagnostics."""
    for rule in gpu_rules():
        sch = rule.apply(func, target, False)
        if sch is not None:
            inner = rule.rule.rule if isinstance(rule.rule, EpilogueInGemmDomain) else rule.rule
            return type(inner).__name__, sch
    return None
