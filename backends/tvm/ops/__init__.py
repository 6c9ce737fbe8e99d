"""The TVM lowerings, one module per op family, mirroring ``compiler/ops/``: the lowering of an
op defined in ``compiler/ops/<family>.py`` lives in ``backends/tvm/ops/<family>.py``.

``EMITTERS`` is a table from IR op name to a function ``(ctx, node) -> relax expr or list of
exprs`` (one per node output), merged from the families' tables. The op registry's numpy
references are the spec: where Relax has a high-level op with the same semantics it is used,
otherwise the emitter composes Relax ops (attention, hardswish, trunc_div, ...).

Imports tvm at module level: it is imported only by ``backends.tvm.lower``.
"""

from __future__ import annotations

from . import elementwise, indexing, nn, quant, recurrent, reduce, shape
from .common import Emitter

FAMILIES = (elementwise, indexing, nn, quant, recurrent, reduce, shape)


def _merged(families) -> dict[str, Emitter]:
    table: dict[str, Emitter] = {}
    for family in families:
        twice = set(table) & set(family.EMITTERS)
        if twice:
            raise ValueError(f"ops lowered twice ({family.__name__} and an earlier family): {sorted(twice)}")
        table.update(family.EMITTERS)
    return table


EMITTERS: dict[str, Emitter] = _merged(FAMILIES)

__all__ = ["EMITTERS", "FAMILIES"]
