"""Tests for compiler.driver.model_loading: every model kind, input shapes, and bad model files."""

from __future__ import annotations

import random
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from compiler.driver import model_loading as ml
from compiler.errors import ModelLoadError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning",
                                        "ignore::UserWarning", "ignore::FutureWarning")


# -- little models ------------------------------------------------------------------------------

class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1 = nn.Linear(4, 8)
        self.l2 = nn.Linear(8, 3)

    def forward(self, x):
        return self.l2(torch.relu(self.l1(x)))


class TinyCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 5)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


class WithExample(MLP):
    def example_inputs(self):
        return (torch.randn(2, 4),)


def _mlp(seed=0):
    torch.manual_seed(seed)
    return MLP().eval()


def _cnn(seed=0):
    torch.manual_seed(seed)
    m = TinyCNN()
    with torch.no_grad():  # non-trivial BN statistics, so eval vs train mode would show
        m.bn.running_mean.uniform_(-1, 1)
        m.bn.running_var.uniform_(0.5, 2)
    return m.eval()


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def _run(src: ml.ModelSource):
    with torch.no_grad():
        if src.exported_program is not None:
            return src.exported_program.module()(*src.example_inputs)
        return src.module(*src.example_inputs)


FACTORY_SRC = textwrap.dedent("""
    import torch
    import torch.nn as nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.l1 = nn.Linear(4, 8)
            self.l2 = nn.Linear(8, 3)

        def forward(self, x):
            return self.l2(torch.relu(self.l1(x)))

        def example_inputs(self):
            return (torch.ones(2, 4),)

    def build():
        torch.manual_seed(0)
        return Net()

    def build_with_inputs():
        torch.manual_seed(0)
        return Net(), torch.full((3, 4), 0.5)

    def build_bare():
        torch.manual_seed(0)
        m = Net()
        m.example_inputs = None
        return m

    NOT_CALLABLE = 3
""")


@pytest.fixture
def factory_file(tmp_path) -> Path:
    path = tmp_path / "netdef.py"
    path.write_text(FACTORY_SRC)
    return path


@pytest.fixture(scope="module")
def pt2_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("pt2") / "m.pt2"
    m = _mlp()
    torch.export.save(torch.export.export(m, (torch.randn(2, 4),)), str(path))
    return path.read_bytes()


# -- input shapes -------------------------------------------------------------------------------

@pytest.mark.parametrize("text,shape,dtype", [
    ("1x3x224x224", (1, 3, 224, 224), torch.float32),
    ("1,3,224,224", (1, 3, 224, 224), torch.float32),
    ("1x3x224x224:float16", (1, 3, 224, 224), torch.float16),
    ("2x32:int64", (2, 32), torch.int64),
    (" 8 : bool ", (8,), torch.bool),
    ("4X4:bf16", (4, 4), torch.bfloat16),
])
def test_parse_input_shape(text, shape, dtype):
    assert ml.parse_input_shape(text) == (shape, dtype)


@pytest.mark.parametrize("text", ["", "abc", "1x", "1xx3", "1x-3", "0x3", "1x3:floaty", "1x3,4",
                                  "1.5x3", ":int64"])
def test_parse_input_shape_bad(text):
    with pytest.raises(ModelLoadError) as ei:
        ml.parse_input_shape(text)
    msg = str(ei.value)
    assert "\n" not in msg and "1x3x224x224" in msg


def test_make_inputs_dtypes_and_seed():
    a = ml.make_inputs([((2, 3), torch.float32), ((4,), torch.int64), ((5,), torch.bool),
                        ((2,), torch.float16)])
    assert [t.dtype for t in a] == [torch.float32, torch.int64, torch.bool, torch.float16]
    assert a[0].shape == (2, 3) and int(a[1].min()) >= 0 and int(a[1].max()) < 10
    b = ml.make_inputs([((2, 3), torch.float32)])
    _close(a[0], b[0])
    c = ml.make_inputs([((2, 3), torch.float32)], seed=1)
    assert not torch.equal(a[0], c[0])


# -- exported program ---------------------------------------------------------------------------

def test_exported_program(tmp_path):
    m = _cnn()
    x = torch.randn(1, 3, 8, 8)
    path = tmp_path / "cnn.pt2"
    torch.export.save(torch.export.export(m, (x,)), str(path))
    src = ml.load_model_source(str(path))
    assert src.kind == "exported_program" and src.name == "cnn" and len(src.sha256) == 64
    assert src.exported_program is not None
    _close(src.example_inputs[0], x)
    _close(_run(src), m(x))
    # module is usable for re-export (eval() works, no guard on the batch size)
    src.module.eval()
    with torch.no_grad():
        _close(src.module(x), m(x))


def test_exported_program_detected_by_content_and_shapes(tmp_path):
    m = _mlp()
    path = tmp_path / "weird_name.bin"
    ep = torch.export.export(m, (torch.randn(2, 4),))
    ep._example_inputs = None  # an archive without saved example inputs
    torch.export.save(ep, str(path))
    src = ml.load_model_source(str(path))
    assert src.kind == "exported_program"
    assert src.example_inputs[0].shape == (2, 4)  # from the placeholder metadata
    _close(_run(src), m(*src.example_inputs))
    src = ml.load_model_source(str(path), input_shapes=["2x4"])
    assert src.example_inputs[0].shape == (2, 4)
    with pytest.raises(ModelLoadError, match="exported with shape 2x4"):
        ml.load_model_source(str(path), input_shapes=["3x4"])
    with pytest.raises(ModelLoadError, match="takes 1 input"):
        ml.load_model_source(str(path), input_shapes=["2x4", "2x4"])
    with pytest.raises(ModelLoadError, match="--weights applies only to a factory"):
        ml.load_model_source(str(path), weights=str(path))


# -- torchscript --------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["script_mlp", "trace_cnn"])
def test_torchscript(tmp_path, how):
    if how == "script_mlp":
        m, shape = _mlp(), "2x4"
        ts = torch.jit.script(m)
    else:
        m, shape = _cnn(), "1x3x8x8"
        ts = torch.jit.trace(m, torch.randn(1, 3, 8, 8))
    path = tmp_path / "ts.pt"
    torch.jit.save(ts, str(path))
    src = ml.load_model_source(str(path), input_shapes=[shape])
    assert src.kind == "torchscript" and src.exported_program is not None
    loaded = torch.jit.load(str(path))
    with torch.no_grad():
        expected = loaded(*src.example_inputs)
        _close(src.exported_program.module()(*src.example_inputs), expected)
        _close(expected, m(*src.example_inputs))
    # the frontend's path: torch.export.export of the returned module works
    ep = torch.export.export(src.module.eval(), src.example_inputs, strict=False)
    with torch.no_grad():
        _close(ep.module()(*src.example_inputs), expected)


def test_torchscript_needs_input_shape(tmp_path):
    path = tmp_path / "ts.pt"
    torch.jit.save(torch.jit.script(_mlp()), str(path))
    with pytest.raises(ModelLoadError, match="--input-shape 1x3x224x224"):
        ml.load_model_source(str(path))
    with pytest.raises(ModelLoadError, match="forward takes 1 input"):
        ml.load_model_source(str(path), input_shapes=["2x4", "2x4"])


# -- factory ------------------------------------------------------------------------------------

def _reference_net():
    torch.manual_seed(0)
    return MLP().eval()  # same layers and seed as netdef.Net


def test_factory_example_inputs_method(factory_file):
    src = ml.load_model_source(f"{factory_file}:build")
    assert src.kind == "factory" and src.name == "build" and src.exported_program is None
    assert not src.module.training
    _close(src.example_inputs[0], torch.ones(2, 4))
    ref = _reference_net()
    with torch.no_grad():
        _close(_run(src), ref(*src.example_inputs))


def test_factory_tuple_and_input_shape(factory_file):
    src = ml.load_model_source(f"{factory_file}:build_with_inputs")
    _close(src.example_inputs[0], torch.full((3, 4), 0.5))
    with torch.no_grad():
        _close(_run(src), _reference_net()(*src.example_inputs))
    src = ml.load_model_source(f"{factory_file}:build_with_inputs", input_shapes=["5x4"])
    assert src.example_inputs[0].shape == (5, 4)
    with pytest.raises(ModelLoadError, match="forward takes 1 input"):
        ml.load_model_source(f"{factory_file}:build", input_shapes=["5x4", "5x4"])


def test_factory_without_inputs(factory_file):
    with pytest.raises(ModelLoadError, match="--input-shape"):
        ml.load_model_source(f"{factory_file}:build_bare")


def test_factory_with_weights(factory_file, tmp_path):
    trained = _mlp(seed=123)
    wpath = tmp_path / "state.pt"
    torch.save(trained.state_dict(), str(wpath))
    src = ml.load_model_source(f"{factory_file}:build", weights=str(wpath))
    with torch.no_grad():
        _close(_run(src), trained(*src.example_inputs))
    plain = ml.load_model_source(f"{factory_file}:build")
    assert src.sha256 != plain.sha256
    # a checkpoint dict with a "state_dict" key
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"state_dict": trained.state_dict(), "epoch": 3}, str(ckpt))
    src = ml.load_model_source(f"{factory_file}:build", weights=str(ckpt))
    with torch.no_grad():
        _close(_run(src), trained(*src.example_inputs))


def test_factory_bad_weights(factory_file, tmp_path):
    whole = tmp_path / "whole.pt"
    torch.save(_mlp(), str(whole))
    with pytest.raises(ModelLoadError, match="not a plain state dict"):
        ml.load_model_source(f"{factory_file}:build", weights=str(whole))
    wrong = tmp_path / "wrong.pt"
    torch.save(_cnn().state_dict(), str(wrong))
    with pytest.raises(ModelLoadError, match="does not fit") as ei:
        ml.load_model_source(f"{factory_file}:build", weights=str(wrong))
    assert "\n" not in str(ei.value)
    with pytest.raises(ModelLoadError, match="weights file not found"):
        ml.load_model_source(f"{factory_file}:build", weights=str(tmp_path / "nope.pt"))


def test_factory_dotted_module(tmp_path, monkeypatch):
    pkg = tmp_path / "mypkg_ml_test"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(FACTORY_SRC)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    try:
        src = ml.load_model_source("mypkg_ml_test.nets:build")
        assert src.kind == "factory" and len(src.sha256) == 64
        with torch.no_grad():
            _close(_run(src), _reference_net()(*src.example_inputs))
        with pytest.raises(ModelLoadError, match="model file not found"):
            ml.load_model_source("no_such_pkg_xyz.nets:build")
    finally:
        for name in [n for n in sys.modules if n.startswith("mypkg_ml_test")]:
            del sys.modules[name]


def test_factory_import_error(tmp_path):
    bad = tmp_path / "broken.py"
    bad.write_text("import torch\n\nraise RuntimeError('boom at import\\nsecond line')\n")
    with pytest.raises(ModelLoadError) as ei:
        ml.load_model_source(f"{bad}:build")
    msg = str(ei.value)
    assert "broken.py:3" in msg and "boom at import" in msg and "\n" not in msg
    syn = tmp_path / "syntax.py"
    syn.write_text("def build(:\n")
    with pytest.raises(ModelLoadError, match="syntax.py:1.*SyntaxError"):
        ml.load_model_source(f"{syn}:build")


def test_factory_missing_attribute_and_file(factory_file, tmp_path):
    with pytest.raises(ModelLoadError, match="has no attribute 'Missing'") as ei:
        ml.load_model_source(f"{factory_file}:Missing")
    assert "netdef.py" in str(ei.value)
    with pytest.raises(ModelLoadError, match="not a callable"):
        ml.load_model_source(f"{factory_file}:NOT_CALLABLE")
    with pytest.raises(ModelLoadError, match="model file not found"):
        ml.load_model_source(f"{tmp_path / 'nope.py'}:build")
    with pytest.raises(ModelLoadError, match="name the factory"):
        ml.load_model_source(str(factory_file))


def test_factory_raises_when_called(tmp_path):
    f = tmp_path / "calls.py"
    f.write_text("def build():\n    raise ValueError('no config')\n")
    with pytest.raises(ModelLoadError, match=r"calls.py:2: calling build\(\) failed: "
                                             r"ValueError: no config"):
        ml.load_model_source(f"{f}:build")
    f.write_text("def build():\n    return 42\n")
    with pytest.raises(ModelLoadError, match="returned a int"):
        ml.load_model_source(f"{f}:build")


# -- pickle -------------------------------------------------------------------------------------

@pytest.mark.parametrize("legacy", [False, True])
def test_pickled_module(tmp_path, legacy):
    torch.manual_seed(0)
    m = WithExample().eval()
    path = tmp_path / "whole.pt"
    torch.save(m, str(path), _use_new_zipfile_serialization=not legacy)
    with pytest.raises(ModelLoadError) as ei:
        ml.load_model_source(str(path))
    msg = str(ei.value)
    assert "--trust-pickle" in msg and "arbitrary code" in msg and "\n" not in msg
    assert "torch.export.save" in msg and "--weights" in msg
    src = ml.load_model_source(str(path), trust_pickle=True)
    assert src.kind == "pickle" and src.name == "whole" and not src.module.training
    with torch.no_grad():
        _close(_run(src), m(*src.example_inputs))
    src = ml.load_model_source(str(path), trust_pickle=True, input_shapes=["7x4"])
    assert src.example_inputs[0].shape == (7, 4)
    with pytest.raises(ModelLoadError, match="--weights applies only to a factory"):
        ml.load_model_source(str(path), trust_pickle=True, weights=str(path))


def test_pickled_module_without_inputs(tmp_path):
    path = tmp_path / "mlp.pt"
    torch.save(_mlp(), str(path))
    with pytest.raises(ModelLoadError, match="--input-shape"):
        ml.load_model_source(str(path), trust_pickle=True)


@pytest.mark.parametrize("trust", [False, True])
def test_state_dict_given_as_model(tmp_path, trust):
    path = tmp_path / "sd.pt"
    torch.save(_mlp().state_dict(), str(path))
    with pytest.raises(ModelLoadError, match=r"holds only weights.*file.py:Factory.*--weights"):
        ml.load_model_source(str(path), trust_pickle=trust)


# -- module (Python API) ------------------------------------------------------------------------

def test_source_from_module():
    m = _mlp()
    m.train()
    x = torch.randn(2, 4)
    src = ml.source_from_module(m, x)
    assert src.kind == "module" and src.name == "MLP" and not m.training
    assert src.example_inputs == (x,)
    _close(_run(src), m(x))
    assert src.sha256 == ml.source_from_module(_mlp(), (x,)).sha256
    assert src.sha256 != ml.source_from_module(_mlp(seed=1), (x,)).sha256


def test_a_sparse_buffer_is_hashed_without_an_error():
    m = _mlp()
    m.register_buffer("table", torch.eye(3).to_sparse_csr())
    first = ml.source_from_module(m, torch.randn(2, 4)).sha256
    m.table = (2 * torch.eye(3)).to_sparse_csr()
    assert len(first) == 64 and ml.source_from_module(m, torch.randn(2, 4)).sha256 != first


def test_module_digest_gives_its_tensors_piece_digests_until_one_changes():
    """The artifact writer reuses these instead of hashing the same weights again."""
    from compiler.hashing import buffer_reader, piece_digests_many

    m = _mlp()
    src = ml.source_from_module(m, torch.randn(2, 4))
    weight = next(m.parameters())
    part = memoryview(weight.detach().numpy()).cast("B")
    assert src.known_pieces(part) == piece_digests_many([(part.nbytes, buffer_reader(part))])[0]
    assert src.known_pieces(memoryview(weight.detach().numpy().copy()).cast("B")) is None  # same bytes elsewhere
    assert src.known_pieces(part[4:]) is None  # not a whole tensor
    with torch.no_grad():
        weight.add_(1.0)  # written in place after hashing: its digests no longer hold
    assert src.known_pieces(part) is None


# -- bad files ----------------------------------------------------------------------------------

def _assert_one_line(exc_info):
    assert "\n" not in str(exc_info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="model file not found: .*nope.pt2"):
        ml.load_model_source(str(tmp_path / "nope.pt2"))


def test_truncated_pt2(tmp_path, pt2_bytes):
    path = tmp_path / "half.pt2"
    path.write_bytes(pt2_bytes[: len(pt2_bytes) // 2])
    with pytest.raises(ModelLoadError, match="could not read .*half.pt2: file is truncated or "
                                             "corrupt") as ei:
        ml.load_model_source(str(path))
    _assert_one_line(ei)


def test_corrupt_zip_member(tmp_path, pt2_bytes):
    """Central directory intact, a stored member's bytes garbled: torch's error is wrapped."""
    src = tmp_path / "ok.pt2"
    src.write_bytes(pt2_bytes)
    path = tmp_path / "garbled.pt2"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("models/model.json"):
                data = b"{ not json"
            zout.writestr(info, data)
    with pytest.raises(ModelLoadError, match="could not read .*garbled.pt2") as ei:
        ml.load_model_source(str(path))
    _assert_one_line(ei)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pt2"
    path.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="truncated or corrupt"):
        ml.load_model_source(str(path))


def test_random_bytes(tmp_path):
    rng = random.Random(0)
    path = tmp_path / "noise.pt2"
    path.write_bytes(b"\x13\x37" + bytes(rng.randrange(256) for _ in range(4096)))
    with pytest.raises(ModelLoadError, match="is not a model file: expected a torch.export "
                                             "archive") as ei:
        ml.load_model_source(str(path))
    _assert_one_line(ei)


@pytest.mark.parametrize("name,data", [
    ("data.csv", b"a,b,c\n1,2,3\n"),
    ("notes.txt", b"hello, this is not a model\n"),
    ("image.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 64),
])
def test_non_model_files(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(ModelLoadError, match="is not a model file") as ei:
        ml.load_model_source(str(path), trust_pickle=True)
    _assert_one_line(ei)


def test_zip_that_is_not_a_model(tmp_path):
    path = tmp_path / "stuff.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "hi")
    with pytest.raises(ModelLoadError, match="not a model file"):
        ml.load_model_source(str(path))


def test_directory(tmp_path):
    with pytest.raises(ModelLoadError, match="directory"):
        ml.load_model_source(str(tmp_path))


def test_bad_input_shape_reported_first(tmp_path, pt2_bytes):
    path = tmp_path / "m.pt2"
    path.write_bytes(pt2_bytes)
    with pytest.raises(ModelLoadError, match="bad input shape"):
        ml.load_model_source(str(path), input_shapes=["2 by 4"])
