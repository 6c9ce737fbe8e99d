"""Quantization-aware fine-tuning: the fake-quantized torch module computes what the static int8
graph computes, and training with it in the loop gives a model that quantizes well."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from compiler.errors import CompileError  # noqa: E402
from compiler.driver.finetune import fake_quant_params, finetune  # noqa: E402
from compiler.interpreter import run_graph  # noqa: E402
from compiler.driver.to_torch import graph_to_module  # noqa: E402
from passes.quantize import quantize_graph  # noqa: E402
from test_pruning import mlp_graph, pipeline_graph  # noqa: E402
from test_to_torch import module_outputs  # noqa: E402


def _outputs(module, x: np.ndarray) -> np.ndarray:
    return module_outputs(module, [x])


def test_fake_quantized_module_matches_the_int8_graph():
    rng = np.random.default_rng(3)
    graph = mlp_graph(rng, sizes=(12, 32, 16, 5))
    calibration = [[rng.standard_normal((16, 12)).astype(np.float32)] for _ in range(4)]
    x = rng.standard_normal((64, 12)).astype(np.float32)

    quantized = graph.copy()
    quantize_graph(quantized, "int8", calibration)
    expected = run_graph(quantized, [x])[0]
    module = graph_to_module(graph)
    float_out = _outputs(module, x)
    module.enable_fake_quant(fake_quant_params(graph, calibration))
    fake = _outputs(module, x)

    # Same roundings, except the int8 graph's biases are rounded to int32 and its layer outputs
    # requantized where the fake-quantized module keeps float: far closer to the int8 graph than
    # the float model is.
    quant_error = np.abs(float_out - expected).max()
    assert quant_error > 0
    assert np.abs(fake - expected).max() < 0.2 * quant_error
    module.disable_fake_quant()
    np.testing.assert_allclose(_outputs(module, x), float_out, rtol=0, atol=0)


def test_gradients_flow_through_the_rounding():
    rng = np.random.default_rng(4)
    graph = mlp_graph(rng)
    module = graph_to_module(graph)
    module.enable_fake_quant(fake_quant_params(graph, [[rng.standard_normal((8, 12)).astype(np.float32)]]))
    module(torch.from_numpy(rng.standard_normal((8, 12)).astype(np.float32))).sum().backward()
    grads = [p.grad for p in module.parameters()]
    assert grads and all(g is not None and bool(g.abs().sum() > 0) for g in grads)


def test_quantization_aware_finetuning_of_the_digits_mlp_compiles_to_int8(tmp_path):
    import compiler
    from models.digits import accuracy, digits_data

    data = digits_data()
    graph, _ = pipeline_graph("digits_mlp")
    float_accuracy = accuracy(lambda a: run_graph(graph, [a])[0], data.x_test, data.y_test)
    before = [p.detach().clone() for p in graph_to_module(graph).parameters()]
    module = finetune(graph, data.x_train, data.y_train, epochs=3, quantization_aware=True)
    assert any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))  # it trained

    calibration = [(data.x_train[i:i + 64].copy(),) for i in range(0, 640, 64)]
    example = (torch.from_numpy(data.x_test[:2].copy()),)
    art = compiler.compile(module, example, output=tmp_path / "qat.aot", dynamic_batch=True, quantize=compiler.QuantizeOptions("int8", calibration=calibration))
    assert accuracy(art.load(threads=1), data.x_test, data.y_test) >= float_accuracy - 0.01


def test_quantization_aware_finetuning_needs_a_whole_calibration_batch():
    graph = mlp_graph(np.random.default_rng(5))
    with pytest.raises(CompileError, match="calibration batch"):
        finetune(graph, np.zeros((4, 12), np.float32), np.zeros(4, np.int64), batch=16, quantization_aware=True)
