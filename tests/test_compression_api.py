"""The compression options of ``compile()`` and the CLI: validation, data files, batching.

The passes themselves are tested in test_quantize.py, test_pruning.py and test_weight_sharing.py;
this file checks the glue that feeds them.
"""

from __future__ import annotations

import numpy as np
import pytest

from compiler.driver.compression import CompressionOptions, calibration_batches, load_npz, split_batches
from compiler.errors import CompileError
from compiler.ir import DType, Graph, TensorType


def graph_with_inputs(*shapes, dtype=DType.float32) -> Graph:
    g = Graph("g")
    values = [g.add_input(f"x{i}" if i else "x", TensorType(dtype, shape)) for i, shape in enumerate(shapes)]
    g.set_outputs([g.op("relu", values[0])])
    return g


@pytest.mark.parametrize("options, message", [
    (dict(quantize="int3"), "unknown quantization 'int3'"),
    (dict(quantize="int8"), "needs calibration data"),
    (dict(prune=1.5), "between 0 and 1"),
    (dict(prune=0.0), "between 0 and 1"),
    (dict(prune=0.5, prune_structure="blocks"), "unknown pruning structure"),
    (dict(prune=0.5, prune_structure="channel", prune_multiple_of=0), "multiple must be >= 1"),
    (dict(weight_sharing_bits=12), "1..8"),
    (dict(weight_sharing_bits=4, quantize="int8-weight"), "cannot be combined"),
    (dict(quantize="int8", calibration="random", calibrator="entropy"), "unknown calibrator"),
])
def test_bad_options_are_rejected_before_any_work(options, message):
    with pytest.raises(CompileError, match=message):
        CompressionOptions(**options).check()


def test_nothing_asked_is_inactive():
    assert not CompressionOptions().active
    assert CompressionOptions(prune=0.5).active


def test_random_calibration_warns_and_matches_the_examples():
    g = graph_with_inputs((2, 3))
    notes: list[str] = []
    example = [np.zeros((2, 3), np.float32)]
    with pytest.warns(UserWarning, match="testing only"):
        batches = calibration_batches(g, "random", example, notes)
    assert notes and all(b[0].shape == (2, 3) and b[0].dtype == np.float32 for b in batches)
    assert not np.array_equal(batches[0][0], batches[1][0])


def test_npz_by_input_name_is_cut_into_static_batches(tmp_path):
    g = graph_with_inputs((4, 3))
    data = np.arange(30, dtype=np.float32).reshape(10, 3)
    np.savez(tmp_path / "cal.npz", x=data)
    batches = calibration_batches(g, str(tmp_path / "cal.npz"), [np.zeros((4, 3), np.float32)])
    assert [b[0].shape for b in batches] == [(4, 3), (4, 3)]  # the last 2 samples do not fill a batch
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), data[:8])


def test_npz_positional_keys_and_symbolic_batch(tmp_path):
    g = graph_with_inputs(("batch", 3), ("batch",), dtype=DType.float32)
    np.savez(tmp_path / "d.npz", np.ones((130, 3), np.float32), np.ones(130, np.float32))
    arrays, _ = load_npz(g, str(tmp_path / "d.npz"), want_labels=False)
    batches = split_batches(g, arrays)
    assert len(batches) == 2 and batches[0][0].shape == (64, 3) and batches[0][1].shape == (64,)


@pytest.mark.parametrize("contents, message", [
    (dict(z=np.ones((4, 3), np.float32)), "no array for input 'x'"),
    (dict(x=np.ones((4, 3), np.float64)), "dtype float64"),
])
def test_npz_errors_name_the_input(tmp_path, contents, message):
    np.savez(tmp_path / "d.npz", **contents)
    with pytest.raises(CompileError, match=message):
        load_npz(graph_with_inputs((4, 3)), str(tmp_path / "d.npz"), want_labels=False)


def test_eval_npz_needs_labels(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.ones((4, 3), np.float32))
    with pytest.raises(CompileError, match="no labels"):
        load_npz(graph_with_inputs((4, 3)), str(tmp_path / "d.npz"), want_labels=True)
    np.savez(tmp_path / "e.npz", x=np.ones((4, 3), np.float32), labels=np.arange(4))
    arrays, labels = load_npz(graph_with_inputs((4, 3)), str(tmp_path / "e.npz"), want_labels=True)
    assert labels.tolist() == [0, 1, 2, 3] and arrays[0].shape == (4, 3)


def test_not_an_npz_file(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"hello")
    with pytest.raises(CompileError, match="cannot read"):
        load_npz(graph_with_inputs((4, 3)), str(tmp_path / "bad.npz"), want_labels=False)


def test_too_few_samples_for_one_batch(tmp_path):
    with pytest.raises(CompileError, match="batches of 4 samples but the data has only 2"):
        split_batches(graph_with_inputs((4, 3)), [np.ones((2, 3), np.float32)])


def test_calibration_items_must_match_the_inputs():
    with pytest.raises(CompileError, match="must hold 1 input"):
        calibration_batches(graph_with_inputs((4, 3)), [(np.ones((4, 3)), np.ones(2))], [])
    with pytest.raises(CompileError, match="empty"):
        calibration_batches(graph_with_inputs((4, 3)), [], [])


def test_constant_folding_keeps_quantized_weights_quantized():
    from compiler.interpreter import run_graph
    from passes import FoldConstants
    from passes.quantize import quantize_graph

    g = Graph("g")
    x = g.add_input("x", TensorType(DType.float32, (2, 4)))
    w = g.add_constant(np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32), "w")
    g.set_outputs([g.op("linear", x, w)])
    quantize_graph(g, "int8-weight")
    before = run_graph(g, [np.ones((2, 4), np.float32)])
    FoldConstants().run(g)
    assert "dequantize_linear" in g.op_counts()
    assert any(v.const.dtype == np.int8 for v in g.constants.values())
    np.testing.assert_array_equal(run_graph(g, [np.ones((2, 4), np.float32)])[0], before[0])


def test_finetune_of_a_static_batch_graph_uses_whole_batches():
    from compiler.driver.finetune import finetune
    from compiler.interpreter import run_graph

    g = Graph("g")
    x = g.add_input("x", TensorType(DType.float32, (4, 3)))
    w = g.add_constant(np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32), "w")
    g.set_outputs([g.op("reshape", g.op("linear", x, w), shape=[4, 2])])  # a reshape fixes the batch
    rng = np.random.default_rng(1)
    data, labels = rng.standard_normal((10, 3)).astype(np.float32), rng.integers(0, 2, 10)
    module = finetune(g, data, labels, epochs=2)
    import torch

    with torch.no_grad():
        trained = module(torch.from_numpy(data[:4])).numpy()
    assert trained.shape == (4, 2)
    assert not np.allclose(trained, run_graph(g, [data[:4]])[0])  # it did train
    with pytest.raises(CompileError, match="batches of 4"):
        finetune(g, data[:3], labels[:3])
