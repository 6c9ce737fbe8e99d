"""SHA-256 of big byte ranges on every core: the hash of the pieces' hashes.

One SHA-256 stream runs at about 1.6 GB/s on one core, so hashing a 2 GB model's weights took
1.4 s when compiling (twice: the source module and the artifact's weights) and again when
loading. A piecewise digest splits the bytes into fixed ``PIECE``-sized pieces (the last one
shorter), hashes the pieces in threads (``hashlib`` releases the GIL while it hashes a buffer,
and ``os.pread`` while it reads), and hashes the list of their digests together with the piece
size and the total size:

    sha256("sha256-pieces:<piece>:<size>:" + sha256(piece 0) + sha256(piece 1) + ...)

A segmented digest (artifact format 3) cuts the bytes into segments first, at given start
offsets, and each segment into pieces from its own start; the starts are hashed in too:

    sha256("sha256-segments:<piece>:<size>:<start 0>,<start 1>,...:" + sha256(piece 0) + ...)

A weights file whose segments are its tensors then has, for each tensor, the pieces' digests
that the tensor has alone: the compiler hashes a model's weights once, for the source's digest,
and reuses those digests for the artifact's.

Finding two byte strings with the same piecewise digest means finding a SHA-256 collision in
one of the two levels, so it is as strong a check as the plain hash. Standard library only.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable

PIECE = 64 << 20  # bytes per piece: many pieces per core for GB-sized weights, few for small ones
_READ_BLOCK = 8 << 20  # bytes per read of a file piece
_MAX_THREADS = 16
_BYTES_PER_THREAD = 16 << 20

# read(start, end) -> the buffers that hold bytes [start, end) of the source, in order
RangeReader = Callable[[int, int], Iterable[Any]]


def piece_ranges(size: int, piece: int = PIECE, starts: list[int] | None = None) -> list[tuple[int, int]]:
    """The [start, end) ranges of the pieces of ``size`` bytes (one empty piece for no bytes). With
    ``starts`` (increasing offsets from 0: the segments' starts) each segment is cut into pieces
    from its own start, so a tensor stored as one segment has the pieces it has alone."""
    bounds = list(starts or [0]) + [size]
    ranges = [(start, min(end, start + piece)) for begin, end in zip(bounds, bounds[1:])
              for start in range(begin, end, piece)]
    return ranges or [(0, 0)]


def piecewise_sha256(size: int, read: RangeReader, piece: int = PIECE, starts: list[int] | None = None) -> str:
    """The piecewise digest (hex) of ``size`` bytes that ``read`` gives back range by range."""
    ranges = piece_ranges(size, piece, starts)
    return combined_digest(piece, size, _digests([(read, start, end) for start, end in ranges]), starts)


def piece_digests_many(sources: list[tuple[int, RangeReader]], piece: int = PIECE) -> list[list[bytes]]:
    """The SHA-256 digests of each (size, read) source's pieces; all their pieces share one pool."""
    jobs = [(index, start, end) for index, (size, _) in enumerate(sources) for start, end in piece_ranges(size, piece)]
    digests = _digests([(sources[index][1], start, end) for index, start, end in jobs])
    parts: list[list[bytes]] = [[] for _ in sources]
    for (index, _, _), d in zip(jobs, digests):
        parts[index].append(d)
    return parts


def thread_count(jobs: int, total_bytes: int, spare_caller: bool = False) -> int:
    """Threads for ``jobs`` pieces of ``total_bytes`` in all: one per core (less the caller's,
    with ``spare_caller``: it has other work), but none for less than a few pieces' worth (a
    thread costs more than hashing a few MB)."""
    cores = (os.cpu_count() or 1) - (1 if spare_caller else 0)
    return max(1, min(jobs, cores, _MAX_THREADS, total_bytes // _BYTES_PER_THREAD))


def _digests(jobs: list[tuple[RangeReader, int, int]]) -> list[bytes]:
    """The SHA-256 digest of each (read, start, end) range, in threads."""
    return _map_in_threads(lambda job: range_sha256(*job), jobs,
                           thread_count(len(jobs), sum(end - start for _, start, end in jobs)))


def range_sha256(read: RangeReader, start: int, end: int) -> bytes:
    """The SHA-256 digest of bytes [start, end) that ``read`` gives back."""
    h = hashlib.sha256()
    for buf in read(start, end):
        h.update(buf)
    return h.digest()


def _map_in_threads(function: Callable[[Any], Any], jobs: list, threads: int) -> list:
    """``[function(job) for job in jobs]`` on ``threads`` threads; in the calling thread alone when
    one thread is asked for or none can be started (a process or container at its thread or
    address-space limit: the work is the same, only slower)."""
    if threads > 1:
        try:
            with ThreadPoolExecutor(threads, thread_name_prefix="hash") as pool:
                futures = [pool.submit(function, job) for job in jobs]
        except RuntimeError as e:  # "can't start new thread"
            if "thread" not in str(e):
                raise
        else:
            return [future.result() for future in futures]
    return [function(job) for job in jobs]


def combined_digest(piece: int, size: int, digests: list[bytes], starts: list[int] | None = None) -> str:
    """The piecewise digest (hex) of ``size`` bytes from the SHA-256 digests of its pieces, in
    order; segment starts other than the single segment [0] are hashed in with them."""
    head = f"sha256-pieces:{piece}:{size}:" if not starts or list(starts) == [0] else \
        f"sha256-segments:{piece}:{size}:{','.join(map(str, starts))}:"
    return hashlib.sha256(head.encode() + b"".join(digests)).hexdigest()


def buffer_reader(buf: Any) -> RangeReader:
    """A RangeReader over an in-memory buffer (bytes, a numpy array, a memoryview): no copies."""
    view = memoryview(buf).cast("B")
    return lambda start, end: (view[start:end],)


def file_reader(fd: int, base: int) -> RangeReader:
    """A RangeReader over the bytes of the open file ``fd`` from offset ``base`` on, read into one
    buffer per piece (the file's pages stay in the page cache, not in this process). Raises
    EOFError when the file ends early (a truncated file)."""

    def read(start: int, end: int):
        buffer = bytearray(min(_READ_BLOCK, end - start))
        pos = start
        while pos < end:
            view = memoryview(buffer)[:min(len(buffer), end - pos)]
            got = os.preadv(fd, [view], base + pos)
            if not got:
                raise EOFError(f"file ends at offset {base + pos}, {end - pos} bytes early")
            yield view[:got]
            pos += got

    return read


__all__ = ["PIECE", "buffer_reader", "combined_digest", "file_reader", "piece_digests_many", "piece_ranges",
           "piecewise_sha256", "range_sha256", "thread_count"]
