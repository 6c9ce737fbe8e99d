"""The one-file artifact: round trip, atomic writes, and refusal of damaged or tampered files."""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest

from compiler.driver import artifact, zip_writing
from compiler.driver.artifact import (FORMAT_NAME, FORMAT_VERSION, read_artifact, read_manifest, sha256_bytes,
                               sha256_file, write_artifact)
from compiler.errors import ArtifactError, CompileError

MANIFEST = {"target": "onnx", "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}],
            "outputs": [{"name": "y", "dtype": "float32", "shape": ["batch", 4]}], "note": "héllo"}


@pytest.fixture
def payload():
    rng = np.random.default_rng(0)
    return {"model.onnx": rng.bytes(5000), "weights.bin": b"\x00\x01" * 100}


@pytest.fixture
def art(tmp_path, payload):
    path = tmp_path / "m.aot"
    write_artifact(path, MANIFEST, payload)
    return path


def rewrite(src, dst, *, manifest_fn=None, payload_fn=None, comment=None, extra=None, drop=None):
    """Copy the artifact zip ``src`` to ``dst``, optionally changing entries (keeping the comment)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        zout.comment = zin.comment if comment is None else comment
        for info in zin.infolist():
            if info.filename == drop:
                continue
            data = zin.read(info)
            if info.filename == "manifest.json" and manifest_fn:
                data = json.dumps(manifest_fn(json.loads(data)), sort_keys=True, indent=2).encode()
            elif info.filename != "manifest.json" and payload_fn:
                data = payload_fn(info.filename, data)
            zout.writestr(info.filename, data)
        for name, data in (extra or {}).items():
            zout.writestr(name, data)
    return dst


def leftovers(directory):
    return sorted(n for n in os.listdir(directory) if n.endswith(".tmp"))


def test_round_trip(art, payload):
    manifest, got = read_artifact(art)
    assert got == payload
    assert manifest["format"] == FORMAT_NAME and manifest["format_version"] == FORMAT_VERSION
    assert manifest["inputs"] == MANIFEST["inputs"] and manifest["note"] == "héllo"
    assert manifest["payload"]["model.onnx"] == {"sha256": sha256_bytes(payload["model.onnx"]), "size": 5000}
    assert read_manifest(art) == manifest
    assert "format" not in MANIFEST  # the caller's dict is not modified


def test_write_returns_size_and_hashes_agree(tmp_path, payload):
    path = tmp_path / "m.aot"
    size = write_artifact(str(path), MANIFEST, payload)
    assert size == path.stat().st_size > 0
    assert sha256_file(path) == sha256_bytes(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        assert zf.comment.decode() == sha256_bytes(zf.read("manifest.json"))
        assert json.loads(zf.read("manifest.json"))["target"] == "onnx"


def test_same_inputs_give_identical_bytes(tmp_path, payload):
    a, b = tmp_path / "a.aot", tmp_path / "b.aot"
    write_artifact(a, MANIFEST, payload)
    write_artifact(b, MANIFEST, payload)
    assert a.read_bytes() == b.read_bytes()


def test_empty_payload_round_trips(tmp_path):
    path = tmp_path / "m.aot"
    write_artifact(path, {"target": "x"}, {})
    manifest, payload = read_artifact(path)
    assert payload == {} and manifest["payload"] == {}


def test_atomic_write_leaves_no_temp_files_and_replaces(tmp_path, payload):
    path = tmp_path / "m.aot"
    write_artifact(path, MANIFEST, payload)
    write_artifact(path, {**MANIFEST, "note": "second"}, payload)
    assert os.listdir(tmp_path) == ["m.aot"]
    assert read_manifest(path)["note"] == "second"
    mask = os.umask(0)
    os.umask(mask)
    assert (path.stat().st_mode & 0o777) == (0o666 & ~mask)


def test_missing_output_directory(tmp_path, payload):
    path = tmp_path / "nope" / "m.aot"
    with pytest.raises(ArtifactError, match="output directory does not exist: .*nope .*create it first"):
        write_artifact(path, MANIFEST, payload)
    assert not path.parent.exists()
    assert os.listdir(tmp_path) == []


def test_output_path_is_a_directory(tmp_path, payload):
    with pytest.raises(ArtifactError, match="is a directory"):
        write_artifact(tmp_path, MANIFEST, payload)
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_directory(tmp_path, payload):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(ArtifactError, match="cannot write artifact .*m.aot: Permission denied"):
            write_artifact(ro / "m.aot", MANIFEST, payload)
    finally:
        ro.chmod(0o700)
    assert os.listdir(ro) == []


def test_existing_file_untouched_when_manifest_is_not_json(art, payload):
    before = art.read_bytes()
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        write_artifact(art, {**MANIFEST, "bad": object()}, payload)
    assert art.read_bytes() == before
    assert leftovers(art.parent) == []


def test_existing_file_untouched_when_write_fails_midway(art, payload, monkeypatch):
    before = art.read_bytes()
    seen = []
    real_pwrite = zip_writing.os.pwrite

    def pwrite_then_fail(fd, data, offset):
        if offset > 0:  # the first entry's header went through: the temp file has bytes
            seen.append(leftovers(art.parent))
            raise OSError(28, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(zip_writing.os, "pwrite", pwrite_then_fail)
    with pytest.raises(ArtifactError, match="cannot write artifact .*m.aot: No space left on device"):
        write_artifact(art, {**MANIFEST, "note": "new"}, payload)
    monkeypatch.setattr(zip_writing.os, "pwrite", real_pwrite)
    assert seen and seen[0] and seen[0][0].startswith(".m.aot.")
    assert art.read_bytes() == before
    assert leftovers(art.parent) == [] and os.listdir(art.parent) == ["m.aot"]


def test_failed_write_to_new_path_leaves_nothing(tmp_path, payload, monkeypatch):
    def failing_replace(src, dst):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(artifact.os, "replace", failing_replace)
    with pytest.raises(ArtifactError, match="Input/output error"):
        write_artifact(tmp_path / "m.aot", MANIFEST, payload)
    assert os.listdir(tmp_path) == []


def test_invalid_payload_name(tmp_path):
    with pytest.raises(ValueError, match="invalid payload file name"):
        write_artifact(tmp_path / "m.aot", MANIFEST, {"manifest.json": b"x"})


def test_missing_file(tmp_path):
    with pytest.raises(ArtifactError, match="artifact not found: .*missing.aot"):
        read_artifact(tmp_path / "missing.aot")


def test_directory_is_not_an_artifact(tmp_path):
    with pytest.raises(ArtifactError, match="is a directory"):
        read_artifact(tmp_path)


def test_tampered_payload_detected(art, tmp_path, payload):
    def flip(name, data):
        if name != "model.onnx":
            return data
        return data[:100] + bytes([data[100] ^ 0xFF]) + data[101:]

    bad = rewrite(art, tmp_path / "bad.aot", payload_fn=flip)
    want = sha256_bytes(payload["model.onnx"])
    with pytest.raises(ArtifactError, match=rf"failed its integrity check: payload file model.onnx has sha256 "
                                            rf"[0-9a-f]{{64}}, manifest says {want} .*recompile it"):
        read_artifact(bad)
    read_manifest(bad)  # the payload is not hashed there: sizes still agree


def test_payload_of_other_size_detected_by_both_readers(art, tmp_path):
    bad = rewrite(art, tmp_path / "bad.aot", payload_fn=lambda n, d: d + b"!" if n == "weights.bin" else d)
    for reader in (read_artifact, read_manifest):
        with pytest.raises(ArtifactError, match="integrity check: payload file weights.bin has 201 bytes"):
            reader(bad)


def test_flipped_byte_in_file_detected(art, tmp_path):
    data = bytearray(art.read_bytes())
    with zipfile.ZipFile(art) as zf:
        info = zf.getinfo("model.onnx")
    data[info.header_offset + 30 + len("model.onnx") + 50] ^= 0xFF  # inside the compressed payload
    bad = tmp_path / "bad.aot"
    bad.write_bytes(bytes(data))
    with pytest.raises(ArtifactError):
        read_artifact(bad)


def test_tampered_manifest_detected(art, tmp_path):
    bad = rewrite(art, tmp_path / "bad.aot", manifest_fn=lambda m: {**m, "target": "llvm"})
    for reader in (read_artifact, read_manifest):
        with pytest.raises(ArtifactError, match="manifest was modified after it was written"):
            reader(bad)


def test_missing_zip_comment(art, tmp_path):
    bad = rewrite(art, tmp_path / "bad.aot", comment=b"")
    with pytest.raises(ArtifactError, match="truncated or corrupt .*no manifest hash"):
        read_artifact(bad)


def test_missing_manifest(art, tmp_path):
    bad = rewrite(art, tmp_path / "bad.aot", drop="manifest.json")
    with pytest.raises(ArtifactError, match="no manifest.json"):
        read_artifact(bad)


def test_missing_payload_file(art, tmp_path):
    bad = rewrite(art, tmp_path / "bad.aot", drop="weights.bin")
    with pytest.raises(ArtifactError, match="payload file weights.bin listed in the manifest is missing"):
        read_artifact(bad)


def test_extra_file_rejected(art, tmp_path):
    bad = rewrite(art, tmp_path / "bad.aot", extra={"evil.py": b"print('hi')"})
    with pytest.raises(ArtifactError, match="evil.py, which the manifest does not list"):
        read_artifact(bad)


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9, 0.99, 0.999])
def test_truncated_file_rejected(art, tmp_path, fraction):
    data = art.read_bytes()
    bad = tmp_path / "bad.aot"
    bad.write_bytes(data[:int(len(data) * fraction)])
    with pytest.raises(ArtifactError, match="is not a valid artifact: file is truncated or corrupt"):
        read_artifact(bad)


@pytest.mark.parametrize("data", [b"", b"PK", os.urandom(4096), b"PK\x05\x06" + bytes(18)])
def test_random_bytes_rejected(tmp_path, data):
    bad = tmp_path / "bad.aot"
    bad.write_bytes(data)
    with pytest.raises(ArtifactError, match="is not a valid artifact"):
        read_artifact(bad)


def test_future_format_version_rejected(art, tmp_path):
    def future(m):
        return {**m, "format_version": FORMAT_VERSION + 1}

    manifest_bytes = json.dumps(future(read_manifest(art)), sort_keys=True, indent=2).encode()
    bad = rewrite(art, tmp_path / "bad.aot", manifest_fn=future, comment=sha256_bytes(manifest_bytes).encode())
    with pytest.raises(ArtifactError, match=f"format version {FORMAT_VERSION + 1}.*upgrade the compiler"):
        read_artifact(bad)


def test_other_format_rejected(art, tmp_path):
    def other(m):
        return {**m, "format": "something-else"}

    manifest_bytes = json.dumps(other(read_manifest(art)), sort_keys=True, indent=2).encode()
    bad = rewrite(art, tmp_path / "bad.aot", manifest_fn=other, comment=sha256_bytes(manifest_bytes).encode())
    with pytest.raises(ArtifactError, match="not an aot-artifact file"):
        read_artifact(bad)


def test_errors_are_compile_errors_with_one_line_messages(tmp_path):
    bad = tmp_path / "bad.aot"
    bad.write_bytes(b"garbage")
    with pytest.raises(CompileError) as info:
        read_artifact(bad)
    assert "\n" not in str(info.value)


def test_every_truncation_and_byte_flip_is_caught(tmp_path):
    """No prefix of an artifact loads, and no single flipped byte yields different contents."""
    path = tmp_path / "m.aot"
    write_artifact(path, {"target": "onnx"}, {"model.onnx": bytes(range(256)) * 2})
    data = path.read_bytes()
    original = read_artifact(path)
    bad = tmp_path / "bad.aot"
    for n in range(len(data)):
        bad.write_bytes(data[:n])
        with pytest.raises(ArtifactError):
            read_artifact(bad)
    for i in range(len(data)):
        flipped = bytearray(data)
        flipped[i] ^= 0x55
        bad.write_bytes(bytes(flipped))
        try:
            got = read_artifact(bad)
        except ArtifactError:
            continue
        assert got == original, f"flipping byte {i} changed the contents without an error"


def test_appended_bytes_are_rejected(tmp_path):
    path = tmp_path / "a.aot"
    write_artifact(path, {"target": "onnx"}, {"model.onnx": b"payload"})
    with open(path, "ab") as f:
        f.write(b"x")
    with pytest.raises(ArtifactError, match="follows the end"):
        read_artifact(path)
