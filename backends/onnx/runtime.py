"""Run an ONNX artifact with onnxruntime's CPU provider.

Used where the artifact is loaded, so it imports neither torch nor onnx; onnxruntime itself is
imported when a session is made.

Weights stored as external data (``weights.bin``, described by ``weights.json``) are read by
onnxruntime straight from the artifact file: the model's external-data entries are rewritten (at
the protobuf wire level, no onnx import) to name the artifact and each tensor's place in it, after
every offset, length, dtype and shape has been checked against the entry and the table.
onnxruntime maps such data read-only and uses it in place (or packs it and drops the mapping), where
OrtValues handed over with ``add_external_initializers`` are copied: load peaks at about 1x the
weights instead of 2.3x (README, "Mapped at load"). An entry the artifact reader left in memory
(a deflated ``weights.bin``) is handed over as OrtValues, as before.
"""

from __future__ import annotations

from typing import Callable

import os
import tempfile

import numpy as np

from compiler.errors import ArtifactError, InputError
from compiler.weight_table import WEIGHTS_FILE, WEIGHTS_TABLE, blob_array, read_table, tensor_view

MODEL_FILE = "model.onnx"


def session_from_model(model_bytes: bytes, threads: int | None = None, config: dict[str, str] | None = None,
                       initializers: dict[str, np.ndarray] | None = None, data_folder: str | None = None):
    """An ``onnxruntime.InferenceSession`` for serialized model bytes: all graph optimisations,
    ``threads`` intra-op threads (None or 0: onnxruntime's default), one inter-op thread, CPU,
    plus the session config entries the emitter asked for (``target_info["session_config"]``);
    ``initializers`` supply the model's external-data initializers (onnxruntime copies them);
    ``data_folder`` is where external data is read from (only for a model whose external-data
    entries have all been checked, see ``point_at_artifact``; otherwise an empty folder)."""
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
    if data_folder is not None:
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", data_folder)
        return ort.InferenceSession(model_bytes, sess_options=options, providers=["CPUExecutionProvider"])
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
        entry = payload.get(WEIGHTS_FILE)
        if WEIGHTS_TABLE in payload and _in_file(entry):
            model_bytes, folder = point_at_artifact(payload[MODEL_FILE], weight_table(payload), entry)
            session = session_from_model(model_bytes, threads, config, data_folder=folder)
        else:
            session = session_from_model(payload[MODEL_FILE], threads, config, external_weights(payload))
    except ArtifactError:
        raise
    except ImportError as exc:
        raise ArtifactError("running an ONNX artifact needs onnxruntime (pip install onnxruntime)") from exc
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise ArtifactError(f"onnxruntime cannot load {MODEL_FILE}: {exc}") from exc
    input_names = [i.name for i in session.get_inputs()]
    output_names = [o.name for o in session.get_outputs()]
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument

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
        except Fail as exc:  # GatherElements/ScatterElements report a bad index as a failure
            if "out of range" not in str(exc).lower():
                raise
            raise InputError(f"an index computed inside the model is out of range: {exc}") from exc

    run.session = session  # type: ignore[attr-defined]  # for benchmarks and tests
    return run


def external_weights(payload: dict) -> dict[str, np.ndarray]:
    """The external initializers named in ``weights.json``: read-only views of ``weights.bin``
    (memory-mapped when the artifact reader left it in the file). Raises ArtifactError for a table
    whose offsets, lengths, dtypes or shapes do not fit the entry."""
    table = weight_table(payload)
    if not table:
        return {}
    blob = blob_array(payload[WEIGHTS_FILE])
    return {name: tensor_view(blob, entry) for name, entry in table.items()}


def weight_table(payload: dict) -> dict[str, tuple[np.dtype, tuple[int, ...], int, int]]:
    """``weights.json`` checked against the ``weights.bin`` entry (``compiler.weight_table``):
    name -> (dtype, shape, offset in the entry, length)."""
    return read_table(payload, "ONNX")


def _in_file(entry) -> bool:
    """Whether the artifact reader left ``weights.bin`` in the file (stored and hashed), where
    onnxruntime can read it in place."""
    return entry is not None and not isinstance(entry, (bytes, bytearray, memoryview)) and entry.size > 0


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


# -- pointing the model's external data at the artifact file -----------------------------------------
# The runtime imports no onnx, so the model is read and rewritten at the protobuf wire level, and
# only where tensors can be: these are the ONNX message fields (onnx.proto) that hold messages
# which may hold a TensorProto, by message kind.
_SUBMESSAGES = {
    "model": {7: "main_graph", 20: "training", 25: "function"},
    "main_graph": {1: "node", 5: "tensor", 15: "sparse"},
    "training": {1: "graph", 2: "graph"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute"},
    "function": {7: "node", 11: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
    "tensor": {},
}
_MODEL_GRAPH, _GRAPH_INITIALIZER = 7, 5
_TENSOR_DIMS, _TENSOR_DTYPE, _TENSOR_NAME, _TENSOR_EXTERNAL, _TENSOR_LOCATION = 1, 2, 8, 13, 14
_EXTERNAL = 1  # TensorProto.EXTERNAL
# TensorProto.DataType -> numpy dtype, for the dtypes weights.json can name
_ONNX_DTYPES = {1: "f4", 2: "u1", 3: "i1", 4: "u2", 5: "i2", 6: "i4", 7: "i8", 9: "b1", 10: "f2", 11: "f8",
                12: "u4", 13: "u8"}


def point_at_artifact(model_bytes: bytes, table: dict, entry) -> tuple[bytes, str]:
    """``model_bytes`` with each external-data initializer of the main graph pointed at its bytes
    in the artifact file (``entry``: the stored ``weights.bin``; ``table``: ``weight_table``), and
    the folder holding the artifact, for onnxruntime to read them from. Raises ArtifactError for an
    external initializer that is not in the table or whose dtype or shape differ from it, and for
    external data anywhere else in the model: onnxruntime reads nothing but the checked ranges of
    the artifact."""
    path = os.path.realpath(entry.path)  # onnxruntime refuses a link that leads out of the folder
    folder, location = os.path.dirname(path), os.path.basename(path)
    try:
        return bytes(_rewrite(memoryview(model_bytes), "model", table, entry.offset, location)), folder
    except (ValueError, IndexError, RecursionError) as exc:
        raise ArtifactError(f"the ONNX artifact's {MODEL_FILE} cannot be parsed ({exc}); recompile it") from exc


def _rewrite(buf: memoryview, kind: str, table: dict, base: int, location: str) -> bytearray:
    """Message ``buf`` of ``kind`` re-encoded with the main graph's external initializers
    rewritten (``kind`` "model" at the top) and every other tensor checked for external data."""
    out = bytearray()
    children = _SUBMESSAGES[kind]
    for number, wire, value, raw in _fields(buf):
        child = children.get(number) if wire == 2 else None
        if child is None:
            out += raw
        elif kind == "model" and number == _MODEL_GRAPH:
            out += _field(number, _rewrite(value, "main_graph", table, base, location))
        elif kind == "main_graph" and number == _GRAPH_INITIALIZER:
            out += _field(number, _point_tensor(value, table, base, location))
        else:
            _check_internal(value, child)
            out += raw
    return out



def _check_internal(buf: memoryview, kind: str) -> None:
    """ArtifactError if message ``buf`` of ``kind`` holds a tensor with external data."""
    if kind == "tensor":
        fields = list(_fields(buf))
        if _is_external(fields):
            raise ArtifactError(f"onnxruntime cannot load {MODEL_FILE}: tensor {_name(fields)!r} has external data "
                                f"outside the graph's initializers; recompile it")
        return
    children = _SUBMESSAGES[kind]
    for number, wire, value, _ in _fields(buf):
        if wire == 2 and number in children:
            _check_internal(value, children[number])


def _point_tensor(buf: memoryview, table: dict, base: int, location: str) -> bytes:
    fields = list(_fields(buf))
    if not _is_external(fields):
        return bytes(buf)
    name = _name(fields)
    if name not in table:
        raise ArtifactError(f"onnxruntime cannot load {MODEL_FILE}: its external initializer {name!r} is not in "
                            f"{WEIGHTS_TABLE}; recompile it")
    dtype, shape, offset, length = table[name]
    dims = []
    for number, wire, value, _ in fields:
        if number == _TENSOR_DIMS:  # repeated int64: one varint each, or packed
            dims += [value] if wire == 0 else _packed(value)
    data_type = next((value for number, wire, value, _ in fields if number == _TENSOR_DTYPE and wire == 0), 0)
    if tuple(dims) != tuple(shape) or _ONNX_DTYPES.get(data_type) != np.dtype(dtype).str[1:]:
        raise ArtifactError(f"the ONNX artifact's weight {name} is {dtype} {list(shape)} in {WEIGHTS_TABLE} but "
                            f"not in {MODEL_FILE}; the file is damaged, recompile it")
    out = bytearray()
    for number, _, _, raw in fields:
        if number not in (_TENSOR_EXTERNAL, _TENSOR_LOCATION):
            out += raw
    for key, value in (("location", location), ("offset", base + offset), ("length", length)):
        out += _field(_TENSOR_EXTERNAL, _field(1, key.encode()) + _field(2, str(value).encode()))
    out += _key(_TENSOR_LOCATION, 0) + _encode_varint(_EXTERNAL)
    return bytes(out)


def _is_external(fields: list) -> bool:
    return any(number == _TENSOR_EXTERNAL or (number == _TENSOR_LOCATION and wire == 0 and value == _EXTERNAL)
               for number, wire, value, _ in fields)


def _name(fields: list) -> str:
    return next((bytes(value).decode("utf-8", "replace") for number, wire, value, _ in fields
                 if number == _TENSOR_NAME and wire == 2), "")


def _fields(buf: memoryview):
    """(field number, wire type, value, the field's bytes) for each field of a message: the value
    is an int for varint and fixed-width fields, a memoryview for length-delimited ones."""
    pos, end = 0, len(buf)
    while pos < end:
        start = pos
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            value, pos = int.from_bytes(buf[pos:pos + width], "little"), pos + width
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + length], pos + length
        else:
            raise ValueError(f"unexpected wire type {wire}")
        if pos > end or number == 0:
            raise ValueError("truncated message")
        yield number, wire, value, buf[start:pos]


def _varint(buf, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _packed(buf: memoryview) -> list[int]:
    values, pos = [], 0
    while pos < len(buf):
        value, pos = _varint(buf, pos)
        values.append(value)
    return values


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(number: int, wire: int) -> bytes:
    return _encode_varint(number << 3 | wire)


def _field(number: int, payload) -> bytes:
    return _key(number, 2) + _encode_varint(len(payload)) + bytes(payload)


__all__ = ["external_weights", "load_runner", "point_at_artifact", "session_from_model", "weight_table"]
