"""``compile()``: model -> one verified artifact file.

Phases: load the model source, ``torch.export`` it, import it into our IR, run the pass
pipeline, emit the target's payload, write the artifact (atomically, to a temporary name), run
it against PyTorch eager on the example inputs and fresh random inputs, and only then move it
into place. A failed verification leaves no artifact behind.
"""

from __future__ import annotations

import functools
import os
import platform
import time
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from compiler import __version__
from compiler.driver.compression import compress
from compiler.driver.options import (PassOptions, PruneOptions, QuantizeOptions, TargetOptions, VerifyOptions,
                                     pass_options, prune_options, quantize_options, reject_moved_keywords,
                                     target_options, verify_options)
from compiler.errors import CompileError, VerificationError
from compiler.ir import Graph
from compiler.driver.progress import Progress
from compiler.driver.report import CompileReport, Verification

DEFAULT_RTOL = 1e-3
DEFAULT_ATOL = 1e-4
RANDOM_VERIFY_CASES = 3


@dataclass
class CompiledArtifact:
    """What ``compile()`` returns: the artifact path, the report and the manifest written."""

    path: str
    report: CompileReport
    manifest: dict[str, Any]
    graph: Graph

    def load(self, threads: int | None = None, trusted_keys=None):
        from compiler.driver.runtime import load

        return load(self.path, threads=threads, trusted_keys=trusted_keys)

    def __repr__(self) -> str:
        return f"CompiledArtifact(path={self.path!r}, target={self.report.target!r})"


def compile(model: Any, example_inputs: Sequence[Any] | None = None, *,  # noqa: A001
            target: str | TargetOptions = "onnx", output: str | os.PathLike | None = None,
            dynamic_batch: bool = False, verify: bool | VerifyOptions = True,
            quantize: str | QuantizeOptions | None = None, prune: float | PruneOptions | None = None,
            passes: str | Sequence[str] | PassOptions | None = None,
            weights: str | None = None, trust_pickle: bool = False, input_shapes: Sequence[str] | None = None,
            dynamic_shapes: Any = None, eval_data: Any = None, progress: bool | Progress = False,
            sign_key: str | os.PathLike | None = None, **moved: Any) -> CompiledArtifact:
    """Compile ``model`` for ``target`` into one artifact file.

    ``model`` is an ``nn.Module`` (then ``example_inputs`` is required unless the module has an
    ``example_inputs()`` method), a ``torch.export.ExportedProgram``, or a path/spec string
    accepted by the CLI (``model.pt2``, a TorchScript file, ``file.py:Factory``, a pickled
    module with ``trust_pickle=True``). The artifact goes to ``output`` (default
    ``<model name>.aot`` in the current directory).

    Settings come grouped (``compiler.driver.options``): ``target`` is a name or the target's
    options (``LlvmOptions(cpu=...)``); ``verify`` True/False or ``VerifyOptions``; ``quantize``
    a mode name or ``QuantizeOptions``; ``prune`` a fraction or ``PruneOptions``; ``passes``
    pass names or ``PassOptions``. ``dynamic_shapes`` makes input axes symbolic with a name and a
    range (``{"input_ids": {1: ("seq", 1, 512)}}``, see ``compiler.driver.dynamic``);
    ``dynamic_batch=True`` is the shorthand for dim 0 of every input. ``eval_data`` (inputs...,
    labels) measures accuracy, size and latency before and after compression. ``sign_key`` (a PEM
    EC private key file; needs the ``sign`` extra) signs the finished artifact, for
    ``load(path, trusted_keys=[...])`` to check.
    """
    reject_moved_keywords(moved)
    if sign_key is not None:  # a bad key is found before the slow work, not after
        from compiler.driver.signing import check_private_key

        check_private_key(sign_key)
    from backends.registry import get_target

    from compiler.driver.compression import CompressionOptions

    prog = progress if isinstance(progress, Progress) else Progress(enabled=bool(progress))
    target_opts = target_options(target)
    target = target_opts.target
    tgt = get_target(target)
    checks = verify_options(verify)
    pass_opts = pass_options(passes)
    compression = CompressionOptions.from_groups(quantize_options(quantize), prune_options(prune))
    compression.check_target(target)
    options = target_opts.to_dict()
    tgt.check_options(options)  # before any slow work
    source = _load_source(model, example_inputs, weights, trust_pickle, input_shapes, prog)
    if dynamic_shapes is not None:
        source.dynamic_dims = tuple(_dynamic_dims(dynamic_shapes, dynamic_batch, target, source))
    output_path = Path(output) if output is not None else Path(f"{source.name}.aot")
    _check_output_dir(output_path)

    graph, exported = _trace(source, dynamic_batch, prog)
    records = _run_passes(graph, pass_opts, source, prog)
    baseline, compression_report = None, None
    if compression.active:
        baseline = graph.copy() if eval_data is not None else None
        with prog.phase("compress", "compressing the graph"):
            example_arrays = [t.detach().cpu().numpy() for t in source.example_inputs]
            compression_report = compress(graph, compression, example_arrays, prog.say)

    with prog.phase("emit", f"emitting {target}"):
        payload, target_info = tgt.emit(graph, options, progress=prog.say if prog.enabled else None)
    rtol, atol = _tolerance(checks.rtol, checks.atol, target_info)

    report = CompileReport(model=source.name, target=target, output=str(output_path), source_kind=source.kind,
                           inputs=_signature(graph.inputs), outputs=_signature(graph.outputs),
                           ops=graph.op_counts(), nodes=len(graph.nodes), parameters=graph.parameter_count(),
                           parameter_bytes=graph.parameter_bytes(), passes=[r.to_dict() for r in records],
                           target_info=target_info, compression=compression_report)
    manifest = _manifest(graph, target, source, records, target_info, dynamic_batch)
    manifest["none_outputs"] = _none_outputs(exported)
    manifest["index_bounds"] = index_bounds(graph)
    manifest["dynamic_dims"] = {d.name: [d.min, d.max] for d in source.dynamic_dims}
    evaluate = None
    if eval_data is not None:
        evaluate = functools.partial(_evaluate, eval_data=eval_data, graph=graph, baseline=baseline, target=tgt,
                                     options=options, source=source, exported=exported, prog=prog)
    _write_verify_and_move(output_path, manifest, payload, report, source, exported, checks.enabled, rtol, atol,
                           dynamic_batch, checks.seed, prog, graph if compression.active else None, evaluate,
                           sign_key)
    return CompiledArtifact(str(output_path), report, manifest, graph)


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float written as a string ("nan", "inf"): JSON has no
    NaN, and a report's error figures are NaN when a model's outputs are."""
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _tolerance(rtol: float | None, atol: float | None, target_info: dict[str, Any]) -> tuple[float, float]:
    """The user's tolerance where given, else the target's own (fixed point), else the defaults."""
    own = target_info.get("tolerance") or {}
    return (rtol if rtol is not None else float(own.get("rtol", DEFAULT_RTOL)),
            atol if atol is not None else float(own.get("atol", DEFAULT_ATOL)))


# -- phases ----------------------------------------------------------------------------------------
def _load_source(model, example_inputs, weights, trust_pickle, input_shapes, prog: Progress):
    import torch

    from compiler.driver import model_loading

    with prog.phase("load", "loading the model"):
        if isinstance(model, (str, os.PathLike)):
            return model_loading.load_model_source(os.fspath(model), weights=weights, trust_pickle=trust_pickle,
                                                   input_shapes=list(input_shapes) if input_shapes else None)
        if isinstance(model, torch.export.ExportedProgram):
            inputs = tuple(example_inputs) if example_inputs is not None else _ep_example_inputs(model)
            return model_loading.ModelSource(name="model", kind="exported_program", module=None,
                                             exported_program=model, example_inputs=inputs,
                                             digest=_ep_sha256(model))
        if isinstance(model, torch.nn.Module):
            if example_inputs is None and input_shapes:
                example_inputs = model_loading.make_inputs([model_loading.parse_input_shape(s) for s in input_shapes])
            if example_inputs is None and hasattr(model, "example_inputs"):
                example_inputs = model.example_inputs()
            if example_inputs is None:
                raise CompileError("compile() needs example_inputs for an nn.Module "
                                   "(a tuple of tensors, e.g. (torch.randn(1, 1000),))")
            if isinstance(example_inputs, torch.Tensor):
                example_inputs = (example_inputs,)
            source = model_loading.source_from_module(model, tuple(example_inputs))
            source.name = type(model).__name__.lower()
            return source
    raise CompileError(f"cannot compile a {type(model).__name__}: pass an nn.Module, an ExportedProgram "
                       "or a model file path")


def _ep_example_inputs(ep) -> tuple:
    if ep.example_inputs is None:
        raise CompileError("the ExportedProgram has no example inputs; pass example_inputs")
    args, _kwargs = ep.example_inputs
    return tuple(args)


def _ep_sha256(ep) -> str:
    import hashlib

    return hashlib.sha256(str(ep.graph).encode()).hexdigest()


def _dynamic_dims(dynamic_shapes, dynamic_batch: bool, target: str, source) -> list:
    from compiler.driver import dynamic

    if dynamic_batch:
        raise CompileError("give either dynamic_batch (--dynamic-batch) or dynamic_shapes (--dynamic), not both: "
                           "add the batch to dynamic_shapes (e.g. input_ids:0=batch)")
    if target == "hls":
        raise CompileError("the hls target needs static shapes (an FPGA design has fixed sizes; --dynamic-batch "
                           "is the one exception); compile for onnx, llvm or cuda, or drop dynamic_shapes")
    module = source.module if source.module is not None else None
    n = len(source.example_inputs)
    names = (dynamic.input_names(module) if module is not None else [])[:n]
    if len(names) != n:  # forward(*args), or an archive: inputs go by position
        names = [f"args_{i}" for i in range(n)]
    return dynamic.resolve(dynamic_shapes, names, [t.dim() for t in source.example_inputs])


def _trace(source, dynamic_batch: bool, prog: Progress):
    """(graph, exported program) for the source; re-exports a static .pt2 when asked for a
    dynamic batch or dynamic dims."""
    from compiler.frontend import import_exported_program

    dims = list(source.dynamic_dims)
    with prog.phase("export", "torch.export"):
        exported = source.exported_program
        if exported is None or dims or (dynamic_batch and not _has_symbolic_batch(exported)):
            module = source.module if source.module is not None else exported.module()
            exported = _export(module, source, dynamic_batch, dims)
    with prog.phase("import", "importing into the IR"):
        graph = import_exported_program(exported, name=_graph_name(source.name),
                                        dim_names={(d.input, d.axis): d.name for d in dims})
    return graph, exported


def _export(module, source, dynamic_batch: bool, dims: list):
    from compiler.driver import dynamic
    from compiler.frontend import export_module

    if not dims:
        return export_module(module, source.example_inputs, dynamic_batch=dynamic_batch)
    try:
        return export_module(module, dynamic.traceable_examples(source.example_inputs, dims),
                             dynamic_shapes=dynamic.torch_dynamic_shapes(dims, len(source.example_inputs)))
    except CompileError as exc:
        raise (dynamic.guard_error(exc.__cause__ or exc, dims) or exc) from None


def _has_symbolic_batch(ep) -> bool:
    import torch

    for node in ep.graph.nodes:
        if node.op == "placeholder":
            val = node.meta.get("val")
            if isinstance(val, torch.Tensor) and val.dim() and isinstance(val.shape[0], torch.SymInt):
                return True
    return False


def _graph_name(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name) or "main"


def _run_passes(graph: Graph, options: PassOptions, source, prog: Progress):
    from passes import PassManager, make_pipeline

    pipeline = make_pipeline(options.pipeline)
    check_inputs = None
    if options.check:
        check_inputs = [t.detach().cpu().numpy() for t in source.example_inputs]
    manager = PassManager(pipeline, verify=True, check_inputs=check_inputs, after_pass=options.after_pass)
    with prog.phase("passes", "optimizing the graph"):
        manager.run(graph)
    graph.name_outputs()  # rewrites may have replaced an output value: keep the stable names
    return manager.records


def _signature(values) -> list[dict[str, Any]]:
    return [{"name": v.name, "dtype": v.dtype.value, "shape": list(v.shape)} for v in values]


def _tool_versions() -> dict[str, str]:
    from importlib import metadata

    versions = {"compiler": __version__, "python": platform.python_version()}
    for package in ("torch", "numpy", "onnx", "onnxruntime"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions


# Ops whose index operands select along an axis of their first input: (op, first index operand
# position, the attribute naming the axes, or the fixed axis).
_INDEXING_OPS = {"gather": (1, "axis"), "gather_elements": (1, "axis"), "index": (1, "axes"),
                 "index_put": (2, "axes"), "embedding_bag": (1, 0)}
# Ops that pass an index through unchanged in value (a reshape of the token ids, a cast).
_VALUE_PRESERVING = ("reshape", "cast", "expand", "transpose")


def index_bounds(graph: Graph) -> dict[str, list[int]]:
    """For each integer model input used (directly, or through reshapes and casts) as an index
    into a static axis: the range its values must lie in, ``[-size, size - 1]``. ``load()``
    checks it before running, so every target refuses an out-of-range index the same way
    (TVM's gathers would clamp it)."""
    bounds: dict[str, list[int]] = {}
    for node in graph.nodes:
        spec = _INDEXING_OPS.get(node.op)
        if spec is None:
            continue
        first, axes = spec
        index_values = node.inputs[first:] if node.op in ("index", "index_put") else node.inputs[first:first + 1]
        axis_list = node.attrs.get(axes) if isinstance(axes, str) else axes
        axis_list = list(axis_list) if isinstance(axis_list, (list, tuple)) else [axis_list] * len(index_values)
        data = node.inputs[0]
        for value, axis in zip(index_values, axis_list):
            source = _input_behind(value)
            size = data.shape[axis % data.type.rank] if source is not None and data.type.rank else None
            if isinstance(size, int):
                lo, hi = bounds.get(source.name, [-size, size - 1])
                bounds[source.name] = [max(lo, -size), min(hi, size - 1)]
    return bounds


def _input_behind(value):
    while value is not None and value.producer is not None and value.producer.op in _VALUE_PRESERVING:
        value = value.producer.inputs[0]
    if value is None or value.producer is not None or value.is_const or value.dtype.is_float:
        return None
    return value


def _none_outputs(exported) -> list[int]:
    """Positions of the model's None outputs, which the artifact does not compute."""
    from compiler.frontend import user_output_positions

    return user_output_positions(exported)[1]


def _manifest(graph: Graph, target: str, source, records, target_info, dynamic_batch: bool) -> dict[str, Any]:
    return {
        "target": target,
        "model_name": source.name,
        "source_kind": source.kind,
        "source_sha256": source.sha256,
        "inputs": _signature(graph.inputs),
        "outputs": _signature(graph.outputs),
        "dynamic_batch": dynamic_batch,
        "passes": [r.name for r in records],
        "tool_versions": _tool_versions(),
        "target_info": target_info,
    }


def _check_output_dir(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise CompileError(f"output directory does not exist: {parent} (create it first or choose another -o path)")
    if path.is_dir():
        raise CompileError(f"output path {path} is a directory; give a file name such as {path / 'model.aot'}")


def _write_verify_and_move(output_path: Path, manifest, payload, report: CompileReport, source, exported,
                           verify: bool, rtol: float, atol: float, dynamic_batch: bool, seed: int,
                           prog: Progress, spec_graph: Graph | None = None, evaluate=None,
                           sign_key: str | os.PathLike | None = None) -> None:
    from compiler.driver.artifact import write_artifact

    fd, tmp_name = tempfile.mkstemp(dir=output_path.parent if str(output_path.parent) else ".",
                                    prefix=f".{output_path.name}.", suffix=".verify")
    os.close(fd)
    try:
        runnable = report.target_info.get("runnable_here", True)
        if verify and not runnable:
            prog.say(f"verification skipped: {report.target_info.get('not_runnable_reason', 'cannot run here')}")
        if runnable and (verify or evaluate is not None):
            _write_and_check(tmp_name, manifest, payload, report, source, exported, verify, rtol, atol,
                             dynamic_batch, seed, prog, spec_graph, evaluate)
            write_final = lambda: write_artifact(tmp_name, manifest, payload, source.known_pieces)  # noqa: E731
        else:
            # Nothing runs the artifact before it is final: written once, not twice (a big model's
            # weights cost seconds per write). The embedded report gives the payload's size.
            report.artifact_bytes = _payload_bytes(payload)
            write_final = lambda: _timed_write(prog, tmp_name, manifest, payload, source)  # noqa: E731
        report.phases = dict(prog.times)
        # The final artifact carries the finished report; rewriting it is cheap next to verification.
        manifest["report"] = json_safe(report.to_dict())
        report.artifact_bytes = write_final()
        report.phases = dict(prog.times)
        if report.verification is not None and not report.verification.passed:
            raise VerificationError(f"verification failed for {source.name} on target {report.target}: "
                                    f"{report.verification.summary()}; no artifact was written "
                                    "(loosen --rtol/--atol if this error is acceptable, or --no-verify)")
        if sign_key is not None:
            from compiler.driver.signing import sign_artifact

            with prog.phase("sign", "signing the artifact"):
                sign_artifact(tmp_name, sign_key, check_hashes=False)  # just written from memory
            report.artifact_bytes = os.path.getsize(tmp_name)
            report.phases = dict(prog.times)
        os.replace(tmp_name, output_path)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)


def _write_and_check(tmp_name: str, manifest, payload, report: CompileReport, source, exported, verify: bool,
                     rtol: float, atol: float, dynamic_batch: bool, seed: int, prog: Progress,
                     spec_graph: Graph | None, evaluate) -> None:
    """Write the artifact without its report, then verify and evaluate that very file."""
    from compiler.driver.artifact import write_artifact

    with prog.phase("write", "writing the artifact"):
        report.artifact_bytes = write_artifact(tmp_name, {**manifest, "report": None}, payload, source.known_pieces)
    if verify:
        with prog.phase("verify", "running the artifact against PyTorch"):
            report.verification = _verify(tmp_name, source, exported, rtol, atol, dynamic_batch, seed,
                                          spec_graph, report.compression)
    if evaluate is not None:
        with prog.phase("evaluate", "measuring accuracy, size and latency before/after"):
            report.evaluation = evaluate(tmp_name)


def _timed_write(prog: Progress, tmp_name: str, manifest, payload, source) -> int:
    from compiler.driver.artifact import write_artifact

    with prog.phase("write", "writing the artifact"):
        return write_artifact(tmp_name, manifest, payload, source.known_pieces)


def _payload_bytes(payload: dict) -> int:
    return sum(data.size if hasattr(data, "parts") else len(data) for data in payload.values())


# -- verification ----------------------------------------------------------------------------------
def _verify(artifact_path: str, source, exported, rtol: float, atol: float, dynamic_batch: bool,
            seed: int, spec_graph: Graph | None = None, compression: dict | None = None) -> Verification:
    """Run the artifact on the example inputs and random inputs against the reference: PyTorch,
    or for a compressed graph our interpreter on that graph (compression changes the numbers on
    purpose; its drift from PyTorch goes into the compression report instead)."""
    import torch

    from compiler.interpreter import run_graph
    from compiler.driver.runtime import load_built

    # Archives have no eager module: their reference is the program we compiled (re-exported with
    # a symbolic batch when asked, so its input guards accept other batch sizes).
    eager = source.kind in ("factory", "pickle", "module") and source.module is not None
    torch_model = source.module if eager else exported.module()
    loaded = load_built(artifact_path)
    cases = [("example inputs", tuple(source.example_inputs))]
    rng = np.random.default_rng(seed)
    dims = list(source.dynamic_dims)
    if dims:
        from compiler.driver.dynamic import verification_sizes

        sizes = verification_sizes(dims, source.example_inputs, RANDOM_VERIFY_CASES)
    for i in range(RANDOM_VERIFY_CASES):
        batch, axis_sizes, label = None, None, f"random inputs #{i + 1}"
        if dynamic_batch:
            first = source.example_inputs[0]
            batch = (first.shape[0] + 2 + i) if first.dim() else None
            label += f" (batch {batch})" if batch else ""
        if dims:
            axis_sizes = {(d.input, d.axis): sizes[i][d.name] for d in dims}
            label += " (" + ", ".join(f"{k} {v}" for k, v in sizes[i].items()) + ")"
        cases.append((label, random_like(source.example_inputs, rng, batch, axis_sizes)))
    worst_abs, worst_rel, worst_case, passed, drift = 0.0, 0.0, "", True, 0.0
    for label, inputs in cases:
        arrays = [t.detach().cpu().numpy() for t in inputs]
        # drift from PyTorch only on the example inputs: random ones may lie far outside calibration
        measure_drift = spec_graph is not None and label == "example inputs"
        from_torch = None
        if spec_graph is None or measure_drift:
            with torch.no_grad():
                # clones: a model that writes into its inputs must not change the artifact's inputs
                from_torch = _flatten_outputs(torch_model(*[t.clone() for t in inputs]))
        expected = from_torch if spec_graph is None else run_graph(spec_graph, arrays)
        got = loaded.run(arrays)
        if len(got) != len(expected):
            raise VerificationError(f"artifact returned {len(got)} outputs, the reference {len(expected)}")
        for want, have in zip(expected, got):
            abs_err, rel_err, ok = compare(want, have, rtol, atol)
            passed &= ok
            if abs_err >= worst_abs:
                worst_case = label
            worst_abs, worst_rel = max(worst_abs, abs_err), max(worst_rel, rel_err)
        if measure_drift:
            drift = max([drift] + [compare(w, h, rtol, atol)[0] for w, h in zip(from_torch, got)])
    if compression is not None:
        compression["max_abs_drift_vs_pytorch"] = drift  # on the example inputs
    reference = "PyTorch" if spec_graph is None else "the interpreter on the compressed graph"
    return Verification(len(cases), worst_abs, worst_rel, rtol, atol, passed, worst_case, reference)


# -- evaluation of compression ---------------------------------------------------------------------
def _evaluate(artifact_path: str, *, eval_data, graph: Graph, baseline: Graph | None, target, options, source,
              exported, prog: Progress) -> dict[str, Any]:
    """Accuracy of the float PyTorch model and of the artifact on labelled data; with
    compression, also the uncompressed artifact's size and latency on the same data."""
    import torch

    from compiler.driver.artifact import write_artifact
    from compiler.driver.compression import load_npz, split_batches
    from compiler.driver.runtime import load_built as load  # artifacts built here: no policy, no warning

    inputs, labels = _eval_arrays(graph, eval_data, load_npz)
    batches = split_batches(graph, inputs)
    n = len(batches) * len(batches[0][0])
    labels = labels[:n]
    eager = source.kind in ("factory", "pickle", "module") and source.module is not None
    torch_model = source.module if eager else exported.module()
    with torch.no_grad():
        torch_logits = [_flatten_outputs(torch_model(*[torch.from_numpy(a) for a in b]))[0] for b in batches]
    result: dict[str, Any] = {"samples": n, "accuracy_pytorch": _accuracy(torch_logits, labels)}
    compressed_seconds, outputs = _timed_run(load(artifact_path), batches)
    result["accuracy_artifact"] = _accuracy(outputs, labels)
    result["seconds_artifact"] = compressed_seconds
    if baseline is not None:
        payload, _info = target.emit(baseline, options)
        fd, tmp = tempfile.mkstemp(suffix=".aot")
        os.close(fd)
        try:
            result["baseline_artifact_bytes"] = write_artifact(tmp, {"target": target.name, "inputs": _signature(
                baseline.inputs), "outputs": _signature(baseline.outputs)}, payload)
            baseline_seconds, baseline_outputs = _timed_run(load(tmp), batches)
        finally:
            os.unlink(tmp)
        result["accuracy_uncompressed"] = _accuracy(baseline_outputs, labels)
        result["seconds_uncompressed"] = baseline_seconds
        result["latency_ratio"] = compressed_seconds / baseline_seconds if baseline_seconds else None
    return result


def _eval_arrays(graph: Graph, eval_data, load_npz) -> tuple[list[np.ndarray], np.ndarray]:
    if isinstance(eval_data, (str, os.PathLike)):
        inputs, labels = load_npz(graph, os.fspath(eval_data), want_labels=True)
        return inputs, labels
    try:
        *inputs, labels = [np.asarray(a.detach().cpu().numpy() if hasattr(a, "detach") else a) for a in eval_data]
    except (TypeError, ValueError):
        raise CompileError("eval_data must be an .npz path or a tuple (inputs..., labels)") from None
    if len(inputs) != len(graph.inputs):
        raise CompileError(f"eval_data must hold {len(graph.inputs)} input array(s) and the labels")
    return inputs, labels


def _timed_run(model, batches) -> tuple[float, list[np.ndarray]]:
    model.run(batches[0])  # warm-up: first runs allocate
    start = time.perf_counter()
    outputs = [model.run(b)[0] for b in batches]
    return time.perf_counter() - start, outputs


def _accuracy(logits: list[np.ndarray], labels: np.ndarray) -> float:
    predicted = np.concatenate([np.asarray(x).reshape(len(x), -1).argmax(axis=1) for x in logits])
    return float((predicted == labels.reshape(-1)[:len(predicted)]).mean())


def _flatten_outputs(outputs: Any) -> list[np.ndarray]:
    import torch

    if isinstance(outputs, torch.Tensor):
        return [outputs.detach().cpu().numpy()]
    if isinstance(outputs, (list, tuple)):
        return [a for o in outputs for a in _flatten_outputs(o)]
    if isinstance(outputs, dict):
        return [a for o in outputs.values() for a in _flatten_outputs(o)]
    if outputs is None:  # the artifact drops None outputs (load() puts them back)
        return []
    raise VerificationError(f"cannot compare a model output of type {type(outputs).__name__}")


def compare(want: np.ndarray, have: np.ndarray, rtol: float, atol: float) -> tuple[float, float, bool]:
    """(max abs error, max relative error, within |have - want| <= atol + rtol * |want|)."""
    if want.shape != have.shape:
        return float("inf"), float("inf"), False
    if want.dtype == np.bool_ or np.issubdtype(want.dtype, np.integer):
        diff = np.abs(want.astype(np.int64) - have.astype(np.int64))
        err = float(diff.max()) if diff.size else 0.0
        return err, err, err == 0
    w, h = want.astype(np.float64), have.astype(np.float64)
    with np.errstate(invalid="ignore"):  # inf - inf: handled as a match below
        diff = np.abs(w - h)
    if not diff.size:
        return 0.0, 0.0, True
    # NaN where PyTorch has NaN is a match; infinities must match exactly (inf - inf is NaN).
    nan_mismatch = np.isnan(w) != np.isnan(h)
    same = (np.isnan(w) & np.isnan(h)) | (np.isinf(w) & (w == h))
    if nan_mismatch.any():
        return float("inf"), float("inf"), False
    diff = np.where(same, 0.0, diff)
    scale = np.where(same, 1.0, np.maximum(np.abs(w), 1e-12))
    abs_err, rel_err = float(np.max(diff)), float(np.max(diff / scale))
    ok = bool(np.all(same | (diff <= atol + rtol * np.abs(w))))
    return abs_err, rel_err, ok


def random_like(examples: Iterable[Any], rng: np.random.Generator, batch: int | None = None,
                axis_sizes: dict[tuple[int, int], int] | None = None) -> tuple:
    """Fresh random tensors with the examples' dtypes and shapes (dim 0 set to ``batch``, the
    (input, axis) of ``axis_sizes`` to their sizes). Integer inputs are drawn from the examples'
    own value range (token ids, class indices)."""
    import torch

    result = []
    for position, t in enumerate(examples):
        shape = list(t.shape)
        if batch is not None and shape:
            shape[0] = batch
        for (which, axis), size in (axis_sizes or {}).items():
            if which == position:
                shape[axis] = size
        if t.dtype == torch.bool:
            arr = rng.random(shape) < 0.5
        elif t.dtype.is_floating_point:
            arr = rng.standard_normal(shape).astype(np.float32)
        else:
            lo, hi = (int(t.min()), int(t.max())) if t.numel() else (0, 1)
            arr = rng.integers(lo, hi + 1, size=shape)
        result.append(torch.from_numpy(np.asarray(arr)).to(t.dtype))
    return tuple(result)
