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
        """Store ``array`` as tensor ``name``; returns its (offset, length) in ``weights.bin``. An
        array memory-mapped from a file (``np.load(..., mmap_mode="r")``) is read from the file
        when written, never through its mapping; a view in another layout (a transposed weight)
        is laid out in C order block by block as it is written, never as a whole copy. ``array``
        may also be an object that makes its C-order bytes on demand (``dtype``, ``shape``,
        ``nbytes`` and ``chunks(start, end)``, little-endian): a packed weight made while written."""
        if not isinstance(array, np.ndarray) and hasattr(array, "chunks"):
            source = array
        else:
            source = _mapped_file_range(array)
            array = np.asarray(array)
        if source is not array and array.dtype.byteorder == ">":
            source, array = None, array.astype(array.dtype.newbyteorder("<"))
        if source is None:
            source = array.reshape(-1).view(np.uint8) if array.flags.c_contiguous else _COrderBytes(array)
        offset = -(-self.end // TENSOR_ALIGN) * TENSOR_ALIGN
        length = int(array.nbytes)
        self.parts.append((offset, source))
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


class _COrderBytes:
    """A StoredBlob part: the C-order bytes of an array in any layout, made a block of rows (along
    axis 0) at a time when they are hashed or written."""

    _BLOCK = 4 << 20  # bytes per block of rows

    def __init__(self, array: np.ndarray):
        self.array, self.nbytes = array, int(array.nbytes)
        self.row_bytes = self.nbytes // array.shape[0] if array.ndim and array.shape[0] else self.nbytes

    def chunks(self, start: int, end: int):
        if self.array.ndim == 0 or not self.row_bytes:
            yield np.ascontiguousarray(self.array).reshape(-1).view(np.uint8)[start:end]
            return
        rows = max(1, self._BLOCK // self.row_bytes)
        row = start // self.row_bytes
        while row * self.row_bytes < end:
            block = np.ascontiguousarray(self.array[row:row + rows]).reshape(-1).view(np.uint8)
            base = row * self.row_bytes
            yield block[max(start - base, 0):min(end - base, block.nbytes)]
            row += rows


def _mapped_file_range(array: np.ndarray):
    """A FileRange over the bytes ``array`` maps, when it is a whole C-ordered np.memmap of a file
    (not a view into one: its ``offset`` would not be the view's); else None."""
    import mmap

    from compiler.payload import FileRange

    if (isinstance(array, np.memmap) and isinstance(array.base, mmap.mmap) and array.filename
            and array.flags.c_contiguous):
        return FileRange(array.filename, array.offset, array.nbytes)
    return None


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
