"""Backend layout: a backend that is a table of emitters keeps the emitter of an op defined in
``compiler/ops/<family>.py`` in ``<its ops package>/<family>.py`` (conv: ``compiler/ops/nn.py`` ->
``backends/onnx/ops/nn.py``), so "where is conv lowered" has the same answer as "where is conv
defined". Each family module's ``EMITTERS`` holds exactly its family's ops, and the package merges
them into one ``EMITTERS``, refusing an op that two families emit."""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest

from compiler.ops import all_ops, get_op

# backend -> (the package of its family modules, the framework that package imports). Each
# package has ``FAMILIES`` (its family modules, each with an ``EMITTERS`` table), the merged
# ``EMITTERS`` and ``_merged(families)``.
BACKEND_PACKAGES = {
    "onnx": ("backends.onnx.ops", "onnx"),
    "tvm": ("backends.tvm.ops", "tvm"),
}


def _package(backend: str):
    name, framework = BACKEND_PACKAGES[backend]
    pytest.importorskip(framework)
    return importlib.import_module(name)


def _family_of_module(module_name: str) -> str:
    return module_name.rsplit(".", 1)[-1]


def misplaced(table: dict) -> list[str]:
    """The entries of ``table`` whose emitter is defined outside the module of its op's family."""
    return [f"{op}: emitted by {fn.__module__}.{fn.__name__}, defined in compiler/ops/{get_op(op).family}.py"
            for op, fn in sorted(table.items()) if _family_of_module(fn.__module__) != get_op(op).family]


@pytest.mark.parametrize("backend", sorted(BACKEND_PACKAGES))
def test_every_emitter_lives_in_its_ops_family_module(backend):
    rows = misplaced(_package(backend).EMITTERS)
    assert not rows, "\n".join(rows)


@pytest.mark.parametrize("backend", sorted(BACKEND_PACKAGES))
def test_one_module_per_family_holding_exactly_its_familys_ops(backend):
    package = _package(backend)
    expected: dict[str, set[str]] = {op.family: set() for op in all_ops().values()}
    for name in package.EMITTERS:
        expected[get_op(name).family].add(name)
    tables = {_family_of_module(module.__name__): set(module.EMITTERS) for module in package.FAMILIES}
    assert tables == expected


@pytest.mark.parametrize("backend", sorted(BACKEND_PACKAGES))
def test_the_check_sees_a_misplaced_emitter(backend):
    table = _package(backend).EMITTERS
    conv, relu = table["conv"], table["relu"]  # an nn op and an elementwise op
    assert misplaced({"conv": conv, "relu": relu}) == []
    assert [row.split(":")[0] for row in misplaced({"conv": relu, "relu": conv})] == ["conv", "relu"]


@pytest.mark.parametrize("backend", sorted(BACKEND_PACKAGES))
def test_merging_refuses_an_op_two_families_emit(backend):
    package = _package(backend)
    owner = next(module for module in package.FAMILIES if "relu" in module.EMITTERS)
    intruder = ModuleType("intruder")  # a second family that also emits relu
    intruder.EMITTERS = {"relu": owner.EMITTERS["relu"]}
    with pytest.raises(ValueError, match="relu"):
        package._merged((owner, intruder))
