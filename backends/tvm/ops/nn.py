"""TVM lowerings of the ops of ``compiler/ops/nn.py``: matmul / linear / conv (with their fused
activation), normalisation, softmax, pooling, resize, grid_sample, attention, gather."""

from __future__ import annotations

import math

import numpy as np
from tvm import relax
from tvm.relax import op as R

from compiler.ir import DType, Node, Value
from compiler.ops.nn import activation_op, adaptive_bins

from .common import Emitter, checked_index, tvm_dtype
from .elementwise import EPILOGUE, UNARY


def apply_activation(ctx, y, dtype: DType, node: Node):
    """The fused activation of a linear/conv node (none: ``y`` unchanged)."""
    act = node.attrs.get("activation") or ""
    if not act:
        return y
    op, attrs = activation_op(act, tuple(node.attrs.get("activation_args") or ()))
    return EPILOGUE.get(op, UNARY[op])(ctx, ctx.emit(y), dtype, attrs)


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


# -- gather ------------------------------------------------------------------------------------
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
    iv = checked_index(ctx, idx, iv, x.shape[axis])
    return R.take(ctx.value(x), iv, axis, mode="clip")


def _dim_value(ctx, d):
    return relax.prim_value(ctx.dim(d))


EMITTERS: dict[str, Emitter] = {
    "matmul": emit_matmul, "linear": emit_linear, "conv": emit_conv, "conv_transpose": emit_conv_transpose,
    "batch_norm": emit_batch_norm, "layer_norm": emit_layer_norm, "group_norm": emit_group_norm,
    "softmax": emit_softmax, "log_softmax": emit_log_softmax,
    "max_pool": emit_max_pool, "avg_pool": emit_avg_pool, "adaptive_avg_pool": emit_adaptive_avg_pool,
    "adaptive_max_pool": emit_adaptive_max_pool, "max_pool_with_indices": emit_max_pool_with_indices,
    "resize": emit_resize, "grid_sample": emit_grid_sample,
    "attention": emit_attention, "multi_head_attention": emit_multi_head_attention,
    "qkv_attention": emit_qkv_attention,
    "gather": emit_gather,
}
