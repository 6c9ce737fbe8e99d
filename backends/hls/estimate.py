"""Resource and latency ESTIMATES per layer (no vendor tools), and reading Vitis csynth reports.

Formulas (hls4ml-style, see the project's HLS notes): multipliers = ceil(nonzero weights / RF);
DSPs per multiplier: 0 when an operand has <= 4 bits or the weight is a power of two, 1 when the
product fits a 27x18 DSP, more otherwise; weight bits = n * width; BRAM18 for weights kept in
memory (resource strategy) from the cheapest (depth x width) aspect 16384x1 ... 512x36;
II = RF; latency ~ RF + ceil(log2 n_in) + 3 cycles for dense, per output pixel for conv.
They are estimates: synthesis (``read_csynth``) is the truth.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from backends.hls.layers import Layer

BRAM18_ASPECTS = ((16384, 1), (8192, 2), (4096, 4), (2048, 9), (1024, 18), (512, 36))


def dsp_per_multiplier(wx: int, ww: int) -> int:
    if min(wx, ww) <= 4:
        return 0
    if max(wx, ww) <= 27 and min(wx, ww) <= 18:
        return 1
    return math.ceil(max(wx, ww) / 27) * math.ceil(min(wx, ww) / 18)


def bram18(depth: int, width: int) -> int:
    return min(math.ceil(width / w) * math.ceil(depth / d) for d, w in BRAM18_ASPECTS)


def layer_estimate(layer: Layer) -> dict:
    p = layer.p
    est = {"layer": layer.name, "kind": layer.kind, "type": str(layer.output.type),
           "multipliers": 0, "dsp": 0, "weight_bits": 0, "bram18": 0, "ii": 1, "latency_cycles": 2}
    if "w" in p:
        w = p["w"]
        nonzero = w[w != 0]
        rf = p["reuse"]["reuse_factor"]
        mag = np.abs(nonzero)
        pow2 = int(np.count_nonzero((mag & (mag - 1)) == 0))
        mults = math.ceil(nonzero.size / rf)
        general = math.ceil((nonzero.size - pow2) / rf)
        wt = p["weight_t"]
        bits = w.size * wt.width + (p["b"].size * p["bias_t"].width if p["b"] is not None else 0)
        terms = w[0].size if layer.kind != "scale" else 1
        pixels = p.get("oh", 1) * p.get("ow", 1)
        est.update(multipliers=mults, dsp=general * dsp_per_multiplier(layer.inputs[0].type.width, wt.width),
                   weight_bits=int(bits), ii=rf * pixels,
                   latency_cycles=rf * pixels + math.ceil(math.log2(max(terms, 2))) + 3,
                   strategy=p["reuse"]["strategy"], reuse_factor=rf)
        if p["reuse"]["strategy"] == "resource":
            est["bram18"] = bram18(rf, math.ceil(w.size / rf) * wt.width)
    elif layer.kind == "pool":
        est.update(ii=p["oh"] * p["ow"], latency_cycles=p["oh"] * p["ow"] + math.ceil(math.log2(p["kh"] * p["kw"] + 1)) + 2)
    elif layer.kind == "softmax":
        n = layer.output.size
        est.update(ii=n, latency_cycles=2 * n + math.ceil(math.log2(n + 1)) + 20)
    return est


def estimate(layers: list[Layer], clock_ns: float, dataflow: bool) -> dict:
    per_layer = [layer_estimate(layer) for layer in layers]
    total = {k: sum(e[k] for e in per_layer) for k in ("multipliers", "dsp", "weight_bits", "bram18", "latency_cycles")}
    total["ii"] = max((e["ii"] for e in per_layer), default=1) if dataflow else total["latency_cycles"]
    if not dataflow:  # a pipelined dense net starts a new sample every max(RF) cycles
        total["ii"] = max((e["ii"] for e in per_layer), default=1)
    total["latency_ns"] = total["latency_cycles"] * clock_ns
    return {"estimate": True, "note": "estimates from formulas, not synthesis; see read_csynth()",
            "clock_ns": clock_ns, "layers": per_layer, "total": total}


def _find_report(path: Path) -> Path:
    path = Path(path)
    if path.is_file():
        return path
    found = sorted(path.glob("**/syn/report/*csynth.xml"))
    top = [f for f in found if f.name == "csynth.xml"]
    if not (top or found):
        raise FileNotFoundError(f"no csynth.xml under {path}; run 'vitis_hls -f build_prj.tcl' with synth 1 first")
    return (top or found)[0]


def read_csynth(path) -> dict:
    """Latency, II and resources from a Vitis HLS csynth.xml (a file or a project folder)."""
    report = _find_report(Path(path))
    root = ET.parse(report).getroot()

    def text(xpath: str):
        node = root.find(xpath)
        return None if node is None or node.text is None else node.text.strip()

    def number(xpath: str):
        v = text(xpath)
        try:
            return int(v)
        except (TypeError, ValueError):
            return v

    lat = "PerformanceEstimates/SummaryOfOverallLatency/"
    res = "AreaEstimates/Resources/"
    return {"report": str(report), "estimate": False,
            "clock_ns": number("PerformanceEstimates/SummaryOfTimingAnalysis/EstimatedClockPeriod"),
            "latency_cycles_best": number(lat + "Best-caseLatency"), "latency_cycles": number(lat + "Worst-caseLatency"),
            "ii": number(lat + "Interval-min"),
            "dsp": number(res + "DSP") if root.find(res + "DSP") is not None else number(res + "DSP48E"),
            "bram18": number(res + "BRAM_18K"), "ff": number(res + "FF"), "lut": number(res + "LUT")}


def compare(estimate_total: dict, csynth: dict) -> list[dict]:
    """Rows of (quantity, estimate, synthesis) to show side by side."""
    keys = ("latency_cycles", "ii", "dsp", "bram18")
    return [{"quantity": k, "estimate": estimate_total.get(k), "csynth": csynth.get(k)} for k in keys]
