"""Elementwise math with PyTorch's exact semantics: trigonometry, expm1/log1p, rounding, integer
division and remainder signs, bitwise ops, dtype promotion of int/bool inputs.

Each case: PyTorch eager vs frontend + interpreter, then ONNX (onnxruntime) vs the interpreter.
"""

from __future__ import annotations

import pytest
import torch

from op_check import check_backends, check_frontend, gen, ints, randn


def uniform(lo, hi, *shape, seed=0):
    return torch.rand(*shape, generator=gen(seed)) * (hi - lo) + lo


def nonzero_ints(lo, hi, *shape, seed=0):
    x = ints(lo, hi, *shape, seed=seed)
    return torch.where(x == 0, torch.ones_like(x), x)


UNARY = [
    ("tan", torch.tan, uniform(-1.4, 1.4, 3, 5)),
    ("asin", torch.asin, uniform(-0.99, 0.99, 3, 5)),
    ("acos", torch.acos, uniform(-0.99, 0.99, 3, 5)),
    ("atan", torch.atan, randn(3, 5) * 3),
    ("sinh", torch.sinh, randn(3, 5)),
    ("cosh", torch.cosh, randn(3, 5)),
    ("asinh", torch.asinh, randn(3, 5) * 3),
    ("acosh", torch.acosh, uniform(1.01, 5, 3, 5)),
    ("atanh", torch.atanh, uniform(-0.95, 0.95, 3, 5)),
    ("expm1", torch.expm1, torch.tensor([1e-7, -1e-6, 0.0, 1e-3, 2.0, -3.0])),
    ("log1p", torch.log1p, torch.tensor([1e-7, -1e-6, 0.0, 1e-3, 2.0, 30.0])),
    ("log2", torch.log2, uniform(0.01, 100, 4, 4)),
    ("log10", torch.log10, uniform(0.01, 100, 4, 4)),
    ("round", torch.round, torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 0.49, -2.51, 3.0])),
    ("round", lambda x: torch.round(x, decimals=2), randn(4, 5) * 10),
    ("round", lambda x: torch.round(x, decimals=-1), randn(4, 5) * 100),
    ("trunc", torch.trunc, torch.tensor([0.5, 1.7, -1.7, -0.2, 0.0, 5.0, -7.9])),
    ("trunc", torch.fix, randn(3, 4) * 4),
    ("elu", torch.nn.functional.elu, randn(3, 5)),
    ("elu", lambda x: torch.nn.functional.elu(x, alpha=0.5), randn(3, 5)),
    ("elu", torch.selu, randn(3, 5)),
    ("expm1", lambda x: torch.nn.functional.celu(x, alpha=2.0), randn(3, 5)),  # celu decomposes
    ("isinf", torch.isinf, torch.tensor([1.0, float("inf"), -float("inf"), float("nan"), 0.0])),
    ("sin", torch.sin, ints(-5, 5, 6)),  # int input: promoted to float32
]


@pytest.mark.parametrize("op, fn, x", UNARY, ids=[f"{c[0]}-{i}" for i, c in enumerate(UNARY)])
def test_unary(op, fn, x):
    graph, arrays, reference = check_frontend(fn, (x,), ops=[op])
    check_backends(graph, arrays, reference)


A_INT = ints(-20, 20, 4, 6, seed=1)
B_INT = nonzero_ints(-7, 7, 4, 6, seed=2)
A_F = randn(4, 6, seed=3) * 5
B_F = randn(4, 6, seed=4) * 2

BINARY = [
    ("remainder", torch.remainder, (A_INT, B_INT)),
    ("remainder", torch.remainder, (A_F, B_F)),
    ("remainder", lambda a: a % 3, (A_INT,)),
    ("remainder", lambda a: a % -2.5, (A_F,)),
    ("fmod", torch.fmod, (A_INT, B_INT)),
    ("fmod", torch.fmod, (A_F, B_F)),
    ("floor_div", torch.floor_divide, (A_INT, B_INT)),
    ("floor_div", lambda a, b: a // b, (A_F, B_F)),
    ("floor_div", lambda a, b: torch.div(a, b, rounding_mode="floor"), (A_INT, B_INT)),
    ("trunc_div", lambda a, b: torch.div(a, b, rounding_mode="trunc"), (A_INT, B_INT)),
    ("trunc_div", lambda a, b: torch.div(a, b, rounding_mode="trunc"), (A_F, B_F)),
    ("atan2", torch.atan2, (A_F, B_F)),
    ("atan2", torch.atan2, (torch.tensor([0.0, 1.0, -1.0, 0.0, 2.0, -2.0]),
                            torch.tensor([1.0, 0.0, 0.0, -1.0, -3.0, -3.0]))),
    ("bitwise_and", torch.bitwise_and, (A_INT, B_INT)),
    ("bitwise_or", torch.bitwise_or, (A_INT.to(torch.int32), B_INT.to(torch.int32))),
    ("bitwise_xor", torch.bitwise_xor, (A_INT, B_INT)),
    ("bitwise_xor", lambda a: a ^ 5, (A_INT,)),
    ("bitwise_xor", torch.bitwise_not, (A_INT,)),
    ("bitwise_xor", torch.bitwise_not, (ints(0, 255, 8, dtype=torch.uint8),)),
    ("bitwise_xor", lambda a, b: a ^ b, (A_INT > 0, B_INT > 0)),
]


@pytest.mark.parametrize("op, fn, xs", BINARY, ids=[f"{c[0]}-{i}" for i, c in enumerate(BINARY)])
def test_binary(op, fn, xs):
    graph, arrays, reference = check_frontend(fn, xs, ops=[op])
    check_backends(graph, arrays, reference)


@pytest.mark.parametrize("fn", [torch.remainder, torch.floor_divide, torch.fmod])
def test_integer_division_by_zero_is_refused_by_the_interpreter(fn):
    from compiler.interpreter import InterpreterError, run_graph
    from op_check import import_fn

    _, graph = import_fn(fn, (A_INT, B_INT))
    with pytest.raises(InterpreterError, match="division by zero"):
        run_graph(graph, [A_INT.numpy(), (B_INT * 0).numpy()])


def test_true_division_of_ints_gives_float():
    graph, arrays, reference = check_frontend(lambda a, b: a / b, (A_INT, B_INT), ops=["div"])
    assert reference[0].dtype.name == "float32"
    check_backends(graph, arrays, reference)


def test_bool_arithmetic_promotes():
    graph, arrays, reference = check_frontend(lambda a, b: (a + b) * 2, (A_INT > 0, B_INT > 0))
    assert reference[0].dtype.name == "int64"
    check_backends(graph, arrays, reference)


def test_atan2_broadcasts_both_ways():
    y, x = randn(2, 3, 4, seed=7), randn(4, seed=8)
    for args in ((y, x), (x, y)):
        graph, arrays, reference = check_frontend(torch.atan2, args, ops=["atan2"])
        check_backends(graph, arrays, reference)
