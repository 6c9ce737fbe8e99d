"""Run an ONNX artifact with onnxruntime's CPU provider.

Used where the artifact is loaded, so it imports neither torch nor onnx; onnxruntime itself is
imported when a session is made.

Weights stored as external data (``weights.bin``, described by ``weights.json``) are handed to
onnxruntime as OrtValues viewing a read-only memory map of the artifact file: no second copy on
disk, and no copy in memory beyond what onnxruntime's own optimisations make. Every tensor's
offset and length is checked against the entry before it is mapped.
"""

from __future__ import annotations

from typing import Callable

import json
import tempfile

import numpy as np

from compiler.errors import ArtifactError, InputError

MODEL_FILE = "model.onnx"
WEIGHTS_FILE = "weights.bin"
WEIGHTS_TABLE = "weights.json"


def session_from_model(model_bytes: bytes, threads: int | None = None, config: dict[str, str] | None = None,
                       initializers: dict[str, np.ndarray] | None = None):
    """An ``onnxruntime.InferenceSession`` for serialized model bytes: all graph optimisations,
    ``threads`` intra-op threads (None or 0: onnxruntime's default), one inter-op thread, CPU,
    plus the session config entries the emitter asked for (``target_info["session_config"]``);
    ``initializers`` supply the model's external-data initializers (arrays that must outlive the
    session: onnxruntime uses their memory in place)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if initializers:
        values = [ort.OrtValue.ortvalue_from_numpy(a) for a in initializers.values()]
        options.add_external_initializers(list(initializers), values)
    for key, value in (config or {}).items():
        options.add_session_config_entry(str(key), str(value))
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = int(threads or 0)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: no warnings about merged value_info shapes
    # External data not supplied above is looked up in this empty folder, never in the working
    # directory (onnxruntime's default for a model given as bytes): such a model fails to load.
    with tempfile.TemporaryDirectory(prefix="aot-no-external-data-") as empty:
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", empty)
        return ort.InferenceSession(model_bytes, sess_options=options, providers=["CPUExecutionProvider"])


def load_runner(manifest: dict, payload: dict[str, bytes],
                threads: int | None) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
    """A function running the artifact's ONNX model: inputs in the model's input order, outputs
    as a list in its output order."""
    if MODEL_FILE not in payload:
        raise ArtifactError(f"the ONNX artifact has no {MODEL_FILE}")
    try:
        config = (manifest.get("target_info") or {}).get("session_config") or {}
        weights = external_weights(payload)
        session = session_from_model(payload[MODEL_FILE], threads, config, weights)
        _release_mapped_pages(weights)
    except ImportError as exc:
        raise ArtifactError("running an ONNX artifact needs onnxruntime (pip install onnxruntime)") from exc
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise ArtifactError(f"onnxruntime cannot load {MODEL_FILE}: {exc}") from exc
    input_names = [i.name for i in session.get_inputs()]
    output_names = [o.name for o in session.get_outputs()]
    from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

    call = _session_call(session, output_names)

    def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
        if len(inputs) != len(input_names):
            raise InputError(f"the model takes {len(input_names)} inputs ({', '.join(input_names)}), "
                             f"got {len(inputs)}")
        feeds = dict(zip(input_names, inputs))  # numpy arrays; onnxruntime copies non-contiguous ones
        try:
            return list(call(feeds))
        except InvalidArgument as exc:
            raise InputError(f"onnxruntime rejected the inputs: {exc}") from exc

    run.session = session  # type: ignore[attr-defined]  # for benchmarks and tests
    run.weights = weights  # type: ignore[attr-defined]  # the mapped arrays live as long as the session
    return run


def external_weights(payload: dict) -> dict[str, np.ndarray]:
    """The external initializers named in ``weights.json``: read-only views of ``weights.bin``
    (memory-mapped when the artifact reader left it in the file). Raises ArtifactError for a table
    whose offsets, lengths, dtypes or shapes do not fit the entry."""
    if WEIGHTS_TABLE not in payload:
        return {}
    try:
        table = json.loads(payload[WEIGHTS_TABLE])
        tensors = table["tensors"]
        if table.get("file") != WEIGHTS_FILE or not isinstance(tensors, dict):
            raise ValueError("no tensor table")
    except (ValueError, TypeError, KeyError) as exc:
        raise ArtifactError(f"the ONNX artifact's {WEIGHTS_TABLE} is malformed ({exc}); recompile it") from exc
    if WEIGHTS_FILE not in payload:
        raise ArtifactError(f"the ONNX artifact has {WEIGHTS_TABLE} but no {WEIGHTS_FILE}; recompile it")
    blob = _blob_array(payload[WEIGHTS_FILE])
    return {name: _tensor_view(blob, name, entry) for name, entry in tensors.items()}


def _release_mapped_pages(weights: dict[str, np.ndarray]) -> None:
    """onnxruntime 1.32 copies every external initializer into its own buffers while the session
    is made (measured: the process grows by the weights' size even for arrays it could use in
    place), so the mapped pages it read are dropped again: the process then holds the weights once,
    not twice. Safe either way: a read-only file mapping refaults a dropped page from the file."""
    import mmap

    bases = {id(a.base): a.base for a in weights.values() if isinstance(a.base, np.memmap)}
    for base in bases.values():
        handle = getattr(base, "_mmap", None)
        if handle is not None and hasattr(handle, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            handle.madvise(mmap.MADV_DONTNEED)


def _blob_array(entry) -> np.ndarray:
    if isinstance(entry, (bytes, bytearray, memoryview)):
        return np.frombuffer(entry, dtype=np.uint8)
    if entry.size == 0:
        return np.zeros(0, dtype=np.uint8)
    # read_artifact has checked that the entry lies inside the file and hashed it
    return np.memmap(entry.path, dtype=np.uint8, mode="r", offset=entry.offset, shape=(entry.size,))


_WEIGHT_DTYPES = {"b", "i", "u", "f"}


def _tensor_view(blob: np.ndarray, name: str, entry) -> np.ndarray:
    try:
        dtype = np.dtype(entry["dtype"])
        shape = tuple(entry["shape"])
        offset, length = entry["offset"], entry["length"]
        valid = (dtype.kind in _WEIGHT_DTYPES and dtype.byteorder != ">"
                 and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
                 and all(isinstance(x, int) and not isinstance(x, bool) for x in (offset, length)))
    except (TypeError, KeyError, ValueError):
        valid = False
    if not valid:
        raise ArtifactError(f"the ONNX artifact's {WEIGHTS_TABLE} has a malformed entry for {name}; recompile it")
    if offset < 0 or length != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize or offset + length > blob.size:
        raise ArtifactError(f"the ONNX artifact's weight {name} (offset {offset}, {length} bytes) does not fit "
                            f"{WEIGHTS_FILE} ({blob.size} bytes) or its shape; the file is damaged, recompile it")
    return blob[offset:offset + length].view(dtype).reshape(shape)


def _session_call(session, output_names: list[str]) -> Callable[[dict], list]:
    """``feeds -> outputs``. InferenceSession.run re-validates the input names in Python and wraps
    the call in a provider-fallback handler (CPU has no fallback) before calling the native
    session; load() has already checked the inputs, so we call the native session directly,
    which saves about 3 us per call (a tenth of a batch-1 LeNet). Falls back to the public run()
    if a future onnxruntime renames its internals."""
    native = getattr(session, "_sess", None)
    if native is None or not callable(getattr(native, "run", None)):
        return lambda feeds: session.run(output_names, feeds)
    import onnxruntime as ort

    options = ort.RunOptions()
    return lambda feeds: native.run(output_names, feeds, options)


__all__ = ["external_weights", "load_runner", "session_from_model"]
