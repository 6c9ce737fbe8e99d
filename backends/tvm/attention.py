"""Attention over a symbolic sequence, padded to whole vectors (llvm target).

With a dynamic sequence, attention's two matmuls and its softmax have symbolic extents. A loop
over a symbolic extent gets a bounds test in every iteration, which this TVM cannot vectorize
(the q @ k^T of a 512-token BERT-base-sized encoder ran at 0.5 GFLOP/s, its softmax at 8-16 ns
per element), and it has no loop partitioning for symbolic extents. ``pad_pass`` rewrites

  p = softmax(f(q @ kt, side operands...), axis=-1);  y = p @ v

(``f`` a chain of elementwise ops: the scale, a mask added or selected with ``where``), where the
query length Lq or the key length Lk is symbolic, to

  q' = q with zero rows up to Lq' = ceil(Lq / PAD) * PAD; kt' = kt with zero columns up to Lk'
  s' = f(q' @ kt', the side operands padded the same way) + col_bias   (col_bias: 0 for real keys,
       the lowest float32 for padding keys, so that they get no weight)
  y  = (softmax(s', axis=-1) @ v')[..., :Lq, :]                        (v': zero rows up to Lk')

Every extent between the pads and the crop is then a provable multiple of ``PAD``: the matmuls run
whole register tiles (``schedules.TiledContraction``), the softmax whole vectors
(``softmax.py``). The padding rows and keys cost at most PAD - 1 of each length.
"""

from __future__ import annotations

# Lengths are padded to a multiple of this: one AVX-512 register of float32, two AVX2 ones.
PAD = 16
_LOWEST = -3.4028234663852886e38  # finite: fast-math code may assume no infinities
_CHAIN_OPS = {"relax.multiply", "relax.divide", "relax.add", "relax.subtract", "relax.where"}


def pad_pass():
    """Relax pass: the rewrite of the module docstring."""
    from tvm import relax

    from .pipeline import _relax_function_pass

    @relax.expr_functor.mutator
    class Pad(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if _op(call) != "relax.matmul":
                return call
            try:
                padded = self._padded(call)
            except _NoMatch:
                return call
            return call if padded is None else padded

        def _binding(self, expr):
            if not isinstance(expr, relax.Var):
                raise _NoMatch
            bound = self.lookup_binding(expr)
            if bound is None:
                raise _NoMatch
            return bound

        def _padded(self, call):
            p, v = call.args
            soft = self._binding(p)
            if _op(soft) != "relax.nn.softmax" or not _f32(soft, v):
                return None
            scores = soft.args[0]
            rank = len(_shape(scores))
            if int(soft.attrs.axis) % rank != rank - 1:
                return None
            chain, qk = self._chain(scores)
            q, kt = qk.args
            qs, ks, vs = _shape(q), _shape(kt), _shape(v)
            if qs is None or ks is None or vs is None or len(qs) != rank or len(ks) != rank or len(vs) != rank:
                return None
            lq, lk = qs[-2], ks[-1]
            if _static(lq) and _static(lk):
                return None
            if not _same(vs[-2], lk):
                return None
            targets = {rank - 2: (lq, _padded_len(lq)), rank - 1: (lk, _padded_len(lk))}
            s = self.builder_.emit(relax.op.matmul(self._pad(q, {rank - 2: targets[rank - 2]}),
                                                   self._pad(kt, {rank - 1: targets[rank - 1]})))
            for link in chain:
                s = self.builder_.emit(self._replay(link, s, targets, rank))
            s = self.builder_.emit(relax.op.add(s, self._column_bias(lk)))
            probs = self.builder_.emit(relax.op.nn.softmax(s, axis=-1))
            y = self.builder_.emit(relax.op.matmul(probs, self._pad(v, {rank - 2: targets[rank - 1]})))
            if _static(lq):
                return y
            return relax.op.strided_slice(y, axes=[rank - 2], begin=[0], end=[lq], assume_inbound=True)

        def _chain(self, expr):
            """(the elementwise calls from the matmul to the softmax's input, in order; the
            matmul)."""
            chain = []
            while True:
                bound = self._binding(expr)
                if _op(bound) == "relax.matmul":
                    return list(reversed(chain)), bound
                if _op(bound) not in _CHAIN_OPS:
                    raise _NoMatch
                links = [i for i, a in enumerate(bound.args) if _produces_scores(self, a)]
                if len(links) != 1:
                    raise _NoMatch
                chain.append((bound, links[0]))
                expr = bound.args[links[0]]

        def _replay(self, link, s, targets, rank):
            """The chain's call ``link`` with ``s`` for its scores operand and its other operands
            padded where they span a padded axis."""
            call, position = link
            args = []
            for i, arg in enumerate(call.args):
                if i == position:
                    args.append(s)
                    continue
                shape = _shape(arg)
                if shape is None:
                    raise _NoMatch
                pad = {}
                for axis, (length, padded) in targets.items():
                    at = axis - (rank - len(shape))
                    if at < 0 or (_static(shape[at]) and int(shape[at]) == 1):
                        continue
                    if not _same(shape[at], length):
                        raise _NoMatch
                    if not _same(length, padded):
                        pad[at] = (length, padded)
                args.append(self._pad(arg, pad) if pad else arg)
            return relax.Call(call.op, args, call.attrs)

        def _pad(self, x, axes):
            """``x`` with zero (false) entries appended along each axis in ``axes``
            ({axis: (length, padded length)}) that is not already its padded length."""
            axes = {a: t for a, t in axes.items() if not _same(t[0], t[1])}
            if not axes:
                return x
            # call_te takes only string keys and converts tuples of lengths (symbolic ones) itself.
            spec = {str(a): [length, padded] for a, (length, padded) in axes.items()}
            return self.builder_.emit(self.builder_.call_te(_pad_te, x, spec, primfunc_name_hint="attention_pad"))

        def _column_bias(self, lk):
            return self.builder_.emit(self.builder_.call_te(_column_bias_te, lk, _padded_len(lk),
                                                            primfunc_name_hint="attention_key_bias"))

    def _produces_scores(mutator, expr, depth: int = 0) -> bool:
        """Whether ``expr`` is computed from a matmul through chain ops."""
        bound = mutator.lookup_binding(expr) if isinstance(expr, relax.Var) else None
        if bound is None or depth > 16:
            return False
        if _op(bound) == "relax.matmul":
            return True
        return _op(bound) in _CHAIN_OPS and any(_produces_scores(mutator, a, depth + 1) for a in bound.args)

    return _relax_function_pass(Pad, "PadAttention")


class _NoMatch(Exception):
    pass


def _pad_te(x, axes):
    from tvm import te, tirx

    axes = {int(a): tuple(t) for a, t in axes.items()}
    shape = list(x.shape)
    for axis, (_, padded) in axes.items():
        shape[axis] = padded
    zero = tirx.const(0, x.dtype)

    def body(*i):
        inside = tirx.all(*[i[a] < length for a, (length, _) in axes.items()])
        return tirx.if_then_else(inside, x[i], zero)

    return te.compute(shape, body, name="attention_pad")


def _column_bias_te(length, padded):
    from tvm import te, tirx

    return te.compute((padded,), lambda j: tirx.if_then_else(j < length, tirx.const(0.0, "float32"),
                                                            tirx.const(_LOWEST, "float32")), name="attention_key_bias")


def _padded_len(length):
    from tvm import tirx

    if _static(length):
        return length
    return tirx.floordiv(length + PAD - 1, PAD) * PAD


def _op(call) -> str | None:
    import tvm
    from tvm import relax

    if isinstance(call, relax.Call) and isinstance(call.op, tvm.ir.Op):
        return call.op.name
    return None


def _shape(expr):
    values = getattr(getattr(expr.ty, "shape", None), "values", None)
    return None if values is None else list(values)


def _static(value) -> bool:
    from tvm import tirx

    return isinstance(value, (int, tirx.IntImm))


def _same(a, b) -> bool:
    import tvm_ffi

    return tvm_ffi.structural_equal(a, b)


def _f32(*exprs) -> bool:
    return all(str(getattr(e.ty, "dtype", "")) == "float32" for e in exprs)
