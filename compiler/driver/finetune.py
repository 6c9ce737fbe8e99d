"""Recovery fine-tuning of a compressed graph.

``finetune(graph, x, y)`` turns the graph into a trainable module (``compiler.driver.to_torch``), trains
it for a few epochs (Adam on cross-entropy or mean squared error, shuffled minibatches with a
fixed seed) or calls the user's ``train_step(module, xb, yb)`` per minibatch, keeps pruned weights
at zero after every step, and returns the module in eval mode. Compile it again with
``compiler.compile(module, example_inputs)`` to get the fine-tuned artifact.

``quantization_aware=True`` trains with the rounding of static int8 in the loop (fake quantization,
``GraphModule.enable_fake_quant``): the layers the int8 pass would quantize get uint8 inputs with
scales calibrated on ``calibration_data`` (default: the first batches of ``x``) and per-channel int8
weights. The returned module is float again (fake quantization off); compile it with
``quantize="int8"`` and calibration data as usual.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from compiler.errors import CompileError
from compiler.ir import Graph
from compiler.driver.to_torch import GraphModule, graph_to_module

LOSSES: dict[str, Callable[[], nn.Module]] = {"cross_entropy": nn.CrossEntropyLoss, "mse": nn.MSELoss,
                                              "bce": nn.BCEWithLogitsLoss}  # bce: one logit per sample


def _as_tensor(a) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a.detach()
    return torch.from_numpy(np.ascontiguousarray(a))


def finetune(graph: Graph, x, y, *, epochs: int = 5, lr: float = 1e-3, batch: int = 64,
             loss: str = "cross_entropy", train_step: Callable | None = None, seed: int = 0,
             quantization_aware: bool = False, calibration_data=None, calibrator: str = "minmax",
             quantize_skip=()) -> GraphModule:
    """Fine-tune ``graph`` on inputs ``x`` (an array, or a sequence of arrays for several graph
    inputs) and targets ``y``; returns the trained module (``graph`` itself is not changed)."""
    if loss not in LOSSES and train_step is None:
        raise CompileError(f"unknown fine-tuning loss '{loss}'; choose one of {', '.join(LOSSES)} "
                           f"or pass train_step=")
    xs = [_as_tensor(a) for a in (x if isinstance(x, (list, tuple)) else [x])]
    yt = _as_tensor(y)
    if len(xs) != len(graph.inputs):
        raise CompileError(f"the graph takes {len(graph.inputs)} inputs, fine-tuning data gives {len(xs)}")
    if any(len(t) != len(yt) for t in xs):
        raise CompileError("fine-tuning inputs and targets must have the same number of samples along dim 0")
    module = graph_to_module(graph)
    step = train_step or _default_step(module, lr, LOSSES[loss]())
    fixed = graph.inputs[0].shape[0] if graph.inputs and graph.inputs[0].shape else None
    if isinstance(fixed, int):  # a graph compiled for a static batch trains on batches of exactly that size
        if len(yt) < fixed:
            raise CompileError(f"the graph takes batches of {fixed} samples; fine-tuning data has only {len(yt)} "
                               "(compile with dynamic_batch=True to train on any batch size)")
        batch = fixed
    if quantization_aware:
        batches = calibration_data if calibration_data is not None else _first_batches(xs, batch)
        if not batches:
            raise CompileError(f"quantization-aware fine-tuning needs at least one calibration batch of {batch} samples")
        module.enable_fake_quant(fake_quant_params(graph, batches, calibrator, quantize_skip))
    generator = torch.Generator().manual_seed(seed)
    module.train()
    for _ in range(epochs):
        order = torch.randperm(len(yt), generator=generator)
        last = len(yt) - batch if isinstance(fixed, int) else len(yt) - 1
        for start in range(0, last + 1, batch):
            idx = order[start:start + batch]
            xb = [t[idx] for t in xs]
            step(module, xb[0] if len(xb) == 1 else tuple(xb), yt[idx])
            module.apply_masks()  # pruned weights stay pruned whatever the step did
    module.disable_fake_quant()
    return module.eval()


def fake_quant_params(graph: Graph, batches, calibrator: str = "minmax",
                      skip=()) -> dict[str, tuple[float, int]]:
    """Input value name -> (uint8 scale, zero point) for every layer static int8 would quantize,
    from the same calibration the int8 pass runs."""
    from passes.calibrate import collect_ranges
    from passes.quantize import activation_qparams, select_layers

    layers, _ = select_layers(graph, "int8", skip)
    names = {layer.inputs[0].name for layer in layers}
    ranges = collect_ranges(graph, [[np.asarray(a) for a in b] for b in batches], names, calibrator)
    params = {}
    for name, (lo, hi) in ranges.items():
        qp = activation_qparams(lo, hi)
        params[name] = (float(qp.scale), int(qp.zero_point))
    return params


def _first_batches(xs: list[torch.Tensor], batch: int, count: int = 10) -> list[list[np.ndarray]]:
    """Calibration batches from the training inputs: whole batches only (a static-batch graph
    runs nothing else)."""
    n = len(xs[0]) // batch * batch
    return [[t[i:i + batch].numpy() for t in xs] for i in range(0, min(n, count * batch), batch)]


def _default_step(module: GraphModule, lr: float, loss_fn: nn.Module) -> Callable:
    optimizer = torch.optim.Adam(module.parameters(), lr=lr)

    def step(m: nn.Module, xb, yb) -> float:
        optimizer.zero_grad()
        out = m(*xb) if isinstance(xb, tuple) else m(xb)
        value = loss_fn(out, yb)
        value.backward()
        optimizer.step()
        return float(value.detach())

    return step


__all__ = ["LOSSES", "fake_quant_params", "finetune"]
