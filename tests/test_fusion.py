"""Fusion passes on graphs the frontend produces from hand-written PyTorch: the pattern must be
recognised (op list after) and the numbers kept (interpreter before vs after), and patterns that
must not match are left alone."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from compiler.frontend import export_module, import_exported_program
from compiler.interpreter import run_graph
from compiler.text import op_list
from passes import make_pipeline
from passes.base import PassManager


def compile_ir(module, inputs, pipeline):
    graph = import_exported_program(export_module(module.eval(), inputs))
    feeds = [t.numpy() for t in inputs]
    before = run_graph(graph, feeds)
    PassManager(make_pipeline(pipeline), check_inputs=feeds, rtol=1e-5, atol=1e-5).run(graph)
    after = run_graph(graph, feeds)
    for a, b in zip(before, after):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        want = module(*inputs)
    want = want if isinstance(want, tuple) else (want,)
    for got, expected in zip(after, want):
        np.testing.assert_allclose(got, expected.numpy(), rtol=1e-4, atol=1e-5)
    return graph


class ManualGelu(nn.Module):
    def __init__(self, form):
        super().__init__()
        self.form = form

    def forward(self, x):
        if self.form == "erf":
            return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))
        if self.form == "erf_mul":
            return x * (1.0 + torch.erf(x * 0.7071067811865476)) * 0.5
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


@pytest.mark.parametrize("form", ["erf", "erf_mul", "tanh"])
def test_gelu_is_recognised(form):
    g = compile_ir(ManualGelu(form), (torch.randn(4, 16),), "fold,simplify,cse,fuse_gelu,dce")
    assert op_list(g) == ["gelu"]
    assert g.nodes[0].attrs["approximate"] == ("tanh" if form == "tanh" else "none")


class ManualLayerNorm(nn.Module):
    def __init__(self, affine=True, use_rsqrt=False):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(16) + 0.5) if affine else None
        self.bias = nn.Parameter(torch.rand(16)) if affine else None
        self.use_rsqrt = use_rsqrt

    def forward(self, x):
        mean = x.mean(-1, keepdim=True)
        var = ((x - mean) ** 2).mean(-1, keepdim=True)
        y = (x - mean) * torch.rsqrt(var + 1e-5) if self.use_rsqrt else (x - mean) / torch.sqrt(var + 1e-5)
        return y * self.weight + self.bias if self.weight is not None else y


@pytest.mark.parametrize("affine,use_rsqrt", [(True, False), (False, False), (True, True)])
def test_layer_norm_is_recognised(affine, use_rsqrt):
    g = compile_ir(ManualLayerNorm(affine, use_rsqrt), (torch.randn(2, 5, 16),), "fold,simplify,cse,fuse_layernorm,dce")
    assert op_list(g) == ["layer_norm"]
    assert (g.nodes[0].inputs[1] is not None) == affine


class ManualAttention(nn.Module):
    def __init__(self, dim=32, heads=4, mask=None, split_heads=True):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.heads, self.mask, self.split_heads = heads, mask, split_heads

    def forward(self, x):
        b, s, e = x.shape
        h = self.heads if self.split_heads else 1
        q, k, v = (t.view(b, s, h, e // h).transpose(1, 2) for t in (self.q(x), self.k(x), self.v(x)))
        scores = q @ k.transpose(-2, -1) / math.sqrt(e // h)
        if self.mask is not None:
            scores = scores + self.mask
        y = torch.softmax(scores, dim=-1) @ v
        return self.o(y.transpose(1, 2).reshape(b, s, e))


def test_attention_and_multi_head_attention_are_recognised():
    g = compile_ir(ManualAttention(), (torch.randn(2, 6, 32),), "fold,simplify,cse,fuse_attention,dce")
    assert op_list(g) == ["qkv_attention", "linear"]  # q/k/v projections of one x packed into one
    attn = g.nodes[0]
    assert attn.attrs["num_heads"] == 4 and attn.inputs[1].shape == (96, 32) and attn.inputs[2].shape == (96,)


def test_packed_projections_unpack_to_the_same_numbers():
    from passes.fuse_attention import unpack_qkv_attention

    x = torch.randn(2, 6, 32)
    g = compile_ir(ManualAttention(), (x,), "fold,simplify,cse,fuse_attention,dce")
    packed = run_graph(g, [x.numpy()])[0]
    assert unpack_qkv_attention(g)
    g.verify()
    assert op_list(g) == ["linear", "linear", "linear", "multi_head_attention", "linear"]
    np.testing.assert_allclose(run_graph(g, [x.numpy()])[0], packed, rtol=1e-5, atol=1e-6)
    assert not unpack_qkv_attention(g)


def test_compression_sees_packed_projections_as_linear_layers():
    from compiler.driver.compression import CompressionOptions, compress

    x = torch.randn(2, 6, 32)
    g = compile_ir(ManualAttention(), (x,), "fold,simplify,cse,fuse_attention,dce")
    report = compress(g, CompressionOptions(quantize="int8-weight"), [x.numpy()])
    assert "qkv_attention" not in op_list(g)
    assert len(report["quantization"]["quantized"]) == 4  # q, k, v and the output projection


class CrossAttention(ManualAttention):
    """q from x, k and v from memory: the projections read different inputs."""

    def forward(self, x, memory):
        b, s, e = x.shape
        q = self.q(x).view(b, s, 4, e // 4).transpose(1, 2)
        k, v = (t.view(b, memory.shape[1], 4, e // 4).transpose(1, 2) for t in (self.k(memory), self.v(memory)))
        y = F.scaled_dot_product_attention(q, k, v)
        return self.o(y.transpose(1, 2).reshape(b, s, e))


def test_cross_attention_projections_are_not_packed():
    from passes.fuse_attention import QKV_RULES
    from passes.rewrite import explain

    g = compile_ir(CrossAttention(), (torch.randn(2, 6, 32), torch.randn(2, 9, 32)), "fuse_attention,dce")
    assert op_list(g) == ["linear", "linear", "linear", "multi_head_attention", "linear"]
    assert any("different inputs" in line for line in explain(g, QKV_RULES))


def test_projection_read_elsewhere_is_not_packed():
    class KeyReused(ManualAttention):
        def forward(self, x):
            b, s, e = x.shape
            k = self.k(x)
            q, kh, v = (t.view(b, s, 4, e // 4).transpose(1, 2) for t in (self.q(x), k, self.v(x)))
            y = F.scaled_dot_product_attention(q, kh, v).transpose(1, 2).reshape(b, s, e)
            return self.o(y) + k

    g = compile_ir(KeyReused(), (torch.randn(2, 6, 32),), "fuse_attention,dce")
    assert "multi_head_attention" in op_list(g) and "qkv_attention" not in op_list(g)


def test_projections_without_bias_pack_with_a_zero_bias():
    class PartlyBiased(ManualAttention):
        def __init__(self):
            super().__init__()
            self.k = nn.Linear(32, 32, bias=False)  # like Whisper's key projection

    g = compile_ir(PartlyBiased(), (torch.randn(2, 6, 32),), "fold,simplify,cse,fuse_attention,dce")
    assert op_list(g) == ["qkv_attention", "linear"]
    assert not g.nodes[0].inputs[2].const[32:64].any()


def test_sdpa_from_the_frontend_becomes_multi_head_attention():
    class Sdpa(ManualAttention):
        def forward(self, x):
            b, s, e = x.shape
            q, k, v = (t.view(b, s, 4, e // 4).transpose(1, 2) for t in (self.q(x), self.k(x), self.v(x)))
            return self.o(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, s, e))

    g = compile_ir(Sdpa(), (torch.randn(2, 6, 32),), "fuse_attention,dce")
    assert op_list(g) == ["qkv_attention", "linear"]  # multi_head_attention, then its projections packed


def test_masked_attention_fuses_to_attention_but_not_multi_head():
    mask = torch.randn(6, 6)
    g = compile_ir(ManualAttention(mask=mask), (torch.randn(2, 6, 32),), "fold,simplify,cse,fuse_attention,dce")
    ops = op_list(g)
    assert "attention" in ops and "multi_head_attention" not in ops and "softmax" not in ops


def test_softmax_with_second_user_is_not_fused():
    class TwoUsers(nn.Module):
        def forward(self, q, k, v):
            p = torch.softmax(q @ k.transpose(-2, -1), dim=-1)
            return p @ v, p.sum(-1)

    g = compile_ir(TwoUsers(), (torch.randn(2, 5, 8), torch.randn(2, 5, 8), torch.randn(2, 5, 8)),
                   "fuse_attention,dce")
    assert "attention" not in op_list(g) and "softmax" in op_list(g)
