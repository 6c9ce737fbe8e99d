"""compile()'s grouped settings: each group validates itself, the CLI's flags are built from the
same fields, and the keywords the groups replaced fail with one line naming the new spelling."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import compiler
from compiler.driver import options as opts
from compiler.driver.cli import build_parser
from compiler.errors import CompileError

# The flags `compile` had before the settings were grouped: users' scripts keep working.
FLAGS_BEFORE_GROUPING = [
    "--no-verify", "--rtol", "--atol", "--seed", "--passes", "--check-passes", "--opset", "--onnx-standard-only",
    "--cpu", "--cuda-arch", "--tune", "--tuning-db", "--hls-precision", "--reuse-factor", "--hls-part",
    "--hls-clock-ns", "--hls-precision-map", "--quantize", "--calibration", "--calibrator", "--quantize-skip",
    "--per-tensor-weights", "--int4-block-size", "--prune", "--prune-structure", "--prune-scope",
    "--prune-multiple", "--weight-sharing-bits"]
GROUPS = [opts.VerifyOptions, opts.PassOptions, opts.QuantizeOptions, opts.PruneOptions, compiler.OnnxOptions,
          compiler.LlvmOptions, compiler.CudaOptions, compiler.HlsOptions]


def _flags(parser) -> set[str]:
    return {s for action in parser._actions for s in action.option_strings}


def test_the_cli_keeps_its_flags():
    assert set(FLAGS_BEFORE_GROUPING) <= _flags(build_parser())


@pytest.mark.parametrize("cls", GROUPS, ids=lambda c: c.__name__)
def test_every_field_has_a_flag_and_round_trips(cls):
    parser = build_parser()
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli", True):
            flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
            assert flag in _flags(parser), f"{cls.__name__}.{f.name} has no flag {flag}"
    defaults = opts.from_args(parser.parse_args(["m.pt2"]), cls)
    assert defaults == cls()  # no flag given: the class's own defaults


def test_flags_become_the_groups():
    args = build_parser().parse_args(["m.pt2", "--rtol", "0.01", "--no-verify", "--quantize", "int8-dynamic",
                                      "--quantize-skip", "a,b", "--quantize-skip", "c", "--per-tensor-weights",
                                      "--prune", "0.25", "--prune-structure", "channel", "--target", "llvm",
                                      "--cpu", "x86-64-v3"])
    assert opts.from_args(args, opts.VerifyOptions) == opts.VerifyOptions(enabled=False, rtol=0.01)
    assert opts.from_args(args, opts.QuantizeOptions) == opts.QuantizeOptions(
        "int8-dynamic", skip=("a", "b", "c"), per_channel=False)
    assert opts.from_args(args, opts.PruneOptions) == opts.PruneOptions(0.25, structure="channel")
    assert opts.target_from_args(args, "llvm") == compiler.LlvmOptions(cpu="x86-64-v3")


@pytest.mark.parametrize("build, message", [
    (lambda: opts.VerifyOptions(rtol=-1), "--rtol must be"),
    (lambda: opts.QuantizeOptions("int3"), "unknown quantization 'int3'"),
    (lambda: opts.QuantizeOptions("int8"), "needs calibration data"),
    (lambda: opts.QuantizeOptions("int8-dynamic", calibrator="mean"), "unknown calibrator"),
    (lambda: opts.QuantizeOptions("int4-weight", int4_block_size=24), "block"),
    (lambda: opts.PruneOptions(1.5), "between 0 and 1"),
    (lambda: opts.PruneOptions(0.5, structure="rows"), "unknown pruning structure"),
    (lambda: opts.PruneOptions(0.5, scope="net"), "unknown pruning scope"),
    (lambda: opts.PruneOptions(sharing_bits=12), "1..8"),
    (lambda: opts.PassOptions("fold,nope"), "unknown pass(es) nope"),
    (lambda: compiler.LlvmOptions(tune=8), "tuning needs a database directory"),
    (lambda: compiler.CudaOptions(cuda_arch="ampere"), "is not of the form sm_90"),
    (lambda: compiler.HlsOptions(reuse_factor=0), "--reuse-factor must be >= 1"),
    (lambda: compiler.HlsOptions(hls_precision_map="{oops"), "not valid JSON"),
])
def test_each_group_validates_its_fields(build, message):
    with pytest.raises(CompileError, match=None) as info:
        build()
    assert message in str(info.value)


def test_groups_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.VerifyOptions().rtol = 1.0


def test_options_of_another_target_name_who_takes_them():
    with pytest.raises(CompileError, match="'tune' is for target\\(s\\) llvm"):
        opts.target_from_args(build_parser().parse_args(["m.pt2", "--tune", "4", "--tuning-db", "d"]), "onnx")


@pytest.mark.parametrize("keyword, spelling", [
    ("rtol", "verify=VerifyOptions(rtol=...)"), ("calibration_data", "QuantizeOptions('int8', calibration=...)"),
    ("target_options", "target=LlvmOptions"), ("prune_structure", "PruneOptions(amount, structure=...)"),
    ("opset", "target=OnnxOptions(opset=...)")])
def test_moved_keywords_fail_with_one_line_naming_the_new_spelling(keyword, spelling, tmp_path):
    with pytest.raises(CompileError) as info:
        compiler.compile(torch.nn.Linear(4, 2), (torch.randn(1, 4),), output=tmp_path / "m.aot", **{keyword: 1})
    assert spelling in str(info.value) and "\n" not in str(info.value)
    assert not list(tmp_path.iterdir())


def test_simple_calls_and_grouped_calls_compile(tmp_path, rng):
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)).eval()
    x = (torch.from_numpy(rng.standard_normal((2, 8)).astype("float32")),)
    plain = compiler.compile(model, x, output=tmp_path / "plain.aot", quantize="int8-dynamic")
    grouped = compiler.compile(model, x, output=tmp_path / "grouped.aot",
                               target=compiler.OnnxOptions(opset=18, onnx_standard_only=True),
                               verify=compiler.VerifyOptions(rtol=1e-2, atol=1e-2, seed=3),
                               quantize=compiler.QuantizeOptions("int8-dynamic", per_channel=False),
                               passes=compiler.PassOptions("fold,dce"))
    assert plain.report.compression["quantization"] and grouped.report.compression["quantization"]
    assert [p["name"] for p in grouped.report.passes] == ["fold", "dce"]
    assert grouped.report.verification.rtol == 1e-2
    out_plain, out_grouped = plain.load()(x[0].numpy()), grouped.load()(x[0].numpy())
    assert out_plain.shape == out_grouped.shape == (2, 4)
