"""``StoredBlob``: a big artifact payload file assembled from arrays without joining them.

A backend returns one in its payload (the weights of a big model) and the artifact writer streams
it into the archive stored (not deflated) and page-aligned, so a runtime can memory-map it. It
lives in the core so backends can build one without importing the driver. Standard library only.
"""

from __future__ import annotations

import os
from typing import Any

from compiler.hashing import file_reader

_CHUNK = 16 << 20


class FileRange:
    """``nbytes`` bytes of a file from ``offset`` on, as a StoredBlob part: read in blocks when
    the blob is hashed and written, so its pages stay in the page cache and never count in this
    process's memory (a memory-mapped array's pages do, once touched). The file is opened here
    and stays readable through this object even after it is deleted."""

    def __init__(self, path: str, offset: int, nbytes: int):
        self.file = open(path, "rb", buffering=0)  # noqa: SIM115 - closed with this object
        self.offset, self.nbytes = int(offset), int(nbytes)
        if self.offset + self.nbytes > os.fstat(self.file.fileno()).st_size:
            raise ValueError(f"FileRange {path} [{offset}, {offset + nbytes}) runs past the file's end")

    def chunks(self, start: int, end: int):
        """Bytes [start, end) of the range, in blocks read into one reused buffer."""
        return file_reader(self.file.fileno(), self.offset)(start, end)


class StoredBlob:
    """A payload file made of ``parts``: (offset, part) pairs in increasing offset order, zeros
    between them, ``size`` bytes in all. A part is a buffer, or an object that produces its bytes
    on demand (``nbytes`` and ``chunks(start, end)``, as FileRange does). Written stored and
    page-aligned without joining the parts into one bytes object; read back as a ``MappedEntry``."""

    def __init__(self, parts: list[tuple[int, Any]], size: int):
        self.parts = [(int(offset), buf if hasattr(buf, "chunks") else memoryview(buf).cast("B"))
                      for offset, buf in parts]
        end = 0
        for offset, view in self.parts:
            if offset < end:
                raise ValueError(f"StoredBlob part at offset {offset} overlaps the previous one")
            end = offset + view.nbytes
        if end > size:
            raise ValueError(f"StoredBlob parts end at {end}, past its size {size}")
        self.size = int(size)
        self._sha256: dict[int, str] = {}  # piece size -> digest

    def chunks(self):
        """The blob's bytes in order, zero padding included."""
        return self.range_chunks(0, self.size)

    def range_chunks(self, start: int, end: int):
        """Bytes [start, end) of the blob in order, as views of the parts and zero padding."""
        pos = start
        for offset, view in self.parts:
            part_end = offset + view.nbytes
            if part_end <= pos:
                continue
            if offset >= end:
                break
            yield from _zeros(offset - pos)
            first = max(pos, offset) - offset
            last = min(end, part_end) - offset
            if not isinstance(view, memoryview):
                yield from view.chunks(first, last)
            else:
                for chunk in range(first, last, _CHUNK):
                    yield view[chunk:min(last, chunk + _CHUNK)]
            pos = offset + last
        yield from _zeros(end - pos)

    def segment_starts(self) -> list[int]:
        """Where the blob's segments start: 0, each part's start, and where each gap after a part
        starts. Hashed segment by segment, each part has the pieces it has alone."""
        starts = {0}
        for offset, view in self.parts:
            starts.add(offset)
            starts.add(offset + view.nbytes)
        return sorted(start for start in starts if start < self.size) or [0]

    def in_memory(self, start: int, end: int) -> bool:
        """Whether bytes [start, end) are zeros and views of memory (no part made on demand)."""
        return all(isinstance(view, memoryview) for offset, view in self.parts
                   if offset < end and offset + view.nbytes > start)

    def known_sha256(self, piece: int) -> str | None:
        """The blob's segmented SHA-256 (``compiler.hashing``) when an earlier write computed it."""
        return self._sha256.get(piece)

    def remember_sha256(self, piece: int, digest: str) -> None:
        """Keep the digest a write computed: the artifact is written twice (before and after
        verification), and the parts do not change between the two."""
        self._sha256[piece] = digest


def _zeros(count: int):
    while count > 0:
        yield bytes(min(count, _CHUNK))
        count -= _CHUNK


__all__ = ["FileRange", "StoredBlob"]
