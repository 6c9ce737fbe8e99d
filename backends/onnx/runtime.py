"""Run an ONNX artifact with onnxruntime's CPU provider.

Used where the artifact is loaded, so it imports neither torch nor onnx; onnxruntime itself is
imported when a session is made.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from compiler.errors import ArtifactError, InputError

MODEL_FILE = "model.onnx"


def session_from_model(model_bytes: bytes, threads: int | None = None, config: dict[str, str] | None = None):
    """An ``onnxruntime.InferenceSession`` for serialized model bytes: all graph optimisations,
    ``threads`` intra-op threads (None or 0: onnxruntime's default), one inter-op thread, CPU,
    plus the session config entries the emitter asked for (``target_info["session_config"]``)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    for key, value in (config or {}).items():
        options.add_session_config_entry(str(key), str(value))
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = int(threads or 0)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: no warnings about merged value_info shapes
    return ort.InferenceSession(model_bytes, sess_options=options, providers=["CPUExecutionProvider"])


def load_runner(manifest: dict, payload: dict[str, bytes],
                threads: int | None) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
    """A function running the artifact's ONNX model: inputs in the model's input order, outputs
    as a list in its output order."""
    if MODEL_FILE not in payload:
        raise ArtifactError(f"the ONNX artifact has no {MODEL_FILE}")
    try:
        config = (manifest.get("target_info") or {}).get("session_config") or {}
        session = session_from_model(payload[MODEL_FILE], threads, config)
    except ImportError as exc:
        raise ArtifactError("running an ONNX artifact needs onnxruntime (pip install onnxruntime)") from exc
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise ArtifactError(f"onnxruntime cannot load {MODEL_FILE}: {exc}") from exc
    input_names = [i.name for i in session.get_inputs()]
    output_names = [o.name for o in session.get_outputs()]
    from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

    call = _session_call(session, output_names)

    def run(inputs: list[np.ndarray]) -> list[np.ndarray]:
        if len(inputs) != len(input_names):
            raise InputError(f"the model takes {len(input_names)} inputs ({', '.join(input_names)}), "
                             f"got {len(inputs)}")
        feeds = dict(zip(input_names, inputs))  # numpy arrays; onnxruntime copies non-contiguous ones
        try:
            return list(call(feeds))
        except InvalidArgument as exc:
            raise InputError(f"onnxruntime rejected the inputs: {exc}") from exc

    run.session = session  # type: ignore[attr-defined]  # for benchmarks and tests
    return run


def _session_call(session, output_names: list[str]) -> Callable[[dict], list]:
    """``feeds -> outputs``. InferenceSession.run re-validates the input names in Python and wraps
    the call in a provider-fallback handler (CPU has no fallback) before calling the native
    session; load() has already checked the inputs, so we call the native session directly,
    which saves about 3 us per call (a tenth of a batch-1 LeNet). Falls back to the public run()
    if a future onnxruntime renames its internals."""
    native = getattr(session, "_sess", None)
    if native is None or not callable(getattr(native, "run", None)):
        return lambda feeds: session.run(output_names, feeds)
    import onnxruntime as ort

    options = ort.RunOptions()
    return lambda feeds: native.run(output_names, feeds, options)


__all__ = ["load_runner", "session_from_model"]
