"""Portable llvm artifacts: the manifest records the instruction-set features of each library
variant, load() runs the best variant the host supports and refuses (ArtifactError, nothing
loaded) where none fits, instead of dying with SIGILL. The AVX2-only case runs for real under
``qemu-x86_64 -cpu Haswell`` (tests/cpu_emulation.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("tvm")

import compiler  # noqa: E402
from backends.tvm import cpu  # noqa: E402
from backends.tvm import emit as tvm_emit  # noqa: E402
from backends.tvm import runtime as tvm_runtime  # noqa: E402
from compiler.driver.artifact import read_artifact, write_artifact  # noqa: E402
from compiler.driver.cli import main  # noqa: E402
from compiler.errors import ArtifactError, CompileError  # noqa: E402
from conftest import ROOT  # noqa: E402
from cpu_emulation import needs_qemu, run_as_cpu  # noqa: E402

HOST = cpu.host_features()
AVX512_VNNI = {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl", "avx512vnni"}


class SmallNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.fc1 = torch.nn.Linear(24, 40)
        self.fc2 = torch.nn.Linear(40, 5)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


X = np.random.default_rng(0).standard_normal((3, 24)).astype(np.float32)


def expected() -> np.ndarray:
    with torch.no_grad():
        return SmallNet()(torch.from_numpy(X)).numpy()


def compile_small(path, cpu_name=None):
    return compiler.compile(SmallNet(), (torch.from_numpy(X),), target=compiler.LlvmOptions(cpu=cpu_name),
                            output=path)


@pytest.fixture(scope="module")
def default_artifact(tmp_path_factory):
    path = tmp_path_factory.mktemp("portable") / "small.aot"
    return compile_small(path), path


@pytest.fixture(scope="module")
def znver4_artifact(tmp_path_factory):
    path = tmp_path_factory.mktemp("znver4") / "small-znver4.aot"
    compile_small(path, "znver4")
    return path


def nothing_loaded(monkeypatch):
    """Make writing the library to the cache (the step before TVM loads it) fail the test."""
    def refuse(_data):
        raise AssertionError("a library was extracted for loading")

    monkeypatch.setattr(tvm_runtime, "cached_library", refuse)


# -- the feature sets -------------------------------------------------------------------------------

def test_levels_follow_the_llvm_cpus():
    for mcpu, level, vnni in [("x86-64-v3", "x86-64-v3", False), ("haswell", "x86-64-v3", False),
                              ("x86-64-v4", "x86-64-v4", False), ("cascadelake", "x86-64-v4", True),
                              ("znver4", "x86-64-v4", True)]:
        features = tvm_emit.target_features({"kind": "llvm", "mcpu": mcpu})
        assert (cpu.feature_level(features), cpu.has_vnni(features)) == (level, vnni), mcpu
    assert cpu.feature_level([]) == "x86-64"
    assert cpu.host_summary().count(",") >= 2 and "VNNI" in cpu.host_summary()


def test_portable_variants_run_on_intel_and_amd_avx512_servers():
    """The AVX-512 variant needs nothing a Cascade Lake, Ice Lake, Sapphire Rapids, Zen 4 or Zen 5 lacks."""
    wide = tvm_emit.target_features({"kind": "llvm", **tvm_emit.PORTABLE_VARIANTS[1][1]})
    assert AVX512_VNNI <= set(wide)
    for server in ("cascadelake", "icelake-server", "sapphirerapids", "znver4", "znver5"):
        assert not cpu.missing_features(wide, tvm_emit.target_features({"kind": "llvm", "mcpu": server})), server
    base = tvm_emit.target_features({"kind": "llvm", **tvm_emit.PORTABLE_VARIANTS[0][1]})
    assert not cpu.missing_features(base, tvm_emit.target_features({"kind": "llvm", "mcpu": "haswell"}))


def test_vector_lanes_come_from_the_variant_features():
    import tvm

    from backends.tvm.schedules import vector_lanes

    lanes = [vector_lanes(tvm.target.Target({"kind": "llvm", **attrs})) for _, attrs in tvm_emit.PORTABLE_VARIANTS]
    assert lanes == [8, 16]


# -- choosing a library ------------------------------------------------------------------------------

def test_default_artifact_holds_both_variants_and_they_agree(default_artifact, monkeypatch):
    art, path = default_artifact
    info = art.report.target_info
    names = [v["name"] for v in info["variants"]]
    assert names == [name for name, _ in tvm_emit.PORTABLE_VARIANTS]
    manifest, payload = read_artifact(path)
    assert sorted(payload) == sorted(v["library"] for v in info["variants"])
    assert info["requires"] == {"arch": "x86_64", "os": "linux", "cpu_features": info["variants"][0]["features"]}
    assert "cpu code:   x86-64-v3 (x86-64-v3), x86-64-v4-vnni (x86-64-v4 + VNNI)" in art.report.format()
    # Each variant as a host with exactly its features would pick it; both give the same numbers.
    for variant in info["variants"]:
        host = frozenset(variant["features"])
        library = tvm_runtime.select_library(manifest, payload, host)
        assert library == variant["library"]
        if not cpu.missing_features(variant["features"]):  # this machine can run it
            monkeypatch.setattr(tvm_runtime, "select_library", lambda m, p, h=None, lib=library: lib)
            np.testing.assert_allclose(compiler.load(path)(X), expected(), rtol=1e-4, atol=1e-4)
            monkeypatch.undo()


def test_load_picks_the_avx512_variant_here(default_artifact):
    if not AVX512_VNNI <= HOST:
        pytest.skip(f"this host lacks {', '.join(sorted(AVX512_VNNI - HOST))}")
    _, path = default_artifact
    loaded = compiler.load(path)
    assert loaded._runner.library == "model.x86-64-v4-vnni.so"
    np.testing.assert_allclose(loaded(X), expected(), rtol=1e-4, atol=1e-4)


def test_host_without_avx2_is_refused_naming_the_features(default_artifact):
    _, path = default_artifact
    manifest, payload = read_artifact(path)
    avx_only = frozenset(tvm_emit.target_features({"kind": "llvm", "mcpu": "sandybridge"}))
    with pytest.raises(ArtifactError, match=r"lacks avx2, bmi, bmi2, f16c, fma, lzcnt, movbe.*; recompile it with "
                                            "--cpu host on this machine$"):
        tvm_runtime.select_library(manifest, payload, avx_only)


def test_artifact_for_a_newer_cpu_is_refused_before_loading(tmp_path, monkeypatch):
    newer = set(tvm_emit.target_features({"kind": "llvm", "mcpu": "sapphirerapids"})) - HOST
    if not newer:
        pytest.skip("this host has every feature of sapphirerapids")
    path = tmp_path / "spr.aot"
    art = compile_small(path, "sapphirerapids")
    assert art.report.verification is None and "lacks" in art.report.target_info["not_runnable_reason"]
    nothing_loaded(monkeypatch)
    with pytest.raises(ArtifactError, match="this CPU lacks") as err:
        compiler.load(path)
    assert all(f in str(err.value) for f in newer) and "sapphirerapids" in str(err.value)


@pytest.mark.parametrize("edit, message", [
    (lambda info: info["variants"][1].update(features="avx512f"), r"'target_info.variants' is not a list of \{name, features"),
    (lambda info: info["variants"][0]["features"].append("avx1024"), r"unknown feature\(s\) 'avx1024'"),
    (lambda info: info["variants"][1].update(library="model.other.so"), "does not hold"),
    (lambda info: info.update(variants={}), "'target_info.variants' is not a list"),
    (lambda info: info["requires"].update(cpu_features=[3]), "'target_info.requires.cpu_features' is not a list of names"),
])
def test_malformed_features_in_the_manifest_are_refused(default_artifact, tmp_path, monkeypatch, edit, message):
    _, path = default_artifact
    manifest, payload = read_artifact(path)
    edit(manifest["target_info"])
    bad = tmp_path / "bad.aot"
    write_artifact(bad, manifest, payload)
    nothing_loaded(monkeypatch)
    with pytest.raises(ArtifactError, match="malformed manifest.*" + message):
        compiler.load(bad)


def test_artifact_without_variants_is_checked_against_its_mcpu():
    """Artifacts from before variants were recorded: the features come from LLVM for tvm_target."""
    manifest = {"target_info": {"tvm_target": {"kind": "llvm", "mcpu": "sapphirerapids"}}}
    with pytest.raises(ArtifactError, match="amx-tile"):
        tvm_runtime.select_library(manifest, {"model.so": b""}, frozenset(tvm_emit.target_features(
            {"kind": "llvm", "mcpu": "znver4"})))


def test_non_x86_or_non_linux_host_is_refused(default_artifact, monkeypatch):
    _, path = default_artifact
    manifest, payload = read_artifact(path)
    monkeypatch.setattr(cpu.platform, "machine", lambda: "aarch64")
    with pytest.raises(ArtifactError, match="x86_64 machine code and this host is aarch64"):
        tvm_runtime.select_library(manifest, payload)
    monkeypatch.undo()
    monkeypatch.setattr(cpu.sys, "platform", "darwin")
    with pytest.raises(ArtifactError, match="linux shared object and this host runs darwin"):
        tvm_runtime.select_library(manifest, payload)


# -- options -----------------------------------------------------------------------------------------

def test_unknown_cpu_is_one_line_and_exit_2_before_any_work(tmp_path, capsys):
    out = tmp_path / "m.aot"
    code = main([f"{ROOT / 'models' / 'mlp.py'}:SeedMLP", "--target", "llvm", "--cpu", "znver99", "-o", str(out)])
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if not line.startswith("[compile]")]
    assert code == 2 and len(lines) == 1, err
    assert "unknown --cpu 'znver99'" in lines[0] and "znver4" in lines[0] and "x86-64-v3" in lines[0]
    assert not out.exists()
    with pytest.raises(CompileError, match="unknown --cpu"):
        compiler.compile(SmallNet(), (torch.from_numpy(X),), target=compiler.LlvmOptions(cpu="pentium9"),
                         output=tmp_path / "n.aot")


def test_cpu_host_builds_one_library_for_this_machine():
    import tvm

    [(name, tdict)] = tvm_emit.cpu_variants("host")
    assert tdict == {"kind": "llvm", "mcpu": str(tvm.target.codegen.llvm_get_system_cpu())} and name == tdict["mcpu"]
    assert len(tvm_emit.cpu_variants(None)) == len(tvm_emit.PORTABLE_VARIANTS)


def test_cuda_host_code_is_portable():
    tdict = tvm_emit.target_dict({"target": "cuda", "cuda_arch": "sm_90"})
    assert tdict["host"] == {"kind": "llvm", "mcpu": "x86-64-v3"}


# -- a real AVX2-only CPU (emulated) ------------------------------------------------------------------

LOAD_AND_REPORT = """
import sys, numpy as np, compiler
from compiler.errors import ArtifactError
try:
    m = compiler.load(sys.argv[1] if len(sys.argv) > 1 else {path!r})
except ArtifactError as e:
    print("REFUSED", e)
else:
    np.save({out!r}, m(np.load({x!r})))
    print("LOADED", m._runner.library)
"""


@needs_qemu
@pytest.mark.slow
def test_avx2_only_cpu_refuses_a_znver4_artifact(znver4_artifact, tmp_path):
    result = run_as_cpu(LOAD_AND_REPORT.format(path=str(znver4_artifact), out=str(tmp_path / "y.npy"),
                                               x=str(tmp_path / "x.npy")), timeout=600)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])  # 132 would be SIGILL
    assert "REFUSED this CPU lacks avx512" in result.stdout and "without --cpu" in result.stdout, result.stdout


@needs_qemu
@pytest.mark.slow
def test_avx2_only_cpu_runs_the_default_artifact(default_artifact, tmp_path):
    _, path = default_artifact
    np.save(tmp_path / "x.npy", X)
    result = run_as_cpu(LOAD_AND_REPORT.format(path=str(path), out=str(tmp_path / "y.npy"), x=str(tmp_path / "x.npy")),
                        timeout=900)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert "LOADED model.x86-64-v3.so" in result.stdout, result.stdout
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected(), rtol=1e-4, atol=1e-4)


def test_report_names_the_cpu_code():
    from compiler.driver.report import CompileReport

    single = {"variants": [{"name": "znver4", "mcpu": "znver4", "library": "model.so",
                            "features": tvm_emit.target_features({"kind": "llvm", "mcpu": "znver4"})}]}
    line = [x for x in CompileReport("m", "llvm", target_info=single).format().splitlines() if "cpu code" in x]
    assert line == ["  cpu code:   znver4 (x86-64-v4 + VNNI); one CPU variant (--cpu): CPUs without its features "
                    "refuse to load it"]
    cuda = {"requires": {"gpu_arch": "sm_90", "cpu_features": tvm_emit.target_features(
        tvm_emit.target_dict({"target": "cuda", "cuda_arch": "sm_90"})["host"])}}
    assert "  host code:  x86-64-v3 (cuda sm_90)" in CompileReport("m", "cuda", target_info=cuda).format()
