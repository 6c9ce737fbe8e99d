"""compiler/hashing.py: the piecewise SHA-256 against its definition, over buffers and files."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from compiler.hashing import (buffer_reader, combined_digest, file_reader, piece_digests_many, piece_ranges,
                              piecewise_sha256)


def _by_definition(data: bytes, piece: int) -> str:
    pieces = [data[i:i + piece] for i in range(0, len(data), piece)] or [b""]
    return hashlib.sha256(f"sha256-pieces:{piece}:{len(data)}:".encode()
                          + b"".join(hashlib.sha256(p).digest() for p in pieces)).hexdigest()


@pytest.mark.parametrize("size", [0, 1, 6, 7, 8, 50, 1000])
def test_piecewise_digest_matches_its_definition(size):
    data = np.random.default_rng(size).integers(0, 255, size, dtype=np.uint8).tobytes()
    assert piecewise_sha256(size, buffer_reader(data), piece=7) == _by_definition(data, 7)


def test_piece_ranges_cover_the_bytes_once():
    assert piece_ranges(0, 4) == [(0, 0)]
    assert piece_ranges(9, 4) == [(0, 4), (4, 8), (8, 9)]


def test_many_sources_share_a_pool_and_keep_their_order():
    rng = np.random.default_rng(1)
    datas = [rng.integers(0, 255, n, dtype=np.uint8) for n in (0, 5, 40, 3, 17)]
    pieces = piece_digests_many([(d.nbytes, buffer_reader(d)) for d in datas], piece=4)
    got = [combined_digest(4, d.nbytes, ds) for d, ds in zip(datas, pieces)]
    assert got == [_by_definition(d.tobytes(), 4) for d in datas]
    assert len(set(got)) == len(got)


def test_a_file_range_hashes_like_the_same_bytes_in_memory(tmp_path):
    data = np.random.default_rng(2).integers(0, 255, 10_000, dtype=np.uint8).tobytes()
    path = tmp_path / "f.bin"
    path.write_bytes(b"head" + data)
    with open(path, "rb") as f:
        assert piecewise_sha256(len(data), file_reader(f.fileno(), 4), piece=999) == _by_definition(data, 999)
        with pytest.raises(EOFError):  # the file holds fewer bytes than asked for
            piecewise_sha256(len(data) + 1, file_reader(f.fileno(), 4), piece=999)


def test_piece_size_and_total_size_are_part_of_the_digest():
    data = bytes(range(64))
    assert piecewise_sha256(64, buffer_reader(data), piece=8) != piecewise_sha256(64, buffer_reader(data), piece=16)
    assert piecewise_sha256(64, buffer_reader(data), piece=8) != hashlib.sha256(data).hexdigest()


def test_file_range_reads_its_bytes_in_any_range_even_after_the_file_is_removed(tmp_path):
    """FileRange (compiler/payload.py), the StoredBlob part over a file: each chunk is a view of one
    reused buffer, so it is consumed before the next is read, as the writer and the hasher do."""
    from compiler.payload import FileRange, StoredBlob

    data = np.random.default_rng(7).integers(0, 256, 3 * (1 << 20) + 123, dtype=np.uint8).tobytes()
    path = tmp_path / "weights.npy"
    path.write_bytes(data)
    offset, nbytes = 1000, len(data) - 1500
    part = FileRange(str(path), offset, nbytes)
    path.unlink()  # the writer reads saved weights from a folder that is removed before the write
    want = data[offset:offset + nbytes]
    for start, end in [(0, nbytes), (1, 2), (nbytes - 7, nbytes), ((1 << 20) - 3, 2 * (1 << 20) + 5)]:
        assert b"".join(bytes(c) for c in part.chunks(start, end)) == want[start:end]
    blob = StoredBlob([(64, part)], 64 + nbytes)
    assert b"".join(bytes(c) for c in blob.chunks()) == bytes(64) + want
    with pytest.raises(ValueError, match="past the file's end"):
        other = tmp_path / "short.bin"
        other.write_bytes(b"12345")
        FileRange(str(other), 2, 4)
