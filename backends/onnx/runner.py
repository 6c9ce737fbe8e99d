"""Run an ONNX artifact with onnxruntime on the CPU. Imports no torch."""

from __future__ import annotations

from typing import Callable

import numpy as np


def session_from_model(model_bytes: bytes, threads: int | None = None):
    """An onnxruntime session with full graph optimisation; ``threads`` None = all cores."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or 0
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def load_runner(manifest: dict, payload: dict[str, bytes],
                threads: int | None) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
    session = session_from_model(payload["model.onnx"], threads)
    names = [i.name for i in session.get_inputs()]

    def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
        return session.run(None, dict(zip(names, inputs)))

    return run
