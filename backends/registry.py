"""Compile targets: how each one turns a Graph into artifact payload files.

A target's emitter is imported only when that target is used, so ``compile --target onnx`` never
imports tvm. The runtime side (artifact -> callable) is registered in ``compiler.runtime``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from compiler.errors import CompileError
from compiler.ir import Graph


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    emit: Callable[[Graph, dict[str, Any]], tuple[dict[str, bytes], dict[str, Any]]]


def _emit_onnx(graph: Graph, options: dict[str, Any]) -> tuple[dict[str, bytes], dict[str, Any]]:
    from backends.onnx.emit import DEFAULT_OPSET, emit_onnx

    opset = options.get("opset") or DEFAULT_OPSET
    standard_only = bool(options.get("onnx_standard_only"))
    model = emit_onnx(graph, opset=opset, standard_only=standard_only)
    return {"model.onnx": model.SerializeToString()}, {"opset": opset, "standard_only": standard_only}


TARGETS: dict[str, Target] = {
    "onnx": Target("onnx", "ONNX model run by onnxruntime (CPU)", _emit_onnx),
}


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise CompileError(f"unknown target '{name}'; available: {', '.join(TARGETS)}") from None


_EMITTER_MODULES = {"onnx": "backends.onnx.emit"}


def supported_ops(target: str) -> set[str]:
    """Op names the target can emit."""
    module = _EMITTER_MODULES.get(target)
    if module is None:
        return set()
    return set(importlib.import_module(module).supported_ops())
