"""Softmax over a symbolic last axis of whole vectors (attention over a dynamic sequence, padded
by ``attention.pad_pass``) for the llvm target.

TVM's own softmax over a symbolic length splits the row into vectors with a bounds test in every
iteration, which this TVM cannot vectorize: 8-16 ns per element at 128-512 tokens, against about
1.5 ns at a static length. ``rewrite_pass`` replaces ``relax.nn.softmax`` (float32) over a last
axis that is symbolic and provably a multiple of ``LANES`` by ``symbolic_softmax``:

  max_lanes[o, l] = max over v < n / L of x[o, v * L + l]       (L = ``LANES``)
  top[o]          = max over l of max_lanes[o, l]
  sum_lanes, total: the same for exp(x - top)
  y[o, j]         = exp(x[o, j] - top[o]) / total[o]

scheduled by ``schedule`` (every stage computed per row, the lane stages vectorized over ``l``:
one vector of partial maxima or sums; the output row in whole vectors) and marked scheduled. The
exponential is ``topi.fast_exp``, as the static softmax's (``pipeline.fast_math_pass``).
"""

from __future__ import annotations

# Lanes of the partial maxima and sums: one AVX-512 register, two AVX2 ones.
LANES = 16
OUTPUT = "symbolic_softmax"
# The per-row stages, in order (computed under the row loop).
_REDUCTIONS = ("softmax_max_lanes", "softmax_max", "softmax_sum_lanes", "softmax_sum")


def symbolic_softmax(x):
    """TE: softmax over the last axis of ``x``, whose length is a multiple of ``LANES``."""
    from tvm import te, tirx, topi

    *outer, n = x.shape

    def row_reduce(value, combine, name):
        v = te.reduce_axis((0, tirx.floordiv(n, LANES)), name="v")
        lanes = te.compute((*outer, LANES), lambda *i: combine(value(*i[:-1], v * LANES + i[-1]), axis=v),
                           name=name + "_lanes")
        lane = te.reduce_axis((0, LANES), name="l")
        return te.compute(outer, lambda *o: combine(lanes[(*o, lane)], axis=lane), name=name)

    top = row_reduce(lambda *i: x[i], te.max, "softmax_max")
    shifted = te.compute(x.shape, lambda *i: x[i] - top[i[:-1]], name="softmax_shifted")
    e = topi.fast_exp(shifted)
    total = row_reduce(lambda *i: e[i], te.sum, "softmax_sum")
    return te.compute(x.shape, lambda *i: e[i] / total[i[:-1]], name=OUTPUT)


def rewrite_pass():
    """Relax pass: float32 softmax over a symbolic last axis of whole vectors -> a call of
    ``symbolic_softmax``, scheduled here (a row of no whole vector would leave the reductions
    uninitialised unless their initialisation is split out, so the call is made only when the
    schedule applies) and marked scheduled, so that the rules and the tuner leave it alone."""
    import tvm
    from tvm import relax

    from .pipeline import _relax_function_pass
    from .schedules import SCHEDULED, _provably_multiple

    @relax.expr_functor.mutator
    class Rewrite(relax.PyExprMutator):
        def __init__(self, mod=None):
            super().__init__(mod)
            self.scheduled = {}  # tensor type -> the first call of its scheduled function

        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.nn.softmax"):
                return call
            x = call.args[0]
            shape = getattr(getattr(x.ty, "shape", None), "values", None)
            if shape is None or str(getattr(x.ty, "dtype", "")) != "float32":
                return call
            if (int(call.attrs.axis) % len(shape) != len(shape) - 1 or isinstance(shape[-1], tvm.tirx.IntImm)
                    or not _provably_multiple(shape[-1], LANES)):
                return call
            key = str(x.ty)
            done = self.scheduled.get(key)
            if done is not None:  # the function of an earlier softmax of this type: called again
                # (call_te appends the symbolic sizes the function takes to its argument tuple)
                args = relax.Tuple([x, *list(done.args[1].fields)[1:]])
                return relax.Call(done.op, [done.args[0], args, *done.args[2:]], done.attrs, done.ty_args)
            new = self.builder_.call_te(symbolic_softmax, x, primfunc_name_hint=OUTPUT)
            gv = new.args[0]
            func = self.builder_.get()[gv]
            try:
                func = schedule(func)
            except Exception:  # noqa: BLE001 - TVM's own softmax stays: slower, but right
                return call
            # Opaque: FuseOps adds nothing to it (the schedule is for these stages only).
            self.builder_.update_func(gv, func.with_attr(SCHEDULED, True).with_attr("op_pattern", 8))
            self.scheduled[key] = new
            return new

    return _relax_function_pass(Rewrite, "SymbolicSoftmax")


def schedule(func):
    """The scheduled ``symbolic_softmax`` PrimFunc (see the module docstring)."""
    from tvm import s_tir

    from .schedules import _int, _provably_multiple, _try

    sch = s_tir.Schedule(func)
    names = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
    # The shift and the exponential are inlined: the sums and the output recompute the
    # exponential rather than store it.
    for name in names:
        if name not in _REDUCTIONS and name != OUTPUT:
            sch.compute_inline(sch.get_sblock(name))
    out = sch.get_sblock(OUTPUT)
    *outer, column = sch.get_loops(out)
    static = [lp for lp in outer if _int(sch.get(lp).extent) is not None]
    symbolic = [lp for lp in outer if _int(sch.get(lp).extent) is None]
    if len(static) > 1:  # symbolic extents stay unfused (a fused index would divide by them)
        sch.reorder(*static, *symbolic, column)
        static = [sch.fuse(*static)]
    rows = static + symbolic
    for name in reversed(_REDUCTIONS):
        sch.compute_at(sch.get_sblock(name), rows[-1], preserve_unit_loops=False)
    for name in _REDUCTIONS:
        block = sch.get_sblock(name)
        loops = sch.get_loops(block)
        if name.endswith("_lanes"):  # one vector of partial results over the row's whole vectors
            lane, v = loops[-2:]
            sch.reorder(v, lane)
            sch.vectorize(lane)
            sch.decompose_reduction(block, v)
    if not _provably_multiple(sch.get(column).extent, LANES):
        raise ValueError("the row is not whole vectors")
    _, lanes = sch.split(column, [None, LANES])
    sch.vectorize(lanes)
    if _int(sch.get(rows[0]).extent) != 1:
        _try(sch.parallel, rows[0])
    return sch.mod["main"]
