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


def test_cuda_target_carries_arch_limits():
    for arch in ("sm_90", "sm_90a", "sm_80", "sm_120", "sm_52"):
        tdict = tvm_emit.target_dict({"target": "cuda", "cuda_arch": arch})
        target = tvm_emit.make_target(tdict)
        for key in ("max_shared_memory_per_block", "max_threads_per_block", "thread_warp_size",
                    "registers_per_block", "l2_cache_size_bytes"):
            assert int(target.attrs[key]) == tdict[key] > 0, (arch, key)
    l2 = lambda arch: tvm_emit.cuda_arch_attrs(arch)["l2_cache_size_bytes"]  # noqa: E731
    assert l2("sm_90") == l2("sm_90a") == tvm_emit.CUDA_L2_BYTES[90]
    assert l2("sm_120") == tvm_emit.CUDA_L2_BYTES[max(tvm_emit.CUDA_L2_BYTES)]  # newer: the newest known
    assert l2("sm_52") == min(tvm_emit.CUDA_L2_BYTES.values())  # older than the table: the smallest


def _cuda_prim_funcs(model, batch):
    """The fused PrimFuncs of ``model`` at ``batch`` as the cuda build sees them, and the target."""
    import compiler
    from backends.tvm import pipeline
    from tvm import relax

    captured = {}

    def capture(mod, target, *_hook):
        captured.update(mod=mod, target=target)
        raise _Captured

    original = pipeline._build_cuda
    pipeline._build_cuda = capture
    try:
        with pytest.raises(_Captured):
            compiler.compile(model, model.example_inputs(batch), target=compiler.CudaOptions(cuda_arch="sm_90"),
                             output="unused.aot", verify=False)
    finally:
        pipeline._build_cuda = original
    mod = relax.get_pipeline("zero")(captured["mod"])
    return {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}, captured["target"]


class _Captured(Exception):
    pass


def test_matmul_rule_kept_off_gemm_with_widening_epilogue(tmp_path, monkeypatch):
    """MobileNet at batch 64: the squeeze-excite 1x1 conv fused with the gate x feature-map
    multiply made dlight's Matmul assert; it must go to a rule that schedules it, while plain
    GEMMs with elementwise epilogues keep Matmul."""
    from tvm.s_tir import dlight

    from backends.tvm.schedules import _epilogue_widens, first_gpu_schedule
    from models import ZOO

    monkeypatch.chdir(tmp_path)
    funcs, target = _cuda_prim_funcs(ZOO["mobilenet"].factory().eval(), 64)
    widening = {n for n, f in funcs.items() if _epilogue_widens(f)}
    assert widening and all("multiply" in n for n in widening)
    with target:
        for name in widening:
            with pytest.raises(AssertionError, match="not properly inlined"):  # the failure this guards against
                dlight.gpu.Matmul().apply(funcs[name], target, False)
            assert first_gpu_schedule(funcs[name], target)[0] != "Matmul"
        plain = [n for n, f in funcs.items() if n.startswith("fused_conv2d") and n not in widening]
        assert plain and any(first_gpu_schedule(funcs[n], target)[0] == "Matmul" for n in plain)


def _zoo_cases():
    from models import ZOO

    return [(name, mode) for name in sorted(ZOO) for mode in ("1", "64", "dynamic")]


@pytest.mark.parametrize("name, mode", _zoo_cases())
def test_zoo_model_compiles_for_cuda_without_warnings(name, mode, tmp_path, caplog, capfd):
    import logging

    import compiler
    from models import ZOO

    model = ZOO[name].factory().eval()
    batch = 2 if mode == "dynamic" else int(mode)
    with caplog.at_level(logging.WARNING):
        art = compiler.compile(model, model.example_inputs(batch), target=compiler.CudaOptions(cuda_arch="sm_90"),
                               output=tmp_path / f"{name}.aot", verify=False, dynamic_batch=mode == "dynamic")
    assert art.manifest["target_info"]["tvm_target"]["arch"] == "sm_90"
    out, err = capfd.readouterr()
    logged = [r.getMessage() for r in caplog.records]
    assert not any("missing" in m for m in logged + out.splitlines() + err.splitlines()), (logged, err)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "bert"])
def test_real_model_compiles_for_cuda(name, tmp_path):
    import compiler
    from models import REAL

    model = REAL[name].factory().eval()
    art = compiler.compile(model, model.example_inputs(1), target=compiler.CudaOptions(cuda_arch="sm_90"),
                           output=tmp_path / f"{name}.aot", verify=False)
    assert art.manifest["target_info"]["tvm_target"]["kind"] == "cuda"


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
