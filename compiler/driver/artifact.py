"""The one-file artifact: a zip archive holding ``manifest.json`` plus payload files.

``write_artifact`` adds the format name and version and each payload file's sha256 and size to the
manifest, stores the manifest's own sha256 in the zip comment, and writes the archive to a
temporary file in the destination directory that is renamed into place, so a failed or
interrupted write never leaves a half-written artifact (and never touches an existing file).
Nothing is fsynced, as compilers and torch.save/onnx.save do not: after a power loss a file that
had not reached the disk yet fails load()'s sha256 check and is compiled again, and waiting for
the disk cost ~1 s per 2 GB here, far more on network volumes.

``read_artifact`` re-hashes the manifest and every payload file and refuses a missing, truncated,
tampered or unknown-format file with an ``ArtifactError`` whose one-line message says what to do.
The entries are written with a fixed timestamp, so the same manifest and payload give the same
bytes.

Payload files that do not compress (float weights) are stored, not deflated: deflating hundreds of
MB of weights costs seconds and saves a few percent. A ``StoredBlob`` payload (the weights of a
big model, assembled from arrays without a joined copy) is written stored with its data aligned to
``BLOB_ALIGN`` bytes in the file and is marked ``"mapped"`` in the manifest; ``read_artifact``
hands it back as a ``MappedEntry`` (file, offset, size: the bytes are hashed where they lie,
never read into memory) that a runtime can memory-map. Its sha256 is piecewise
(``compiler.hashing``: the pieces are hashed on every core, at write and at load).

A signed artifact holds one more entry, ``SIGNATURE_NAME`` (``compiler.driver.signing``): a
signature over the manifest bytes, which list every payload file's sha256. It is not in the
manifest (it signs it), so the reader accepts it unlisted; ``add_entry`` appends it to an existing
artifact and ``read_signed_parts`` reads it back.

Standard library only (the runtime that reads artifacts must not need torch).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import tempfile
import zipfile
import zlib
from collections import Counter
from typing import Any, Callable

from compiler.errors import ArtifactError
from compiler.hashing import PIECE, RangeReader, file_reader, piecewise_sha256
from compiler.driver.zip_writing import KnownPieces, ZipWriter
from compiler.payload import StoredBlob

FORMAT_NAME = "aot-artifact"
# 3: a mapped entry's "sha256" is the segmented digest of compiler.hashing ("segments" lists the
# segments' starts); 2: the piecewise digest ("piece" says the piece size); 1: one stream. All
# three are read.
FORMAT_VERSION = 3
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "signature.sigstore.json"  # the one entry the manifest does not list: it signs the manifest

_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed entry timestamps: reproducible artifacts
_CHUNK = 1 << 20
BLOB_ALIGN = 4096  # a mapped entry's data starts on a page: mmap-able, and every aligned tensor in it too
_LOCAL_HEADER = 30  # bytes of a zip local file header before its name and extra field
_SAMPLE = 1 << 16  # bytes deflated to decide whether a payload file compresses
_SAMPLE_SLICES = 16
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# What zipfile/zlib raise on a damaged archive (struct.error: a cut-off zip64 extra field,
# OverflowError: an offset too large to seek to, UnicodeDecodeError is a ValueError).
_CORRUPT = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error, ValueError, KeyError,
            NotImplementedError, RuntimeError, OSError, struct.error, OverflowError)
_RECOMPILE = "recompile it or download it again"

# Limits that a hostile file meets before it costs time or memory. The compiler writes a manifest
# of a few hundred KB at most, a handful of entries and no nesting deeper than ~6 levels.
_MAX_MANIFEST_BYTES = 16 << 20
_MAX_ENTRIES = 4096
_MAX_MANIFEST_DEPTH = 64
# Payload files read into memory may expand to at most this many times the artifact's size (a
# deflate bomb expands ~1000x; what the compiler deflates, code and JSON, 2-10x), with a floor
# for small artifacts of compressible models. Mapped (stored) entries never expand.
_MAX_EXPANSION = 200
_EXPANSION_FLOOR = 256 << 20


def sha256_bytes(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


class MappedEntry:
    """A stored payload file inside the artifact at ``path``: ``size`` bytes from ``offset``,
    checked to lie inside the file and against the manifest's sha256."""

    def __init__(self, path: str, offset: int, size: int):
        self.path, self.offset, self.size = path, offset, size

    def read(self) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            return f.read(self.size)

    def __repr__(self) -> str:
        return f"MappedEntry({self.path!r}, offset={self.offset}, size={self.size})"


# -- writing ---------------------------------------------------------------------------------------
def write_artifact(path: str | os.PathLike, manifest: dict[str, Any], payload: dict[str, bytes],
                   known_pieces: KnownPieces | None = None) -> int:
    """Write ``manifest`` and ``payload`` as one artifact file at ``path``; return its size in bytes.

    ``StoredBlob`` entries come first: each is written, hashed and CRC'd in one pass on every core
    (``zip_writing``), and the manifest that lists their digests follows them; a part whose pieces'
    digests ``known_pieces`` gives (the source model's weights, hashed for its own digest) is not
    hashed again. Raises
    ``ArtifactError`` when the destination cannot be written (nothing is left at ``path`` then, and
    an existing file there is untouched), ``TypeError``/``ValueError`` for a manifest that is not
    JSON or a bad payload name (bugs in the caller).
    """
    path = os.fspath(path)
    blobs: dict[str, StoredBlob] = {}
    files: dict[str, bytes] = {}
    table: dict[str, dict[str, Any]] = {}
    for name, data in payload.items():
        if not isinstance(name, str) or not name or name in (MANIFEST_NAME, SIGNATURE_NAME) or name.endswith("/"):
            raise ValueError(f"invalid payload file name {name!r}")
        if isinstance(data, StoredBlob):
            blobs[name] = data
            table[name] = {"sha256": data.known_sha256(PIECE) or "0" * 64, "piece": PIECE, "size": data.size,
                           "mapped": True}
        else:
            files[name] = data if isinstance(data, bytes) else bytes(data)
            table[name] = {"sha256": sha256_bytes(files[name]), "size": len(files[name])}
    full = {**manifest, "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "payload": table}
    _manifest_bytes(full)  # a manifest that is not JSON fails here, before any file is opened

    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise ArtifactError(f"output directory does not exist: {directory} "
                            "(create it first or choose another -o path)")
    if os.path.isdir(path):
        raise ArtifactError(f"output path {path} is a directory; give a file name such as "
                            f"{os.path.join(path, 'model.aot')}")

    def fill(tmp) -> None:
        zf = ZipWriter(tmp.fileno())
        for name, blob in blobs.items():
            digest = zf.add_blob(name, blob, BLOB_ALIGN, PIECE, blob.known_sha256(PIECE), known_pieces)
            blob.remember_sha256(PIECE, digest)  # the artifact is written again after verification
            table[name]["sha256"] = digest
            starts = blob.segment_starts()
            if starts != [0]:
                table[name]["segments"] = starts
        manifest_bytes = _manifest_bytes(full)
        zf.add_bytes(MANIFEST_NAME, manifest_bytes, deflate=True)
        for name, data in files.items():
            zf.add_bytes(name, data, deflate=_compresses(data))
        zf.close(comment=sha256_bytes(manifest_bytes).encode("ascii"))

    return _write_atomically(path, fill)


def _manifest_bytes(manifest: dict[str, Any]) -> bytes:
    try:
        return json.dumps(manifest, sort_keys=True, indent=2, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise type(e)(f"artifact manifest is not JSON-serialisable: {e}") from e


def _write_atomically(path: str, fill: Callable[[Any], None]) -> int:
    """Write ``path`` through ``fill(file)`` into a temporary file in its directory, renamed into
    place (with the umask's permissions), so a failure or a concurrent reader never sees a
    half-written artifact and the old file stays until the new one is whole; returns the new
    file's size. An OSError (a full disk, no permission) is one ArtifactError line."""
    directory = os.path.dirname(path) or "."
    tmp_name = None
    try:
        with tempfile.NamedTemporaryFile(dir=directory, delete=False, prefix="." + os.path.basename(path) + ".",
                                         suffix=".tmp") as tmp:
            tmp_name = tmp.name
            fill(tmp)
        os.chmod(tmp_name, 0o666 & ~_umask())
        os.replace(tmp_name, path)
        tmp_name = None
        return os.path.getsize(path)
    except OSError as e:
        raise ArtifactError(f"cannot write artifact {path}: {e.strerror or e}") from e
    finally:
        if tmp_name is not None:
            try:
                os.unlink(tmp_name)
            except OSError:
                pass


def _zip_info(name: str, deflate: bool = True) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
    info.compress_type = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    return info


def _compresses(data: bytes) -> bool:
    """Whether deflating ``data`` is worth it: a sample of it shrinks by a tenth or more (text and
    code do; float weights shrink by a few percent at the cost of seconds per 100 MB). The sample
    is 16 slices evenly spread over the whole file: a compiled library is a little compressible code and
    headers around mostly weights (a sample of its start and middle deflated ResNet-18's 77 MB
    library by 8% in 2.4 s, BERT's two 434 MB ones in ~25 s)."""
    if len(data) <= _SAMPLE:
        return True
    piece, part = _SAMPLE // _SAMPLE_SLICES, len(data) // _SAMPLE_SLICES
    # Each slice from the middle of its sixteenth: the ends (headers) count no more than the rest.
    starts = [i * part + (part - piece) // 2 for i in range(_SAMPLE_SLICES)]
    sample = b"".join(data[start:start + piece] for start in starts)
    return len(zlib.compress(sample, 1)) < 0.9 * len(sample)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# -- reading ---------------------------------------------------------------------------------------
def read_artifact(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, bytes]]:
    """(manifest, payload) of the artifact at ``path``, after checking every hash."""
    return _read(path, load_payload=True)


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The artifact's manifest, verified against the zip comment; payload files are checked for
    presence and size but not hashed (cheap, for ``inspect``-style tools)."""
    return _read(path, load_payload=False)[0]


def _read(path: str | os.PathLike, load_payload: bool) -> tuple[dict[str, Any], dict[str, bytes]]:
    p = os.fspath(path)
    if not os.path.exists(p):
        raise ArtifactError(f"artifact not found: {p}")
    if os.path.isdir(p):
        raise ArtifactError(f"{p} is a directory, not an artifact file")
    try:
        with open(p, "rb") as f:
            try:
                zf = zipfile.ZipFile(f)
            except _CORRUPT as e:
                raise _corrupt(p, e) from e
            with zf:
                return _read_zip(p, zf, load_payload)
    except PermissionError as e:
        raise ArtifactError(f"cannot read artifact {p}: {e.strerror or e}") from e
    except ArtifactError:
        raise
    except _CORRUPT as e:
        raise _corrupt(p, e) from e


def _read_zip(p: str, zf: zipfile.ZipFile, load_payload: bool) -> tuple[dict[str, Any], dict[str, bytes]]:
    infos = zf.infolist()
    _check_entries(p, infos)
    manifest = _parse_manifest(p, zf)
    _check_format(p, manifest)
    check_manifest_fields(p, manifest)

    table = manifest.get("payload")
    if not isinstance(table, dict) or not all(
            isinstance(e, dict) and isinstance(e.get("sha256"), str) and type(e.get("size")) is int
            and _valid_piece(e.get("piece", _ABSENT)) and _valid_segments(e) for e in table.values()):
        raise ArtifactError(f"{p} is not a valid artifact: its manifest has no valid payload table; {_RECOMPILE}")
    present = {i.filename: i for i in infos if i.filename not in (MANIFEST_NAME, SIGNATURE_NAME)}
    extra = sorted(set(present) - set(table))
    if extra:
        raise _integrity(p, f"it holds {', '.join(extra)}, which the manifest does not list")
    missing = sorted(set(table) - set(present))
    if missing:
        raise _integrity(p, f"payload file {missing[0]} listed in the manifest is missing")
    for name in sorted(table):
        if present[name].file_size != table[name]["size"]:  # checked before reading: no decompressing of a huge entry
            raise _integrity(p, f"payload file {name} has {present[name].file_size} bytes, manifest says "
                                f"{table[name]['size']}")
    _check_expansion(p, os.fstat(zf.fp.fileno()).st_size, [present[n] for n in table if not table[n].get("mapped")])
    if not load_payload:
        return manifest, {}

    payload: dict[str, bytes | MappedEntry] = {}
    for name in sorted(table):
        want_sha, info = table[name]["sha256"], present[name]
        if table[name].get("mapped"):
            payload[name] = _mapped_entry(p, zf, info, want_sha, table[name].get("piece"), table[name].get("segments"))
            continue
        data = _read_entry(zf, info)
        got_sha = sha256_bytes(data)
        if len(data) != info.file_size or got_sha != want_sha:
            raise _integrity(p, f"payload file {name} has sha256 {got_sha}, manifest says {want_sha}")
        payload[name] = data
    return manifest, payload


def _valid_piece(piece: Any) -> bool:
    """A mapped entry's piece size, when given, is a whole number of MiB up to 1 GiB (a tiny one
    would make millions of pieces to hash)."""
    return piece is _ABSENT or (type(piece) is int and 1 << 20 <= piece <= 1 << 30 and piece % (1 << 20) == 0)


def _valid_segments(entry: dict) -> bool:
    """A mapped entry's segment starts, when given: strictly increasing offsets inside it from 0
    (so no more of them than bytes; the manifest's size cap bounds the work they can cause)."""
    starts = entry.get("segments", _ABSENT)
    if starts is _ABSENT:
        return True
    return (isinstance(starts, list) and bool(starts) and starts[0] == 0 and all(type(s) is int for s in starts)
            and all(a < b for a, b in zip(starts, starts[1:])) and starts[-1] < max(entry["size"], 1))


def _read_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """The entry's bytes, never decompressing past its declared size: ``zf.read`` inflates all the
    compressed data at once, ~1000x its size when the declared size lies (the hash then fails)."""
    with zf.open(info) as f:
        return f.read(info.file_size) if info.file_size else b""


def _check_entries(p: str, infos: list[zipfile.ZipInfo]) -> None:
    """The archive's entry list: not absurdly long, a manifest, no name twice, no unsafe name."""
    if len(infos) > _MAX_ENTRIES:
        raise _integrity(p, f"the archive holds {len(infos)} entries, more than any artifact this compiler writes")
    names = [i.filename for i in infos]
    if MANIFEST_NAME not in names:
        raise ArtifactError(f"{p} is not a valid artifact: it has no {MANIFEST_NAME} "
                            f"(not written by this compiler, or damaged; {_RECOMPILE})")
    duplicates = sorted(n for n, count in Counter(names).items() if count > 1)
    if duplicates:
        raise _integrity(p, f"the archive holds {', '.join(map(repr, duplicates[:5]))} more than once")
    for name in names:
        problem = unsafe_name_problem(name)
        if problem:
            raise _integrity(p, f"the archive holds an entry named {name[:100]!r}, which {problem}")


def unsafe_name_problem(name: str) -> str | None:
    """Why ``name`` may not be an entry of an artifact (it could land outside a directory it is
    extracted to, or means different files on different systems), or None if it is safe."""
    if not name or len(name) > 255:
        return "is empty or longer than 255 characters"
    if name.startswith("/") or "\\" in name or ":" in name:
        return "is an absolute or Windows path"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        return "holds control characters"
    if any(part in ("", ".", "..") for part in name.split("/")):
        return "has an empty, '.' or '..' path component"
    return None


def _parse_manifest(p: str, zf: zipfile.ZipFile) -> dict[str, Any]:
    """The manifest entry as a dict, after checking its size (before reading it) and its sha256
    against the zip comment."""
    declared = zf.getinfo(MANIFEST_NAME).file_size
    if declared > _MAX_MANIFEST_BYTES:
        raise _integrity(p, f"{MANIFEST_NAME} is {declared} bytes, more than any manifest this compiler writes "
                            f"({_MAX_MANIFEST_BYTES})")
    manifest_bytes = _read_entry(zf, zf.getinfo(MANIFEST_NAME))
    recorded = zf.comment.decode("ascii", "replace")
    if not _SHA256_HEX.fullmatch(recorded):  # a cut-off comment: the file's last bytes are missing
        raise ArtifactError(f"{p} is not a valid artifact: file is truncated or corrupt (its zip comment "
                            f"holds no manifest hash: {recorded[:70]!r}); {_RECOMPILE}")
    if not _ends_with_comment(zf.fp, zf.comment):  # bytes appended after the archive
        raise _integrity(p, "data follows the end of the archive")
    if sha256_bytes(manifest_bytes) != recorded:
        raise _integrity(p, f"{MANIFEST_NAME} has sha256 {sha256_bytes(manifest_bytes)}, the archive says "
                            f"{recorded}: the manifest was modified after it was written")
    try:
        manifest = json.loads(manifest_bytes.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise ArtifactError(f"{p} is not a valid artifact: {MANIFEST_NAME} is not valid JSON "
                            f"({str(e)[:200]}); {_RECOMPILE}") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{p} is not a valid artifact: {MANIFEST_NAME} is not a JSON object; {_RECOMPILE}")
    if _nesting_depth(manifest) > _MAX_MANIFEST_DEPTH:
        raise ArtifactError(f"{p} is not a valid artifact: {MANIFEST_NAME} nests more than {_MAX_MANIFEST_DEPTH} "
                            f"levels deep; {_RECOMPILE}")
    return manifest


def _nesting_depth(value: Any) -> int:
    """Levels of lists/dicts in a parsed JSON value (iterative: no recursion on hostile input);
    stops counting past the limit."""
    depth, level = 0, [value]
    while level and depth <= _MAX_MANIFEST_DEPTH:
        depth += 1
        level = [child for v in level if isinstance(v, (dict, list))
                 for child in (v.values() if isinstance(v, dict) else v)]
    return depth


def _check_format(p: str, manifest: dict[str, Any]) -> None:
    fmt, version = manifest.get("format"), manifest.get("format_version")
    if fmt != FORMAT_NAME:
        raise ArtifactError(f"{p} is not an {FORMAT_NAME} file (its manifest says format {str(fmt)[:80]!r})")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ArtifactError(f"{p} is not a valid artifact: unknown format_version {str(version)[:80]!r}; "
                            f"{_RECOMPILE}")
    if version > FORMAT_VERSION:
        raise ArtifactError(f"{p} uses artifact format version {version}, but this compiler reads versions "
                            f"up to {FORMAT_VERSION}; upgrade the compiler to load it")


def _check_expansion(p: str, file_size: int, in_memory: list[zipfile.ZipInfo]) -> None:
    """Refuse, before decompressing anything, payload files whose declared sizes add up to more
    than the artifact could hold: a decompression bomb (or a damaged size field)."""
    total = sum(i.file_size for i in in_memory)
    budget = max(_EXPANSION_FLOOR, _MAX_EXPANSION * file_size)
    if total > budget:
        raise _integrity(p, f"its payload files would expand to {total} bytes, more than {_MAX_EXPANSION}x the "
                            "file's size (a decompression bomb, or damaged size fields)")


# Fields of the manifest that the driver and tools read, with the type each must have when present
# (the runners check the fields only they read). Paths go into nested objects.
def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _is_count(v: Any) -> bool:
    return v is None or (type(v) is int and v >= 0)


def _is_tensor_list(v: Any) -> bool:
    """A list of objects whose shape, if any, is a list (compiler.load checks each entry in full)."""
    return isinstance(v, list) and all(isinstance(e, dict) and isinstance(e.get("shape", []), list) for e in v)


def _is_variant_list(v: Any) -> bool:
    return v is None or (isinstance(v, list) and all(isinstance(e, dict) and _is_str_list(e.get("features", []))
                                                     for e in v))


_MANIFEST_FIELDS: dict[tuple[str, ...], tuple[Callable[[Any], bool], str]] = {
    ("target",): (lambda v: isinstance(v, str) and bool(v), "a target name"),
    ("model_name",): (_is_str, "a string"),
    ("source_kind",): (_is_str, "a string"),
    ("source_sha256",): (lambda v: v is None or isinstance(v, str), "a string"),
    ("inputs",): (_is_tensor_list, "a list of {name, dtype, shape} objects"),
    ("outputs",): (_is_tensor_list, "a list of {name, dtype, shape} objects"),
    ("passes",): (_is_str_list, "a list of pass names"),
    ("tool_versions",): (lambda v: isinstance(v, dict), "an object"),
    ("dynamic_batch",): (lambda v: v is None or isinstance(v, bool), "true or false"),
    ("target_info",): (lambda v: v is None or isinstance(v, dict), "an object"),
    ("target_info", "requires"): (lambda v: v is None or isinstance(v, dict), "an object"),
    ("target_info", "requires", "cpu_features"): (lambda v: v is None or _is_str_list(v), "a list of names"),
    ("target_info", "variants"): (_is_variant_list, "a list of {name, features, library}"),
    ("target_info", "tvm_target"): (lambda v: v is None or isinstance(v, dict), "an object"),
    ("target_info", "session_config"): (lambda v: v is None or isinstance(v, dict), "an object"),
    ("report",): (lambda v: v is None or isinstance(v, dict), "an object"),
    ("report", "parameters"): (_is_count, "a count"),
    ("report", "parameter_bytes"): (_is_count, "a count"),
}


def check_manifest_fields(p: str, manifest: dict[str, Any]) -> None:
    """ArtifactError naming the first manifest field (of those the driver reads) of the wrong type."""
    for path, (ok, what) in _MANIFEST_FIELDS.items():
        value: Any = manifest
        for key in path:
            value = value.get(key, _ABSENT) if isinstance(value, dict) else _ABSENT
        if value is not _ABSENT and not ok(value):
            raise ArtifactError(f"{p} has a malformed manifest: '{'.'.join(path)}' is not {what}; {_RECOMPILE}")


_ABSENT = object()


def _mapped_entry(p: str, zf: zipfile.ZipFile, info: zipfile.ZipInfo, want_sha: str, piece: Any,
                  segments: list[int] | None) -> MappedEntry:
    """The stored entry ``info`` as a MappedEntry, after checking that its data lies inside the
    file before the central directory and hashing it where it lies: piecewise on every core when
    the manifest gives a ``piece`` size (formats 2 and 3, by ``segments`` when given), as one
    stream otherwise (format 1)."""
    name = info.filename
    if info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size:
        raise _integrity(p, f"payload file {name} is marked mapped but is compressed")
    zf.fp.seek(info.header_offset)
    header = zf.fp.read(_LOCAL_HEADER)
    if len(header) != _LOCAL_HEADER or header[:4] != b"PK\x03\x04":
        raise _integrity(p, f"payload file {name} has no valid local header")
    offset = (info.header_offset + _LOCAL_HEADER + int.from_bytes(header[26:28], "little")
              + int.from_bytes(header[28:30], "little"))
    if offset + info.file_size > zf.start_dir:  # the central directory follows all entry data
        raise _integrity(p, f"payload file {name} runs past the end of the archive's data")
    read = file_reader(zf.fp.fileno(), offset)
    try:
        if piece is None:
            got_sha = _stream_sha256(info.file_size, read)
        else:
            got_sha = piecewise_sha256(info.file_size, read, piece, segments)
    except EOFError:
        raise _integrity(p, f"payload file {name} is cut off") from None
    if got_sha != want_sha:
        raise _integrity(p, f"payload file {name} has sha256 {got_sha}, manifest says {want_sha}")
    return MappedEntry(p, offset, info.file_size)


def _stream_sha256(size: int, read: RangeReader) -> str:
    """One SHA-256 stream over ``size`` bytes of a RangeReader (format 1's mapped entries)."""
    h = hashlib.sha256()
    for block in read(0, size):
        h.update(block)
    return h.hexdigest()


def _ends_with_comment(f, comment: bytes) -> bool:
    """The open file ``f`` ends exactly with the zip's end record comment (zipfile ignores trailing
    data). The open file, not the path: the path may name a newer version by now."""
    tail = len(comment) + 2
    f.seek(0, os.SEEK_END)
    if f.tell() < tail:
        return False
    f.seek(-tail, os.SEEK_END)
    return f.read(tail) == len(comment).to_bytes(2, "little") + comment


def _integrity(p: str, what: str) -> ArtifactError:
    return ArtifactError(f"{p} failed its integrity check: {what} (the file was modified or damaged; {_RECOMPILE})")


def _corrupt(p: str, e: BaseException) -> ArtifactError:
    detail = (str(e) or type(e).__name__)[:200]
    return ArtifactError(f"{p} is not a valid artifact: file is truncated or corrupt ({detail}); {_RECOMPILE}")


# -- one more entry (the signature) ----------------------------------------------------------------
def add_entry(path: str | os.PathLike, name: str, data: bytes, output: str | os.PathLike | None = None) -> int:
    """Write the artifact at ``path`` plus the entry ``name`` to ``output`` (default: ``path``
    itself); return the new file's size. An earlier ``name`` is replaced: it must be the last
    entry, as this function leaves it. The other entries keep their bytes and offsets (mapped blobs
    stay aligned) and the zip comment its manifest hash: the archive is copied and appended to,
    never rebuilt. The copy is a temporary file in the destination directory, renamed into place,
    so a failure leaves ``output`` as it was."""
    src, dest = os.fspath(path), os.fspath(output if output is not None else path)

    def fill(tmp) -> None:
        with open(src, "rb") as f:
            shutil.copyfileobj(f, tmp, _CHUNK * 16)
        tmp.seek(0)
        try:
            with zipfile.ZipFile(tmp, "a", allowZip64=True) as zf:
                _drop_last_entry(src, zf, name)
                zf.writestr(_zip_info(name), data)
        except _CORRUPT as e:
            raise _corrupt(src, e) from e

    return _write_atomically(dest, fill)


def _drop_last_entry(p: str, zf: zipfile.ZipFile, name: str) -> None:
    """Forget the entry ``name`` (the archive's last one) so that the next write lands on it."""
    info = zf.NameToInfo.get(name)
    if info is None:
        return
    if any(i.header_offset > info.header_offset for i in zf.infolist()) or \
            sum(i.filename == name for i in zf.infolist()) > 1:
        raise _integrity(p, f"{name} is not the archive's last entry, as this compiler writes it")
    zf.filelist.remove(info)
    del zf.NameToInfo[name]
    zf.start_dir = info.header_offset  # the new entry and the central directory overwrite it


def read_signed_parts(path: str | os.PathLike) -> tuple[bytes, bytes | None]:
    """(the manifest's bytes as stored, the signature entry or None when there is none), without
    checking any hash: ``read_artifact`` does that."""
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise ArtifactError(f"artifact not found: {p}" if not os.path.exists(p) else
                            f"{p} is a directory, not an artifact file")
    try:
        with zipfile.ZipFile(p) as zf:
            names = zf.namelist()
            if MANIFEST_NAME not in names:
                raise ArtifactError(f"{p} is not a valid artifact: it has no {MANIFEST_NAME} "
                                    "(not written by this compiler, or damaged; recompile it)")
            if names.count(SIGNATURE_NAME) > 1:
                raise _integrity(p, f"the archive holds {SIGNATURE_NAME} more than once")
            for entry in (MANIFEST_NAME, SIGNATURE_NAME):
                if entry in names and zf.getinfo(entry).file_size > _MAX_MANIFEST_BYTES:
                    raise _integrity(p, f"{entry} is {zf.getinfo(entry).file_size} bytes, more than this "
                                        "compiler writes")
            signature = zf.read(SIGNATURE_NAME) if SIGNATURE_NAME in names else None
            return zf.read(MANIFEST_NAME), signature
    except PermissionError as e:
        raise ArtifactError(f"cannot read artifact {p}: {e.strerror or e}") from e
    except ArtifactError:
        raise
    except _CORRUPT as e:
        raise _corrupt(p, e) from e
