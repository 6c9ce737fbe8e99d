"""Post-training quantization of conv / linear / matmul layers to int8.

Rewrites, per layer chosen (float32, constant weight, not in ``skip``):

* ``int8`` (static): ``layer(x, W, b)`` -> ``layer(DQ(Q(x)), DQ(Wq), DQ(bq))`` with the layer's
  output (after its activation, which is split off again) followed by ``DQ(Q(.))`` when another
  quantized layer reads it, and always for conv. Activations are uint8, per tensor, asymmetric,
  with ranges from calibration; weights int8 symmetric (zero point 0, 7-bit range +-63, see
  WEIGHT_QMAX), per output channel by default; biases int32 with scale ``x_scale * w_scale``.
  This QDQ form is what onnxruntime fuses into QLinearConv / QGemm / QLinearMatMul with u8
  activations and s8 weights, the only int8 form that is fast on x86 without AVX-VNNI-INT8 (s8
  activations run 5-11x slower). A value reached from a quantized value through max-pool / reshape / transpose keeps
  its scale, so onnxruntime can drop the Q/DQ pairs around those ops.
* ``int8-dynamic``: linear and matmul with a constant right operand only (never conv: ConvInteger
  is 8x slower than float there): ``x`` -> ``dynamic_quantize_linear`` -> ``matmul_integer`` with
  the int8 weight -> cast -> ``* (x_scale * w_scale)`` -> ``+ b`` -> activation, which
  onnxruntime fuses into DynamicQuantizeMatMul.
* ``int8-weight``: ``W`` -> ``DQ(Wq)``: weights stored in int8 (full 8-bit range +-127,
  WEIGHT_ONLY_QMAX), dequantized at run time; the arithmetic stays float.
* ``int4-weight``: linear and matmul with a constant weight only (conv stays float):
  ``linear(x, W, b)`` -> ``matmul(x, DQ(Wq4)) + b`` -> activation, with ``Wq4`` the [K, N]
  weight (K, the reduction, along axis 0) in symmetric int4 (values in [-7, 7], held in int8,
  ``bits=4``) and one float scale per block of ``block_size`` rows of K per output column
  (blocked ``dequantize_linear``; when K is not a multiple of the block the last block is
  shorter and has its own scale). This is the form onnxruntime fuses into its MatMulNBits kernel
  (weight [K, N], axis 0, no zero point), hence a linear becomes a matmul.

Weights that meet uint8 activations in integer arithmetic (``int8``, ``int8-dynamic``) are 7-bit,
in [-63, 63], so the integer results are exact on every x86 CPU: without VNNI (AVX2, AVX-512F)
onnxruntime's u8 x s8 kernels add two adjacent u8 * s8 products into a saturating int16 lane
(``vpmaddubsw``), and 2 * 255 * 63 = 32130 <= 32767 cannot saturate, where 2 * 255 * 127 = 64770
could (measured: outputs off by up to 8210). The lost bit of weight precision cost no accuracy on
the digits MLP and CNN (bench/bench_compression.py).

Static int8 leaves float the layers where onnxruntime's int8 kernels or the Q / DQ around them
would be slower than float (passes/quantize_rules.py); the report gives each one's reason.

It runs after the optimisation pipeline; only dead-code elimination may follow (constant folding
would evaluate ``DQ(Wq)`` back into a float weight). ``quantize_graph`` returns a per-layer report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from compiler.errors import CompileError
from compiler.ir import DType, Graph, Node, Value
from compiler.ops.nn import activation_op
from compiler.ops.quant import dequantize_linear as dequantize_reference
from compiler.ops.quant import quantize_linear as quantize_reference
from passes.calibrate import CALIBRATORS, collect_ranges
from passes.quantize_rules import FOLDED_ACTIVATIONS as FOLDED_INTO_Q
from passes.quantize_rules import context_reasons, conv_kernel_reason

MODES = ("int8", "int8-dynamic", "int8-weight", "int4-weight")
LAYER_OPS = ("conv", "linear", "matmul")
# Symmetric weights for integer arithmetic with uint8 activations: [-63, 63] (7 bits), so a pair of
# u8 * s8 products, which x86 CPUs without VNNI add into a saturating int16 (vpmaddubsw), stays
# within 2 * 255 * 63 = 32130 <= 32767 (onnxruntime's reduce_range, OpenVINO's saturation
# workaround). Symmetric (no -64), so -w quantizes exactly. QAT's fake quant uses it too.
WEIGHT_QMAX = 63
# Weight-only int8 dequantizes to float before any arithmetic: it keeps the full 8-bit range.
WEIGHT_ONLY_QMAX = 127
INT4_QMAX = 7  # symmetric int4 weights in [-7, 7], for the same reason
# onnxruntime fuses blocked int4 DequantizeLinear -> MatMul into MatMulNBits only for a power-of-two
# block of at least 16; 32 is its quantizer's default too.
INT4_BLOCK_SIZE = 32
# Which convs static int8 leaves float because int8 would be slower there (few input channels per
# group, an activation the int8 conv cannot fold, an int8 island between float ops): see
# passes/quantize_rules.py for the rules and the measurements behind them. FOLDED_INTO_Q (imported
# from there): the activations onnxruntime folds into a conv's output Q.
# Ops whose output values lie inside their input's range: their output reuses the input's qparams.
PASS_THROUGH = ("max_pool", "reshape", "transpose", "adaptive_max_pool", "slice")


@dataclass
class QParams:
    scale: np.ndarray  # float32, 0-d or 1-d
    zero_point: np.ndarray  # 0-d or 1-d, in the quantized dtype


@dataclass
class _State:
    """What one quantize_graph call builds up: shared Q/DQ pairs and the report."""

    graph: Graph
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    activation_qparams: dict[int, QParams] = field(default_factory=dict)
    dequantized: dict[int, Value] = field(default_factory=dict)
    layers: list[dict[str, Any]] = field(default_factory=list)
    block_size: int = INT4_BLOCK_SIZE  # int4-weight: K rows per weight scale
    layer_outputs: dict[int, Value] = field(default_factory=dict)  # layer -> its split-off activation
    made: set[int] = field(default_factory=set)  # the DQ(Q(.)) values this call created


# -- the public entry point ------------------------------------------------------------------------
def quantize_graph(graph: Graph, mode: str, calibration: Sequence[Sequence[np.ndarray]] | None = None, *,
                   skip: Sequence[str] = (), calibrator: str = "minmax", per_channel: bool = True,
                   block_size: int = INT4_BLOCK_SIZE) -> dict[str, Any]:
    """Quantize ``graph`` in place (see the module docstring); returns the report dict.
    ``block_size`` is int4-weight's number of K rows per weight scale."""
    _check_arguments(graph, mode, calibration, skip, calibrator)
    if mode == "int4-weight":
        check_block_size(block_size)
    chosen, skipped = select_layers(graph, mode, skip)
    state = _State(graph, block_size=block_size)
    if mode == "int8":
        chosen = [_split_activation(state, node) for node in chosen]
        state.ranges = collect_ranges(graph, calibration, _calibrated_names(state, chosen), calibrator)
    for node in chosen:
        _REWRITES[mode](state, node, per_channel)
    graph.toposort()
    graph.verify()
    return {"mode": mode, "calibrator": calibrator if mode == "int8" else None,
            "per_channel": per_channel and mode != "int4-weight",
            "block_size": block_size if mode == "int4-weight" else None,
            "calibration_batches": len(calibration) if mode == "int8" else 0,
            "quantized": [layer["name"] for layer in state.layers], "skipped": skipped, "layers": state.layers,
            "activation_ranges": {k: list(v) for k, v in sorted(state.ranges.items())}}


def _check_arguments(graph: Graph, mode: str, calibration, skip: Sequence[str], calibrator: str) -> None:
    if mode not in MODES:
        raise CompileError(f"unknown quantization mode '{mode}'; choose one of {', '.join(MODES)}")
    if calibrator not in CALIBRATORS:
        raise CompileError(f"unknown calibrator '{calibrator}'; choose one of {', '.join(CALIBRATORS)}")
    if mode == "int8" and not calibration:
        raise CompileError("static int8 quantization needs calibration data (a list of input lists run "
                           "through the model to measure activation ranges); pass calibration_data= or "
                           "--calibration data.npz, or use --quantize int8-dynamic, which needs none")
    names = {n.name for n in graph.nodes} | {n.op for n in graph.nodes}
    unknown = [s for s in skip if s not in names]
    if unknown:
        layers = ", ".join(n.name for n in graph.nodes if n.op in LAYER_OPS) or "none"
        raise CompileError(f"quantize skip entr{'ies' if len(unknown) > 1 else 'y'} {', '.join(map(repr, unknown))} "
                           f"match no node name or op type; the quantizable layers are: {layers}")


# -- which layers ----------------------------------------------------------------------------------
def select_layers(graph: Graph, mode: str, skip: Sequence[str] = ()) -> tuple[list[Node], list[dict[str, str]]]:
    """(layers to quantize, [{name, op, reason}] for layers left in float), in graph order."""
    reasons = {}
    layers = [node for node in graph.nodes if node.op in LAYER_OPS]
    for node in layers:
        reason = _why_not(node, mode, skip)
        if reason:
            reasons[id(node)] = reason
    if mode == "int8":  # a layer next to float ops must save more than the Q / DQ and int8 pooling it adds
        reasons.update(context_reasons([n for n in layers if id(n) not in reasons], PASS_THROUGH))
    chosen = [node for node in layers if id(node) not in reasons]
    skipped = [{"name": node.name, "op": node.op, "reason": reasons[id(node)]} for node in layers if id(node) in reasons]
    return chosen, skipped


def check_block_size(block_size: int) -> None:
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) \
            or block_size < 16 or block_size & (block_size - 1):
        raise CompileError(f"int4 block size must be a power of two >= 16 (onnxruntime's MatMulNBits runs "
                           f"no other), got {block_size}")


def _why_not(node: Node, mode: str, skip: Sequence[str]) -> str | None:
    if node.name in skip or node.op in skip:
        return "skipped on request"
    x, w = node.inputs[0], node.inputs[1]
    if x.dtype != DType.float32 or w.dtype != DType.float32:
        return f"not float32 ({x.dtype})"
    if not w.is_const:
        return "its weight is computed at run time (int8 activation x activation products are slow here)"
    if node.op == "matmul" and (w.type.rank != 2 or x.type.rank < 2):
        return "matmul with a constant right operand is quantized only for a 2-d weight and x of rank >= 2"
    if mode == "int8-dynamic" and node.op == "conv":
        return "dynamic quantization never covers conv (ConvInteger runs ~8x slower than float conv)"
    if mode == "int4-weight" and node.op == "conv":
        return "int4-weight covers linear and matmul only (no backend runs an int4 conv): conv stays float"
    if mode == "int4-weight" and x.type.rank < 2:
        return "int4-weight needs x of rank >= 2 (the layer becomes a MatMulNBits-style matmul)"
    if mode == "int8" and node.op == "conv":
        return conv_kernel_reason(node)
    return None


def _split_activation(state: _State, node: Node) -> Node:
    """A conv/linear with a fused activation -> the plain layer followed by the activation op, so a
    Q can sit after the activation (onnxruntime removes a Relu in front of a Q with zero point 0)."""
    activation = node.attrs.get("activation")
    if not activation:
        return node
    graph = state.graph
    op, attrs = activation_op(activation, node.attrs["activation_args"])
    plain = graph.insert_before(node, node.op, list(node.inputs),
                                dict(node.attrs, activation="", activation_args=()), location=node.location)
    act = graph.insert_before(node, op, [plain.output], attrs, name=f"{node.name}_{op}", location=node.location)
    _replace(graph, node.output, act.output)
    graph.remove_node(node)
    plain.name = node.name  # the layer keeps the name users see in reports and pass to skip
    state.layer_outputs[id(plain)] = act.output
    return plain


def _output_of(state: _State, layer: Node) -> Value:
    """The layer's value after its (split-off) activation, if it has one."""
    return state.layer_outputs.get(id(layer), layer.output)


def _closing_value(state: _State, layer: Node) -> Value:
    """Where a conv's Q goes: after a relu / clamp activation (onnxruntime folds those into the Q,
    ReluQuantFusion / ClipQuantFusion), else right after the conv, before its activation."""
    out = _output_of(state, layer)
    if layer.op == "conv" and out is not layer.output and out.producer.op not in FOLDED_INTO_Q:
        return layer.output
    return out


def _calibrated_names(state: _State, layers: list[Node]) -> set[str]:
    names = {v.name for layer in layers for v in (layer.inputs[0], _output_of(state, layer))}
    return names | {_closing_value(state, layer).name for layer in layers}


# -- weights ---------------------------------------------------------------------------------------
def _weight_axis(node: Node) -> int:
    """The output-channel axis of the weight: rows of a linear / conv weight, columns of matmul's."""
    return 1 if node.op == "matmul" else 0


def quantize_weight(w: np.ndarray, axis: int, per_channel: bool,
                    qmax: int = WEIGHT_QMAX) -> tuple[np.ndarray, QParams]:
    """Symmetric int8 (zero point 0, values in [-qmax, qmax]); scales per slice along ``axis``."""
    if per_channel:
        reduce_axes = tuple(i for i in range(w.ndim) if i != axis)
        amax = np.abs(w).max(axis=reduce_axes) if w.size else np.zeros(w.shape[axis], np.float32)
    else:
        amax = np.asarray(np.abs(w).max() if w.size else 0.0)
    scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    zero_point = np.zeros(scale.shape, np.int8)
    q = quantize_reference(w.astype(np.float32), scale, zero_point, axis=axis, dtype=DType.int8)
    return q, QParams(scale, zero_point)


def _weight_error(w: np.ndarray, q: np.ndarray, qp: QParams, axis: int) -> dict[str, float]:
    return _error_stats(w, dequantize_reference(q, qp.scale, qp.zero_point, axis=axis) - w)


def _error_stats(w: np.ndarray, err: np.ndarray) -> dict[str, float]:
    norm = float(np.sqrt(np.mean(np.square(w, dtype=np.float64)))) or 1.0
    return {"max_abs": float(np.abs(err).max()) if err.size else 0.0,
            "relative_rms": float(np.sqrt(np.mean(np.square(err, dtype=np.float64)))) / norm}


def _dequantized_weight(state: _State, node: Node, per_channel: bool, layer: dict[str, Any],
                        qmax: int = WEIGHT_QMAX) -> tuple[Value, QParams]:
    """``DQ(Wq)`` replacing the node's weight; records the weight error in ``layer``."""
    g, w = state.graph, node.inputs[1]
    axis = _weight_axis(node)
    q, qp = quantize_weight(w.const, axis, per_channel, qmax)
    layer.update(weight_dtype="int8", weight_error=_weight_error(w.const, q, qp, axis))
    dq = _dequantize(g, g.add_constant(q, f"{w.name}_q"), qp, axis, f"{node.name}_weight")
    return dq, qp


def _dequantize(g: Graph, q: Value, qp: QParams, axis: int, hint: str) -> Value:
    scale = g.add_constant(qp.scale, f"{hint}_scale")
    zero_point = g.add_constant(qp.zero_point, f"{hint}_zero_point")
    return g.add_node("dequantize_linear", [q, scale, zero_point], {"axis": axis}, name=f"{hint}_dq").output


# -- static int8 -----------------------------------------------------------------------------------
def activation_qparams(lo: float, hi: float) -> QParams:
    """uint8 asymmetric parameters covering [min(lo, 0), max(hi, 0)] (0 stays exact)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = np.float32((hi - lo) / 255.0) if hi > lo else np.float32(1.0)
    zero_point = np.clip(np.rint(-lo / float(scale)), 0, 255)
    return QParams(np.asarray(scale, np.float32), np.asarray(zero_point, np.uint8))


def _qparams_for(state: _State, v: Value) -> QParams:
    """A value's activation qparams: its source's when it passes through PASS_THROUGH ops from a
    quantized value (so onnxruntime can drop the Q/DQ around them), else from its range."""
    if id(v) in state.activation_qparams:
        return state.activation_qparams[id(v)]
    source = v
    while source.producer is not None and source.producer.op in PASS_THROUGH:
        source = source.producer.inputs[0]
        if id(source) in state.activation_qparams:
            state.activation_qparams[id(v)] = state.activation_qparams[id(source)]
            return state.activation_qparams[id(v)]
    if v.name not in state.ranges:
        raise CompileError(f"no calibration range for %{v.name} (its batches were all empty)")
    state.activation_qparams[id(v)] = activation_qparams(*state.ranges[v.name])
    return state.activation_qparams[id(v)]


def _fake_quantized(state: _State, v: Value) -> Value:
    """``DQ(Q(v))``, built once per value and shared by every quantized reader."""
    if id(v) in state.made:  # already a DQ(Q(.)) of ours (a layer output rerouted to its readers)
        return v
    if id(v) not in state.dequantized:
        g, qp = state.graph, _qparams_for(state, v)
        scale = g.add_constant(qp.scale, f"{v.name}_scale")
        zero_point = g.add_constant(qp.zero_point, f"{v.name}_zero_point")
        q = g.add_node("quantize_linear", [v, scale, zero_point], {"axis": 1, "dtype": DType.uint8},
                       name=f"{v.name}_q").output
        dq = g.add_node("dequantize_linear", [q, scale, zero_point], {"axis": 1}, name=f"{v.name}_dq").output
        state.dequantized[id(v)] = dq
        state.made.add(id(dq))
        state.activation_qparams[id(dq)] = qp  # readers of DQ(Q(v)) through max-pool etc. share v's scale
    return state.dequantized[id(v)]


def _static_layer(state: _State, node: Node, per_channel: bool) -> None:
    g = state.graph
    layer = {"name": node.name, "op": node.op, "activations": "uint8"}
    x = node.inputs[0]
    out = _output_of(state, node)
    x_qp = _qparams_for(state, x)
    dq_x = _fake_quantized(state, x)
    dq_w, w_qp = _dequantized_weight(state, node, per_channel, layer)
    g.set_input(node, 0, dq_x)
    g.set_input(node, 1, dq_w)
    if node.op != "matmul" and len(node.inputs) > 2 and node.inputs[2] is not None:
        g.set_input(node, 2, _quantized_bias(g, node, node.inputs[2], x_qp, w_qp))
    layer.update(input_range=list(state.ranges.get(x.name, (None, None))),
                 output_range=list(state.ranges.get(out.name, (None, None))))
    if node.op == "conv":
        _requantize_output(state, _closing_value(state, node))
    if _read_by_other_layers(out):
        _requantize_output(state, out)
    if node.op == "linear" and x.type.rank != 2:
        _linear_as_matmul(g, node)
    state.layers.append(layer)


def _read_by_other_layers(v: Value) -> bool:
    """Will a later quantized layer read ``v`` (directly or through PASS_THROUGH ops)?"""
    for user in v.users():
        if user.op in LAYER_OPS and user.inputs[0] is v:
            return True
        if user.op in PASS_THROUGH and _read_by_other_layers(user.output):
            return True
    return False


def _requantize_output(state: _State, out: Value) -> None:
    """Route every reader of ``out`` through ``DQ(Q(out))`` (the Q that closes the fused kernel)."""
    users = list(out.uses)
    dq = _fake_quantized(state, out)
    q_node = dq.producer.inputs[0].producer
    for use in users:
        if use.node is not q_node:
            state.graph.set_input(use.node, use.index, dq)
    if any(o is out for o in state.graph.outputs):
        state.graph.outputs = [dq if o is out else o for o in state.graph.outputs]
        _take_name(state.graph, out, dq)


def _replace(g: Graph, old: Value, new: Value) -> None:
    """``replace_all_uses_with``, and a graph output keeps its name."""
    is_output = any(o is old for o in g.outputs)
    g.replace_all_uses_with(old, new)
    if is_output:
        _take_name(g, old, new)


def _take_name(g: Graph, old: Value, new: Value) -> None:
    """``new`` takes the name of ``old`` (a graph output: the artifact's signature names it)."""
    name = old.name
    g.rename_value(old, f"{name}_float")
    g.rename_value(new, name)


def _quantized_bias(g: Graph, node: Node, bias: Value, x_qp: QParams, w_qp: QParams) -> Value:
    """int32 bias with scale x_scale * w_scale (the accumulator's scale), as ONNX QDQ expects."""
    if not bias.is_const:
        return bias
    scale = (x_qp.scale * w_qp.scale).astype(np.float32)
    scale = np.broadcast_to(scale, bias.shape).astype(np.float32) if scale.ndim else scale
    info = np.iinfo(np.int32)
    q = np.clip(np.rint(bias.const.astype(np.float64) / scale.astype(np.float64)), info.min, info.max).astype(np.int32)
    # No zero point: an int32 bias is always centred on 0, and the absent input saves 4 bytes a channel.
    dq_scale = g.add_constant(scale, f"{node.name}_bias_scale")
    return g.add_node("dequantize_linear", [g.add_constant(q, f"{bias.name}_q"), dq_scale], {"axis": 0},
                      name=f"{node.name}_bias_dq").output


def _linear_as_matmul(g: Graph, node: Node) -> None:
    """linear on x of rank != 2 -> matmul(x, DQ(Wq)^T) + b: onnxruntime fuses QDQ MatMul, while
    the Transpose a linear needs on a run-time weight would block the fusion."""
    x, dq_w = node.inputs[0], node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    w_q, scale, zero_point = dq_w.producer.inputs
    t = g.add_constant(np.ascontiguousarray(w_q.const.T), f"{w_q.name}_t")
    dq_t = g.add_node("dequantize_linear", [t, scale, zero_point], {"axis": 1}, name=f"{node.name}_weight_t_dq").output
    y = g.add_node("matmul", [x, dq_t], name=node.name, location=node.location).output
    if bias is not None:
        y = g.add_node("add", [y, bias], name=f"{node.name}_bias", location=node.location).output
    _replace(g, node.output, y)
    g.remove_node(node)


# -- dynamic int8 ----------------------------------------------------------------------------------
def _dynamic_layer(state: _State, node: Node, per_channel: bool) -> None:
    g = state.graph
    x, w = node.inputs[0], node.inputs[1]
    bias = node.inputs[2] if node.op == "linear" and len(node.inputs) > 2 else None
    weight = w.const.T if node.op == "linear" else w.const  # [in, out]: matmul_integer's b
    q, qp = quantize_weight(np.ascontiguousarray(weight), 1, per_channel)
    layer = {"name": node.name, "op": node.op, "activations": "uint8 (dynamic)", "weight_dtype": "int8",
             "weight_error": _weight_error(weight, q, qp, 1)}
    xq, x_scale, x_zp = g.add_node("dynamic_quantize_linear", [x], name=f"{node.name}_x_dq").outputs
    acc = g.op("matmul_integer", xq, g.add_constant(q, f"{w.name}_q"), x_zp,
               g.add_constant(qp.zero_point, f"{w.name}_zero_point"), location=node.location)
    scale = g.op("mul", x_scale, g.add_constant(qp.scale, f"{w.name}_scale"))
    y = g.op("mul", g.op("cast", acc, dtype=DType.float32), scale, location=node.location)
    if bias is not None:
        y = g.op("add", y, bias, location=node.location)
    if node.attrs.get("activation"):
        op, attrs = activation_op(node.attrs["activation"], node.attrs["activation_args"])
        y = g.add_node(op, [y], attrs, location=node.location).output
    _replace(g, node.output, y)
    g.remove_node(node)
    state.layers.append(layer)


# -- weight-only int8 ------------------------------------------------------------------------------
def _weight_only_layer(state: _State, node: Node, per_channel: bool) -> None:
    layer = {"name": node.name, "op": node.op, "activations": "float32"}
    dq_w, _ = _dequantized_weight(state, node, per_channel, layer, WEIGHT_ONLY_QMAX)
    state.graph.set_input(node, 1, dq_w)
    state.layers.append(layer)


# -- weight-only int4 ------------------------------------------------------------------------------
def quantize_weight_int4(w: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int4 of a [K, N] weight: (int8-held values in [-7, 7], float32 scales
    [ceil(K / block_size), N]), one scale per block of rows per column; a last block shorter
    than ``block_size`` gets the scale of the rows it has."""
    k, n = w.shape
    blocks = -(-k // block_size)
    padded = np.zeros((blocks * block_size, n), np.float32)  # zero rows leave each block's max alone
    padded[:k] = w
    amax = np.abs(padded.reshape(blocks, block_size, n)).max(axis=1)
    scale = np.where(amax > 0, amax / INT4_QMAX, 1.0).astype(np.float32)
    per_row = np.repeat(scale, block_size, axis=0)[:k]
    q = np.clip(np.rint(np.divide(w, per_row, dtype=np.float32)), -INT4_QMAX, INT4_QMAX).astype(np.int8)
    return q, scale


def _int4_weight_layer(state: _State, node: Node, per_channel: bool) -> None:
    """``linear(x, W, b)`` / ``matmul(x, W)`` -> ``matmul(x, DQ(Wq4)) [+ b]`` -> activation."""
    g, block_size = state.graph, state.block_size
    node = _split_activation(state, node)  # a matmul carries no activation
    x, w = node.inputs[0], node.inputs[1]
    weight = np.ascontiguousarray(w.const.T if node.op == "linear" else w.const, np.float32)  # [K, N]
    q, scale = quantize_weight_int4(weight, block_size)
    attrs = {"axis": 0, "block_size": block_size, "bits": 4}
    error = dequantize_reference(q, scale, axis=0, block_size=block_size) - weight
    state.layers.append({"name": node.name, "op": node.op, "activations": "float32", "weight_dtype": "int4",
                         "block_size": block_size, "weight_error": _error_stats(weight, error)})
    dq = g.add_node("dequantize_linear", [g.add_constant(q, f"{w.name}_q4"),
                                          g.add_constant(scale, f"{node.name}_weight_scale")],
                    attrs, name=f"{node.name}_weight_dq").output
    if node.op == "matmul":
        g.set_input(node, 1, dq)
        return
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    matmul = g.add_node("matmul", [x, dq], name=f"{node.name}_matmul", location=node.location)
    y = matmul.output
    if bias is not None:
        y = g.add_node("add", [y, bias], name=f"{node.name}_bias", location=node.location).output
    _replace(g, node.output, y)
    g.remove_node(node)
    matmul.name = node.name  # the layer keeps the name users see in reports and pass to skip


_REWRITES = {"int8": _static_layer, "int8-dynamic": _dynamic_layer, "int8-weight": _weight_only_layer,
             "int4-weight": _int4_weight_layer}

__all__ = ["INT4_BLOCK_SIZE", "LAYER_OPS", "MODES", "QParams", "WEIGHT_ONLY_QMAX", "WEIGHT_QMAX", "activation_qparams",
           "check_block_size", "quantize_graph", "quantize_weight", "quantize_weight_int4", "select_layers"]
