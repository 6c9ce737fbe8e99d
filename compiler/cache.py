"""The cache of native libraries extracted from artifacts (``$AOT_COMPILER_CACHE``, else
``~/.cache/aot-compiler``): content-addressed files that a runner then loads with dlopen.

A file is named by its content's sha256 and is used again only after its bytes are compared with
the artifact's: a cache entry that was truncated, or rewritten by someone else, is replaced rather
than loaded, so what runs is what the (hash- or signature-checked) artifact holds. New directories
are private to the user (mode 0700). Writes go to a temporary name and are renamed into place, so
concurrent loads never see a half-written file. Standard library only.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


def cache_root() -> Path:
    root = os.environ.get("AOT_COMPILER_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "aot-compiler"


def cached_file(directory: Path, data: bytes, suffix: str = ".so") -> Path:
    """The path of ``data`` in ``directory``, named by its sha256: reused when it holds exactly
    ``data``, else (re)written atomically."""
    path = directory / f"{hashlib.sha256(data).hexdigest()}{suffix}"
    if _holds(path, data):
        return path
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _holds(path: Path, data: bytes) -> bool:
    """Whether ``path`` is a regular file whose bytes are ``data`` (a memcmp-speed read: far
    cheaper than the dlopen that follows)."""
    try:
        if not path.is_file() or path.stat().st_size != len(data):
            return False
        with open(path, "rb") as f:
            return f.read(len(data) + 1) == data
    except OSError:
        return False
