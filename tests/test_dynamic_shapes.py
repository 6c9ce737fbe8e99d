"""Dynamic dimensions beyond the batch: named symbolic axes with ranges, through export, the IR,
ONNX and TVM, checked at load and verified at several sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import compiler
from compiler.driver import dynamic
from compiler.errors import CompileError


class Encoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        layer = torch.nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, dropout=0.0)
        self.body = torch.nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)

    def forward(self, tokens):
        return self.body(tokens)


class ConvNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, image):
        return torch.relu(self.conv(image)).mean(dim=(2, 3))


class PositionTable(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.positions = torch.nn.Parameter(torch.randn(16, 8))

    def forward(self, x):
        return x + self.positions


class SlicedPositions(torch.nn.Module):
    """The slices of a real transformer's embedding with a symbolic sequence length: a position
    table cut to the input's length (a symbolic bound), and shifted views of the input (int
    bounds on a symbolic axis, from the start and from the end)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("position_ids", torch.arange(64).unsqueeze(0))
        self.table = torch.nn.Embedding(64, 8)

    def forward(self, x):
        positions = self.table(self.position_ids[:, : x.shape[1]])
        shifted = torch.cat([x[:, 1:], x[:, :1]], dim=1) - x[:, ::2].mean(dim=1, keepdim=True)
        return x + positions + shifted + x[:, -1:]


def _randn(rng, *shape):
    return torch.from_numpy(rng.standard_normal(shape).astype(np.float32))


@pytest.mark.parametrize("target", ["onnx", "llvm"])
def test_sequence_length_is_dynamic_within_its_range(target, tmp_path, rng):
    model = Encoder().eval()
    art = compiler.compile(model, (_randn(rng, 1, 12, 32),), target=target, output=tmp_path / "m.aot",
                           dynamic_shapes={"tokens": {1: ("seq", 1, 64)}})
    assert art.manifest["inputs"][0]["shape"] == [1, "seq", 32] and art.manifest["dynamic_dims"] == {"seq": [1, 64]}
    loaded = art.load()
    for length in (1, 7, 64):
        x = _randn(rng, 1, length, 32)
        with torch.no_grad():
            np.testing.assert_allclose(loaded(x.numpy()), model(x).numpy(), rtol=1e-4, atol=1e-5)
    with pytest.raises(compiler.InputError, match=r"input 'tokens' dim 1 \('seq'\) is 65, outside the compiled "
                                                  r"range \[1, 64\]"):
        loaded(_randn(rng, 1, 65, 32).numpy())


@pytest.mark.parametrize("target", ["onnx", "llvm"])
def test_image_size_is_dynamic(target, tmp_path, rng):
    model = ConvNet().eval()
    art = compiler.compile(model, (_randn(rng, 1, 3, 16, 16),), target=target, output=tmp_path / "m.aot",
                           dynamic_shapes=["image:2=height:8..64", "image:3=width:8..64"])
    assert art.manifest["inputs"][0]["shape"] == [1, 3, "height", "width"]
    loaded = art.load()
    for h, w in ((8, 8), (24, 40)):
        x = _randn(rng, 1, 3, h, w)
        with torch.no_grad():
            np.testing.assert_allclose(loaded(x.numpy()), model(x).numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("target", ["onnx", "llvm"])
def test_slices_bounded_by_a_symbolic_length(target, tmp_path, rng):
    model = SlicedPositions().eval()
    art = compiler.compile(model, (_randn(rng, 1, 10, 8),), target=target, output=tmp_path / "m.aot",
                           dynamic_shapes={0: {1: ("seq", 3, 64)}})
    loaded = art.load()
    for length in (3, 8, 64):
        x = _randn(rng, 1, length, 8)
        with torch.no_grad():
            np.testing.assert_allclose(loaded(x.numpy()), model(x).numpy(), rtol=1e-5, atol=1e-5)


def test_the_cli_takes_dynamic_dims(tmp_path, capsys):
    from compiler.driver.cli import main

    out = tmp_path / "m.aot"
    assert main(["models/transformer.py:TinyTransformer", "-o", str(out), "-q", "--dynamic", "0:0=batch:1..8"]) == 0
    assert compiler.load(out).manifest["dynamic_dims"] == {"batch": [1, 8]}
    assert main(["models/transformer.py:TinyTransformer", "-o", str(tmp_path / "n.aot"), "-q",
                 "--dynamic", "0:1=seq:1..512"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "dynamic dim 'seq'" in err and "only accepts" in err


def test_a_range_the_model_cannot_take_is_one_line(tmp_path, rng):
    with pytest.raises(CompileError) as info:
        compiler.compile(PositionTable(), (_randn(rng, 16, 8),), output=tmp_path / "m.aot",
                         dynamic_shapes={0: {0: ("rows", 1, 32)}})
    message = str(info.value)
    assert "dynamic dim 'rows'" in message and "16" in message and "\n" not in message
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("spec, message", [
    ("tokens:1", "is not INPUT:AXIS=NAME"), ("tokens:1=seq:9..3", "0 <= min <= max"),
    ("nope:1=seq", "the model's inputs are tokens"), ("tokens:5=seq", "axis 5 does not exist"),
    (["tokens:1=seq:1..8", "tokens:2=seq:1..9"], "two ranges"),
])
def test_bad_dynamic_specs_are_refused(spec, message):
    with pytest.raises(CompileError, match=None) as info:
        dynamic.resolve(spec, ["tokens"], [3])
    assert message in str(info.value)


def test_verification_runs_several_sizes_inside_the_range():
    dims = dynamic.resolve(["0:1=seq:3..40", "0:0=batch:1..2"], ["tokens"], [3])
    sizes = dynamic.verification_sizes(dims, [torch.zeros(1, 12, 4)], 3)
    assert len({s["seq"] for s in sizes}) == 3 and all(3 <= s["seq"] <= 40 for s in sizes)
    assert all(1 <= s["batch"] <= 2 for s in sizes)


def test_targets_and_combinations_that_refuse_dynamic_dims(tmp_path, rng):
    x = (_randn(rng, 1, 4, 32),)
    with pytest.raises(CompileError, match="hls target needs static shapes"):
        compiler.compile(Encoder(), x, target="hls", output=tmp_path / "h.aot", dynamic_shapes=["0:1=seq"])
    with pytest.raises(CompileError, match="either dynamic_batch"):
        compiler.compile(Encoder(), x, output=tmp_path / "b.aot", dynamic_batch=True, dynamic_shapes=["0:1=seq"])


def test_malformed_dynamic_ranges_are_refused(tmp_path, rng):
    from compiler.driver.artifact import read_artifact, write_artifact

    art = compiler.compile(ConvNet(), (_randn(rng, 1, 3, 8, 8),), output=tmp_path / "m.aot", verify=False,
                           dynamic_shapes=["0:2=h:4..16"])
    manifest, payload = read_artifact(art.path)
    for bad in ({"h": [5, 4]}, {"h": [1]}, [1, 2], {"h": ["1", 2]}):
        write_artifact(str(tmp_path / "bad.aot"), {**manifest, "dynamic_dims": bad}, payload)
        with pytest.raises(compiler.ArtifactError, match="dynamic_dims"):
            compiler.load(tmp_path / "bad.aot")
