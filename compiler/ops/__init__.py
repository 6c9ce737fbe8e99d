"""The operator registry: one ``OpDef`` per op, holding everything the IR knows about it.

An op's definition lives in one place (a family module in this package):

* ``inputs``: input names; a trailing ``?`` marks an optional input (may be None), a leading
  ``*`` a variadic tail;
* ``attrs``: name -> ``Attr(kind, default)``; kinds are int, float, bool, str, ints, floats,
  dtype, shape (a shape attr may hold symbolic dims and is bound to sizes before ``reference``
  runs), optional_float, optional_int;
* ``infer(*types, **attrs)``: output ``TensorType``(s), raising ``ValueError`` on bad inputs;
* ``reference(*arrays, **attrs)``: the numpy semantics, the spec every backend is tested against.

Backends are tables from op name to emitter, so adding an op means: one ``defop`` here and one
entry per backend.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from compiler import dims
from compiler.ir import DType, TensorType

_REQUIRED = object()
# "dim": one size, an int or a symbolic expression (dims.py), bound at run time like "shape".
ATTR_KINDS = ("int", "float", "bool", "str", "ints", "floats", "dtype", "shape", "dim",
              "optional_float", "optional_int")


@dataclass(frozen=True)
class Attr:
    kind: str
    default: Any = _REQUIRED

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED


@dataclass
class OpDef:
    name: str
    inputs: tuple[str, ...]
    attrs: dict[str, Attr]
    infer: Callable[..., Any]
    reference: Callable[..., Any]
    doc: str = ""
    family: str = ""
    tags: frozenset[str] = field(default_factory=frozenset)
    # Floating-point operations for concrete shapes: flops(in_shapes, out_shapes, **attrs).
    # None: one operation per output element (elementwise and data movement).
    flops: Callable[..., int] | None = None

    # -- arity --------------------------------------------------------------------------------
    @property
    def variadic(self) -> bool:
        return bool(self.inputs) and self.inputs[-1].startswith("*")

    def check_arity(self, n: int) -> None:
        fixed = [i for i in self.inputs if not i.startswith("*")]
        required = [i for i in fixed if not i.endswith("?")]
        if n < len(required) or (not self.variadic and n > len(fixed)):
            expected = ", ".join(self.inputs)
            raise ValueError(f"{self.name} takes inputs ({expected}), got {n}")

    # -- attributes ---------------------------------------------------------------------------
    def check_attrs(self, attrs: dict[str, Any], op: str | None = None) -> dict[str, Any]:
        """Validated attrs with defaults filled in and values normalised (lists -> tuples)."""
        unknown = set(attrs) - set(self.attrs)
        if unknown:
            raise ValueError(f"{self.name} has no attribute(s) {sorted(unknown)}")
        out: dict[str, Any] = {}
        for name, spec in self.attrs.items():
            if name in attrs:
                out[name] = _normalise(self.name, name, spec.kind, attrs[name])
            elif spec.required:
                raise ValueError(f"{self.name} needs attribute {name!r}")
            else:
                out[name] = spec.default
        return out

    # -- semantics ----------------------------------------------------------------------------
    def infer_types(self, types: list[TensorType | None], attrs: dict[str, Any]) -> list[TensorType]:
        self.check_arity(len(types))
        result = self.infer(*types, **attrs)
        return list(result) if isinstance(result, (tuple, list)) else [result]

    def count_flops(self, in_shapes: list, out_shapes: list, attrs: dict[str, Any]) -> int:
        if self.flops is not None:
            return int(self.flops(in_shapes, out_shapes, **attrs))
        return int(sum(np.prod(s, dtype=np.int64) for s in out_shapes))

    def evaluate(self, arrays: list[np.ndarray | None], attrs: dict[str, Any]) -> list[np.ndarray]:
        result = self.reference(*arrays, **attrs)
        results = list(result) if isinstance(result, (tuple, list)) else [result]
        return [np.asarray(r) for r in results]


def _normalise(op: str, name: str, kind: str, value: Any) -> Any:
    bad = ValueError(f"{op} attribute {name!r} must be {kind}, got {value!r}")
    if kind == "int":
        if isinstance(value, (bool, float)) or not isinstance(value, (int, np.integer)):
            raise bad
        return int(value)
    if kind == "optional_int":
        return None if value is None else _normalise(op, name, "int", value)
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
            raise bad
        return float(value)
    if kind == "optional_float":
        return None if value is None else _normalise(op, name, "float", value)
    if kind == "bool":
        if not isinstance(value, (bool, np.bool_)):
            raise bad
        return bool(value)
    if kind == "str":
        if not isinstance(value, str):
            raise bad
        return value
    if kind == "ints":
        return tuple(_normalise(op, name, "int", v) for v in value)
    if kind == "floats":
        return tuple(_normalise(op, name, "float", v) for v in value)
    if kind == "shape":
        return tuple(_normalise(op, name, "dim", v) for v in value)
    if kind == "dim":
        if isinstance(value, str):
            try:
                dims.symbols_in(value)
            except SyntaxError:
                raise bad from None
            return value
        return _normalise(op, name, "int", value)
    if kind == "dtype":
        return value if isinstance(value, DType) else DType(value)
    raise ValueError(f"unknown attribute kind {kind}")


_REGISTRY: dict[str, OpDef] = {}


def defop(name: str, inputs: tuple[str, ...] | list[str], *, infer: Callable[..., Any],
          attrs: dict[str, Attr] | None = None, tags: tuple[str, ...] = (),
          flops: Callable[..., int] | None = None):
    """Decorator: register the decorated numpy function as the reference of op ``name``."""

    def register(reference: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY:
            raise ValueError(f"op {name} is registered twice")
        module = inspect.getmodule(reference)
        _REGISTRY[name] = OpDef(name, tuple(inputs), dict(attrs or {}), infer, reference,
                                doc=inspect.getdoc(reference) or "",
                                family=(module.__name__.rsplit(".", 1)[-1] if module else ""),
                                tags=frozenset(tags), flops=flops)
        return reference

    return register


def get_op(name: str) -> OpDef:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown op {name!r}") from None


def all_ops() -> dict[str, OpDef]:
    return dict(sorted(_REGISTRY.items()))


# Importing the families registers their ops.
from compiler.ops import elementwise, indexing, nn, quant, recurrent, reduce, shape  # noqa: E402,F401

__all__ = ["Attr", "OpDef", "defop", "get_op", "all_ops"]
