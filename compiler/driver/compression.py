"""Compression inside ``compile()``: pruning, weight sharing and quantization, in that order.

They run after the optimisation pipeline (batch norm is folded and activations are fused by
then, so pruning sees the real layers) and only dead-code elimination runs after them: constant
folding would turn a dequantized or codebook weight back into a float constant.

Order matters: channels are removed first (quantization scales then describe the weights that
remain), then weights are clustered, then quantized. Each step returns a report dict; together
they become the ``compression`` section of the compile report.

Calibration and evaluation data arrive as an iterable of input tuples (numpy arrays or torch
tensors), or an ``.npz`` file whose arrays are the model inputs with samples along dim 0 (keyed
by input name or ``arr_0``, ``arr_1``...; for evaluation the labels are ``labels`` or ``y``).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from compiler.errors import CompileError
from compiler.ir import Graph
from passes.quantize import INT4_BLOCK_SIZE

# Targets whose backends run int4-weight graphs (blocked dequantize_linear with bits=4).
INT4_TARGETS = ("onnx", "llvm", "cuda")
RANDOM_CALIBRATION_BATCHES = 8
NPZ_BATCH = 64  # samples per calibration batch when the batch dim is symbolic
LABEL_KEYS = ("labels", "y", "label", "target")


@dataclass
class CompressionOptions:
    """What ``compile(quantize=..., prune=...)`` asks for, flattened for the compression steps;
    users spell it as ``QuantizeOptions`` and ``PruneOptions`` (``compiler.driver.options``),
    which validate each field."""

    quantize: str | None = None
    calibration: Any = None  # iterable of input tuples, an .npz path, or "random"
    calibrator: str = "minmax"
    per_channel: bool = True
    quantize_skip: tuple[str, ...] = ()
    int4_block_size: int = INT4_BLOCK_SIZE  # int4-weight: rows of K per weight scale
    prune: float | None = None
    prune_structure: str = "unstructured"
    prune_scope: str = "global"
    prune_multiple_of: int = 16
    weight_sharing_bits: int | None = None
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_groups(cls, quantize=None, prune=None) -> "CompressionOptions":
        """From a ``QuantizeOptions`` and a ``PruneOptions`` (either may be None)."""
        options = cls()
        if quantize is not None:
            options = cls(quantize=quantize.mode, calibration=quantize.calibration, calibrator=quantize.calibrator,
                          per_channel=quantize.per_channel, quantize_skip=tuple(quantize.skip),
                          int4_block_size=quantize.int4_block_size)
        if prune is not None:
            options.prune, options.prune_structure, options.prune_scope = prune.amount, prune.structure, prune.scope
            options.prune_multiple_of, options.weight_sharing_bits = prune.multiple_of, prune.sharing_bits
        options.check()
        return options

    @property
    def active(self) -> bool:
        return bool(self.quantize or self.prune or self.weight_sharing_bits)

    def check(self) -> None:
        """Reject bad values before any slow work starts: each group validates its own fields,
        this checks how they combine."""
        from compiler.driver.options import PruneOptions, QuantizeOptions

        QuantizeOptions(mode=self.quantize, calibration=self.calibration, calibrator=self.calibrator,
                        skip=self.quantize_skip, per_channel=self.per_channel, int4_block_size=self.int4_block_size)
        PruneOptions(amount=self.prune, structure=self.prune_structure, scope=self.prune_scope,
                     multiple_of=self.prune_multiple_of, sharing_bits=self.weight_sharing_bits)
        if self.weight_sharing_bits and self.quantize:
            raise CompileError("weight sharing and quantization cannot be combined yet: the codebook already "
                               "stores weights in fewer bits; choose one")

    def check_target(self, target: str) -> None:
        """Reject a compression the target's backend cannot run, before any slow work."""
        if self.quantize == "int4-weight" and target not in INT4_TARGETS:
            raise CompileError(f"--quantize int4-weight does not run on target '{target}' (its backend has no "
                               f"blocked int4 dequantization); targets that run it: {', '.join(INT4_TARGETS)}. "
                               "For this target use --quantize int8 or int8-weight")


def compress(graph: Graph, options: CompressionOptions, example_inputs: Sequence[np.ndarray],
             say=lambda message: None) -> dict[str, Any]:
    """Apply the requested compression to ``graph`` in place; return the report section."""
    report: dict[str, Any] = {"parameters_before": graph.parameter_count(),
                              "parameter_bytes_before": graph.parameter_bytes()}
    from passes.fuse_attention import unpack_qkv_attention

    unpack_qkv_attention(graph)  # packed q/k/v projections are linear layers to compress
    if options.prune:
        report["pruning"] = _with_summary(_prune(graph, options, say), _pruning_summary)
    if options.weight_sharing_bits:
        from passes.share_weights import share_weights

        say(f"weight sharing: {options.weight_sharing_bits}-bit codebooks")
        shared = share_weights(graph, int(options.weight_sharing_bits))
        report["weight_sharing"] = _with_summary(
            shared, lambda r: f"{options.weight_sharing_bits}-bit codebooks on {len(r.get('layers', []))} layers")
    if options.quantize:
        report["quantization"] = _with_summary(_quantize(graph, options, example_inputs, say), _quantization_summary)
    from passes import EliminateDeadCode

    EliminateDeadCode().run(graph)
    graph.remove_unused_constants()
    graph.verify()
    report["parameters_after"] = graph.parameter_count()
    report["parameter_bytes_after"] = stored_parameter_bytes(graph)
    if options.notes:
        report["notes"] = list(options.notes)
    return report


def stored_parameter_bytes(graph: Graph) -> int:
    """Parameter bytes as the artifact stores them: int4 values (``bits=4`` dequantize inputs,
    held in int8 in the IR) take half a byte each."""
    packed = {}
    for node in graph.nodes:
        if node.op == "dequantize_linear" and node.attrs.get("bits") == 4:
            for v in (node.inputs[0], node.inputs[2] if len(node.inputs) > 2 else None):
                if v is not None and v.is_const:
                    packed[id(v)] = v.const.size
    return graph.parameter_bytes() - sum(size - (size + 1) // 2 for size in packed.values())


def _with_summary(report: dict[str, Any], summarize) -> dict[str, Any]:
    report.setdefault("summary", summarize(report))
    return report


def _pruning_summary(r: dict[str, Any]) -> str:
    if r.get("structure") == "channel":
        return (f"{len(r['groups'])} layer group(s) pruned by channel, {len(r['skipped'])} skipped; parameters "
                f"{r['parameters_before']:,} -> {r['parameters_after']:,}")
    return f"{r['sparsity']:.0%} of {r['prunable_parameters']:,} weights are zero ({r['scope']} threshold)"


def _quantization_summary(r: dict[str, Any]) -> str:
    weights = ("per-channel" if r.get("per_channel") else "per-tensor") + " weights"
    if r.get("block_size"):
        weights = f"int4 weights, one scale per {r['block_size']} rows of K per output"
    return (f"{r['mode']}: {len(r.get('quantized', []))} layer(s) quantized ({weights}), "
            f"{len(r.get('skipped', []))} kept in float")


def _prune(graph: Graph, options: CompressionOptions, say) -> dict[str, Any]:
    amount = float(options.prune)
    if options.prune_structure == "channel":
        from passes.prune_channels import prune_channels

        say(f"pruning {amount:.0%} of channels by L1 norm (multiples of {options.prune_multiple_of})")
        return prune_channels(graph, amount, multiple_of=options.prune_multiple_of)
    from passes.prune_magnitude import prune_magnitude

    say(f"pruning {amount:.0%} of weights by magnitude ({options.prune_scope})")
    return prune_magnitude(graph, amount, scope=options.prune_scope)


def _quantize(graph: Graph, options: CompressionOptions, example_inputs, say) -> dict[str, Any]:
    from passes.quantize import quantize_graph

    calibration = None
    if options.quantize == "int8":
        calibration = calibration_batches(graph, options.calibration, example_inputs, options.notes)
        say(f"calibrating on {len(calibration)} batches ({options.calibrator})")
    return quantize_graph(graph, options.quantize, calibration, skip=tuple(options.quantize_skip),
                          calibrator=options.calibrator, per_channel=options.per_channel,
                          block_size=options.int4_block_size)


# -- data ------------------------------------------------------------------------------------------
def calibration_batches(graph: Graph, data: Any, example_inputs: Sequence[np.ndarray],
                        notes: list[str] | None = None) -> list[list[np.ndarray]]:
    """Calibration input lists for ``graph`` from an iterable of tuples, an .npz path, or "random"."""
    if isinstance(data, str) and data == "random":
        message = ("calibrating on random inputs: quantization ranges will not match real data "
                   "(use this for testing only)")
        warnings.warn(message, stacklevel=3)
        if notes is not None:
            notes.append(message)
        rng = np.random.default_rng(0)
        return [[_random_like(a, rng) for a in example_inputs] for _ in range(RANDOM_CALIBRATION_BATCHES)]
    if isinstance(data, (str, os.PathLike)):
        arrays, _labels = load_npz(graph, os.fspath(data), want_labels=False)
        return split_batches(graph, arrays)
    batches = [_as_arrays(item, len(graph.inputs)) for item in _iterate(data, "calibration_data")]
    if not batches:
        raise CompileError("calibration_data is empty: give at least one input tuple")
    return batches


def load_npz(graph: Graph, path: str, want_labels: bool) -> tuple[list[np.ndarray], np.ndarray | None]:
    """The model inputs (and labels) stored in an .npz file; see the module docstring."""
    if not os.path.isfile(path):
        raise CompileError(f"data file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            stored = {k: npz[k] for k in npz.files}
    except Exception as exc:  # numpy raises several types for non-npz bytes
        raise CompileError(f"cannot read {path} as an .npz file: {exc}") from exc
    labels = None
    if want_labels:
        key = next((k for k in LABEL_KEYS if k in stored), None)
        if key is None:
            raise CompileError(f"{path} has no labels: store them as 'labels' (or 'y') next to the inputs")
        labels = stored.pop(key)
    arrays = []
    for i, value in enumerate(graph.inputs):
        for key in (value.name, f"arr_{i}", f"x{i}" if i else "x"):
            if key in stored:
                arrays.append(stored[key])
                break
        else:
            raise CompileError(f"{path} has no array for input '{value.name}' (keys: {', '.join(stored)}); "
                               f"store it as '{value.name}' or 'arr_{i}'")
    counts = {a.shape[0] if a.ndim else 0 for a in arrays}
    if len(counts) != 1 or 0 in counts:
        raise CompileError(f"the arrays in {path} must all have the same number of samples along dim 0")
    for value, array in zip(graph.inputs, arrays):
        if array.dtype != value.dtype.numpy:
            raise CompileError(f"{path}: input '{value.name}' has dtype {array.dtype}, the model takes "
                               f"{value.dtype.value}")
    return arrays, labels


def split_batches(graph: Graph, arrays: list[np.ndarray]) -> list[list[np.ndarray]]:
    """``arrays`` (samples along dim 0) cut into batches the graph accepts: its static batch
    size, or ``NPZ_BATCH`` samples when dim 0 is symbolic."""
    batch = graph.inputs[0].shape[0] if graph.inputs and graph.inputs[0].shape else None
    size = batch if isinstance(batch, int) else NPZ_BATCH
    total = arrays[0].shape[0]
    if total < size:
        raise CompileError(f"the model takes batches of {size} samples but the data has only {total}")
    return [[a[start:start + size] for a in arrays] for start in range(0, total - size + 1, size)]


def _iterate(data: Any, what: str) -> Iterable:
    try:
        return list(data)
    except TypeError:
        raise CompileError(f"{what} must be an iterable of input tuples, an .npz path or 'random'") from None


def _as_arrays(item: Any, n_inputs: int) -> list[np.ndarray]:
    items = item if isinstance(item, (list, tuple)) else (item,)
    if len(items) != n_inputs:
        raise CompileError(f"each calibration item must hold {n_inputs} input(s), got {len(items)}")
    return [_to_numpy(a) for a in items]


def _to_numpy(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):  # a torch tensor, without importing torch here
        a = a.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(a))


def _random_like(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if np.issubdtype(a.dtype, np.floating):
        return rng.standard_normal(a.shape).astype(a.dtype)
    if a.dtype == np.bool_:
        return rng.random(a.shape) < 0.5
    lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 1)
    return rng.integers(lo, hi + 1, size=a.shape).astype(a.dtype)


__all__ = ["CompressionOptions", "INT4_TARGETS", "calibration_batches", "compress",
           "load_npz", "split_batches", "stored_parameter_bytes"]
