"""The `compiler` command (info, run, bench) on artifacts compiled once per module: descriptions
checked against the manifest and the compile result, outputs against load(), and every bad input
as one line with exit status 2."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib

import numpy as np
import pytest
import torch

import compiler
from compiler.driver import tool
from compiler.driver.artifact import read_artifact, read_manifest, write_artifact
from conftest import ROOT
from models import SeedMLP, TinyTransformer

VOCAB, SEQ = 50, 8


class TwoInputs(torch.nn.Module):
    """Two inputs of different dtypes and two outputs: tells inputs given by name from inputs in
    signature order."""

    def forward(self, x, scale):
        return x * scale.to(x.dtype) + 1, (x - scale.to(x.dtype)).sum(dim=1)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("tool")


@pytest.fixture(scope="module")
def onnx_art(work):
    """A zoo transformer (int64 token input) with a symbolic batch."""
    model = TinyTransformer(vocab=VOCAB, seq_len=SEQ, d_model=32, n_heads=2, d_ff=64, n_layers=1)
    return compiler.compile(model, model.example_inputs(2), target="onnx", output=work / "tt.aot",
                            dynamic_batch=True)


@pytest.fixture(scope="module")
def two_art(work):
    """A static artifact (batch 2) with two inputs and two outputs."""
    example = (torch.randn(2, 3), torch.randint(0, 4, (2, 3)))
    return compiler.compile(TwoInputs(), example, target="onnx", output=work / "two.aot")


@pytest.fixture(scope="module")
def llvm_art(work):
    pytest.importorskip("tvm")
    model = SeedMLP(in_features=16, hidden=(8, 8))
    return compiler.compile(model, model.example_inputs(2), target="llvm", output=work / "mlp.aot", verify=False)


def run_tool(capsys, *args):
    code = tool.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def sig(entry) -> str:
    return f"{entry['name']}: {entry['dtype']}[{', '.join(str(d) for d in entry['shape'])}]"


# -- info ------------------------------------------------------------------------------------------
def test_info_text_shows_target_signature_sizes_versions_and_the_compile_report(onnx_art, capsys):
    code, out, err = run_tool(capsys, "info", onnx_art.path)
    assert code == 0, err
    manifest = read_manifest(onnx_art.path)
    assert "target:      onnx" in out
    assert f"inputs:      {sig(manifest['inputs'][0])}" in out and "[batch, 8]" in out
    assert f"outputs:     {sig(manifest['outputs'][0])}" in out
    assert "passes:      " + ", ".join(manifest["passes"]) in out
    assert f"parameters:  {manifest['report']['parameters']:,}" in out
    for name in manifest["payload"]:
        assert name in out
    for package, version in manifest["tool_versions"].items():
        assert f"{package} {version}" in out
    # The compile report, as compile() formatted it. Two lines may differ: the artifact size was
    # taken before the file's last rewrite, and the manifest stores the phase times sorted by name.
    for line in onnx_art.report.format().splitlines():
        if not line.lstrip().startswith(("artifact:", "time:")):
            assert line in out, line
    time_line = next(line for line in out.splitlines() if line.lstrip().startswith("time:"))
    assert all(f"{phase} {seconds:.2f} s" in time_line for phase, seconds in manifest["report"]["phases"].items())


def test_info_json_matches_the_manifest(onnx_art, capsys):
    code, out, err = run_tool(capsys, "info", onnx_art.path, "--json")
    assert code == 0, err
    info = json.loads(out)
    manifest = read_manifest(onnx_art.path)
    assert info["artifact_bytes"] == os.path.getsize(onnx_art.path)
    assert info["payload"] == {name: e["size"] for name, e in manifest["payload"].items()}
    for key in ("target", "inputs", "outputs", "passes", "tool_versions", "report", "target_info"):
        assert info[key] == manifest[key], key
    assert info["inputs"][0]["shape"][0] == "batch"
    assert info["parameters"] == onnx_art.report.parameters
    assert info["requires"] is None and info["tvm_target"] is None


def test_info_shows_recorded_requirements_and_variants(onnx_art, work, capsys):
    manifest, payload = read_artifact(onnx_art.path)
    requires = {"cpu_features": ["avx2", "fma"], "gpu_arch": "sm_90"}
    variants = [{"name": "avx512", "mcpu": "znver4", "features": ["avx512f"], "library": "model_avx512.so"},
                {"name": "avx2", "mcpu": "haswell", "features": ["avx2", "fma"], "library": "model.so"}]
    manifest["target_info"] = {**manifest["target_info"], "requires": requires, "variants": variants,
                               "tvm_target": {"kind": "llvm", "mcpu": "haswell"}}
    path = work / "requires.aot"
    write_artifact(path, manifest, payload)
    code, out, err = run_tool(capsys, "info", path)
    assert code == 0, err
    assert "requires:    cpu features avx2 fma; gpu sm_90" in out
    assert "variant:     avx512: mcpu znver4, features avx512f, library model_avx512.so" in out
    assert "variant:     avx2: mcpu haswell, features avx2 fma, library model.so" in out
    assert "tvm target" not in out  # the requirements replace it
    code, out, _ = run_tool(capsys, "info", path, "--json")
    info = json.loads(out)
    assert info["requires"] == requires and info["variants"] == variants


def test_llvm_artifact_info_names_its_cpu_variants_and_run_matches_load(llvm_art, work, capsys):
    code, out, err = run_tool(capsys, "info", llvm_art.path)
    assert code == 0, err
    info = read_manifest(llvm_art.path)["target_info"]
    assert "requires:    cpu features " + " ".join(info["requires"]["cpu_features"]) in out
    for variant in info["variants"]:
        assert f"variant:     {variant['name']}: mcpu {variant['mcpu']}" in out
    x = np.random.default_rng(3).standard_normal((2, 16)).astype(np.float32)
    np.save(work / "mlp_x.npy", x)
    code, _, err = run_tool(capsys, "run", llvm_art.path, "--input", work / "mlp_x.npy", "-o", work / "mlp_out.npz")
    assert code == 0, err
    np.testing.assert_array_equal(np.load(work / "mlp_out.npz")["output"], compiler.load(llvm_art.path)(x))


# -- run -------------------------------------------------------------------------------------------
def test_run_with_given_inputs_equals_load(onnx_art, work, capsys):
    tokens = np.random.default_rng(0).integers(0, VOCAB, (3, SEQ))
    np.save(work / "tokens.npy", tokens)
    out_path = work / "tt_out.npz"
    code, out, err = run_tool(capsys, "run", onnx_art.path, "--input", f"tokens={work / 'tokens.npy'}",
                              "-o", out_path)
    assert code == 0, err
    want = compiler.load(onnx_art.path)(tokens)
    saved = np.load(out_path)
    assert saved.files == ["output"]
    np.testing.assert_array_equal(saved["output"], want)
    assert f"output: float32[3, 10] min {want.min():.6g} max {want.max():.6g} mean" in out


def test_run_two_inputs_by_name_in_order_and_from_npz(two_art, work, capsys):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3)).astype(np.float32)
    scale = rng.integers(0, 4, (2, 3))
    np.save(work / "x.npy", x)
    np.save(work / "scale.npy", scale)
    np.savez(work / "both.npz", scale=scale, x=x)
    want = compiler.load(two_art.path)(x, scale)
    names = read_manifest(two_art.path)["outputs"]
    ways = {"by name, reversed": [f"scale={work / 'scale.npy'}", f"x={work / 'x.npy'}"],
            "in order": [work / "x.npy", work / "scale.npy"],
            "npz": [work / "both.npz"]}
    for way, inputs in ways.items():
        out_path = work / "two_out.npz"
        code, _, err = run_tool(capsys, "run", two_art.path, *[a for i in inputs for a in ("--input", i)],
                                "-o", out_path)
        assert code == 0, (way, err)
        saved = np.load(out_path)
        assert saved.files == [n["name"] for n in names], way
        for got, expected in zip((saved[n["name"]] for n in names), want):
            np.testing.assert_array_equal(got, expected, err_msg=way)


def test_run_with_random_inputs_follows_the_signature(onnx_art, work, capsys):
    out_path = work / "random_out.npz"
    code, out, err = run_tool(capsys, "run", onnx_art.path, "--batch", 4, "--seed", 7, "-o", out_path)
    assert code == 0, err
    model = compiler.load(onnx_art.path)
    inputs = tool.random_inputs(model.inputs, 4, 7)
    assert [(a.dtype, a.shape) for a in inputs] == [(np.dtype("int64"), (4, SEQ))]
    assert inputs[0].min() >= 0 and inputs[0].max() < VOCAB
    np.testing.assert_array_equal(np.load(out_path)["output"], model.run(inputs)[0])
    assert "random inputs (seed 7, batch 4)" in out and "output: float32[4, 10]" in out
    # No --batch: a symbolic batch of 1; another seed, other inputs.
    code, out, err = run_tool(capsys, "run", onnx_art.path)
    assert code == 0 and "output: float32[1, 10]" in out, err
    assert not np.array_equal(tool.random_inputs(model.inputs, 4, 8)[0], inputs[0])


def test_random_inputs_cover_dtypes_and_dim_expressions():
    from compiler.driver.runtime import TensorSpec

    specs = (TensorSpec("a", "float16", ("n", 3)), TensorSpec("b", "bool", ("n*2",)),
             TensorSpec("c", "uint8", (2, "seq")), TensorSpec("d", "int32", ()))
    arrays = tool.random_inputs(specs, 5, 0)
    assert [(a.dtype.name, a.shape) for a in arrays] == [("float16", (5, 3)), ("bool", (10,)),
                                                         ("uint8", (2, 1)), ("int32", ())]
    assert arrays[0].std() > 0.5  # normal draws, not constants



def test_random_inputs_refuse_a_shape_too_big_to_make():
    """A manifest asking for a [70000, 70000] input (crafted, or absurd) is one line, not a 20 GB
    allocation; the same shape's real data can still be given with --input."""
    from compiler.driver.runtime import TensorSpec
    from compiler.errors import InputError

    with pytest.raises(InputError, match=r"input 'x' of shape \[70000, 70000\] would take 18.3 GiB.*--input"):
        tool.random_inputs((TensorSpec("x", "float32", (70000, 70000)),), 1, 0)
    assert tool.random_inputs((TensorSpec("x", "float32", (256, 1024)),), 1, 0)[0].shape == (256, 1024)

# -- bench -----------------------------------------------------------------------------------------
def test_bench_json_reports_ordered_percentiles_and_throughput(onnx_art, capsys):
    code, out, err = run_tool(capsys, "bench", onnx_art.path, "--runs", 30, "--warmup", 2, "--batch", 4,
                              "--threads", 1, "--json")
    assert code == 0, err
    r = json.loads(out)
    lat = r["latency_ms"]
    assert r["runs"] == 30 and r["batch"] == 4 and r["threads"] == 1
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert r["throughput_samples_per_s"] == pytest.approx(4 * 30 / r["seconds"])


def test_bench_text_for_a_time_budget(two_art, capsys):
    code, out, err = run_tool(capsys, "bench", two_art.path, "--seconds", 0.2)
    assert code == 0, err
    p = {k: float(v) for k, v in re.findall(r"(p50|p90|p99) ([\d.]+) ms", out)}
    assert set(p) == {"p50", "p90", "p99"} and p["p50"] <= p["p90"] <= p["p99"], out
    runs = int(re.search(r"(\d+) timed runs", out).group(1))
    assert runs >= 1 and "batch 2" in out and re.search(r"throughput: [\d.]+ samples/s", out)


# -- errors ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bad_files(onnx_art, work):
    files = {"wrong_shape": work / "wrong_shape.npy", "wrong_dtype": work / "wrong_dtype.npy",
             "not_npy": work / "not_npy.npy", "truncated": work / "truncated.aot", "not_art": work / "not_art.aot",
             "x": work / "bad_x.npy"}
    np.save(files["wrong_shape"], np.zeros((1, SEQ + 1), np.int64))
    np.save(files["wrong_dtype"], np.zeros((1, SEQ), np.float32))
    np.save(files["x"], np.zeros((2, 3), np.float32))
    files["not_npy"].write_text("1, 2, 3\n")
    data = open(onnx_art.path, "rb").read()
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["not_art"].write_text("hello")
    return files


BAD = {
    "missing artifact": lambda a, f, w: ["info", w / "nope.aot"],
    "truncated artifact": lambda a, f, w: ["info", f["truncated"]],
    "not an artifact": lambda a, f, w: ["run", f["not_art"]],
    "unknown input name": lambda a, f, w: ["run", a["tt"], "--input", f"tokns={f['wrong_shape']}"],
    "wrong shape": lambda a, f, w: ["run", a["tt"], "--input", f"tokens={f['wrong_shape']}"],
    "wrong dtype": lambda a, f, w: ["run", a["tt"], "--input", f["wrong_dtype"]],
    "not an npy file": lambda a, f, w: ["run", a["tt"], "--input", f["not_npy"]],
    "missing npy file": lambda a, f, w: ["run", a["tt"], "--input", w / "nope.npy"],
    "one of two inputs": lambda a, f, w: ["run", a["two"], "--input", f"x={f['x']}"],
    "named and positional": lambda a, f, w: ["run", a["two"], "--input", f"x={f['x']}", "--input", f["x"]],
    "static batch differs": lambda a, f, w: ["run", a["two"], "--batch", 3],
    "static batch differs (bench)": lambda a, f, w: ["bench", a["two"], "--batch", 1],
    "zero batch": lambda a, f, w: ["bench", a["tt"], "--batch", 0],
    "runs and seconds": lambda a, f, w: ["bench", a["tt"], "--runs", 3, "--seconds", 1],
    "output directory missing": lambda a, f, w: ["run", a["tt"], "-o", w / "no_dir" / "out.npz"],
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_exit_2(case, onnx_art, two_art, bad_files, work, capsys):
    args = BAD[case]({"tt": onnx_art.path, "two": two_art.path}, bad_files, work)
    code, out, err = run_tool(capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    assert out == ""
    assert not (work / "no_dir").exists()


def test_internal_error_is_one_line_exit_3_and_debug_shows_the_traceback(onnx_art, monkeypatch, capsys):
    def broken(*args):
        raise RuntimeError("boom")

    monkeypatch.setattr(tool, "random_inputs", broken)
    code, _, err = run_tool(capsys, "run", onnx_art.path)
    assert code == 3 and len(err.strip().splitlines()) == 1 and "RuntimeError: boom" in err
    code, _, err = run_tool(capsys, "run", onnx_art.path, "--debug")
    assert code == 3 and "Traceback" in err


# -- the command itself ----------------------------------------------------------------------------
def test_a_new_subcommand_is_one_function_and_one_table_entry(onnx_art, monkeypatch, capsys):
    def hello(args):
        print(f"hello {os.path.basename(args.artifact)} {args.loud}")
        return 0

    entry = tool.Command("hello", "say hello", hello, (tool.ARTIFACT, tool.arg("--loud", action="store_true")))
    monkeypatch.setattr(tool, "COMMANDS", (*tool.COMMANDS, entry))
    code, out, _ = run_tool(capsys, "hello", onnx_art.path, "--loud")
    assert code == 0 and out.strip() == "hello tt.aot True"


def test_runs_as_a_module_without_torch(onnx_art, work):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    script = (
        "import sys\n"
        "from compiler.driver.tool import main\n"
        f"codes = [main(['info', {str(onnx_art.path)!r}]), main(['run', {str(onnx_art.path)!r}])]\n"
        "print('torch' in sys.modules, codes)\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=work, env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip().endswith("False [0, 0]"), out.stderr
    out = subprocess.run([sys.executable, "-m", "compiler.driver.tool", "info", "--json", onnx_art.path],
                         cwd=work, env=env, capture_output=True, text=True)
    assert out.returncode == 0 and json.loads(out.stdout)["target"] == "onnx", out.stderr


def test_info_loads_no_runtime(llvm_art, onnx_art, work):
    """info reads manifests only: neither TVM nor onnxruntime (nor torch) gets imported."""
    script = (
        "import sys\n"
        "from compiler.driver.tool import main\n"
        f"codes = [main(['info', p]) for p in ({str(llvm_art.path)!r}, {str(onnx_art.path)!r})]\n"
        "print([m for m in ('tvm', 'onnxruntime', 'onnx', 'torch') if m in sys.modules], codes)\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=work, env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip().endswith("[] [0, 0]"), (out.stdout[-200:], out.stderr)


def test_console_script_is_registered():
    with open(ROOT / "pyproject.toml", "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    assert scripts["compiler"] == "compiler.driver.tool:main"
    assert scripts["compile"] == "compiler.driver.cli:main"
