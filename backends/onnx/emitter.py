"""IR -> ONNX: a table from IR op name to an emitter that appends ONNX nodes.

Every emitter reproduces its op's numpy reference exactly (the ONNX tests are differential
against the interpreter). Where onnxruntime has a faster fused kernel (FusedConv,
MultiHeadAttention in the com.microsoft domain) the emitter uses it unless ``standard_only``
asks for plain ONNX. Constants become initializers; every value gets a typed value_info, with
symbolic dims as ``dim_param``. This module imports onnx but never torch.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from compiler import dims
from compiler.errors import CompileError, UnsupportedOpError
from compiler.ir import DType, Graph, Node, Value
from compiler.ops import all_ops
from compiler.ops.nn import activation_op

DEFAULT_OPSET = 21      # Gelu (20), LayerNormalization (17), axes-as-input reductions (18)
MIN_OPSET = 18
CONTRIB = "com.microsoft"

ONNX_DTYPES = {
    DType.float16: TensorProto.FLOAT16, DType.float32: TensorProto.FLOAT, DType.float64: TensorProto.DOUBLE,
    DType.bfloat16: TensorProto.BFLOAT16, DType.int8: TensorProto.INT8, DType.int16: TensorProto.INT16,
    DType.int32: TensorProto.INT32, DType.int64: TensorProto.INT64, DType.uint8: TensorProto.UINT8,
    DType.bool: TensorProto.BOOL,
}

Emitter = Callable[["EmitContext", Node], None]
EMITTERS: dict[str, Emitter] = {}


def emits(*ops: str):
    def register(fn: Emitter) -> Emitter:
        for op in ops:
            EMITTERS[op] = fn
        return fn

    return register


def supported_ops() -> set[str]:
    return set(EMITTERS)


class EmitContext:
    """Collects ONNX nodes and initializers while the emitters run."""

    def __init__(self, graph: Graph, opset: int, standard_only: bool):
        self.graph = graph
        self.opset = opset
        self.standard_only = standard_only
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.uses_contrib = False
        self.current: Node | None = None
        self._names: set[str] = {v.name for v in graph.values()}
        self._counter = 0
        self._symbol_sources = _symbol_sources(graph)

    def fresh(self, hint: str) -> str:
        while True:
            self._counter += 1
            name = f"{hint}__{self._counter}"
            if name not in self._names:
                self._names.add(name)
                return name

    def const(self, array, hint: str = "c") -> str:
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op_type: str, inputs: list[str], outputs: list[str] | None = None, *, domain: str = "",
             **attrs) -> str:
        """Append a node; returns its (first) output name."""
        if outputs is None:
            outputs = [self.fresh(f"{self.current.name if self.current else 'n'}_{op_type.lower()}")]
        if domain == CONTRIB:
            self.uses_contrib = True
        name = self.fresh(self.current.name if self.current else op_type)
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=name, domain=domain or None,
                                           **{k: v for k, v in attrs.items() if v is not None}))
        return outputs[0]

    def shape_tensor(self, shape, source: Value | None = None, *, for_expand: bool = False) -> str:
        """An int64 1-d tensor holding ``shape``. Symbolic dims come from the graph input that
        defines them; for Expand a dim equal to the source's own dim becomes 1 (broadcast keeps
        it); for Reshape a single remaining unknown dim becomes -1."""
        if all(isinstance(d, int) for d in shape):
            return self.const(np.asarray(shape, np.int64), "shape")
        parts: list[str] = []
        unknown = 0
        pending: list[int] = []

        def flush():
            if pending:
                parts.append(self.const(np.asarray(pending, np.int64), "shape"))
                pending.clear()

        offset = len(shape) - (source.type.rank if source is not None else 0)
        for i, d in enumerate(shape):
            if isinstance(d, int):
                pending.append(d)
            elif for_expand and source is not None and i >= offset and source.shape[i - offset] == d:
                pending.append(1)
            elif d in self._symbol_sources:
                flush()
                value, axis = self._symbol_sources[d]
                parts.append(self.node("Shape", [value], start=axis, end=axis + 1))
            elif not for_expand and unknown == 0:
                pending.append(-1)
                unknown += 1
            else:
                raise self.unsupported(f"cannot build shape {list(shape)}: dim {d!r} is not an input dim")
        flush()
        return parts[0] if len(parts) == 1 else self.node("Concat", parts, axis=0)

    def unsupported(self, detail: str) -> UnsupportedOpError:
        node = self.current
        from backends.registry import targets_supporting

        others = [t for t in targets_supporting(node.op) if t != "onnx"] if node is not None else []
        hint = f"targets that support it: {', '.join(others)}" if others else ""
        return UnsupportedOpError(node.op if node else "?", stage="the ONNX backend",
                                  location=node.location if node else None, detail=detail, hint=hint)


def _symbol_sources(graph: Graph) -> dict[str, tuple[str, int]]:
    sources: dict[str, tuple[str, int]] = {}
    for value in graph.inputs:
        for axis, d in enumerate(value.shape):
            if dims.is_symbol(d):
                sources.setdefault(d, (value.name, axis))
    return sources


def _name(v: Value | None) -> str:
    return "" if v is None else v.name


def _value_info(value: Value) -> onnx.ValueInfoProto:
    shape = [d if isinstance(d, int) else str(d) for d in value.shape]
    return helper.make_tensor_value_info(value.name, ONNX_DTYPES[value.dtype], shape)


def emit_onnx(graph: Graph, *, opset: int = DEFAULT_OPSET, standard_only: bool = False,
              producer: str = "aot-compiler") -> onnx.ModelProto:
    """The ONNX model for ``graph``, checked with the full ONNX checker (strict shape inference)."""
    if opset < MIN_OPSET:
        raise CompileError(f"ONNX opset {opset} is too old: the backend needs opset >= {MIN_OPSET}")
    if opset > onnx.defs.onnx_opset_version():
        raise CompileError(f"ONNX opset {opset} is newer than this onnx package supports "
                           f"({onnx.defs.onnx_opset_version()})")
    ctx = EmitContext(graph, opset, standard_only)
    for value in graph.constants.values():
        ctx.initializers.append(numpy_helper.from_array(value.const, value.name))
    for node in graph.nodes:
        emitter = EMITTERS.get(node.op)
        ctx.current = node
        if emitter is None:
            raise ctx.unsupported("no ONNX emitter for this op")
        emitter(ctx, node)
    ctx.current = None
    onnx_graph = helper.make_graph(
        ctx.nodes, graph.name, [_value_info(v) for v in graph.inputs], [_value_info(v) for v in graph.outputs],
        ctx.initializers,
        value_info=[_value_info(v) for n in graph.nodes for v in n.outputs if v not in graph.outputs])
    imports = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(CONTRIB, 1)] if ctx.uses_contrib else [])
    model = helper.make_model(onnx_graph, opset_imports=imports, producer_name=producer)
    model.ir_version = min(model.ir_version, 10)  # what onnxruntime 1.2x/1.3x reads
    _check(model, ctx.uses_contrib)
    return model


def _check(model: onnx.ModelProto, uses_contrib: bool) -> None:
    try:
        # Shape inference cannot see into contrib ops; their outputs are typed by value_info.
        onnx.checker.check_model(model, full_check=not uses_contrib)
        if uses_contrib:
            onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise CompileError(f"the emitted ONNX model failed the ONNX checker: {str(exc).splitlines()[0]}") from exc
    except onnx.shape_inference.InferenceError as exc:
        raise CompileError(f"the emitted ONNX model failed ONNX shape inference: {str(exc).splitlines()[0]}") from exc


# -- elementwise ---------------------------------------------------------------------------------
_SIMPLE_UNARY = {
    "neg": "Neg", "abs": "Abs", "exp": "Exp", "log": "Log", "sqrt": "Sqrt", "reciprocal": "Reciprocal",
    "sin": "Sin", "cos": "Cos", "tanh": "Tanh", "erf": "Erf", "floor": "Floor", "ceil": "Ceil",
    "sigmoid": "Sigmoid", "relu": "Relu", "logical_not": "Not", "hardswish": "HardSwish",
}


def _unary_simple(ctx: EmitContext, node: Node) -> None:
    ctx.node(_SIMPLE_UNARY[node.op], [node.inputs[0].name], [node.output.name])


emits(*_SIMPLE_UNARY)(_unary_simple)


def emit_activation(ctx: EmitContext, op: str, attrs: dict, x: str, out: str | None, dtype: DType) -> str:
    """Unary activation ``op`` (IR semantics) on ONNX value ``x``."""
    outs = [out] if out else None
    if op in _SIMPLE_UNARY:
        return ctx.node(_SIMPLE_UNARY[op], [x], outs)
    if op == "hardsigmoid":
        return ctx.node("HardSigmoid", [x], outs, alpha=1.0 / 6.0, beta=0.5)
    if op == "silu":
        return ctx.node("Mul", [x, ctx.node("Sigmoid", [x])], outs)
    if op == "gelu":
        approximate = attrs.get("approximate", "none")
        if ctx.opset >= 20:
            return ctx.node("Gelu", [x], outs, approximate=approximate)
        return _gelu_composition(ctx, x, approximate, outs, dtype)
    if op == "clamp":
        np_dtype = dtype.numpy
        lo = ctx.const(np.asarray(attrs["min"], np_dtype), "min") if attrs.get("min") is not None else ""
        hi = ctx.const(np.asarray(attrs["max"], np_dtype), "max") if attrs.get("max") is not None else ""
        return ctx.node("Clip", [x, lo, hi], outs)
    if op == "leaky_relu":
        return ctx.node("LeakyRelu", [x], outs, alpha=attrs["negative_slope"])
    raise ctx.unsupported(f"activation {op}")


def _gelu_composition(ctx, x, approximate, outs, dtype):
    c = lambda v: ctx.const(np.asarray(v, dtype.numpy))  # noqa: E731
    if approximate == "tanh":
        cube = ctx.node("Mul", [ctx.node("Mul", [x, x]), x])
        inner = ctx.node("Mul", [ctx.node("Add", [x, ctx.node("Mul", [cube, c(0.044715)])]), c(math.sqrt(2 / math.pi))])
        core = ctx.node("Tanh", [inner])
    else:
        core = ctx.node("Erf", [ctx.node("Div", [x, c(math.sqrt(2.0))])])
    return ctx.node("Mul", [ctx.node("Mul", [x, c(0.5)]), ctx.node("Add", [core, c(1.0)])], outs)


@emits("rsqrt", "hardsigmoid", "silu", "gelu", "clamp", "leaky_relu")
def _activation(ctx: EmitContext, node: Node) -> None:
    if node.op == "rsqrt":
        ctx.node("Reciprocal", [ctx.node("Sqrt", [node.inputs[0].name])], [node.output.name])
        return
    emit_activation(ctx, node.op, node.attrs, node.inputs[0].name, node.output.name, node.output.dtype)


@emits("cast")
def _cast(ctx: EmitContext, node: Node) -> None:
    ctx.node("Cast", [node.inputs[0].name], [node.output.name], to=ONNX_DTYPES[node.attrs["dtype"]])


_BINARY = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div", "pow": "Pow", "maximum": "Max",
           "minimum": "Min", "eq": "Equal", "lt": "Less", "le": "LessOrEqual", "gt": "Greater",
           "ge": "GreaterOrEqual", "logical_and": "And", "logical_or": "Or", "where": "Where",
           "matmul": "MatMul"}


@emits(*_BINARY)
def _binary(ctx: EmitContext, node: Node) -> None:
    ctx.node(_BINARY[node.op], [v.name for v in node.inputs], [node.output.name])


@emits("ne")
def _ne(ctx: EmitContext, node: Node) -> None:
    ctx.node("Not", [ctx.node("Equal", [v.name for v in node.inputs])], [node.output.name])


# -- linear / conv -------------------------------------------------------------------------------
def _with_activation(ctx: EmitContext, node: Node, emit_core: Callable[[str | None], str]) -> None:
    """Emit the layer, then its fused activation (if any) into the node's output."""
    activation = node.attrs.get("activation", "")
    if not activation:
        emit_core(node.output.name)
        return
    op, attrs = activation_op(activation, node.attrs["activation_args"])
    emit_activation(ctx, op, attrs, emit_core(None), node.output.name, node.output.dtype)


@emits("linear")
def _linear(ctx: EmitContext, node: Node) -> None:
    x, weight, bias = node.inputs
    if weight.is_const:
        weight_t = ctx.const(np.ascontiguousarray(weight.const.T), f"{weight.name}_t")
    else:
        weight_t = ctx.node("Transpose", [weight.name], perm=[1, 0])

    def core(out: str | None) -> str:
        outs = [out] if out else None
        if x.type.rank == 2:
            return ctx.node("Gemm", [x.name, weight_t] + ([bias.name] if bias is not None else []), outs)
        if bias is None:
            return ctx.node("MatMul", [x.name, weight_t], outs)
        return ctx.node("Add", [ctx.node("MatMul", [x.name, weight_t]), bias.name], outs)

    _with_activation(ctx, node, core)


# FusedConv activations onnxruntime implements: IR activation -> (ONNX name, params from args)
_FUSED_CONV = {
    "relu": ("Relu", lambda a: None), "sigmoid": ("Sigmoid", lambda a: None), "tanh": ("Tanh", lambda a: None),
    "leaky_relu": ("LeakyRelu", lambda a: [a[0]]),
    "clamp": ("Clip", lambda a: [-3.4028234e38 if math.isnan(a[0]) else a[0],
                                 3.4028234e38 if math.isnan(a[1]) else a[1]]),
    "hardsigmoid": ("HardSigmoid", lambda a: [1.0 / 6.0, 0.5]),
}


@emits("conv")
def _conv(ctx: EmitContext, node: Node) -> None:
    x, weight, bias = node.inputs
    attrs = dict(kernel_shape=list(weight.shape[2:]), strides=list(node.attrs["stride"]),
                 pads=list(node.attrs["padding"]), dilations=list(node.attrs["dilation"]),
                 group=node.attrs["groups"])
    inputs = [x.name, weight.name] + ([bias.name] if bias is not None else [])
    activation = node.attrs["activation"]
    if activation in _FUSED_CONV and not ctx.standard_only and node.output.dtype == DType.float32:
        name, params = _FUSED_CONV[activation]
        ctx.node("FusedConv", inputs, [node.output.name], domain=CONTRIB, activation=name,
                 activation_params=params(node.attrs["activation_args"]), **attrs)
        return
    _with_activation(ctx, node, lambda out: ctx.node("Conv", inputs, [out] if out else None, **attrs))


# -- normalisation -------------------------------------------------------------------------------
@emits("batch_norm")
def _batch_norm(ctx: EmitContext, node: Node) -> None:
    x, mean, var, weight, bias = node.inputs
    channels = mean.shape[0]
    dtype = x.dtype.numpy
    scale = weight.name if weight is not None else ctx.const(np.ones(channels, dtype), "bn_scale")
    shift = bias.name if bias is not None else ctx.const(np.zeros(channels, dtype), "bn_shift")
    ctx.node("BatchNormalization", [x.name, scale, shift, mean.name, var.name], [node.output.name],
             epsilon=node.attrs["eps"])


@emits("layer_norm")
def _layer_norm(ctx: EmitContext, node: Node) -> None:
    x, weight, bias = node.inputs
    n = node.attrs["normalized_ndim"]
    normalized = x.shape[x.type.rank - n:]
    if weight is None:
        if not all(isinstance(d, int) for d in normalized):
            raise ctx.unsupported("layer_norm without weight over a symbolic dim")
        weight_name = ctx.const(np.ones(normalized, x.dtype.numpy), "ln_scale")
    else:
        weight_name = weight.name
    ctx.node("LayerNormalization", [x.name, weight_name] + ([bias.name] if bias is not None else []),
             [node.output.name], axis=-n, epsilon=node.attrs["eps"])


@emits("softmax", "log_softmax")
def _softmax(ctx: EmitContext, node: Node) -> None:
    op = "Softmax" if node.op == "softmax" else "LogSoftmax"
    ctx.node(op, [node.inputs[0].name], [node.output.name], axis=node.attrs["axis"])


# -- pooling -------------------------------------------------------------------------------------
@emits("max_pool")
def _max_pool(ctx: EmitContext, node: Node) -> None:
    a = node.attrs
    ctx.node("MaxPool", [node.inputs[0].name], [node.output.name], kernel_shape=list(a["kernel"]),
             strides=list(a["stride"]), pads=list(a["padding"]), dilations=list(a["dilation"]),
             ceil_mode=int(a["ceil_mode"]))


@emits("avg_pool")
def _avg_pool(ctx: EmitContext, node: Node) -> None:
    a = node.attrs
    ctx.node("AveragePool", [node.inputs[0].name], [node.output.name], kernel_shape=list(a["kernel"]),
             strides=list(a["stride"]), pads=list(a["padding"]), ceil_mode=int(a["ceil_mode"]),
             count_include_pad=int(a["count_include_pad"]))


@emits("adaptive_avg_pool")
def _adaptive_avg_pool(ctx: EmitContext, node: Node) -> None:
    x = node.inputs[0]
    out_size = node.attrs["output_size"]
    in_size = x.shape[2:]
    if all(o == 1 for o in out_size):
        ctx.node("GlobalAveragePool", [x.name], [node.output.name])
        return
    if not all(isinstance(s, int) for s in in_size):
        raise ctx.unsupported("adaptive pooling over a symbolic spatial size")
    if all(s % o == 0 for s, o in zip(in_size, out_size)):
        kernel = [s // o for s, o in zip(in_size, out_size)]
        ctx.node("AveragePool", [x.name], [node.output.name], kernel_shape=kernel, strides=kernel)
        return
    # Uneven bins: per axis, mean of each bin's slice, concatenated (PyTorch's bin bounds).
    current = x.name
    for axis, (size, out) in enumerate(zip(in_size, out_size), start=2):
        bins = []
        for i in range(out):
            lo, hi = (i * size) // out, -(-((i + 1) * size) // out)
            piece = ctx.node("Slice", [current, ctx.const(np.asarray([lo], np.int64)),
                                       ctx.const(np.asarray([hi], np.int64)), ctx.const(np.asarray([axis], np.int64))])
            bins.append(ctx.node("ReduceMean", [piece, ctx.const(np.asarray([axis], np.int64))], keepdims=1))
        last = axis == 1 + len(in_size)
        current = ctx.node("Concat", bins, [node.output.name] if last else None, axis=axis)


# -- attention -----------------------------------------------------------------------------------
def emit_attention(ctx: EmitContext, q: Value | str, k: str, v: str, *, rank: int, dtype: DType, scale: float,
                   mask: Value | None, causal_shape: tuple | None, out: str | None) -> str:
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    scores = ctx.node("MatMul", [q, ctx.node("Transpose", [k], perm=perm)])
    scores = ctx.node("Mul", [scores, ctx.const(np.asarray(scale, dtype.numpy), "scale")])
    if causal_shape is not None:
        lq, lk = causal_shape
        if not (isinstance(lq, int) and isinstance(lk, int)):
            raise ctx.unsupported("causal attention over a symbolic sequence length")
        keep = ctx.const(np.tril(np.ones((lq, lk), dtype=bool)), "causal")
        scores = ctx.node("Where", [keep, scores, ctx.const(np.asarray(-np.inf, dtype.numpy), "neg_inf")])
    if mask is not None:
        if mask.dtype == DType.bool:
            scores = ctx.node("Where", [mask.name, scores, ctx.const(np.asarray(-np.inf, dtype.numpy), "neg_inf")])
        else:
            scores = ctx.node("Add", [scores, mask.name])
    probs = ctx.node("Softmax", [scores], axis=-1)
    return ctx.node("MatMul", [probs, v], [out] if out else None)


@emits("attention")
def _attention(ctx: EmitContext, node: Node) -> None:
    q, k, v, mask = node.inputs
    scale = node.attrs["scale"] if node.attrs["scale"] is not None else 1.0 / math.sqrt(q.shape[-1])
    causal = (q.shape[-2], k.shape[-2]) if node.attrs["is_causal"] else None
    emit_attention(ctx, q.name, k.name, v.name, rank=q.type.rank, dtype=q.dtype, scale=scale, mask=mask,
                   causal_shape=causal, out=node.output.name)


@emits("multi_head_attention")
def _multi_head_attention(ctx: EmitContext, node: Node) -> None:
    q, k, v = node.inputs
    heads, scale = node.attrs["num_heads"], node.attrs["scale"]
    if not ctx.standard_only and q.dtype == DType.float32:
        ctx.node("MultiHeadAttention", [q.name, k.name, v.name], [node.output.name], domain=CONTRIB,
                 num_heads=heads, scale=scale)
        return

    def split(x: Value) -> str:   # [B, S, E] -> [B, H, S, E/H]; 0 copies B and S from the input
        shaped = ctx.node("Reshape", [x.name, ctx.const(np.asarray([0, 0, heads, -1], np.int64), "heads")])
        return ctx.node("Transpose", [shaped], perm=[0, 2, 1, 3])

    y = emit_attention(ctx, split(q), split(k), split(v), rank=4, dtype=q.dtype, scale=scale, mask=None,
                       causal_shape=None, out=None)
    merged = ctx.node("Transpose", [y], perm=[0, 2, 1, 3])
    ctx.node("Reshape", [merged, ctx.const(np.asarray([0, 0, -1], np.int64), "merge")], [node.output.name])


# -- indexing and shape --------------------------------------------------------------------------
@emits("gather")
def _gather(ctx: EmitContext, node: Node) -> None:
    ctx.node("Gather", [node.inputs[0].name, node.inputs[1].name], [node.output.name], axis=node.attrs["axis"])


@emits("reshape")
def _reshape(ctx: EmitContext, node: Node) -> None:
    shape = node.attrs["shape"]
    allowzero = 1 if any(d == 0 for d in shape) else None
    ctx.node("Reshape", [node.inputs[0].name, ctx.shape_tensor(shape, node.inputs[0])], [node.output.name],
             allowzero=allowzero)


@emits("expand")
def _expand(ctx: EmitContext, node: Node) -> None:
    x = node.inputs[0]
    ctx.node("Expand", [x.name, ctx.shape_tensor(node.attrs["shape"], x, for_expand=True)], [node.output.name])


@emits("transpose")
def _transpose(ctx: EmitContext, node: Node) -> None:
    ctx.node("Transpose", [node.inputs[0].name], [node.output.name], perm=list(node.attrs["perm"]))


@emits("concat")
def _concat(ctx: EmitContext, node: Node) -> None:
    ctx.node("Concat", [v.name for v in node.inputs], [node.output.name], axis=node.attrs["axis"])


@emits("slice")
def _slice(ctx: EmitContext, node: Node) -> None:
    a = node.attrs
    i64 = lambda v: ctx.const(np.asarray([v], np.int64))  # noqa: E731
    ctx.node("Slice", [node.inputs[0].name, i64(a["start"]), i64(a["end"]), i64(a["axis"]), i64(a["step"])],
             [node.output.name])


_REDUCE = {"reduce_sum": "ReduceSum", "reduce_mean": "ReduceMean", "reduce_max": "ReduceMax",
           "reduce_min": "ReduceMin"}


@emits(*_REDUCE)
def _reduce(ctx: EmitContext, node: Node) -> None:
    axes = list(node.attrs["axes"])
    inputs = [node.inputs[0].name] + ([ctx.const(np.asarray(axes, np.int64), "axes")] if axes else [])
    ctx.node(_REDUCE[node.op], inputs, [node.output.name], keepdims=int(node.attrs["keepdim"]))


@emits("argmax")
def _argmax(ctx: EmitContext, node: Node) -> None:
    ctx.node("ArgMax", [node.inputs[0].name], [node.output.name], axis=node.attrs["axis"],
             keepdims=int(node.attrs["keepdim"]))


def missing_emitters() -> set[str]:
    """IR ops with no ONNX emitter (a test keeps this empty)."""
    return set(all_ops()) - set(EMITTERS)
