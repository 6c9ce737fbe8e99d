"""The HLS emitter: IR ``Graph`` -> a Vitis HLS C++ project + its g++ C-simulation library.

Steps: plan the fixed-point types (``Plan``: a model default such as ap_fixed<16,6>, per-layer
overrides from ``hls_precision_map``, or ``"auto"`` integer bits from ranges the interpreter
sees on calibration inputs); lower the graph to layer records (``layers.LOWER``, the op table);
generate the C++ project (``codegen``); run the numpy emulator on the calibration inputs (for the
testbench data and the measured error); build the C simulation with g++ when it is available.

Payload: ``hls_project.tar.gz`` (the whole project), ``hls_csim.so`` (the C simulation, when g++
and the ap_types headers were found) and ``hls_runtime.json`` (what the runtime needs).

Tolerance (target_info["tolerance"], used by compile() when the user gives none): fixed point
is not float32-exact. With LSB = 2**-frac of the coarsest layer type, atol = 32 LSB for dense-only
nets and 64 LSB with conv/pool layers (ap_fixed<16,6>: 0.031 / 0.063; the notes measured ~1e-2
and 5e-2), rtol = 2%. The emulator's error against the interpreter on the calibration inputs is
reported too, with a warning when it exceeds atol (too few integer or fraction bits).
"""

from __future__ import annotations

import io
import json
import math
import re
import tarfile
import warnings
from dataclasses import dataclass

import numpy as np

from backends.hls import build, codegen, emulate, estimate
from backends.hls.fixed import FixedType, parse_fixed
from backends.hls.layers import LOWER, STAGE, lower
from compiler.errors import CompileError
from compiler.ir import Graph, Node, Value

DEFAULT_PRECISION = "ap_fixed<16,6>"
PROJECT_FILE = "hls_project.tar.gz"
LIB_FILE = build.LIB_NAME
RUNTIME_FILE = "hls_runtime.json"
CALIBRATION_BATCH = 64
TB_SAMPLES = 8


class HLSOverflowWarning(UserWarning):
    """A value seen on calibration inputs does not fit its fixed-point type (it saturates)."""


def supported_ops() -> set[str]:
    return set(LOWER)


def integer_bits(max_abs: float) -> int:
    """Integer bits (sign included) for values up to ``max_abs``, with one bit of headroom."""
    if not np.isfinite(max_abs) or max_abs <= 0:
        return 1
    return max(1, math.floor(math.log2(max_abs)) + 2)


class Plan:
    """Which fixed-point type each layer output, weight and bias gets; and the reuse factor."""

    def __init__(self, graph: Graph, options: dict, calibration: list[np.ndarray], values: dict[str, np.ndarray]):
        precision = options.get("hls_precision") or DEFAULT_PRECISION
        self.auto = precision == "auto"
        self.default = parse_fixed(DEFAULT_PRECISION if self.auto else precision)
        raw_map = options.get("hls_precision_map") or {}
        if not isinstance(raw_map, dict):
            raise CompileError("hls_precision_map must map layer names to types like 'ap_fixed<8,3>'")
        self.map = {k: parse_fixed(v, f"hls_precision_map[{k!r}]") for k, v in raw_map.items()}
        self.used: set[str] = set()
        self.rf = int(options.get("reuse_factor") or 1)
        if self.rf < 1:
            raise CompileError(f"reuse_factor must be >= 1, got {self.rf}")
        values = {**values, **{v.name: a for v, a in zip(graph.inputs, calibration)}}
        self.max_abs = {name: float(np.max(np.abs(a))) if a.size else 0.0 for name, a in values.items()
                        if isinstance(a, np.ndarray) and a.dtype.kind == "f"}
        self.value_of: dict[str, str] = {}  # layer name -> IR value name
        self.weights_max: dict[str, float] = {}
        self.reuse_notes: list[str] = []

    def _auto(self, max_abs: float, width: int | None = None) -> FixedType:
        width = width or self.default.width
        return FixedType(width, min(width, integer_bits(max_abs)))

    def _pick(self, name: str, value_name: str) -> FixedType:
        if name in self.map:
            self.used.add(name)
            return self.map[name]
        if self.auto:
            return self._auto(self.max_abs.get(value_name, 0.0))
        return self.default

    def input(self, value: Value) -> FixedType:
        self.value_of[value.name] = value.name
        return self._pick(value.name, value.name)

    def result(self, node: Node) -> FixedType:
        self.value_of[node.name] = node.outputs[0].name
        return self._pick(node.name, node.outputs[0].name)

    def weight(self, node: Node, w: np.ndarray) -> FixedType:
        self.weights_max[node.name] = float(np.max(np.abs(w))) if w.size else 0.0
        if node.name in self.map:
            return self.map[node.name]
        return self._auto(self.weights_max[node.name]) if self.auto else self.default

    def bias(self, node: Node, b: np.ndarray, wt: FixedType) -> FixedType:
        if not self.auto or node.name in self.map:
            return wt
        integer = integer_bits(float(np.max(np.abs(b))) if b.size else 0.0)
        frac = min(self.default.width - integer, wt.frac)  # bias frac must not exceed the accumulator's
        return FixedType(max(integer + frac, 2), integer)

    def reuse(self, n_weights: int, n_out: int) -> dict:
        """Reuse factor (a divisor of n_weights, the nearest to the request) and strategy: full
        unrolling ('latency') up to the unroll limit, else weights in memory ('resource')."""
        divisors = [d for d in range(1, n_weights + 1) if n_weights % d == 0] if n_weights < 10 ** 7 else [self.rf]
        rf = min(divisors, key=lambda d: (abs(d - self.rf), d))
        if math.ceil(n_weights / rf) > codegen.UNROLL_LIMIT:
            rf = next(d for d in divisors if n_weights // d <= codegen.UNROLL_LIMIT)
        if rf != self.rf:
            self.reuse_notes.append(f"reuse factor {self.rf} -> {rf} for {n_weights} weights")
        strategy = "latency" if rf == 1 else "resource"
        return {"reuse_factor": rf, "block_factor": math.ceil(n_weights / rf), "strategy": strategy}


def calibration_inputs(graph: Graph, seed: int = 0) -> list[np.ndarray]:
    """Random normal inputs, CALIBRATION_BATCH samples (a static batch dim is repeated in
    ``calibrate``, so a batch-1 graph still sees many samples)."""
    rng = np.random.default_rng(seed)
    arrays = []
    for value in graph.inputs:
        shape = tuple(d if isinstance(d, int) else CALIBRATION_BATCH for d in value.shape)
        if value.dtype.is_float:
            arrays.append(rng.standard_normal(shape).astype(value.dtype.numpy))
        else:
            arrays.append(np.zeros(shape, value.dtype.numpy))
    return arrays


def calibrate(graph: Graph) -> tuple[list[np.ndarray], list[np.ndarray], dict[str, np.ndarray]]:
    """(inputs, interpreter outputs, every value) on random normal calibration inputs."""
    from compiler.interpreter import run_graph

    runs = []
    seed = 0
    while seed == 0 or sum(r[0][0].shape[0] for r in runs) < CALIBRATION_BATCH:
        inputs = calibration_inputs(graph, seed)
        outputs, values = run_graph(graph, inputs, keep_values=True)
        runs.append((inputs, outputs, values))
        seed += 1
        if not graph.inputs or not inputs[0].ndim:
            break
    if len(runs) == 1:
        return runs[0]
    cat = lambda parts: [np.concatenate(p) for p in zip(*parts)]
    values = {k: np.concatenate([r[2][k] for r in runs]) for k, v in runs[0][2].items()
              if isinstance(v, np.ndarray) and v.ndim and all(k in r[2] for r in runs)}
    return cat([r[0] for r in runs]), cat([r[1] for r in runs]), values


def overflow_report(plan: Plan, graph: Graph, inputs, layers) -> list[dict]:
    """Inputs, layer outputs and weights whose calibration range exceeds their type (they saturate)."""
    checks = [(v.name, plan.max_abs.get(v.name, 0.0), t.type, "values") for v, t in zip(graph.inputs, inputs)]
    for layer in layers:
        checks.append((layer.name, plan.max_abs.get(plan.value_of.get(layer.name, ""), 0.0), layer.output.type,
                       "values"))
        if layer.name in plan.weights_max:
            checks.append((layer.name, plan.weights_max[layer.name], layer.p["weight_t"], "weights"))
    found = []
    for name, seen, t, what in checks:
        if seen > t.max_value:
            need = FixedType(t.frac + integer_bits(seen), integer_bits(seen))
            found.append({"layer": name, "what": what, "max_abs_seen": seen, "type": str(t),
                          "suggest": f"hls_precision_map={{{name!r}: '{need}'}} or hls_precision='auto'"})
    return found


def tolerance(inputs, layers) -> dict:
    """atol = 32 LSB of the coarsest fixed-point type (64 with conv/pool layers), plus
    2 steps of the coarsest int8 scale in QDQ graphs (two rounding steps); rtol = 2%."""
    fixed_types = [t.type for t in inputs] + [la.output.type for la in layers if not la.p.get("int_out")]
    lsb = max(2.0 ** -t.frac for t in fixed_types)
    conv = any(layer.kind in ("conv", "pool") for layer in layers)
    qstep = max([getattr(la.output, "qscale", 0.0) for la in layers if la.p.get("int_out")], default=0.0)
    return {"rtol": 0.02, "atol": lsb * (64 if conv else 32) + 2 * qstep}


def project_name(graph: Graph) -> str:
    name = re.sub(r"[^A-Za-z0-9_]", "_", graph.name or "")
    return name if re.match(r"^[A-Za-z_]\w*$", name) and name not in ("main", "input") else "myproject"


def tar_bytes(files: dict[str, str], root: str) -> bytes:
    """A deterministic tar.gz (fixed mtimes, sorted names) so equal projects hash equal."""
    buf = io.BytesIO()
    import gzip

    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for rel in sorted(files):
            data = files[rel].encode() if isinstance(files[rel], str) else files[rel]
            info = tarfile.TarInfo(f"{root}/{rel}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@dataclass
class Lowered:
    """A graph planned and lowered: what the code generator and the emulator consume."""
    plan: Plan
    inputs: list
    layers: list
    outputs: list
    calibration: list[np.ndarray]
    reference: list[np.ndarray]  # the interpreter's outputs on the calibration inputs

    def emulate(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        return emulate.run(self.inputs, self.layers, self.outputs, arrays)


def lower_graph(graph: Graph, options: dict) -> Lowered:
    calib, reference, values = calibrate(graph)
    plan = Plan(graph, options, calib, values)
    inputs, layers, outputs = lower(graph, plan)
    return Lowered(plan, inputs, layers, outputs, calib, reference)


def emit_target(graph: Graph, options: dict) -> tuple[dict[str, bytes], dict]:
    low = lower_graph(graph, options)
    plan, inputs, layers, outputs, calib, reference = (low.plan, low.inputs, low.layers, low.outputs,
                                                       low.calibration, low.reference)
    unused = sorted(set(plan.map) - plan.used)
    if unused:
        names = [v.name for v in graph.inputs] + [layer.name for layer in layers]
        raise CompileError(f"hls_precision_map names unknown layer(s) {unused}; layer names: {', '.join(names)}")
    overflow = overflow_report(plan, graph, inputs, layers)
    for entry in overflow:
        warnings.warn(f"{STAGE}: {entry['what']} of layer {entry['layer']} reach {entry['max_abs_seen']:.4g}, "
                      f"beyond {entry['type']} (values saturate); use {entry['suggest']}", HLSOverflowWarning,
                      stacklevel=3)
    emulated = low.emulate(calib)
    tol = tolerance(inputs, layers)
    errors = [float(np.max(np.abs(e.astype(np.float64) - r))) for e, r in zip(emulated, reference)]
    proj = project_name(graph)
    clock = float(options.get("hls_clock_ns") or 5.0)
    dataflow = any(layer.kind in ("conv", "pool") for layer in layers)
    est = estimate.estimate(layers, clock, dataflow)
    precision = {t.name: str(t.type) for t in inputs}
    precision.update({layer.name: str(layer.output.type) for layer in layers})
    info = {"project": proj, "precision": precision, "default_precision": "auto" if plan.auto else str(plan.default),
            "tolerance": tol, "calibration_max_abs_error": max(errors, default=0.0), "overflow": overflow,
            "reuse": plan.reuse_notes, "estimates": est, "layers": len(layers),
            "part": options.get("hls_part") or "xcvu13p-flga2577-2-e"}
    if info["calibration_max_abs_error"] > tol["atol"] * 4:
        warnings.warn(f"{STAGE}: the fixed-point model differs from float by up to {info['calibration_max_abs_error']:.3g} "
                      f"on random normal inputs (tolerance atol {tol['atol']:.3g}); consider more integer bits "
                      "(hls_precision='auto' or hls_precision_map)", HLSOverflowWarning, stacklevel=3)
    tb = (tb_rows(inputs, calib), tb_rows(outputs, emulated))
    files = codegen.generate(proj, inputs, layers, outputs, options, tb)
    files["project.json"] = json.dumps({k: v for k, v in info.items() if k != "tolerance"}, indent=1, default=str)
    payload = {PROJECT_FILE: tar_bytes(files, proj), RUNTIME_FILE: runtime_meta(proj, inputs, outputs)}
    problem = build.toolchain_problem()
    if problem is None:
        payload[LIB_FILE], (wall, cpu) = build.build_from_files(files, proj)
        info.update(csim_build_seconds=round(wall, 3), csim_build_cpu_seconds=round(cpu, 3))
    else:
        info.update(runnable_here=False, not_runnable_reason=f"no C simulation was built: {problem}")
    return payload, info


def tb_rows(tensors, arrays) -> np.ndarray:
    """One row per sample: every tensor's values in stored (channels-last) order."""
    n = min(TB_SAMPLES, arrays[0].shape[0])
    parts = [np.asarray(a[:n], np.float32).reshape(n, -1)[:, t.perm] for t, a in zip(tensors, arrays)]
    return np.concatenate(parts, axis=1)


def runtime_meta(proj: str, inputs, outputs) -> bytes:
    def describe(t):
        return {"size": t.size, "logical": list(t.logical), "perm": t.perm.tolist()}

    return json.dumps({"project": proj, "abi": 1, "inputs": [describe(t) for t in inputs],
                       "outputs": [describe(t) for t in outputs]}).encode()


__all__ = ["HLSOverflowWarning", "Lowered", "Plan", "emit_target", "lower_graph", "supported_ops"]
