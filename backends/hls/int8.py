"""int8 integer-only kernels for QDQ graphs (the static int8 pass's output).

Pattern: ``quantize_linear(x)`` (u8/s8 per tensor) -> ``dequantize_linear`` -> ``linear`` with
``dequantize_linear(int8 weight const, per-channel scale, zero point 0)`` and an int32 bias
``dequantize_linear(bias_q, s_x*s_w)`` -> [relu | clamp] -> ``quantize_linear`` (or the graph
output / another op). Lowered to:

* ``quantize``: fixed-point codes -> integer codes, ``clamp(((x * M) + 2**(S-1) >> S) + zp)`` with
  an integer multiplier M / shift S for 2**-frac / scale;
* ``qdense``: int32 accumulate of q_x * q_w, the input zero point folded into the bias
  (``b' = b_q - zp_x * sum_i q_w[o, i]``), then per output channel either requantization
  ``clamp(((acc * M0[o] + 2**(S-1)) >> S) + zp_y, lo, 127/255)`` (relu/clamp folded into lo/hi)
  or, when no quantize_linear follows, conversion to the fixed-point output type;
* ``dequantize``: integer codes -> fixed point, for any other consumer.

Integer tensors are ``ap_fixed<9,9>`` (u8) / ``ap_fixed<8,8>`` (s8): fraction 0, codes == values,
so the fixed-point kernels and the emulator treat them uniformly. Against the interpreter the
codes agree except at rounding ties: the interpreter rounds x/scale computed in float32 half to
even; here the product by a 31-bit multiplier rounds half up, so a value within ~1e-7 relative of
a .5 boundary may land one code apart (tests bound that).
"""

from __future__ import annotations

import math

import numpy as np

from backends.hls import fixed
from backends.hls.fixed import FixedType
from backends.hls.layers import Layer, Lowering, Tensor, const
from compiler.ir import DType, Node

INT_TYPES = {DType.uint8: (FixedType(9, 9), 0, 255), DType.int8: (FixedType(8, 8), -128, 127)}
MULT_BITS = 31


def multiplier(real: np.ndarray) -> tuple[np.ndarray, int]:
    """Integers M (< 2**31) and one shift S with M * 2**-S ~= real (> 0), per channel."""
    real = np.atleast_1d(np.asarray(real, np.float64))
    top = max(math.ceil(math.log2(float(real.max()))), -60)
    shift = MULT_BITS - 1 - top
    m = np.floor(real * 2.0 ** shift + 0.5).astype(np.int64)
    return m, int(shift)


def scaled(v: np.ndarray, m: np.ndarray, shift: int) -> np.ndarray:
    """floor(v * m * 2**-shift + 1/2) in int64 (the C kernels do the same with long long)."""
    return fixed.shift_round(np.asarray(v, np.int64) * m, shift)


class DQView:
    """A dequantize_linear of an integer tensor, not yet materialized."""

    def __init__(self, source: Tensor, scale: float, zero_point: int):
        self.source, self.scale, self.zero_point = source, scale, zero_point


def qparams(lw: Lowering, node: Node) -> tuple[np.ndarray, np.ndarray]:
    scale = const(lw, node, node.inputs[1], "scale")
    zp = const(lw, node, node.inputs[2], "zero point") if len(node.inputs) > 2 and node.inputs[2] is not None \
        else np.zeros_like(scale)
    return scale, zp.astype(np.int64)


def lower_quantize(lw: Lowering, node: Node) -> None:
    x = lw.tensor(node, node.inputs[0])
    scale, zp = qparams(lw, node)
    if scale.size != 1 or node.attrs["dtype"] not in INT_TYPES:
        raise lw.unsupported(node, "per-channel activation quantization or a dtype other than u8/s8",
                             "quantize activations per tensor to uint8 or int8")
    t, lo, hi = INT_TYPES[node.attrs["dtype"]]
    m, s = multiplier(2.0 ** -x.type.frac / float(scale))
    layer = int_layer(lw, node, "quantize", [x], x.logical, t, m=m, s=s, zp=int(zp), lo=lo, hi=hi,
                      value=node.outputs[0].name)
    layer.output.perm = x.perm
    layer.output.qscale = float(scale)


def int_layer(lw: Lowering, node: Node, kind: str, inputs, logical, t: FixedType, **p) -> Layer:
    out = lw.new_tensor(node, logical, t)
    layer = Layer(kind, node.name, len(lw.layers) + 1, inputs, out, {"int_out": True, **p})
    lw.layers.append(layer)
    return layer


def lower_dequantize(lw: Lowering, node: Node) -> None:
    if node.attrs.get("block_size") or node.attrs.get("bits"):
        raise lw.unsupported(node, "blocked int4 weight dequantization (--quantize int4-weight)",
                             "int4-weight runs on targets onnx, llvm and cuda; for hls use --quantize int8")
    value = node.inputs[0]
    if value.is_const:
        return  # weights and biases: read by the linear that uses them
    q = lw.tensor(node, value)
    scale, zp = qparams(lw, node)
    if scale.size != 1:
        raise lw.unsupported(node, "per-channel dequantization of an activation")
    lw.views[id(node.outputs[0])] = DQView(q, float(scale), int(zp))
    lw.view_nodes[id(node.outputs[0])] = node


def materialize(lw: Lowering, node: Node, view: DQView, value) -> Tensor:
    """A dequantize layer for a consumer that is not an int8 linear."""
    out = lw.plan.result(node)
    m, s = multiplier(view.scale * 2.0 ** out.frac)
    layer = Layer("dequantize", node.name, len(lw.layers) + 1, [view.source],
                  Tensor(f"layer{len(lw.layers) + 1}_out", view.source.logical, view.source.perm, out),
                  {"m": m, "s": s, "zp": view.zero_point})
    lw.layers.append(layer)
    lw.tensors[id(value)] = layer.output
    return layer.output


def dq_const(lw: Lowering, node: Node, value, what: str):
    """(codes, scale, zero point) of a dequantize_linear of a constant, else None."""
    producer = lw.producers.get(id(value)) if value is not None else None
    if producer is None or producer.op != "dequantize_linear" or not producer.inputs[0].is_const:
        return None
    scale, zp = qparams(lw, producer)
    return np.asarray(producer.inputs[0].const, np.int64), scale, zp


def try_lower_qlinear(lw: Lowering, node: Node) -> bool:
    """Lower an int8 linear; False when the node is not in the QDQ pattern."""
    view = lw.views.get(id(node.inputs[0]))
    w = dq_const(lw, node, node.inputs[1], "weight")
    if view is None or w is None:
        return False
    wq, w_scale, w_zp = w
    if np.any(w_zp != 0) or wq.ndim != 2 or len(view.source.logical) != 1:
        raise lw.unsupported(node, "int8 weights with a zero point, or a non-2-d int8 linear",
                             "quantize weights symmetrically (zero point 0)")
    b = dq_const(lw, node, node.inputs[2] if len(node.inputs) > 2 else None, "bias")
    wq = wq[:, view.source.perm]
    bq = b[0] if b is not None else np.zeros(wq.shape[0], np.int64)
    bias = bq - view.zero_point * wq.sum(axis=1)  # zero point folded into the bias
    eff = view.scale * np.broadcast_to(w_scale, (wq.shape[0],)).astype(np.float64)
    tail = requant_tail(lw, node)
    wide = np.abs(bias).max(initial=0) >= 2 ** 31
    p = {"w": wq, "b": bias, "n_in": wq.shape[1], "n_out": wq.shape[0], "zp_in": view.zero_point,
         "weight_t": FixedType(8, 8), "bias_t": FixedType(62, 62) if wide else FixedType(32, 32),
         "reuse": lw.plan.reuse(wq.size, wq.shape[0])}
    if tail is not None:
        q_node, lo_hi, skip = tail
        scale, zp = qparams(lw, q_node)
        t, lo, hi = INT_TYPES[q_node.attrs["dtype"]]
        m, s = multiplier(eff / float(scale))
        lo = max(lo, int(zp) + lo_hi[0]) if lo_hi[0] is not None else lo
        hi = min(hi, int(zp) + lo_hi[1]) if lo_hi[1] is not None else hi
        lw.skip.update(id(n) for n in skip)
        layer = int_layer(lw, q_node, "qdense", [view.source], (wq.shape[0],), t, m=m, s=s, zp=int(zp), lo=lo, hi=hi,
                          value=q_node.outputs[0].name, **p)
        layer.output.qscale = float(scale)
        layer.name = node.name
    else:
        out = lw.plan.result(node)
        m, s = multiplier(eff * 2.0 ** out.frac)
        layer = Layer("qdense", node.name, len(lw.layers) + 1, [view.source],
                      lw.new_tensor(node, (wq.shape[0],), out), {"m": m, "s": s, "zp": 0, "lo": out.lo, "hi": out.hi,
                                                                  **p})
        lw.layers.append(layer)
        if node.attrs.get("activation"):
            raise lw.unsupported(node, "a fused activation on an int8 linear without a following quantize")
    return True


def requant_tail(lw: Lowering, node: Node):
    """(quantize node, (lo, hi) offsets in output codes, nodes folded) when the linear's value
    reaches exactly one quantize_linear, through at most a relu/clamp."""
    chain, value = [], node.outputs[0]
    bounds = (0, None) if node.attrs.get("activation") == "relu" else (None, None)
    if node.attrs.get("activation") not in ("", "relu", None):
        return None
    while len(value.users()) == 1 and not any(value is o for o in lw.graph.outputs):
        user = value.users()[0]
        if user.op == "quantize_linear":
            return user, bounds, chain + [user]
        if user.op != "relu" or bounds[0] is not None:
            return None
        bounds = (0, None)
        chain.append(user)
        value = user.outputs[0]
    return None
