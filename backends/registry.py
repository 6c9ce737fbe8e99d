"""Compile targets: how each one turns a Graph into artifact payload files.

A target names the backend module that emits it. That module is imported only when the target
is used, so ``compile --target onnx`` never imports tvm. An emitter module exposes::

    def emit_target(graph: Graph, options: dict) -> tuple[dict[str, bytes], dict]
        # payload files for the artifact, and target_info for the manifest. target_info may
        # hold "tolerance": {"rtol": r, "atol": a}, the verification tolerance the target
        # needs when the user gives none (fixed-point HLS is not float32-exact).
    def supported_ops() -> set[str]
    def check_cpu_name(cpu: str) -> None  # only targets taking option "cpu": CompileError if unknown

``options`` holds the target's own options (``Target.options``) plus ``"target"``, the target
name, and ``"progress"`` (a callable taking one line) when the caller shows progress. The runtime side (artifact -> callable) is registered in ``compiler.driver.runtime``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from compiler.errors import CompileError, UnsupportedOpError
from compiler.ir import Graph

from .options import TARGET_OPTIONS, options_for


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    module: str  # emitter module: emit_target() and supported_ops()

    @property
    def options(self) -> tuple[str, ...]:
        """Names of the options it accepts: the fields of its class in ``backends/options.py``."""
        return TARGET_OPTIONS[self.name].names()

    def check_options(self, options: dict[str, Any]) -> None:
        """Reject options of other targets (and bad values) before any slow work; a CPU name is
        checked against LLVM's list (that needs the backend)."""
        options_for(self.name, options)
        if options.get("cpu") is not None and "cpu" in self.options:
            importlib.import_module(self.module).check_cpu_name(str(options["cpu"]))  # an LLVM CPU name

    def emit(self, graph: Graph, options: dict[str, Any], progress=None) -> tuple[dict[str, bytes], dict[str, Any]]:
        """``progress``: None or a callable taking one line, passed on as ``options["progress"]``
        for the emitters that report their slow steps."""
        self.check_options(options)
        chosen = {k: v for k, v in options.items() if k in self.options}
        if progress is not None:
            chosen["progress"] = progress
        try:
            return importlib.import_module(self.module).emit_target(graph, {**chosen, "target": self.name})
        except UnsupportedOpError as exc:
            others = [t for t in targets_supporting(exc.op) if t != self.name]
            if others and not getattr(exc, "targets_named", False):
                exc.args = (f"{exc.args[0]} (target(s) that support {exc.op}: {', '.join(others)})",)
                exc.targets_named = True
            raise


TARGETS: dict[str, Target] = {
    "onnx": Target("onnx", "ONNX model run by onnxruntime (CPU)", "backends.onnx.emit"),
    "llvm": Target("llvm", "Apache TVM module for the host CPU (shared library, Relax VM)",
                   "backends.tvm.emit"),
    "cuda": Target("cuda", "Apache TVM module for an NVIDIA GPU (builds without a GPU)",
                   "backends.tvm.emit"),
    "hls": Target("hls", "Vitis HLS C++ project for an FPGA, run here as a g++ C simulation",
                  "backends.hls.emit"),
}


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise CompileError(f"unknown target '{name}'; available: {', '.join(TARGETS)}") from None


def supported_ops(target: str) -> set[str]:
    """Op names the target can emit (empty when its backend cannot be imported here)."""
    tgt = TARGETS.get(target)
    if tgt is None:
        return set()
    try:
        module = importlib.import_module(tgt.module)
    except ImportError:
        return set()
    return set(module.supported_ops())


def targets_supporting(op: str) -> list[str]:
    """Targets whose backend emits ``op`` (for error messages that suggest another target)."""
    return [name for name in TARGETS if op in supported_ops(name)]
