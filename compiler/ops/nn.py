"""Neural-network ops: matmul/linear, convolution, normalisation, softmax, pooling, attention.

Layouts follow PyTorch: channels at dim 1 (NC...), linear weights are ``[out, in]``, convolution
weights ``[out, in/groups, *kernel]``. References compute in the input dtype; reductions that
need it (normalisation, softmax, attention) compute in float64 and round back, which makes the
reference at least as accurate as any backend it checks.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from compiler import dims
from compiler.ir import DType, TensorType
from compiler.ops import Attr, defop
from compiler.ops.elementwise import broadcast_types


def _same_dtype(*types: TensorType | None) -> None:
    present = [t for t in types if t is not None]
    if len({t.dtype for t in present}) > 1:
        raise ValueError(f"inputs have mixed dtypes {[str(t.dtype) for t in present]} (insert a cast)")
    if present and not present[0].dtype.is_float:
        raise ValueError(f"expects floating-point inputs, got {present[0].dtype}")


# -- fused activations -----------------------------------------------------------------------------
# conv and linear may carry a fused activation (set by passes.fuse_activation): the name of a
# unary op plus its float arguments. Its semantics are that op's reference, applied to the output.
FUSABLE_ACTIVATIONS: dict[str, tuple[str, dict, tuple[str, ...]]] = {
    # activation name: (unary op, fixed attrs, attr names taken from activation_args in order)
    "relu": ("relu", {}, ()), "sigmoid": ("sigmoid", {}, ()), "tanh": ("tanh", {}, ()),
    "silu": ("silu", {}, ()), "hardswish": ("hardswish", {}, ()), "hardsigmoid": ("hardsigmoid", {}, ()),
    "gelu": ("gelu", {"approximate": "none"}, ()), "gelu_tanh": ("gelu", {"approximate": "tanh"}, ()),
    "clamp": ("clamp", {}, ("min", "max")), "leaky_relu": ("leaky_relu", {}, ("negative_slope",)),
}
ACTIVATION_ATTRS = {"activation": Attr("str", ""), "activation_args": Attr("floats", ())}


def activation_op(activation: str, args: tuple) -> tuple[str, dict]:
    """(unary op name, its attrs) for a fused activation."""
    if activation not in FUSABLE_ACTIVATIONS:
        raise ValueError(f"unknown fused activation {activation!r}")
    op, fixed, names = FUSABLE_ACTIVATIONS[activation]
    if len(args) != len(names):
        raise ValueError(f"activation {activation} takes {len(names)} args, got {len(args)}")
    attrs = dict(fixed)
    attrs.update({n: (None if np.isnan(a) else a) for n, a in zip(names, args)})  # NaN: bound absent
    return op, attrs


def _apply_activation(y: np.ndarray, activation: str, activation_args: tuple) -> np.ndarray:
    if not activation:
        return y
    from compiler.ops import get_op

    op, attrs = activation_op(activation, activation_args)
    return get_op(op).evaluate([y], attrs)[0]


def _check_activation(activation: str, activation_args: tuple) -> None:
    if activation:
        activation_op(activation, activation_args)


# -- matmul / linear -------------------------------------------------------------------------
def _matmul_type(a: TensorType, b: TensorType) -> TensorType:
    if a.dtype != b.dtype:
        raise ValueError(f"matmul of {a.dtype} and {b.dtype} (insert a cast)")
    if a.rank == 0 or b.rank == 0:
        raise ValueError("matmul needs inputs of rank >= 1")
    if a.rank == 1 and b.rank == 1:
        return TensorType(a.dtype, ())
    a_shape = (1,) + a.shape if a.rank == 1 else a.shape
    b_shape = b.shape + (1,) if b.rank == 1 else b.shape
    k1, k2 = a_shape[-1], b_shape[-2]
    if isinstance(k1, int) and isinstance(k2, int) and k1 != k2:
        raise ValueError(f"matmul inner dims differ: {a.shape} @ {b.shape}")
    batch = dims.broadcast(a_shape[:-2], b_shape[:-2])
    out = batch + ((a_shape[-2],) if a.rank > 1 else ()) + ((b_shape[-1],) if b.rank > 1 else ())
    return TensorType(a.dtype, out)


def _prod(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


def _gemm_flops(ins, outs, **_):
    """2 * output elements * reduction length."""
    return 2 * _prod(outs[0]) * ins[0][-1]


@defop("matmul", ["a", "b"], infer=_matmul_type, tags=("gemm",), flops=_gemm_flops)
def matmul(a, b):
    """``a @ b`` with numpy/PyTorch batching and 1-d promotion."""
    return np.matmul(a, b).astype(a.dtype)


def _linear_type(x: TensorType, weight: TensorType, bias: TensorType | None = None, *,
                 activation="", activation_args=()) -> TensorType:
    _same_dtype(x, weight, bias)
    _check_activation(activation, activation_args)
    if weight.rank != 2 or x.rank < 1:
        raise ValueError(f"linear needs x[..., in] and weight[out, in], got {x.shape}, {weight.shape}")
    if isinstance(x.shape[-1], int) and x.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear input has {x.shape[-1]} features, weight expects {weight.shape[1]}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"linear bias shape {bias.shape} != ({weight.shape[0]},)")
    return TensorType(x.dtype, x.shape[:-1] + (weight.shape[0],))


@defop("linear", ["x", "weight", "bias?"], infer=_linear_type, tags=("gemm",), attrs=ACTIVATION_ATTRS,
       flops=_gemm_flops)
def linear(x, weight, bias=None, *, activation="", activation_args=()):
    """``act(x @ weight.T + bias)`` (PyTorch ``nn.Linear``; ``act`` only when fused)."""
    y = np.matmul(x, weight.T)
    if bias is not None:
        y = y + bias
    return _apply_activation(y.astype(x.dtype), activation, activation_args)


# -- convolution -----------------------------------------------------------------------------
def _window_out(size, kernel: int, stride: int, pad_lo: int, pad_hi: int, dilation: int,
                ceil_mode: bool = False):
    span = dilation * (kernel - 1) + 1
    if isinstance(size, int):
        total = size + pad_lo + pad_hi - span
        out = (-(-total // stride) if ceil_mode else total // stride) + 1
        if ceil_mode and (out - 1) * stride >= size + pad_lo:
            out -= 1  # PyTorch: the last window must start inside the input or left padding
        if out < 1:
            raise ValueError(f"window {kernel} (dilation {dilation}) larger than padded input {size}")
        return out
    if ceil_mode:
        raise ValueError("ceil_mode pooling over a symbolic spatial dim is not supported")
    return dims.add(dims.floordiv(dims.sub(dims.add(size, pad_lo + pad_hi), span), stride), 1)


def _conv_type(x: TensorType, weight: TensorType, bias: TensorType | None = None, *,
               stride, padding, dilation, groups, activation="", activation_args=()) -> TensorType:
    _same_dtype(x, weight, bias)
    _check_activation(activation, activation_args)
    nd = weight.rank - 2
    if nd < 1 or x.rank != nd + 2:
        raise ValueError(f"conv needs x[N, C, *spatial] and weight[O, C/groups, *kernel], got {x.shape}, {weight.shape}")
    if not (len(stride) == len(dilation) == nd and len(padding) == 2 * nd):
        raise ValueError(f"conv{nd}d needs {nd} strides/dilations and {2 * nd} pads (begin..., end...)")
    if isinstance(x.shape[1], int) and x.shape[1] != weight.shape[1] * groups:
        raise ValueError(f"conv input has {x.shape[1]} channels, weight expects {weight.shape[1]}x{groups} groups")
    if weight.shape[0] % groups:
        raise ValueError(f"conv output channels {weight.shape[0]} not divisible by groups {groups}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"conv bias shape {bias.shape} != ({weight.shape[0]},)")
    spatial = tuple(_window_out(x.shape[2 + i], weight.shape[2 + i], stride[i], padding[i], padding[nd + i],
                                dilation[i]) for i in range(nd))
    return TensorType(x.dtype, (x.shape[0], weight.shape[0]) + spatial)


def _pad_spatial(x, padding, value=0.0):
    nd = x.ndim - 2
    pads = [(0, 0), (0, 0)] + [(padding[i], padding[nd + i]) for i in range(nd)]
    return np.pad(x, pads, constant_values=value)


def _windows(x, kernel, stride, dilation):
    """View [N, C, *out, *kernel] of the (already padded) input."""
    nd = len(kernel)
    spans = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation))
    win = sliding_window_view(x, spans, axis=tuple(range(2, 2 + nd)))
    index = (slice(None), slice(None)) + tuple(slice(None, None, s) for s in stride) \
        + tuple(slice(None, None, d) for d in dilation)
    return win[index]


def _conv_flops(ins, outs, **_):
    """2 * output elements * (input channels per group * kernel size)."""
    return 2 * _prod(outs[0]) * _prod(ins[1][1:])


@defop("conv", ["x", "weight", "bias?"], infer=_conv_type, tags=("conv",), flops=_conv_flops,
       attrs={"stride": Attr("ints"), "padding": Attr("ints"), "dilation": Attr("ints"),
              "groups": Attr("int", 1), **ACTIVATION_ATTRS})
def conv(x, weight, bias=None, *, stride, padding, dilation, groups, activation="", activation_args=()):
    """N-d convolution (cross-correlation); ``padding`` is (begin..., end...) per spatial dim;
    then the fused activation, if any."""
    nd = weight.ndim - 2
    win = _windows(_pad_spatial(x, padding), weight.shape[2:], stride, dilation)
    n, c = x.shape[:2]
    cg, og = c // groups, weight.shape[0] // groups
    letters = "defghi"[:nd]
    kernel_letters = "uvwxyz"[:nd]
    outs = []
    for g in range(groups):
        xg = win[:, g * cg:(g + 1) * cg].astype(np.float64)
        wg = weight[g * og:(g + 1) * og].astype(np.float64)
        outs.append(np.einsum(f"nc{letters}{kernel_letters},oc{kernel_letters}->no{letters}", xg, wg,
                              optimize=True))
    y = np.concatenate(outs, axis=1)
    if bias is not None:
        y = y + bias.reshape((1, -1) + (1,) * nd)
    return _apply_activation(y.astype(x.dtype), activation, activation_args)


def _conv_transpose_type(x: TensorType, weight: TensorType, bias: TensorType | None = None, *, stride, padding,
                         output_padding, dilation, groups) -> TensorType:
    _same_dtype(x, weight, bias)
    nd = weight.rank - 2
    if nd < 1 or x.rank != nd + 2:
        raise ValueError(f"conv_transpose needs x[N, C, *spatial] and weight[C, O/groups, *kernel], got "
                         f"{x.shape}, {weight.shape}")
    if not (len(stride) == len(dilation) == len(output_padding) == nd and len(padding) == 2 * nd):
        raise ValueError(f"conv_transpose{nd}d needs {nd} strides/dilations/output paddings and {2 * nd} pads")
    if isinstance(x.shape[1], int) and x.shape[1] != weight.shape[0]:
        raise ValueError(f"conv_transpose input has {x.shape[1]} channels, weight expects {weight.shape[0]}")
    out_channels = weight.shape[1] * groups
    if bias is not None and bias.shape != (out_channels,):
        raise ValueError(f"conv_transpose bias shape {bias.shape} != ({out_channels},)")
    spatial = []
    for i in range(nd):
        size = x.shape[2 + i]
        extent = dilation[i] * (weight.shape[2 + i] - 1) + output_padding[i] + 1 - padding[i] - padding[nd + i]
        spatial.append((size - 1) * stride[i] + extent if isinstance(size, int)
                       else dims.add(dims.mul(dims.sub(size, 1), stride[i]), extent))
    return TensorType(x.dtype, (x.shape[0], out_channels) + tuple(spatial))


@defop("conv_transpose", ["x", "weight", "bias?"], infer=_conv_transpose_type, tags=("conv",),
       attrs={"stride": Attr("ints"), "padding": Attr("ints"), "output_padding": Attr("ints"),
              "dilation": Attr("ints"), "groups": Attr("int", 1)})
def conv_transpose(x, weight, bias=None, *, stride, padding, output_padding, dilation, groups):
    """Transposed convolution (the gradient of conv with respect to its input): the input
    dilated by ``stride``, padded by ``dilation * (k - 1) - padding`` (plus ``output_padding`` at
    the end) and convolved with the flipped kernel, channels swapped per group."""
    nd = weight.ndim - 2
    n, c = x.shape[:2]
    dilated = np.zeros((n, c) + tuple((s - 1) * st + 1 for s, st in zip(x.shape[2:], stride)), dtype=np.float64)
    dilated[(slice(None), slice(None)) + tuple(slice(None, None, st) for st in stride)] = x
    flipped = np.flip(weight.astype(np.float64), axis=tuple(range(2, 2 + nd)))
    cg = c // groups
    as_conv = np.concatenate([flipped[g * cg:(g + 1) * cg].swapaxes(0, 1) for g in range(groups)], axis=0)
    begin = [dilation[i] * (weight.shape[2 + i] - 1) - padding[i] for i in range(nd)]
    end = [dilation[i] * (weight.shape[2 + i] - 1) - padding[nd + i] + output_padding[i] for i in range(nd)]
    # negative "padding" crops: pad by the positive part, then cut
    padded = _pad_spatial(dilated, [max(b, 0) for b in begin] + [max(e, 0) for e in end])
    crop = (slice(None), slice(None)) + tuple(slice(max(-b, 0), padded.shape[2 + i] - max(-e, 0))
                                              for i, (b, e) in enumerate(zip(begin, end)))
    y = conv(padded[crop], as_conv, None, stride=(1,) * nd, padding=(0,) * (2 * nd), dilation=dilation,
             groups=groups)
    if bias is not None:
        y = y + bias.reshape((1, -1) + (1,) * nd)
    return y.astype(x.dtype)


# -- normalisation ---------------------------------------------------------------------------
def _batch_norm_type(x, mean, var, weight=None, bias=None, *, eps) -> TensorType:
    _same_dtype(x, mean, var, weight, bias)
    if x.rank < 2:
        raise ValueError("batch_norm needs x[N, C, ...]")
    for t in (mean, var, weight, bias):
        if t is not None and t.shape != (x.shape[1],):
            raise ValueError(f"batch_norm statistics must have shape ({x.shape[1]},), got {t.shape}")
    return x


@defop("batch_norm", ["x", "mean", "var", "weight?", "bias?"], infer=_batch_norm_type,
       attrs={"eps": Attr("float", 1e-5)}, tags=("norm",))
def batch_norm(x, mean, var, weight=None, bias=None, *, eps):
    """Inference batch norm over channel dim 1 with running statistics."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    y = (x.astype(np.float64) - mean.reshape(shape)) / np.sqrt(var.astype(np.float64).reshape(shape) + eps)
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y.astype(x.dtype)


def _layer_norm_type(x, weight=None, bias=None, *, normalized_ndim, eps) -> TensorType:
    _same_dtype(x, weight, bias)
    if not 1 <= normalized_ndim <= x.rank:
        raise ValueError(f"layer_norm over {normalized_ndim} dims of a rank-{x.rank} input")
    for t in (weight, bias):
        if t is not None and t.shape != x.shape[x.rank - normalized_ndim:]:
            raise ValueError(f"layer_norm affine shape {t.shape} != {x.shape[x.rank - normalized_ndim:]}")
    return x


@defop("layer_norm", ["x", "weight?", "bias?"], infer=_layer_norm_type, tags=("norm",),
       attrs={"normalized_ndim": Attr("int", 1), "eps": Attr("float", 1e-5)})
def layer_norm(x, weight=None, bias=None, *, normalized_ndim, eps):
    """Normalise over the last ``normalized_ndim`` dims (biased variance), then scale and shift."""
    axes = tuple(range(x.ndim - normalized_ndim, x.ndim))
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=axes, keepdims=True)
    var = ((x64 - mean) ** 2).mean(axis=axes, keepdims=True)
    y = (x64 - mean) / np.sqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y.astype(x.dtype)


def _group_norm_type(x, weight=None, bias=None, *, groups, eps) -> TensorType:
    _same_dtype(x, weight, bias)
    channels = x.shape[1] if x.rank >= 2 else None
    if channels is None or (isinstance(channels, int) and channels % groups):
        raise ValueError(f"group_norm needs an N, C, ... input with C divisible by {groups} groups, got {x.shape}")
    for t in (weight, bias):
        if t is not None and t.shape != (channels,):
            raise ValueError(f"group_norm affine shape {t.shape} != ({channels},)")
    return x


@defop("group_norm", ["x", "weight?", "bias?"], infer=_group_norm_type, tags=("norm",),
       attrs={"groups": Attr("int"), "eps": Attr("float", 1e-5)})
def group_norm(x, weight=None, bias=None, *, groups, eps):
    """Normalise each group of C/groups channels over its channels and spatial positions
    (biased variance), then scale and shift per channel. groups == C is instance norm."""
    n, c = x.shape[:2]
    x64 = x.astype(np.float64).reshape(n, groups, -1)
    mean = x64.mean(axis=2, keepdims=True)
    var = ((x64 - mean) ** 2).mean(axis=2, keepdims=True)
    y = ((x64 - mean) / np.sqrt(var + eps)).reshape(x.shape)
    affine_shape = (1, c) + (1,) * (x.ndim - 2)
    if weight is not None:
        y = y * weight.reshape(affine_shape)
    if bias is not None:
        y = y + bias.reshape(affine_shape)
    return y.astype(x.dtype)


def _axis_float_type(x: TensorType, *, axis) -> TensorType:
    if not x.dtype.is_float:
        raise ValueError(f"expects a floating-point input, got {x.dtype}")
    if not -x.rank <= axis < max(x.rank, 1):
        raise ValueError(f"axis {axis} out of range for rank {x.rank}")
    return x


@defop("softmax", ["x"], infer=_axis_float_type, attrs={"axis": Attr("int")}, tags=("reduction",))
def softmax(x, *, axis):
    """exp(x) / sum(exp(x)) along ``axis``, max-subtracted."""
    x64 = x.astype(np.float64)
    e = np.exp(x64 - x64.max(axis=axis, keepdims=True))
    return (e / e.sum(axis=axis, keepdims=True)).astype(x.dtype)


@defop("log_softmax", ["x"], infer=_axis_float_type, attrs={"axis": Attr("int")}, tags=("reduction",))
def log_softmax(x, *, axis):
    """x - logsumexp(x) along ``axis``."""
    x64 = x.astype(np.float64)
    shifted = x64 - x64.max(axis=axis, keepdims=True)
    return (shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))).astype(x.dtype)


# -- pooling ---------------------------------------------------------------------------------
def _pool_type(x: TensorType, *, kernel, stride, padding, dilation=None, ceil_mode=False, **_) -> TensorType:
    nd = len(kernel)
    dilation = dilation or (1,) * nd
    if x.rank != nd + 2 or len(stride) != nd or len(padding) != 2 * nd:
        raise ValueError(f"pool{nd}d needs x[N, C, *spatial{nd}], {nd} strides and {2 * nd} pads")
    spatial = tuple(_window_out(x.shape[2 + i], kernel[i], stride[i], padding[i], padding[nd + i],
                                dilation[i], ceil_mode) for i in range(nd))
    return TensorType(x.dtype, x.shape[:2] + spatial)


def _ceil_extra(x_shape, out_shape, kernel, stride, padding, dilation):
    """Extra end padding so ceil_mode windows fit in the padded input."""
    nd = len(kernel)
    extra = []
    for i in range(nd):
        need = (out_shape[i] - 1) * stride[i] + dilation[i] * (kernel[i] - 1) + 1
        have = x_shape[2 + i] + padding[i] + padding[nd + i]
        extra.append(max(0, need - have))
    return extra


@defop("max_pool", ["x"], infer=_pool_type, tags=("pool",),
       attrs={"kernel": Attr("ints"), "stride": Attr("ints"), "padding": Attr("ints"),
              "dilation": Attr("ints"), "ceil_mode": Attr("bool", False)})
def max_pool(x, *, kernel, stride, padding, dilation, ceil_mode):
    """Max over windows; padding never wins (padded with -inf)."""
    nd = len(kernel)
    out = _pool_type(TensorType_of(x), kernel=kernel, stride=stride, padding=padding,
                     dilation=dilation, ceil_mode=ceil_mode).shape[2:]
    extra = _ceil_extra(x.shape, out, kernel, stride, padding, dilation)
    pads = tuple(padding[:nd]) + tuple(p + e for p, e in zip(padding[nd:], extra))
    low = -np.inf if np.issubdtype(x.dtype, np.floating) else np.iinfo(x.dtype).min
    win = _windows(_pad_spatial(x, pads, low), kernel, stride, dilation)
    y = win.max(axis=tuple(range(-nd, 0)))
    return y[(slice(None), slice(None)) + tuple(slice(0, o) for o in out)].astype(x.dtype)


@defop("avg_pool", ["x"], infer=_pool_type, tags=("pool",),
       attrs={"kernel": Attr("ints"), "stride": Attr("ints"), "padding": Attr("ints"),
              "ceil_mode": Attr("bool", False), "count_include_pad": Attr("bool", True)})
def avg_pool(x, *, kernel, stride, padding, ceil_mode, count_include_pad):
    """Mean over windows. With ``count_include_pad`` the divisor counts the explicit zero
    padding but never the implicit ceil_mode overhang (as PyTorch)."""
    nd = len(kernel)
    ones = (1,) * nd
    out = _pool_type(TensorType_of(x), kernel=kernel, stride=stride, padding=padding,
                     ceil_mode=ceil_mode).shape[2:]
    extra = _ceil_extra(x.shape, out, kernel, stride, padding, ones)
    pads = tuple(padding[:nd]) + tuple(p + e for p, e in zip(padding[nd:], extra))
    x64 = x.astype(np.float64)
    sums = _windows(_pad_spatial(x64, pads), kernel, stride, ones).sum(axis=tuple(range(-nd, 0)))
    if count_include_pad:
        # Count of positions inside input + explicit padding (not the ceil overhang).
        padded = tuple(x.shape[2 + i] + padding[i] + padding[nd + i] for i in range(nd))
        mask = np.pad(np.ones(padded), [(0, e) for e in extra])
    else:
        mask = np.pad(np.ones(x.shape[2:]), [(padding[i], padding[nd + i] + extra[i]) for i in range(nd)])
    counts = _windows(mask[None, None], kernel, stride, ones).sum(axis=tuple(range(-nd, 0)))
    y = sums / counts
    return y[(slice(None), slice(None)) + tuple(slice(0, o) for o in out)].astype(x.dtype)


def _pool_with_indices_type(x: TensorType, **attrs) -> tuple[TensorType, TensorType]:
    y = _pool_type(x, **attrs)
    return y, TensorType(DType.int64, y.shape)


@defop("max_pool_with_indices", ["x"], infer=_pool_with_indices_type, tags=("pool",),
       attrs={"kernel": Attr("ints"), "stride": Attr("ints"), "padding": Attr("ints"),
              "dilation": Attr("ints"), "ceil_mode": Attr("bool", False)})
def max_pool_with_indices(x, *, kernel, stride, padding, dilation, ceil_mode):
    """``max_pool`` plus, per output, the index of the first maximum in its (N, C) plane of the
    unpadded input, flattened row-major over the spatial dims (as PyTorch returns it)."""
    nd = len(kernel)
    y = max_pool(x, kernel=kernel, stride=stride, padding=padding, dilation=dilation, ceil_mode=ceil_mode)
    out = y.shape[2:]
    extra = _ceil_extra(x.shape, out, kernel, stride, padding, dilation)
    pads = tuple(padding[:nd]) + tuple(p + e for p, e in zip(padding[nd:], extra))
    low = -np.inf if np.issubdtype(x.dtype, np.floating) else np.iinfo(x.dtype).min
    win = _windows(_pad_spatial(x, pads, low), kernel, stride, dilation)
    win = win[(slice(None), slice(None)) + tuple(slice(0, o) for o in out)]
    local = win.reshape(win.shape[:2 + nd] + (-1,)).argmax(axis=-1)  # first maximum in each window
    offsets = np.unravel_index(local, kernel)
    flat = np.zeros(local.shape, dtype=np.int64)
    for i in range(nd):
        start = np.arange(out[i]) * stride[i] - padding[i]
        shape = [1] * (2 + nd)
        shape[2 + i] = out[i]
        position = start.reshape(shape) + offsets[i] * dilation[i]
        flat = flat * x.shape[2 + i] + position
    return y, flat.astype(np.int64)


def TensorType_of(array: np.ndarray) -> TensorType:  # noqa: N802 - reads like the type it builds
    from compiler.ir import type_of_array

    return type_of_array(array)


def _adaptive_type(x: TensorType, *, output_size) -> TensorType:
    nd = len(output_size)
    if x.rank != nd + 2:
        raise ValueError(f"adaptive_avg_pool{nd}d needs x[N, C, *spatial{nd}], got {x.shape}")
    return TensorType(x.dtype, x.shape[:2] + tuple(output_size))


@defop("adaptive_avg_pool", ["x"], infer=_adaptive_type, attrs={"output_size": Attr("ints")},
       tags=("pool",))
def adaptive_avg_pool(x, *, output_size):
    """PyTorch adaptive average pooling over ``adaptive_bins``."""
    return _adaptive_pool(x.astype(np.float64), output_size, np.mean).astype(x.dtype)


def adaptive_bins(size: int, out: int) -> list[tuple[int, int]]:
    """PyTorch's adaptive pooling bins along one axis: bin i spans [floor(i*L/O), ceil((i+1)*L/O)).
    Backends that unroll the bins use this too."""
    return [((i * size) // out, -(-((i + 1) * size) // out)) for i in range(out)]


def _adaptive_pool(y: np.ndarray, output_size, reduce) -> np.ndarray:
    """``reduce`` over each box of bins; a box reduction separates into one per axis."""
    for axis, out in enumerate(output_size, start=2):
        y = np.stack([reduce(np.take(y, range(lo, hi), axis=axis), axis=axis)
                      for lo, hi in adaptive_bins(y.shape[axis], out)], axis=axis)
    return y


@defop("adaptive_max_pool", ["x"], infer=_adaptive_type, attrs={"output_size": Attr("ints")}, tags=("pool",))
def adaptive_max_pool(x, *, output_size):
    """PyTorch adaptive max pooling over ``adaptive_bins``."""
    return _adaptive_pool(x, output_size, np.max).astype(x.dtype)


# -- attention -------------------------------------------------------------------------------
def _sdpa_type(q, k, v, mask=None, *, is_causal, scale) -> TensorType:
    _same_dtype(q, k, v)
    if q.rank < 2 or k.rank != q.rank or v.rank != q.rank:
        raise ValueError("attention needs q, k, v of equal rank >= 2")
    if mask is not None and not (mask.dtype == q.dtype or mask.dtype.name == "bool"):
        raise ValueError(f"attention mask must be bool or {q.dtype}")
    batch = dims.broadcast(dims.broadcast(q.shape[:-2], k.shape[:-2]), v.shape[:-2])
    out = batch + (q.shape[-2], v.shape[-1])
    if mask is not None:  # scores [.., Lq, Lk] + mask broadcast: mask may widen the batch dims too
        scores = dims.broadcast(batch + (q.shape[-2], k.shape[-2]), mask.shape)
        out = scores[:-2] + out[-2:]
    return TensorType(q.dtype, out)


def _attention_flops(ins, outs, **_):
    """q @ k^T and p @ v: 2 * B * Lq * Lk * (D + Dv)."""
    q, k, v = ins[:3]
    return 2 * _prod(q[:-1]) * k[-2] * (q[-1] + v[-1])


@defop("attention", ["q", "k", "v", "mask?"], infer=_sdpa_type, tags=("attention",), flops=_attention_flops,
       attrs={"is_causal": Attr("bool", False), "scale": Attr("optional_float", None)})
def attention(q, k, v, mask=None, *, is_causal, scale):
    """softmax(q @ k^T * scale + mask) @ v (PyTorch scaled_dot_product_attention).
    A bool mask keeps positions where it is True; ``is_causal`` keeps j <= i."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = np.matmul(q.astype(np.float64), np.swapaxes(k.astype(np.float64), -1, -2)) * scale
    if is_causal:
        lq, lk = s.shape[-2:]
        s = np.where(np.tril(np.ones((lq, lk), dtype=bool)), s, -np.inf)
    if mask is not None:
        s = np.where(mask, s, -np.inf) if mask.dtype == np.bool_ else s + mask
    s = s - s.max(axis=-1, keepdims=True)
    p = np.exp(s)
    p = p / p.sum(axis=-1, keepdims=True)
    return np.matmul(p, v.astype(np.float64)).astype(q.dtype)


def _mha_type(q, k, v, *, num_heads, scale) -> TensorType:
    _same_dtype(q, k, v)
    if not (q.rank == k.rank == v.rank == 3):
        raise ValueError("multi_head_attention needs q, k, v of shape [B, S, E]")
    for t in (q, k, v):
        if isinstance(t.shape[2], int) and t.shape[2] % num_heads:
            raise ValueError(f"embedding size {t.shape[2]} is not divisible by {num_heads} heads")
    return TensorType(q.dtype, (q.shape[0], q.shape[1], v.shape[2]))


def _split_heads(x: np.ndarray, heads: int) -> np.ndarray:
    b, s, e = x.shape
    return x.reshape(b, s, heads, e // heads).transpose(0, 2, 1, 3)


def _mha_flops(ins, outs, **_):
    q, k, v = ins
    return 2 * q[0] * q[1] * k[1] * (q[2] + v[2])


@defop("multi_head_attention", ["q", "k", "v"], infer=_mha_type, tags=("attention",), flops=_mha_flops,
       attrs={"num_heads": Attr("int"), "scale": Attr("float")})
def multi_head_attention(q, k, v, *, num_heads, scale):
    """Split [B, S, E] q/k/v into ``num_heads`` heads, run ``attention`` per head with
    ``scale``, and merge the heads back to [B, S, E_v] (no mask, not causal)."""
    y = attention(_split_heads(q, num_heads), _split_heads(k, num_heads), _split_heads(v, num_heads),
                  is_causal=False, scale=scale)
    b, h, s, d = y.shape
    return np.ascontiguousarray(y.transpose(0, 2, 1, 3).reshape(b, s, h * d))


def _qkv_attention_type(x, weight, bias=None, *, num_heads, scale) -> TensorType:
    _same_dtype(x, weight, bias)
    if x.rank != 3 or weight.rank != 2:
        raise ValueError(f"qkv_attention needs x [B, S, E_in] and weight [3E, E_in], got {x.shape}, {weight.shape}")
    rows = weight.shape[0]
    if not isinstance(rows, int) or rows % 3 or (rows // 3) % num_heads:
        raise ValueError(f"qkv_attention weight rows {rows} are not 3 x a multiple of {num_heads} heads")
    if isinstance(x.shape[2], int) and x.shape[2] != weight.shape[1]:
        raise ValueError(f"qkv_attention input has {x.shape[2]} features, weight expects {weight.shape[1]}")
    if bias is not None and bias.shape != (rows,):
        raise ValueError(f"qkv_attention bias shape {bias.shape} != ({rows},)")
    return TensorType(x.dtype, (x.shape[0], x.shape[1], rows // 3))


def _qkv_attention_flops(ins, outs, **_):
    x, w = ins[0], ins[1]
    b, s, e_in = x
    e = w[0] // 3
    return 2 * b * s * e_in * w[0] + 2 * b * s * s * 2 * e


@defop("qkv_attention", ["x", "weight", "bias?"], infer=_qkv_attention_type, tags=("attention",),
       flops=_qkv_attention_flops, attrs={"num_heads": Attr("int"), "scale": Attr("float")})
def qkv_attention(x, weight, bias=None, *, num_heads, scale):
    """Self-attention with packed projections (``nn.MultiheadAttention``'s ``in_proj_weight``
    layout): ``q, k, v = split(linear(x, weight [3E, E_in], bias [3E]), 3, axis=-1)``, then
    ``multi_head_attention(q, k, v; num_heads, scale)``."""
    q, k, v = np.split(linear(x, weight, bias), 3, axis=-1)
    return multi_head_attention(q, k, v, num_heads=num_heads, scale=scale)


# -- embedding / gather ----------------------------------------------------------------------
def _gather_type(x: TensorType, indices: TensorType, *, axis) -> TensorType:
    if not indices.dtype.is_int:
        raise ValueError(f"gather indices must be integers, got {indices.dtype}")
    axis = axis % x.rank
    return TensorType(x.dtype, x.shape[:axis] + indices.shape + x.shape[axis + 1:])


@defop("gather", ["x", "indices"], infer=_gather_type, attrs={"axis": Attr("int", 0)},
       tags=("indexing",))
def gather(x, indices, *, axis):
    """``np.take(x, indices, axis)``: embedding lookup and index_select. Negative indices count
    from the end; out-of-range indices are an error."""
    size = x.shape[axis]
    if indices.size and (indices.min() < -size or indices.max() >= size):
        raise IndexError(f"gather index out of range [{-size}, {size})")
    return np.take(x, indices.astype(np.int64), axis=axis)


__all__ = ["broadcast_types"]


# -- resize ----------------------------------------------------------------------------------------
RESIZE_MODES = ("nearest", "linear", "cubic")
CUBIC_A = -0.75  # PyTorch's bicubic coefficient


def _resize_type(x: TensorType, *, sizes, mode, align_corners, scales) -> TensorType:
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")
    if len(sizes) != x.rank - 2 or x.rank < 3:
        raise ValueError(f"resize needs one output size per spatial dim of an N, C, ... input, got {sizes}")
    if scales and len(scales) != len(sizes):
        raise ValueError("resize scales must match the spatial dims")
    if align_corners and mode == "nearest":
        raise ValueError("align_corners applies to linear and cubic modes only")
    if not x.dtype.is_float:
        raise ValueError(f"resize expects a floating-point input, got {x.dtype}")
    return TensorType(x.dtype, tuple(x.shape[:2]) + tuple(sizes))


def _source_coords(out_size: int, in_size: int, scale: float | None, mode: str, align_corners: bool) -> np.ndarray:
    """Where each output position samples the input, PyTorch's rules: ``scale`` is the user's
    scale factor when given (input/output ratio otherwise)."""
    dst = np.arange(out_size, dtype=np.float64)
    if align_corners:
        return dst * ((in_size - 1) / (out_size - 1)) if out_size > 1 else np.zeros(out_size)
    ratio = 1.0 / scale if scale else in_size / out_size
    if mode == "nearest":
        return np.minimum(np.floor(dst * ratio), in_size - 1)
    src = (dst + 0.5) * ratio - 0.5
    return np.maximum(src, 0.0) if mode == "linear" else src


def _cubic_weights(t: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution weights for the 4 taps around a fractional offset ``t``."""
    a = CUBIC_A

    def near(d):  # |d| <= 1
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d):  # 1 < |d| < 2
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def _resize_axis(x: np.ndarray, axis: int, out_size: int, scale, mode: str, align_corners: bool) -> np.ndarray:
    in_size = x.shape[axis]
    src = _source_coords(out_size, in_size, scale, mode, align_corners)
    if mode == "nearest":
        return np.take(x, src.astype(np.int64), axis=axis)
    base = np.floor(src).astype(np.int64)
    frac = src - base
    shape = [1] * x.ndim
    shape[axis] = out_size
    if mode == "linear":
        lo, hi = np.minimum(base, in_size - 1), np.minimum(base + 1, in_size - 1)
        w = frac.reshape(shape)
        return np.take(x, lo, axis=axis) * (1 - w) + np.take(x, hi, axis=axis) * w
    weights = _cubic_weights(frac)
    result = 0.0
    for tap in range(4):
        idx = np.clip(base - 1 + tap, 0, in_size - 1)
        result = result + np.take(x, idx, axis=axis) * weights[:, tap].reshape(shape)
    return result


@defop("resize", ["x"], infer=_resize_type, tags=("resize",),
       attrs={"sizes": Attr("shape"), "mode": Attr("str", "nearest"), "align_corners": Attr("bool", False),
              "scales": Attr("floats", ())})
def resize(x, *, sizes, mode, align_corners, scales):
    """Resample the spatial dims (2...) of an N, C, ... input to ``sizes`` (F.interpolate):
    nearest (floor of the scaled index), linear or cubic (A = -0.75, edge-clamped taps), with
    ``align_corners``; ``scales`` are the user's scale factors when given."""
    y = x.astype(np.float64)
    for i, size in enumerate(sizes):
        y = _resize_axis(y, 2 + i, int(size), scales[i] if scales else None, mode, align_corners)
    return np.ascontiguousarray(y.astype(x.dtype))


# -- grid sampling ---------------------------------------------------------------------------------
GRID_MODES = ("bilinear", "nearest")
GRID_PADDING = ("zeros", "border", "reflection")


def _grid_sample_type(x: TensorType, grid: TensorType, *, mode, padding_mode, align_corners) -> TensorType:
    _same_dtype(x, grid)
    if mode not in GRID_MODES or padding_mode not in GRID_PADDING:
        raise ValueError(f"grid_sample mode must be one of {GRID_MODES} and padding one of {GRID_PADDING}")
    if x.rank != 4 or grid.rank != 4 or grid.shape[3] != 2:
        raise ValueError(f"grid_sample needs x[N, C, H, W] and grid[N, Ho, Wo, 2], got {x.shape}, {grid.shape}")
    return TensorType(x.dtype, (x.shape[0], x.shape[1], grid.shape[1], grid.shape[2]))


def _grid_coordinate(g: np.ndarray, size: int, padding_mode: str, align_corners: bool) -> np.ndarray:
    """A normalised coordinate in [-1, 1] -> input pixel coordinate, PyTorch's rules."""
    x = (g + 1) / 2 * (size - 1) if align_corners else ((g + 1) * size - 1) / 2
    if padding_mode == "border":
        return np.clip(x, 0, size - 1)
    if padding_mode == "reflection":  # mirror about [low, low + span], then clip
        low, span = (0.0, size - 1.0) if align_corners else (-0.5, float(size))
        if span <= 0:
            return np.zeros_like(x)
        distance = np.abs(x - low)
        extra, flips = np.fmod(distance, span), np.floor(distance / span)
        x = np.where(flips % 2 == 0, low + extra, low + span - extra)
        return np.clip(x, 0, size - 1)
    return x


@defop("grid_sample", ["x", "grid"], infer=_grid_sample_type, tags=("resize",),
       attrs={"mode": Attr("str", "bilinear"), "padding_mode": Attr("str", "zeros"),
              "align_corners": Attr("bool", False)})
def grid_sample(x, grid, *, mode, padding_mode, align_corners):
    """Sample ``x`` at the normalised (x, y) positions of ``grid`` (F.grid_sample, 2-d):
    bilinear or nearest (ties to even), outside positions read zeros, the border, or a reflection."""
    n, c, h, w = x.shape
    g = grid.astype(np.float64)
    ix = _grid_coordinate(g[..., 0], w, padding_mode, align_corners)  # [N, Ho, Wo]
    iy = _grid_coordinate(g[..., 1], h, padding_mode, align_corners)
    x64 = x.astype(np.float64)
    batch = np.arange(n).reshape(n, 1, 1)

    def tap(yy, xx):  # [N, C, Ho, Wo]; zero outside the image
        inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        values = x64[batch, :, np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)]  # [N, Ho, Wo, C]
        return np.moveaxis(values * inside[..., None], -1, 1)

    if mode == "nearest":
        return tap(np.rint(iy).astype(np.int64), np.rint(ix).astype(np.int64)).astype(x.dtype)
    x0, y0 = np.floor(ix).astype(np.int64), np.floor(iy).astype(np.int64)
    wx, wy = (ix - x0)[:, None], (iy - y0)[:, None]
    y = (tap(y0, x0) * (1 - wx) * (1 - wy) + tap(y0, x0 + 1) * wx * (1 - wy)
         + tap(y0 + 1, x0) * (1 - wx) * wy + tap(y0 + 1, x0 + 1) * wx * wy)
    return y.astype(x.dtype)
