"""Arithmetic on dims that may be symbolic.

A dim is an ``int`` or a ``str``: a symbol name ("batch") or an expression over symbols using
``+ - * //`` and parentheses ("batch*4", "(seq - 1)//2 + 1"). Expressions stay strings in the IR
(readable in printed IR and in artifacts); ``evaluate`` binds them to sizes at run time.
"""

from __future__ import annotations

import ast
import operator
import re
from typing import Mapping

Dim = int | str

_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.FloorDiv: operator.floordiv}
_SYMBOL = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def is_symbol(dim: Dim) -> bool:
    return isinstance(dim, str) and bool(_SYMBOL.match(dim))


def symbols_in(dim: Dim) -> set[str]:
    if isinstance(dim, int):
        return set()
    return {n.id for n in ast.walk(ast.parse(dim, mode="eval")) if isinstance(n, ast.Name)}


def evaluate(dim: Dim, bindings: Mapping[str, int]) -> int:
    """Value of a dim given sizes for its symbols; KeyError names a missing symbol."""
    if isinstance(dim, int):
        return dim

    def walk(node: ast.AST) -> int:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name):
            return int(bindings[node.id])
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -walk(node.operand)
        raise ValueError(f"unsupported dim expression {dim!r}")

    return walk(ast.parse(dim, mode="eval"))


def evaluate_shape(shape, bindings: Mapping[str, int]) -> tuple[int, ...]:
    return tuple(evaluate(d, bindings) for d in shape)


def _wrap(d: Dim) -> str:
    return str(d) if isinstance(d, int) or is_symbol(d) else f"({d})"


def add(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    if b == 0:
        return a
    if a == 0:
        return b
    if isinstance(b, int) and b < 0:
        return sub(a, -b)
    constant = _constant_sum(a, b, 1)
    return constant if constant is not None else f"{_wrap(a)} + {_wrap(b)}"


def sub(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a - b
    if b == 0:
        return a
    if a == b:
        return 0
    constant = _constant_sum(a, b, -1)
    return constant if constant is not None else f"{_wrap(a)} - {_wrap(b)}"


def _constant_sum(a: Dim, b: Dim, sign: int) -> int | None:
    """``a + sign * b`` when the symbols cancel (``seq - (seq - 1)`` is 1), else None. Terms
    that are not linear (``seq//2``) count as symbols of their own."""
    try:
        terms = _linear(a)
        for term, coefficient in _linear(b).items():
            terms[term] = terms.get(term, 0) + sign * coefficient
    except (SyntaxError, ValueError):
        return None
    if any(c for term, c in terms.items() if term != ""):
        return None
    return terms.get("", 0)


def _linear(dim: Dim) -> dict[str, int]:
    """``dim`` as {term: coefficient}, the constant under ""."""
    if isinstance(dim, int):
        return {"": dim}

    def walk(node: ast.AST, scale: int, terms: dict[str, int]) -> None:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            terms[""] = terms.get("", 0) + scale * node.value
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            walk(node.operand, -scale, terms)
        elif isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
            walk(node.left, scale, terms)
            walk(node.right, scale if isinstance(node.op, ast.Add) else -scale, terms)
        elif (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult)
              and isinstance(node.right, ast.Constant) and isinstance(node.right.value, int)):
            walk(node.left, scale * node.right.value, terms)
        elif isinstance(node, (ast.Name, ast.BinOp)):
            key = ast.unparse(node)
            terms[key] = terms.get(key, 0) + scale
        else:
            raise ValueError(f"unsupported dim expression {dim!r}")

    terms: dict[str, int] = {}
    walk(ast.parse(dim, mode="eval").body, 1, terms)
    return terms


def mul(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a * b
    if a == 1:
        return b
    if b == 1:
        return a
    if a == 0 or b == 0:
        return 0
    return f"{_wrap(a)}*{_wrap(b)}"


def floordiv(a: Dim, b: Dim) -> Dim:
    if isinstance(a, int) and isinstance(b, int):
        return a // b
    if b == 1:
        return a
    return f"{_wrap(a)}//{_wrap(b)}"


def product(dims) -> Dim:
    result: Dim = 1
    for d in dims:
        result = mul(result, d)
    return result


def broadcast(a: tuple[Dim, ...], b: tuple[Dim, ...]) -> tuple[Dim, ...]:
    """Numpy broadcasting of two shapes; a symbolic dim against 1 stays symbolic."""
    out = []
    for i in range(max(len(a), len(b))):
        x = a[len(a) - 1 - i] if i < len(a) else 1
        y = b[len(b) - 1 - i] if i < len(b) else 1
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        elif isinstance(x, str) or isinstance(y, str):
            out.append(y if isinstance(x, str) else x)  # assume the symbolic size matches
        else:
            raise ValueError(f"shapes {a} and {b} do not broadcast")
    return tuple(reversed(out))
