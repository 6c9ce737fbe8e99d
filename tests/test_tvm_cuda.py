"""TVM cuda target: the module builds on every machine (nvcc/NVRTC are not needed to build: the
library embeds CUDA source compiled when it is loaded on the GPU machine); loading it without a
GPU is a clear ``ArtifactError``; tests marked ``gpu`` run the artifacts on the GPU against the
reference interpreter and PyTorch, and are skipped where there is none (``bench/gpu.sh`` runs
them on a GPU machine).
"""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from op_cases import CASES, LOOSE, assert_outputs_match, rand

from backends.tvm import emit as tvm_emit
from backends.tvm import runtime as tvm_runtime
from compiler.errors import ArtifactError
from compiler.interpreter import run_graph
from compiler.ir import DType, Graph, TensorType

HAS_GPU = tvm_emit.gpu_present()
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="no NVIDIA GPU/driver here")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AOT_COMPILER_CACHE", str(tmp_path / "cache"))


def _mlp_graph() -> Graph:
    rng = np.random.default_rng(3)
    g = Graph("mlp")
    x = g.add_input("x", TensorType(DType.float32, ("batch", 16)))
    w1 = g.add_constant((rng.standard_normal((32, 16)) / 4).astype(np.float32), "w1")
    b1 = g.add_constant(rng.standard_normal(32).astype(np.float32), "b1")
    w2 = g.add_constant((rng.standard_normal((4, 32)) / 6).astype(np.float32), "w2")
    h = g.op("linear", x, w1, b1, activation="relu")
    g.set_outputs([g.op("softmax", g.op("linear", h, w2, None), axis=-1)])
    return g


def _manifest(graph: Graph, info: dict) -> dict:
    return {"target": "cuda", "target_info": info, "inputs": [v.name for v in graph.inputs]}


def test_cuda_module_builds_without_gpu_and_records_arch():
    payload, info = tvm_emit.emit_target(_mlp_graph(), {"target": "cuda", "cuda_arch": "sm_86"})
    assert set(payload) == {"model.so"}
    assert payload["model.so"][:4] == b"\x7fELF"
    assert info["tvm_target"]["kind"] == "cuda" and info["tvm_target"]["arch"] == "sm_86"
    assert info["tvm_target"]["host"]["kind"] == "llvm"
    assert info["tvm_version"] == tvm.__version__
    assert info.get("runnable_here", True) == HAS_GPU
    if not HAS_GPU:
        assert "GPU" in info["not_runnable_reason"]


def test_cuda_arch_option_forms_and_default(monkeypatch):
    assert tvm_emit.target_dict({"target": "cuda", "cuda_arch": "90"})["arch"] == "sm_90"
    monkeypatch.setattr(tvm_emit, "local_gpu_arch", lambda: None)
    assert tvm_emit.target_dict({"target": "cuda"})["arch"] == tvm_emit.DEFAULT_CUDA_ARCH == "sm_80"
    monkeypatch.setattr(tvm_emit, "local_gpu_arch", lambda: "sm_89")
    assert tvm_emit.target_dict({"target": "cuda"})["arch"] == "sm_89"


@pytest.mark.skipif(HAS_GPU, reason="a GPU is present: loading succeeds")
def test_loading_cuda_artifact_without_gpu_is_a_clear_error():
    graph = _mlp_graph()
    payload, info = tvm_emit.emit_target(graph, {"target": "cuda", "cuda_arch": "sm_80"})
    with pytest.raises(ArtifactError, match=r"no CUDA GPU/driver"):
        tvm_runtime.load_runner(_manifest(graph, info), payload, threads=None)


# -- on a GPU -----------------------------------------------------------------------------------
def run_cuda(graph: Graph, inputs: list[np.ndarray]) -> list[np.ndarray]:
    payload, info = tvm_emit.emit_target(graph, {"target": "cuda"})
    assert info.get("runnable_here", True)
    return tvm_runtime.load_runner(_manifest(graph, info), payload, threads=None)(inputs)


GPU_CASES = [p for p in CASES if p.values[0] in {"linear", "conv", "matmul", "softmax", "layer_norm", "attention",
                                                 "max_pool", "avg_pool", "gelu", "reduce_sum", "gather", "add"}]


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("op, build, tol", GPU_CASES)
def test_op_on_gpu_matches_interpreter(op, build, tol):
    graph, inputs = build(np.random.default_rng(20240611))
    # GPU kernels sum in another order (and may use fast math): a little looser than on the CPU
    assert_outputs_match(run_graph(graph, inputs), run_cuda(graph, inputs), (max(tol[0], 1e-4), max(tol[1], 1e-4)))


@pytest.mark.gpu
@needs_gpu
def test_dynamic_batch_on_gpu():
    graph = _mlp_graph()
    payload, info = tvm_emit.emit_target(graph, {"target": "cuda"})
    run = tvm_runtime.load_runner(_manifest(graph, info), payload, threads=None)
    rng = np.random.default_rng(4)
    for batch in (1, 7):
        x = rand(rng, "float32", (batch, 16))
        assert_outputs_match(run_graph(graph, [x]), run([x]), LOOSE)


def _zoo_names():
    from models import ZOO

    return sorted(ZOO)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("name", _zoo_names())
def test_zoo_model_on_gpu(name, tmp_path):
    import compiler
    from models import ZOO

    model = ZOO[name].factory().eval()
    art = compiler.compile(model, model.example_inputs(), target="cuda", output=tmp_path / f"{name}.aot")
    assert art.report.verification is not None and art.report.verification.passed
