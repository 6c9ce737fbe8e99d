"""An IR graph back to a trainable ``torch.nn.Module`` (for recovery fine-tuning after pruning).

``graph_to_module(graph)`` returns a module whose forward runs the graph's nodes in order with a
torch function per op (``TORCH_OPS``; the numpy reference in ``compiler/ops`` is the spec they
are tested against). The constant weights and biases of conv and linear layers become
``nn.Parameter``s; every other constant is a buffer (not trained). A weight that holds exact
zeros (pruned) gets a mask buffer, and ``apply_masks()`` zeroes those entries again; call it
after every optimizer step (``compiler.driver.finetune`` does). Masks are applied to the weights, not
in forward, so the module exports to the same graph shape it came from (no extra multiplies).

Quantization-aware training: ``enable_fake_quant(activations)`` makes forward round the inputs
of the given conv/linear layers to uint8 with fixed (calibrated) scales and their weights to
symmetric int8 per output channel (scales follow the weights as they train), as the static int8
pass will quantize them; the rounding passes gradients straight through
(``torch.fake_quantize_*``). ``disable_fake_quant()`` turns it off again before export.

The module is an ordinary ``nn.Module``: ``compiler.compile`` can export it again.
This module imports torch: it sits outside the pure IR layer.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compiler import dims
from compiler.errors import UnsupportedOpError
from compiler.ir import Graph
from passes.quantize import WEIGHT_QMAX


# -- torch implementations per IR op ---------------------------------------------------------------
def _activation(y: torch.Tensor, activation: str, args) -> torch.Tensor:
    if not activation:
        return y
    from compiler.ops.nn import activation_op

    op, attrs = activation_op(activation, tuple(args))
    return TORCH_OPS[op](y, **attrs)


def _spatial_pad(x: torch.Tensor, padding, value: float = 0.0) -> tuple[torch.Tensor, list[int]]:
    """(x padded where begin != end, the symmetric padding left for torch's own argument)."""
    nd = len(padding) // 2
    begin, end = list(padding[:nd]), list(padding[nd:])
    if begin == end:
        return x, begin
    pads: list[int] = []
    for b, e in zip(reversed(begin), reversed(end)):  # F.pad takes the last dim first
        pads += [b, e]
    return F.pad(x, pads, value=value), [0] * nd


def _conv(x, weight, bias=None, *, stride, padding, dilation, groups, activation="", activation_args=()):
    nd = weight.dim() - 2
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[nd]
    x, pad = _spatial_pad(x, padding)
    y = fn(x, weight, bias, stride=list(stride), padding=pad, dilation=list(dilation), groups=groups)
    return _activation(y, activation, activation_args)


def _linear(x, weight, bias=None, *, activation="", activation_args=()):
    return _activation(F.linear(x, weight, bias), activation, activation_args)


def _max_pool(x, *, kernel, stride, padding, dilation, ceil_mode):
    fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[len(kernel)]
    x, pad = _spatial_pad(x, padding, value=-math.inf)
    return fn(x, list(kernel), list(stride), pad, list(dilation), ceil_mode=ceil_mode)


def _avg_pool(x, *, kernel, stride, padding, ceil_mode, count_include_pad):
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[len(kernel)]
    nd = len(kernel)
    if list(padding[:nd]) != list(padding[nd:]):
        raise UnsupportedOpError("avg_pool", stage="graph_to_module", detail="asymmetric padding",
                                 hint="pad explicitly before the pooling layer")
    return fn(x, list(kernel), list(stride), list(padding[:nd]), ceil_mode=ceil_mode,
              count_include_pad=count_include_pad)


def _adaptive_avg_pool(x, *, output_size):
    fn = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}[len(output_size)]
    return fn(x, list(output_size))


def _adaptive_max_pool(x, *, output_size):
    fn = {1: F.adaptive_max_pool1d, 2: F.adaptive_max_pool2d, 3: F.adaptive_max_pool3d}[len(output_size)]
    return fn(x, list(output_size))


def _layer_norm(x, weight=None, bias=None, *, normalized_ndim, eps):
    return F.layer_norm(x, list(x.shape[x.dim() - normalized_ndim:]), weight, bias, eps)


def _batch_norm(x, mean, var, weight=None, bias=None, *, eps):
    return F.batch_norm(x, mean, var, weight, bias, training=False, eps=eps)


def _split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    b, s, e = t.shape
    return t.reshape(b, s, heads, e // heads).transpose(1, 2)


def _mha(q, k, v, *, num_heads, scale):
    y = F.scaled_dot_product_attention(_split_heads(q, num_heads), _split_heads(k, num_heads),
                                       _split_heads(v, num_heads), scale=scale)
    b, h, s, d = y.shape
    return y.transpose(1, 2).reshape(b, s, h * d)


def _qkv_attention(x, weight, bias=None, *, num_heads, scale):
    q, k, v = F.linear(x, weight, bias).chunk(3, dim=-1)
    return _mha(q, k, v, num_heads=num_heads, scale=scale)


def _attention(q, k, v, mask=None, *, is_causal, scale):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale)


def _reduce(fn: Callable) -> Callable:
    def run(x, *, axes, keepdim):
        axes = list(axes) or list(range(x.dim()))
        return fn(x, dim=axes, keepdim=keepdim)

    return run


def _clamp(x, min=None, max=None):  # noqa: A002 - the IR's attribute names
    return torch.clamp(x, min=min, max=max)


def _cast(x, *, dtype):
    return x.to(getattr(torch, dtype.value))


TORCH_OPS: dict[str, Callable] = {
    "conv": _conv, "linear": _linear, "matmul": torch.matmul,
    "relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "silu": F.silu,
    "hardswish": F.hardswish, "hardsigmoid": F.hardsigmoid,
    "gelu": lambda x, approximate="none": F.gelu(x, approximate=approximate),
    "leaky_relu": lambda x, negative_slope=0.01: F.leaky_relu(x, negative_slope), "clamp": _clamp,
    "neg": torch.neg, "abs": torch.abs, "exp": torch.exp, "log": torch.log, "sqrt": torch.sqrt,
    "rsqrt": torch.rsqrt, "reciprocal": torch.reciprocal, "erf": torch.erf, "cast": _cast,
    "add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div, "pow": torch.pow,
    "maximum": torch.maximum, "minimum": torch.minimum,
    "max_pool": _max_pool, "avg_pool": _avg_pool, "adaptive_avg_pool": _adaptive_avg_pool,
    "adaptive_max_pool": _adaptive_max_pool,
    "softmax": lambda x, *, axis: torch.softmax(x, axis), "log_softmax": lambda x, *, axis: torch.log_softmax(x, axis),
    "layer_norm": _layer_norm, "batch_norm": _batch_norm,
    "multi_head_attention": _mha, "attention": _attention, "qkv_attention": _qkv_attention,
    "reduce_mean": _reduce(torch.mean), "reduce_sum": _reduce(torch.sum),
    "transpose": lambda x, *, perm: x.permute(*perm),
    "concat": lambda *xs, axis: torch.cat(xs, axis),
    "gather": lambda x, indices, *, axis: torch.index_select(x, axis, indices.long().reshape(-1)).reshape(
        x.shape[:axis % x.dim()] + indices.shape + x.shape[axis % x.dim() + 1:]),
}
# reshape is handled by the module itself: its shape attribute may name symbolic dims


# -- the module ------------------------------------------------------------------------------------
def trainable_constants(graph: Graph) -> set[str]:
    """Names of the constants that become parameters: conv/linear weights and biases (and the
    packed q/k/v projections of qkv_attention, which are linears too)."""
    names = set()
    for node in graph.nodes:
        if node.op in ("conv", "linear", "qkv_attention"):
            for v in node.inputs[1:3]:
                if v is not None and v.is_const and v.dtype.is_float:
                    names.add(v.name)
    return names


def check_supported(graph: Graph) -> None:
    missing = sorted({n.op for n in graph.nodes if n.op not in TORCH_OPS and n.op != "reshape"})
    if missing:
        first = next(n for n in graph.nodes if n.op in missing)
        raise UnsupportedOpError(", ".join(missing), stage="graph_to_module (fine-tuning)",
                                 location=first.describe(),
                                 hint="add a torch implementation to compiler/to_torch.py TORCH_OPS, "
                                      "or fine-tune the PyTorch model before compiling")


class GraphModule(nn.Module):
    """Runs an IR graph with torch ops; see the module docstring."""

    def __init__(self, graph: Graph):
        super().__init__()
        check_supported(graph)
        trainable = trainable_constants(graph)
        self.weights = nn.ParameterDict()
        self.masks: dict[str, str] = {}  # parameter name -> mask buffer name
        self._const_keys: dict[str, tuple[str, str]] = {}  # value name -> (kind, attribute key)
        for i, (name, value) in enumerate(graph.constants.items()):
            tensor = torch.from_numpy(np.array(value.const, copy=True))
            key = f"c{i}"
            if name in trainable:
                self.weights[key] = nn.Parameter(tensor)
                self._const_keys[name] = ("param", key)
                self._add_mask(key, tensor)
            else:
                self.register_buffer(f"buf_{key}", tensor)
                self._const_keys[name] = ("buffer", f"buf_{key}")
        self._inputs = [(v.name, v.shape) for v in graph.inputs]
        self._outputs = [v.name for v in graph.outputs]
        self._nodes = [(n.op, [v.name if v is not None else None for v in n.inputs], dict(n.attrs),
                        [o.name for o in n.outputs], n.describe()) for n in graph.nodes]
        self._fake_quant: dict[str, tuple[float, int]] | None = None  # layer input -> (scale, zero point)

    def enable_fake_quant(self, activations: dict[str, tuple[float, int]]) -> None:
        """Fake-quantize the conv/linear layers whose input value is named in ``activations``
        (value name -> uint8 scale and zero point): that input per tensor, their weight per
        output channel (symmetric, [-WEIGHT_QMAX, WEIGHT_QMAX]: the 7-bit range static int8 uses)."""
        self._fake_quant = {name: (float(scale), int(zp)) for name, (scale, zp) in activations.items()}

    def disable_fake_quant(self) -> None:
        self._fake_quant = None

    def _fake_quantized(self, op: str, in_names: list, args: list) -> list:
        qparams = self._fake_quant.get(in_names[0]) if op in ("conv", "linear") else None
        if qparams is None:
            return args
        scale, zero_point = qparams
        x = torch.fake_quantize_per_tensor_affine(args[0], scale, zero_point, 0, 255)
        w = args[1]
        amax = w.detach().abs().flatten(1).amax(dim=1)
        w_scale = torch.where(amax > 0, amax / WEIGHT_QMAX, torch.ones_like(amax)).float()
        w = torch.fake_quantize_per_channel_affine(w, w_scale, torch.zeros_like(w_scale, dtype=torch.int32), 0,
                                                   -WEIGHT_QMAX, WEIGHT_QMAX)
        return [x, w, *args[2:]]

    def _add_mask(self, key: str, tensor: torch.Tensor) -> None:
        if tensor.dim() < 2 or not bool((tensor == 0).any()):
            return
        mask = (tensor != 0).to(tensor.dtype)
        self.register_buffer(f"mask_{key}", mask)
        self.masks[key] = f"mask_{key}"

    @torch.no_grad()
    def apply_masks(self) -> None:
        """Zero the pruned weights again (after an optimizer step that may have moved them)."""
        for key, buffer in self.masks.items():
            self.weights[key].mul_(getattr(self, buffer))

    def _constant(self, name: str) -> torch.Tensor:
        kind, key = self._const_keys[name]
        return self.weights[key] if kind == "param" else getattr(self, key)

    def forward(self, *inputs: torch.Tensor):
        if len(inputs) != len(self._inputs):
            raise TypeError(f"the graph takes {len(self._inputs)} inputs, got {len(inputs)}")
        env: dict[str, torch.Tensor] = {}
        bindings: dict[str, int] = {}
        for (name, shape), x in zip(self._inputs, inputs):
            env[name] = x
            for dim, size in zip(shape, x.shape):
                if dims.is_symbol(dim):
                    bindings.setdefault(dim, size)
        for op, in_names, attrs, out_names, where in self._nodes:
            args = [None if n is None else (env[n] if n in env else self._constant(n)) for n in in_names]
            while args and args[-1] is None:
                args.pop()  # an absent optional input at the end: let the default apply
            if self._fake_quant is not None:
                args = self._fake_quantized(op, in_names, args)
            if op == "reshape":
                result = args[0].reshape(_bound_shape(attrs["shape"], bindings))
            else:
                result = TORCH_OPS[op](*args, **attrs)
            results = result if isinstance(result, tuple) else (result,)
            env.update(zip(out_names, results))
        outs = [env[n] if n in env else self._constant(n) for n in self._outputs]
        return outs[0] if len(outs) == 1 else tuple(outs)


def _bound_shape(shape, bindings: dict[str, int]) -> list:
    """A reshape target: symbolic dims from the inputs' sizes; a lone symbolic dim becomes -1
    so that torch.export keeps it symbolic instead of specialising it."""
    symbolic = [d for d in shape if isinstance(d, str)]
    if len(symbolic) == 1:
        return [-1 if isinstance(d, str) else d for d in shape]
    return [dims.evaluate(d, bindings) if isinstance(d, str) else d for d in shape]


def graph_to_module(graph: Graph) -> GraphModule:
    """A trainable ``nn.Module`` computing ``graph`` (see the module docstring)."""
    return GraphModule(graph)


__all__ = ["GraphModule", "TORCH_OPS", "check_supported", "graph_to_module", "trainable_constants"]
