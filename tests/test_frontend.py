"""Frontend: torch.export -> IR, differential against PyTorch eager through the interpreter."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from compiler.errors import UnsupportedOpError
from compiler.frontend import export_module, import_exported_program
from compiler.interpreter import run_graph


class Fn(nn.Module):
    def __init__(self, fn, *modules):
        super().__init__()
        self.fn = fn
        self.mods = nn.ModuleList(modules)

    def forward(self, *xs):
        return self.fn(self, *xs)


def check(module, inputs, *, dynamic_batch=False, rtol=1e-5, atol=1e-6, other_batch=None):
    torch.manual_seed(0)
    module = module.eval()
    graph = import_exported_program(export_module(module, inputs, dynamic_batch=dynamic_batch))
    cases = [inputs]
    if other_batch is not None:
        cases.append(other_batch)
    for case in cases:
        with torch.no_grad():
            want = module(*case)
        want = want if isinstance(want, tuple) else (want,)
        got = run_graph(graph, [t.numpy() for t in case])
        assert len(got) == len(want)
        for w, g in zip(want, got):
            assert g.dtype == w.numpy().dtype and g.shape == tuple(w.shape)
            np.testing.assert_allclose(g, w.numpy(), rtol=rtol, atol=atol)
    return graph


def randn(*shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape) + len(shape)))


UNARY = {
    "relu": F.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "exp": torch.exp, "neg": torch.neg,
    "abs": torch.abs, "erf": torch.erf, "sin": torch.sin, "cos": torch.cos, "floor": torch.floor,
    "ceil": torch.ceil, "silu": F.silu, "hardswish": F.hardswish, "hardsigmoid": F.hardsigmoid,
    "gelu": F.gelu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"), "relu6": F.relu6,
    "leaky_relu": lambda x: F.leaky_relu(x, 0.2), "hardtanh": F.hardtanh,
    "clamp": lambda x: torch.clamp(x, -0.5, 0.7), "clamp_min": lambda x: x.clamp(min=0.1),
    "softmax": lambda x: torch.softmax(x, -1), "log_softmax": lambda x: F.log_softmax(x, 1),
    "sqrt_abs": lambda x: torch.sqrt(x.abs()), "rsqrt": lambda x: torch.rsqrt(x.abs() + 1),
    "log": lambda x: torch.log(x.abs() + 1), "reciprocal": lambda x: 1 / (x.abs() + 1),
}


@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary(name):
    fn = UNARY[name]
    check(Fn(lambda self, x: fn(x)), (randn(3, 4, 5),))


BINARY = {
    "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
    "div": lambda a, b: a / (b.abs() + 1), "max": torch.maximum, "min": torch.minimum,
    "add_alpha": lambda a, b: torch.add(a, b, alpha=2), "rsub": lambda a, b: 1 - a,
    "pow_scalar": lambda a, b: a ** 2, "scalar_mul": lambda a, b: a * 0.5 + b,
    "where": lambda a, b: torch.where(a > b, a, b), "lt_int": lambda a, b: (a < b).to(torch.int64),
}


@pytest.mark.parametrize("name", sorted(BINARY))
@pytest.mark.parametrize("shapes", [((3, 4), (3, 4)), ((2, 3, 4), (4,)), ((3, 1), (1, 4))], ids=str)
def test_binary_broadcasting(name, shapes):
    fn = BINARY[name]
    check(Fn(lambda self, a, b: fn(a, b)), (randn(*shapes[0]), randn(*shapes[1])))


def test_type_promotion_int_float_and_true_division():
    def fn(self, x, i):
        return x + i, i / 2, (i * 3 + 1), (i > 2) & (i < 8)

    check(Fn(fn), (randn(2, 3), torch.randint(0, 10, (2, 3))))


def test_linear_conv_bn_pool_chain():
    conv, bn, fc = nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.Linear(8 * 4 * 4, 5)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.uniform_(0.5, 1.5)

    def fn(self, x):
        y = F.max_pool2d(F.relu(bn(conv(x))), 2, ceil_mode=True)
        return fc(torch.flatten(y, 1))

    check(Fn(fn, conv, bn, fc), (randn(2, 3, 16, 16),))


@pytest.mark.parametrize("groups,dilation,stride,padding", [(1, 1, 1, 0), (2, 2, 1, 2), (4, 1, 2, 1)])
def test_conv1d_and_conv2d_variants(groups, dilation, stride, padding):
    c1 = nn.Conv1d(4, 8, 3, stride=stride, padding=padding, dilation=dilation, groups=groups)
    c2 = nn.Conv2d(4, 8, 3, stride=stride, padding=padding, dilation=dilation, groups=groups)
    check(Fn(lambda self, x, y: (c1(x), c2(y)), c1, c2), (randn(2, 4, 17), randn(2, 4, 11, 9)), atol=1e-5)


def test_depthwise_conv_and_avg_pools():
    dw = nn.Conv2d(6, 6, 3, padding=1, groups=6)

    def fn(self, x):
        y = dw(x)
        return (F.avg_pool2d(y, 3, stride=2, padding=1), F.avg_pool2d(y, 2, ceil_mode=True),
                F.avg_pool2d(y, 3, stride=2, padding=1, count_include_pad=False),
                F.adaptive_avg_pool2d(y, 1), F.adaptive_avg_pool2d(y, (3, 2)))

    check(Fn(fn, dw), (randn(2, 6, 9, 7),), atol=1e-5)


def test_layer_norm_softmax_attention():
    ln = nn.LayerNorm(16)

    def fn(self, q, k, v, mask):
        a = F.scaled_dot_product_attention(q, k, v)
        b = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        c = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        d = F.scaled_dot_product_attention(q, k, v, attn_mask=mask > 0, scale=0.3)
        return ln(a + b + c + d)

    check(Fn(fn, ln), (randn(2, 2, 5, 16), randn(2, 2, 5, 16), randn(2, 2, 5, 16), randn(5, 5)), atol=1e-5)


def test_shape_ops():
    def fn(self, x):
        y = x.permute(0, 2, 1).reshape(2, -1).unsqueeze(1)      # (2, 1, 12)
        z = torch.cat([y, y * 2], dim=-1)[:, :, 3:20:2]          # slice with step
        w = x.transpose(1, 2)[:, 1]                              # select
        return z.squeeze(1), w.expand(3, 2, 3).contiguous(), x[:, -2:, :].sum(dim=(1, 2), keepdim=True)

    check(Fn(fn), (randn(2, 3, 4),))


def test_reductions_and_argmax():
    def fn(self, x):
        return x.mean(-1), x.sum(0), x.amax(1, keepdim=True), x.argmax(-1), x.mean()

    check(Fn(fn), (randn(3, 4, 5),))


def test_embedding_and_index_select():
    emb = nn.Embedding(20, 6)

    def fn(self, ids):
        e = emb(ids)
        return e, torch.index_select(e, 1, torch.tensor([0, 2]))

    check(Fn(fn, emb), (torch.randint(0, 20, (3, 4)),))


def test_dynamic_batch_keeps_symbolic_dim():
    fc1, fc2 = nn.Linear(8, 16), nn.Linear(16, 2)

    def fn(self, x):
        h = F.relu(fc1(x)).view(x.shape[0], 4, 4).flatten(1)
        return fc2(h)

    g = check(Fn(fn, fc1, fc2), (randn(2, 8),), dynamic_batch=True, other_batch=(randn(5, 8),))
    assert g.inputs[0].shape == ("batch", 8)
    assert g.outputs[0].shape == ("batch", 2)


def test_dynamic_batch_with_batch_one_example():
    fc = nn.Linear(4, 3)
    g = check(Fn(lambda self, x: fc(x), fc), (randn(1, 4),), dynamic_batch=True, other_batch=(randn(6, 4),))
    assert g.inputs[0].shape[0] == "batch"


class ReluLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return torch.relu(self.fc(x))


class Determinant(nn.Module):
    def forward(self, x):
        return torch.linalg.det(x) * 2  # no translation for det yet


def test_parameters_become_named_constants_with_locations():
    g = check(ReluLinear(), (randn(2, 4),))
    assert {"fc_weight", "fc_bias"} <= set(g.constants)
    relu = [n for n in g.nodes if n.op == "relu"][0]
    # torch.export records the user's forward frame (not lambdas or helpers called from it)
    assert relu.location and "test_frontend.py" in relu.location and "torch.relu(self.fc(x))" in relu.location


def test_unsupported_op_names_aten_op_and_user_line():
    with pytest.raises(UnsupportedOpError) as info:
        import_exported_program(export_module(Determinant(), (randn(3, 3),)))
    message = str(info.value)
    assert "aten._linalg_det" in message and "test_frontend.py" in message
    assert "torch.linalg.det(x)" in message and "\n" not in message


def test_training_mode_batch_norm_is_refused_by_export_in_eval():
    bn = nn.BatchNorm1d(4)
    g = check(Fn(lambda self, x: bn(x), bn), (randn(3, 4),))
    assert [n.op for n in g.nodes] == ["batch_norm"]
