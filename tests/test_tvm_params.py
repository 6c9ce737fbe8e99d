"""llvm artifacts with the weights as parameters (backends/tvm/params.py): the libraries hold code,
``weights.bin`` holds each weight once for all CPU variants (GEMM panels of another width repacked
at load), the runtime maps it from the artifact and refuses a table that points outside it."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

pytest.importorskip("tvm")

import compiler  # noqa: E402
from backends.tvm import cpu  # noqa: E402
from backends.tvm import params as tvm_params  # noqa: E402
from backends.tvm import runtime as tvm_runtime  # noqa: E402
from compiler.driver.artifact import read_artifact  # noqa: E402
from compiler.errors import ArtifactError  # noqa: E402
from weight_tables import DAMAGED_ENTRIES, rewrite_weight_table  # noqa: E402


class ConvLinear(torch.nn.Module):
    """A 3x3 conv (Winograd), a 1x1 conv (packed GEMM), a wide linear (packed GEMM, 32-column
    panels on AVX-512, 16 or 24 on AVX2) and a 300-wide head (zero-padded to 320 columns on
    AVX-512, to 304 on AVX2)."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(8, 32, 3, padding=1)
        self.pointwise = torch.nn.Conv2d(32, 64, 1)
        self.fc = torch.nn.Linear(64 * 6 * 6, 512)
        self.head = torch.nn.Linear(512, 300)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)

    def forward(self, x):
        y = torch.relu(self.pointwise(torch.relu(self.conv(x))))
        return self.head(torch.relu(self.fc(y.flatten(1))))


X = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 8, 6, 6)).astype(np.float32))


def param_bytes(model: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    path = tmp_path_factory.mktemp("params") / "convlinear.aot"
    compiler.compile(ConvLinear().eval(), (X,), target="llvm", output=path, verify=False)
    return path


def expected() -> np.ndarray:
    with torch.no_grad():
        return ConvLinear().eval()(X).numpy()


def test_every_variant_runs_its_lifted_weights_like_eager(artifact, monkeypatch):
    manifest, payload = read_artifact(artifact)
    variants = manifest["target_info"]["variants"]
    assert len(variants) == 2 and all(v.get("params") for v in variants)
    ran = 0
    for variant in variants:
        if cpu.missing_features(variant["features"]):
            continue  # this machine cannot run it
        ran += 1
        # Force each library (the host runs only its best one): the other one's weights include
        # GEMM panels repacked from the stored width.
        monkeypatch.setattr(tvm_runtime, "select_library", lambda m, p, h=None, lib=variant["library"]: lib)
        run = compiler.load(artifact)
        np.testing.assert_allclose(run(X.numpy()), expected(), rtol=1e-4, atol=1e-4)
        monkeypatch.undo()
    assert ran


def test_weights_are_stored_once_for_both_variants(artifact):
    manifest, payload = read_artifact(artifact)
    weights = param_bytes(ConvLinear())
    blob = payload[tvm_params.WEIGHTS_FILE]
    # The Winograd-transformed 3x3 weight is 36/9 times the original: count what was stored.
    table = json.loads(payload[tvm_params.WEIGHTS_TABLE])["tensors"]
    stored = sum(t["length"] for t in table.values())
    assert blob.size < stored + 64 * len(table)
    assert stored < 1.5 * weights
    # The libraries hold code, not weights: the artifact is about one copy of them.
    libraries = sum(len(payload[v["library"]]) for v in manifest["target_info"]["variants"])
    assert libraries < weights
    data = blob.read()
    for t in table.values():
        needle = data[t["offset"]:t["offset"] + min(t["length"], 4096)]
        assert not any(needle in payload[v["library"]] for v in manifest["target_info"]["variants"])
    assert os.path.getsize(artifact) < stored + libraries + (64 << 10)
    # The widest variant uses every stored tensor as it is; the other repacks at least one GEMM panel.
    first, last = manifest["target_info"]["variants"]
    assert all(isinstance(p, str) for p in last["params"])
    repacked = [p for p in first["params"] if isinstance(p, dict)]
    assert any(p["panels"] != table[p["tensor"]]["shape"][2] for p in repacked)
    stored_columns = {p["tensor"]: table[p["tensor"]]["shape"][0] * table[p["tensor"]]["shape"][2] for p in repacked}
    assert any(p["columns"] < stored_columns[p["tensor"]] for p in repacked)  # the head: 304 of 320


def test_weights_are_used_in_place_from_the_artifact_file(artifact):
    manifest, payload = read_artifact(artifact)
    last = manifest["target_info"]["variants"][-1]
    arrays = tvm_runtime.library_params(manifest, payload, last["library"])
    assert arrays and all(isinstance(a.base, np.memmap) or isinstance(a.base.base, np.memmap) for a in arrays)
    import tvm

    tensor = tvm_runtime._tensor(tvm, arrays[0], tvm.cpu(0))
    assert np.from_dlpack(tensor).ctypes.data == arrays[0].ctypes.data  # zero-copy


@pytest.mark.parametrize("change, message", [
    *[((lambda t, damage=damage: damage(t["t0"])), message) for damage, message in DAMAGED_ENTRIES],
    (lambda t: t.pop("t0"), "does not hold"),
])
def test_weight_entry_outside_the_file_is_refused(artifact, tmp_path, change, message):
    rewrite_weight_table(artifact, tmp_path / "bad.aot", change)
    with pytest.raises(ArtifactError, match=message):
        compiler.load(tmp_path / "bad.aot")


def test_small_constants_stay_in_the_library():
    """Below MIN_BYTES a constant stays inline; the one above becomes the parameter after the input."""
    import tvm
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([2, 16], "float32"))
    big, small = np.ones((16, 128), "float32"), np.ones((16,), "float32")
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.matmul(x, relax.const(big)))
            z = bb.emit_output(relax.op.add(relax.op.matmul(x, relax.const(big[:, :16].copy())), relax.const(small)))
            w = bb.emit_output(relax.Tuple([y, z]))
        bb.emit_func_output(w)
    got: list[np.ndarray] = []
    module = bb.get()
    assert tvm_params.lift_constants(module, got.append)[1] == 0 and not got  # under MIN_TOTAL_BYTES
    mod, count = tvm_params.lift_constants(module, got.append, min_total=0)
    assert count == 1 and len(got) == 1 and got[0].shape == (16, 128)
    main = mod["main"]
    assert len(main.params) == 2 and int(main.attrs["num_input"]) == 1
    ex = tvm.compile(mod, target="llvm")
    vm = relax.VirtualMachine(ex, tvm.cpu())
    xs = np.random.default_rng(1).standard_normal((2, 16)).astype("float32")
    out = vm["main"](tvm.runtime.tensor(xs), tvm.runtime.tensor(got[0]))
    np.testing.assert_allclose(out[0].numpy(), xs @ big, rtol=1e-5)
    np.testing.assert_allclose(out[1].numpy(), xs @ big[:, :16] + small, rtol=1e-5)


def test_cuda_library_takes_its_weights_as_parameters():
    """Compile-only (no GPU needed): the cuda module's big weights leave the library for
    weights.bin, listed in ``target_info["params"]``, each one the graph's weight or its transpose
    (legalization folds a linear's transpose into the constant)."""
    from backends.tvm import emit as tvm_emit
    from compiler.ir import DType, Graph, TensorType

    rng = np.random.default_rng(3)
    g = Graph("mlp")
    x = g.add_input("x", TensorType(DType.float32, ("batch", 512)))
    w1 = (rng.standard_normal((1024, 512)) / 8).astype(np.float32)
    w2 = (rng.standard_normal((8, 1024)) / 16).astype(np.float32)
    h = g.op("linear", x, g.add_constant(w1, "w1"), None,
             activation="relu")
    g.set_outputs([g.op("linear", h, g.add_constant(w2, "w2"), None)])
    payload, info = tvm_emit.emit_target(g, {"target": "cuda", "cuda_arch": "sm_80"})
    assert info["params"] and tvm_params.WEIGHTS_FILE in payload
    blob = payload[tvm_params.WEIGHTS_FILE]
    in_memory = {**payload, tvm_params.WEIGHTS_FILE: b"".join(bytes(c) for c in blob.chunks())}
    arrays = tvm_runtime.library_params({"target": "cuda", "target_info": info}, in_memory, "model.so")
    assert len(arrays) == 2  # w1 (2 MiB) and w2 (32 KiB)
    for array in arrays:
        assert any(np.array_equal(array, w) or np.array_equal(array, w.T) for w in (w1, w2))
    library = payload["model.so"]
    assert all(w.tobytes()[:4096] not in library and w.T.copy().tobytes()[:4096] not in library for w in (w1, w2))


@pytest.mark.parametrize("stored, wanted", [((320, 32), (304, 16)), ((304, 16), (320, 32)), ((320, 32), (320, 16))])
def test_repacking_between_panel_widths_and_paddings(stored, wanted):
    """The load-time repack against packing the original weight directly (gemm.py's layout)."""
    w = np.random.default_rng(2).standard_normal((40, 300)).astype(np.float32)

    def packed(columns, panels):
        padded = np.concatenate([w, np.zeros((40, columns - 300), np.float32)], axis=1)
        return np.ascontiguousarray(padded.reshape(40, columns // panels, panels).transpose(1, 0, 2))

    got = tvm_runtime._repacked(packed(*stored), wanted[1], wanted[0], "t0")
    np.testing.assert_array_equal(got, packed(*wanted))
    # The emitter pairs them: the same key for both layouts, so one is stored.
    payload, lists = tvm_params.weights_payload({"a.so": [packed(*wanted)], "b.so": [packed(*stored)]})
    assert len(json.loads(payload[tvm_params.WEIGHTS_TABLE])["tensors"]) == 1
    assert lists["b.so"] == ["t0"] and lists["a.so"] == [{"tensor": "t0", "panels": wanted[1], "columns": wanted[0]}]


# -- packed weights made by the parent (params.DeferredWeights) -----------------------------------
def _packed(w: np.ndarray, columns: int, panel: int) -> np.ndarray:
    padded = np.concatenate([w, np.zeros((w.shape[0], columns - w.shape[1]), w.dtype)], axis=1)
    return np.ascontiguousarray(padded.reshape(w.shape[0], columns // panel, panel).transpose(1, 0, 2))


@pytest.mark.parametrize("columns, panel", [(300, 20), (320, 32), (304, 16)])
def test_panel_packed_bytes_are_the_packed_weight_in_any_range(columns, panel, monkeypatch):
    w = np.random.default_rng(4).standard_normal((70, 300)).astype(np.float32)
    part = tvm_params.PanelPacked(w, panel, columns)
    want = _packed(w, columns, panel)
    assert part.shape == want.shape and part.nbytes == want.nbytes
    monkeypatch.setattr(tvm_params.PanelPacked, "_BLOCK", 3 * part.panel_bytes + 5)  # several blocks
    whole = want.reshape(-1).view(np.uint8)
    for start, end in [(0, part.nbytes), (17, part.nbytes - 3), (part.panel_bytes - 1, part.panel_bytes * 4 + 9)]:
        got = b"".join(bytes(c) for c in part.chunks(start, end))
        assert got == whole[start:end].tobytes()


def test_deferred_weights_store_the_same_tensors_as_packing_in_the_builds(tmp_path, monkeypatch):
    """ConvLinear's 4.7 MB linear weight is packed by recipe (at write), the smaller ones by the
    builds: the same weights.bin as when every build packs its own (the sources threshold raised).
    The builds run in this process here, so that the placeholders can be counted."""
    monkeypatch.setenv("AOT_COMPILE_JOBS", "1")
    made = []
    original = tvm_params.DeferredWeights.placeholder

    def counted(self, *args):
        holder = original(self, *args)
        made.append(holder is not None)
        return holder

    monkeypatch.setattr(tvm_params.DeferredWeights, "placeholder", counted)
    tables = []
    for name, threshold in (("deferred", tvm_params.DEFER_MIN_BYTES), ("eager", 1 << 40)):
        monkeypatch.setattr(tvm_params, "DEFER_MIN_BYTES", threshold)
        path = tmp_path / f"{name}.aot"
        compiler.compile(ConvLinear().eval(), (X,), target="llvm", output=path, verify=False)
        manifest, payload = read_artifact(path)
        tables.append((json.loads(payload[tvm_params.WEIGHTS_TABLE])["tensors"],
                       payload[tvm_params.WEIGHTS_FILE].read(), [v["params"] for v in manifest["target_info"]["variants"]]))
        if name == "deferred":
            assert made.count(True) == 2, made  # the linear, in each variant
    (deferred, data, lists), (packed, eager_data, eager_lists) = tables
    assert lists == eager_lists and deferred.keys() == packed.keys()
    for name, entry in deferred.items():
        assert entry["shape"] == packed[name]["shape"]
        mine = data[entry["offset"]:entry["offset"] + entry["length"]]
        assert mine == eager_data[packed[name]["offset"]:packed[name]["offset"] + packed[name]["length"]], name


def test_a_placeholder_is_always_lifted_and_never_left_in_a_library():
    """A placeholder's pages are never written: lifting takes it whatever the thresholds, and a
    module that still holds one is refused before it could be compiled into a library."""
    from tvm import relax

    from backends.tvm.ops.common import aligned_empty, shared_tensor

    weight = aligned_empty((256, 1024), np.float32)  # 1 MiB: a source
    weight[...] = np.random.default_rng(5).standard_normal(weight.shape)

    def module(const):
        bb = relax.BlockBuilder()
        x = relax.Var("x", relax.TensorType([2, 256], "float32"))
        with bb.function("main", [x]):
            with bb.dataflow():
                out = bb.emit_output(relax.op.add(x, relax.op.sum(const)))
            bb.emit_func_output(out)
        return bb.get()

    source = module(relax.const(shared_tensor(weight)))
    deferred = tvm_params.DeferredWeights(source)
    assert len(deferred.sources) == 1
    holder = deferred.placeholder(deferred.sources[0], 32, 1024)
    assert holder is not None and holder.shape == (32, 256, 32)
    assert deferred.placeholder(np.ones((256, 1024), np.float32), 32, 1024) is None  # not a source
    with_holder = module(relax.const(shared_tensor(holder)))
    with pytest.raises(RuntimeError, match="not lifted"):
        deferred.check_lifted(with_holder)
    got: list = []
    lifted, count = tvm_params.lift_constants(with_holder, got.append, min_bytes=1 << 40, min_total=1 << 40,
                                              forced=deferred.is_placeholder)
    assert count == 1 and deferred.recipe(got[0]) == {"source": 0, "rows": 256, "width": 1024, "panel": 32,
                                                      "columns": 1024}
    deferred.check_lifted(lifted)
    part, keys = deferred.made(deferred.recipe(got[0]))
    assert b"".join(bytes(c) for c in part.chunks(0, part.nbytes)) == _packed(weight, 1024, 32).tobytes()
    assert keys[1] == ("source", 0)
