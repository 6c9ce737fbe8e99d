"""The artifact's weight store, one format for every backend that keeps weights out of its model
file (the ONNX target's external data, the TVM targets' parameters).

``weights.bin`` holds the tensors, each at a ``TENSOR_ALIGN``-aligned offset (the entry itself is
stored page-aligned in the artifact, see ``compiler/payload.py``), and ``weights.json`` describes
them: ``{"file": "weights.bin", "tensors": {id: {"dtype", "shape", "offset", "length"}}}``.
``WeightWriter`` builds the two entries; ``read_table`` checks a table against its entry (so a
damaged or hostile artifact cannot point outside it) and ``blob_array`` maps the entry. The
runtimes use this module: numpy and the standard library only.
"""

from __future__ import annotations

import json

import numpy as np

from compiler.errors import ArtifactError

WEIGHTS_FILE = "weights.bin"
WEIGHTS_TABLE = "weights.json"
TENSOR_ALIGN = 64  # each tensor's offset in weights.bin: a cache line, what SIMD loads like
# The dtype kinds a weight may have: bool, signed and unsigned ints, floats (no objects).
_WEIGHT_KINDS = {"b", "i", "u", "f"}

Table = dict[str, tuple[np.dtype, tuple[int, ...], int, int]]


class WeightWriter:
    """Collects arrays for ``weights.bin`` (little-endian, each at an aligned offset; not copied:
    the artifact writer streams them) and their ``weights.json`` entries."""

    def __init__(self) -> None:
        self.parts: list[tuple[int, np.ndarray]] = []
        self.tensors: dict[str, dict] = {}
        self.end = 0

    def add(self, name: str, array: np.ndarray) -> tuple[int, int]:
        """Store ``array`` as tensor ``name``; returns its (offset, length) in ``weights.bin``."""
        array = np.ascontiguousarray(array)
        if array.dtype.byteorder == ">":
            array = array.astype(array.dtype.newbyteorder("<"))
        offset = -(-self.end // TENSOR_ALIGN) * TENSOR_ALIGN
        length = int(array.nbytes)
        self.parts.append((offset, array.reshape(-1).view(np.uint8)))
        self.tensors[name] = {"dtype": array.dtype.str, "shape": list(array.shape), "offset": offset,
                              "length": length}
        self.end = offset + length
        return offset, length

    def payload(self) -> dict:
        """``{weights.bin: StoredBlob, weights.json: bytes}``, or empty when nothing was added."""
        from compiler.payload import StoredBlob

        if not self.tensors:
            return {}
        table = json.dumps({"file": WEIGHTS_FILE, "tensors": self.tensors}, sort_keys=True).encode()
        return {WEIGHTS_FILE: StoredBlob(self.parts, self.end), WEIGHTS_TABLE: table}


def read_table(payload: dict, artifact: str) -> Table:
    """``weights.json`` checked against the ``weights.bin`` entry: id -> (dtype, shape, offset in
    the entry, length); empty when the payload has no table. ``artifact`` names the artifact kind
    in the errors ("ONNX", "TVM"). Raises ArtifactError for a table whose offsets, lengths, dtypes
    or shapes do not fit the entry."""
    if WEIGHTS_TABLE not in payload:
        return {}
    try:
        table = json.loads(payload[WEIGHTS_TABLE])
        tensors = table["tensors"]
        if table.get("file") != WEIGHTS_FILE or not isinstance(tensors, dict):
            raise ValueError("no tensor table")
    except (ValueError, TypeError, KeyError) as exc:
        raise ArtifactError(f"the {artifact} artifact's {WEIGHTS_TABLE} is malformed ({exc}); recompile it") \
            from None
    if WEIGHTS_FILE not in payload:
        raise ArtifactError(f"the {artifact} artifact has {WEIGHTS_TABLE} but no {WEIGHTS_FILE}; recompile it")
    size = entry_size(payload[WEIGHTS_FILE])
    return {name: _checked_entry(artifact, size, name, item) for name, item in tensors.items()}


def _checked_entry(artifact: str, size: int, name: str, item) -> tuple[np.dtype, tuple[int, ...], int, int]:
    try:
        dtype = np.dtype(item["dtype"])
        shape = tuple(item["shape"])
        offset, length = item["offset"], item["length"]
        valid = (dtype.kind in _WEIGHT_KINDS and dtype.byteorder != ">"
                 and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
                 and all(isinstance(x, int) and not isinstance(x, bool) for x in (offset, length)))
    except (TypeError, KeyError, ValueError):
        valid = False
    if not valid:
        raise ArtifactError(f"the {artifact} artifact's {WEIGHTS_TABLE} has a malformed entry for {name}; recompile it")
    if offset < 0 or length != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize or offset + length > size:
        raise ArtifactError(f"the {artifact} artifact's weight {name} (offset {offset}, {length} bytes) does not fit "
                            f"{WEIGHTS_FILE} ({size} bytes) or its shape; the file is damaged, recompile it")
    return dtype, shape, offset, length


def entry_size(entry) -> int:
    """The size of a payload entry: bytes in memory, or a ``MappedEntry`` left in the file."""
    return len(entry) if isinstance(entry, (bytes, bytearray, memoryview)) else int(entry.size)


def blob_array(entry, writable: bool = False) -> np.ndarray:
    """``weights.bin`` as bytes: a map of the artifact file where the reader left it there (it
    has checked that the entry lies inside the file and hashed it), else the bytes in memory.
    ``writable``: a copy-on-write map (or a copy of in-memory bytes), for consumers that refuse
    read-only memory (TVM's DLPack import); the pages stay shared unless written."""
    if isinstance(entry, (bytes, bytearray, memoryview)):
        return np.frombuffer(bytearray(entry) if writable else entry, dtype=np.uint8)
    if entry.size == 0:
        return np.zeros(0, dtype=np.uint8)
    return np.memmap(entry.path, dtype=np.uint8, mode="c" if writable else "r", offset=entry.offset,
                     shape=(entry.size,))


def tensor_view(blob: np.ndarray, entry: tuple[np.dtype, tuple[int, ...], int, int]) -> np.ndarray:
    """One checked table entry's tensor: a view of ``blob``."""
    dtype, shape, offset, length = entry
    return blob[offset:offset + length].view(dtype).reshape(shape)
