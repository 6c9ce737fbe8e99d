"""Big models: weights stored (not deflated) as ONNX external data in one page-aligned, memory-mapped
``weights.bin`` entry; checks on the model without its weight bytes; bad offsets and a full disk
refused with one-line errors. Every numeric check is differential (artifact vs the reference
interpreter or PyTorch eager)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import threading
import zipfile

import numpy as np
import pytest
import torch

import compiler
from backends.onnx import emit as onnx_emit
from backends.onnx.emit import EXTERNAL_MIN_BYTES, emit_onnx, emit_target
from backends.onnx.runtime import external_weights, load_runner, session_from_model
from compiler.driver import artifact, zip_writing
from compiler.driver.artifact import BLOB_ALIGN, MappedEntry, read_artifact, write_artifact
from compiler.errors import ArtifactError
from compiler.interpreter import run_graph
from compiler.ir import DType, Graph, TensorType
from compiler.payload import StoredBlob
from compiler.weight_table import TENSOR_ALIGN
from weight_tables import DAMAGED_ENTRIES, rewrite_weight_table


@pytest.fixture(autouse=True)
def external_always(monkeypatch):
    """Small models here, so external data for any size (real ones switch at 1 MiB)."""
    monkeypatch.setattr(onnx_emit, "EXTERNAL_DATA_MIN_TOTAL", 0)


def _mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)).eval()


def _graph(rng) -> Graph:
    g = Graph("ext")
    x = g.add_input("x", TensorType(DType.float32, ("batch", 64)))
    w1 = g.add_constant(rng.standard_normal((64, 96), dtype=np.float32), "w1")
    w2 = g.add_constant(rng.standard_normal((96, 8), dtype=np.float32), "w2")
    shift = g.add_constant(np.arange(8, dtype=np.float32), "shift")  # small: stays in the model
    h = g.op("relu", g.op("matmul", x, w1))
    g.set_outputs([g.op("add", g.op("matmul", h, w2), shift)])
    return g


def _data_offset(path, name: str) -> int:
    """Where entry ``name``'s bytes start in the zip file, read from its local header."""
    with zipfile.ZipFile(path) as zf, open(path, "rb") as f:
        info = zf.getinfo(name)
        f.seek(info.header_offset)
        header = f.read(30)
    return info.header_offset + 30 + int.from_bytes(header[26:28], "little") + int.from_bytes(header[28:30], "little")


# -- writing: stored, aligned ----------------------------------------------------------------------
def test_incompressible_payload_is_stored_text_is_deflated(tmp_path):
    rng = np.random.default_rng(0)
    weights = rng.standard_normal(50_000).astype(np.float32).tobytes()
    text = b"layer " * 40_000
    write_artifact(tmp_path / "a.aot", {"target": "x"}, {"w": weights, "t": text})
    with zipfile.ZipFile(tmp_path / "a.aot") as zf:
        kinds = {i.filename: i.compress_type for i in zf.infolist()}
    assert kinds == {"manifest.json": zipfile.ZIP_DEFLATED, "w": zipfile.ZIP_STORED, "t": zipfile.ZIP_DEFLATED}
    _, payload = read_artifact(tmp_path / "a.aot")
    assert payload == {"w": weights, "t": text}


def test_library_of_mostly_weights_is_stored(tmp_path):
    # A compiled library: compressible headers and code at both ends, weights between. Deflating
    # it saves a few percent and costs seconds per 100 MB.
    rng = np.random.default_rng(1)
    code = b"\x00\x48\x8b\x05" * 16_384
    library = code + rng.standard_normal(1_000_000).astype(np.float32).tobytes() + code
    write_artifact(tmp_path / "a.aot", {"target": "x"}, {"model.so": library, "small.so": code})
    with zipfile.ZipFile(tmp_path / "a.aot") as zf:
        kinds = {i.filename: i.compress_type for i in zf.infolist()}
    assert kinds["model.so"] == zipfile.ZIP_STORED and kinds["small.so"] == zipfile.ZIP_DEFLATED
    assert read_artifact(tmp_path / "a.aot")[1]["model.so"] == library


def test_stored_blob_is_page_aligned_mapped_and_hashed(tmp_path):
    a = np.arange(1000, dtype=np.float32)
    b = np.arange(7, dtype=np.int64)
    blob = StoredBlob([(0, a), (4096, b)], 4096 + b.nbytes)
    for prefix in ("", "a" * 13):  # header lengths differ: the padding must still align the data
        path = tmp_path / f"{prefix}m.aot"
        write_artifact(path, {"target": "x"}, {prefix + "weights.bin": blob, "note": b"hi"})
        manifest, payload = read_artifact(path)
        entry = payload[prefix + "weights.bin"]
        assert isinstance(entry, MappedEntry) and manifest["payload"][prefix + "weights.bin"]["mapped"]
        assert entry.offset % BLOB_ALIGN == 0 and entry.offset == _data_offset(path, prefix + "weights.bin")
        data = entry.read()
        assert data[:a.nbytes] == a.tobytes() and data[4096:] == b.tobytes() and data[a.nbytes:4096] == bytes(4096 - a.nbytes)
        with zipfile.ZipFile(path) as zf:
            assert zf.testzip() is None  # a standard zip: CRCs right, padding extra field accepted


def test_stored_blob_tampered_or_moved_is_refused(tmp_path):
    blob = StoredBlob([(0, np.ones(2048, np.float32))], 8192)
    path = tmp_path / "m.aot"
    write_artifact(path, {"target": "x"}, {"weights.bin": blob})
    good = path.read_bytes()
    offset = _data_offset(path, "weights.bin")
    flipped = bytearray(good)
    flipped[offset + 100] ^= 1
    path.write_bytes(bytes(flipped))
    with pytest.raises(ArtifactError, match="weights.bin has sha256"):
        read_artifact(path)
    # a local header whose extra field claims 64 KiB: the data would run into the central directory
    header_at = good.rindex(b"PK\x03\x04", 0, offset)  # weights.bin's local header
    moved = bytearray(good)
    moved[header_at + 28:header_at + 30] = (0xFFFF).to_bytes(2, "little")
    path.write_bytes(bytes(moved))
    with pytest.raises(ArtifactError, match="runs past the end|sha256"):
        read_artifact(path)


def _rewrite_manifest(src, dst, change) -> None:
    """Copy artifact ``src`` to ``dst`` with ``change`` applied to its manifest, the archive's
    manifest hash redone (the payload entries keep their bytes)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        manifest = json.loads(zin.read("manifest.json"))
        change(manifest)
        manifest_bytes = json.dumps(manifest, sort_keys=True, indent=2).encode()
        zout.comment = hashlib.sha256(manifest_bytes).hexdigest().encode()
        zout.writestr("manifest.json", manifest_bytes)
        for info in zin.infolist():
            if info.filename != "manifest.json":
                zout.writestr(info.filename, zin.read(info))


def test_mapped_entry_hash_is_piecewise_and_covers_every_piece(tmp_path, monkeypatch):
    piece = 1 << 20
    monkeypatch.setattr(artifact, "PIECE", piece)
    data = np.random.default_rng(0).integers(0, 255, 3 * piece + 12345, dtype=np.uint8)  # 4 pieces
    path = tmp_path / "m.aot"
    write_artifact(path, {"target": "x"}, {"weights.bin": StoredBlob([(0, data)], data.nbytes)})
    entry = read_artifact(path)[0]["payload"]["weights.bin"]
    digests = b"".join(hashlib.sha256(data[i:i + piece]).digest() for i in range(0, data.nbytes, piece))
    assert entry["piece"] == piece
    assert entry["sha256"] == hashlib.sha256(f"sha256-pieces:{piece}:{data.nbytes}:".encode() + digests).hexdigest()
    good, offset = path.read_bytes(), _data_offset(path, "weights.bin")
    for at in (0, 2 * piece + 7, data.nbytes - 1):  # the first, a middle and the last piece
        damaged = bytearray(good)
        damaged[offset + at] ^= 0x10
        path.write_bytes(bytes(damaged))
        with pytest.raises(ArtifactError, match="weights.bin has sha256"):
            read_artifact(path)


def test_format_1_mapped_entry_hashed_as_one_stream_still_reads(tmp_path):
    data = np.arange(5000, dtype=np.float32)
    path, old = tmp_path / "m.aot", tmp_path / "old.aot"
    write_artifact(path, {"target": "x"}, {"weights.bin": StoredBlob([(0, data)], data.nbytes)})

    def version_1(sha):
        def change(manifest):
            manifest["format_version"] = 1
            entry = manifest["payload"]["weights.bin"]
            del entry["piece"]
            entry["sha256"] = sha
        return change

    _rewrite_manifest(path, old, version_1(hashlib.sha256(data.tobytes()).hexdigest()))
    assert read_artifact(old)[1]["weights.bin"].read() == data.tobytes()
    _rewrite_manifest(path, old, version_1(hashlib.sha256(data[1:].tobytes()).hexdigest()))
    with pytest.raises(ArtifactError, match="weights.bin has sha256"):
        read_artifact(old)


@pytest.mark.parametrize("piece", [1, 4096, (1 << 20) + 1, 2 << 30, "64", None, True])
def test_mapped_entry_piece_size_outside_the_rule_is_refused(tmp_path, piece):
    path, bad = tmp_path / "m.aot", tmp_path / "bad.aot"
    write_artifact(path, {"target": "x"}, {"weights.bin": StoredBlob([(0, np.ones(64, np.float32))], 256)})
    _rewrite_manifest(path, bad, lambda m: m["payload"]["weights.bin"].update(piece=piece))
    with pytest.raises(ArtifactError, match="no valid payload table"):
        read_artifact(bad)


# -- the ONNX backend ------------------------------------------------------------------------------
def test_small_models_keep_weights_in_the_model(monkeypatch):
    monkeypatch.setattr(onnx_emit, "EXTERNAL_DATA_MIN_TOTAL", 1 << 20)
    payload, _ = emit_target(_graph(np.random.default_rng(2)), {})
    assert set(payload) == {"model.onnx"}


def test_emit_target_puts_big_constants_in_weights_bin(tmp_path):
    rng = np.random.default_rng(1)
    g = _graph(rng)
    payload, _info = emit_target(g, {})
    table = json.loads(payload["weights.json"])["tensors"]
    assert set(table) == {"w1", "w2"}  # shift is below EXTERNAL_MIN_BYTES
    assert all(t["offset"] % TENSOR_ALIGN == 0 for t in table.values())
    assert len(payload["model.onnx"]) < min(t["length"] for t in table.values())  # no weight bytes inside
    x = rng.standard_normal((3, 64), dtype=np.float32)
    want = run_graph(g, [x])
    # the external-data artifact, the embedded model and the interpreter agree
    write_artifact(tmp_path / "e.aot", {"target": "onnx"}, payload)
    manifest, read = read_artifact(tmp_path / "e.aot")
    run = load_runner(manifest, read, threads=1)
    embedded = session_from_model(emit_onnx(g).SerializeToString(), threads=1)
    np.testing.assert_allclose(run([x])[0], want[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(embedded.run(None, {"x": x})[0], want[0], rtol=1e-5, atol=1e-5)
    assert EXTERNAL_MIN_BYTES > np.arange(8, dtype=np.float32).nbytes


def test_compile_stores_aligned_weights_and_loads_them_mapped(tmp_path):
    model = _mlp()
    x = torch.randn(4, 64)
    path = tmp_path / "mlp.aot"
    compiler.compile(model, (x,), target="onnx", output=path)  # verification on: artifact vs PyTorch
    with zipfile.ZipFile(path) as zf:
        assert zf.getinfo("weights.bin").compress_type == zipfile.ZIP_STORED
    assert _data_offset(path, "weights.bin") % BLOB_ALIGN == 0
    loaded = compiler.load(path)
    with torch.no_grad():
        np.testing.assert_allclose(loaded(x.numpy()), model(x).numpy(), rtol=1e-5, atol=1e-5)


class _ConvBN(torch.nn.Module):
    """Conv + BatchNorm with weights over the external-data threshold: onnxruntime's optimizer
    fuses the pair and reads the initializers as it does so (a runtime that hands weights over
    in a way the optimizer does not see fails to load this, as an add_initializer attempt did)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.bn = torch.nn.Conv2d(64, 128, 3, padding=1), torch.nn.BatchNorm2d(128)
        self.fc = torch.nn.Linear(128, 2048)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def test_conv_batchnorm_with_external_weights_loads_and_matches(tmp_path):
    model, x = _ConvBN().eval(), torch.randn(1, 64, 8, 8)
    art = compiler.compile(model, (x,), target="onnx", output=tmp_path / "m.aot")
    assert "weights.bin" in read_artifact(art.path)[1]
    np.testing.assert_allclose(compiler.load(art.path)(x.numpy()), model(x).detach().numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("damage, message", DAMAGED_ENTRIES)
def test_weight_offsets_outside_the_entry_are_refused(tmp_path, damage, message):
    path = tmp_path / "mlp.aot"
    compiler.compile(_mlp(), (torch.randn(2, 64),), target="onnx", output=path, verify=False)
    rewrite_weight_table(path, tmp_path / "bad.aot", lambda t: damage(t["0_weight"]))
    with pytest.raises(ArtifactError, match=message):
        compiler.load(tmp_path / "bad.aot")


def test_weight_missing_from_the_table_is_never_read_from_the_working_directory(tmp_path, monkeypatch):
    path = tmp_path / "mlp.aot"
    compiler.compile(_mlp(), (torch.randn(2, 64),), target="onnx", output=path, verify=False)
    rewrite_weight_table(path, tmp_path / "bad.aot", lambda t: t.pop("0_weight"))
    (tmp_path / "weights.bin").write_bytes(bytes(1 << 20))  # what onnxruntime would read by default
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ArtifactError, match="onnxruntime cannot load"):
        compiler.load(tmp_path / "bad.aot")


def test_external_weights_are_read_only_views_of_the_file(tmp_path):
    path = tmp_path / "mlp.aot"
    compiler.compile(_mlp(), (torch.randn(2, 64),), target="onnx", output=path, verify=False)
    _, payload = read_artifact(path)
    weights = external_weights(payload)
    assert weights and all(not w.flags.writeable for w in weights.values())
    assert all(isinstance(w.base, np.memmap) for w in weights.values())


# -- a full disk -----------------------------------------------------------------------------------
def _fill_disk_after(monkeypatch, room: int) -> None:
    """Make the artifact writer's pwrite calls fail with ENOSPC once ``room`` bytes are written."""
    real, written, lock = zip_writing.os.pwrite, [0], threading.Lock()

    def pwrite(fd, data, offset):
        with lock:
            written[0] += memoryview(data).nbytes
            if written[0] > room:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data, offset)

    monkeypatch.setattr(zip_writing.os, "pwrite", pwrite)


def test_disk_full_while_writing_weights_keeps_the_old_artifact(tmp_path, monkeypatch):
    path = tmp_path / "mlp.aot"
    model, x = _mlp(), torch.randn(2, 64)
    compiler.compile(model, (x,), target="onnx", output=path, verify=False)
    before = path.read_bytes()
    _fill_disk_after(monkeypatch, room=20_000)  # runs out inside weights.bin
    with pytest.raises(ArtifactError) as info:
        compiler.compile(_mlp(seed=1), (x,), target="onnx", output=path, verify=False)
    message = str(info.value)
    assert "No space left on device" in message and "\n" not in message and "mlp.aot" in message
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["mlp.aot"]  # no temp file left behind


# -- an artifact larger than the memory the process can take -------------------------------------
def test_artifact_larger_than_the_free_memory_is_refused_before_the_runtime_allocates(tmp_path, monkeypatch):
    from compiler import memory

    path = tmp_path / "mlp.aot"
    compiler.compile(_mlp(), (torch.randn(2, 64),), target="onnx", output=path, verify=False)
    weights = read_artifact(path)[1]["weights.bin"].size
    monkeypatch.setattr(memory, "available_bytes", lambda: weights - 1)
    with pytest.raises(ArtifactError, match=r"needs about \d+ MiB of memory \(its 0 MiB of weights\).*can take"):
        compiler.load(path)
    monkeypatch.setattr(memory, "available_bytes", lambda: weights)
    compiler.load(path)  # just enough


_LIMITED = """
import resource, sys
import onnxruntime  # the runtime's own address space first: only the room left is limited
import compiler
from compiler.errors import ArtifactError
from compiler.memory import _read_fields

size = _read_fields("/proc/self/status")["VmSize"]
resource.setrlimit(resource.RLIMIT_AS, (size + int(sys.argv[2]), resource.RLIM_INFINITY))
try:
    compiler.load(sys.argv[1])
except ArtifactError as exc:
    print("REFUSED", exc)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the address space from /proc")
def test_artifact_larger_than_the_address_space_limit_is_refused_with_one_line(tmp_path):
    """``ulimit -v`` leaves the process less room than the weights: a clear error, no abort."""
    import subprocess
    import sys

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1024, 4096), torch.nn.ReLU(), torch.nn.Linear(4096, 1024)).eval()
    path = tmp_path / "mlp.aot"
    compiler.compile(model, (torch.randn(1, 1024),), target="onnx", output=path, verify=False)  # 32 MiB
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # One malloc arena: each thread's own would reserve 64 MiB of address space (the reader hashes on every core).
    proc = subprocess.run([sys.executable, "-c", _LIMITED, str(path), str(24 << 20)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": root, "MALLOC_ARENA_MAX": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = proc.stdout.strip()
    assert line.startswith("REFUSED") and "needs about 32 MiB of memory" in line and "\n" not in line


# -- beyond protobuf's 2 GB ------------------------------------------------------------------------
def _available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


@pytest.mark.slow
def test_model_over_2gb_compiles_and_loads(tmp_path):
    if _available_bytes() < 9 << 30:
        pytest.skip("needs about 9 GB of free memory (the model, its compile and load)")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16384, 16384), torch.nn.ReLU(),
                                torch.nn.Linear(16384, 16384)).eval()  # 2.15 GB of float32
    x = torch.randn(1, 16384)
    path = tmp_path / "big.aot"
    with torch.no_grad():
        compiler.compile(model, (x,), target="onnx", output=path, verify=False)
        want = model(x).numpy()
    del model
    assert os.path.getsize(path) > 2 << 30
    np.testing.assert_allclose(compiler.load(path)(x.numpy()), want, rtol=1e-4, atol=1e-4)
