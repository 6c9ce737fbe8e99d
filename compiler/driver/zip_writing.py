"""A minimal zip writer (zip64 where needed) that writes a big stored entry in one pass.

``zipfile`` writes an entry's data in one thread, CRC-32 then ``write`` block after block, and
the piecewise SHA-256 of the manifest had read the same bytes once before: for a 2.2 GB weights
entry, 0.7 s of hashing on two cores and then 2.3 s. ``ZipWriter.add_blob`` writes a
``StoredBlob`` in one pass instead: the calling thread CRCs and ``pwrite``s each 1 MiB block
while it is in cache, and helper threads hash the pieces (``compiler.hashing``) beside it: those
of in-memory parts whose digests are not known already (the source model's hash gives most of
them). Pieces of parts made on demand (packed weights, file ranges) are hashed by the writing
thread as it writes them, so their bytes are made once. Several threads writing into one file
were slower here than one (the kernel serialises writes to a file). 2.2 GB: 1.1-1.3 s with the
digests known, 2.1-2.5 s hashing them (was 2.3-2.7 s with every thread hashing and writing).
The CRC is patched into the local header afterwards.

Everything is written at explicit offsets with ``os.pwrite`` on the file's descriptor. The layout
is plain zip (APPNOTE 6.3): local header, data, ..., central directory, the zip64 end records when
an offset, size or count does not fit 32 bits, the end record with the comment. Entries carry a
fixed timestamp and permissions, so the same entries give the same bytes. ``zipfile`` reads it,
``zipfile.testzip`` checks every CRC (tests/test_zip_writing.py).
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from compiler.hashing import combined_digest, piece_ranges, range_sha256, thread_count
from compiler.payload import StoredBlob

# part (a byte memoryview) -> the SHA-256 digests of its pieces when they are already known, or None
KnownPieces = Callable[[memoryview], "list[bytes] | None"]

_LOCAL_SIG, _CENTRAL_SIG, _END_SIG = b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06"
_ZIP64_END_SIG, _ZIP64_LOCATOR_SIG = b"PK\x06\x06", b"PK\x06\x07"
_LOCAL = struct.Struct("<4s5H3L2H")  # sig, need, flags, method, time, date, crc, csize, size, name, extra
_CENTRAL = struct.Struct("<4s6H3L5H2L")
_END = struct.Struct("<4s4H2LH")
_ZIP64_END = struct.Struct("<4sQ2H2L4Q")
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_MAX32, _MAX16 = 0xFFFFFFFF, 0xFFFF  # a field that holds these says "see the zip64 record"
# Values from these on go to the zip64 records (the limits are variables so tests can lower them).
_ZIP64_LIMIT = _MAX32
_ZIP64_COUNT_LIMIT = _MAX16
_STORED, _DEFLATED = 0, 8
_VERSION, _ZIP64_VERSION = 20, 45
_UNIX = 3  # "version made by" high byte: the external attributes are Unix permissions
_UTF8 = 0x800  # general-purpose flag bit 11: the name is UTF-8
_DOS_DATE = (0 << 9) | (1 << 5) | 1  # 1980-01-01, the zip epoch: reproducible entries
_DOS_TIME = 0
_PERMISSIONS = 0o100644 << 16  # a regular file, rw-r--r--
_PAD_EXTRA_ID = 0xD935  # a private extra field (the id zipalign uses) that only pads a local header
_BLOCK = 1 << 20  # bytes per pwrite of a blob: a block is hashed, CRC'd and written while in cache


@dataclass
class _Entry:
    name: bytes
    flags: int
    method: int
    crc: int
    compressed: int
    size: int
    offset: int


class ZipWriter:
    """Append entries to the empty file ``fd`` (an open descriptor) and finish it with ``close``."""

    def __init__(self, fd: int):
        self._fd = fd
        self._pos = 0
        self._entries: list[_Entry] = []

    def add_bytes(self, name: str, data: bytes, deflate: bool) -> None:
        """One entry holding ``data``, deflated when ``deflate``."""
        crc = zlib.crc32(data)
        if deflate:
            packer = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
            stored = packer.compress(data) + packer.flush()
        else:
            stored = data
        entry = self._start(name, _DEFLATED if deflate else _STORED, crc, len(stored), len(data), align=0)
        self._write(stored)
        self._entries.append(entry)

    def add_blob(self, name: str, blob: StoredBlob, align: int, piece: int, known_digest: str | None,
                 known_pieces: KnownPieces | None = None) -> str:
        """``blob`` as a stored entry whose data starts at a multiple of ``align`` in the file;
        returns its segmented SHA-256 (``compiler.hashing``: segments ``blob.segment_starts()``,
        pieces of ``piece`` bytes), computed while writing unless ``known_digest`` gives it. A
        part for which ``known_pieces(part)`` gives its pieces' digests is not hashed again."""
        entry = self._start(name, _STORED, 0, blob.size, blob.size, align)
        base, starts = self._pos, blob.segment_starts()
        jobs = piece_ranges(blob.size, piece, starts)
        digests = {} if known_digest is not None else _known_piece_digests(blob, piece, known_pieces)
        to_hash = [job for job in jobs if known_digest is None and job not in digests]
        # Pieces of in-memory parts are hashed by helper threads beside the writing; the others
        # (parts made or read on demand) as they are written, so that their bytes are made once.
        aside = [job for job in to_hash if blob.in_memory(*job)] if (os.cpu_count() or 1) > 1 else []
        inline = set(to_hash) - set(aside)
        threads = thread_count(len(aside), sum(end - start for start, end in aside), spare_caller=True)
        with ThreadPoolExecutor(max(threads, 1), thread_name_prefix="zip-sha256") as pool:
            hashed = {}
            for job in aside:
                try:
                    hashed[job] = pool.submit(range_sha256, blob.range_chunks, *job)
                except RuntimeError:  # no thread can be started (a thread or address-space limit)
                    inline.add(job)
            crc = 0
            for job in jobs:
                start, end = job
                sha, pos = hashlib.sha256() if job in inline else None, start
                for block in _blocks(blob.range_chunks(start, end)):
                    if sha is not None:
                        sha.update(block)
                    crc = zlib.crc32(block, crc)
                    _pwrite_all(self._fd, block, base + pos)
                    pos += block.nbytes
                if sha is not None:
                    digests[job] = sha.digest()
            digests.update({job: future.result() for job, future in hashed.items()})
        entry.crc = crc
        _pwrite_all(self._fd, memoryview(struct.pack("<L", crc)), entry.offset + 14)  # the header's CRC field
        self._pos = base + blob.size
        self._entries.append(entry)
        return known_digest if known_digest is not None else \
            combined_digest(piece, blob.size, [digests[job] for job in jobs], starts)

    def close(self, comment: bytes) -> int:
        """Write the central directory and the end records; return the archive's size."""
        start = self._pos
        for entry in self._entries:
            self._write(_central_header(entry))
        end_of_entries, count = self._pos, len(self._entries)
        directory_size = end_of_entries - start
        if count >= _ZIP64_COUNT_LIMIT or start >= _ZIP64_LIMIT or directory_size >= _ZIP64_LIMIT:
            self._write(_ZIP64_END.pack(_ZIP64_END_SIG, _ZIP64_END.size - 12, (_UNIX << 8) | _ZIP64_VERSION,
                                        _ZIP64_VERSION, 0, 0, count, count, directory_size, start))
            self._write(_ZIP64_LOCATOR.pack(_ZIP64_LOCATOR_SIG, 0, end_of_entries, 1))
        entries = count if count < _ZIP64_COUNT_LIMIT else _MAX16
        self._write(_END.pack(_END_SIG, 0, 0, entries, entries, _narrow(directory_size), _narrow(start),
                              len(comment)) + comment)
        return self._pos

    # -- internals --------------------------------------------------------------------------------
    def _start(self, name: str, method: int, crc: int, compressed: int, size: int, align: int) -> _Entry:
        """Write an entry's local header (padded so that its data starts at a multiple of
        ``align`` when ``align`` is set) and return the entry's record."""
        encoded = name.encode("utf-8")
        flags = 0 if encoded.isascii() else _UTF8
        entry = _Entry(encoded, flags, method, crc, compressed, size, self._pos)
        zip64 = size >= _ZIP64_LIMIT or compressed >= _ZIP64_LIMIT
        extra = struct.pack("<2H2Q", 1, 16, size, compressed) if zip64 else b""
        if align:
            header_end = self._pos + _LOCAL.size + len(encoded) + len(extra) + 4  # + the pad field's id, length
            pad = -header_end % align
            extra += struct.pack("<2H", _PAD_EXTRA_ID, pad) + bytes(pad)
        self._write(_LOCAL.pack(_LOCAL_SIG, _ZIP64_VERSION if zip64 else _VERSION, flags, method, _DOS_TIME,
                                _DOS_DATE, crc, _MAX32 if zip64 else compressed, _MAX32 if zip64 else size,
                                len(encoded), len(extra)) + encoded + extra)
        return entry

    def _write(self, data: bytes) -> None:
        _pwrite_all(self._fd, memoryview(data), self._pos)
        self._pos += len(data)


def _central_header(entry: _Entry) -> bytes:
    """The central directory record of ``entry``: the fields that do not fit 32 bits are
    0xFFFFFFFF there and given, in this order, in its zip64 extra field."""
    wide = [value for value in (entry.size, entry.compressed, entry.offset) if value >= _ZIP64_LIMIT]
    extra = struct.pack(f"<2H{len(wide)}Q", 1, 8 * len(wide), *wide) if wide else b""
    version = _ZIP64_VERSION if wide else _VERSION
    return _CENTRAL.pack(_CENTRAL_SIG, (_UNIX << 8) | version, version, entry.flags, entry.method, _DOS_TIME,
                         _DOS_DATE, entry.crc, _narrow(entry.compressed), _narrow(entry.size),
                         len(entry.name), len(extra), 0, 0, 0, _PERMISSIONS, _narrow(entry.offset)) + entry.name + extra


def _narrow(value: int) -> int:
    """A 32-bit field's value: the value, or the marker that sends the reader to the zip64 record."""
    return value if value < _ZIP64_LIMIT else _MAX32


def _known_piece_digests(blob: StoredBlob, piece: int, known_pieces: KnownPieces | None) -> dict:
    """{(start, end) of a piece in the blob: its digest} for the parts whose pieces' digests
    ``known_pieces`` gives (each part is a segment of its own, cut into pieces from its start)."""
    known: dict[tuple[int, int], bytes] = {}
    for offset, part in ([] if known_pieces is None else blob.parts):
        digests = known_pieces(part) if isinstance(part, memoryview) else None
        ranges = piece_ranges(part.nbytes, piece)
        if digests is not None and len(digests) == len(ranges):
            known.update({(offset + start, offset + end): d for (start, end), d in zip(ranges, digests)})
    return known


def _blocks(chunks):
    """The chunks as byte memoryviews of at most _BLOCK bytes."""
    for chunk in chunks:
        view = memoryview(chunk).cast("B")
        for start in range(0, view.nbytes, _BLOCK):
            yield view[start:start + _BLOCK]


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    """Write all of ``view`` at ``offset`` (pwrite may write less than asked)."""
    while view.nbytes:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


__all__ = ["KnownPieces", "ZipWriter"]
