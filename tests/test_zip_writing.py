"""compiler/driver/zip_writing.py: archives that zipfile reads back with every CRC right, big
stored entries aligned and hashed in one pass, zip64 records where a field overflows."""

from __future__ import annotations

import os
import zipfile

import numpy as np
import pytest

from compiler.driver import zip_writing
from compiler.driver.zip_writing import ZipWriter
from compiler.hashing import buffer_reader, piece_digests_many, piecewise_sha256
from compiler.payload import FileRange, StoredBlob

PIECE = 1 << 20  # small pieces: a few MB of blob make several, so the pieces' CRCs are combined


def _blob(tmp_path) -> tuple[StoredBlob, bytes]:
    """A blob of in-memory parts, a file range and zero gaps; and its bytes joined."""
    rng = np.random.default_rng(0)
    first, second = rng.bytes(1_500_000), rng.bytes(2_300_001)
    source = tmp_path / "source.bin"
    source.write_bytes(b"x" * 100 + second)
    parts = [(64, first), (1_600_000, FileRange(str(source), 100, len(second)))]
    size = 1_600_000 + len(second) + 1000
    joined = bytes(64) + first + bytes(1_600_000 - 64 - len(first)) + second + bytes(1000)
    return StoredBlob(parts, size), joined


def _write(path, entries, comment=b"note") -> dict:
    digests = {}
    with open(path, "wb") as f:
        zf = ZipWriter(f.fileno())
        for name, data, mode in entries:
            if isinstance(data, StoredBlob):
                digests[name] = zf.add_blob(name, data, align=4096, piece=PIECE, known_digest=None)
            else:
                zf.add_bytes(name, data, deflate=mode == "deflate")
        size = zf.close(comment)
    assert size == os.path.getsize(path)
    return digests


def test_zipfile_reads_every_entry_back_with_valid_crcs(tmp_path):
    blob, joined = _blob(tmp_path)
    text = b"manifest " * 1000
    path = tmp_path / "a.zip"
    digests = _write(path, [("weights.bin", blob, "blob"), ("manifest.json", text, "deflate"),
                            ("model.onnx", b"\x01\x02" * 10, "store"), ("naïve.txt", b"utf-8 name", "deflate")])
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None  # every entry's CRC-32 checks
        assert zf.comment == b"note"
        assert zf.namelist() == ["weights.bin", "manifest.json", "model.onnx", "naïve.txt"]
        assert zf.read("weights.bin") == joined and zf.read("manifest.json") == text
        info = zf.getinfo("manifest.json")
        assert info.compress_type == zipfile.ZIP_DEFLATED and info.compress_size < len(text)
        assert zf.getinfo("weights.bin").compress_type == zipfile.ZIP_STORED
    starts = blob.segment_starts()
    assert starts == [0, 64, 64 + 1_500_000, 1_600_000, 1_600_000 + 2_300_001]  # parts and the gaps after them
    assert digests["weights.bin"] == piecewise_sha256(len(joined), buffer_reader(joined), PIECE, starts)


def test_a_blob_starts_on_its_alignment(tmp_path):
    blob, joined = _blob(tmp_path)
    path = tmp_path / "a.zip"
    _write(path, [("x" * 7, b"first entry", "store"), ("weights.bin", blob, "blob")])
    data = path.read_bytes()
    offset = data.index(joined[64:64 + 1000]) - 64
    assert offset % 4096 == 0 and data[offset:offset + len(joined)] == joined


def test_the_same_entries_give_the_same_bytes(tmp_path):
    entries = [("weights.bin", _blob(tmp_path)[0], "blob"), ("m.json", b"{}", "deflate")]
    _write(tmp_path / "a.zip", entries)
    _write(tmp_path / "b.zip", entries)
    assert (tmp_path / "a.zip").read_bytes() == (tmp_path / "b.zip").read_bytes()


def test_pieces_the_source_already_hashed_are_not_hashed_again(tmp_path):
    blob, joined = _blob(tmp_path)
    first = blob.parts[0][1]
    asked = []

    def known(part):
        asked.append(part.nbytes)
        # What the source model's hash gave for this part: its pieces, from its own start.
        return piece_digests_many([(part.nbytes, buffer_reader(part))], PIECE)[0] if part is first else None

    with open(tmp_path / "a.zip", "wb") as f:
        zf = ZipWriter(f.fileno())
        digest = zf.add_blob("w", blob, align=4096, piece=PIECE, known_digest=None, known_pieces=known)
        zf.close(b"")
    assert asked == [len(first)]  # asked for the in-memory part only (the other is a file range)
    assert digest == piecewise_sha256(len(joined), buffer_reader(joined), PIECE, blob.segment_starts())


def test_known_pieces_are_what_the_digest_uses(tmp_path):
    # Wrong "known" digests must change the result: the writer uses them instead of hashing.
    blob, joined = _blob(tmp_path)
    with open(tmp_path / "a.zip", "wb") as f:
        zf = ZipWriter(f.fileno())
        digest = zf.add_blob("w", blob, align=4096, piece=PIECE, known_digest=None,
                             known_pieces=lambda part: [bytes(32)] * 2 if part.nbytes == 1_500_000 else None)
        zf.close(b"")
    assert digest != piecewise_sha256(len(joined), buffer_reader(joined), PIECE, blob.segment_starts())


def test_a_known_digest_is_not_recomputed(tmp_path):
    blob, joined = _blob(tmp_path)
    with open(tmp_path / "a.zip", "wb") as f:
        zf = ZipWriter(f.fileno())
        assert zf.add_blob("w", blob, align=4096, piece=PIECE, known_digest="ab" * 32) == "ab" * 32
        zf.close(b"")
    with zipfile.ZipFile(tmp_path / "a.zip") as zf:
        assert zf.testzip() is None and zf.read("w") == joined


def test_sizes_offsets_and_counts_past_the_32_bit_fields_go_to_zip64_records(tmp_path, monkeypatch):
    # Lowered limits stand for 4 GiB and 65535 entries: the same code paths, on small data.
    monkeypatch.setattr(zip_writing, "_ZIP64_LIMIT", 5000)
    monkeypatch.setattr(zip_writing, "_ZIP64_COUNT_LIMIT", 3)
    blob, joined = _blob(tmp_path)
    small = [(f"s{i}", bytes([i]) * 10, "store") for i in range(3)]
    path = tmp_path / "a.zip"
    _write(path, [("weights.bin", blob, "blob"), ("big.txt", b"text " * 3000, "deflate"), *small])
    data = path.read_bytes()
    assert zip_writing._ZIP64_END_SIG in data and zip_writing._ZIP64_LOCATOR_SIG in data
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None
        assert zf.read("weights.bin") == joined and zf.read("big.txt") == b"text " * 3000
        assert [zf.read(n) for n, _, _ in small] == [d for _, d, _ in small]
        assert zf.getinfo("s2").header_offset > 5000  # read back from the zip64 extra field


def test_a_failed_write_raises(tmp_path, monkeypatch):
    blob, _ = _blob(tmp_path)

    def full(fd, data, offset):
        raise OSError(28, "No space left on device")

    with open(tmp_path / "a.zip", "wb") as f:
        zf = ZipWriter(f.fileno())
        monkeypatch.setattr(zip_writing.os, "pwrite", full)
        with pytest.raises(OSError, match="No space left"):
            zf.add_blob("w", blob, align=4096, piece=PIECE, known_digest=None)
