"""Our IR ``Graph`` -> a Relax ``IRModule`` (function ``main``), built with ``relax.BlockBuilder``.

``EMITTERS`` is a table from IR op name to a function ``(ctx, node) -> relax expr or list of
exprs`` (one per node output). The op registry's numpy references are the spec: where Relax has a
high-level op with the same semantics it is used, otherwise the emitter composes Relax ops
(attention, hardswish, trunc_div, ...). Weights are bound as ``relax.const``; symbolic dims
become ``tirx.Var``s shared by every input that names them, so one module runs any batch size.

Imports tvm at module level: it is imported only by ``backends.tvm.emit`` (the registry imports
that only when a TVM target is used).
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable

import numpy as np
import tvm
from tvm import relax
from tvm.relax import op as R

from compiler import dims
from compiler.errors import UnsupportedOpError
from compiler.ir import DType, Graph, Node, Value
from compiler.ops.nn import activation_op, adaptive_bins

STAGE = "the TVM backend"


def tvm_dtype(dtype: DType) -> str:
    return np.dtype(dtype.numpy).name  # "float32", "int64", "bool", ...


class LowerContext:
    """The BlockBuilder, the Relax expression of every IR value emitted so far, and the symbolic
    dim variables."""

    def __init__(self, graph: Graph, bb: relax.BlockBuilder):
        self.graph = graph
        self.bb = bb
        self.env: dict[int, relax.Expr] = {}
        self.sym: dict[str, tvm.tirx.Var] = {}
        self.node: Node | None = None
        self.dequantized: list[str] = []

    # values -----------------------------------------------------------------------------------
    def value(self, v: Value | None):
        if v is None:
            return None
        if id(v) not in self.env:
            if not v.is_const:
                raise self.unsupported(f"value {v.name} is used before it is computed")
            array = v.const if v.const.flags.c_contiguous else np.array(v.const, order="C")  # 0-d stays 0-d
            self.env[id(v)] = relax.const(array, tvm_dtype(v.dtype))
        return self.env[id(v)]

    def const(self, array, dtype: DType | str):
        dt = dtype if isinstance(dtype, str) else tvm_dtype(dtype)
        return relax.const(np.asarray(array, dtype=np.dtype(dt)), dt)

    def emit(self, expr):
        return self.bb.emit(expr)

    # symbolic dims ----------------------------------------------------------------------------
    def dim(self, d: dims.Dim):
        """``d`` as a TIR expression: ints stay ints, symbols are shared ``int64`` vars."""
        if isinstance(d, int):
            return d
        return self._dim_expr(ast.parse(str(d), mode="eval").body, str(d))

    def _dim_expr(self, tree, text: str):
        if isinstance(tree, ast.Constant) and isinstance(tree.value, int):
            return tvm.tirx.IntImm("int64", tree.value)
        if isinstance(tree, ast.Name):
            if tree.id not in self.sym:
                self.sym[tree.id] = tvm.tirx.Var(tree.id, "int64")
            return self.sym[tree.id]
        ops = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
               ast.FloorDiv: tvm.tirx.floordiv}
        if isinstance(tree, ast.BinOp) and type(tree.op) in ops:
            return ops[type(tree.op)](self._dim_expr(tree.left, text), self._dim_expr(tree.right, text))
        raise self.unsupported(f"cannot express the symbolic dim '{text}'")

    def shape(self, shape) -> list:
        return [self.dim(d) for d in shape]

    # errors -----------------------------------------------------------------------------------
    def unsupported(self, detail: str) -> UnsupportedOpError:
        node = self.node
        return UnsupportedOpError(node.op if node is not None else "?", stage=STAGE,
                                  location=node.location if node is not None else None, detail=detail)


Emitter = Callable[[LowerContext, Node], object]


# -- unary lowerings (shared by unary emitters and fused activations) ---------------------------
# A lowering maps (ctx, x, dtype, attrs) -> relax expr.
def _f64(fn):
    """``fn`` evaluated in float64 and rounded back (the reference does so for these)."""
    def lower(ctx, x, dtype, attrs):
        y = fn(ctx, R.astype(x, "float64"), DType.float64, attrs)
        return R.astype(y, tvm_dtype(dtype))
    return lower


def _hardsigmoid(ctx, x, dtype, attrs):
    y = R.add(R.divide(x, ctx.const(6, dtype)), ctx.const(0.5, dtype))
    return R.minimum(R.maximum(y, ctx.const(0, dtype)), ctx.const(1, dtype))


def _clamp(ctx, x, dtype, attrs):
    if attrs.get("min") is not None:
        x = R.maximum(x, ctx.const(np.asarray(attrs["min"]).astype(dtype.numpy), dtype))
    if attrs.get("max") is not None:
        x = R.minimum(x, ctx.const(np.asarray(attrs["max"]).astype(dtype.numpy), dtype))
    return x


def _gelu(ctx, x, dtype, attrs):
    approximate = attrs.get("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise ctx.unsupported(f"gelu approximate={approximate!r}")
    if dtype != DType.float32:  # the reference computes in float64
        return _f64(_gelu)(ctx, x, dtype, attrs) if dtype != DType.float64 else \
            (R.nn.gelu if approximate == "none" else R.nn.gelu_tanh)(x)
    return (R.nn.gelu if approximate == "none" else R.nn.gelu_tanh)(x)


def _leaky_relu(ctx, x, dtype, attrs):
    slope = ctx.const(attrs.get("negative_slope", 0.01), dtype)
    return R.where(R.greater_equal(x, ctx.const(0, dtype)), x, R.multiply(x, slope))


def _elu(ctx, x, dtype, attrs):
    alpha, scale, input_scale = (attrs.get(k, 1.0) for k in ("alpha", "scale", "input_scale"))
    neg = R.multiply(ctx.const(alpha, dtype),
                     R.subtract(R.exp(R.multiply(x, ctx.const(input_scale, dtype))), ctx.const(1, dtype)))
    return R.multiply(ctx.const(scale, dtype), R.where(R.greater(x, ctx.const(0, dtype)), x, neg))


def _sigmoid(ctx, x, dtype, attrs):
    return R.sigmoid(x)


def _simple(fn) -> Callable:
    return lambda ctx, x, dtype, attrs: fn(x)


def _log_base(base: float):
    return _f64(lambda ctx, x, dtype, attrs: R.divide(R.log(x), ctx.const(math.log(base), dtype)))


UNARY: dict[str, Callable] = {
    "neg": lambda ctx, x, dt, a: R.subtract(ctx.const(0, dt), x) if dt == DType.uint8 else R.negative(x),
    "abs": _simple(R.abs), "exp": _simple(R.exp), "log": _simple(R.log),
    "sqrt": _simple(R.sqrt), "rsqrt": _simple(R.rsqrt), "sin": _simple(R.sin), "cos": _simple(R.cos),
    "tanh": _simple(R.tanh), "erf": _simple(R.erf), "floor": _simple(R.floor), "ceil": _simple(R.ceil),
    "tan": _simple(R.tan), "asin": _simple(R.asin), "acos": _simple(R.acos), "atan": _simple(R.atan),
    # TVM's llvm codegen has no sinh/cosh intrinsic: exp form, in float64 (no cancellation issue near 0
    # at float32 precision)
    "sinh": _f64(lambda ctx, x, dt, a: R.multiply(R.subtract(R.exp(x), R.exp(R.negative(x))), ctx.const(0.5, dt))),
    "cosh": _f64(lambda ctx, x, dt, a: R.multiply(R.add(R.exp(x), R.exp(R.negative(x))), ctx.const(0.5, dt))),
    "asinh": _simple(R.asinh), "acosh": _simple(R.acosh),
    "atanh": _simple(R.atanh), "round": _simple(R.round), "trunc": _simple(R.trunc),
    "isinf": _simple(R.isinf), "logical_not": _simple(R.logical_not),
    "reciprocal": lambda ctx, x, dt, a: R.divide(ctx.const(1, dt), x),
    "relu": lambda ctx, x, dt, a: R.maximum(x, ctx.const(0, dt)),
    "sigmoid": _sigmoid,
    "silu": lambda ctx, x, dt, a: R.multiply(x, R.sigmoid(x)),
    "hardsigmoid": _hardsigmoid,
    "hardswish": lambda ctx, x, dt, a: R.multiply(x, _hardsigmoid(ctx, x, dt, a)),
    "gelu": _gelu, "clamp": _clamp, "leaky_relu": _leaky_relu, "elu": _elu,
    "expm1": _f64(lambda ctx, x, dt, a: R.subtract(R.exp(x), ctx.const(1, dt))),
    "log1p": _f64(lambda ctx, x, dt, a: R.log(R.add(x, ctx.const(1, dt)))),
    "log2": _log_base(2.0), "log10": _log_base(10.0),
}


def _unary_emitter(op: str) -> Emitter:
    def emit(ctx, node):
        x = node.inputs[0]
        return UNARY[op](ctx, ctx.value(x), x.dtype, node.attrs)
    return emit


def apply_activation(ctx, y, dtype: DType, node: Node):
    """The fused activation of a linear/conv node (none: ``y`` unchanged)."""
    act = node.attrs.get("activation") or ""
    if not act:
        return y
    op, attrs = activation_op(act, tuple(node.attrs.get("activation_args") or ()))
    return UNARY[op](ctx, ctx.emit(y), dtype, attrs)


def emit_cast(ctx, node):
    x, dst = node.inputs[0], node.attrs["dtype"]
    if dst == DType.bool:  # nonzero test, not a bit truncation
        return R.not_equal(ctx.value(x), ctx.const(0, x.dtype))
    return R.astype(ctx.value(x), tvm_dtype(dst))


# -- binary ------------------------------------------------------------------------------------
def _binary_emitter(fn, bool_fn=None) -> Emitter:
    def emit(ctx, node):
        a, b = (ctx.value(v) for v in node.inputs)
        if bool_fn is not None and node.inputs[0].dtype == DType.bool:
            return bool_fn(a, b)
        return fn(a, b)
    return emit


def _trunc_div(ctx, node):
    a, b = (ctx.value(v) for v in node.inputs)
    dtype = node.inputs[0].dtype
    if dtype.is_float:
        return R.trunc(R.divide(a, b))
    # floor quotient, plus one where the division is inexact and the signs differ
    q = ctx.emit(R.floor_divide(a, b))
    zero = ctx.const(0, dtype)
    inexact = R.not_equal(R.floor_mod(a, b), zero)
    signs_differ = R.logical_xor(R.less(a, zero), R.less(b, zero))  # not_equal on bools fails LLVM verification
    return R.where(R.logical_and(inexact, signs_differ), R.add(q, ctx.const(1, dtype)), q)


def _fmod(ctx, node):
    a, b = (ctx.value(v) for v in node.inputs)
    if node.inputs[0].dtype.is_float:
        return R.subtract(a, R.multiply(R.trunc(R.divide(a, b)), b))
    q = ctx.emit(_trunc_div(ctx, node))
    return R.subtract(a, R.multiply(q, b))


def emit_pow(ctx, node):
    a, b = (ctx.value(v) for v in node.inputs)
    dtype = node.inputs[0].dtype
    if dtype.is_float:
        return R.power(a, b)
    # integer power via float64 (exact for the magnitudes int tensors hold in practice)
    return R.astype(R.round(R.power(R.astype(a, "float64"), R.astype(b, "float64"))), tvm_dtype(dtype))


def emit_where(ctx, node):
    c, a, b = (ctx.value(v) for v in node.inputs)
    return R.where(c, a, b)


# -- reductions --------------------------------------------------------------------------------
def _axes(axes, rank: int):
    if rank == 0:
        return None
    if not axes:
        return list(range(rank))
    return sorted({a % rank for a in axes})


def _reduce_emitter(fn) -> Emitter:
    def emit(ctx, node):
        x = node.inputs[0]
        axes = _axes(node.attrs.get("axes", ()), len(x.shape))
        if axes is None:
            return ctx.value(x)
        xv = ctx.value(x)
        if x.dtype == DType.bool:  # in bool, sum/max are "any" and prod/min are "all"
            any_ = fn in (R.sum, R.max)
            y = (R.max if any_ else R.min)(R.astype(xv, "uint8"), axes, node.attrs.get("keepdim", False))
            return R.astype(y, "bool")
        return fn(xv, axes, node.attrs.get("keepdim", False))
    return emit


def emit_argmax(ctx, node):
    x = node.inputs[0]
    return R.argmax(ctx.value(x), node.attrs["axis"] % max(len(x.shape), 1), node.attrs.get("keepdim", False))


def emit_cumsum(ctx, node):
    x = node.inputs[0]
    if len(x.shape) == 0:
        return ctx.value(x)
    return R.cumsum(ctx.value(x), node.attrs["axis"] % len(x.shape), tvm_dtype(x.dtype))


def emit_cumprod(ctx, node):
    x = node.inputs[0]
    if len(x.shape) == 0:
        return ctx.value(x)
    return R.cumprod(ctx.value(x), node.attrs["axis"] % len(x.shape), tvm_dtype(x.dtype))


# -- shape ops ---------------------------------------------------------------------------------
def emit_reshape(ctx, node):
    out = node.output
    if any(d == 0 for d in out.shape):  # Relax reads a 0 in a new shape as "keep this dim"
        return R.zeros(ctx.shape(out.shape), tvm_dtype(out.dtype))
    return R.reshape(ctx.value(node.inputs[0]), ctx.shape(node.output.shape))


def emit_transpose(ctx, node):
    return R.permute_dims(ctx.value(node.inputs[0]), list(node.attrs["perm"]))


def emit_concat(ctx, node):
    rank = len(node.output.shape)
    return R.concat([ctx.value(v) for v in node.inputs], node.attrs["axis"] % rank)


def emit_slice(ctx, node):
    x = node.inputs[0]
    axis = node.attrs["axis"] % len(x.shape)
    start, end, step = node.attrs.get("start", 0), node.attrs.get("end", 2 ** 63 - 1), node.attrs.get("step", 1)
    n = x.shape[axis]
    if isinstance(n, int):  # Python slice semantics, resolved here
        start, end, step = slice(start, end, step).indices(n)
        if len(range(start, end, step)) == 0:
            start, end = 0, 0
    else:
        end = min(end, 2 ** 62)  # TVM clamps to the dim at run time
    return R.strided_slice(ctx.value(x), [axis], [start], [end], [step], assume_inbound=False)


def emit_gather(ctx, node):
    x, idx = node.inputs
    axis = node.attrs.get("axis", 0) % len(x.shape)
    iv = ctx.value(idx)
    if idx.dtype != DType.int64:
        iv = ctx.emit(R.astype(iv, "int64"))
    if idx.dtype != DType.uint8:  # negative indices count from the end, as numpy
        n = ctx.emit(R.full((), _dim_value(ctx, x.shape[axis]), "int64")) if not isinstance(x.shape[axis], int) \
            else ctx.const(x.shape[axis], "int64")
        iv = ctx.emit(R.where(R.less(iv, ctx.const(0, "int64")), R.add(iv, n), iv))
    return R.take(ctx.value(x), iv, axis, mode="clip")


def _dim_value(ctx, d):
    return relax.prim_value(ctx.dim(d))


def emit_expand(ctx, node):
    return R.broadcast_to(ctx.value(node.inputs[0]), ctx.shape(node.attrs["shape"]))


def emit_flip(ctx, node):
    x = ctx.value(node.inputs[0])
    for a in node.attrs["axes"]:
        x = ctx.emit(R.flip(x, a % len(node.output.shape)))
    return x


_PAD_MODES = ("constant", "reflect", "replicate", "circular")


def emit_pad(ctx, node):
    x = node.inputs[0]
    mode, pads, rank = node.attrs.get("mode", "constant"), list(node.attrs["pads"]), len(x.shape)
    if mode not in _PAD_MODES:
        raise ctx.unsupported(f"pad mode {mode!r} (supported: {', '.join(_PAD_MODES)})")
    if mode in ("constant", "reflect"):
        widths = [w for i in range(rank) for w in (pads[i], pads[rank + i])]
        value = float(np.asarray(node.attrs.get("value", 0.0)).astype(x.dtype.numpy))  # the reference casts too
        return R.nn.pad(ctx.value(x), widths, mode, value)
    # replicate / circular: concatenate edge slices per axis (Relax's "edge" mode pads zeros here)
    y = ctx.value(x)
    for axis in range(rank):
        before, after, n = pads[axis], pads[rank + axis], x.shape[axis]
        if not (before or after):
            continue
        if not isinstance(n, int):
            raise ctx.unsupported(f"{mode} padding of a symbolic dim")
        pieces = [_pad_piece(ctx, y, axis, n, before, mode, front=True), y,
                  _pad_piece(ctx, y, axis, n, after, mode, front=False)]
        y = ctx.emit(R.concat([p for p in pieces if p is not None], axis))
    return y


def _pad_piece(ctx, y, axis: int, n: int, width: int, mode: str, *, front: bool):
    if width == 0:
        return None
    if mode == "circular":
        begin, end = (n - width, n) if front else (0, width)
        return ctx.emit(R.strided_slice(y, [axis], [begin], [end]))
    edge = ctx.emit(R.strided_slice(y, [axis], [0 if front else n - 1], [1 if front else n]))
    return ctx.emit(R.repeat(edge, width, axis))


def _nonneg_index(ctx, x: Value, idx: Value, axis: int):
    """int64 indices along ``axis`` of ``x`` with negative ones counted from the end."""
    iv = ctx.emit(R.astype(ctx.value(idx), "int64"))
    n = x.shape[axis]
    if not isinstance(n, int):
        raise ctx.unsupported("negative indices along a symbolic dim")
    return ctx.emit(R.where(R.less(iv, ctx.const(0, "int64")), R.add(iv, ctx.const(n, "int64")), iv))


def emit_gather_elements(ctx, node):
    x, idx = node.inputs
    axis = node.attrs.get("axis", 0) % len(x.shape)
    return R.gather_elements(ctx.value(x), _nonneg_index(ctx, x, idx, axis), axis)


_SCATTER = {"none": "update", "add": "add", "mul": "mul", "max": "max", "min": "min"}


def emit_scatter_elements(ctx, node):
    """ONNX ScatterElements semantics (reductions include the existing values, as torch's
    include_self=True); a ``src`` larger than the index is cut to its leading part."""
    x, idx, src = node.inputs
    axis = node.attrs.get("axis", 0) % len(x.shape)
    reduction = node.attrs.get("reduction", "none")
    if reduction not in _SCATTER:
        raise ctx.unsupported(f"scatter reduction {reduction!r}")
    sv = ctx.value(src)
    if tuple(src.shape) != tuple(idx.shape):
        sv = ctx.emit(R.strided_slice(sv, list(range(len(idx.shape))), [0] * len(idx.shape), ctx.shape(idx.shape)))
    return R.scatter_elements(ctx.value(x), _nonneg_index(ctx, x, idx, axis), sv, axis, _SCATTER[reduction])


def _index_layout(ctx, x: Value, indices: list, axes_attr):
    """The pieces numpy advanced indexing shares between index and index_put: x with the indexed
    axes moved to the front and flattened into one (and the permutation used), the flat int64
    index (broadcast shape), and where the broadcast dims go in the result."""
    rank = len(x.shape)
    axes = [a % rank for a in axes_attr]
    sizes = [x.shape[a] for a in axes]
    if not all(isinstance(n, int) for n in sizes):
        raise ctx.unsupported("indexing along a symbolic dim")
    rest = [i for i in range(rank) if i not in axes]
    perm = axes + rest
    xv = ctx.emit(R.permute_dims(ctx.value(x), perm))
    xv = ctx.emit(R.reshape(xv, [int(np.prod(sizes))] + ctx.shape([x.shape[i] for i in rest])))
    flat = None
    for idx, a, n in zip(indices, axes, sizes):
        term = _nonneg_index(ctx, x, idx, a)
        flat = term if flat is None else ctx.emit(R.add(R.multiply(flat, ctx.const(n, "int64")), term))
    adjacent = axes == list(range(min(axes), min(axes) + len(axes)))
    first = min(axes) if adjacent else 0  # numpy puts the broadcast dims there
    return xv, perm, flat, first, rest


def _front_to(first: int, nb: int, rank: int) -> list[int]:
    """The permutation taking [broadcast dims (nb), other dims] to broadcast dims at ``first``."""
    return list(range(nb, nb + first)) + list(range(nb)) + list(range(nb + first, rank))


def emit_index(ctx, node):
    """numpy advanced indexing composed from take: the indexed axes moved to the front and
    flattened into one, the broadcast indices turned into one flat index, then the broadcast
    dims moved to where numpy puts them (in place of adjacent indexed axes, else in front)."""
    x, indices = node.inputs[0], list(node.inputs[1:])
    xv, _, flat, first, rest = _index_layout(ctx, x, indices, node.attrs["axes"])
    y = ctx.emit(R.take(xv, flat, 0, mode="clip"))
    out_rank = len(node.output.shape)
    return R.permute_dims(y, _front_to(first, out_rank - len(rest), out_rank)) if first else y


def emit_index_put(ctx, node):
    """x[indices] = values (or += with accumulate): the same layout as index, the values
    broadcast to the indexed result and brought to [broadcast dims, other dims] order, then a
    scatter along the flattened indexed axis (repeated indices: last write / sum, as PyTorch)."""
    x, values, indices = node.inputs[0], node.inputs[1], list(node.inputs[2:])
    rank = len(x.shape)
    xv, perm, flat, first, rest = _index_layout(ctx, x, indices, node.attrs["axes"])
    bshape = list(np.broadcast_shapes(*[tuple(i.shape) for i in indices]))
    nb = len(bshape)
    result_shape = _result_shape(x, bshape, first, rest, first > 0 or _adjacent(node.attrs["axes"], rank))
    vv = ctx.emit(R.broadcast_to(ctx.value(values), ctx.shape(result_shape)))
    if first:
        inv = _front_to(first, nb, len(result_shape))
        vv = ctx.emit(R.permute_dims(vv, [inv.index(d) for d in range(len(result_shape))]))
    n_b = int(np.prod(bshape))
    rest_shape = ctx.shape([x.shape[i] for i in rest])
    vv = ctx.emit(R.reshape(vv, [n_b] + rest_shape))
    fl = ctx.emit(R.reshape(R.broadcast_to(flat, bshape), [n_b] + [1] * len(rest)))
    fl = ctx.emit(R.broadcast_to(fl, [n_b] + rest_shape))
    out = ctx.emit(R.scatter_elements(xv, fl, vv, 0, "add" if node.attrs.get("accumulate") else "update"))
    out = ctx.emit(R.reshape(out, ctx.shape([x.shape[a] for a in perm])))
    return R.permute_dims(out, [perm.index(d) for d in range(rank)])


def _adjacent(axes, rank: int) -> bool:
    axes = [a % rank for a in axes]
    return axes == list(range(min(axes), min(axes) + len(axes)))


def _result_shape(x: Value, bshape: list, first: int, rest: list, adjacent: bool) -> list:
    others = [x.shape[i] for i in rest]
    return others[:first] + bshape + others[first:] if adjacent else bshape + others


def emit_embedding_bag(ctx, node):
    """Bags as a [bags, N] membership matrix of the N index positions (position p belongs to the
    last bag whose offset is <= p; rows equal to padding_idx and, with include_last_offset,
    positions past the last offset belong to none), then a matmul (sum, mean) or a masked max."""
    weight, idx, offsets, psw = (list(node.inputs) + [None])[:4]
    mode, last, pad_idx = node.attrs.get("mode", "mean"), node.attrs.get("include_last_offset", False), \
        node.attrs.get("padding_idx", -1)
    dt = tvm_dtype(weight.dtype)
    n = idx.shape[0]
    iv = ctx.emit(R.astype(ctx.value(idx), "int64"))
    ov = ctx.emit(R.astype(ctx.value(offsets), "int64"))
    pos = ctx.emit(R.arange(0, relax.prim_value(ctx.dim(n)), 1, "int64"))
    starts = ctx.emit(R.strided_slice(ov, [0], [0], [-1])) if last else ov
    ends = ctx.emit(R.concat([R.strided_slice(ov, [0], [1], [2 ** 62]), _full_like_dim(ctx, n)], 0)) \
        if not last else ctx.emit(R.strided_slice(ov, [0], [1], [2 ** 62]))
    inside = R.logical_and(R.less_equal(R.expand_dims(starts, 1), pos), R.less(pos, R.expand_dims(ends, 1)))
    if pad_idx >= 0:
        inside = R.logical_and(inside, R.not_equal(iv, ctx.const(pad_idx, "int64")))
    member = ctx.emit(inside)  # [bags, N]
    rows = ctx.emit(R.take(ctx.value(weight), iv, 0, mode="clip"))  # [N, D]
    if mode == "max":
        masked = ctx.emit(R.max(R.where(R.expand_dims(member, 2), R.expand_dims(rows, 0), ctx.const(-np.inf, dt)), [1]))
        nonempty = R.astype(R.max(R.astype(member, "uint8"), [1], True), "bool")
        return R.where(nonempty, masked, ctx.const(0, dt))  # empty bags give zeros
    m = ctx.emit(R.astype(member, dt))
    if psw is not None:
        rows = ctx.emit(R.multiply(rows, R.expand_dims(ctx.value(psw), 1)))
    total = ctx.emit(R.matmul(m, rows))
    if mode == "sum":
        return total
    count = R.maximum(R.sum(m, [1], True), ctx.const(1, dt))
    return R.divide(total, count)


def _full_like_dim(ctx, n):
    return ctx.emit(R.reshape(R.astype(R.shape_to_tensor(relax.ShapeExpr([ctx.dim(n)])), "int64"), [1])) \
        if not isinstance(n, int) else ctx.const([n], "int64")


def emit_nonzero(ctx, node):
    """Relax's nonzero gives [rank, count] (count known at run time): transposed to [count, rank]."""
    x = node.inputs[0]
    if len(x.shape) == 0:
        raise ctx.unsupported("nonzero of a 0-d tensor")
    coords = ctx.emit(R.nonzero(ctx.value(x)))
    # name the run-time count with the node's symbol so later ops see a shape expression
    coords = ctx.bb.match_cast(coords, relax.TensorType([len(x.shape), ctx.dim(node.attrs["count"])], "int64"))
    return R.permute_dims(coords, [1, 0])


def emit_unique(ctx, node):
    """Relax's unique (sorted) with inverse indices and counts; the run-time size gets the
    node's symbol, the inverse the input's shape."""
    x = node.inputs[0]
    res = ctx.emit(R.unique(R.reshape(ctx.value(x), [-1]), sorted=True, return_index=False, return_inverse=True,
                            return_counts=True, axis=None))
    n = ctx.dim(node.attrs["count"])
    values = ctx.bb.match_cast(ctx.emit(relax.TupleGetItem(res, 0)), relax.TensorType([n], tvm_dtype(x.dtype)))
    inverse = ctx.bb.match_cast(ctx.emit(relax.TupleGetItem(res, 1)), relax.TensorType([_numel(ctx, x)], "int64"))
    counts = ctx.bb.match_cast(ctx.emit(relax.TupleGetItem(res, 2)), relax.TensorType([n], "int64"))
    return [values, R.reshape(inverse, ctx.shape(x.shape)), counts]


def _numel(ctx, x: Value):
    total = 1
    for d in ctx.shape(x.shape):
        total = total * d
    return total


def emit_sort(ctx, node):
    x = node.inputs[0]
    axis = node.attrs.get("axis", -1) % len(x.shape)
    order = ctx.emit(R.argsort(ctx.value(x), axis, bool(node.attrs.get("descending", False)), "int64"))
    return [R.gather_elements(ctx.value(x), order, axis), order]


def emit_topk(ctx, node):
    x = node.inputs[0]
    axis = node.attrs.get("axis", -1) % len(x.shape)
    both = ctx.emit(R.topk(ctx.value(x), node.attrs["k"], axis, "both", bool(node.attrs.get("largest", True)),
                           "int64"))
    return [relax.TupleGetItem(both, 0), relax.TupleGetItem(both, 1)]


# -- matmul / linear / conv --------------------------------------------------------------------
def emit_matmul(ctx, node):
    a, b = node.inputs
    av, bv = ctx.value(a), ctx.value(b)
    squeeze = []
    if len(a.shape) == 1:
        av, squeeze = ctx.emit(R.expand_dims(av, 0)), squeeze + ["a"]
    if len(b.shape) == 1:
        bv, squeeze = ctx.emit(R.expand_dims(bv, 1)), squeeze + ["b"]
    y = R.matmul(av, bv)
    if squeeze:
        y = R.reshape(ctx.emit(y), ctx.shape(node.output.shape))
    return y


def emit_linear(ctx, node):
    x, w, b = (list(node.inputs) + [None])[:3]
    if w.is_const:  # transpose at compile time: the kernel reads W^T row-major
        wt = ctx.const(np.ascontiguousarray(np.asarray(w.const).T), w.dtype)
    else:
        wt = ctx.emit(R.permute_dims(ctx.value(w)))
    xv = ctx.value(x)
    if len(x.shape) == 1:
        y = ctx.emit(R.reshape(R.matmul(R.expand_dims(xv, 0), wt), ctx.shape(node.output.shape)))
    else:
        y = ctx.emit(R.matmul(xv, wt))
    if b is not None:
        y = R.add(y, ctx.value(b))
    return apply_activation(ctx, y, node.output.dtype, node)


_CONV = {1: R.nn.conv1d, 2: R.nn.conv2d, 3: R.nn.conv3d}
_LAYOUT = {1: ("NCW", "OIW"), 2: ("NCHW", "OIHW"), 3: ("NCDHW", "OIDHW")}


def emit_conv(ctx, node):
    x, w, b = (list(node.inputs) + [None])[:3]
    nd = len(w.shape) - 2
    if nd not in _CONV:
        raise ctx.unsupported(f"{nd}-d convolution")
    layout, klayout = _LAYOUT[nd]
    y = ctx.emit(_CONV[nd](ctx.value(x), ctx.value(w), strides=list(node.attrs["stride"]),
                           padding=list(node.attrs["padding"]), dilation=list(node.attrs["dilation"]),
                           groups=node.attrs.get("groups", 1), data_layout=layout, kernel_layout=klayout))
    if b is not None:
        y = R.add(y, R.reshape(ctx.value(b), [-1] + [1] * nd))
    return apply_activation(ctx, y, node.output.dtype, node)


_CONV_T = {1: (R.nn.conv1d_transpose, "NCW", "IOW"), 2: (R.nn.conv2d_transpose, "NCHW", "IOHW"),
           3: (R.nn.conv3d_transpose, "NCDHW", "IODHW")}


def emit_conv_transpose(ctx, node):
    x, w, b = (list(node.inputs) + [None])[:3]
    nd = len(w.shape) - 2
    if nd not in _CONV_T:
        raise ctx.unsupported(f"{nd}-d transposed convolution")
    fn, layout, klayout = _CONV_T[nd]
    y = ctx.emit(fn(ctx.value(x), ctx.value(w), strides=list(node.attrs["stride"]),
                    padding=list(node.attrs["padding"]), output_padding=list(node.attrs["output_padding"]),
                    dilation=list(node.attrs["dilation"]), groups=node.attrs.get("groups", 1),
                    data_layout=layout, kernel_layout=klayout))
    if b is not None:
        y = R.add(y, R.reshape(ctx.value(b), [-1] + [1] * nd))
    return y


# -- normalisation, softmax --------------------------------------------------------------------
def _channel(ctx, v: Value | None, rank: int):
    """A per-channel vector shaped to broadcast over dim 1 of a rank-``rank`` tensor."""
    return R.reshape(ctx.value(v), [-1] + [1] * (rank - 2))


def emit_batch_norm(ctx, node):
    x, mean, var, w, b = (list(node.inputs) + [None, None])[:5]
    dt = x.dtype
    inv = ctx.emit(R.rsqrt(R.add(ctx.value(var), ctx.const(node.attrs.get("eps", 1e-5), dt))))
    scale = inv if w is None else ctx.emit(R.multiply(inv, ctx.value(w)))
    y = R.multiply(R.subtract(ctx.value(x), _channel(ctx, mean, len(x.shape))),
                   R.reshape(scale, [-1] + [1] * (len(x.shape) - 2)))
    if b is not None:
        y = R.add(ctx.emit(y), _channel(ctx, b, len(x.shape)))
    return y


def emit_layer_norm(ctx, node):
    x, w, b = (list(node.inputs) + [None, None])[:3]
    k = node.attrs.get("normalized_ndim", 1)
    norm_shape = x.shape[len(x.shape) - k:]
    if not all(isinstance(d, int) for d in norm_shape):
        raise ctx.unsupported("layer_norm over symbolic dims")
    gamma = ctx.value(w) if w is not None else ctx.const(np.ones(norm_shape), x.dtype)
    beta = ctx.value(b) if b is not None else ctx.const(np.zeros(norm_shape), x.dtype)
    return R.nn.layer_norm(ctx.value(x), gamma, beta, list(range(len(x.shape) - k, len(x.shape))),
                           node.attrs.get("eps", 1e-5))


def emit_group_norm(ctx, node):
    x, w, b = (list(node.inputs) + [None, None])[:3]
    c = x.shape[1]
    gamma = ctx.value(w) if w is not None else ctx.const(np.ones(c), x.dtype)
    beta = ctx.value(b) if b is not None else ctx.const(np.zeros(c), x.dtype)
    return R.nn.group_norm(ctx.value(x), gamma, beta, node.attrs["groups"], 1, list(range(2, len(x.shape))),
                           node.attrs.get("eps", 1e-5))


def emit_softmax(ctx, node):
    x = node.inputs[0]
    return R.nn.softmax(ctx.value(x), node.attrs["axis"] % len(x.shape))


def emit_log_softmax(ctx, node):
    x = node.inputs[0]
    return R.nn.log_softmax(ctx.value(x), node.attrs["axis"] % len(x.shape))


# -- pooling -----------------------------------------------------------------------------------
_MAXPOOL = {1: R.nn.max_pool1d, 2: R.nn.max_pool2d, 3: R.nn.max_pool3d}
_AVGPOOL = {1: R.nn.avg_pool1d, 2: R.nn.avg_pool2d, 3: R.nn.avg_pool3d}
_POOL_LAYOUT = {1: "NCW", 2: "NCHW", 3: "NCDHW"}


def _pool_args(ctx, node):
    nd = len(node.attrs["kernel"])
    if nd not in _MAXPOOL:
        raise ctx.unsupported(f"{nd}-d pooling")
    return nd, {"pool_size": list(node.attrs["kernel"]), "strides": list(node.attrs["stride"]),
                "padding": list(node.attrs["padding"]), "ceil_mode": bool(node.attrs.get("ceil_mode", False)),
                "layout": _POOL_LAYOUT[nd]}


def emit_max_pool(ctx, node):
    nd, args = _pool_args(ctx, node)
    return _MAXPOOL[nd](ctx.value(node.inputs[0]), dilation=list(node.attrs["dilation"]), **args)


def emit_avg_pool(ctx, node):
    nd, args = _pool_args(ctx, node)
    return _AVGPOOL[nd](ctx.value(node.inputs[0]), count_include_pad=bool(node.attrs.get("count_include_pad", True)),
                        **args)


def emit_max_pool_with_indices(ctx, node):
    """A running first-maximum over the kernel offsets: each offset's strided window of the
    input padded with the lowest value, and its compile-time flat input positions (PyTorch's
    indices over the unpadded spatial dims); a later offset wins only when strictly greater."""
    x = node.inputs[0]
    kernel, stride, dilation = list(node.attrs["kernel"]), list(node.attrs["stride"]), list(node.attrs["dilation"])
    padding, nd = list(node.attrs["padding"]), len(node.attrs["kernel"])
    spatial, out = list(x.shape[2:]), list(node.outputs[0].shape[2:])
    if not all(isinstance(d, int) for d in spatial + out):
        raise ctx.unsupported("max pooling indices over symbolic spatial dims")
    need = [(out[i] - 1) * stride[i] + dilation[i] * (kernel[i] - 1) + 1 for i in range(nd)]
    extra = [max(0, need[i] - (spatial[i] + padding[i] + padding[nd + i])) for i in range(nd)]
    low = float(-np.inf) if x.dtype.is_float else float(np.iinfo(x.dtype.numpy).min)
    widths = [0, 0, 0, 0] + [w for i in range(nd) for w in (padding[i], padding[nd + i] + extra[i])]
    padded = ctx.emit(R.nn.pad(ctx.value(x), widths, "constant", low))
    best = idx = None
    for offset in np.ndindex(*kernel):
        begin = [offset[i] * dilation[i] for i in range(nd)]
        win = ctx.emit(R.strided_slice(padded, list(range(2, 2 + nd)), begin,
                                       [begin[i] + (out[i] - 1) * stride[i] + 1 for i in range(nd)], stride))
        flat = np.zeros(out, dtype=np.int64)
        for i in range(nd):
            pos = np.arange(out[i]) * stride[i] - padding[i] + offset[i] * dilation[i]
            flat = flat * spatial[i] + pos.reshape([-1 if j == i else 1 for j in range(nd)])
        pos_c = ctx.const(flat, "int64")
        if best is None:
            best, idx = win, ctx.emit(R.broadcast_to(pos_c, ctx.shape(node.outputs[1].shape)))
            continue
        upd = ctx.emit(R.greater(win, best))
        best = ctx.emit(R.where(upd, win, best))
        idx = ctx.emit(R.where(upd, pos_c, idx))
    return [best, idx]


_ADAPTIVE = {1: R.nn.adaptive_avg_pool1d, 2: R.nn.adaptive_avg_pool2d, 3: R.nn.adaptive_avg_pool3d}


def emit_adaptive_avg_pool(ctx, node):
    size = list(node.attrs["output_size"])
    return _ADAPTIVE[len(size)](ctx.value(node.inputs[0]), size, layout=_POOL_LAYOUT[len(size)])


def emit_adaptive_max_pool(ctx, node):
    """Per spatial axis (max over a box is separable): one slice + max per ``adaptive_bins`` bin,
    concatenated."""
    x = node.inputs[0]
    size = list(node.attrs["output_size"])
    y = ctx.value(x)
    for k, out in enumerate(size):
        axis = len(x.shape) - len(size) + k
        n = x.shape[axis]
        if not isinstance(n, int):
            raise ctx.unsupported("adaptive max pooling of a symbolic spatial dim")
        bins = [ctx.emit(R.max(R.strided_slice(y, [axis], [lo], [hi]), [axis], True))
                for lo, hi in adaptive_bins(n, out)]
        y = ctx.emit(R.concat(bins, axis)) if len(bins) > 1 else bins[0]
    return y


def emit_resize(ctx, node):
    """Resampling is linear and separable: per spatial axis, a matmul with the (out, in)
    interpolation matrix, computed here by running the op's own per-axis reference on an identity
    (so nearest/linear/cubic and align_corners follow the spec exactly)."""
    from compiler.ops.nn import _resize_axis

    x = node.inputs[0]
    sizes, scales = list(node.attrs["sizes"]), list(node.attrs.get("scales") or ())
    rank, dt = len(x.shape), tvm_dtype(x.dtype)
    y = ctx.value(x)
    for i, out in enumerate(sizes):
        axis, n = 2 + i, x.shape[2 + i]
        if not (isinstance(n, int) and isinstance(out, int)):
            raise ctx.unsupported("resize of a symbolic spatial dim")
        m = _resize_axis(np.eye(n)[None, None], 2, out, scales[i] if scales else None, node.attrs.get("mode", "nearest"),
                         bool(node.attrs.get("align_corners", False)))[0, 0]  # (out, n)
        perm = [d for d in range(rank) if d != axis] + [axis]
        moved = ctx.emit(R.matmul(R.permute_dims(y, perm), ctx.const(np.ascontiguousarray(m.T), dt)))
        y = ctx.emit(R.permute_dims(moved, [perm.index(d) for d in range(rank)]))
    return y


def emit_grid_sample(ctx, node):
    """Relax's image.grid_sample (TVM takes the grid as [N, 2, Ho, Wo], PyTorch as [N, Ho, Wo, 2])."""
    x, grid = node.inputs
    g = ctx.emit(R.permute_dims(ctx.value(grid), [0, 3, 1, 2]))
    return R.image.grid_sample(ctx.value(x), g, method=node.attrs.get("mode", "bilinear"), layout="NCHW",
                               padding_mode=node.attrs.get("padding_mode", "zeros"),
                               align_corners=bool(node.attrs.get("align_corners", False)))


# -- attention ---------------------------------------------------------------------------------
def _attention(ctx, q: Value, k: Value, v: Value, mask: Value | None, qv, kv, vv, *, is_causal, scale,
               head_dim, lq, lk):
    dt = q.dtype
    if scale is None:
        if not isinstance(head_dim, int):
            raise ctx.unsupported(f"default scale with a symbolic head dim '{head_dim}' (pass scale explicitly)")
        scale = 1.0 / math.sqrt(head_dim)
    nk = 4 if head_dim is None else len(k.shape)  # multi_head_attention passes 4-d split heads
    kt = ctx.emit(R.permute_dims(kv, list(range(nk - 2)) + [nk - 1, nk - 2]))
    s = ctx.emit(R.multiply(R.matmul(qv, kt), ctx.const(scale, dt)))
    ninf = ctx.const(-np.inf, dt)
    if is_causal:
        if not (isinstance(lq, int) and isinstance(lk, int)):
            raise ctx.unsupported("causal attention over symbolic sequence lengths")
        s = ctx.emit(R.where(ctx.const(np.tril(np.ones((lq, lk), dtype=bool)), "bool"), s, ninf))
    if mask is not None:
        mv = ctx.value(mask)
        s = ctx.emit(R.where(mv, s, ninf) if mask.dtype == DType.bool else R.add(s, mv))
    p = ctx.emit(R.nn.softmax(s, -1))
    return R.matmul(p, vv)


def emit_attention(ctx, node):
    q, k, v, mask = (list(node.inputs) + [None])[:4]
    return _attention(ctx, q, k, v, mask, ctx.value(q), ctx.value(k), ctx.value(v),
                      is_causal=node.attrs.get("is_causal", False), scale=node.attrs.get("scale"),
                      head_dim=q.shape[-1], lq=q.shape[-2], lk=k.shape[-2])


def _split_heads(ctx, x: Value, heads: int):
    b, s, e = ctx.shape(x.shape)
    y = ctx.emit(R.reshape(ctx.value(x), [b, s, heads, e // heads]))
    return ctx.emit(R.permute_dims(y, [0, 2, 1, 3]))


def emit_multi_head_attention(ctx, node):
    q, k, v = node.inputs
    h = node.attrs["num_heads"]
    y = _attention(ctx, q, k, v, None, _split_heads(ctx, q, h), _split_heads(ctx, k, h), _split_heads(ctx, v, h),
                   is_causal=False, scale=node.attrs["scale"], head_dim=None, lq=None, lk=None)
    y = ctx.emit(R.permute_dims(ctx.emit(y), [0, 2, 1, 3]))
    return R.reshape(y, ctx.shape(node.output.shape))


def emit_qkv_attention(ctx, node):
    """One matmul for the packed projection, [B, S, 3E] -> [3, B, H, S, D], then the heads'
    attention as multi_head_attention lowers it."""
    x, w, b = (list(node.inputs) + [None])[:3]
    h = node.attrs["num_heads"]
    if w.is_const:  # transpose at compile time: the kernel reads W^T row-major
        wt = ctx.const(np.ascontiguousarray(np.asarray(w.const).T), w.dtype)
    else:
        wt = ctx.emit(R.permute_dims(ctx.value(w)))
    qkv = ctx.emit(R.matmul(ctx.value(x), wt))
    if b is not None:
        qkv = ctx.emit(R.add(qkv, ctx.value(b)))
    bsz, s, _ = ctx.shape(x.shape)
    e = w.shape[0] // 3
    heads = ctx.emit(R.permute_dims(ctx.emit(R.reshape(qkv, [bsz, s, 3, h, e // h])), [2, 0, 3, 1, 4]))
    q, k, v = (ctx.emit(R.squeeze(R.strided_slice(heads, [0], [i], [i + 1]), [0])) for i in range(3))
    y = _attention(ctx, x, x, x, None, q, k, v, is_causal=False, scale=node.attrs["scale"], head_dim=None,
                   lq=None, lk=None)
    y = ctx.emit(R.permute_dims(ctx.emit(y), [0, 2, 1, 3]))
    return R.reshape(y, ctx.shape(node.output.shape))


# -- quantization (ONNX QuantizeLinear / DequantizeLinear semantics, see compiler/ops/quant.py) ----
def _per_channel(ctx, p: Value, axis: int, rank: int, dtype: str):
    """A 0-d (per tensor) or 1-d (per channel along ``axis``) parameter in ``dtype``, shaped to
    broadcast against a rank-``rank`` tensor."""
    v = ctx.emit(R.astype(ctx.value(p), dtype))
    if len(p.shape) == 0 or rank == 0:
        return v
    return R.reshape(v, [-1] + [1] * (rank - 1 - axis % rank))


def emit_quantize_linear(ctx, node):
    """saturate(round_half_even(x / scale) + zero_point): the division and rounding in float32
    (as the reference), the zero point and saturation in float64 (exact for int32 outputs)."""
    x, scale, zp = (list(node.inputs) + [None])[:3]
    rank, axis = len(x.shape), node.attrs.get("axis", 1)
    info = np.iinfo(node.output.dtype.numpy)
    y = ctx.emit(R.astype(R.round(R.divide(ctx.value(x), _per_channel(ctx, scale, axis, rank, "float32"))), "float64"))
    if zp is not None:
        y = ctx.emit(R.add(y, _per_channel(ctx, zp, axis, rank, "float64")))
    y = R.minimum(R.maximum(y, ctx.const(info.min, "float64")), ctx.const(info.max, "float64"))
    return R.astype(y, tvm_dtype(node.output.dtype))


def emit_dequantize_linear(ctx, node):
    """(x - zero_point) * scale: the shift in int64 (exact), the product in float32. Blocked
    (int4-weight) parameters are repeated block_size times along the axis, explicitly in float:
    int4 values stay in their int8 storage here."""
    x, scale, zp = (list(node.inputs) + [None])[:3]
    rank, axis = len(x.shape), node.attrs.get("axis", 1)
    block_size = node.attrs.get("block_size")

    def param(p: Value, dtype: str):
        if block_size:
            return _per_block(ctx, p, axis % rank, x.shape[axis % rank], block_size, dtype)
        return _per_channel(ctx, p, axis, rank, dtype)

    xv = ctx.emit(R.astype(ctx.value(x), "int64"))
    if zp is not None:
        xv = ctx.emit(R.subtract(xv, param(zp, "int64")))
    return R.multiply(R.astype(xv, "float32"), param(scale, "float32"))


def _per_block(ctx, p: Value, axis: int, size, block_size: int, dtype: str):
    """A blocked parameter (one entry per ``block_size`` elements along ``axis``) repeated to
    x's ``size`` along ``axis``; the last block may be cut short."""
    if not isinstance(size, int):
        raise ctx.unsupported("a blocked dequantize along a dimension of unknown size")
    v = ctx.emit(R.repeat(ctx.emit(R.astype(ctx.value(p), dtype)), block_size, axis))
    return ctx.emit(R.strided_slice(v, [axis], [0], [size]))


def emit_dynamic_quantize_linear(ctx, node):
    """uint8 scale and zero point from the range of x widened to 0 (scale 1 when the range is
    empty), then quantize_linear with them."""
    xv = ctx.value(node.inputs[0])
    f = lambda v: ctx.const(v, "float32")
    lo = ctx.emit(R.minimum(R.min(xv), f(0)))
    hi = ctx.emit(R.maximum(R.max(xv), f(0)))
    scale = ctx.emit(R.where(R.equal(hi, lo), f(1), R.divide(R.subtract(hi, lo), f(255))))
    zp = ctx.emit(R.minimum(R.maximum(R.round(R.subtract(f(0), R.divide(lo, scale))), f(0)), f(255)))
    q = R.minimum(R.maximum(R.add(R.round(R.divide(xv, scale)), zp), f(0)), f(255))
    return [R.astype(q, "uint8"), scale, R.astype(zp, "uint8")]


def emit_matmul_integer(ctx, node):
    """(a - a_zp) @ (b - b_zp) in int32 (wraps like the reference's int64 -> int32 cast)."""
    a, b, azp, bzp = (list(node.inputs) + [None, None])[:4]
    av = ctx.emit(R.astype(ctx.value(a), "int32"))
    bv = ctx.emit(R.astype(ctx.value(b), "int32"))
    if azp is not None:
        z = R.astype(ctx.value(azp), "int32")
        av = ctx.emit(R.subtract(av, R.reshape(z, [-1, 1]) if len(azp.shape) == 1 else z))
    if bzp is not None:
        bv = ctx.emit(R.subtract(bv, R.astype(ctx.value(bzp), "int32")))
    return R.matmul(av, bv)


EMITTERS: dict[str, Emitter] = {
    **{op: _unary_emitter(op) for op in UNARY},
    "cast": emit_cast,
    # bool + bool is "or" and bool * bool is "and" in PyTorch; LLVM has no bool arithmetic
    "add": _binary_emitter(R.add, R.logical_or), "sub": _binary_emitter(R.subtract),
    "mul": _binary_emitter(R.multiply, R.logical_and),
    "div": _binary_emitter(R.divide), "pow": emit_pow,
    "maximum": _binary_emitter(R.maximum, R.logical_or), "minimum": _binary_emitter(R.minimum, R.logical_and),
    "eq": _binary_emitter(R.equal, lambda a, b: R.logical_not(R.logical_xor(a, b))),
    "ne": _binary_emitter(R.not_equal, R.logical_xor),
    "lt": _binary_emitter(R.less, lambda a, b: R.logical_and(R.logical_not(a), b)),
    "le": _binary_emitter(R.less_equal, lambda a, b: R.logical_or(R.logical_not(a), b)),
    "gt": _binary_emitter(R.greater, lambda a, b: R.logical_and(a, R.logical_not(b))),
    "ge": _binary_emitter(R.greater_equal, lambda a, b: R.logical_or(a, R.logical_not(b))),
    "logical_and": _binary_emitter(R.logical_and), "logical_or": _binary_emitter(R.logical_or),
    "bitwise_and": _binary_emitter(R.bitwise_and, R.logical_and),
    "bitwise_or": _binary_emitter(R.bitwise_or, R.logical_or),
    "bitwise_xor": _binary_emitter(R.bitwise_xor, R.logical_xor),
    "floor_div": _binary_emitter(R.floor_divide), "remainder": _binary_emitter(R.floor_mod),
    "trunc_div": _trunc_div, "fmod": _fmod, "atan2": _binary_emitter(R.atan2),
    "where": emit_where,
    "reduce_sum": _reduce_emitter(R.sum), "reduce_mean": _reduce_emitter(R.mean),
    "reduce_max": _reduce_emitter(R.max), "reduce_min": _reduce_emitter(R.min),
    "reduce_prod": _reduce_emitter(R.prod), "argmax": emit_argmax, "cumsum": emit_cumsum, "cumprod": emit_cumprod,
    "reshape": emit_reshape, "transpose": emit_transpose, "concat": emit_concat, "slice": emit_slice,
    "gather": emit_gather, "expand": emit_expand, "flip": emit_flip, "pad": emit_pad,
    "gather_elements": emit_gather_elements, "scatter_elements": emit_scatter_elements, "index": emit_index,
    "index_put": emit_index_put, "unique": emit_unique, "nonzero": emit_nonzero, "embedding_bag": emit_embedding_bag,
    "sort": emit_sort, "topk": emit_topk, "conv_transpose": emit_conv_transpose,
    "matmul": emit_matmul, "linear": emit_linear, "conv": emit_conv,
    "batch_norm": emit_batch_norm, "layer_norm": emit_layer_norm, "group_norm": emit_group_norm,
    "softmax": emit_softmax, "log_softmax": emit_log_softmax,
    "max_pool": emit_max_pool, "avg_pool": emit_avg_pool, "adaptive_avg_pool": emit_adaptive_avg_pool,
    "adaptive_max_pool": emit_adaptive_max_pool, "max_pool_with_indices": emit_max_pool_with_indices,
    "resize": emit_resize, "grid_sample": emit_grid_sample,
    "attention": emit_attention, "multi_head_attention": emit_multi_head_attention,
    "qkv_attention": emit_qkv_attention,
    "quantize_linear": emit_quantize_linear, "dequantize_linear": emit_dequantize_linear,
    "dynamic_quantize_linear": emit_dynamic_quantize_linear, "matmul_integer": emit_matmul_integer,
}


def supported_ops() -> set[str]:
    return set(EMITTERS)


# -- the module --------------------------------------------------------------------------------
def to_relax(graph: Graph) -> tuple[tvm.IRModule, dict]:
    """The Relax module computing ``graph`` (function ``main``: the graph inputs in order, a
    tuple of the graph outputs) and lowering notes for target_info."""
    bb = relax.BlockBuilder()
    ctx = LowerContext(graph, bb)
    params = []
    for v in graph.inputs:
        var = relax.Var(v.name, relax.TensorType(ctx.shape(v.shape), tvm_dtype(v.dtype)))
        ctx.env[id(v)] = var
        params.append(var)
    with bb.function("main", params):
        with bb.dataflow():
            for node in graph.nodes:
                _emit_node(ctx, node)
            ctx.node = None
            outs = [ctx.value(v) for v in graph.outputs]
            # One output: the tensor itself (the VM then returns it without a wrapping Array,
            # which costs a microsecond or two per call to unpack).
            result = bb.emit_output(outs[0] if len(outs) == 1 else relax.Tuple(outs))
        bb.emit_func_output(result)
    return bb.get(), {"dequantized": ctx.dequantized}


def _emit_node(ctx: LowerContext, node: Node) -> None:
    ctx.node = node
    emitter = EMITTERS.get(node.op)
    if emitter is None:
        raise ctx.unsupported("the TVM backend has no emitter for this op")
    try:
        result = emitter(ctx, node)
    except (UnsupportedOpError, ValueError, TypeError) as exc:
        if isinstance(exc, UnsupportedOpError):
            raise
        raise ctx.unsupported(f"Relax rejected it ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") \
            from exc
    results = result if isinstance(result, (list, tuple)) else [result]
    for out, expr in zip(node.outputs, results):
        ctx.env[id(out)] = ctx.emit(expr) if not isinstance(expr, relax.Var) else expr


__all__ = ["EMITTERS", "STAGE", "LowerContext", "supported_ops", "to_relax", "tvm_dtype"]
