"""Operator coverage: which Core ATen ops (``torch.Tag.core``) the frontend translates, and
which IR ops each backend emits.

    python scripts/op_coverage.py                  # summary and the list of missing core ops
    python scripts/op_coverage.py --markdown       # the tables, as markdown
    python scripts/op_coverage.py --update-readme  # rewrite the README's coverage section (make coverage)

The target is every core overload minus ``EXCLUDED`` (ops with no inference meaning; each with
its reason, printed into the README).

A core op counts as covered by the frontend when ``ATEN_HANDLERS`` has a handler for its
overload. This measures the table, not numerics; the op tests measure numerics.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


_BACKWARD = "a training (backward) op: never in an inference graph"
_RANDOM = "random sampling: an inference artifact must be deterministic"
EXCLUDED: dict[str, str] = {
    "aten._adaptive_avg_pool2d_backward.default": _BACKWARD,
    "aten.avg_pool2d_backward.default": _BACKWARD,
    "aten.convolution_backward.default": _BACKWARD,
    "aten.embedding_dense_backward.default": _BACKWARD,
    "aten.max_pool2d_with_indices_backward.default": _BACKWARD,
    "aten.native_group_norm_backward.default": _BACKWARD,
    "aten.native_layer_norm_backward.default": _BACKWARD,
    "aten.rand.default": _RANDOM,
    "aten.randn.default": _RANDOM,
    "aten.randperm.default": _RANDOM,
    "aten.native_dropout.default": "training-mode dropout (random); eval-mode dropout is the identity and supported",
    "aten._native_batch_norm_legit.default": "training-mode batch norm (updates running statistics); call "
                                             "model.eval() — the eval form and instance norm are supported",
    "aten._local_scalar_dense.default": "tensor.item(): turns data into a Python value the exported graph "
                                        "would branch on",
    "aten.as_strided.default": "views raw storage by strides; the IR has values, not storage",
    "aten.sym_stride.int": "storage strides: no meaning without storage",
    "aten.sym_storage_offset.default": "storage offset: no meaning without storage",
    "aten._fft_r2c.default": "complex FFT: the IR has no complex dtypes yet",
    "aten._fft_c2r.default": "complex FFT: the IR has no complex dtypes yet",
}
README_START, README_END = "<!-- coverage:start -->", "<!-- coverage:end -->"


def core_aten_overloads() -> list[str]:
    """'aten.<op>.<overload>' for every overload tagged core, excluding out= / in-place variants."""
    import torch

    names = []
    for packet_name in dir(torch.ops.aten):
        packet = getattr(torch.ops.aten, packet_name, None)
        if not isinstance(packet, torch._ops.OpOverloadPacket):
            continue
        for overload in packet.overloads():
            op = getattr(packet, overload)
            if torch.Tag.core not in op.tags:
                continue
            if overload == "out" or overload.endswith("_out") or packet_name.endswith("_"):
                continue
            names.append(f"aten.{packet_name}.{overload}")
    return sorted(set(names))


def coverage_markdown(core: list[str], covered: list[str], ir_ops: list[str]) -> str:
    from backends.registry import TARGETS, supported_ops

    target = [n for n in core if n not in EXCLUDED]
    done = [n for n in target if n in covered]
    lines = [f"Core ATen overloads in torch {_torch_version()} (`torch.Tag.core`, no out=/in-place variants): "
             f"{len(core)}; excluded (below): {len(EXCLUDED)}; translated by the frontend: "
             f"**{len(done)}/{len(target)} ({100 * len(done) / len(target):.0f}%)**. Missing: "
             + (", ".join(f"`{n}`" for n in target if n not in covered) or "none") + ".", ""]
    support = {t: supported_ops(t) for t in TARGETS}
    lines.append("IR ops per backend (the interpreter runs all of them): "
                 + ", ".join(f"{t} {len(support[t] & set(ir_ops))}/{len(ir_ops)} "
                             f"({100 * len(support[t] & set(ir_ops)) / len(ir_ops):.0f}%)" for t in TARGETS) + ". "
                 "The cuda column shares the llvm emitters; its kernels are built in CI but run only on a GPU "
                 "machine. The hls target covers the layer types an FPGA dataflow design uses.")
    lines += ["", "| IR op | interpreter | " + " | ".join(TARGETS) + " |", "|---|---|" + "---|" * len(TARGETS)]
    for op in ir_ops:
        lines.append(f"| {op} | yes | " + " | ".join("yes" if op in support[t] else "-" for t in TARGETS) + " |")
    lines += ["", "Excluded core ops:", ""]
    lines += [f"- `{name}`: {reason}" for name, reason in EXCLUDED.items()]
    return "\n".join(lines)


def _torch_version() -> str:
    import torch

    return torch.__version__.split("+")[0]


def update_readme(markdown: str, readme: Path) -> None:
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise SystemExit(f"{readme} has no {README_START} ... {README_END} section")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(f"{head}{README_START}\n{markdown}\n{README_END}{tail}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--update-readme", action="store_true")
    args = parser.parse_args(argv)

    from backends.registry import TARGETS, supported_ops
    from compiler.frontend import ATEN_HANDLERS
    from compiler.ops import all_ops

    core = core_aten_overloads()
    covered = [name for name in core if name in ATEN_HANDLERS]
    target = [name for name in core if name not in EXCLUDED]
    missing = [name for name in target if name not in ATEN_HANDLERS]
    ir_ops = sorted(all_ops())
    done = len(target) - len(missing)
    print(f"Core ATen overloads (torch.Tag.core, no out=/in-place): {len(core)}, {len(EXCLUDED)} excluded; "
          f"translated by the frontend: {done}/{len(target)} ({100 * done / len(target):.0f}%)")
    for name in TARGETS:
        emitted = supported_ops(name)
        print(f"IR ops emitted by target {name}: {len(emitted & set(ir_ops))}/{len(ir_ops)}")
    markdown = coverage_markdown(core, covered, ir_ops)
    if args.markdown:
        print("\n" + markdown)
    if args.update_readme:
        update_readme(markdown, Path(__file__).resolve().parent.parent / "README.md")
        print("README.md coverage section updated")
    if missing:
        print("\nmissing core overloads:\n  " + "\n  ".join(missing))
    return 0


if __name__ == "__main__":
    sys.exit(main())
