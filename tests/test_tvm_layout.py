"""TVM backend layout: the lowering of an op defined in ``compiler/ops/<family>.py`` lives in
``backends/tvm/ops/<family>.py``, whose table holds exactly that family's ops, and the merged
table refuses an op two families both lower."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

pytest.importorskip("tvm")

from backends.tvm import ops as tvm_ops
from compiler.ops import all_ops, get_op


def _family_of_module(module_name: str) -> str:
    return module_name.rsplit(".", 1)[-1]


def misplaced(table: dict) -> list[str]:
    """The entries of ``table`` whose lowering is defined outside the module of its op's family."""
    return [f"{op}: lowered in {fn.__module__}, defined in compiler/ops/{get_op(op).family}.py"
            for op, fn in sorted(table.items()) if _family_of_module(fn.__module__) != get_op(op).family]


def test_every_lowering_lives_in_its_ops_family_module():
    assert not misplaced(tvm_ops.EMITTERS), "\n".join(misplaced(tvm_ops.EMITTERS))


def test_each_family_table_holds_exactly_its_familys_ops():
    by_family: dict[str, set[str]] = {}
    for name, op in all_ops().items():
        by_family.setdefault(op.family, set()).add(name)
    tables = {_family_of_module(module.__name__): set(module.EMITTERS) for module in tvm_ops.FAMILIES}
    assert tables == by_family


def test_the_check_sees_a_misplaced_lowering():
    conv = tvm_ops.EMITTERS["conv"]  # defined in backends/tvm/ops/nn.py
    relu = tvm_ops.EMITTERS["relu"]  # defined in backends/tvm/ops/elementwise.py
    assert misplaced({"conv": conv, "relu": relu}) == []
    assert [row.split(":")[0] for row in misplaced({"relu": conv, "conv": relu})] == ["conv", "relu"]


def test_merging_refuses_an_op_two_families_lower():
    first = SimpleNamespace(__name__="first", EMITTERS={"relu": object()})
    second = SimpleNamespace(__name__="second", EMITTERS={"relu": object(), "exp": object()})
    with pytest.raises(ValueError, match=r"second.*\['relu'\]"):
        tvm_ops._merged([first, second])
