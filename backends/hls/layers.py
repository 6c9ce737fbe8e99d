"""Lowering: IR ``Graph`` -> a list of HLS ``Layer`` records (the HLS backend's op table).

``LOWER`` maps each IR op name to a function that turns one node into zero or more layers. A
layer holds everything both consumers need: the C++ generator (``codegen``) and the numpy
emulator (``emulate``) read the same records, so they cannot drift apart.

Layout: the HLS arrays are channels-last per batch item ((H, W, C), (L, C) or (F,)). Each
``Tensor`` carries ``perm``: for every stored position, the logical (NCHW-flattened) index it
holds. A reshape/flatten moves no data; it keeps ``perm``, and a linear layer that reads a
permuted vector has its weight columns permuted at compile time (conv -> flatten -> linear).
Anything this table cannot express exactly raises ``UnsupportedOpError`` naming the node.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from backends.hls import fixed
from backends.hls.fixed import FixedType
from compiler.errors import UnsupportedOpError
from compiler.ir import Graph, Node, Value

STAGE = "the HLS backend"
LUT_SIZE = 1024
# (table input range low end, log2 of entries per unit): sigmoid covers [-8, 8), tanh [-4, 4).
LUT_RANGES = {"sigmoid": (-8.0, 6), "tanh": (-4.0, 7)}
EXP_STEP_BITS = 6  # softmax exp table: exp(-d) for d in [0, 16) in steps of 1/64
EXP_FRAC = 16  # exp table codes: unsigned, 16 fraction bits
SLOPE_TYPE = FixedType(18, 2)  # leaky_relu slope (|slope| < 2)


@dataclass
class Tensor:
    name: str                 # C array name
    logical: tuple[int, ...]  # per-item logical shape (C, *spatial) or (F,)
    perm: np.ndarray          # stored position -> logical flat index
    type: FixedType

    @property
    def size(self) -> int:
        return int(np.prod(self.logical))

    @property
    def stored(self) -> tuple[int, ...]:
        """Channels-last per-item shape of the C array."""
        return self.logical[1:] + self.logical[:1] if len(self.logical) > 1 else self.logical


@dataclass
class Layer:
    kind: str              # dense, conv, pool, act, add, scale, softmax
    name: str              # IR node name (the key of hls_precision_map)
    index: int
    inputs: list[Tensor]
    output: Tensor
    p: dict[str, Any] = field(default_factory=dict)  # sizes, codes, activation


def channels_last_perm(logical: tuple[int, ...]) -> np.ndarray:
    """Stored position -> logical index for a (C, *spatial) tensor stored as (*spatial, C)."""
    idx = np.arange(int(np.prod(logical))).reshape(logical)
    if len(logical) > 1:
        idx = np.moveaxis(idx, 0, -1)
    return idx.ravel()


class Lowering:
    """State while lowering one graph: tensors by IR value, layers so far, the precision plan."""

    def __init__(self, graph: Graph, plan):
        self.graph, self.plan = graph, plan
        self.tensors: dict[int, Tensor] = {}
        self.layers: list[Layer] = []
        # int8 (see backends.hls.int8): dequantized views of integer tensors, node producing each
        # value, nodes folded into an earlier layer
        self.views: dict[int, Any] = {}
        self.view_nodes: dict[int, Node] = {}
        self.producers = {id(v): n for n in graph.nodes for v in n.outputs}
        self.skip: set[int] = set()

    def unsupported(self, node: Node, detail: str, hint: str = "") -> UnsupportedOpError:
        return UnsupportedOpError(node.op, stage=STAGE, location=node.location or node.name, detail=detail,
                                  hint=hint)

    def tensor(self, node: Node, value: Value) -> Tensor:
        if value.is_const:
            raise self.unsupported(node, f"input '{value.name}' is a constant tensor here",
                                   "only weights of linear/conv/batch_norm may be constants")
        if id(value) not in self.tensors and id(value) in self.views:
            from backends.hls.int8 import materialize

            return materialize(self, self.view_nodes[id(value)], self.views[id(value)], value)
        return self.tensors[id(value)]

    def new_tensor(self, node: Node, logical: tuple[int, ...], t: FixedType) -> Tensor:
        out = node.outputs[0]
        self.tensors[id(out)] = tensor = Tensor(f"layer{len(self.layers) + 1}_out", logical,
                                                channels_last_perm(logical), t)
        return tensor

    def add(self, kind: str, node: Node, inputs: list[Tensor], logical: tuple[int, ...], **p) -> Layer:
        out = self.new_tensor(node, logical, self.plan.result(node))
        layer = Layer(kind, node.name, len(self.layers) + 1, inputs, out, p)
        self.layers.append(layer)
        return layer


def item_shape(node: Node, value: Value) -> tuple[int, ...]:
    shape = value.shape
    if any(not isinstance(d, int) for d in shape[1:]):
        raise UnsupportedOpError(node.op, stage=STAGE, location=node.location or node.name,
                                 detail=f"value '{value.name}' has symbolic non-batch dims {shape}",
                                 hint="compile with static shapes (only dim 0, the batch, may be dynamic)")
    return tuple(shape[1:])


def need_channels_last(lw: Lowering, node: Node, t: Tensor) -> None:
    if not np.array_equal(t.perm, channels_last_perm(t.logical)):
        raise lw.unsupported(node, "its input was reshaped from a tensor of another layout",
                             "feed it the conv/pool output directly")


# -- activations -------------------------------------------------------------------------------
def lut_codes(fn: str, out: FixedType) -> np.ndarray:
    """Table of ``fn`` at the centre of each input bin, as codes of ``out``."""
    lo, bits = LUT_RANGES[fn]
    centres = lo + (np.arange(LUT_SIZE) + 0.5) * 2.0 ** -bits
    values = 1.0 / (1.0 + np.exp(-centres)) if fn == "sigmoid" else np.tanh(centres)
    return fixed.quantize(values, out)


def activation_params(lw: Lowering, node: Node, op: str, attrs: dict, out: FixedType) -> dict[str, Any]:
    """The ``act`` entry of a layer: what runs on the result after it is rounded to ``out``."""
    if op in ("", None):
        return {"kind": "none"}
    if op == "relu":
        return {"kind": "clamp", "lo": 0, "hi": None}
    if op == "clamp":
        lo, hi = attrs.get("min"), attrs.get("max")
        bound = lambda v: None if v is None else int(fixed.quantize(np.array(v), out))
        return {"kind": "clamp", "lo": bound(lo), "hi": bound(hi)}
    if op == "leaky_relu":
        slope = float(attrs.get("negative_slope", 0.01))
        if not SLOPE_TYPE.min_value <= slope <= SLOPE_TYPE.max_value:
            raise lw.unsupported(node, f"negative_slope {slope} is outside [-2, 2)")
        return {"kind": "leaky", "slope": int(fixed.quantize(np.array(slope), SLOPE_TYPE))}
    if op in LUT_RANGES:
        return {"kind": "lut", "fn": op, "table": lut_codes(op, out)}
    raise lw.unsupported(node, f"activation {op} has no fixed-point kernel",
                         "use relu, relu6/clamp, leaky_relu, sigmoid or tanh")


def fused_activation(lw: Lowering, node: Node, out: FixedType) -> dict[str, Any]:
    from compiler.ops.nn import activation_op

    name = node.attrs.get("activation", "")
    if not name:
        return {"kind": "none"}
    op, attrs = activation_op(name, tuple(node.attrs.get("activation_args", ())))
    return activation_params(lw, node, op, attrs, out)


def lower_activation(lw: Lowering, node: Node) -> None:
    x = lw.tensor(node, node.inputs[0])
    layer = lw.add("act", node, [x], x.logical)
    layer.output.perm = x.perm  # elementwise: same positions
    layer.p["act"] = activation_params(lw, node, node.op, node.attrs, layer.output.type)


# -- layers with weights -----------------------------------------------------------------------
def weight_codes(lw: Lowering, node: Node, w: np.ndarray, b: np.ndarray | None) -> tuple:
    wt = lw.plan.weight(node, w)
    bt = lw.plan.bias(node, b, wt) if b is not None else wt
    return wt, bt, fixed.quantize(w, wt), (fixed.quantize(b, bt) if b is not None else None)


def const(lw: Lowering, node: Node, value: Value | None, what: str) -> np.ndarray | None:
    if value is None:
        return None
    if not value.is_const:
        raise lw.unsupported(node, f"its {what} is computed at run time", f"make the {what} a parameter")
    return np.asarray(value.const, dtype=np.float64)


def lower_linear(lw: Lowering, node: Node) -> None:
    from backends.hls.int8 import try_lower_qlinear

    if try_lower_qlinear(lw, node):
        return
    x = lw.tensor(node, node.inputs[0])
    if len(x.logical) != 1:
        raise lw.unsupported(node, f"input has per-item shape {x.logical}; only [batch, features] is supported",
                             "flatten the input first")
    w = const(lw, node, node.inputs[1], "weight")
    b = const(lw, node, node.inputs[2] if len(node.inputs) > 2 else None, "bias")
    w = w[:, x.perm]  # stored position j holds logical feature perm[j]
    wt, bt, wc, bc = weight_codes(lw, node, w, b)
    layer = lw.add("dense", node, [x], (w.shape[0],), n_in=w.shape[1], n_out=w.shape[0], w=wc, b=bc,
                   weight_t=wt, bias_t=bt)
    finish_weighted(lw, node, layer, n_terms=w.shape[1])


def finish_weighted(lw: Lowering, node: Node, layer: Layer, n_terms: int) -> None:
    p = layer.p
    acc = fixed.accumulator(layer.inputs[0].type, p["weight_t"], n_terms, bias=p["b"] is not None)
    if p["b"] is not None and p["bias_t"].integer + 1 > acc.integer:
        acc = FixedType(acc.frac + p["bias_t"].integer + 1, p["bias_t"].integer + 1)
    p["accum_t"] = acc
    p["act"] = fused_activation(lw, node, layer.output.type)
    p["reuse"] = lw.plan.reuse(p["w"].size, p.get("n_out", p["w"].shape[0]))


def lower_conv(lw: Lowering, node: Node) -> None:
    x = lw.tensor(node, node.inputs[0])
    need_channels_last(lw, node, x)
    w = const(lw, node, node.inputs[1], "weight")
    b = const(lw, node, node.inputs[2] if len(node.inputs) > 2 else None, "bias")
    nd = w.ndim - 2
    if nd not in (1, 2):
        raise lw.unsupported(node, f"{nd}-d convolution", "only conv1d and conv2d are supported")
    a = node.attrs
    geom = spatial_2d(nd, x.logical, w.shape[2:], a["stride"], a["padding"], a["dilation"])
    w2 = w.reshape(w.shape[:2] + (1,) * (2 - nd) + w.shape[2:])  # [OC, CG, KH, KW]
    w2 = np.ascontiguousarray(w2.transpose(0, 2, 3, 1))  # [OC, KH, KW, CG]: channels-last taps
    wt, bt, wc, bc = weight_codes(lw, node, w2, b)
    oc = w.shape[0]
    out_logical = (oc,) + tuple(node.outputs[0].shape[2:])
    layer = lw.add("conv", node, [x], out_logical, w=wc, b=bc, weight_t=wt, bias_t=bt, groups=int(a["groups"]),
                   c_in=x.logical[0], c_out=oc, n_out=oc, **geom)
    finish_weighted(lw, node, layer, n_terms=int(np.prod(w.shape[1:])))


def spatial_2d(nd: int, logical, kernel, stride, padding, dilation) -> dict[str, int]:
    """Conv/pool geometry as 2-d (a 1-d op is 2-d with height 1)."""
    sp = list(logical[1:])
    pads = list(padding) if padding else [0] * (2 * nd)
    dil = list(dilation) if dilation else [1] * nd
    if nd == 1:
        sp, kernel, stride, dil = [1] + sp, [1] + list(kernel), [1] + list(stride), [1] + dil
        pads = [0, pads[0], 0, pads[1]]
    ih, iw = sp
    kh, kw = kernel
    oh = (ih + pads[0] + pads[2] - dil[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (iw + pads[1] + pads[3] - dil[1] * (kw - 1) - 1) // stride[1] + 1
    return {"ih": ih, "iw": iw, "kh": kh, "kw": kw, "sh": stride[0], "sw": stride[1], "pt": pads[0], "pl": pads[1],
                "pb": pads[2], "pr": pads[3], "dh": dil[0], "dw": dil[1], "oh": oh, "ow": ow}


def lower_batch_norm(lw: Lowering, node: Node) -> None:
    x = lw.tensor(node, node.inputs[0])
    mean, var = const(lw, node, node.inputs[1], "mean"), const(lw, node, node.inputs[2], "variance")
    gamma = const(lw, node, node.inputs[3], "weight") if len(node.inputs) > 3 else None
    beta = const(lw, node, node.inputs[4], "bias") if len(node.inputs) > 4 else None
    scale = (gamma if gamma is not None else 1.0) / np.sqrt(var + node.attrs["eps"])
    shift = (beta if beta is not None else 0.0) - mean * scale
    if len(x.logical) > 1:
        need_channels_last(lw, node, x)
    wt, bt, wc, bc = weight_codes(lw, node, scale, shift)
    layer = lw.add("scale", node, [x], x.logical, w=wc, b=bc, weight_t=wt, bias_t=bt, channels=x.logical[0])
    layer.output.perm = x.perm
    finish_weighted(lw, node, layer, n_terms=1)


# -- pooling -----------------------------------------------------------------------------------
def lower_pool(lw: Lowering, node: Node) -> None:
    x = lw.tensor(node, node.inputs[0])
    need_channels_last(lw, node, x)
    a = dict(node.attrs)
    if node.op == "adaptive_avg_pool":
        a = adaptive_as_pool(lw, node, x)
    if a.get("ceil_mode"):
        raise lw.unsupported(node, "ceil_mode=True", "use ceil_mode=False (pad explicitly instead)")
    nd = len(a["kernel"])
    if nd not in (1, 2) or len(x.logical) != nd + 1:
        raise lw.unsupported(node, f"{nd}-d pooling", "only 1-d and 2-d pooling are supported")
    geom = spatial_2d(nd, x.logical, a["kernel"], a["stride"], a["padding"], a.get("dilation"))
    mode = "max" if node.op == "max_pool" else "avg"
    include_pad = bool(a.get("count_include_pad", True))
    out_logical = (x.logical[0],) + tuple(node.outputs[0].shape[2:])
    lw.add("pool", node, [x], out_logical, mode=mode, include_pad=include_pad, c=x.logical[0], **geom)


def adaptive_as_pool(lw: Lowering, node: Node, x: Tensor) -> dict[str, Any]:
    sizes = tuple(x.logical[1:])
    outs = tuple(node.outputs[0].shape[2:])
    if any(s % o for s, o in zip(sizes, outs)):
        raise lw.unsupported(node, f"output size {outs} does not divide input size {sizes}",
                             "choose an output size that divides the input (e.g. 1)")
    k = tuple(s // o for s, o in zip(sizes, outs))
    return {"kernel": k, "stride": k, "padding": (0,) * (2 * len(k)), "count_include_pad": True}


# -- the rest ----------------------------------------------------------------------------------
def lower_add(lw: Lowering, node: Node) -> None:
    a, b = (lw.tensor(node, v) for v in node.inputs)
    if a.logical != b.logical or not np.array_equal(a.perm, b.perm):
        raise lw.unsupported(node, f"operands of shapes {a.logical} and {b.logical} (broadcasting or "
                             "mixed layouts)", "add tensors of the same shape")
    layer = lw.add("add", node, [a, b], a.logical)
    layer.output.perm = a.perm
    frac = max(a.type.frac, b.type.frac)
    integer = max(a.type.integer, b.type.integer) + 1
    layer.p["accum_t"] = FixedType(integer + frac, integer)


def lower_softmax(lw: Lowering, node: Node) -> None:
    x = lw.tensor(node, node.inputs[0])
    axis = node.attrs["axis"] % (len(x.logical) + 1)
    if len(x.logical) != 1 or axis != 1:
        raise lw.unsupported(node, f"softmax over axis {node.attrs['axis']} of per-item shape {x.logical}",
                             "apply softmax to a [batch, features] tensor")
    d = (np.arange(LUT_SIZE) + 0.5) * 2.0 ** -EXP_STEP_BITS
    table = np.floor(np.exp(-d) * 2.0 ** EXP_FRAC + 0.5).astype(np.int64)
    layer = lw.add("softmax", node, [x], x.logical, table=table)
    layer.output.perm = x.perm


def lower_reshape(lw: Lowering, node: Node) -> None:
    x = lw.tensor(node, node.inputs[0])
    logical = item_shape(node, node.outputs[0])
    if node.outputs[0].shape[0] != node.inputs[0].shape[0]:
        raise lw.unsupported(node, "it changes the batch dimension", "keep dim 0 as the batch")
    # No data moves: the same array, the same logical flat order.
    lw.tensors[id(node.outputs[0])] = Tensor(x.name, logical, x.perm, x.type)


LOWER: dict[str, Callable[[Lowering, Node], None]] = {
    "linear": lower_linear, "conv": lower_conv, "batch_norm": lower_batch_norm,
    "relu": lower_activation, "clamp": lower_activation, "leaky_relu": lower_activation,
    "sigmoid": lower_activation, "tanh": lower_activation, "softmax": lower_softmax,
    "max_pool": lower_pool, "avg_pool": lower_pool, "adaptive_avg_pool": lower_pool,
    "add": lower_add, "reshape": lower_reshape, "flatten": lower_reshape,
    "quantize_linear": lambda lw, node: _int8().lower_quantize(lw, node),
    "dequantize_linear": lambda lw, node: _int8().lower_dequantize(lw, node),
}


def _int8():
    from backends.hls import int8

    return int8


def lower(graph: Graph, plan) -> tuple[list[Tensor], list[Layer], list[Tensor]]:
    """(input tensors, layers, output tensors) for ``graph``."""
    lw = Lowering(graph, plan)
    inputs = []
    for i, value in enumerate(graph.inputs):
        if not value.dtype.is_float:
            raise UnsupportedOpError(f"input of dtype {value.dtype}", stage=STAGE, location=value.name,
                                     hint="the HLS target takes floating-point inputs")
        logical = item_shape(Node("input", (), (value,), {}, value.name), value)
        t = Tensor(f"input{i + 1}", logical, channels_last_perm(logical), plan.input(value))
        lw.tensors[id(value)] = t
        inputs.append(t)
    for node in graph.nodes:
        if id(node) in lw.skip:
            continue
        fn = LOWER.get(node.op)
        if fn is None:
            raise lw.unsupported(node, "no fixed-point kernel for this op",
                                 f"supported: {', '.join(sorted(LOWER))}")
        fn(lw, node)
    outputs = []
    for value in graph.outputs:
        if id(value) in lw.views and id(value) not in lw.tensors:
            lw.tensor(lw.view_nodes[id(value)], value)
        if value.is_const or id(value) not in lw.tensors:
            raise UnsupportedOpError("constant output", stage=STAGE, location=value.name)
        outputs.append(lw.tensors[id(value)])
    return inputs, lw.layers, outputs
