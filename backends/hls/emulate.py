"""A numpy emulator of the fixed-point HLS kernels: the same integer arithmetic as the C code.

It runs the ``Layer`` records from ``layers.lower`` on int64 codes, vectorised over the batch.
Accumulators are exact (their types are wide enough, see ``fixed.accumulator``), so each layer
is: exact integer sum -> ``fixed.convert`` (round half up, saturate) -> activation. The C
simulation must equal this bit for bit; tests check that.
"""

from __future__ import annotations

import numpy as np

from backends.hls import fixed
from backends.hls.layers import (
    EXP_STEP_BITS,
    LUT_RANGES,
    LUT_SIZE,
    SLOPE_TYPE,
    Layer,
    Tensor,
)


def run(inputs: list[Tensor], layers: list[Layer], outputs: list[Tensor],
        arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Float inputs in the model's layout -> float outputs in the model's layout."""
    env = {t.name: to_codes(t, a) for t, a in zip(inputs, arrays)}
    for layer in layers:
        env[layer.output.name] = KERNELS[layer.kind](layer, *[env[t.name] for t in layer.inputs])
    return [from_codes(t, env[t.name]) for t in outputs]


def to_codes(t: Tensor, a: np.ndarray) -> np.ndarray:
    """[batch, *logical] floats -> [batch, stored] codes (what the bridge's float->ap_fixed does)."""
    flat = np.asarray(a, dtype=np.float32).reshape(a.shape[0], -1)
    return fixed.quantize(flat[:, t.perm], t.type)


def from_codes(t: Tensor, codes: np.ndarray) -> np.ndarray:
    out = np.empty_like(codes)
    out[:, t.perm] = codes
    return fixed.dequantize(out, t.type).reshape((codes.shape[0],) + t.logical)


# -- activations on codes of the output type -----------------------------------------------------
def activate(y: np.ndarray, act: dict, t: fixed.FixedType) -> np.ndarray:
    kind = act["kind"]
    if kind == "clamp":
        lo = -np.inf if act["lo"] is None else act["lo"]
        hi = np.inf if act["hi"] is None else act["hi"]
        return np.clip(y, lo, hi).astype(np.int64)
    if kind == "leaky":
        return np.where(y < 0, fixed.convert(y * act["slope"], t.frac + SLOPE_TYPE.frac, t), y)
    if kind == "lut":
        return act["table"][lut_index(y, t.frac, LUT_RANGES[act["fn"]])]
    return y


def lut_index(codes: np.ndarray, frac: int, lut_range: tuple[float, int]) -> np.ndarray:
    """floor(x * 2**bits) - lo * 2**bits, clamped: integer shifts on the codes."""
    lo, bits = lut_range
    shift = frac - bits
    scaled = codes >> shift if shift >= 0 else codes << -shift
    return np.clip(scaled - int(lo * 2 ** bits), 0, LUT_SIZE - 1)


# -- kernels -------------------------------------------------------------------------------------
def dense(layer: Layer, x: np.ndarray) -> np.ndarray:
    p = layer.p
    acc = x @ p["w"].T
    return finish(layer, acc + bias_codes(p))


def bias_codes(p: dict) -> np.ndarray | int:
    if p["b"] is None:
        return 0
    return p["b"] << (p["accum_t"].frac - p["bias_t"].frac)


def finish(layer: Layer, acc: np.ndarray) -> np.ndarray:
    t = layer.output.type
    y = fixed.convert(acc, layer.p["accum_t"].frac, t)
    return activate(y, layer.p["act"], t)


def conv(layer: Layer, x: np.ndarray) -> np.ndarray:
    p = layer.p
    n = x.shape[0]
    xi = x.reshape(n, p["ih"], p["iw"], p["c_in"])
    xi = np.pad(xi, ((0, 0), (p["pt"], p["pt"] + p["sh"] + p["dh"] * p["kh"]),
                     (p["pl"], p["pl"] + p["sw"] + p["dw"] * p["kw"]), (0, 0)))
    g, oc = p["groups"], p["c_out"]
    cg, og = p["c_in"] // g, oc // g
    acc = np.zeros((n, p["oh"], p["ow"], oc), dtype=np.int64)
    for kh in range(p["kh"]):
        for kw in range(p["kw"]):
            h0, w0 = kh * p["dh"], kw * p["dw"]
            win = xi[:, h0:h0 + p["sh"] * p["oh"]:p["sh"], w0:w0 + p["sw"] * p["ow"]:p["sw"], :]
            for gi in range(g):
                wg = p["w"][gi * og:(gi + 1) * og, kh, kw, :]  # [og, cg]
                acc[..., gi * og:(gi + 1) * og] += win[..., gi * cg:(gi + 1) * cg] @ wg.T
    return finish(layer, (acc + bias_codes(p)).reshape(n, -1))


def pool(layer: Layer, x: np.ndarray) -> np.ndarray:
    p = layer.p
    n, c = x.shape[0], p["c"]
    xi = x.reshape(n, p["ih"], p["iw"], c)
    valid = np.zeros((p["ih"] + 2 * p["pt"] + p["kh"] * p["dh"], p["iw"] + 2 * p["pl"] + p["kw"] * p["dw"]), bool)
    valid[p["pt"]:p["pt"] + p["ih"], p["pl"]:p["pl"] + p["iw"]] = True
    padded = np.zeros((n,) + valid.shape + (c,), dtype=np.int64)
    padded[:, valid] = xi.reshape(n, -1, c)
    best = np.full((n, p["oh"], p["ow"], c), np.iinfo(np.int64).min)
    total = np.zeros_like(best)
    count = np.zeros((p["oh"], p["ow"]), dtype=np.int64)
    for kh in range(p["kh"]):
        for kw in range(p["kw"]):
            h0, w0 = kh * p["dh"], kw * p["dw"]
            sl = (slice(h0, h0 + p["sh"] * p["oh"], p["sh"]), slice(w0, w0 + p["sw"] * p["ow"], p["sw"]))
            ok = valid[sl]
            win = padded[(slice(None),) + sl]
            best = np.where(ok[None, :, :, None], np.maximum(best, win), best)
            total += win
            inside_pad = (np.arange(p["oh"])[:, None] * p["sh"] + h0 < p["ih"] + p["pt"] + p["pb"]) & \
                         (np.arange(p["ow"])[None, :] * p["sw"] + w0 < p["iw"] + p["pl"] + p["pr"])
            count += ok if not p["include_pad"] else inside_pad
    t_in, t = layer.inputs[0].type, layer.output.type
    if p["mode"] == "max":
        return fixed.convert(best, t_in.frac, t).reshape(n, -1)
    return avg_codes(total, count[None, :, :, None], t_in.frac, t).reshape(n, -1)


def avg_codes(total: np.ndarray, count: np.ndarray, src_frac: int, t: fixed.FixedType) -> np.ndarray:
    """round_half_up(total * 2**(t.frac - src_frac) / count) in integers (as the C kernel)."""
    d = t.frac - src_frac
    num = total << d if d >= 0 else total
    den = count if d >= 0 else count << -d
    return fixed.saturate((2 * num + den) // (2 * den), t)


def act(layer: Layer, x: np.ndarray) -> np.ndarray:
    t_in, t = layer.inputs[0].type, layer.output.type
    a = layer.p["act"]
    if a["kind"] == "lut":  # the table maps input codes straight to output codes
        return a["table"][lut_index(x, t_in.frac, LUT_RANGES[a["fn"]])]
    if a["kind"] == "leaky":
        y = np.where(x < 0, x * a["slope"], x << SLOPE_TYPE.frac)
        return fixed.convert(y, t_in.frac + SLOPE_TYPE.frac, t)
    return activate(fixed.convert(x, t_in.frac, t), a, t)


def add(layer: Layer, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    f = layer.p["accum_t"].frac
    ta, tb = layer.inputs[0].type, layer.inputs[1].type
    return fixed.convert((a << (f - ta.frac)) + (b << (f - tb.frac)), f, layer.output.type)


def scale(layer: Layer, x: np.ndarray) -> np.ndarray:
    p = layer.p
    c = p["channels"]
    xs = x.reshape(x.shape[0], -1, c)
    acc = xs * p["w"] + bias_codes(p)
    return finish(layer, acc.reshape(x.shape[0], -1))


def softmax(layer: Layer, x: np.ndarray) -> np.ndarray:
    t_in, t = layer.inputs[0].type, layer.output.type
    d = x.max(axis=1, keepdims=True) - x
    shift = t_in.frac - EXP_STEP_BITS
    idx = d >> shift if shift >= 0 else d << -shift
    e = layer.p["table"][np.minimum(idx, LUT_SIZE - 1)]
    total = e.sum(axis=1, keepdims=True)
    num = e << t.frac
    return fixed.saturate((2 * num + total) // (2 * total), t)


def quantize(layer: Layer, x: np.ndarray) -> np.ndarray:
    p = layer.p
    return np.clip(fixed.shift_round(x * p["m"][0], p["s"]) + p["zp"], p["lo"], p["hi"])


def qdense(layer: Layer, x: np.ndarray) -> np.ndarray:
    p = layer.p
    acc = x @ p["w"].T + p["b"]
    return np.clip(fixed.shift_round(acc * p["m"], p["s"]) + p["zp"], p["lo"], p["hi"])


def dequantize(layer: Layer, q: np.ndarray) -> np.ndarray:
    p = layer.p
    return fixed.saturate(fixed.shift_round((q - p["zp"]) * p["m"][0], p["s"]), layer.output.type)


KERNELS = {"quantize": quantize, "qdense": qdense, "dequantize": dequantize,"dense": dense, "conv": conv, "pool": pool, "act": act, "add": add, "scale": scale,
           "softmax": softmax}
