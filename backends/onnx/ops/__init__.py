"""The ONNX emitters, one module per op family, named like the family modules of
``compiler/ops/`` (the ONNX lowering of conv, defined in ``compiler/ops/nn.py``, is in
``backends/onnx/ops/nn.py``). Each family module has its table ``EMITTERS`` (IR op name -> a
function that appends the ONNX nodes for one IR node to an ``EmitContext``); this package merges
them into the one table ``backends.onnx.emit`` uses.

The op registry's numpy references are the spec: where an ONNX operator differs (dtype support of
onnxruntime's CPU kernels, fused activations, ceil-mode pooling, ...) the emitter composes or
converts, and where it cannot express an attribute combination it raises ``UnsupportedOpError``.
"""

from __future__ import annotations

from types import ModuleType

from backends.onnx.ops import elementwise, indexing, nn, quant, recurrent, reduce, shape
from backends.onnx.ops.common import Emitter

FAMILIES: tuple[ModuleType, ...] = (elementwise, indexing, nn, quant, recurrent, reduce, shape)


def _merged(families: tuple[ModuleType, ...]) -> dict[str, Emitter]:
    """The family tables in one; an op in two tables is an error (which one would win is luck)."""
    merged: dict[str, Emitter] = {}
    for family in families:
        for op, emitter in family.EMITTERS.items():
            if op in merged:
                raise ValueError(f"ONNX emitter for {op!r} is defined twice: in {merged[op].__module__} "
                                 f"and in {family.__name__}")
            merged[op] = emitter
    return merged


EMITTERS: dict[str, Emitter] = _merged(FAMILIES)

__all__ = ["EMITTERS", "FAMILIES"]
