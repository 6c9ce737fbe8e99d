"""Benchmark: pruning and weight sharing on the trained digits MLP and CNN, measured in one run.

For each model and each variant (fp32; unstructured magnitude 50% / 90%, each without and with
recovery fine-tuning; channel pruning 50%, without and with fine-tuning; 4-bit weight sharing)
it reports test accuracy, the deflated ONNX model size as a ratio to fp32 (the artifact is a
deflate zip, so this is what the artifact's payload costs), the onnxruntime latency at batch 64
on one thread as a ratio to fp32 (interleaved rounds, best median), and the parameters
(stored constants; nonzero ones in brackets).

    python bench/bench_pruning.py
    python bench/bench_pruning.py --models mlp --epochs 10
"""

from __future__ import annotations

import argparse
import copy
import sys
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import interleaved, ort_session  # noqa: E402  (bench/bench.py, next to this file)

BATCH = 64


def pipeline_graph(module, example):
    from compiler.frontend import export_module, import_exported_program
    from passes import PassManager, make_pipeline

    graph = import_exported_program(export_module(module, example, dynamic_batch=True))
    PassManager(make_pipeline()).run(graph)
    return graph


def variants(kind: str, epochs: int) -> dict:
    """name -> compressed graph for the trained digits model ``kind``."""
    import torch

    from compiler.driver.finetune import finetune
    from models.digits import digits_data, model_inputs, trained_model
    from passes.prune_channels import prune_channels
    from passes.prune_magnitude import prune_magnitude
    from passes.share_weights import share_weights

    data = digits_data()
    example = (torch.from_numpy(model_inputs(kind, data.x_test[:2]).copy()),)
    x_train = model_inputs(kind, data.x_train)
    base = pipeline_graph(trained_model(kind), example)

    def compressed(compress):
        graph = copy.deepcopy(base)
        compress(graph)
        return graph

    def tuned(graph):  # fine-tune, then compile the module again the way a user would
        return pipeline_graph(finetune(graph, x_train, data.y_train, epochs=epochs), example)

    out = {"fp32": base}
    for amount in (0.5, 0.9):
        g = compressed(lambda g: prune_magnitude(g, amount))
        out[f"unstructured {amount:.0%}"] = g
        out[f"unstructured {amount:.0%} + ft"] = tuned(g)
    g = compressed(lambda g: prune_channels(g, 0.5))
    out["channel 50%"] = g
    out["channel 50% + ft"] = tuned(g)
    out["shared 4 bits"] = compressed(lambda g: share_weights(g, 4))
    return out


def measure(kind: str, graphs: dict) -> list[dict]:
    from backends.onnx.emit import emit_onnx
    from models.digits import accuracy, digits_data, model_inputs

    data = digits_data()
    x_test = model_inputs(kind, data.x_test)
    batch = np.ascontiguousarray(np.resize(x_test, (BATCH,) + x_test.shape[1:]))
    rows, runners = [], {}
    for name, graph in graphs.items():
        model = emit_onnx(graph).SerializeToString()
        session = ort_session(model, 1)
        feed = session.get_inputs()[0].name
        runners[name] = (lambda s=session, f=feed: s.run(None, {f: batch}))
        weights = [v.const for v in graph.constants.values()]
        rows.append({"model": kind, "variant": name,
                     "accuracy": accuracy(lambda a, s=session, f=feed: s.run(None, {f: a})[0], x_test, data.y_test),
                     "deflated_bytes": len(zlib.compress(model)),
                     "parameters": int(sum(w.size for w in weights)),
                     "nonzero": int(sum(np.count_nonzero(w) for w in weights))})
    latency = interleaved(runners)
    base = rows[0]
    for row in rows:
        row["latency_ms"] = latency[row["variant"]]
        row["size_ratio"] = row["deflated_bytes"] / base["deflated_bytes"]
        row["latency_ratio"] = row["latency_ms"] / base["latency_ms"]
    return rows


def format_table(rows: list[dict]) -> str:
    head = f"{'model':5} {'variant':24} {'acc %':>6} {'size':>6} {'latency':>8} {'ms':>7}  parameters (nonzero)"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['model']:5} {r['variant']:24} {100 * r['accuracy']:6.2f} {r['size_ratio']:6.3f} "
                     f"{r['latency_ratio']:8.2f} {r['latency_ms']:7.3f}  {r['parameters']} ({r['nonzero']})")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs")
    args = parser.parse_args(argv)
    rows = []
    for kind in args.models.split(","):
        rows += measure(kind, variants(kind, args.epochs))
    print(f"batch {BATCH}, onnxruntime 1 thread; size = deflated ONNX bytes / fp32, latency = ms / fp32")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
