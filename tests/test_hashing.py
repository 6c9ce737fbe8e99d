"""compiler/hashing.py: the piecewise SHA-256 against its definition, over buffers and files."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from compiler.hashing import buffer_reader, file_reader, piece_ranges, piecewise_sha256, piecewise_sha256_many


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
    got = piecewise_sha256_many([(d.nbytes, buffer_reader(d)) for d in datas], piece=4)
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
