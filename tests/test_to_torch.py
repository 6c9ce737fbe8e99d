"""IR graph -> trainable torch module, and recovery fine-tuning after pruning.

Differential: the module is checked against the reference interpreter on fresh random inputs
(another batch size than the traced one), before and after compression; fine-tuning is checked
against the unpruned model's accuracy.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from compiler.errors import CompileError, UnsupportedOpError  # noqa: E402
from compiler.driver.finetune import finetune  # noqa: E402
from compiler.interpreter import run_graph  # noqa: E402
from compiler.ir import DType, Graph, TensorType  # noqa: E402
from compiler.driver.to_torch import graph_to_module  # noqa: E402
from passes.prune_channels import prune_channels  # noqa: E402
from passes.prune_magnitude import prune_magnitude, weight_slots  # noqa: E402
from test_pruning import DIGITS_CNN, mlp_graph, pipeline_graph  # noqa: E402

MODELS = ("mlp", "lenet", "resnet", "mobilenet", "transformer", "digits_mlp", DIGITS_CNN)


def random_inputs(graph: Graph, rng, batch: int = 3) -> list[np.ndarray]:
    arrays = []
    for v in graph.inputs:
        shape = tuple(batch if isinstance(d, str) else d for d in v.shape)
        if v.dtype.is_float:
            arrays.append(rng.standard_normal(shape).astype(v.dtype.numpy))
        else:  # token ids: inside the embedding table of every zoo model
            arrays.append(rng.integers(0, 100, size=shape).astype(v.dtype.numpy))
    return arrays


def module_outputs(module, arrays: list[np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        return module(*[torch.from_numpy(a) for a in arrays]).numpy()


@pytest.mark.parametrize("name", MODELS)
def test_module_matches_the_interpreter(name, rng):
    graph, _ = pipeline_graph(name)
    x = random_inputs(graph, rng)
    np.testing.assert_allclose(module_outputs(graph_to_module(graph), x), run_graph(graph, x)[0],
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["resnet", "mobilenet", DIGITS_CNN])
def test_module_matches_the_interpreter_after_pruning(name, rng):
    graph, _ = pipeline_graph(name)
    prune_channels(graph, 0.5)
    prune_magnitude(graph, 0.5)
    x = random_inputs(graph, rng)
    np.testing.assert_allclose(module_outputs(graph_to_module(graph), x), run_graph(graph, x)[0],
                               rtol=1e-4, atol=1e-5)


def test_only_layer_weights_and_biases_are_trained(rng):
    graph, _ = pipeline_graph("transformer")
    module = graph_to_module(graph)
    trained = sum(p.numel() for p in module.parameters())
    layers = [n for n in graph.nodes if n.op in ("conv", "linear", "qkv_attention")]  # packed q/k/v are linears
    assert trained == sum(v.const.size for n in layers for v in n.inputs[1:] if v is not None)
    assert trained < graph.parameter_count()  # embedding, positions and layer norms are buffers


def test_an_op_without_a_torch_implementation_is_named(rng):
    g = Graph("g")
    x = g.add_input("x", TensorType(DType.float32, (2, 5)))
    g.set_outputs([g.op("cumsum", g.op("relu", x), axis=1)])
    with pytest.raises(UnsupportedOpError, match="cumsum.*TORCH_OPS"):
        graph_to_module(g)


def test_pruned_weights_stay_zero_whatever_the_train_step_does(rng):
    g = mlp_graph(rng)
    prune_magnitude(g, 0.7)
    zeros = [s.value.const == 0 for s in weight_slots(g)]
    x = rng.standard_normal((40, 12)).astype(np.float32)
    y = rng.integers(0, 5, size=40)
    calls = []

    def step(module, xb, yb):  # plain SGD with weight decay: it moves zero weights
        optimizer = torch.optim.SGD(module.parameters(), lr=0.1, weight_decay=0.1)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(module(xb), yb).backward()
        optimizer.step()
        calls.append(len(xb))

    module = finetune(g, x, y, epochs=2, batch=16, train_step=step)
    assert calls == [16, 16, 8] * 2
    weights = [p.detach().numpy() for p in module.parameters() if p.dim() == 2]
    for zero, w, slot in zip(zeros, weights, weight_slots(g)):
        np.testing.assert_array_equal(w == 0, zero)
        assert not np.array_equal(w, slot.value.const)  # it did train


def test_finetune_rejects_mismatched_data(rng):
    g = mlp_graph(rng)
    with pytest.raises(CompileError, match="same number of samples"):
        finetune(g, np.zeros((4, 12), np.float32), np.zeros(3, np.int64))
    with pytest.raises(CompileError, match="unknown fine-tuning loss"):
        finetune(g, np.zeros((4, 12), np.float32), np.zeros(4, np.int64), loss="hinge")


def test_finetuning_recovers_a_90_percent_pruned_digits_mlp_and_compiles_again(tmp_path):
    import compiler
    from models.digits import accuracy, digits_data

    data = digits_data()
    graph, _ = pipeline_graph("digits_mlp")
    dense = accuracy(lambda a: run_graph(graph, [a])[0], data.x_test, data.y_test)
    prune_magnitude(graph, 0.9)
    pruned = accuracy(lambda a: run_graph(graph, [a])[0], data.x_test, data.y_test)
    module = finetune(graph, data.x_train, data.y_train, epochs=10)
    tuned = accuracy(lambda a: module_outputs(module, [a]), data.x_test, data.y_test)
    assert pruned < dense - 0.01 < tuned  # pruning hurt, fine-tuning got it back to within 1 pp

    example = (torch.from_numpy(data.x_test[:2].copy()),)
    art = compiler.compile(module, example, output=tmp_path / "tuned.aot", dynamic_batch=True)
    run = art.load(threads=1)
    assert accuracy(run, data.x_test, data.y_test) == pytest.approx(tuned)
    weights = [v.const for v in art.graph.constants.values() if v.const.ndim == 2]
    total = sum(w.size for w in weights)
    assert sum(int((w == 0).sum()) for w in weights) >= round(0.9 * total)  # compiled back with its zeros
