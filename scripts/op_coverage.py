"""Operator coverage: which Core ATen ops (``torch.Tag.core``) the frontend translates, and
which IR ops each backend emits.

    python scripts/op_coverage.py            # summary and the list of missing core ops
    python scripts/op_coverage.py --markdown # the tables for the README

A core op counts as covered by the frontend when ``ATEN_HANDLERS`` has a handler for its
overload. This measures the table, not numerics; the op tests measure numerics.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)

    from backends.registry import TARGETS, supported_ops
    from compiler.frontend import ATEN_HANDLERS
    from compiler.ops import all_ops

    core = core_aten_overloads()
    covered = [name for name in core if name in ATEN_HANDLERS]
    missing = [name for name in core if name not in ATEN_HANDLERS]
    ir_ops = sorted(all_ops())
    print(f"Core ATen overloads (torch.Tag.core, no out=/in-place): {len(core)}; "
          f"translated by the frontend: {len(covered)} ({100 * len(covered) / len(core):.0f}%)")
    for target in TARGETS:
        emitted = supported_ops(target)
        print(f"IR ops emitted by target {target}: {len(emitted & set(ir_ops))}/{len(ir_ops)}")
    if args.markdown:
        targets = list(TARGETS)
        print("\n| IR op | " + " | ".join(targets) + " |")
        print("|---|" + "---|" * len(targets))
        support = {t: supported_ops(t) for t in targets}
        for op in ir_ops:
            print(f"| {op} | " + " | ".join("yes" if op in support[t] else "-" for t in targets) + " |")
    print("\nmissing core overloads:")
    print("  " + "\n  ".join(missing))
    return 0


if __name__ == "__main__":
    sys.exit(main())
