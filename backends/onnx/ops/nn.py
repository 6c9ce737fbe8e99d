"""ONNX emitters of the layer ops (``compiler/ops/nn.py``): matmul, linear and conv (with their
fused activations), normalisation, softmax, pooling, attention, resize and grid sampling."""

from __future__ import annotations

import math

import numpy as np
from onnx import numpy_helper

from backends.onnx.ops.common import CONTRIB, EmitContext, Emitter, _finish
from backends.onnx.ops.elementwise import UNARY
from compiler import dims
from compiler.ir import DType, Node, Value
from compiler.ops.nn import activation_op, adaptive_bins


# -- matmul / linear / conv --------------------------------------------------------------------
def _apply_activation(ctx: EmitContext, node: Node, pre: str, dtype: DType) -> None:
    """Name ``pre`` (the op's result before its fused activation) as the node's output."""
    out = node.output
    if not node.attrs.get("activation"):
        if pre != out.name:
            ctx.add("Identity", [pre], out.name, dtype=dtype, shape=out.shape)
        return
    op, attrs = activation_op(node.attrs["activation"], node.attrs.get("activation_args", ()))
    UNARY[op](ctx, pre, dtype, out.shape, out.name, attrs)


def emit_matmul(ctx: EmitContext, node: Node) -> None:
    a, b = node.inputs
    ctx.typed("MatMul", [ctx.value(a), ctx.value(b)], a.dtype, node.output.name, node.output.shape)


def _transposed(ctx: EmitContext, v: Value, perm: list[int], dtype: DType) -> str:
    """``v`` with axes permuted: a pre-transposed initializer when ``v`` is a constant (a view: a
    big one is laid out transposed only as the artifact is written, see WeightWriter)."""
    if v.is_const:
        return ctx.const(np.transpose(v.const, perm).astype(dtype.numpy, copy=False), hint=f"{v.name}_T")
    shape = tuple(v.shape[p] for p in perm)
    return ctx.add("Transpose", [ctx.cast(ctx.value(v), v.dtype, dtype)], dtype=dtype, shape=shape, perm=perm)


def emit_linear(ctx: EmitContext, node: Node) -> None:
    x, w, b = (list(node.inputs) + [None])[:3]
    out = node.output
    dtype = x.dtype
    fused = bool(node.attrs.get("activation"))
    if len(x.shape) == 2:
        cd = ctx.compute_dtype("Gemm", dtype)
        inputs = [ctx.cast(ctx.value(x), dtype, cd), ctx.cast(ctx.value(w), dtype, cd),
                  ctx.cast(ctx.value(b), dtype, cd)]
        target = None if (fused or cd != dtype) else out.name
        pre = ctx.add("Gemm", inputs, target, dtype=cd, shape=out.shape, transB=1)
    else:
        cd = ctx.compute_dtype("MatMul", dtype)
        w_t = _transposed(ctx, w, [1, 0], cd)
        target = None if (fused or cd != dtype or b is not None) else out.name
        pre = ctx.add("MatMul", [ctx.cast(ctx.value(x), dtype, cd), w_t], target, dtype=cd, shape=out.shape)
        if b is not None:
            target = None if (fused or cd != dtype) else out.name
            pre = ctx.add("Add", [pre, ctx.cast(ctx.value(b), dtype, cd)], target, dtype=cd, shape=out.shape)
    if cd != dtype:
        pre = ctx.cast(pre, cd, dtype, out.shape, out=None if fused else out.name)
    if pre != out.name:
        _apply_activation(ctx, node, pre, dtype)


# Activations onnxruntime's contrib FusedConv runs inside the convolution kernel:
# IR activation -> (FusedConv activation name, activation_params from the IR args).
_FUSED_CONV = {
    "relu": ("Relu", lambda args: None), "sigmoid": ("Sigmoid", lambda args: None),
    "tanh": ("Tanh", lambda args: None), "leaky_relu": ("LeakyRelu", lambda args: [args[0]]),
    "clamp": ("Clip", lambda args: [-3.4028234e38 if math.isnan(args[0]) else args[0],
                                    3.4028234e38 if math.isnan(args[1]) else args[1]]),
    "hardsigmoid": ("HardSigmoid", lambda args: [1.0 / 6.0, 0.5]),
}


def emit_conv(ctx: EmitContext, node: Node) -> None:
    x, w, b = (list(node.inputs) + [None])[:3]
    out = node.output
    dtype = x.dtype
    a = node.attrs
    fused = bool(a.get("activation"))
    if fused and a["activation"] in _FUSED_CONV and not ctx.standard_only and dtype == DType.float32:
        name, params = _FUSED_CONV[a["activation"]]
        ctx.add("FusedConv", [ctx.value(v) for v in (x, w, b)], out.name, domain=CONTRIB,
                kernel_shape=list(w.shape[2:]), strides=list(a["stride"]), pads=list(a["padding"]),
                dilations=list(a["dilation"]), group=a["groups"], activation=name,
                activation_params=params(a["activation_args"]))
        return
    cd = ctx.compute_dtype("Conv", dtype)
    inputs = [ctx.cast(ctx.value(v), dtype, cd) for v in (x, w, b)]
    target = None if (fused or cd != dtype) else out.name
    pre = ctx.add("Conv", inputs, target, dtype=cd, shape=out.shape, kernel_shape=list(w.shape[2:]),
                  strides=list(a["stride"]), pads=list(a["padding"]), dilations=list(a["dilation"]),
                  group=a["groups"])
    if cd != dtype:
        pre = ctx.cast(pre, cd, dtype, out.shape, out=None if fused else out.name)
    if pre != out.name:
        _apply_activation(ctx, node, pre, dtype)


# -- normalisation and softmax -----------------------------------------------------------------
def _filled(ctx: EmitContext, like: Value, value: float, dtype: DType, dims_from: tuple) -> str:
    """A tensor of ``value`` with shape ``dims_from`` (constant when static, else built from
    the run-time shape of ``like``, whose last len(dims_from) dims they are)."""
    if all(isinstance(d, int) for d in dims_from):
        return ctx.const(np.full(dims_from, value, dtype=dtype.numpy), hint="fill")
    shape = ctx.add("Shape", [ctx.value(like)], dtype=DType.int64, shape=(len(dims_from),),
                    start=len(like.shape) - len(dims_from))
    return ctx.add("ConstantOfShape", [shape], dtype=dtype, shape=dims_from,
                   value=numpy_helper.from_array(np.asarray([value], dtype=dtype.numpy)))


def emit_batch_norm(ctx: EmitContext, node: Node) -> None:
    x, mean, var, weight, bias = (list(node.inputs) + [None] * 5)[:5]
    dtype = x.dtype
    channels = (mean.shape[0],)
    scale = ctx.value(weight) if weight is not None else _filled(ctx, mean, 1.0, dtype, channels)
    shift = ctx.value(bias) if bias is not None else _filled(ctx, mean, 0.0, dtype, channels)
    inputs = [ctx.value(x), scale, shift, ctx.value(mean), ctx.value(var)]
    ctx.typed("BatchNormalization", inputs, dtype, node.output.name, node.output.shape,
              epsilon=float(node.attrs["eps"]))


def emit_layer_norm(ctx: EmitContext, node: Node) -> None:
    x, weight, bias = (list(node.inputs) + [None] * 3)[:3]
    nd = node.attrs["normalized_ndim"]
    dtype = x.dtype
    scale = ctx.value(weight) if weight is not None else _filled(ctx, x, 1.0, dtype, x.shape[len(x.shape) - nd:])
    ctx.typed("LayerNormalization", [ctx.value(x), scale, ctx.value(bias)], dtype, node.output.name,
              node.output.shape, axis=-nd, epsilon=float(node.attrs["eps"]))


def emit_group_norm(ctx: EmitContext, node: Node) -> None:
    """(x - mean) / sqrt(var + eps) over [N, groups, -1], reshaped back, then the per-channel
    affine (ONNX's GroupNormalization has changed meaning across opsets; this form does not)."""
    x, weight, bias = (list(node.inputs) + [None] * 3)[:3]
    dtype, shape, groups = x.dtype, x.shape, node.attrs["groups"]
    cd = ctx.compute_dtype("ReduceMean", dtype)

    def op(name, *args, shape_=None, **kw):
        return ctx.add(name, list(args), dtype=cd, shape=shape_, **kw)

    grouped = op("Reshape", ctx.cast(ctx.value(x), dtype, cd), ctx.ints([0, groups, -1], "groups"))
    mean = op("ReduceMean", grouped, ctx.ints([2], "axes"), keepdims=1)
    centered = op("Sub", grouped, mean)
    var = op("ReduceMean", op("Mul", centered, centered), ctx.ints([2], "axes"), keepdims=1)
    normed = op("Div", centered, op("Sqrt", op("Add", var, ctx.scalar(node.attrs["eps"], cd))))
    y = op("Reshape", normed, ctx.add("Shape", [ctx.value(x)], dtype=DType.int64, shape=(len(shape),)),
           shape_=shape)
    affine = [1, -1] + [1] * (len(shape) - 2)
    if weight is not None:
        y = op("Mul", y, op("Reshape", ctx.cast(ctx.value(weight), dtype, cd), ctx.ints(affine, "affine")),
               shape_=shape)
    if bias is not None:
        y = op("Add", y, op("Reshape", ctx.cast(ctx.value(bias), dtype, cd), ctx.ints(affine, "affine")),
               shape_=shape)
    _finish(ctx, y, cd, dtype, shape, node.output.name)


def emit_resize(ctx: EmitContext, node: Node) -> None:
    """ONNX Resize with the coordinate rules that reproduce F.interpolate: nearest = asymmetric +
    floor; linear = pytorch_half_pixel (or align_corners); cubic = half_pixel with A = -0.75."""
    x = node.inputs[0]
    a = node.attrs
    mode = a["mode"]
    if a["align_corners"]:
        transform = "align_corners"
    else:
        transform = {"nearest": "asymmetric", "linear": "pytorch_half_pixel", "cubic": "half_pixel"}[mode]
    if a["scales"]:
        scales = ctx.const(np.asarray([1.0, 1.0] + list(a["scales"]), np.float32), hint="scales")
        inputs = [ctx.value(x), "", scales]
    else:
        sizes = ctx.shape_input(tuple(x.shape[:2]) + tuple(a["sizes"]), x.shape, mode="expand") \
            if not all(isinstance(d, int) for d in x.shape[:2]) else ctx.ints(list(x.shape[:2]) + list(a["sizes"]),
                                                                               "sizes")
        inputs = [ctx.value(x), "", "", sizes]
    ctx.typed("Resize", inputs, x.dtype, node.output.name, node.output.shape, cast=[0], mode=mode,
              coordinate_transformation_mode=transform,
              nearest_mode="floor" if mode == "nearest" else None,
              cubic_coeff_a=-0.75 if mode == "cubic" else None, exclude_outside=0 if mode == "cubic" else None)


def _softmax_emitter(op_type: str) -> Emitter:
    def emit(ctx: EmitContext, node: Node) -> None:
        x = node.inputs[0]
        ctx.typed(op_type, [ctx.value(x)], x.dtype, node.output.name, node.output.shape, axis=node.attrs["axis"])

    emit.__name__ = f"emit_{op_type}"
    return emit


# -- pooling -----------------------------------------------------------------------------------
def _pool(ctx: EmitContext, node: Node, op_type: str, dilation: tuple, **attrs) -> None:
    """MaxPool / AveragePool. From opset 22 on, ONNX drops a ceil_mode window that would start
    in the end padding, as PyTorch (and the reference) do; older opsets keep it, so there the
    extra output positions are sliced off (the windows before them are the same)."""
    x = node.inputs[0]
    a = node.attrs
    out = node.output
    nd = len(a["kernel"])
    pool_attrs = dict(kernel_shape=list(a["kernel"]), strides=list(a["stride"]), pads=list(a["padding"]),
                      ceil_mode=int(a["ceil_mode"]), **attrs)
    onnx_shape = out.shape
    if a["ceil_mode"] and ctx.opset < 22:
        onnx_shape = out.shape[:2] + tuple(
            -(-(size + a["padding"][i] + a["padding"][nd + i] - d * (a["kernel"][i] - 1) - 1) // a["stride"][i]) + 1
            for i, (size, d) in enumerate(zip(x.shape[2:], dilation)))
    if onnx_shape == out.shape:
        ctx.typed(op_type, [ctx.value(x)], x.dtype, out.name, out.shape, **pool_attrs)
        return
    pooled = ctx.typed(op_type, [ctx.value(x)], x.dtype, None, onnx_shape, **pool_attrs)
    axes = list(range(2, 2 + nd))
    ctx.add("Slice", [pooled, ctx.ints([0] * nd, "starts"), ctx.ints(out.shape[2:], "ends"), ctx.ints(axes, "axes")],
            out.name)


def emit_max_pool(ctx: EmitContext, node: Node) -> None:
    _pool(ctx, node, "MaxPool", node.attrs["dilation"], dilations=list(node.attrs["dilation"]))


def emit_avg_pool(ctx: EmitContext, node: Node) -> None:
    # onnxruntime's AveragePool matches the reference (PyTorch) divisor for every combination
    # of ceil_mode and count_include_pad: with count_include_pad the divisor counts the explicit
    # padding but not the ceil_mode overhang (tested in tests/test_onnx_backend.py).
    a = node.attrs
    _pool(ctx, node, "AveragePool", (1,) * len(a["kernel"]), count_include_pad=int(a["count_include_pad"]))


def _adaptive_pool(ctx: EmitContext, node: Node, global_op: str, window_op: str, reduce_op: str) -> None:
    """Output 1: the global pool. Input sizes multiples of the output: one strided window pool.
    Otherwise, axis by axis, each bin [floor(i*L/O), ceil((i+1)*L/O)) sliced, reduced and
    concatenated (the bins are rectangles, so mean and max separate over axes)."""
    x = node.inputs[0]
    out_size = node.attrs["output_size"]
    spatial = x.shape[2:]
    if all(o == 1 for o in out_size):
        ctx.typed(global_op, [ctx.value(x)], x.dtype, node.output.name, node.output.shape)
        return
    if not all(isinstance(s, int) for s in spatial):
        raise ctx.unsupported(f"adaptive pooling of symbolic spatial dims {spatial} to {out_size} "
                              "(only output size 1 is supported there)")
    if not any(s % o for s, o in zip(spatial, out_size)):
        kernel = [s // o for s, o in zip(spatial, out_size)]
        ctx.typed(window_op, [ctx.value(x)], x.dtype, node.output.name, node.output.shape,
                  kernel_shape=kernel, strides=kernel, pads=[0] * (2 * len(kernel)))
        return
    cd = ctx.compute_dtype(reduce_op, x.dtype)
    current, shape = ctx.cast(ctx.value(x), x.dtype, cd), tuple(x.shape)
    for axis, (size, out) in enumerate(zip(spatial, out_size), start=2):
        bins = []
        for lo, hi in adaptive_bins(size, out):
            piece = ctx.add("Slice", [current, ctx.ints([lo], "starts"), ctx.ints([hi], "ends"),
                                      ctx.ints([axis], "axes")], dtype=cd)
            bins.append(ctx.add(reduce_op, [piece, ctx.ints([axis], "axes")], dtype=cd, keepdims=1))
        shape = shape[:axis] + (out,) + shape[axis + 1:]
        current = ctx.add("Concat", bins, dtype=cd, shape=shape, axis=axis)
    _finish(ctx, current, cd, x.dtype, node.output.shape, node.output.name)


def emit_adaptive_avg_pool(ctx: EmitContext, node: Node) -> None:
    _adaptive_pool(ctx, node, "GlobalAveragePool", "AveragePool", "ReduceMean")


def emit_adaptive_max_pool(ctx: EmitContext, node: Node) -> None:
    _adaptive_pool(ctx, node, "GlobalMaxPool", "MaxPool", "ReduceMax")


def emit_max_pool_with_indices(ctx: EmitContext, node: Node) -> None:
    """MaxPool's second output counts over the whole N, C, *spatial tensor; PyTorch's over one
    (N, C) plane: the remainder modulo the plane size converts it."""
    x = node.inputs[0]
    a = node.attrs
    values, indices = node.outputs
    if a["ceil_mode"] and ctx.opset < 22:
        raise ctx.unsupported("max pooling indices with ceil_mode need ONNX opset 22 or later")
    plane = 1
    for d in x.shape[2:]:
        if not isinstance(d, int):
            raise ctx.unsupported("max pooling indices over symbolic spatial dims")
        plane *= d
    cd = ctx.compute_dtype("MaxPool", x.dtype)
    flat = ctx.fresh(f"{node.name}_flat_indices")
    pooled = values.name if cd == x.dtype else ctx.fresh(f"{node.name}_values")
    ctx.add("MaxPool", [ctx.cast(ctx.value(x), x.dtype, cd)], [pooled, flat], kernel_shape=list(a["kernel"]),
            strides=list(a["stride"]), pads=list(a["padding"]), dilations=list(a["dilation"]),
            ceil_mode=int(a["ceil_mode"]))
    ctx.value_types[pooled] = (cd, values.shape)
    ctx.value_types[flat] = (DType.int64, indices.shape)
    if pooled != values.name:
        ctx.cast(pooled, cd, x.dtype, values.shape, out=values.name)
    ctx.add("Mod", [flat, ctx.scalar(plane, DType.int64)], indices.name, fmod=0)


def emit_conv_transpose(ctx: EmitContext, node: Node) -> None:
    x, weight, bias = (list(node.inputs) + [None] * 3)[:3]
    a = node.attrs
    ctx.typed("ConvTranspose", [ctx.value(x), ctx.value(weight), ctx.value(bias)], x.dtype, node.output.name,
              node.output.shape, strides=list(a["stride"]), pads=list(a["padding"]),
              output_padding=list(a["output_padding"]), dilations=list(a["dilation"]), group=a["groups"])


# -- attention ---------------------------------------------------------------------------------
def _attention_core(ctx: EmitContext, q: str, k_t: str, v: str, mask: Value | None, *, dtype: DType,
                    cd: DType, q_shape: tuple, k_shape: tuple, scale: float, is_causal: bool,
                    out: str | None, out_shape: tuple) -> str:
    """softmax(q @ k_t * scale [+ mask]) @ v on values already in compute dtype ``cd``."""
    s_shape = None
    if len(q_shape) >= 2 and len(k_shape) >= 2:
        try:
            s_shape = dims.broadcast(q_shape[:-2], k_shape[:-2]) + (q_shape[-2], k_shape[-2])
        except ValueError:
            s_shape = None
    s = ctx.add("MatMul", [q, k_t], dtype=cd, shape=s_shape)
    s = ctx.add("Mul", [s, ctx.scalar(scale, cd, "scale")], dtype=cd, shape=s_shape)
    neg_inf = ctx.scalar(-np.inf, cd, "neg_inf")
    if is_causal:
        lq, lk = q_shape[-2], k_shape[-2]
        if isinstance(lq, int) and isinstance(lk, int):
            keep = ctx.const(np.tril(np.ones((lq, lk), dtype=bool)), hint="causal_mask")
        else:
            size = ctx.add("Shape", [s], dtype=DType.int64, shape=(2,), start=-2)
            ones = ctx.add("ConstantOfShape", [size], dtype=DType.bool, shape=(lq, lk),
                           value=numpy_helper.from_array(np.asarray([True])))
            keep = ctx.add("Trilu", [ones], dtype=DType.bool, shape=(lq, lk), upper=0)
        s = ctx.add("Where", [keep, s, neg_inf], dtype=cd, shape=s_shape)
    if mask is not None:  # the mask may broadcast the scores: leave their shape to inference
        if mask.dtype == DType.bool:
            s = ctx.add("Where", [ctx.value(mask), s, neg_inf], dtype=cd)
        else:
            s = ctx.add("Add", [s, ctx.cast(ctx.value(mask), mask.dtype, cd)], dtype=cd)
        s_shape = None
    p = ctx.add("Softmax", [s], dtype=cd, shape=s_shape, axis=-1)
    if cd == dtype:
        return ctx.add("MatMul", [p, v], out, dtype=dtype, shape=out_shape)
    y = ctx.add("MatMul", [p, v], dtype=cd, shape=out_shape)
    return ctx.cast(y, cd, dtype, out_shape, out=out or ctx.fresh(f"{ctx._prefix()}_out"))


def _default_scale(ctx: EmitContext, head_dim) -> float:
    if not isinstance(head_dim, int):
        raise ctx.unsupported(f"default scale with a symbolic head dim '{head_dim}' (pass scale explicitly)")
    return 1.0 / math.sqrt(head_dim)


def emit_attention(ctx: EmitContext, node: Node) -> None:
    q, k, v, mask = (list(node.inputs) + [None])[:4]
    dtype = q.dtype
    cd = ctx.compute_dtype("MatMul", dtype)
    scale = node.attrs["scale"]
    scale = _default_scale(ctx, q.shape[-1]) if scale is None else scale
    perm = list(range(len(k.shape)))
    perm[-2], perm[-1] = perm[-1], perm[-2]
    k_t = _transposed(ctx, k, perm, cd)
    _attention_core(ctx, ctx.cast(ctx.value(q), dtype, cd), k_t, ctx.cast(ctx.value(v), dtype, cd), mask,
                    dtype=dtype, cd=cd, q_shape=q.shape, k_shape=k.shape, scale=scale,
                    is_causal=node.attrs["is_causal"], out=node.output.name, out_shape=node.output.shape)


def emit_multi_head_attention(ctx: EmitContext, node: Node) -> None:
    q, k, v = node.inputs
    heads = node.attrs["num_heads"]
    dtype = q.dtype
    if not ctx.standard_only and dtype == DType.float32:  # onnxruntime's fused attention kernel
        ctx.add("MultiHeadAttention", [ctx.value(q), ctx.value(k), ctx.value(v)], node.output.name,
                domain=CONTRIB, num_heads=heads, scale=node.attrs["scale"])
        return
    cd = ctx.compute_dtype("MatMul", dtype)
    _heads_attention(ctx, node, *((ctx.cast(ctx.value(t), dtype, cd), t.shape) for t in (q, k, v)), cd=cd)


def _heads_attention(ctx: EmitContext, node: Node, q: tuple, k: tuple, v: tuple, *, cd: DType) -> None:
    """multi_head_attention in standard ONNX on (name, [B, S, E] shape) pairs already in ``cd``:
    heads split by Reshape + Transpose, attention, heads merged back into ``node``'s output."""
    heads = node.attrs["num_heads"]
    dtype = node.output.dtype

    def head_dim(e):
        return dims.floordiv(e, heads)

    def split(value: tuple, perm: list[int]) -> str:
        name, (b, s, e) = value
        # Reshape [B, S, E] -> [B, S, H, E/H] (0 copies B and S, so symbolic sizes need no Shape op).
        split_shape = (b, s, heads, head_dim(e))
        r = ctx.add("Reshape", [name, ctx.ints([0, 0, heads, -1], "heads")], dtype=cd, shape=split_shape)
        return ctx.add("Transpose", [r], dtype=cd, shape=tuple(split_shape[p] for p in perm), perm=perm)

    qh = split(q, [0, 2, 1, 3])
    kh_t = split(k, [0, 2, 3, 1])  # heads, then k^T: [B, H, D, S]
    vh = split(v, [0, 2, 1, 3])
    b, sq, eq = q[1]
    sk, ek, ev = k[1][1], k[1][2], v[1][2]
    q_shape = (b, heads, sq, head_dim(eq))
    k_shape = (b, heads, sk, head_dim(ek))
    y_shape = (b, heads, sq, head_dim(ev))
    y = _attention_core(ctx, qh, kh_t, vh, None, dtype=cd, cd=cd, q_shape=q_shape, k_shape=k_shape,
                        scale=node.attrs["scale"], is_causal=False, out=None, out_shape=y_shape)
    merged = ctx.add("Transpose", [y], dtype=cd, shape=(b, sq, heads, y_shape[3]), perm=[0, 2, 1, 3])
    out = node.output
    if cd == dtype:
        ctx.add("Reshape", [merged, ctx.ints([0, 0, -1], "merge")], out.name)
    else:
        r = ctx.add("Reshape", [merged, ctx.ints([0, 0, -1], "merge")], dtype=cd, shape=out.shape)
        ctx.cast(r, cd, dtype, out.shape, out=out.name)


def emit_qkv_attention(ctx: EmitContext, node: Node) -> None:
    """onnxruntime's contrib ``Attention`` runs the packed projection and the attention in one
    kernel (measured 21 us against 28 us for three projections + MultiHeadAttention at
    [1, 32, 64], 4 heads). Standard ONNX: one MatMul (+ Add) into [B, S, 3E], Split, then the
    heads as multi_head_attention emits them."""
    x, w, b = (list(node.inputs) + [None])[:3]
    dtype = x.dtype
    rows = w.shape[0]
    if not ctx.standard_only and dtype == DType.float32 and w.is_const:
        bias = ctx.value(b) if b is not None else ctx.const(np.zeros(rows, np.float32), hint="qkv_bias")
        ctx.add("Attention", [ctx.value(x), _transposed(ctx, w, [1, 0], dtype), bias], node.output.name,
                domain=CONTRIB, num_heads=node.attrs["num_heads"], scale=node.attrs["scale"])
        return
    cd = ctx.compute_dtype("MatMul", dtype)
    bsz, s, _ = x.shape
    packed_shape = (bsz, s, rows)
    qkv = ctx.add("MatMul", [ctx.cast(ctx.value(x), dtype, cd), _transposed(ctx, w, [1, 0], cd)], dtype=cd,
                  shape=packed_shape)
    if b is not None:
        qkv = ctx.add("Add", [qkv, ctx.cast(ctx.value(b), dtype, cd)], dtype=cd, shape=packed_shape)
    part = (bsz, s, rows // 3)
    q, k, v = (ctx.fresh(f"{node.name}_{n}") for n in "qkv")
    ctx.add("Split", [qkv], [q, k, v], dtype=cd, shape=part, axis=-1, num_outputs=3)
    _heads_attention(ctx, node, (q, part), (k, part), (v, part), cd=cd)


# -- gather and grid sampling ------------------------------------------------------------------
def emit_gather(ctx: EmitContext, node: Node) -> None:
    x, indices = node.inputs
    idx = ctx.value(indices)
    if indices.dtype not in (DType.int32, DType.int64):
        idx = ctx.cast(idx, indices.dtype, DType.int64, indices.shape)
    ctx.add("Gather", [ctx.value(x), idx], node.output.name, axis=node.attrs["axis"])


def emit_grid_sample(ctx: EmitContext, node: Node) -> None:
    x, grid = node.inputs
    a = node.attrs
    mode = a["mode"] if ctx.opset < 20 or a["mode"] == "nearest" else "linear"  # renamed in opset 20
    ctx.typed("GridSample", [ctx.value(x), ctx.value(grid)], x.dtype, node.output.name, node.output.shape,
              mode=mode, padding_mode=a["padding_mode"], align_corners=int(a["align_corners"]))


# -- the table ---------------------------------------------------------------------------------
EMITTERS: dict[str, Emitter] = {
    "matmul": emit_matmul, "linear": emit_linear, "conv": emit_conv, "conv_transpose": emit_conv_transpose,
    "batch_norm": emit_batch_norm, "layer_norm": emit_layer_norm, "group_norm": emit_group_norm,
    "softmax": _softmax_emitter("Softmax"), "log_softmax": _softmax_emitter("LogSoftmax"),
    "max_pool": emit_max_pool, "avg_pool": emit_avg_pool, "adaptive_avg_pool": emit_adaptive_avg_pool,
    "adaptive_max_pool": emit_adaptive_max_pool, "max_pool_with_indices": emit_max_pool_with_indices,
    "attention": emit_attention, "multi_head_attention": emit_multi_head_attention,
    "qkv_attention": emit_qkv_attention, "resize": emit_resize, "gather": emit_gather,
    "grid_sample": emit_grid_sample,
}
