"""Differential checking of one PyTorch function through every layer: PyTorch eager vs the
frontend + reference interpreter, then each backend vs the interpreter.

Integers and bools must match exactly; floats within ``rtol`` (1e-5 by default) relative.
Used by the op-coverage tests; backends that cannot run here are skipped by them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from compiler.frontend import export_module, import_exported_program
from compiler.interpreter import run_graph

RTOL, ATOL = 1e-5, 1e-6


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=gen(seed))


def ints(lo: int, hi: int, *shape, dtype=torch.int64, seed: int = 0) -> torch.Tensor:
    return torch.randint(lo, hi, shape, generator=gen(seed), dtype=dtype)


class Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *xs):
        return self.fn(*xs)


def flatten(value) -> list:
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in flatten(v)]
    return [value]


def assert_same(got, want, rtol=RTOL, atol=ATOL, what="") -> None:
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    if want.dtype.kind in "iub":
        np.testing.assert_array_equal(got, want, err_msg=what)
    else:
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, equal_nan=True, err_msg=what)


def import_fn(fn, inputs, *, dynamic_batch=False):
    module = Fn(fn).eval()
    return module, import_exported_program(export_module(module, tuple(inputs), dynamic_batch=dynamic_batch))


def check_frontend(fn, inputs, *, ops=(), rtol=RTOL, atol=ATOL):
    """The imported graph (which must contain ``ops``) run by the interpreter equals eager."""
    module, graph = import_fn(fn, inputs)
    missing = set(ops) - set(graph.op_counts())
    assert not missing, f"expected IR ops {sorted(missing)} in {graph.op_counts()}"
    with torch.no_grad():
        want = [t.numpy() for t in flatten(module(*inputs))]
    arrays = [t.numpy() for t in inputs]
    got = run_graph(graph, arrays)
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert_same(g, w, rtol, atol, f"interpreter vs eager, output {i}")
    return graph, arrays, got


def run_onnx(graph, arrays):
    from backends.onnx.emit import emit_onnx
    from backends.onnx.runtime import session_from_model

    session = session_from_model(emit_onnx(graph).SerializeToString(), threads=1)
    feeds = {v.name: a for v, a in zip(graph.inputs, arrays)}
    return session.run(None, feeds)


def check_backend(run, graph, arrays, reference, *, rtol=RTOL, atol=ATOL, name="backend"):
    got = run(graph, arrays)
    assert len(got) == len(reference)
    for i, (g, w) in enumerate(zip(got, reference)):
        assert_same(g, w, rtol, atol, f"{name} vs interpreter, output {i}")


def run_tvm(graph, arrays, target: str = "llvm"):
    """The graph compiled by the TVM backend for ``target`` and run through its runtime."""
    from backends.tvm import emit as tvm_emit
    from backends.tvm import runtime as tvm_runtime

    payload, info = tvm_emit.emit_target(graph, {"target": target})
    manifest = {"target": target, "target_info": info, "inputs": [v.name for v in graph.inputs]}
    return tvm_runtime.load_runner(manifest, payload, threads=1)(list(arrays))


def check_backends(graph, arrays, reference, *, rtol=RTOL, atol=ATOL):
    """ONNX (onnxruntime) and TVM llvm against the interpreter's ``reference`` outputs."""
    check_backend(run_onnx, graph, arrays, reference, rtol=rtol, atol=atol, name="onnx")
    check_backend(run_tvm, graph, arrays, reference, rtol=rtol, atol=atol, name="tvm-llvm")
