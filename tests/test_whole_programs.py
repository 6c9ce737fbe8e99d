"""What real programs do beyond a clean forward of core ops: writing into inputs, None
outputs, ops that only PyTorch's decompositions express, 0-d indices, control flow, NaN."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch

import compiler
from compiler.errors import CompileError, UnsupportedOpError
from compiler.frontend import export_module, import_exported_program
from compiler.interpreter import run_graph


class WritesIntoInput(torch.nn.Module):
    def forward(self, x, y):
        x.add_(y)
        return x * 2


class ReturnsNone(torch.nn.Module):
    def forward(self, x):
        return None, x + 1, None, x.sum(0)


class Unfolds(torch.nn.Module):
    def forward(self, x):
        return x.unfold(1, 3, 2) * 2


class SelectsWithScalarIndex(torch.nn.Module):
    def forward(self, x):
        return torch.index_select(x, 1, torch.tensor(2))


class Branches(torch.nn.Module):
    def forward(self, x):
        return torch.cond(x.sum() > 0, lambda t: t + 1, lambda t: t - 1, (x,))


def _randn(rng, *shape):
    return torch.from_numpy(rng.standard_normal(shape).astype(np.float32))


def test_a_model_writing_into_its_input_returns_only_its_outputs(tmp_path, rng):
    x, y = _randn(rng, 2, 3), _randn(rng, 2, 3)
    art = compiler.compile(WritesIntoInput(), (x, y), output=tmp_path / "m.aot")
    assert len(art.manifest["outputs"]) == 1
    got = art.load()(x.numpy(), y.numpy())
    np.testing.assert_allclose(got, (x.numpy() + y.numpy()) * 2, rtol=1e-6)


def test_none_outputs_are_dropped_and_given_back_by_load(tmp_path, rng):
    x = _randn(rng, 3, 4)
    art = compiler.compile(ReturnsNone(), (x,), output=tmp_path / "m.aot")
    assert len(art.manifest["outputs"]) == 2 and art.manifest["none_outputs"] == [0, 2]
    model = compiler.load(art.path)
    a, b, c, d = model(x.numpy())
    assert a is None and c is None
    want = ReturnsNone()(x)
    np.testing.assert_allclose(b, want[1].numpy(), rtol=1e-6)
    np.testing.assert_allclose(d, want[3].numpy(), rtol=1e-6)
    assert len(model.run([x.numpy()])) == 2  # run() gives the computed arrays only


def test_malformed_none_positions_are_refused(tmp_path, rng):
    from compiler.driver.artifact import read_artifact, write_artifact

    art = compiler.compile(ReturnsNone(), (_randn(rng, 3, 4),), output=tmp_path / "m.aot", verify=False)
    manifest, payload = read_artifact(art.path)
    for bad in ([2, 0], ["0"], [9], 3):
        write_artifact(str(tmp_path / "bad.aot"), {**manifest, "none_outputs": bad}, payload)
        with pytest.raises(compiler.ArtifactError, match="none_outputs"):
            compiler.load(tmp_path / "bad.aot")


def test_ops_without_a_handler_fall_back_to_torch_decompositions(rng):
    x = _randn(rng, 2, 9)
    graph = import_exported_program(export_module(Unfolds(), (x,)))
    assert "gather" in graph.op_counts()  # unfold -> as_strided -> gather of constant indices
    np.testing.assert_allclose(run_graph(graph, [x.numpy()])[0], Unfolds()(x).numpy(), rtol=1e-6)


@pytest.mark.parametrize("target", ["onnx", "llvm"])
def test_unfold_compiles(target, tmp_path, rng):
    x = _randn(rng, 2, 9)
    art = compiler.compile(Unfolds(), (x,), target=target, output=tmp_path / "m.aot")
    np.testing.assert_allclose(art.load()(x.numpy()), Unfolds()(x).numpy(), rtol=1e-6)


def test_index_select_with_a_0d_index_keeps_the_axis(rng):
    x = _randn(rng, 3, 4)
    graph = import_exported_program(export_module(SelectsWithScalarIndex(), (x,)))
    got = run_graph(graph, [x.numpy()])[0]
    assert got.shape == (3, 1)
    np.testing.assert_array_equal(got, SelectsWithScalarIndex()(x).numpy())


class NestedBranches(torch.nn.Module):
    """Two outputs, a nested cond, a weight used inside a branch."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 4)

    def forward(self, x, y):
        def inner(a, b):
            return torch.cond(a.mean() > 0.5, lambda p, q: self.fc(p) * 2.0, lambda p, q: p * q, (a, b))

        def positive(a, b):
            return inner(a, b), b.cos()

        def negative(a, b):
            return a - 1.0, b.sin()

        first, second = torch.cond(x.sum() > 0, positive, negative, (x, y))
        return first + 1, second


def test_cond_with_a_run_time_predicate_takes_the_branch_eager_takes(rng):
    for model, shapes in ((Branches(), [(3,)]), (NestedBranches(), [(3, 4), (3, 4)])):
        inputs = tuple(_randn(rng, *s) for s in shapes)
        graph = import_exported_program(export_module(model, inputs))
        for offset in (2.0, 0.3, -2.0):  # outer and inner true; outer true, inner false; outer false
            probe = [t * 0.1 + offset for t in inputs]
            got = run_graph(graph, [t.numpy() for t in probe])
            want = torch.utils._pytree.tree_leaves(model(*probe))
            for a, b in zip(got, want, strict=True):
                np.testing.assert_allclose(a, b.detach().numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("target", ["onnx", "llvm"])
def test_cond_compiles(target, tmp_path, rng):
    x, y = _randn(rng, 3, 4), _randn(rng, 3, 4)
    art = compiler.compile(NestedBranches(), (x, y), target=target, output=tmp_path / "m.aot")
    for sign in (1.0, -1.0):
        for got, want in zip(art.load()(x.numpy() * sign, y.numpy()), NestedBranches()(x * sign, y)):
            np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-5, atol=1e-6)


def _running(total, row, weight):
    total = total * 0.5 + row * weight
    return [total, total.sum(-1) + row[0]]


class Scans(torch.nn.Module):
    """A carry updated every step, an output stacked per step, an extra input seen by every step."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.linspace(-1.0, 1.0, 4))

    def forward(self, x):
        from torch._higher_order_ops.scan import scan

        return scan(lambda total, row: _running(total, row, self.weight), torch.zeros(4), x)


def test_scan_is_unrolled_step_for_step(rng):
    for steps in (1, 5):
        x = _randn(rng, steps, 4)
        graph = import_exported_program(export_module(Scans(), (x,)))
        probe = _randn(rng, steps, 4)
        got = run_graph(graph, [probe.numpy()])
        want = torch.utils._pytree.tree_leaves(Scans()(probe))
        for a, b in zip(got, want, strict=True):
            np.testing.assert_allclose(a, b.detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("target", ["onnx", "llvm"])
def test_scan_compiles(target, tmp_path, rng):
    x = _randn(rng, 6, 4)
    art = compiler.compile(Scans(), (x,), target=target, output=tmp_path / "m.aot")
    for got, want in zip(art.load()(x.numpy()), Scans()(x), strict=True):
        np.testing.assert_allclose(got, want.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_a_scan_too_long_to_unroll_is_refused_in_one_line(rng):
    with pytest.raises(UnsupportedOpError) as info:
        import_exported_program(export_module(Scans(), (_randn(rng, 300, 4),)))
    message = str(info.value)
    assert "scan over 300 steps" in message and "\n" not in message


class Loops(torch.nn.Module):
    def forward(self, x):
        from torch._higher_order_ops.while_loop import while_loop

        return while_loop(lambda i, t: i < 3, lambda i, t: (i + 1, t * 2), (torch.tensor(0), x))[1]


def test_other_control_flow_is_refused_in_one_line(rng):
    with pytest.raises(UnsupportedOpError) as info:
        import_exported_program(export_module(Loops(), (_randn(rng, 3),)))
    message = str(info.value)
    assert "while_loop" in message and "control flow" in message and "\n" not in message


def test_nan_outputs_verify_and_the_manifest_stays_json(tmp_path):
    class Nan(torch.nn.Module):
        def forward(self, x):
            return x * float("nan"), torch.isnan(x)

    x = torch.tensor([[1.0, float("nan"), -2.0]])
    art = compiler.compile(Nan(), (x,), output=tmp_path / "m.aot")
    with zipfile.ZipFile(art.path) as z:
        json.loads(z.read("manifest.json"), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    got, isnan = art.load()(x.numpy())
    assert np.isnan(got).all() and isnan.tolist() == [[False, True, False]]


class OrderStatistics(torch.nn.Module):
    def forward(self, x):
        return x.median(), x.median(dim=1)[0], x.median(dim=0, keepdim=True)[1], torch.kthvalue(x, 2, 1)


class Shifts(torch.nn.Module):
    def forward(self, x):
        return x >> 2, x << 3


class ShiftsByTensor(torch.nn.Module):
    def forward(self, x, amounts):
        return x << amounts, x >> amounts, torch.bitwise_left_shift(x, 3), x >> 70


def _shift_inputs(rng, dtype):
    info = torch.iinfo(dtype)
    x = torch.from_numpy(rng.integers(max(info.min, -1000), min(info.max, 1000), size=(48,))).to(dtype)
    x[:2] = torch.tensor([info.min, info.max], dtype=dtype)
    low = 0 if dtype == torch.uint8 else -2  # negative amounts and amounts past the width too
    return x, torch.from_numpy(rng.integers(low, 8 * x.element_size() + 3, size=(48,))).to(dtype)


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64])
def test_shifts_by_a_tensor_match_eager_for_every_amount(dtype, rng):
    inputs = _shift_inputs(rng, dtype)
    graph = import_exported_program(export_module(ShiftsByTensor(), inputs))
    with np.errstate(over="ignore"):
        got = run_graph(graph, [t.numpy() for t in inputs])
    for a, b in zip(got, ShiftsByTensor()(*inputs), strict=True):
        assert a.dtype == b.numpy().dtype
        np.testing.assert_array_equal(a, b.numpy())


@pytest.mark.parametrize("target", ["onnx", "llvm"])
def test_shifts_by_a_tensor_compile(target, tmp_path, rng):
    inputs = _shift_inputs(rng, torch.int32)
    art = compiler.compile(ShiftsByTensor(), inputs, target=target, output=tmp_path / "m.aot")
    for got, want in zip(art.load()(*[t.numpy() for t in inputs]), ShiftsByTensor()(*inputs)):
        np.testing.assert_array_equal(got, want.numpy())


class Searches(torch.nn.Module):
    def forward(self, sequence, values):
        return torch.searchsorted(sequence, values), torch.searchsorted(sequence, values, right=True)


class Buckets(torch.nn.Module):
    def __init__(self, right: bool, out_int32: bool):
        super().__init__()
        self.right, self.out_int32 = right, out_int32

    def forward(self, x, boundaries):
        return torch.bucketize(x, boundaries, right=self.right, out_int32=self.out_int32)


@pytest.mark.parametrize("right", [False, True])
@pytest.mark.parametrize("size", [1, 2, 5, 8, 13])
def test_searches_are_torchs_binary_search_on_unsorted_and_nan_inputs(size, right, rng):
    """torch does not check that the sequence is sorted: its answer is what its binary search
    finds, and NaN (in values or sequence) goes where its comparisons send it. Ours too."""
    x = _randn(rng, 3, 7)
    x[0, :3] = float("nan")
    boundaries, sequence = _randn(rng, size), _randn(rng, 3, size)
    boundaries[size // 2] = float("nan")
    for model, inputs in ((Buckets(right, size % 2 == 0), (x, boundaries)),
                          (Buckets(right, False), (x, torch.sort(boundaries).values)),
                          (Searches(), (sequence, x))):
        graph = import_exported_program(export_module(model, inputs))
        got = run_graph(graph, [t.numpy() for t in inputs])
        for a, b in zip(got, torch.utils._pytree.tree_leaves(model(*inputs))):
            assert a.dtype == b.numpy().dtype
            np.testing.assert_array_equal(a, b.numpy())


class Windowed(torch.nn.Module):
    def forward(self, x):
        return x * torch.hamming_window(x.shape[-1])


def _programs(rng):
    ints = torch.from_numpy(rng.integers(-1000, 1000, size=(6,)))
    sequence = torch.from_numpy(np.sort(rng.standard_normal(9)).astype(np.float32))
    return [(OrderStatistics(), (_randn(rng, 4, 5),)), (Shifts(), (ints,)),
            (Searches(), (sequence, _randn(rng, 3, 4))),
            (Searches(), (torch.sort(_randn(rng, 3, 9)).values, _randn(rng, 3, 4))),
            (Windowed(), (_randn(rng, 2, 8),))]


@pytest.mark.parametrize("case", range(5))
def test_ops_outside_core_aten_match_eager(case, rng):
    model, inputs = _programs(rng)[case]
    graph = import_exported_program(export_module(model, inputs))
    got = run_graph(graph, [t.numpy() for t in inputs])
    want = torch.utils._pytree.tree_leaves(model(*inputs))
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert a.shape == tuple(b.shape) and a.dtype == b.numpy().dtype
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-6)


@pytest.mark.parametrize("target", ["onnx", "llvm"])
def test_ops_outside_core_aten_compile(target, tmp_path, rng):
    for i, (model, inputs) in enumerate(_programs(rng)):
        # verification's random inputs include unsorted sequences for searchsorted: still exact
        art = compiler.compile(model, inputs, target=target, output=tmp_path / f"m{i}.aot")
        got = art.load().run([t.numpy() for t in inputs])
        for a, b in zip(got, torch.utils._pytree.tree_leaves(model(*inputs))):
            np.testing.assert_allclose(a, b.numpy(), rtol=1e-5)


class ResizesAntialiased(torch.nn.Module):
    def __init__(self, mode: str, align_corners: bool, **size):
        super().__init__()
        self.mode, self.align_corners, self.size = mode, align_corners, size

    def forward(self, x):
        return torch.nn.functional.interpolate(x, mode=self.mode, antialias=True, align_corners=self.align_corners,
                                               **self.size)


@pytest.mark.parametrize("mode", ["bilinear", "bicubic"])
@pytest.mark.parametrize("shape, align_corners, size", [
    ((2, 3, 12, 15), False, {"size": (5, 7)}), ((1, 2, 16, 16), False, {"scale_factor": 0.5}),
    ((1, 2, 8, 6), True, {"scale_factor": 2.5}), ((2, 1, 12, 9), False, {"size": (5, 1)}),
    ((1, 2, 1, 9), True, {"size": (1, 4)})])
def test_antialiased_resize_matches_eager(mode, shape, align_corners, size, rng):
    model, x = ResizesAntialiased(mode, align_corners, **size), _randn(rng, *shape)
    graph = import_exported_program(export_module(model, (x,)))
    np.testing.assert_allclose(run_graph(graph, [x.numpy()])[0], model(x).numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("target", ["onnx", "llvm"])
def test_antialiased_resize_compiles(target, tmp_path, rng):
    model, x = ResizesAntialiased("bilinear", False, size=(5, 7)), _randn(rng, 2, 3, 12, 15)
    art = compiler.compile(model, (x,), target=target, output=tmp_path / "m.aot")
    np.testing.assert_allclose(art.load()(x.numpy()), model(x).numpy(), rtol=1e-5, atol=1e-5)


class ViewsStrided(torch.nn.Module):
    def forward(self, x):
        return torch.as_strided(x, (3, 4), (2, 1), 1) + 1, torch.as_strided(x, (2, 2, 3), (5, 1, 2))


@pytest.mark.parametrize("target", ["onnx", "llvm"])
def test_as_strided_on_a_contiguous_input_compiles(target, tmp_path, rng):
    x = _randn(rng, 4, 5)
    art = compiler.compile(ViewsStrided(), (x,), target=target, output=tmp_path / "m.aot")
    for got, want in zip(art.load()(x.numpy()), ViewsStrided()(x)):
        np.testing.assert_array_equal(got, want.numpy())


class NanHandling(torch.nn.Module):
    def forward(self, x, y):
        return (torch.isnan(x), torch.nan_to_num(x), torch.maximum(x, y), torch.minimum(y, x), x.clamp(-1, 1),
                torch.isinf(x))


@pytest.mark.parametrize("target", ["onnx", "llvm"])
def test_nan_and_inf_are_exact_on_every_target(target, tmp_path):
    """LLVM's max/min drop NaN and TVM folds x != x to False: NaN must survive both."""
    nan, inf = float("nan"), float("inf")
    x = torch.tensor([[1.0, nan, inf, -inf, 0.5, 3.0, -3.0, nan]])
    y = torch.tensor([[nan, 2.0, 1.0, nan, -0.5, 3.5, nan, nan]])
    art = compiler.compile(NanHandling(), (x, y), target=target, output=tmp_path / "m.aot")
    for got, want in zip(art.load()(x.numpy(), y.numpy()), NanHandling()(x, y)):
        np.testing.assert_array_equal(got, want.numpy())  # NaN positions must agree too


class Activations(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Linear(8, 16)

    def forward(self, x):
        F = torch.nn.functional
        y = F.relu6(self.conv(x))  # fused into the conv as its activation
        return (y, F.hardtanh(self.fc(y.permute(0, 2, 3, 1)), -1.0, 2.0), torch.relu(self.conv(x)),
                torch.relu(x), F.hardsigmoid(x), F.relu6(x))


@pytest.mark.parametrize("target", ["onnx", "llvm"])
def test_nan_goes_through_relu_and_fused_relu6_on_every_target(target, tmp_path):
    """LLVM lowers max(x, 0) to a select that picks 0 over NaN; PyTorch gives NaN."""
    torch.manual_seed(0)
    module, x = Activations().eval(), torch.randn(1, 3, 5, 5)
    x[0, 1, 2, 3] = x[0, 0, 0, 0] = float("nan")
    # (llvm: verification would rightly flag the fused outputs' NaN, checked below instead)
    art = compiler.compile(module, (x,), target=target, output=tmp_path / "m.aot", verify=target != "llvm")
    outputs = list(zip(art.load()(x.numpy()), module(x)))
    if target == "llvm":
        # A relu/relu6 fused into the conv/linear keeps LLVM's fastest max/min, which may map NaN
        # to the bound (backends/tvm/ops/elementwise.py EPILOGUE): the first three outputs match
        # where PyTorch's are numbers; their NaN positions are not promised.
        for got, want in outputs[:3]:
            want = want.detach().numpy()
            assert np.isnan(want).any()
            np.testing.assert_allclose(got[~np.isnan(want)], want[~np.isnan(want)], rtol=1e-5, atol=1e-5)
        outputs = outputs[3:]
    for got, want in outputs:
        want = want.detach().numpy()
        assert np.isnan(want).any()
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


class Embeds(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.table = torch.nn.Embedding(10, 4)

    def forward(self, ids):
        return self.table(ids.reshape(-1)) * 2


@pytest.mark.parametrize("target", ["onnx", "llvm"])
def test_an_index_out_of_range_is_refused_on_every_target(target, tmp_path):
    module = Embeds().eval()
    art = compiler.compile(module, (torch.tensor([[1, 2]]),), target=target, output=tmp_path / "m.aot")
    assert art.manifest["index_bounds"] == {"ids": [-10, 9]}
    model = art.load()
    # the IR's gather takes negative indices from the end (torch's embedding refuses them)
    want = module.table.weight.detach().numpy()[[9, 0]] * 2
    np.testing.assert_allclose(model(np.array([[9, -10]])), want, rtol=1e-6)
    for bad in (99, 10, -11):
        with pytest.raises(compiler.InputError, match=f"input 'ids' holds the index {bad}, outside \\[-10, 9\\]"):
            model(np.array([[1, bad]]))


def test_malformed_index_bounds_are_refused(tmp_path):
    from compiler.driver.artifact import read_artifact, write_artifact

    art = compiler.compile(Embeds(), (torch.tensor([[1, 2]]),), output=tmp_path / "m.aot", verify=False)
    manifest, payload = read_artifact(art.path)
    for bad in ({"nope": [0, 1]}, {"ids": [3, 1]}, {"ids": [0]}, {"ids": [0.5, 2]}, [0, 1]):
        write_artifact(str(tmp_path / "bad.aot"), {**manifest, "index_bounds": bad}, payload)
        with pytest.raises(compiler.ArtifactError, match="index_bounds"):
            compiler.load(tmp_path / "bad.aot")


class ComputedIndices(torch.nn.Module):
    """Indices computed inside the model: load() cannot check them against the inputs."""

    def __init__(self):
        super().__init__()
        self.table = torch.nn.Embedding(10, 4)

    def forward(self, ids, x):
        rows = self.table(ids + 3)
        picked = torch.gather(x, 1, ids * 2)
        return rows.sum(-1) + picked


@pytest.mark.parametrize("target", ["onnx", "llvm"])
def test_a_computed_index_out_of_range_stops_the_run(target, tmp_path):
    """On llvm the gathers clamp; a check kernel before each one whose indices are computed
    (not an input, not a constant) stops the run with InputError, as onnxruntime's gathers do."""
    module = ComputedIndices().eval()
    ids, x = torch.tensor([[1, 2]]), torch.randn(1, 8)
    model = compiler.compile(module, (ids, x), target=target, output=tmp_path / "m.aot").load()
    good = np.array([[0, 3]])
    with torch.no_grad():
        want = module(torch.from_numpy(good), x).numpy()
    np.testing.assert_allclose(model(good, x.numpy()), want, rtol=1e-5, atol=1e-6)
    for bad in ([[7, 1]], [[1, 4]]):  # 7 + 3 is past the table; 4 * 2 past x's 8 columns
        with pytest.raises(compiler.InputError, match="out of range|out of data bounds"):
            model(np.array(bad), x.numpy())


class HalvesPrecision(torch.nn.Module):
    def forward(self, x):
        return (x.to(torch.bfloat16) * 2).float()


class AddsBfloat16(torch.nn.Module):
    def forward(self, x, y):
        return x + y


@pytest.mark.parametrize("target", ["onnx", "llvm"])
def test_bfloat16_is_refused_in_one_line(target, tmp_path, rng):
    """numpy has no bfloat16 (verification and the artifact's callers hold numpy arrays): a
    bfloat16 input or a cast to it inside is a user error with a way out, not a crash."""
    x = _randn(rng, 4, 4)
    for model, inputs in ((HalvesPrecision(), (x,)), (AddsBfloat16(), (x.bfloat16(), x.bfloat16()))):
        with pytest.raises(CompileError) as info:
            compiler.compile(model, inputs, target=target, output=tmp_path / "m.aot")
        message = str(info.value)
        assert "bfloat16" in message and "float32" in message and "\n" not in message


class Differences(torch.nn.Module):
    def forward(self, a, b, c):
        return a - b, b * c


@pytest.mark.parametrize("target", ["onnx", "llvm"])
def test_one_tensor_passed_as_several_example_inputs_stays_several_inputs(target, tmp_path, rng):
    """torch.export traces inputs sharing memory as one input: ``f(x, x)`` would compile to a
    model that ignores its first input. Callers then pass different tensors."""
    x = _randn(rng, 3, 4)
    art = compiler.compile(Differences(), (x, x, x[1:2].expand(3, 4)), target=target, output=tmp_path / "m.aot")
    a, b, c = _randn(rng, 3, 4), _randn(rng, 3, 4), _randn(rng, 3, 4)
    for got, want in zip(art.load()(a.numpy(), b.numpy(), c.numpy()), Differences()(a, b, c), strict=True):
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-6)


class SparseProduct(torch.nn.Module):
    def forward(self, sparse, dense):
        return torch.sparse.mm(sparse, dense)


def test_a_sparse_input_is_refused_in_one_line(tmp_path, rng):
    """The artifact takes numpy arrays: a sparse input is a user error with a way out."""
    sparse = torch.sparse_coo_tensor(torch.tensor([[0, 1, 2], [2, 0, 1]]), torch.tensor([1.0, 2.0, 3.0]), (3, 8))
    with pytest.raises(CompileError) as info:
        compiler.compile(SparseProduct(), (sparse, _randn(rng, 8, 5)), output=tmp_path / "m.aot")
    message = str(info.value)
    assert "sparse_coo" in message and "to_dense()" in message and "\n" not in message


class SparseBuffer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        csr = torch.sparse_csr_tensor(torch.tensor([0, 1, 2]), torch.tensor([0, 1]), torch.tensor([1.0, 1.0]))
        self.register_buffer("csr", csr)

    def forward(self, x):
        return torch.matmul(self.csr.to_sparse(layout=torch.sparse_csr), x).sum()


def test_a_failure_inside_torchs_decompositions_is_one_line():
    exported = torch.export.export(SparseBuffer().eval(), (torch.ones(2, 1),))
    with pytest.raises(CompileError) as info:
        import_exported_program(exported)
    message = str(info.value)
    assert message.startswith("PyTorch's decompositions failed") and "\n" not in message
