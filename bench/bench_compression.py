"""Benchmark: int8 quantization modes against float32 on the trained digits MLP and CNN.

For each model, ``compiler.compile`` builds one artifact per mode (float32, int8 static with
calibration on 640 training images, the same with per-tensor weight scales, int8-dynamic,
int8-weight, int4-weight) at a static batch of 64, and
this script measures, side by side in one run:

* latency through ``compiler.load(path, threads=1)`` at batch 64, and through a bare onnxruntime
  session with the session options the manifest asks for (``target_info.session_config``; it
  isolates the emitted graph from the call's input checks): the modes are timed in
  interleaved rounds (float, int8, dynamic, weight, float, ...) so load from other processes on
  a shared machine hits them alike; the ratio is the median over rounds of mode / float32;
* size: the artifact file and its ``model.onnx`` payload, as a ratio to float32;
* accuracy on the 448 test images that fill whole batches, before (float32) and after.

    python bench/bench_compression.py [--models mlp,cnn] [--rounds 7] [--budget 0.4]

With ``--zoo [mlp,lenet,...]`` it instead measures static int8 against float32 on the zoo models
(``models.ZOO``; untrained weights, so there is no accuracy to report): int8 is calibrated on
random inputs (seeded normal noise; for integer inputs such as token ids, random ids), which
sets realistic scales for *latency only*. Latency through ``compiler.load(path, threads=1)`` at
batch 64, float32 and int8 in interleaved rounds, the ratio the median over rounds of int8 /
float32; the table also lists how many layers static int8 quantized and kept float.

    python bench/bench_compression.py --zoo [--rounds 7] [--budget 0.4]

``--real`` does the same at realistic sizes, batch 64: ResNet-18 (3x224x224) and the seed MLP with
static int8, the BERT-base-sized encoder (sequence 128) with dynamic int8. The host's CPU line
(feature level, VNNI) heads every table: int8 speed depends on it.

    python bench/bench_compression.py --real [--rounds 3] [--budget 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import bench  # noqa: E402  (bench/bench.py, next to this file)
from models import ZOO  # noqa: E402

BATCH = 64
CALIBRATION_BATCHES = 10
# label -> QuantizeOptions fields (None: float32); "int8 per-tensor" shows what per-channel weight
# scales cost
MODES = {"float32": None, "int8": {"mode": "int8"}, "int8 per-tensor": {"mode": "int8", "per_channel": False},
         "int8-dynamic": {"mode": "int8-dynamic"}, "int8-weight": {"mode": "int8-weight"},
         "int4-weight": {"mode": "int4-weight"}}
# --real: realistic sizes (issue goals: static int8 <= 0.40x fp32 on a VNNI CPU, <= 0.60x on AVX2;
# dynamic int8 on the BERT-base-sized encoder <= 0.60x): (name, source, quantization mode)
REAL_CASES = (("resnet18", "real", "int8"), ("mlp", "zoo", "int8"), ("bert", "real", "int8-dynamic"))


def median_latency(fn, *, min_runs: int = 30, budget_s: float = 0.4) -> float:
    return bench.median_latency(fn, min_runs=min_runs, budget_s=budget_s, max_runs=None)


def build(kind: str, mode: str, out_dir: Path) -> Path:
    import torch

    import compiler
    from models.digits import digits_data, model_inputs, trained_model

    data = digits_data()
    example = torch.from_numpy(model_inputs(kind, data.x_test[:BATCH]).copy())
    fields = dict(MODES[mode] or {})
    if fields.get("mode") == "int8":
        fields["calibration"] = [(model_inputs(kind, data.x_train[i:i + BATCH]).copy(),)
                                 for i in range(0, CALIBRATION_BATCHES * BATCH, BATCH)]
    art = compiler.compile(trained_model(kind), (example,), target="onnx",
                           output=str(out_dir / f"{kind}_{mode.replace(' ', '_')}.aot"),
                           quantize=compiler.QuantizeOptions(**fields) if fields else None)
    return Path(art.path)


def payload_size(path: Path) -> int:
    with zipfile.ZipFile(path) as z:  # the weights of a model over 1 MiB are external data
        return sum(z.getinfo(n).file_size for n in ("model.onnx", "weights.bin") if n in z.namelist())


def bare_session(path: Path):
    """A bare onnxruntime session for the artifact's model, one thread, with the session options
    its manifest asks for (``target_info.session_config``: int8-weight folds its weights at load)."""
    from backends.onnx.runtime import external_weights, session_from_model
    from compiler.driver.artifact import read_artifact

    manifest, payload = read_artifact(path)
    weights = external_weights(payload)  # the model's external-data initializers, mapped
    config = manifest.get("target_info", {}).get("session_config", {})
    session = session_from_model(payload["model.onnx"], 1, config, weights)
    session.weights = weights  # onnxruntime may keep using their memory
    return session


def bench_model(kind: str, rounds: int, budget: float) -> list[dict]:
    import compiler
    from models.digits import digits_data, model_inputs

    data = digits_data()
    n = len(data.x_test) // BATCH * BATCH
    batches = [model_inputs(kind, data.x_test[i:i + BATCH]).copy() for i in range(0, n, BATCH)]
    with tempfile.TemporaryDirectory() as tmp:
        paths = {mode: build(kind, mode, Path(tmp)) for mode in MODES}
        runners = {mode: compiler.load(str(p), threads=1) for mode, p in paths.items()}
        sizes = {mode: (p.stat().st_size, payload_size(p)) for mode, p in paths.items()}
        bare_sessions = {mode: bare_session(p) for mode, p in paths.items()}
    accuracy = {mode: float((np.concatenate([run(x) for x in batches]).argmax(1) == data.y_test[:n]).mean())
                for mode, run in runners.items()}
    x = batches[0]
    per_round = {mode: [] for mode in MODES}
    per_round_session = {mode: [] for mode in MODES}
    for _ in range(rounds):
        for mode, run in runners.items():
            session = bare_sessions[mode]
            name = session.get_inputs()[0].name
            per_round[mode].append(median_latency(lambda run=run: run(x), budget_s=budget))
            per_round_session[mode].append(median_latency(lambda s=session, n=name: s.run(None, {n: x}),
                                                          budget_s=budget))
    rows = []
    for mode in MODES:
        ratios = [q / f for q, f in zip(per_round[mode], per_round["float32"])]
        session_ratios = [q / f for q, f in zip(per_round_session[mode], per_round_session["float32"])]
        rows.append({"model": kind, "mode": mode, "ms": 1e3 * float(np.median(per_round[mode])),
                     "latency_ratio": float(np.median(ratios)), "session_ratio": float(np.median(session_ratios)),
                     "artifact_ratio": sizes[mode][0] / sizes["float32"][0],
                     "onnx_ratio": sizes[mode][1] / sizes["float32"][1],
                     "accuracy": accuracy[mode], "drop_pp": 100 * (accuracy["float32"] - accuracy[mode])})
    return rows


def format_table(rows: list[dict]) -> str:
    header = ("| model | mode | ms (batch 64) | latency / fp32 | session / fp32 | artifact / fp32 | "
              "model.onnx / fp32 | accuracy | drop pp |")
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['mode']} | {r['ms']:.3f} | {r['latency_ratio']:.2f}x | "
                     f"{r['session_ratio']:.2f}x | "
                     f"{r['artifact_ratio']:.2f}x | {r['onnx_ratio']:.2f}x | {100 * r['accuracy']:.2f}% | "
                     f"{r['drop_pp']:+.2f} |")
    return "\n".join(lines)


ZOO_MODELS = ",".join(ZOO)
ZOO_CALIBRATION_BATCHES = 4


def random_calibration(example: tuple, batches: int, seed: int = 0) -> list[tuple[np.ndarray, ...]]:
    """Latency-only calibration: seeded random batches shaped like ``example`` (normal noise for
    float inputs, uniform values in the example's range for integer inputs such as token ids)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(batches):
        batch = []
        for t in example:
            a = t.numpy()
            if np.issubdtype(a.dtype, np.floating):
                batch.append(rng.standard_normal(a.shape).astype(a.dtype))
            else:
                batch.append(rng.integers(int(a.min()), int(a.max()) + 1, a.shape).astype(a.dtype))
        out.append(tuple(batch))
    return out


def bench_zoo_model(name: str, rounds: int, budget: float, source: str = "zoo", mode: str = "int8",
                    min_runs: int = 30) -> dict:
    import compiler
    from models import get_real_model

    model = (ZOO[name] if source == "zoo" else get_real_model(name)).factory().eval()
    example = model.example_inputs(BATCH)
    calibration = random_calibration(example, ZOO_CALIBRATION_BATCHES) if mode == "int8" else None
    with tempfile.TemporaryDirectory() as tmp:
        float_art = compiler.compile(model, example, target="onnx", output=f"{tmp}/{name}_float32.aot", verify=False)
        int8_art = compiler.compile(model, example, target="onnx", output=f"{tmp}/{name}_int8.aot", verify=False,
                                    quantize=compiler.QuantizeOptions(mode, calibration=calibration))
        report = quantization_report(Path(int8_art.path))
        runners = {"float32": compiler.load(str(float_art.path), threads=1),
                   "int8": compiler.load(str(int8_art.path), threads=1)}
    xs = [t.numpy() for t in example]
    per_round = {label: [] for label in runners}
    for _ in range(rounds):
        for label, run in runners.items():
            per_round[label].append(median_latency(lambda run=run: run(*xs), min_runs=min_runs, budget_s=budget))
    ratios = [q / f for q, f in zip(per_round["int8"], per_round["float32"])]
    return {"model": name, "mode": mode, "float_ms": 1e3 * float(np.median(per_round["float32"])),
            "int8_ms": 1e3 * float(np.median(per_round["int8"])), "ratio": float(np.median(ratios)),
            "quantized": len(report.get("quantized", [])), "float": len(report.get("skipped", []))}


def quantization_report(path: Path) -> dict:
    import json

    with zipfile.ZipFile(path) as z:
        manifest = json.loads(z.read("manifest.json"))
    return manifest.get("report", {}).get("compression", {}).get("quantization", {})


def format_zoo_table(rows: list[dict]) -> str:
    lines = ["| model | mode | fp32 ms (batch 64) | int8 ms | int8 / fp32 | layers int8 | layers kept float |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['mode']} | {r['float_ms']:.3f} | {r['int8_ms']:.3f} | {r['ratio']:.2f}x | "
                     f"{r['quantized']} | {r['float']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--budget", type=float, default=0.4, help="seconds per latency measurement")
    parser.add_argument("--zoo", nargs="?", const=ZOO_MODELS, default=None, metavar="NAMES",
                        help=f"static int8 vs float32 latency on zoo models instead (default: {ZOO_MODELS}); "
                             "random calibration, latency only")
    parser.add_argument("--real", nargs="?", const=",".join(name for name, _, _ in REAL_CASES), default=None,
                        metavar="NAMES", help="int8 vs float32 at realistic sizes: ResNet-18 and the seed MLP static, "
                                              "BERT-base dynamic (default: all three)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    from backends.tvm.cpu import host_summary

    print(f"host CPU: {host_summary()}")
    if args.real:
        chosen = args.real.split(",")
        # 3 timed runs per measurement: one BERT-base run at batch 64 takes seconds
        rows = [bench_zoo_model(name, args.rounds, args.budget, source, mode, min_runs=3)
                for name, source, mode in REAL_CASES if name in chosen]
        print(f"threads: 1, batch {BATCH}, interleaved rounds: {args.rounds}; static int8 calibrated on "
              f"{ZOO_CALIBRATION_BATCHES} random batches (latency only: random weights)\n")
        print(format_zoo_table(rows))
        return 0
    if args.zoo:
        zoo_rows = [bench_zoo_model(name.strip(), args.rounds, args.budget) for name in args.zoo.split(",")]
        print(f"threads: 1, batch {BATCH}, interleaved rounds: {args.rounds}; static int8 calibrated on "
              f"{ZOO_CALIBRATION_BATCHES} random batches (latency only: untrained zoo weights, no accuracy)\n")
        print(format_zoo_table(zoo_rows))
        return 0
    rows = [row for kind in args.models.split(",") for row in bench_model(kind.strip(), args.rounds, args.budget)]
    print(f"threads: 1, batch {BATCH}, interleaved rounds: {args.rounds}\n")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
