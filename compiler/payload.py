"""``StoredBlob``: a big artifact payload file assembled from arrays without joining them.

A backend returns one in its payload (the weights of a big model) and the artifact writer streams
it into the archive stored (not deflated) and page-aligned, so a runtime can memory-map it. It
lives in the core so backends can build one without importing the driver. Standard library only.
"""

from __future__ import annotations

import hashlib
from typing import Any

_CHUNK = 16 << 20


class StoredBlob:
    """A payload file made of ``parts``: (offset, buffer) pairs in increasing offset order, zeros
    between them, ``size`` bytes in all. Written stored and page-aligned without joining the
    parts into one bytes object; read back as a ``MappedEntry``."""

    def __init__(self, parts: list[tuple[int, Any]], size: int):
        self.parts = [(int(offset), memoryview(buf).cast("B")) for offset, buf in parts]
        end = 0
        for offset, view in self.parts:
            if offset < end:
                raise ValueError(f"StoredBlob part at offset {offset} overlaps the previous one")
            end = offset + view.nbytes
        if end > size:
            raise ValueError(f"StoredBlob parts end at {end}, past its size {size}")
        self.size = int(size)
        self._sha256: str | None = None

    def chunks(self):
        """The blob's bytes in order, zero padding included."""
        pos = 0
        for offset, view in self.parts:
            if offset > pos:
                yield bytes(offset - pos)
            for start in range(0, view.nbytes, _CHUNK):
                yield view[start:start + _CHUNK]
            pos = offset + view.nbytes
        if self.size > pos:
            yield bytes(self.size - pos)

    def sha256(self) -> str:
        if self._sha256 is None:  # the artifact is written twice (before and after verification)
            h = hashlib.sha256()
            for chunk in self.chunks():
                h.update(chunk)
            self._sha256 = h.hexdigest()
        return self._sha256


__all__ = ["StoredBlob"]
