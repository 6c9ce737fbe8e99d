"""The ONNX emitter: IR ``Graph`` -> ``onnx.ModelProto`` (run by onnxruntime's CPU provider).

This module is the graph-level driver: it runs the emitter of every IR node (the table
``backends.onnx.ops.EMITTERS``, one module per op family), names and types the graph's inputs and
outputs, picks the opset, checks the model, and is the target registry's entry point
(``emit_target``, ``supported_ops``).

Naming: ONNX value names are the IR value names; the ONNX node producing an IR node's output
carries the IR node's name, helper nodes are named after it ("conv_3_Add"). Every value gets
value_info (dtype and shape, symbolic dims as ``dim_param``) and the model passes
``onnx.checker.check_model(full_check=True)`` before it is returned.

Weights: constants of ``EXTERNAL_MIN_BYTES`` or more become ONNX external-data initializers while
the emitters run (no TensorProto copy of their bytes is made). Shape inference and the checker run
on a copy of the model in which each of them is a graph input of the same dtype and dims, so the
checks see every node and type but never the weight bytes (and work above protobuf's 2 GB limit).
``emit_onnx`` then embeds the bytes (a self-contained model); ``emit_target`` instead lays them out
in one ``weights.bin`` payload (each tensor 64-byte aligned, written from the constants' own
arrays) described by ``weights.json``, which the runtime memory-maps from the artifact.

This module imports onnx and numpy only: no torch, no onnxruntime.
"""

from __future__ import annotations

import re

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from backends.onnx.ops import EMITTERS
from backends.onnx.ops.common import CONTRIB, ONNX_DTYPES, STAGE, EmitContext
from compiler.errors import CompileError, UnsupportedOpError
from compiler.ir import DType, Graph
from compiler.weight_table import WEIGHTS_FILE, WeightWriter

# onnx 1.23 defines opset 28 and onnxruntime 1.32 has a CPU kernel for every op at the version
# opset 28 selects (checked against onnxruntime's kernel registry: only the deprecated Scatter
# and Upsample lack one); onnxruntime also loads such models without an "under development"
# warning. Opset 18 is the oldest we emit (reductions take axes as an input from 18 on).
DEFAULT_OPSET = 28
MIN_OPSET = 18


# Constants this big are external data; smaller ones (shapes, axes, scales) stay in the model, where
# shape inference's data propagation can read them.
EXTERNAL_MIN_BYTES = 1024
# Below this many bytes of such constants in all, the model embeds them (external data buys nothing
# there, and tools that take ``model.onnx`` alone keep working); above it, always external data
# (loads faster: measured 1.0 s against 4 s for 200 MB, and the only way past protobuf's 2 GB).
EXTERNAL_DATA_MIN_TOTAL = 1 << 20


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


class _Context(EmitContext):
    """EmitContext whose big constants become external-data placeholders (no copy of their bytes)."""

    def _add_initializer(self, name: str, array: np.ndarray) -> None:
        if array.nbytes < EXTERNAL_MIN_BYTES or array.dtype.kind not in "biuf":
            super()._add_initializer(name, array)
            return
        tensor = TensorProto(name=name, data_type=helper.np_dtype_to_tensor_dtype(array.dtype),
                             dims=[int(d) for d in array.shape], data_location=TensorProto.EXTERNAL)
        self.initializers[name] = tensor
        self.const_arrays[name] = array
        self.value_types[name] = (DType.from_numpy(array.dtype), tuple(int(d) for d in array.shape))


def _external(model: onnx.ModelProto) -> list[TensorProto]:
    return [t for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL]


def emit_onnx(graph: Graph, *, opset: int = DEFAULT_OPSET, standard_only: bool = False,
              producer: str = "aot-compiler") -> onnx.ModelProto:
    """The ONNX model computing ``graph``, weights embedded. With ``standard_only`` only standard
    ONNX ops are used and the model passes ``onnx.checker`` full_check; otherwise onnxruntime's
    contrib kernels (FusedConv, MultiHeadAttention, Attention) are used where they apply, and the
    model passes the checker with shape inference that skips those contrib nodes."""
    model, arrays = _emit(graph, opset, standard_only, producer)
    _embed(model, arrays)
    return model


def _embed(model: onnx.ModelProto, arrays: dict[str, np.ndarray]) -> None:
    """Fill the external-data placeholders in with their bytes."""
    for tensor in _external(model):
        tensor.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(arrays[tensor.name]), tensor.name))


def _emit(graph: Graph, opset: int, standard_only: bool,
          producer: str = "aot-compiler") -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The checked model with its big constants as external-data placeholders, and the arrays
    holding their values by initializer name."""
    max_opset = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= max_opset:
        raise CompileError(f"ONNX opset {opset} is not supported; use an opset from {MIN_OPSET} to {max_opset}")
    opset = _quant_opset(graph, opset)
    ctx = _Context(graph, opset, standard_only)
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
    _drop_unused_initializers(ctx, set(output_names))
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
    checked = _without_weights(model)
    try:
        # onnx has no schemas for contrib ops: strict inference only for standard-only models
        inferred = onnx.shape_inference.infer_shapes(checked, check_type=True, strict_mode=not ctx.uses_contrib,
                                                     data_prop=True)
    except Exception as exc:
        raise _check_error(ctx, exc) from exc
    typed = {vi.name for vi in model.graph.value_info} | io_names
    added = []
    for vi in inferred.graph.value_info:
        if vi.name not in typed:
            added.append(vi)
            typed.add(vi.name)
    for name, (dt, _) in ctx.value_types.items():
        if name not in typed:
            added.append(_value_info(name, dt, None))
    model.graph.value_info.extend(added)
    checked.graph.value_info.extend(added)
    try:
        onnx.checker.check_model(checked, full_check=not ctx.uses_contrib)
    except Exception as exc:
        raise _check_error(ctx, exc) from exc
    return model, {t.name: ctx.const_arrays[t.name] for t in _external(model)}


def _drop_unused_initializers(ctx, keep: set[str]) -> None:
    """Remove the initializers no node reads (intermediates of an emitter, e.g. the reordered
    gate blocks of an RNN bias before their concatenation): onnxruntime prunes them while it
    loads the model, and then refuses the external-data values handed to it under their names."""
    used = set(keep)

    def collect(nodes) -> None:
        for n in nodes:
            used.update(n.input)
            for a in n.attribute:  # subgraphs (If/Loop bodies) read outer names too
                for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    collect(g.node)

    collect(ctx.nodes)
    for name in [n for n in ctx.initializers if n not in used]:
        del ctx.initializers[name]


def _without_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` in which each external-data initializer is a graph input of its dtype
    and dims: what shape inference and the checker need, without the weight bytes (which the
    checker would look for in a file)."""
    checked = onnx.ModelProto()
    checked.CopyFrom(model)  # cheap: the external initializers hold no bytes
    external = _external(checked)
    names = {t.name for t in external}
    kept = [t for t in checked.graph.initializer if t.name not in names]
    del checked.graph.initializer[:]
    checked.graph.initializer.extend(kept)
    checked.graph.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in external)
    return checked


def emit_target(graph: Graph, options: dict) -> tuple[dict[str, bytes], dict]:
    """The registry's entry point: the artifact payload (``model.onnx``) and target info."""
    opset = options.get("opset") or DEFAULT_OPSET
    standard_only = bool(options.get("onnx_standard_only"))
    model, arrays = _emit(graph, opset, standard_only)
    if sum(a.nbytes for a in arrays.values()) >= EXTERNAL_DATA_MIN_TOTAL:
        payload = _external_payload(model, arrays)
    else:
        _embed(model, arrays)
        payload = {}
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
    payload["model.onnx"] = model.SerializeToString()
    return payload, info


def _external_payload(model: onnx.ModelProto, arrays: dict[str, np.ndarray]) -> dict:
    """``weights.bin`` (every external initializer at a TENSOR_ALIGN-aligned offset, written from
    its array) and ``weights.json`` (name -> dtype, shape, offset, length), and the model's
    initializers pointed at their place in ``weights.bin``. Empty for a model without any."""
    writer = WeightWriter()
    for tensor in _external(model):
        offset, length = writer.add(tensor.name, arrays[tensor.name])
        del tensor.external_data[:]
        for key, value in (("location", WEIGHTS_FILE), ("offset", offset), ("length", length)):
            tensor.external_data.add(key=key, value=str(value))
    return writer.payload()


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
