"""ATen overload -> IR handlers for the PyTorch frontend.

Each handler reads an FX node's arguments and emits a few IR nodes through the ImportContext.
PyTorch's type promotion is made explicit here: an elementwise op's inputs are cast to the
dtype torch recorded for its result, so IR ops always see one dtype.
"""

from __future__ import annotations

import operator

import numpy as np
import torch

from compiler import dims
from compiler.frontend import ImportContext, arg, handles, torch_dtype
from compiler.ir import DType, Value

Node = torch.fx.Node


# -- identity-like ---------------------------------------------------------------------------------
@handles("aten.clone.default", "aten.contiguous.default", "aten.alias.default", "aten.detach.default",
         "aten.dropout.default", "aten.feature_dropout.default", "aten.lift_fresh_copy.default",
         "aten.lift_fresh.default")
def _identity(ctx: ImportContext, node: Node):
    return ctx.value(node.args[0])


@handles("aten._assert_tensor_metadata.default", "aten._assert_scalar.default",
         "aten.sym_constrain_range_for_size.default", "aten._assert_async.msg")
def _assertion(ctx: ImportContext, node: Node):
    return None  # shape guards checked at export time; nothing to compute


@handles("aten.sym_size.int")
def _sym_size(ctx: ImportContext, node: Node):
    return ctx.dim(node.meta["val"])


@handles("getitem")
def _getitem(ctx: ImportContext, node: Node):
    source, index = node.args
    values = ctx.value(source)
    if not isinstance(values, (tuple, list)):
        raise ctx.unsupported("indexing a non-tuple result")
    result = values[index]
    if result is None:
        raise ctx.unsupported(f"output {index} of {source.target} is not supported (e.g. pooling indices)")
    return result


# -- casts -----------------------------------------------------------------------------------------
@handles("aten._to_copy.default", "aten.to.dtype", "aten.to.dtype_layout", "aten.type_as.default",
         "aten.to.device")
def _to(ctx: ImportContext, node: Node):
    return ctx.tensor(node.args[0], ctx.out_dtype())


# -- elementwise -----------------------------------------------------------------------------------
def _unary(op: str, *names: str, **fixed):
    @handles(*names)
    def handler(ctx: ImportContext, node: Node):
        return ctx.emit(op, ctx.tensor(node.args[0], ctx.out_dtype()), **fixed)

    return handler


_unary("relu", "aten.relu.default", "aten.relu_.default")
_unary("sigmoid", "aten.sigmoid.default")
_unary("tanh", "aten.tanh.default")
_unary("exp", "aten.exp.default")
_unary("log", "aten.log.default")
_unary("sqrt", "aten.sqrt.default")
_unary("rsqrt", "aten.rsqrt.default")
_unary("reciprocal", "aten.reciprocal.default")
_unary("neg", "aten.neg.default")
_unary("abs", "aten.abs.default")
_unary("erf", "aten.erf.default")
_unary("sin", "aten.sin.default")
_unary("cos", "aten.cos.default")
_unary("floor", "aten.floor.default")
_unary("ceil", "aten.ceil.default")
_unary("silu", "aten.silu.default", "aten.silu_.default")
_unary("hardswish", "aten.hardswish.default", "aten.hardswish_.default")
_unary("hardsigmoid", "aten.hardsigmoid.default", "aten.hardsigmoid_.default")
_unary("logical_not", "aten.logical_not.default")
for _name in ("tan", "asin", "acos", "atan", "sinh", "cosh", "asinh", "acosh", "atanh", "expm1", "log1p",
              "log2", "log10", "trunc"):
    _unary(_name, f"aten.{_name}.default")
_unary("trunc", "aten.fix.default")
_unary("round", "aten.round.default")


@handles("aten.round.decimals")
def _round_decimals(ctx: ImportContext, node: Node):
    """torch.round(x, decimals=d): round(x * 10^d) / 10^d, or round(x / 10^-d) * 10^-d for d < 0,
    in x's dtype, as PyTorch computes it."""
    x = ctx.tensor(node.args[0], ctx.out_dtype())
    decimals = int(arg(node, 1, "decimals", 0))
    if not x.dtype.is_float:
        raise ctx.unsupported(f"round with decimals of {x.dtype}")
    scale = ctx.tensor(10.0 ** abs(decimals), x.dtype)
    if decimals >= 0:
        return ctx.emit("div", ctx.emit("round", ctx.emit("mul", x, scale)), scale)
    return ctx.emit("mul", ctx.emit("round", ctx.emit("div", x, scale)), scale)


@handles("aten.isinf.default")
def _isinf(ctx: ImportContext, node: Node):
    return ctx.emit("isinf", ctx.tensor(node.args[0]))


@handles("aten.elu.default", "aten.elu_.default")
def _elu(ctx: ImportContext, node: Node):
    alpha, scale, input_scale = (float(arg(node, i, name, 1.0)) for i, name in
                                 ((1, "alpha"), (2, "scale"), (3, "input_scale")))
    return ctx.emit("elu", ctx.tensor(node.args[0], ctx.out_dtype()), alpha=alpha, scale=scale,
                    input_scale=input_scale)


@handles("aten.gelu.default")
def _gelu(ctx: ImportContext, node: Node):
    return ctx.emit("gelu", ctx.tensor(node.args[0]), approximate=arg(node, 1, "approximate", "none"))


@handles("aten.leaky_relu.default", "aten.leaky_relu_.default")
def _leaky_relu(ctx: ImportContext, node: Node):
    return ctx.emit("leaky_relu", ctx.tensor(node.args[0]), negative_slope=float(arg(node, 1, "negative_slope", 0.01)))


@handles("aten.clamp.default", "aten.clamp_.default", "aten.hardtanh.default", "aten.hardtanh_.default",
         "aten.relu6.default")
def _clamp(ctx: ImportContext, node: Node):
    name = str(node.target)
    if "hardtanh" in name:
        lo, hi = arg(node, 1, "min_val", -1.0), arg(node, 2, "max_val", 1.0)
    elif "relu6" in name:
        lo, hi = 0.0, 6.0
    else:
        lo, hi = arg(node, 1, "min"), arg(node, 2, "max")
    for bound in (lo, hi):
        if bound is not None and not isinstance(bound, (int, float)):
            raise ctx.unsupported("clamp with tensor bounds")
    x = ctx.tensor(node.args[0], ctx.out_dtype())
    return ctx.emit("clamp", x, min=None if lo is None else float(lo), max=None if hi is None else float(hi))


def _binary(op: str, *names: str):
    @handles(*names)
    def handler(ctx: ImportContext, node: Node):
        dtype = ctx.out_dtype()
        a, b = ctx.tensor(node.args[0], dtype), ctx.tensor(node.args[1], dtype)
        alpha = node.kwargs.get("alpha", 1)
        if alpha != 1:
            b = ctx.emit("mul", b, ctx.tensor(alpha, dtype))
        return ctx.emit(op, a, b)

    return handler


_binary("add", "aten.add.Tensor", "aten.add.Scalar", "aten.add_.Tensor")
_binary("sub", "aten.sub.Tensor", "aten.sub.Scalar")
_binary("mul", "aten.mul.Tensor", "aten.mul.Scalar", "aten.mul_.Tensor")
_binary("maximum", "aten.maximum.default")
_binary("minimum", "aten.minimum.default")
_binary("pow", "aten.pow.Tensor_Scalar", "aten.pow.Tensor_Tensor")


@handles("aten.rsub.Scalar", "aten.rsub.Tensor")
def _rsub(ctx: ImportContext, node: Node):
    dtype = ctx.out_dtype()
    return ctx.emit("sub", ctx.tensor(node.args[1], dtype), ctx.tensor(node.args[0], dtype))


@handles("aten.div.Tensor", "aten.div.Scalar", "aten.div.Tensor_mode", "aten.div.Scalar_mode")
def _div(ctx: ImportContext, node: Node):
    mode = arg(node, 2, "rounding_mode")
    dtype = ctx.out_dtype()
    a, b = ctx.tensor(node.args[0], dtype), ctx.tensor(node.args[1], dtype)
    if mode is None:
        return ctx.emit("div", a, b)
    if mode not in ("floor", "trunc"):
        raise ctx.unsupported(f"division with rounding_mode={mode!r}")
    return ctx.emit("floor_div" if mode == "floor" else "trunc_div", a, b)


_binary("floor_div", "aten.floor_divide.default")
_binary("fmod", "aten.fmod.Tensor", "aten.fmod.Scalar")
_binary("remainder", "aten.remainder.Tensor", "aten.remainder.Scalar")
_binary("atan2", "aten.atan2.default")


@handles("aten.remainder.Scalar_Tensor")
def _remainder_scalar_tensor(ctx: ImportContext, node: Node):
    dtype = ctx.out_dtype()
    return ctx.emit("remainder", ctx.tensor(node.args[0], dtype), ctx.tensor(node.args[1], dtype))


def _compare(op: str, *names: str):
    @handles(*names)
    def handler(ctx: ImportContext, node: Node):
        a, b = node.args[0], node.args[1]
        meta = [x.meta["val"] if isinstance(x, Node) else x for x in (a, b)]
        dtype = DType(str(torch.result_type(*meta)).removeprefix("torch."))
        return ctx.emit(op, ctx.tensor(a, dtype), ctx.tensor(b, dtype))

    return handler


for _op in ("eq", "ne", "lt", "le", "gt", "ge"):
    _compare(_op, f"aten.{_op}.Tensor", f"aten.{_op}.Scalar")


@handles("aten.where.self", "aten.where.ScalarOther", "aten.where.ScalarSelf", "aten.where.Scalar")
def _where(ctx: ImportContext, node: Node):
    dtype = ctx.out_dtype()
    return ctx.emit("where", ctx.tensor(node.args[0], DType.bool), ctx.tensor(node.args[1], dtype),
                    ctx.tensor(node.args[2], dtype))


@handles("aten.logical_and.default", "aten.logical_or.default")
def _logical(ctx: ImportContext, node: Node):
    op = "logical_and" if "and" in str(node.target) else "logical_or"
    return ctx.emit(op, ctx.tensor(node.args[0], DType.bool), ctx.tensor(node.args[1], DType.bool))


def _bitwise(op: str, *names: str):
    @handles(*names)
    def handler(ctx: ImportContext, node: Node):
        dtype = ctx.out_dtype()
        if dtype.is_float:
            raise ctx.unsupported(f"{op} on {dtype} (bitwise ops take integers or bools)")
        return ctx.emit(op, ctx.tensor(node.args[0], dtype), ctx.tensor(node.args[1], dtype))

    return handler


for _op in ("and", "or", "xor"):
    _bitwise(f"bitwise_{_op}", f"aten.bitwise_{_op}.Tensor", f"aten.bitwise_{_op}.Scalar")


@handles("aten.bitwise_not.default")
def _bitwise_not(ctx: ImportContext, node: Node):
    dtype = ctx.out_dtype()
    if dtype == DType.bool:
        return ctx.emit("logical_not", ctx.tensor(node.args[0], DType.bool))
    all_ones = np.array(-1).astype(dtype.numpy)  # ~x == x ^ 0b1...1 (two's complement or unsigned max)
    return ctx.emit("bitwise_xor", ctx.tensor(node.args[0], dtype), ctx.tensor(all_ones.item(), dtype))


# -- linear algebra --------------------------------------------------------------------------------
@handles("aten.linear.default")
def _linear(ctx: ImportContext, node: Node):
    bias = arg(node, 2, "bias")
    return ctx.emit("linear", ctx.tensor(node.args[0]), ctx.tensor(node.args[1]),
                    ctx.tensor(bias) if bias is not None else None)


@handles("aten.matmul.default", "aten.mm.default", "aten.bmm.default")
def _matmul(ctx: ImportContext, node: Node):
    return ctx.emit("matmul", ctx.tensor(node.args[0]), ctx.tensor(node.args[1]))


@handles("aten.addmm.default", "aten._sparse_addmm.default")
def _addmm(ctx: ImportContext, node: Node):
    """beta * bias + alpha * (a @ b); torch.sparse.addmm given dense matrices is the same."""
    bias, a, b = (ctx.tensor(x) for x in node.args[:3])
    beta, alpha = node.kwargs.get("beta", 1), node.kwargs.get("alpha", 1)
    product = ctx.emit("matmul", a, b)
    if alpha != 1:
        product = ctx.emit("mul", product, ctx.tensor(alpha, product.dtype))
    if beta != 1:
        bias = ctx.emit("mul", bias, ctx.tensor(beta, bias.dtype))
    return ctx.emit("add", product, bias)


# -- convolution / normalisation -------------------------------------------------------------------
def _conv_attrs(nd: int, stride, padding, dilation):
    def expand(v, default):
        v = default if v is None else v
        v = list(v) if isinstance(v, (list, tuple)) else [v]
        return v * nd if len(v) == 1 else v

    pads = expand(padding, [0])
    return dict(stride=expand(stride, [1]), padding=pads + pads, dilation=expand(dilation, [1]))


@handles("aten.conv1d.default", "aten.conv2d.default", "aten.conv3d.default")
def _conv(ctx: ImportContext, node: Node):
    x, weight = ctx.tensor(node.args[0]), ctx.tensor(node.args[1])
    bias = arg(node, 2, "bias")
    padding = arg(node, 4, "padding", 0)
    if isinstance(padding, str):
        raise ctx.unsupported(f"padding='{padding}' (use explicit integer padding)")
    nd = weight.type.rank - 2
    attrs = _conv_attrs(nd, arg(node, 3, "stride", 1), padding, arg(node, 5, "dilation", 1))
    return ctx.emit("conv", x, weight, ctx.tensor(bias) if bias is not None else None,
                    groups=int(arg(node, 6, "groups", 1)), **attrs)


@handles("aten.convolution.default")
def _convolution(ctx: ImportContext, node: Node):
    x, weight, bias, stride, padding, dilation, transposed, output_padding, groups = node.args[:9]
    w = ctx.tensor(weight)
    if transposed:
        return _conv_transpose(ctx, ctx.tensor(x), w, bias, stride, padding, output_padding, dilation, groups)
    attrs = _conv_attrs(w.type.rank - 2, stride, padding, dilation)
    return ctx.emit("conv", ctx.tensor(x), w, ctx.tensor(bias) if bias is not None else None,
                    groups=int(groups), **attrs)


def _conv_transpose(ctx: ImportContext, x: Value, w: Value, bias, stride, padding, output_padding, dilation,
                    groups) -> Value:
    nd = w.type.rank - 2
    attrs = _conv_attrs(nd, stride, padding, dilation)
    out_pad = list(output_padding) if isinstance(output_padding, (list, tuple)) else [output_padding]
    out_pad = out_pad * nd if len(out_pad) == 1 else out_pad
    return ctx.emit("conv_transpose", x, w, ctx.tensor(bias) if bias is not None else None, groups=int(groups),
                    output_padding=[int(p) for p in out_pad], **attrs)


@handles("aten.conv_transpose1d.default", "aten.conv_transpose2d.input", "aten.conv_transpose3d.input")
def _conv_transpose_call(ctx: ImportContext, node: Node):
    return _conv_transpose(ctx, ctx.tensor(node.args[0]), ctx.tensor(node.args[1]), arg(node, 2, "bias"),
                           arg(node, 3, "stride", 1), arg(node, 4, "padding", 0), arg(node, 5, "output_padding", 0),
                           arg(node, 7, "dilation", 1), arg(node, 6, "groups", 1))


def _optional(ctx: ImportContext, value):
    return ctx.tensor(value) if value is not None else None


@handles("aten.batch_norm.default")
def _batch_norm(ctx: ImportContext, node: Node):
    x, weight, bias, mean, var, training, _momentum, eps = node.args[:8]
    if training:
        raise ctx.unsupported("batch_norm in training mode (call model.eval() before compiling)")
    return ctx.emit("batch_norm", ctx.tensor(x), ctx.tensor(mean), ctx.tensor(var),
                    _optional(ctx, weight), _optional(ctx, bias), eps=float(eps))


@handles("aten._native_batch_norm_legit_no_training.default")
def _native_batch_norm(ctx: ImportContext, node: Node):
    x, weight, bias, mean, var, _momentum, eps = node.args[:7]
    y = ctx.emit("batch_norm", ctx.tensor(x), ctx.tensor(mean), ctx.tensor(var),
                 _optional(ctx, weight), _optional(ctx, bias), eps=float(eps))
    return (y, None, None)


@handles("aten.layer_norm.default")
def _layer_norm(ctx: ImportContext, node: Node):
    x, shape = node.args[:2]
    weight, bias, eps = arg(node, 2, "weight"), arg(node, 3, "bias"), arg(node, 4, "eps", 1e-5)
    return ctx.emit("layer_norm", ctx.tensor(x), _optional(ctx, weight), _optional(ctx, bias),
                    normalized_ndim=len(shape), eps=float(eps))


@handles("aten.native_layer_norm.default")
def _native_layer_norm(ctx: ImportContext, node: Node):
    x, shape, weight, bias, eps = node.args[:5]
    y = ctx.emit("layer_norm", ctx.tensor(x), _optional(ctx, weight), _optional(ctx, bias),
                 normalized_ndim=len(shape), eps=float(eps))
    return (y, None, None)


@handles("aten.softmax.int", "aten._softmax.default", "aten.log_softmax.int", "aten._log_softmax.default")
def _softmax(ctx: ImportContext, node: Node):
    op = "log_softmax" if "log_softmax" in str(node.target) else "softmax"
    return ctx.emit(op, ctx.tensor(node.args[0], ctx.out_dtype()), axis=int(node.args[1]))


# -- pooling ---------------------------------------------------------------------------------------
def _pool_args(nd: int, kernel, stride, padding):
    def expand(v):
        v = list(v) if isinstance(v, (list, tuple)) else [v]
        return v * nd if len(v) == 1 else v

    kernel = expand(kernel)
    stride = expand(stride) if stride not in (None, [], ()) else kernel
    pads = expand(padding)
    return kernel, stride, pads + pads


@handles("aten.max_pool1d.default", "aten.max_pool2d.default", "aten.max_pool3d.default",
         "aten.max_pool2d_with_indices.default", "aten.max_pool3d_with_indices.default",
         "aten.max_pool1d_with_indices.default")
def _max_pool(ctx: ImportContext, node: Node):
    x = ctx.tensor(node.args[0])
    nd = x.type.rank - 2
    kernel, stride, pads = _pool_args(nd, node.args[1], arg(node, 2, "stride"), arg(node, 3, "padding", 0))
    dilation = arg(node, 4, "dilation", 1)
    dilation = list(dilation) * (nd if len(list(dilation)) == 1 else 1) if isinstance(dilation, (list, tuple)) else [dilation] * nd
    ceil_mode = bool(arg(node, 5, "ceil_mode", False))
    if "with_indices" in str(node.target) and _output_used(node, 1):
        return ctx.emit_multi("max_pool_with_indices", x, kernel=kernel, stride=stride, padding=pads,
                              dilation=dilation, ceil_mode=ceil_mode)
    y = ctx.emit("max_pool", x, kernel=kernel, stride=stride, padding=pads, dilation=dilation, ceil_mode=ceil_mode)
    return (y, None) if "with_indices" in str(node.target) else y


def _output_used(node: Node, index: int) -> bool:
    """Whether a later node reads output ``index`` of a multi-output ATen call."""
    return any(user.target is operator.getitem and user.args[1] == index for user in node.users)


@handles("aten.avg_pool1d.default", "aten.avg_pool2d.default", "aten.avg_pool3d.default")
def _avg_pool(ctx: ImportContext, node: Node):
    x = ctx.tensor(node.args[0])
    kernel, stride, pads = _pool_args(x.type.rank - 2, node.args[1], arg(node, 2, "stride"), arg(node, 3, "padding", 0))
    divisor = arg(node, 6, "divisor_override")
    ceil_mode = bool(arg(node, 4, "ceil_mode", False))
    if divisor is not None:
        if ceil_mode:
            raise ctx.unsupported("avg_pool with divisor_override and ceil_mode")
        # window sum / divisor == (window mean counting padding) * window size / divisor
        mean = ctx.emit("avg_pool", x, kernel=kernel, stride=stride, padding=pads, ceil_mode=False,
                        count_include_pad=True)
        return ctx.emit("mul", mean, ctx.tensor(float(np.prod(kernel)) / float(divisor), x.dtype))
    return ctx.emit("avg_pool", x, kernel=kernel, stride=stride, padding=pads, ceil_mode=ceil_mode,
                    count_include_pad=bool(arg(node, 5, "count_include_pad", True)))


@handles("aten.adaptive_avg_pool1d.default", "aten.adaptive_avg_pool2d.default",
         "aten.adaptive_avg_pool3d.default", "aten._adaptive_avg_pool2d.default", "aten._adaptive_avg_pool3d.default")
def _adaptive_avg_pool(ctx: ImportContext, node: Node):
    return ctx.emit("adaptive_avg_pool", ctx.tensor(node.args[0]), output_size=list(ctx.out_shape()[2:]))


# -- reductions ------------------------------------------------------------------------------------
def _axes(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def _reduction(op: str, *names: str):
    @handles(*names)
    def handler(ctx: ImportContext, node: Node):
        dtype = ctx.out_dtype()
        x = ctx.tensor(node.args[0], dtype)
        axes = _axes(arg(node, 1, "dim"))
        keepdim = bool(arg(node, 2, "keepdim", False))
        if x.type.rank == 0:
            return ctx.emit("reshape", x, shape=())
        return ctx.emit(op, x, axes=axes, keepdim=keepdim)

    return handler


_reduction("reduce_mean", "aten.mean.dim", "aten.mean.default")
_reduction("reduce_sum", "aten.sum.dim_IntList", "aten.sum.default")
_reduction("reduce_max", "aten.amax.default")
_reduction("reduce_min", "aten.amin.default")


@handles("aten.argmax.default")
def _argmax(ctx: ImportContext, node: Node):
    dim = arg(node, 1, "dim")
    x = ctx.tensor(node.args[0])
    keepdim = bool(arg(node, 2, "keepdim", False))
    if dim is None:
        x, dim, keepdim = ctx.emit("reshape", x, shape=[_numel(x)]), 0, False
    return ctx.emit("argmax", x, axis=int(dim), keepdim=keepdim)


def _numel(x: Value):
    from compiler import dims

    return dims.product(x.shape)


# -- shape -----------------------------------------------------------------------------------------
@handles("aten.view.default", "aten.reshape.default", "aten._unsafe_view.default", "aten.flatten.using_ints",
         "aten.unsqueeze.default", "aten.squeeze.dim", "aten.squeeze.dims", "aten.squeeze.default",
         "aten.unflatten.int", "aten.view_as.default", "aten.reshape_as.default")
def _reshape(ctx: ImportContext, node: Node):
    x = ctx.tensor(node.args[0])
    shape = ctx.out_shape()
    if tuple(shape) == x.shape:
        return x
    return ctx.emit("reshape", x, shape=list(shape))


@handles("aten.permute.default")
def _permute(ctx: ImportContext, node: Node):
    x = ctx.tensor(node.args[0])
    perm = [int(p) % max(x.type.rank, 1) for p in node.args[1]]
    return x if perm == list(range(x.type.rank)) else ctx.emit("transpose", x, perm=perm)


@handles("aten.transpose.int", "aten.t.default", "aten.swapaxes.default")
def _transpose(ctx: ImportContext, node: Node):
    x = ctx.tensor(node.args[0])
    rank = x.type.rank
    if rank < 2:
        return x
    a, b = (int(node.args[1]), int(node.args[2])) if len(node.args) > 2 else (0, 1)
    perm = list(range(rank))
    perm[a % rank], perm[b % rank] = perm[b % rank], perm[a % rank]
    return x if perm == list(range(rank)) else ctx.emit("transpose", x, perm=perm)


@handles("aten.expand.default", "aten.expand_as.default")
def _expand(ctx: ImportContext, node: Node):
    x = ctx.tensor(node.args[0])
    shape = ctx.out_shape()
    return x if tuple(shape) == x.shape else ctx.emit("expand", x, shape=list(shape))


@handles("aten.cat.default", "aten.concat.default")
def _cat(ctx: ImportContext, node: Node):
    dtype = ctx.out_dtype()
    parts = [ctx.tensor(t, dtype) for t in node.args[0]]
    parts = [p for p in parts if not (p.type.rank == 1 and p.shape[0] == 0)]  # torch skips empty 1-d
    return ctx.emit("concat", *parts, axis=int(arg(node, 1, "dim", 0)))


@handles("aten.slice.Tensor")
def _slice(ctx: ImportContext, node: Node):
    x = ctx.tensor(node.args[0])
    axis = int(arg(node, 1, "dim", 0))
    start, end, step = arg(node, 2, "start", None), arg(node, 3, "end", None), arg(node, 4, "step", 1)
    # A bound computed from a symbolic size (``position_ids[:, :seq]``) is a dim expression.
    start = 0 if start is None else ctx.dim(start.meta["val"]) if isinstance(start, Node) else start
    end = 2 ** 63 - 1 if end is None else ctx.dim(end.meta["val"]) if isinstance(end, Node) else end
    if not isinstance(step, int):
        raise ctx.unsupported("slice with a symbolic step")
    if start == 0 and isinstance(end, int) and end >= 2 ** 62 and step == 1:
        return x
    return ctx.emit("slice", x, axis=axis, start=start, end=end, step=int(step))


@handles("aten.select.int")
def _select(ctx: ImportContext, node: Node):
    x = ctx.tensor(node.args[0])
    axis, index = int(node.args[1]), node.args[2]
    if not isinstance(index, int):
        raise ctx.unsupported("select with a symbolic index")
    end = index + 1 if index != -1 else 2 ** 63 - 1
    y = ctx.emit("slice", x, axis=axis, start=index, end=end, step=1)
    return ctx.emit("reshape", y, shape=list(ctx.out_shape()))


@handles("aten.embedding.default")
def _embedding(ctx: ImportContext, node: Node):
    return ctx.emit("gather", ctx.tensor(node.args[0]), ctx.tensor(node.args[1]), axis=0)


@handles("aten.as_strided.default")
def _as_strided(ctx: ImportContext, node: Node):
    """A view of a contiguous input with static sizes (``unfold`` decomposes to it): the
    element at ``i`` is ``flat[offset + sum(i_k * stride_k)]``, a gather of constant indices."""
    x = ctx.tensor(node.args[0])
    size, stride = [int(s) for s in node.args[1]], [int(s) for s in node.args[2]]
    offset = int(arg(node, 3, "storage_offset", 0) or 0)
    source = node.args[0].meta.get("val")
    if not all(isinstance(d, int) for d in x.shape) or source is None \
            or tuple(source.stride()) != _contiguous_strides(x.shape):
        raise ctx.unsupported("as_strided of a non-contiguous or dynamic-shape tensor")
    index = np.full(size, offset, dtype=np.int64)
    for axis, step in enumerate(stride):
        shape = [1] * len(size)
        shape[axis] = size[axis]
        index = index + np.arange(size[axis], dtype=np.int64).reshape(shape) * step
    numel = int(np.prod(x.shape, dtype=np.int64))
    if index.size and (index.min() < 0 or index.max() >= numel):
        raise ctx.unsupported("as_strided reading outside its input")
    flat = ctx.emit("reshape", x, shape=(numel,))
    return ctx.emit("gather", flat, ctx.graph.add_constant(index, "as_strided_index"), axis=0)


def _contiguous_strides(shape) -> tuple[int, ...]:
    strides, step = [], 1
    for d in reversed(shape):
        strides.append(step)
        step *= max(int(d), 1)
    return tuple(reversed(strides))


@handles("aten.index_select.default")
def _index_select(ctx: ImportContext, node: Node):
    index = ctx.tensor(node.args[2])
    if index.type.rank == 0:  # torch treats a 0-d index as one index: the axis stays, with size 1
        index = ctx.emit("reshape", index, shape=(1,))
    return ctx.emit("gather", ctx.tensor(node.args[0]), index, axis=int(node.args[1]))


# -- attention -------------------------------------------------------------------------------------
@handles("aten.scaled_dot_product_attention.default")
def _sdpa(ctx: ImportContext, node: Node):
    q, k, v = (ctx.tensor(t) for t in node.args[:3])
    mask = arg(node, 3, "attn_mask")
    if arg(node, 4, "dropout_p", 0.0):
        raise ctx.unsupported("attention dropout (dropout_p must be 0 at inference)")
    if node.kwargs.get("enable_gqa", False) and q.type.rank >= 3 and k.shape[-3] != q.shape[-3]:
        k, v = (_repeat_heads(ctx, t, q.shape[-3]) for t in (k, v))
    mask_value = None
    if mask is not None:
        mask_value = ctx.tensor(mask)
        if mask_value.dtype not in (DType.bool, q.dtype):
            mask_value = ctx.tensor(mask, q.dtype)
    return ctx.emit("attention", q, k, v, mask_value, is_causal=bool(arg(node, 5, "is_causal", False)),
                    scale=arg(node, 6, "scale"))


def _repeat_heads(ctx: ImportContext, t: Value, heads) -> Value:
    """Grouped-query attention's key/value heads [..., Hkv, S, D] repeated to the query's
    ``heads`` (each head ``heads // Hkv`` times in a row, as PyTorch's repeat_interleave)."""
    groups = t.shape[-3]
    if not isinstance(heads, int) or not isinstance(groups, int) or heads % groups:
        raise ctx.unsupported(f"grouped-query attention with {heads} query heads over {groups} key/value heads")
    lead, tail = list(t.shape[:-3]), list(t.shape[-2:])
    grown = ctx.emit("expand", ctx.emit("reshape", t, shape=lead + [groups, 1] + tail),
                     shape=lead + [groups, heads // groups] + tail)
    return ctx.emit("reshape", grown, shape=lead + [heads] + tail)


# -- compositions of existing IR ops ---------------------------------------------------------------
# Each overload below is written with IR ops that compute exactly what PyTorch computes (float
# reductions up to summation order).
_MAX_FOLDED_FILL = 1 << 16  # larger static fills are a scalar constant expanded at run time


def _scalar_value(ctx: ImportContext, value):
    if isinstance(value, (bool, int, float)):
        return value
    raise ctx.unsupported(f"a fill value that is not a Python number ({type(value).__name__})")


def _filled(ctx: ImportContext, value, dtype: DType, shape: tuple) -> Value:
    """A tensor of ``shape`` holding ``value`` converted to ``dtype`` as torch converts it."""
    scalar = torch.tensor(_scalar_value(ctx, value)).to(torch_dtype(dtype)).numpy()
    static = all(isinstance(d, int) for d in shape)
    if static and int(np.prod(shape, dtype=np.int64)) <= _MAX_FOLDED_FILL:
        return ctx.graph.add_constant(np.full(shape, scalar, dtype=dtype.numpy), "fill")
    const = ctx.graph.add_constant(np.asarray(scalar, dtype=dtype.numpy), "fill")
    return ctx.emit("expand", const, shape=list(shape))


@handles("aten.full.default", "aten.full_like.default", "aten.zeros.default", "aten.ones.default",
         "aten.zeros_like.default", "aten.ones_like.default", "aten.new_zeros.default",
         "aten.new_ones.default", "aten.new_full.default", "aten.fill.Scalar", "aten.scalar_tensor.default")
def _full(ctx: ImportContext, node: Node):
    name = str(node.target).split(".")[1]
    if name in ("zeros", "zeros_like", "new_zeros"):
        value = 0
    elif name in ("ones", "ones_like", "new_ones"):
        value = 1
    elif name == "new_full":
        value = node.args[2] if len(node.args) > 2 else node.kwargs["fill_value"]
    elif name == "scalar_tensor":
        value = node.args[0]
    else:  # full, full_like, fill
        value = node.args[1] if len(node.args) > 1 else node.kwargs.get("fill_value", node.kwargs.get("value"))
    return _filled(ctx, value, ctx.out_dtype(), ctx.out_shape())


@handles("aten.split_with_sizes.default", "aten.split.Tensor")
def _split(ctx: ImportContext, node: Node):
    x = ctx.tensor(node.args[0])
    axis = int(arg(node, 2, "dim", 0)) % max(x.type.rank, 1)
    outputs, start = [], 0
    for i in range(len(node.meta["val"])):
        size = ctx.meta_type(node, i).shape[axis]
        if not isinstance(size, int):
            raise ctx.unsupported("split along a symbolic dim")
        part = ctx.emit("slice", x, axis=axis, start=start, end=start + size, step=1)
        outputs.append(part)
        start += size
    return tuple(outputs)


def _arg_index(ctx: ImportContext, x: Value, axis: int, keepdim: bool, *, smallest: bool) -> Value:
    """torch's argmax / argmin along ``axis``: the first index of the extreme value (of a NaN if any)."""
    if not smallest:
        return ctx.emit("argmax", x, axis=axis, keepdim=keepdim)
    if x.dtype.is_float:  # neg is exact and keeps NaN a NaN, so argmax(-x) is argmin(x)
        return ctx.emit("argmax", ctx.emit("neg", x), axis=axis, keepdim=keepdim)
    # integers (where neg overflows) and bools: first position equal to the minimum
    low = ctx.emit("reduce_min", x, axes=[axis], keepdim=True)
    hit = ctx.emit("cast", ctx.emit("eq", x, low), dtype=DType.int32)
    return ctx.emit("argmax", hit, axis=axis, keepdim=keepdim)


@handles("aten.max.dim", "aten.min.dim")
def _max_min_dim(ctx: ImportContext, node: Node):
    x = ctx.tensor(node.args[0])
    axis, keepdim = int(node.args[1]), bool(arg(node, 2, "keepdim", False))
    smallest = "min" in str(node.target)
    if x.type.rank == 0:
        return x, ctx.graph.add_constant(np.asarray(0, dtype=np.int64), "index")
    values = ctx.emit("reduce_min" if smallest else "reduce_max", x, axes=[axis], keepdim=keepdim)
    return values, _arg_index(ctx, x, axis, keepdim, smallest=smallest)


@handles("aten.max.default", "aten.min.default")
def _max_min_all(ctx: ImportContext, node: Node):
    x = ctx.tensor(node.args[0])
    if x.type.rank == 0:
        return ctx.emit("reshape", x, shape=())
    return ctx.emit("reduce_min" if "min" in str(node.target) else "reduce_max", x, axes=[], keepdim=False)


@handles("aten.argmin.default")
def _argmin(ctx: ImportContext, node: Node):
    dim = arg(node, 1, "dim")
    x = ctx.tensor(node.args[0])
    keepdim = bool(arg(node, 2, "keepdim", False))
    if x.type.rank == 0:
        return ctx.graph.add_constant(np.asarray(0, dtype=np.int64), "index")
    if dim is None:
        out = _arg_index(ctx, ctx.emit("reshape", x, shape=[_numel(x)]), 0, False, smallest=True)
        return out if out.shape == tuple(ctx.out_shape()) else ctx.emit("reshape", out, shape=list(ctx.out_shape()))
    return _arg_index(ctx, x, int(dim), keepdim, smallest=True)


def _variance(ctx: ImportContext, x: Value, dim, correction, keepdim: bool) -> tuple[Value, Value]:
    """(var, mean) as torch's reference: sum((x - mean)^2) / max(0, n - correction)."""
    if not x.dtype.is_float:
        raise ctx.unsupported(f"variance of a {x.dtype} tensor")
    rank = x.type.rank
    axes = sorted({a % max(rank, 1) for a in _axes(dim)}) if dim not in (None, [], ()) else list(range(rank))
    n = 1
    for a in axes:
        size = x.shape[a]
        if not isinstance(size, int):
            raise ctx.unsupported("variance over a symbolic dim")
        n *= size
    correction = 1 if correction is None else correction
    if rank == 0:
        mean = x
        centred = ctx.emit("sub", x, mean)
        total = ctx.emit("mul", centred, centred)
    else:
        mean = ctx.emit("reduce_mean", x, axes=axes, keepdim=True)
        centred = ctx.emit("sub", x, mean)
        total = ctx.emit("reduce_sum", ctx.emit("mul", centred, centred), axes=axes, keepdim=keepdim)
        if not keepdim:
            mean = ctx.emit("reshape", mean, shape=list(total.shape))
    var = ctx.emit("div", total, ctx.tensor(float(max(0, n - correction)), x.dtype))
    return var, mean


@handles("aten.var.correction", "aten.var_mean.correction")
def _var(ctx: ImportContext, node: Node):
    x = ctx.tensor(node.args[0])
    var, mean = _variance(ctx, x, arg(node, 1, "dim"), node.kwargs.get("correction"),
                          bool(node.kwargs.get("keepdim", False)))
    return (var, mean) if "var_mean" in str(node.target) else var


@handles("aten.var.dim")
def _var_dim(ctx: ImportContext, node: Node):
    x = ctx.tensor(node.args[0])
    unbiased = bool(arg(node, 2, "unbiased", True))
    var, _ = _variance(ctx, x, arg(node, 1, "dim"), 1 if unbiased else 0, bool(arg(node, 3, "keepdim", False)))
    return var


@handles("aten.sign.default")
def _sign(ctx: ImportContext, node: Node):
    dtype = ctx.out_dtype()
    x = ctx.tensor(node.args[0], dtype)
    if dtype == DType.bool:
        return ctx.emit("reshape", x, shape=list(x.shape))  # distinct value: sign(b) == b
    zero, one = ctx.tensor(0, dtype), ctx.tensor(1, dtype)
    if dtype in (DType.uint8,):
        return ctx.emit("where", ctx.emit("gt", x, zero), one, zero)
    negative = ctx.emit("where", ctx.emit("lt", x, zero), ctx.tensor(-1, dtype), zero)
    return ctx.emit("where", ctx.emit("gt", x, zero), one, negative)  # NaN -> 0, as torch


@handles("aten.repeat.default")
def _repeat(ctx: ImportContext, node: Node):
    x = ctx.tensor(node.args[0])
    repeats = [int(r) for r in node.args[1]]
    shape = (1,) * (len(repeats) - x.type.rank) + tuple(x.shape)
    if all(r == 1 for r in repeats):
        return ctx.emit("reshape", x, shape=list(shape))
    interleaved, expanded = [], []
    for r, d in zip(repeats, shape):
        if r != 1:
            interleaved.append(1)
            expanded.append(r)
        interleaved.append(d)
        expanded.append(d)
    y = ctx.emit("reshape", x, shape=interleaved) if tuple(interleaved) != x.shape else x
    y = ctx.emit("expand", y, shape=expanded)
    return ctx.emit("reshape", y, shape=list(ctx.out_shape()))


@handles("aten.logical_xor.default")
def _logical_xor(ctx: ImportContext, node: Node):
    return ctx.emit("ne", ctx.tensor(node.args[0], DType.bool), ctx.tensor(node.args[1], DType.bool))


@handles("aten.isnan.default")
def _isnan(ctx: ImportContext, node: Node):
    x = ctx.tensor(node.args[0])
    return ctx.emit("ne", x, x)


@handles("aten.any.dim", "aten.any.dims", "aten.any.default", "aten.all.dim", "aten.all.dims",
         "aten.all.default")
def _any_all(ctx: ImportContext, node: Node):
    x = ctx.tensor(node.args[0], DType.bool)
    if x.type.rank == 0:
        return ctx.emit("reshape", x, shape=())
    keepdim = bool(arg(node, 2, "keepdim", False))
    op = "reduce_max" if ".any." in str(node.target) else "reduce_min"
    return ctx.emit(op, x, axes=_axes(arg(node, 1, "dim")), keepdim=keepdim)


@handles("aten.addbmm.default")
def _addbmm(ctx: ImportContext, node: Node):
    dtype = ctx.out_dtype()
    bias, a, b = (ctx.tensor(t, dtype) for t in node.args[:3])
    beta, alpha = node.kwargs.get("beta", 1), node.kwargs.get("alpha", 1)
    product = ctx.emit("reduce_sum", ctx.emit("matmul", a, b), axes=[0], keepdim=False)
    if alpha != 1:
        product = ctx.emit("mul", product, ctx.tensor(alpha, dtype))
    if beta == 0:  # torch ignores the input (NaN and inf in it included)
        return ctx.emit("expand", product, shape=list(ctx.out_shape())) if product.shape != ctx.out_shape() \
            else product
    if beta != 1:
        bias = ctx.emit("mul", bias, ctx.tensor(beta, dtype))
    return ctx.emit("add", product, bias)


# -- reductions and scans (more) -------------------------------------------------------------------
@handles("aten.prod.default", "aten.prod.dim_int")
def _prod(ctx: ImportContext, node: Node):
    x = ctx.tensor(node.args[0], ctx.out_dtype())
    if str(node.target).endswith("dim_int"):
        return ctx.emit("reduce_prod", x, axes=[int(node.args[1])], keepdim=bool(arg(node, 2, "keepdim", False)))
    return ctx.emit("reduce_prod", x, axes=[], keepdim=False)


@handles("aten.cumsum.default", "aten.cumprod.default")
def _cumulative(ctx: ImportContext, node: Node):
    op = "cumsum" if "cumsum" in str(node.target) else "cumprod"
    return ctx.emit(op, ctx.tensor(node.args[0], ctx.out_dtype()), axis=int(node.args[1]))


# -- flip and padding ------------------------------------------------------------------------------
@handles("aten.flip.default")
def _flip(ctx: ImportContext, node: Node):
    return ctx.emit("flip", ctx.tensor(node.args[0]), axes=[int(d) for d in node.args[1]])


def _torch_pads(rank: int, pad) -> tuple[list[int], list[int]]:
    """(begins, ends) per dim from PyTorch's pad list, which starts with the last dim."""
    begins, ends = [0] * rank, [0] * rank
    for i in range(len(pad) // 2):
        begins[rank - 1 - i], ends[rank - 1 - i] = int(pad[2 * i]), int(pad[2 * i + 1])
    return begins, ends


def _padded(ctx: ImportContext, x: Value, pad, mode: str, value: float = 0.0) -> Value:
    begins, ends = _torch_pads(x.type.rank, pad)
    if any(p < 0 for p in begins + ends):  # negative padding crops
        if mode != "constant":
            raise ctx.unsupported(f"negative padding with mode {mode}")
        for axis, (b, e) in enumerate(zip(begins, ends)):
            if b < 0 or e < 0:
                x = ctx.emit("slice", x, axis=axis, start=max(-b, 0), end=e if e < 0 else 2 ** 63 - 1)
        begins, ends = [max(p, 0) for p in begins], [max(p, 0) for p in ends]
    if not any(begins + ends):
        return x
    return ctx.emit("pad", x, pads=begins + ends, mode=mode, value=float(value))


@handles("aten.constant_pad_nd.default")
def _constant_pad(ctx: ImportContext, node: Node):
    return _padded(ctx, ctx.tensor(node.args[0]), node.args[1], "constant", arg(node, 2, "value", 0.0))


@handles("aten.reflection_pad1d.default", "aten.reflection_pad2d.default", "aten.reflection_pad3d.default",
         "aten.replication_pad1d.default", "aten.replication_pad2d.default", "aten.replication_pad3d.default")
def _mode_pad(ctx: ImportContext, node: Node):
    mode = "reflect" if "reflection" in str(node.target) else "replicate"
    return _padded(ctx, ctx.tensor(node.args[0]), node.args[1], mode)


@handles("aten.pad.default")
def _pad(ctx: ImportContext, node: Node):
    mode = arg(node, 2, "mode", "constant")
    if mode not in ("constant", "reflect", "replicate", "circular"):
        raise ctx.unsupported(f"padding mode {mode!r}")
    value = arg(node, 3, "value", None)
    return _padded(ctx, ctx.tensor(node.args[0]), node.args[1], mode, 0.0 if value is None else value)


# -- gather / scatter / advanced indexing ----------------------------------------------------------
@handles("aten.gather.default")
def _gather_elements(ctx: ImportContext, node: Node):
    return ctx.emit("gather_elements", ctx.tensor(node.args[0]), ctx.tensor(node.args[2]), axis=int(node.args[1]))


_SCATTER_REDUCE = {"sum": "add", "prod": "mul", "amax": "max", "amin": "min"}


@handles("aten.scatter.src", "aten.scatter.value", "aten.scatter_add.default", "aten.scatter_reduce.two",
         "aten.scatter.reduce", "aten.scatter.value_reduce")
def _scatter(ctx: ImportContext, node: Node):
    x = ctx.tensor(node.args[0])
    axis, index = int(node.args[1]), ctx.tensor(node.args[2])
    src = node.args[3]
    src = ctx.tensor(src, x.dtype) if isinstance(src, Node) else ctx.emit(
        "expand", ctx.tensor(src, x.dtype), shape=list(index.shape))
    name = str(node.target)
    reduction = "none"
    if "scatter_add" in name:
        reduction = "add"
    elif "scatter_reduce" in name:
        reduce, include_self = node.args[4], bool(arg(node, 5, "include_self", True))
        if reduce == "mean" or not include_self:
            return _scatter_reduce_composed(ctx, x, axis, index, src, reduce, include_self)
        reduction = _SCATTER_REDUCE[reduce]
    elif "reduce" in name:
        reduction = {"add": "add", "multiply": "mul"}[arg(node, 4, "reduce")]
    return ctx.emit("scatter_elements", x, index, src, axis=axis, reduction=reduction)


def _scatter_reduce_composed(ctx: ImportContext, x: Value, axis: int, index: Value, src: Value, reduce: str,
                             include_self: bool) -> Value:
    """scatter_reduce's mean, and include_self=False: positions that receive values start from the
    reduction's identity instead of x; mean divides the sum by the number of values combined
    (floor division for integers, as PyTorch)."""
    if reduce not in (*_SCATTER_REDUCE, "mean"):
        raise ctx.unsupported(f"scatter_reduce with reduce={reduce!r}")
    dtype = x.dtype
    ones = _filled(ctx, 1, dtype, tuple(index.shape))
    hits = ctx.emit("scatter_elements", _filled(ctx, 0, dtype, tuple(x.shape)), index, ones, axis=axis, reduction="add")
    base = x
    if not include_self:
        info = np.finfo(dtype.numpy) if dtype.is_float else np.iinfo(dtype.numpy)
        identity = {"sum": 0, "mean": 0, "prod": 1, "amax": -np.inf if dtype.is_float else info.min,
                    "amin": np.inf if dtype.is_float else info.max}[reduce]
        was_hit = ctx.emit("gt", hits, ctx.tensor(0, dtype))
        base = ctx.emit("where", was_hit, ctx.graph.add_constant(np.asarray(identity, dtype.numpy), "identity"), x)
    reduction = "add" if reduce == "mean" else _SCATTER_REDUCE[reduce]
    combined = ctx.emit("scatter_elements", base, index, src, axis=axis, reduction=reduction)
    if reduce != "mean":
        return combined
    count = ctx.emit("add", hits, ctx.graph.add_constant(np.asarray(1, dtype.numpy), "one")) if include_self else hits
    count = ctx.emit("maximum", count, ctx.graph.add_constant(np.asarray(1, dtype.numpy), "one"))
    return ctx.emit("div" if dtype.is_float else "floor_div", combined, count)


def _data_dependent_dim(ctx: ImportContext, position: int, output: int | None = None) -> str:
    """The symbol torch gave the data-dependent size at ``position`` of this node's output
    (of output number ``output`` for a multi-output op)."""
    dim = (ctx.out_shape() if output is None else ctx.meta_type(None, output).shape)[position]
    if not dims.is_symbol(dim):
        raise ctx.unsupported(f"expected a data-dependent size at dim {position}, torch recorded {dim}")
    return dim


def _index_tensors(ctx: ImportContext, indices) -> tuple[list[Value], list[int]]:
    values, axes = [], []
    for axis, index in enumerate(indices):
        if index is None:
            continue
        value = ctx.tensor(index)
        if value.dtype == DType.bool:  # a mask over k dims: its k coordinate columns (data-dependent count)
            count = _data_dependent_dim(ctx, axis)
            coords = ctx.emit("nonzero", value, count=count)
            for j in range(value.type.rank):
                column = ctx.emit("slice", coords, axis=1, start=j, end=j + 1, step=1)
                values.append(ctx.emit("reshape", column, shape=[count]))
                axes.append(axis + j)
            continue
        values.append(value)
        axes.append(axis)
    if not values:
        raise ctx.unsupported("indexing without index tensors")
    return values, axes


@handles("aten.index.Tensor")
def _index(ctx: ImportContext, node: Node):
    values, axes = _index_tensors(ctx, node.args[1])
    return ctx.emit("index", ctx.tensor(node.args[0]), *values, axes=axes)


@handles("aten.index_put.default", "aten.index_put_.default", "aten._unsafe_index_put.default")
def _index_put(ctx: ImportContext, node: Node):
    x = ctx.tensor(node.args[0])
    values, axes = _index_tensors(ctx, node.args[1])
    return ctx.emit("index_put", x, ctx.tensor(node.args[2], x.dtype), *values, axes=axes,
                    accumulate=bool(arg(node, 3, "accumulate", False)))


# -- top-k and sort --------------------------------------------------------------------------------
@handles("aten.topk.default")
def _topk(ctx: ImportContext, node: Node):
    return ctx.emit_multi("topk", ctx.tensor(node.args[0]), k=int(node.args[1]), axis=int(arg(node, 2, "dim", -1)),
                          largest=bool(arg(node, 3, "largest", True)), sorted=bool(arg(node, 4, "sorted", True)))


@handles("aten.sort.default", "aten.sort.stable")
def _sort(ctx: ImportContext, node: Node):
    if str(node.target).endswith("stable"):
        axis, descending = arg(node, 2, "dim", -1), arg(node, 3, "descending", False)
    else:
        axis, descending = arg(node, 1, "dim", -1), arg(node, 2, "descending", False)
    return ctx.emit_multi("sort", ctx.tensor(node.args[0]), axis=int(axis), descending=bool(descending))


# -- normalization and resampling (more) -----------------------------------------------------------
@handles("aten.native_group_norm.default")
def _native_group_norm(ctx: ImportContext, node: Node):
    x, weight, bias, _n, _c, _hw, groups, eps = node.args[:8]
    y = ctx.emit("group_norm", ctx.tensor(x), _optional(ctx, weight), _optional(ctx, bias), groups=int(groups),
                 eps=float(eps))
    return (y, None, None)


@handles("aten._native_batch_norm_legit.no_stats")
def _batch_statistics_norm(ctx: ImportContext, node: Node):
    """Batch norm over the batch's own statistics: what instance_norm becomes (on a [1, N*C, ...]
    view). With one sample that is group_norm with a group per channel; with more it is
    training-mode batch norm, which has no inference meaning."""
    x, weight, bias, _training, _momentum, eps = node.args[:6]
    xv = ctx.tensor(x)
    if xv.shape[0] != 1:
        raise ctx.unsupported("batch norm computed from the batch's own statistics (training mode); "
                              "call model.eval() before compiling")
    y = ctx.emit("group_norm", xv, _optional(ctx, weight), _optional(ctx, bias), groups=int(xv.shape[1]),
                 eps=float(eps))
    return (y, None, None)


@handles("aten.group_norm.default")
def _group_norm(ctx: ImportContext, node: Node):
    x, groups = node.args[:2]
    return ctx.emit("group_norm", ctx.tensor(x), _optional(ctx, arg(node, 2, "weight")),
                    _optional(ctx, arg(node, 3, "bias")), groups=int(groups), eps=float(arg(node, 4, "eps", 1e-5)))


_UPSAMPLE_MODES = {"nearest": "nearest", "linear": "linear", "bilinear": "linear", "trilinear": "linear",
                   "bicubic": "cubic"}


@handles(*[f"aten.upsample_{m}{nd}d.vec" for m in ("nearest", "linear", "bilinear", "trilinear", "bicubic")
           for nd in (1, 2, 3)])
def _upsample(ctx: ImportContext, node: Node):
    name = str(node.target).split(".")[1].removeprefix("upsample_")
    mode = _UPSAMPLE_MODES[name[:-2]]
    if mode == "nearest":
        align_corners, scales = False, arg(node, 2, "scale_factors")
    else:
        align_corners, scales = bool(arg(node, 2, "align_corners", False)), arg(node, 3, "scale_factors")
    return ctx.emit("resize", ctx.tensor(node.args[0]), sizes=list(ctx.out_shape()[2:]), mode=mode,
                    align_corners=align_corners, scales=[float(s) for s in scales] if scales else [])


@handles("aten._upsample_bilinear2d_aa.default", "aten._upsample_bicubic2d_aa.default")
def _upsample_antialiased(ctx: ImportContext, node: Node):
    """Antialiased resize is separable and linear: ``Wh @ x @ Ww`` with constant matrices.
    The matrices come from torch's own kernel applied to identity images, so their filter,
    support and normalisation are exactly PyTorch's (no second implementation to drift)."""
    x = ctx.tensor(node.args[0])
    (out_h, out_w), align_corners = ctx.out_shape()[2:], bool(node.args[2])
    in_h, in_w = x.shape[2:]
    if not all(isinstance(s, int) for s in (in_h, in_w, out_h, out_w)):
        raise ctx.unsupported("antialiased resize of an image whose size is dynamic; compile with fixed H and W")
    scales = (arg(node, 3, "scales_h"), arg(node, 4, "scales_w"))
    rows = _resize_matrix(node.target, (in_h, out_h), (in_w, out_w), scales, align_corners, axis=0)
    cols = _resize_matrix(node.target, (in_w, out_w), (in_h, out_h), scales, align_corners, axis=1)
    height = ctx.graph.add_constant(rows.T.astype(x.dtype.numpy), "resize_rows")  # [out_h, in_h]
    width = ctx.graph.add_constant(cols.astype(x.dtype.numpy), "resize_cols")  # [in_w, out_w]
    return ctx.emit("matmul", ctx.emit("matmul", height, x), width)


def _resize_matrix(op, sizes: tuple, other: tuple, scales: tuple, align_corners: bool, axis: int) -> np.ndarray:
    """[in, out] weights of one axis: ``op`` applied to the rows of an identity matrix laid
    along ``axis``, constant along the other axis. Torch weighs an axis differently when the
    other one has size 1 at either end, so keep the other axis's sizes then; else 2 -> 2 (an
    identity there) keeps the probe small."""
    exact = 1 in other
    (n_in, n_out), (o_in, o_out) = sizes, other if exact else (2, 2)
    probe = torch.eye(n_in, dtype=torch.float64).reshape(n_in, 1, n_in, 1).expand(n_in, 1, n_in, o_in)
    size = [n_out, o_out]
    if axis == 1:
        probe, size = probe.transpose(2, 3), size[::-1]
    scales = [s if exact or i == axis else None for i, s in enumerate(scales)]
    with torch.no_grad():
        out = op(probe.contiguous(), size, align_corners, *scales)
    return (out[:, 0, :, 0] if axis == 0 else out[:, 0, 0, :]).numpy()


# -- compositions of existing ops (more) -----------------------------------------------------------
@handles("aten.arange.start_step", "aten.arange.default", "aten.arange.start")
def _arange(ctx: ImportContext, node: Node):
    name = str(node.target).split(".")[-1]
    args = list(node.args)
    if name == "default":
        args = [0, args[0], 1]
    elif name == "start":
        args = args[:2] + [1]
    start, end, step = (args + [1])[:3]
    if not all(isinstance(v, (int, float)) for v in (start, end, step)):
        raise ctx.unsupported("arange with a size that depends on an input's shape")
    values = torch.arange(start, end, step, dtype=torch_dtype(ctx.out_dtype())).numpy()
    return ctx.graph.add_constant(values, "arange")


@handles("aten.clamp.Tensor", "aten.clamp_min.Tensor", "aten.clamp_max.Tensor", "aten.clamp_min.default",
         "aten.clamp_max.default")
def _clamp_tensor(ctx: ImportContext, node: Node):
    dtype = ctx.out_dtype()
    y = ctx.tensor(node.args[0], dtype)
    name = str(node.target)
    if "clamp_min" in name:
        lo, hi = node.args[1], None
    elif "clamp_max" in name:
        lo, hi = None, node.args[1]
    else:
        lo, hi = arg(node, 1, "min"), arg(node, 2, "max")
    if lo is not None:
        y = ctx.emit("maximum", y, ctx.tensor(lo, dtype))
    if hi is not None:
        y = ctx.emit("minimum", y, ctx.tensor(hi, dtype))
    return y


@handles("aten.pow.Scalar")
def _pow_scalar(ctx: ImportContext, node: Node):
    dtype = ctx.out_dtype()
    return ctx.emit("pow", ctx.tensor(node.args[0], dtype), ctx.tensor(node.args[1], dtype))


@handles("aten.diagonal.default")
def _diagonal(ctx: ImportContext, node: Node):
    """Advanced indexing with two aranges, the diagonal moved last as torch.diagonal does."""
    x = ctx.tensor(node.args[0])
    offset, d1, d2 = int(arg(node, 1, "offset", 0)), int(arg(node, 2, "dim1", 0)), int(arg(node, 3, "dim2", 1))
    rank = x.type.rank
    d1, d2 = d1 % rank, d2 % rank
    n = ctx.out_shape()[-1]
    if not isinstance(n, int) or not all(isinstance(x.shape[d], int) for d in (d1, d2)):
        raise ctx.unsupported("diagonal of symbolic dims")
    rows = np.arange(n) + max(-offset, 0)
    cols = np.arange(n) + max(offset, 0)
    i, j = ctx.graph.add_constant(rows, "diag_rows"), ctx.graph.add_constant(cols, "diag_cols")
    y = ctx.emit("index", x, i, j, axes=[d1, d2])
    # numpy placement: at min(d1, d2) when adjacent, else in front; torch wants it last
    lo = min(d1, d2) if abs(d1 - d2) == 1 else 0
    perm = [a for a in range(rank - 1) if a != lo] + [lo]
    return y if perm == list(range(rank - 1)) else ctx.emit("transpose", y, perm=perm)


@handles("aten.linalg_vector_norm.default")
def _vector_norm(ctx: ImportContext, node: Node):
    x = ctx.tensor(node.args[0], ctx.out_dtype())
    order = float(arg(node, 1, "ord", 2))
    axes = arg(node, 2, "dim")
    axes = [] if axes is None else ([int(axes)] if isinstance(axes, int) else [int(a) for a in axes])
    keepdim = bool(arg(node, 3, "keepdim", False))
    magnitude = ctx.emit("abs", x)
    if order == float("inf"):
        return ctx.emit("reduce_max", magnitude, axes=axes, keepdim=keepdim)
    if order == float("-inf"):
        return ctx.emit("reduce_min", magnitude, axes=axes, keepdim=keepdim)
    if order == 0:
        nonzero = ctx.emit("cast", ctx.emit("ne", x, ctx.tensor(0.0, x.dtype)), dtype=x.dtype)
        return ctx.emit("reduce_sum", nonzero, axes=axes, keepdim=keepdim)
    if order == 1:
        return ctx.emit("reduce_sum", magnitude, axes=axes, keepdim=keepdim)
    if order == 2:
        return ctx.emit("sqrt", ctx.emit("reduce_sum", ctx.emit("mul", x, x), axes=axes, keepdim=keepdim))
    powered = ctx.emit("pow", magnitude, ctx.tensor(order, x.dtype))
    return ctx.emit("pow", ctx.emit("reduce_sum", powered, axes=axes, keepdim=keepdim), ctx.tensor(1 / order, x.dtype))


@handles("aten.bucketize.Tensor")
def _bucketize(ctx: ImportContext, node: Node):
    """The bucket of each x among 1-D ``boundaries``: torch.searchsorted with the roles swapped."""
    x, boundaries = ctx.tensor(node.args[0]), ctx.tensor(node.args[1])
    right = bool(node.kwargs.get("right", False))
    dtype = DType.int32 if node.kwargs.get("out_int32", False) else DType.int64
    return _sorted_search(ctx, boundaries, x, right, dtype)


def _sorted_search(ctx: ImportContext, sequence: Value, values: Value, right: bool, dtype: DType) -> Value:
    """Insertion points of ``values`` in the last axis of ``sequence`` (1-D, or [..., N] against
    values [..., M]) by PyTorch's own binary search, step for step: start/end per value, mid =
    (start + end) // 2, go right while ``!(seq[mid] >= v)`` (``!(seq[mid] > v)`` with right=True).
    So the result is PyTorch's also where the sequence is not sorted (torch does not check) and
    for NaN values; bit_length(N) steps of one gather and a few selects."""
    common = values.dtype if values.dtype == sequence.dtype else DType.float64
    sequence, values = ctx.tensor(sequence, common), ctx.tensor(values, common)
    size = sequence.shape[-1]
    if not isinstance(size, int):  # a symbolic length: counting is the same on sorted input
        if sequence.type.rank > 1:
            sequence = ctx.emit("reshape", sequence, shape=list(sequence.shape[:-1]) + [1, size])
        rows = ctx.emit("reshape", values, shape=list(values.shape) + [1])
        below = ctx.emit("ge" if right else "gt", rows, sequence)
        return ctx.emit("reduce_sum", ctx.emit("cast", below, dtype=dtype), axes=[-1], keepdim=False)
    shape = list(values.shape)
    start = _filled(ctx, 0, DType.int64, tuple(shape))
    end = _filled(ctx, size, DType.int64, tuple(shape))
    one, two, last = (ctx.tensor(v, DType.int64) for v in (1, 2, max(size - 1, 0)))
    for _ in range(size.bit_length()):
        active = ctx.emit("lt", start, end)
        mid = ctx.emit("floor_div", ctx.emit("add", start, end), two)
        at = ctx.emit("minimum", mid, last)  # mid == N only where the search is over
        if sequence.type.rank == 1:
            probe = ctx.emit("gather", sequence, at, axis=0)
        else:
            probe = ctx.emit("gather_elements", sequence, at, axis=sequence.type.rank - 1)
        stop = ctx.emit("gt" if right else "ge", probe, values)
        go_right = ctx.emit("logical_and", active, ctx.emit("logical_not", stop))
        go_left = ctx.emit("logical_and", active, stop)
        start = ctx.emit("where", go_right, ctx.emit("add", mid, one), start)
        end = ctx.emit("where", go_left, mid, end)
    return start if dtype == DType.int64 else ctx.emit("cast", start, dtype=dtype)


@handles("aten._cdist_forward.default")
def _cdist(ctx: ImportContext, node: Node):
    a, b, p = ctx.tensor(node.args[0]), ctx.tensor(node.args[1]), float(node.args[2])
    left = ctx.emit("reshape", a, shape=list(a.shape[:-1]) + [1, a.shape[-1]])
    right = ctx.emit("reshape", b, shape=list(b.shape[:-2]) + [1] + list(b.shape[-2:]))
    diff = ctx.emit("abs", ctx.emit("sub", left, right))
    if p == 2:
        return ctx.emit("sqrt", ctx.emit("reduce_sum", ctx.emit("mul", diff, diff), axes=[-1], keepdim=False))
    if p == 1:
        return ctx.emit("reduce_sum", diff, axes=[-1], keepdim=False)
    if p == float("inf"):
        return ctx.emit("reduce_max", diff, axes=[-1], keepdim=False)
    powered = ctx.emit("pow", diff, ctx.tensor(p, a.dtype))
    return ctx.emit("pow", ctx.emit("reduce_sum", powered, axes=[-1], keepdim=False), ctx.tensor(1 / p, a.dtype))


@handles("aten.masked_scatter.default")
def _masked_scatter(ctx: ImportContext, node: Node):
    """The k-th True position takes source[k]: k = (running count of True) - 1, then a gather and
    a where. Exact, and no data-dependent shape."""
    x = ctx.tensor(node.args[0])
    mask = ctx.emit("expand", ctx.tensor(node.args[1], DType.bool), shape=list(x.shape))
    source = ctx.emit("reshape", ctx.tensor(node.args[2], x.dtype), shape=[_static_count(ctx, node.args[2])])
    total = _static_count(ctx, node.args[0])
    flat_mask = ctx.emit("reshape", mask, shape=[total])
    rank = ctx.emit("cumsum", ctx.emit("cast", flat_mask, dtype=DType.int64), axis=0)
    position = ctx.emit("maximum", ctx.emit("sub", rank, ctx.tensor(1, DType.int64)), ctx.tensor(0, DType.int64))
    taken = ctx.emit("reshape", ctx.emit("gather", source, position, axis=0), shape=list(x.shape))
    return ctx.emit("where", mask, taken, x)


def _static_count(ctx: ImportContext, tensor_node) -> int:
    shape = ctx.meta_type(tensor_node).shape
    if not all(isinstance(d, int) for d in shape):
        raise ctx.unsupported("masked_scatter on symbolic shapes")
    return int(np.prod(shape, dtype=np.int64))


@handles("aten.adaptive_max_pool1d.default", "aten.adaptive_max_pool2d.default", "aten.adaptive_max_pool3d.default")
def _adaptive_max_pool(ctx: ImportContext, node: Node):
    if _output_used(node, 1):
        raise ctx.unsupported("the indices of adaptive max pooling")
    y = ctx.emit("adaptive_max_pool", ctx.tensor(node.args[0]), output_size=list(ctx.meta_type(node, 0).shape[2:]))
    return (y, None)


@handles("aten.nonzero.default")
def _nonzero(ctx: ImportContext, node: Node):
    return ctx.emit("nonzero", ctx.tensor(node.args[0]), count=_data_dependent_dim(ctx, 0))


@handles("aten.masked_select.default")
def _masked_select(ctx: ImportContext, node: Node):
    x, mask = ctx.tensor(node.args[0]), ctx.tensor(node.args[1], DType.bool)
    shape = list(dims.broadcast(x.shape, mask.shape))
    total = _static_numel(ctx, shape)
    flat_x = ctx.emit("reshape", ctx.emit("expand", x, shape=shape) if list(x.shape) != shape else x, shape=[total])
    flat_mask = ctx.emit("reshape", ctx.emit("expand", mask, shape=shape) if list(mask.shape) != shape else mask,
                         shape=[total])
    count = _data_dependent_dim(ctx, 0)
    rows = ctx.emit("reshape", ctx.emit("nonzero", flat_mask, count=count), shape=[count])
    return ctx.emit("gather", flat_x, rows, axis=0)


def _static_numel(ctx: ImportContext, shape) -> int:
    if not all(isinstance(d, int) for d in shape):
        raise ctx.unsupported("masked_select on symbolic shapes")
    return int(np.prod(shape, dtype=np.int64))


@handles(*[str(f) for f in (operator.ge, operator.le, operator.gt, operator.lt, operator.eq, operator.ne)])
def _size_comparison(ctx: ImportContext, node: Node):
    """Comparisons of sizes feed only torch's runtime shape assertions, checked at export."""
    if any(user.target != torch.ops.aten._assert_scalar.default for user in node.users):
        raise ctx.unsupported("a size comparison used as a value")
    return None


# -- control flow ----------------------------------------------------------------------------------
@handles("cond")
def _cond(ctx: ImportContext, node: Node):
    """torch.cond(pred, true_fn, false_fn, operands). A predicate known at compile time (a
    Python bool) imports one branch; one known only at run time imports both and picks each
    output with ``where``. That is exact: torch.cond's branches are pure functions of the
    operands and return outputs of one type, so computing the unused one changes nothing."""
    from compiler.frontend import import_subgraph

    predicate, true_branch, false_branch, operands = node.args[:4]
    pred = ctx.value(predicate)
    inputs = list(ctx.value(operands))
    if isinstance(pred, bool):
        return tuple(import_subgraph(ctx, ctx.value(true_branch if pred else false_branch), inputs))
    if not isinstance(pred, Value):
        raise ctx.unsupported("a torch.cond predicate computed from symbolic sizes")
    if pred.dtype != DType.bool:
        pred = ctx.emit("ne", pred, ctx.tensor(0, pred.dtype))
    if pred.type.rank:
        pred = ctx.emit("reshape", pred, shape=[])
    taken = import_subgraph(ctx, ctx.value(true_branch), inputs)
    other = import_subgraph(ctx, ctx.value(false_branch), inputs)
    return tuple(ctx.emit("where", pred, a, b) if isinstance(a, Value) and a is not b else a
                 for a, b in zip(taken, other))


MAX_SCAN_STEPS = 256


@handles("scan")
def _scan(ctx: ImportContext, node: Node):
    """torch scan(combine_fn, init, xs, additional_inputs) over axis 0 of ``xs``, unrolled: the
    combine graph inlined once per step (a static number of steps, at most MAX_SCAN_STEPS),
    each step's outputs stacked. Returns the final carries, then the stacked outputs."""
    from compiler.frontend import import_subgraph

    combine = ctx.value(node.args[0])
    carries, xs, extra = (list(ctx.value(a)) for a in node.args[1:4])
    steps = xs[0].shape[0] if xs and xs[0].type.rank else None
    if not isinstance(steps, int) or not 0 < steps <= MAX_SCAN_STEPS:
        raise ctx.unsupported(f"a scan over {steps} steps (unrolled: a static number, 1 to {MAX_SCAN_STEPS})")
    outputs: list[list[Value]] = []
    for i in range(steps):
        slices = [ctx.emit("reshape", ctx.emit("slice", x, axis=0, start=i, end=i + 1), shape=list(x.shape[1:]))
                  for x in xs]
        results = import_subgraph(ctx, combine, carries + slices + extra)
        carries, step = results[:len(carries)], results[len(carries):]
        outputs.append([ctx.emit("reshape", y, shape=[1] + list(y.shape)) for y in step])
    stacked = [ys[0] if steps == 1 else ctx.emit("concat", *ys, axis=0) for ys in zip(*outputs)]
    return tuple(carries) + tuple(stacked)


# -- memory-shaped ops with a value meaning --------------------------------------------------------
@handles("aten.empty.memory_format", "aten.empty_strided.default", "aten.empty_like.default",
         "aten.new_empty.default", "aten.new_empty_strided.default")
def _empty(ctx: ImportContext, node: Node):
    """Uninitialised memory in PyTorch; zeros here, so results never depend on garbage."""
    return _filled(ctx, 0, ctx.out_dtype(), ctx.out_shape())


@handles("aten.copy.default", "aten.copy_.default")
def _copy(ctx: ImportContext, node: Node):
    """``x`` overwritten by ``src``: src in x's dtype, broadcast to x's shape."""
    x = ctx.tensor(node.args[0])
    src = ctx.tensor(node.args[1], x.dtype)
    return src if tuple(src.shape) == tuple(x.shape) else ctx.emit("expand", src, shape=list(x.shape))


@handles("aten.sym_numel.default")
def _sym_numel(ctx: ImportContext, node: Node):
    total: dims.Dim = 1
    for d in ctx.meta_type(node.args[0]).shape:
        total = dims.mul(total, d)
    return total


@handles("aten.slice_scatter.default")
def _slice_scatter(ctx: ImportContext, node: Node):
    """``x`` with ``x[..., start:end:step, ...] = src`` along ``dim``: index_put with an arange."""
    x = ctx.tensor(node.args[0])
    src = ctx.tensor(node.args[1], x.dtype)
    axis = int(arg(node, 2, "dim", 0)) % x.type.rank
    size = x.shape[axis]
    if not isinstance(size, int):
        raise ctx.unsupported("slice_scatter along a symbolic dim")
    start, end, step = arg(node, 3, "start"), arg(node, 4, "end"), int(arg(node, 5, "step", 1))
    positions = np.arange(size)[slice(start, end, step)]
    index = ctx.graph.add_constant(positions.astype(np.int64), "slice_positions")
    # index_put places the indexed dim first when it is not the first one: move src's dim there
    if axis:
        perm = [axis] + [d for d in range(x.type.rank) if d != axis]
        src = ctx.emit("transpose", src, perm=perm)
        moved = ctx.emit("transpose", x, perm=perm)
        put = ctx.emit("index_put", moved, src, index, axes=[0])
        inverse = [perm.index(d) for d in range(x.type.rank)]
        return ctx.emit("transpose", put, perm=inverse)
    return ctx.emit("index_put", x, src, index, axes=[0])


@handles("aten.select_scatter.default")
def _select_scatter(ctx: ImportContext, node: Node):
    """``x`` with ``x.select(dim, index) = src``."""
    x = ctx.tensor(node.args[0])
    src = ctx.tensor(node.args[1], x.dtype)
    axis = int(node.args[2]) % x.type.rank
    position = int(node.args[3])
    index = ctx.graph.add_constant(np.asarray([position], np.int64), "select_position")
    shape = list(src.shape[:axis]) + [1] + list(src.shape[axis:])
    values = ctx.emit("reshape", src, shape=shape)
    if axis:
        perm = [axis] + [d for d in range(x.type.rank) if d != axis]
        moved = ctx.emit("index_put", ctx.emit("transpose", x, perm=perm), ctx.emit("transpose", values, perm=perm),
                         index, axes=[0])
        return ctx.emit("transpose", moved, perm=[perm.index(d) for d in range(x.type.rank)])
    return ctx.emit("index_put", x, values, index, axes=[0])


@handles("aten._pdist_forward.default")
def _pdist(ctx: ImportContext, node: Node):
    """Distances between every pair of rows i < j, in row-major order: cdist, then the upper
    triangle picked by advanced indexing."""
    x = ctx.tensor(node.args[0])
    p = float(arg(node, 1, "p", 2.0))
    n = x.shape[0]
    if not isinstance(n, int):
        raise ctx.unsupported("pdist of a symbolic number of rows")
    diff = ctx.emit("abs", ctx.emit("sub", ctx.emit("reshape", x, shape=[n, 1, x.shape[1]]),
                                    ctx.emit("reshape", x, shape=[1, n, x.shape[1]])))
    if p == 2:
        dist = ctx.emit("sqrt", ctx.emit("reduce_sum", ctx.emit("mul", diff, diff), axes=[-1], keepdim=False))
    elif p == 1:
        dist = ctx.emit("reduce_sum", diff, axes=[-1], keepdim=False)
    elif p == float("inf"):
        dist = ctx.emit("reduce_max", diff, axes=[-1], keepdim=False)
    else:
        powered = ctx.emit("reduce_sum", ctx.emit("pow", diff, ctx.tensor(p, x.dtype)), axes=[-1], keepdim=False)
        dist = ctx.emit("pow", powered, ctx.tensor(1 / p, x.dtype))
    rows, cols = np.triu_indices(n, 1)
    return ctx.emit("index", dist, ctx.graph.add_constant(rows.astype(np.int64), "pdist_rows"),
                    ctx.graph.add_constant(cols.astype(np.int64), "pdist_cols"), axes=[0, 1])


@handles("aten.col2im.default")
def _col2im(ctx: ImportContext, node: Node):
    """F.fold: every column entry added into its output position. The positions are constants
    (they depend on shapes only), so this is one scatter-add into the padded image, then a crop."""
    x = ctx.tensor(node.args[0])
    output_size, kernel, dilation, padding, stride = (list(v) for v in node.args[1:6])
    n, ck, length = x.shape
    kh, kw = kernel
    channels = ck // (kh * kw) if isinstance(ck, int) else None
    if channels is None:
        raise ctx.unsupported("col2im with symbolic channels")
    hp, wp = output_size[0] + 2 * padding[0], output_size[1] + 2 * padding[1]
    blocks_w = (wp - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    ki, kj, block = np.meshgrid(np.arange(kh), np.arange(kw), np.arange(length), indexing="ij")
    rows = (block // blocks_w) * stride[0] + ki * dilation[0]
    cols = (block % blocks_w) * stride[1] + kj * dilation[1]
    flat = (rows * wp + cols).reshape(1, 1, -1).astype(np.int64)  # [1, 1, kh*kw*L]
    values = ctx.emit("reshape", x, shape=[n, channels, kh * kw * length])
    index = ctx.emit("expand", ctx.graph.add_constant(flat, "col2im_positions"), shape=[n, channels, kh * kw * length])
    zeros = _filled(ctx, 0, x.dtype, (n, channels, hp * wp))
    image = ctx.emit("reshape", ctx.emit("scatter_elements", zeros, index, values, axis=2, reduction="add"),
                     shape=[n, channels, hp, wp])
    for axis, (pad, size) in enumerate(zip(padding, output_size), start=2):
        if pad:
            image = ctx.emit("slice", image, axis=axis, start=pad, end=pad + size, step=1)
    return image


_GRID_MODES = {0: "bilinear", 1: "nearest"}
_GRID_PADDING = {0: "zeros", 1: "border", 2: "reflection"}


@handles("aten.grid_sampler_2d.default")
def _grid_sampler(ctx: ImportContext, node: Node):
    x, grid, mode, padding, align_corners = node.args[:5]
    if mode not in _GRID_MODES:
        raise ctx.unsupported("grid_sample with mode='bicubic' (bilinear and nearest are supported)")
    return ctx.emit("grid_sample", ctx.tensor(x), ctx.tensor(grid), mode=_GRID_MODES[mode],
                    padding_mode=_GRID_PADDING[padding], align_corners=bool(align_corners))


_BAG_MODES = {0: "sum", 1: "mean", 2: "max"}


@handles("aten._embedding_bag.default", "aten._embedding_bag_forward_only.default")
def _embedding_bag(ctx: ImportContext, node: Node):
    weight, indices, offsets = (ctx.tensor(v) for v in node.args[:3])
    mode = _BAG_MODES[int(arg(node, 4, "mode", 0))]
    per_sample = arg(node, 6, "per_sample_weights")
    for output in (1, 2, 3):
        if _output_used(node, output):
            raise ctx.unsupported("the bookkeeping outputs of embedding_bag (offset2bag, bag sizes, max indices)")
    y = ctx.emit("embedding_bag", weight, indices, offsets, _optional(ctx, per_sample), mode=mode,
                 include_last_offset=bool(arg(node, 7, "include_last_offset", False)),
                 padding_idx=int(arg(node, 8, "padding_idx", -1)))
    return (y, None, None, None)


@handles("aten._unique2.default", "aten.unique_dim.default", "aten._unique.default")
def _unique(ctx: ImportContext, node: Node):
    if "unique_dim" in str(node.target):
        raise ctx.unsupported("unique along a dim (only the flattened form is supported)")
    values, inverse, counts = ctx.emit_multi("unique", ctx.tensor(node.args[0]), count=_data_dependent_dim(ctx, 0, output=0))
    return (values, inverse, counts) if "unique2" in str(node.target) else (values, inverse)


# -- already-quantized models (PT2E: torch.ops.quantized_decomposed) -------------------------------
# quantize_per_* -> quantize_linear (+ a clamp when quant_min/max is narrower than the dtype),
# dequantize_per_* -> dequantize_linear, choose_qparams.tensor -> dynamic_quantize_linear's scale and
# zero point. PyTorch rounds x * (1 / scale) where ONNX (and the IR) rounds x / scale: the two
# differ by one step at about one exact rounding tie in a million values.
try:  # registers the quantized_decomposed ops, so graphs holding them can be traced and loaded
    import torch.ao.quantization.fx._decomposed
except ImportError:  # pragma: no cover - a torch build without torch.ao
    pass


def _per_tensor_qparam(ctx: ImportContext, value, dtype: DType) -> Value:
    """A scale / zero point argument (Python number or tensor) as a 0-d IR tensor of ``dtype``
    (the ``.tensor`` overloads pass 1-element tensors)."""
    v = ctx.tensor(value, dtype)
    if v.shape != ():
        if v.type.numel != 1:
            raise ctx.unsupported(f"a per-tensor scale / zero point must hold one value, got shape {v.shape}")
        v = ctx.emit("reshape", v, shape=())
    return v


def _quantized_dtype(ctx: ImportContext, dtype) -> DType:
    from compiler.errors import CompileError
    from compiler.frontend import dtype_from_torch

    try:
        result = dtype_from_torch(dtype)
    except CompileError:  # a dtype the IR does not have (float8, int4...)
        result = None
    if result not in (DType.int8, DType.uint8, DType.int16, DType.int32):
        raise ctx.unsupported(f"quantization to {dtype} (supported: int8, uint8, int16, int32)")
    return result


def _narrowed(ctx: ImportContext, q: Value, quant_min: int, quant_max: int) -> Value:
    """``q`` clamped to [quant_min, quant_max] where that is narrower than its dtype's range."""
    info = np.iinfo(q.dtype.numpy)
    if quant_min > info.min:
        q = ctx.emit("maximum", q, ctx.graph.add_constant(np.asarray(quant_min, q.dtype.numpy), "quant_min"))
    if quant_max < info.max:
        q = ctx.emit("minimum", q, ctx.graph.add_constant(np.asarray(quant_max, q.dtype.numpy), "quant_max"))
    return q


def _float_input(ctx: ImportContext, node: Node) -> Value:
    x = ctx.tensor(node.args[0])
    if x.dtype != DType.float32:
        raise ctx.unsupported(f"quantizing a {x.dtype} tensor (only float32 is supported)")
    return x


@handles("quantized_decomposed.quantize_per_tensor.default", "quantized_decomposed.quantize_per_tensor.tensor")
def _quantize_per_tensor(ctx: ImportContext, node: Node):
    scale, zero_point, quant_min, quant_max, dtype = node.args[1:6]
    qdtype = _quantized_dtype(ctx, dtype)
    q = ctx.emit("quantize_linear", _float_input(ctx, node), _per_tensor_qparam(ctx, scale, DType.float32),
                 _per_tensor_qparam(ctx, zero_point, qdtype), axis=0, dtype=qdtype)
    return _narrowed(ctx, q, int(quant_min), int(quant_max))


@handles("quantized_decomposed.quantize_per_channel.default")
def _quantize_per_channel(ctx: ImportContext, node: Node):
    scales, zero_points, axis, quant_min, quant_max, dtype = node.args[1:7]
    qdtype = _quantized_dtype(ctx, dtype)
    q = ctx.emit("quantize_linear", _float_input(ctx, node), ctx.tensor(scales, DType.float32),
                 ctx.tensor(zero_points, qdtype), axis=int(axis), dtype=qdtype)
    return _narrowed(ctx, q, int(quant_min), int(quant_max))


def _dequantized(ctx: ImportContext, node: Node, y: Value) -> Value:
    out_dtype = node.kwargs.get("out_dtype")
    if out_dtype not in (None, torch.float32):
        y = ctx.emit("cast", y, dtype=ctx.out_dtype())
    return y


@handles("quantized_decomposed.dequantize_per_tensor.default", "quantized_decomposed.dequantize_per_tensor.tensor")
def _dequantize_per_tensor(ctx: ImportContext, node: Node):
    x = ctx.tensor(node.args[0])
    scale, zero_point = node.args[1:3]
    y = ctx.emit("dequantize_linear", x, _per_tensor_qparam(ctx, scale, DType.float32),
                 _per_tensor_qparam(ctx, zero_point, x.dtype), axis=0)
    return _dequantized(ctx, node, y)


@handles("quantized_decomposed.dequantize_per_channel.default")
def _dequantize_per_channel(ctx: ImportContext, node: Node):
    x = ctx.tensor(node.args[0])
    scales, zero_points, axis = node.args[1:4]
    zp = None if zero_points is None else ctx.tensor(zero_points, x.dtype)
    y = ctx.emit("dequantize_linear", x, ctx.tensor(scales, DType.float32), zp, axis=int(axis))
    return _dequantized(ctx, node, y)


@handles("quantized_decomposed.choose_qparams.tensor")
def _choose_qparams(ctx: ImportContext, node: Node):
    """uint8 over [0, 255] is ONNX DynamicQuantizeLinear's rule; torch returns the scale as a
    float64 [1] tensor and the zero point as int64 [1]."""
    quant_min, quant_max, _eps, dtype = node.args[1:5]
    if dtype != torch.uint8 or (int(quant_min), int(quant_max)) != (0, 255):
        raise ctx.unsupported(f"choose_qparams for {dtype} [{quant_min}, {quant_max}] (only uint8 [0, 255], "
                              "the dynamic quantization onnxruntime runs fast)")
    _, scale, zero_point = ctx.emit_multi("dynamic_quantize_linear", _float_input(ctx, node))
    scale_type, zp_type = ctx.meta_type(index=0), ctx.meta_type(index=1)
    scale = ctx.emit("reshape", ctx.emit("cast", scale, dtype=scale_type.dtype), shape=scale_type.shape)
    zero_point = ctx.emit("reshape", ctx.emit("cast", zero_point, dtype=zp_type.dtype), shape=zp_type.shape)
    return scale, zero_point


# -- order statistics, shifts and searches (outside Core ATen) ----------------------------------------
def _kth_along(ctx: ImportContext, x: Value, axis: int, k: int, keepdim: bool):
    """(values, indices) of the k-th smallest (0-based) entries along ``axis``: a sort, then
    one slice of each."""
    values, indices = ctx.emit_multi("sort", x, axis=axis, descending=False)
    picked = [ctx.emit("slice", t, axis=axis, start=k, end=k + 1, step=1) for t in (values, indices)]
    if not keepdim:
        shape = [d for i, d in enumerate(x.shape) if i != axis % x.type.rank]
        picked = [ctx.emit("reshape", t, shape=shape) for t in picked]
    return tuple(picked)


def _static_size(ctx: ImportContext, x: Value, axis: int) -> int:
    size = x.shape[axis]
    if not isinstance(size, int):
        raise ctx.unsupported("an order statistic along a dynamic dimension")
    return size


@handles("aten.median.default")
def _median_all(ctx: ImportContext, node: Node):
    """torch's median is the lower of the two middle values."""
    x = ctx.tensor(node.args[0])
    n = 1
    for axis in range(x.type.rank):
        n *= _static_size(ctx, x, axis)
    flat = ctx.emit("reshape", x, shape=[n])
    values, _ = _kth_along(ctx, flat, 0, (n - 1) // 2, keepdim=False)
    return values


@handles("aten.median.dim")
def _median_dim(ctx: ImportContext, node: Node):
    x = ctx.tensor(node.args[0])
    axis = int(arg(node, 1, "dim", -1)) % max(x.type.rank, 1)
    n = _static_size(ctx, x, axis)
    return _kth_along(ctx, x, axis, (n - 1) // 2, keepdim=bool(arg(node, 2, "keepdim", False)))


@handles("aten.kthvalue.default")
def _kthvalue(ctx: ImportContext, node: Node):
    x = ctx.tensor(node.args[0])
    k = int(node.args[1])
    axis = int(arg(node, 2, "dim", -1)) % max(x.type.rank, 1)
    if not 1 <= k <= _static_size(ctx, x, axis):
        raise ctx.unsupported(f"kthvalue with k={k} outside 1..{x.shape[axis]}")
    return _kth_along(ctx, x, axis, k - 1, keepdim=bool(arg(node, 3, "keepdim", False)))


@handles("aten.__rshift__.Scalar", "aten.bitwise_right_shift.Tensor_Scalar", "aten.__rshift__.Tensor",
         "aten.bitwise_right_shift.Tensor", "aten.bitwise_right_shift.Scalar_Tensor",
         "aten.__lshift__.Scalar", "aten.bitwise_left_shift.Tensor_Scalar", "aten.__lshift__.Tensor",
         "aten.bitwise_left_shift.Tensor", "aten.bitwise_left_shift.Scalar_Tensor")
def _shift(ctx: ImportContext, node: Node):
    """Integer shifts, PyTorch's way for every amount: x << s is x * 2^s (wrapping; 0 for s < 0
    or s >= bits), x >> s is floor(x / 2^s) (arithmetic for signed; -1 or 0 by x's sign once s
    is negative or shifts out every bit). A constant amount is one mul or floor_div; a tensor of
    amounts looks 2^s up in a table of the dtype's powers of two."""
    dtype = ctx.out_dtype()
    if dtype.is_float or dtype == DType.bool:
        raise ctx.unsupported(f"a shift of {dtype} (shifts take integers)")
    left = "left" in str(node.target) or "lshift" in str(node.target)
    x, amount = ctx.tensor(node.args[0], dtype), ctx.value(node.args[1])
    bits, signed = 8 * dtype.itemsize, dtype != DType.uint8
    limit = bits if left or not signed else bits - 1  # amounts in [0, limit) are a power of two
    zero = ctx.tensor(0, dtype)
    fill = zero if left else ctx.emit("where", ctx.emit("lt", x, zero), ctx.tensor(-1, dtype), zero) \
        if signed else zero
    if isinstance(amount, int):
        if not 0 <= amount < limit:
            return ctx.emit("mul", x, zero) if fill is zero else fill
        power = ctx.graph.add_constant(np.left_shift(np.ones((), dtype.numpy), amount), "power_of_two")
        return ctx.emit("mul" if left else "floor_div", x, power)
    amount = ctx.tensor(amount, dtype)
    outside = ctx.emit("logical_or", ctx.emit("lt", amount, zero), ctx.emit("ge", amount, ctx.tensor(limit, dtype)))
    index = ctx.emit("cast", ctx.emit("where", outside, zero, amount), dtype=DType.int64)
    table = ctx.graph.add_constant(np.left_shift(np.ones(limit, dtype.numpy), np.arange(limit, dtype=dtype.numpy)),
                                   "powers_of_two")
    shifted = ctx.emit("mul" if left else "floor_div", x, ctx.emit("gather", table, index, axis=0))
    return ctx.emit("where", outside, fill, shifted)


@handles("aten.searchsorted.Tensor")
def _searchsorted(ctx: ImportContext, node: Node):
    """Insertion points of ``values`` in the last axis of ``sorted_sequence`` (PyTorch's binary
    search, see ``_sorted_search``)."""
    sequence, values = ctx.tensor(node.args[0]), ctx.tensor(node.args[1])
    if node.kwargs.get("sorter") is not None:
        raise ctx.unsupported("searchsorted with a sorter")
    right = bool(node.kwargs.get("right", False)) or node.kwargs.get("side") == "right"
    dtype = DType.int32 if node.kwargs.get("out_int32", False) else DType.int64
    return _sorted_search(ctx, sequence, values, right, dtype)


# -- recurrent layers (compiler/ops/recurrent.py) --------------------------------------------------
def _stacked_weight(ctx: ImportContext, weights: list) -> Value:
    """The per-direction weights of one layer stacked on a new leading axis: folded here when
    they are constants (the usual case, module parameters), else reshaped and concatenated."""
    values = [ctx.tensor(w) for w in weights]
    if all(v.is_const for v in values):
        return ctx.graph.add_constant(np.stack([v.const for v in values]), "rnn_weight")
    rows = [ctx.emit("reshape", v, shape=[1] + list(v.shape)) for v in values]
    return rows[0] if len(rows) == 1 else ctx.emit("concat", *rows, axis=0)


def _recurrent_imported(x, hx, params, has_biases, num_layers, dropout, train, bidirectional, *_rest) -> bool:
    """The forms of aten.lstm.input / aten.gru.input our ops express; the others (projections,
    dropout in training, unbatched input) are left to PyTorch's decomposition."""
    per_direction = 4 if has_biases else 2
    return (len(params) == num_layers * (2 if bidirectional else 1) * per_direction
            and not (train and dropout) and x.dim() == 3)


def _recurrent(ctx: ImportContext, node: Node, op: str, states: list):
    """aten.lstm.input / aten.gru.input: one IR op per layer (sequence-first), chained; the
    flat weight list holds, per layer and direction, w_ih, w_hh[, b_ih, b_hh]."""
    x_node, _, params, has_biases, num_layers, dropout, train, bidirectional, batch_first = node.args[:9]
    directions = 2 if bidirectional else 1
    per_direction = 4 if has_biases else 2
    if not _recurrent_imported(node.args[0].meta["val"], *node.args[1:9]):
        raise ctx.unsupported(f"{op} with projections, training dropout or an unbatched input")
    x = ctx.tensor(x_node)
    if batch_first:
        x = ctx.emit("transpose", x, perm=[1, 0, 2])
    hidden = ctx.value(params[1]).shape[1]
    finals: list[list[Value]] = [[] for _ in states]
    for layer in range(num_layers):
        groups = [params[(layer * directions + d) * per_direction:][:per_direction] for d in range(directions)]
        weights = [_stacked_weight(ctx, [g[j] for g in groups]) for j in range(per_direction)]
        if not has_biases:
            weights += [None, None]
        layer_states = [None if s is None else ctx.emit("slice", s, axis=0, start=layer * directions,
                                                        end=(layer + 1) * directions) for s in states]
        x, *layer_finals = ctx.emit_multi(op, x, *weights, *layer_states, hidden_size=hidden,
                                          bidirectional=bool(bidirectional))
        for collected, final in zip(finals, layer_finals):
            collected.append(final)
    if batch_first:
        x = ctx.emit("transpose", x, perm=[1, 0, 2])
    return (x,) + tuple(f[0] if len(f) == 1 else ctx.emit("concat", *f, axis=0) for f in finals)


def _state(ctx: ImportContext, state) -> Value | None:
    return None if state is None else ctx.tensor(state)


@handles("aten.lstm.input")
def _lstm(ctx: ImportContext, node: Node):
    hx = node.args[1]
    return _recurrent(ctx, node, "lstm", [_state(ctx, hx[0]), _state(ctx, hx[1])] if hx else [None, None])


@handles("aten.gru.input")
def _gru(ctx: ImportContext, node: Node):
    return _recurrent(ctx, node, "gru", [_state(ctx, node.args[1])])


_lstm.imports_when = _recurrent_imported
_gru.imports_when = _recurrent_imported
