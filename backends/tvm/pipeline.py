"""Relax IRModule -> compiled TVM executable for a target.

``build(mod, target)`` is the one entry point the emitter calls. This first version runs TVM's
own default pipeline (GPU targets get dlight's default schedules; CPU kernels stay unscheduled).
"""

from __future__ import annotations

from typing import Any


def build(mod, target, options: dict[str, Any] | None = None):
    """Compile the Relax module ``mod`` for ``target`` (a ``tvm.target.Target``)."""
    import tvm
    from tvm import relax

    mod = relax.get_pipeline("zero")(mod)
    if target.kind.name == "cuda":
        from tvm.s_tir import dlight

        with target:
            mod = dlight.ApplyDefaultSchedule(dlight.gpu.Matmul(), dlight.gpu.GEMV(), dlight.gpu.Reduction(),
                                              dlight.gpu.GeneralReduction(), dlight.gpu.Fallback())(mod)
    return tvm.compile(mod, target=target)
