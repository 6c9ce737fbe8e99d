"""The ONNX emitter: IR ``Graph`` -> ``onnx.ModelProto`` (run by onnxruntime's CPU provider).

This module is the graph-level driver: it runs the emitter of every IR node (the table
``backends.onnx.ops.EMITTERS``, one module per op family), names and types the graph's inputs and
outputs, picks the opset, checks the model, and is the target registry's entry point
(``emit_target``, ``supported_ops``).

Naming: ONNX value names are the IR value names; the ONNX node producing an IR node's output
carries the IR node's name, helper nodes are named after it ("conv_3_Add"). Every value gets
value_info (dtype and shape, symbolic dims as ``dim_param``) and the model passes
``onnx.checker.check_model(full_check=True)`` before it is returned.

This module imports onnx and numpy only: no torch, no onnxruntime.
"""

from __future__ import annotations

import re

import numpy as np
import onnx
from onnx import helper

from backends.onnx.ops import EMITTERS
from backends.onnx.ops.common import CONTRIB, ONNX_DTYPES, STAGE, EmitContext
from compiler.errors import CompileError, UnsupportedOpError
from compiler.ir import DType, Graph

# onnx 1.23 defines opset 28 and onnxruntime 1.32 has a CPU kernel for every op at the version
# opset 28 selects (checked against onnxruntime's kernel registry: only the deprecated Scatter
# and Upsample lack one); onnxruntime also loads such models without an "under development"
# warning. Opset 18 is the oldest we emit (reductions take axes as an input from 18 on).
DEFAULT_OPSET = 28
MIN_OPSET = 18


class OnnxEmitError(CompileError):
    """The emitted ONNX model failed onnx's checker (a backend bug); names the IR node."""


def supported_ops() -> set[str]:
    """IR ops this backend has an emitter for."""
    return set(EMITTERS)


# -- the model ---------------------------------------------------------------------------------
def _value_info(name: str, dtype: DType, shape: tuple | None) -> onnx.ValueInfoProto:
    dims_ = None if shape is None else [d if isinstance(d, int) else str(d) for d in shape]
    return helper.make_tensor_value_info(name, ONNX_DTYPES[dtype], dims_)


# onnxruntime 1.32 implements QuantizeLinear / DequantizeLinear up to version 25 (opset 28 added a
# version it has no kernel for): a graph with quantization ops is emitted at opset 25 at most.
QDQ_MAX_OPSET = 25
_QDQ_OPS = frozenset({"quantize_linear", "dequantize_linear"})


def _quant_opset(graph: Graph, opset: int) -> int:
    if opset > QDQ_MAX_OPSET and any(n.op in _QDQ_OPS for n in graph.nodes):
        return QDQ_MAX_OPSET
    return opset


def emit_onnx(graph: Graph, *, opset: int = DEFAULT_OPSET, standard_only: bool = False,
              producer: str = "aot-compiler") -> onnx.ModelProto:
    """The ONNX model computing ``graph``. With ``standard_only`` only standard ONNX ops are
    used and the model passes ``onnx.checker`` full_check; otherwise onnxruntime's contrib
    kernels (FusedConv, MultiHeadAttention, Attention) are used where they apply, and the model passes
    the checker with shape inference that skips those contrib nodes."""
    max_opset = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= max_opset:
        raise CompileError(f"ONNX opset {opset} is not supported; use an opset from {MIN_OPSET} to {max_opset}")
    opset = _quant_opset(graph, opset)
    ctx = EmitContext(graph, opset, standard_only)
    for node in graph.nodes:
        ctx.current = node
        emitter = EMITTERS.get(node.op)
        if emitter is None:
            raise UnsupportedOpError(node.op, stage=STAGE, location=node.location,
                                     detail="the ONNX backend has no emitter for this op")
        try:
            emitter(ctx, node)
        except (UnsupportedOpError, CompileError):
            raise
        except Exception as exc:
            exc.add_note(f"while emitting {node.describe()} to ONNX")
            raise
        for out in node.outputs:
            ctx.value_types[out.name] = (out.dtype, out.shape)
    ctx.current = None

    # Graph outputs must be distinct node outputs: copy inputs, constants and repeats.
    output_names: list[str] = []
    seen: set[str] = set()
    for v in graph.outputs:
        name = ctx.value(v)
        if v.producer is None or name in seen:
            copy = ctx.fresh(f"{v.name}_out")
            ctx.add("Identity", [name], copy)
            name = copy
        seen.add(name)
        output_names.append(name)
        ctx.value_types[name] = (v.dtype, v.shape)

    inputs = [_value_info(v.name, v.dtype, v.shape) for v in graph.inputs]
    outputs = [_value_info(n, v.dtype, v.shape) for n, v in zip(output_names, graph.outputs)]
    io_names = {v.name for v in graph.inputs} | set(output_names) | set(ctx.initializers)
    value_info = [_value_info(n, dt, sh) for n, (dt, sh) in ctx.value_types.items()
                  if n not in io_names and sh is not None]
    onnx_graph = helper.make_graph(ctx.nodes, graph.name, inputs, outputs,
                                   initializer=list(ctx.initializers.values()), value_info=value_info)
    opset_imports = [helper.make_opsetid("", opset)]
    if ctx.uses_contrib:
        opset_imports.append(helper.make_opsetid(CONTRIB, 1))
    model = helper.make_model(onnx_graph, opset_imports=opset_imports, producer_name=producer)
    model.ir_version = helper.find_min_ir_version_for(opset_imports[:1])  # contrib domain: no IR rule

    # Fill in the types of helper values we did not type ourselves, then check strictly.
    try:
        # onnx has no schemas for contrib ops: strict inference only for standard-only models
        inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=not ctx.uses_contrib,
                                                     data_prop=True)
    except Exception as exc:
        raise _check_error(ctx, exc) from exc
    typed = {vi.name for vi in model.graph.value_info} | io_names
    for vi in inferred.graph.value_info:
        if vi.name not in typed:
            model.graph.value_info.append(vi)
            typed.add(vi.name)
    for name, (dt, _) in ctx.value_types.items():
        if name not in typed:
            model.graph.value_info.append(_value_info(name, dt, None))
    try:
        onnx.checker.check_model(model, full_check=not ctx.uses_contrib)
    except Exception as exc:
        raise _check_error(ctx, exc) from exc
    return model


def emit_target(graph: Graph, options: dict) -> tuple[dict[str, bytes], dict]:
    """The registry's entry point: the artifact payload (``model.onnx``) and target info."""
    opset = options.get("opset") or DEFAULT_OPSET
    standard_only = bool(options.get("onnx_standard_only"))
    model = emit_onnx(graph, opset=opset, standard_only=standard_only)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))  # may be lowered for QDQ
    info = {"opset": opset, "standard_only": standard_only}
    if _int4_weights(graph):
        info["session_config"] = dict(INT4_SESSION_CONFIG)
    elif _weight_only(graph):
        # onnxruntime keeps DequantizeLinear of an initializer unfolded (to keep QDQ groups whole) and
        # so dequantizes the weights on every call (1.2-3.5x slower); with QDQ handling off it folds
        # them once at load: int8 storage, float speed. The runtime applies this session option.
        info["session_config"] = {"session.disable_quant_qdq": "1"}
    tolerance = _quantized_tolerance(graph)
    if tolerance is not None:
        info["tolerance"] = tolerance
    return {"model.onnx": model.SerializeToString()}, info


# onnxruntime's fused int8 kernels (QGemm, QLinearConv) requantize the exact integer sum once where
# the QDQ reference sums dequantized floats: at a rounding tie an activation lands one step away,
# which moves an output by about that step times a weight. Verification allows a few such steps.
QUANT_VERIFY_STEPS = 4.0
QUANT_VERIFY_RTOL = 0.02


def _quantized_tolerance(graph: Graph) -> dict | None:
    """Verification tolerance for a graph with statically quantized activations, else None."""
    scales = [float(np.max(n.inputs[1].const)) for n in graph.nodes
              if n.op == "quantize_linear" and n.inputs[1].is_const]
    if not scales:
        return None
    return {"rtol": QUANT_VERIFY_RTOL, "atol": QUANT_VERIFY_STEPS * max(scales)}


# onnxruntime fuses DequantizeLinear(int4, blocked, axis 0) -> MatMul [-> Add] into MatMulNBits, but
# its earlier MatMulAddFusion turns a MatMul + Add that feeds an activation into a Gemm first, which
# leaves the DequantizeLinear running on every call (measured 1.7x slower than float on the digits
# MLP): that fusion is switched off. Accuracy level 1 keeps MatMulNBits in float32 like the
# reference; level 4, onnxruntime's default, quantizes activations to int8 (0.5% off the reference;
# 0.56x of float at batch 1 on the seed MLP, but 1.8x on digits-MLP-sized layers at batch 64).
INT4_SESSION_CONFIG = {"optimization.disable_specified_optimizers": "MatMulAddFusion",
                       "session.qdq_matmulnbits_accuracy_level": "1"}


def _int4_weights(graph: Graph) -> bool:
    return any(n.op == "dequantize_linear" and n.attrs.get("bits") == 4 for n in graph.nodes)


def _weight_only(graph: Graph) -> bool:
    """Only constant int8 weights dequantized: no quantized activations anywhere."""
    dq = [n for n in graph.nodes if n.op == "dequantize_linear"]
    return bool(dq) and all(n.inputs[0].is_const for n in dq) \
        and not any(n.op in ("quantize_linear", "dynamic_quantize_linear", "matmul_integer") for n in graph.nodes)


def _check_error(ctx: EmitContext, exc: Exception) -> OnnxEmitError:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    match = re.search(r"node name: ([^)\s]+)\)", str(exc))
    node = ctx.node_of.get(match.group(1)) if match else None
    where = f" for {node.describe()}" if node is not None else ""
    return OnnxEmitError(f"the ONNX backend emitted an invalid model{where}: {message}; "
                         "this is a compiler bug, please report it")


__all__ = ["DEFAULT_OPSET", "OnnxEmitError", "emit_onnx", "emit_target", "supported_ops"]
