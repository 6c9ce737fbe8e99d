"""The TVM targets' emitter: IR ``Graph`` -> Relax IRModule (``backends.tvm.lower``) -> compiled
library (``backends.tvm.pipeline.build``) -> artifact payload.

Payload: ``model.so``, the VM executable's ``export_library`` output (for cuda it embeds the
CUDA source/PTX, compiled for the GPU when loaded). target_info: the TVM target dict (llvm with
``mcpu``, or cuda with ``arch`` and an llvm host), the TVM version, and ``runnable_here`` /
``not_runnable_reason`` when this machine cannot run it (cuda without a GPU), so ``compile()``
skips verification with that note instead of failing.

Target defaults:
- llvm: ``mcpu`` = the host CPU as LLVM names it (``tvm.target.codegen.llvm_get_system_cpu``);
  option ``cpu`` overrides it.
- cuda: ``arch`` = option ``cuda_arch`` (``sm_XX`` or ``XX``), else the compute capability of the
  local GPU (``tvm.cuda(0)``, then ``nvidia-smi``), else ``sm_80``.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from typing import Any

from compiler.ir import Graph

LIBRARY = "model.so"
DEFAULT_CUDA_ARCH = "sm_80"


def supported_ops() -> set[str]:
    from .lower import supported_ops as ops

    return ops()


def target_dict(options: dict[str, Any]) -> dict[str, Any]:
    """The TVM target as a plain dict (recorded in the manifest)."""
    if options.get("target") == "cuda":
        return {"kind": "cuda", "arch": _cuda_arch(options.get("cuda_arch")), "host": host_target(None)}
    return host_target(options.get("cpu"))


def host_target(cpu: str | None) -> dict[str, Any]:
    import tvm

    return {"kind": "llvm", "mcpu": cpu or str(tvm.target.codegen.llvm_get_system_cpu())}


def _cuda_arch(requested: str | None) -> str:
    if requested:
        arch = str(requested)
        return arch if arch.startswith("sm_") else "sm_" + arch.replace(".", "")
    local = local_gpu_arch()
    return local or DEFAULT_CUDA_ARCH


def local_gpu_arch() -> str | None:
    """``sm_XX`` of GPU 0 when one is present here, else None."""
    try:
        import tvm

        dev = tvm.cuda(0)
        if dev.exist:
            return "sm_" + str(dev.compute_version).replace(".", "")
    except Exception:  # no CUDA runtime/driver in this process: ask nvidia-smi
        pass
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout.split()
        return "sm_" + out[0].replace(".", "") if out else None
    except (OSError, subprocess.SubprocessError):
        return None


def gpu_present() -> bool:
    try:
        import tvm

        return bool(tvm.cuda(0).exist)
    except Exception:
        return False


def make_target(tdict: dict[str, Any]):
    import tvm

    if tdict["kind"] == "cuda":
        return tvm.target.Target({k: v for k, v in tdict.items() if k != "host"}, host=tdict["host"])
    return tvm.target.Target(tdict)


def emit_target(graph: Graph, options: dict[str, Any]) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The registry's entry point: ``{"model.so": bytes}`` and target_info."""
    import tvm

    from . import pipeline
    from .lower import to_relax

    tdict = target_dict(options)
    target = make_target(tdict)
    graph = _full_linear_inputs(graph.copy())  # prepare_graph rewrites in place: keep the caller's
    graph = pipeline.prepare_graph(graph, target)
    mod, notes = to_relax(graph)
    stats: dict[str, Any] = {}
    executable = pipeline.build(mod, target, {**options, "stats": stats})
    info: dict[str, Any] = {"tvm_target": tdict, "tvm_version": tvm.__version__, "library": LIBRARY}
    if stats:
        info["schedules"] = stats
    if notes.get("dequantized"):
        info["dequantized"] = notes["dequantized"]
    if tdict["kind"] == "cuda" and not gpu_present():
        info["runnable_here"] = False
        info["not_runnable_reason"] = f"no NVIDIA GPU/driver on this machine to run the {tdict['arch']} module"
    return {LIBRARY: export_bytes(executable)}, info


def _full_linear_inputs(graph: Graph) -> Graph:
    """Give every bias-less ``linear`` an explicit absent bias (3 inputs): prepare_graph's
    padding reads ``inputs[2]``."""
    for node in list(graph.nodes):
        if node.op == "linear" and len(node.inputs) == 2:
            new = graph.insert_before(node, "linear", [*node.inputs, None], dict(node.attrs), location=node.location)
            name = node.output.name
            graph.replace_all_uses_with(node.output, new.output)
            graph.remove_node(node)
            graph.rename_value(node.output, name + "_old")
            graph.rename_value(new.output, name)
    return graph


def export_bytes(executable) -> bytes:
    """The executable as a shared library, read back into memory."""
    with tempfile.TemporaryDirectory(prefix="aot-tvm-") as tmp:
        path = os.path.join(tmp, LIBRARY)
        executable.export_library(path)
        with open(path, "rb") as f:
            return f.read()


__all__ = ["DEFAULT_CUDA_ARCH", "LIBRARY", "emit_target", "host_target", "local_gpu_arch", "supported_ops",
           "target_dict"]
