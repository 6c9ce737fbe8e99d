"""Helpers shared by the artifact fuzz and concurrency tests: a tiny compiled ONNX artifact,
a raw zip writer that can say anything (hostile names, duplicates, lying sizes), and checks
that a refusal is a clean one."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import struct
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from compiler.driver.artifact import MANIFEST_NAME, sha256_bytes

TINY_INPUT = np.linspace(-1, 1, 4, dtype=np.float32).reshape(1, 4)
CACHE_FILE = re.compile(r"[0-9a-f]{64}(\.rebuilt)?\.so")


def compile_tiny_onnx(path: Path, seed: int = 0) -> bytes:
    """Compile a 4-8-2 MLP (weights from ``seed``) for onnx at ``path``; return the artifact's bytes."""
    import torch

    import compiler

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    compiler.compile(model, (torch.from_numpy(TINY_INPUT),), target="onnx", output=path, verify=False)
    return path.read_bytes()


def zip_bytes(entries: list[tuple[str, bytes, int]], comment: bytes | None = None) -> bytes:
    """A zip of ``(name, data, compress_type)`` entries in order (duplicates and any names
    allowed); the comment defaults to the sha256 of the (last) manifest entry, so the archive
    passes the manifest-hash check and the reader looks further."""
    buffer = io.BytesIO()
    with warnings_off(), zipfile.ZipFile(buffer, "w") as zf:
        manifest = [data for name, data, _ in entries if name == MANIFEST_NAME]
        zf.comment = comment if comment is not None else (sha256_bytes(manifest[-1]).encode() if manifest else b"")
        for name, data, compress in entries:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = compress
            zf.writestr(info, data)
    return buffer.getvalue()


def artifact_bytes(manifest: dict, payload: dict[str, bytes], *, table: dict | None = None,
                   compress: int = zipfile.ZIP_DEFLATED) -> bytes:
    """An artifact whose hashes all agree: ``manifest`` (sent as is, plus the format fields
    unless it sets them) and ``payload``; ``table`` replaces the computed payload table."""
    full = {"format": "aot-artifact", "format_version": 1, **manifest}
    if table is None:
        table = {n: {"sha256": sha256_bytes(d), "size": len(d)} for n, d in payload.items()}
    full["payload"] = table
    manifest_bytes = json.dumps(full, sort_keys=True).encode()
    return zip_bytes([(MANIFEST_NAME, manifest_bytes, zipfile.ZIP_DEFLATED)]
                     + [(n, d, compress) for n, d in payload.items()])


def manifest_and_payload(data: bytes) -> tuple[dict, dict[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        manifest = json.loads(zf.read(MANIFEST_NAME))
        return manifest, {n: zf.read(n) for n in zf.namelist() if n != MANIFEST_NAME}


def set_declared_size(data: bytes, name: str, size: int) -> bytes:
    """``data`` (a zip) with the uncompressed size of entry ``name`` rewritten in its local header
    and central directory entry (32-bit fields): a zip that lies about how much it expands."""
    out = bytearray(data)
    encoded = name.encode()
    for signature, size_at, name_at in ((b"PK\x03\x04", 22, 30), (b"PK\x01\x02", 24, 46)):
        start = 0
        while (start := out.find(signature, start)) >= 0:
            name_len = struct.unpack_from("<H", out, start + name_at - (4 if signature == b"PK\x03\x04" else 18))[0]
            if out[start + name_at:start + name_at + name_len] == encoded:
                struct.pack_into("<I", out, start + size_at, size)
            start += 4
    return bytes(out)


@contextlib.contextmanager
def warnings_off():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about duplicate names
        yield


@contextlib.contextmanager
def sandbox():
    """A fresh directory that is also the working directory and the library cache; yields
    (directory, cache) and checks on exit that nothing was written anywhere in it but the
    caller's own files and sha256-named files directly in the cache."""
    old_cwd, old_cache = os.getcwd(), os.environ.get("AOT_COMPILER_CACHE")
    with tempfile.TemporaryDirectory(prefix="aot-fuzz-") as tmp:
        root = Path(tmp) / "work"
        cache = Path(tmp) / "cache"
        root.mkdir()
        os.chdir(root)
        os.environ["AOT_COMPILER_CACHE"] = str(cache)
        try:
            before = set(Path(tmp).rglob("*"))
            yield root, cache
            written = set(Path(tmp).rglob("*")) - before
        finally:
            os.chdir(old_cwd)
            if old_cache is None:
                os.environ.pop("AOT_COMPILER_CACHE", None)
            else:
                os.environ["AOT_COMPILER_CACHE"] = old_cache
        stray = [p for p in written if not _allowed(p, root, cache)]
        assert not stray, f"files written outside the cache: {sorted(map(str, stray))[:5]}"


def _allowed(path: Path, root: Path, cache: Path) -> bool:
    """The caller's artifacts (``*.aot`` in the work directory), the cache directories, and
    sha256-named libraries (or their temporary files) directly in them."""
    if path in (cache, cache / "tvm", cache / "hls"):
        return True
    if path.parent == root:
        return path.suffix == ".aot"
    return path.parent in (cache / "tvm", cache / "hls") and CACHE_FILE.fullmatch(path.name) is not None


def assert_one_line(message: str) -> None:
    assert message and "\n" not in message and "Traceback" not in message, message


# -- model files (tests/test_fuzz_model_loading.py) ------------------------------------------------
def zip_entries(data: bytes) -> list[tuple[str, bytes, int]]:
    """``(name, data, compress_type)`` of every entry of the zip ``data``, in order (for
    ``zip_bytes`` to write back, changed)."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return [(i.filename, zf.read(i), i.compress_type) for i in zf.infolist()]


def files_under(directory: Path) -> set[Path]:
    """Every file and directory below ``directory``, except Python's bytecode caches (importing
    a factory file may write ``__pycache__`` next to it)."""
    return {p for p in directory.rglob("*") if "__pycache__" not in p.parts}


def assert_short_one_line(message: str, limit: int = 1000) -> None:
    """A refusal a user can read: one line, no traceback, at most ``limit`` characters."""
    assert_one_line(message)
    assert len(message) <= limit, f"{len(message)} characters: {message[:200]}..."
