"""The depthwise-convolution CPU rule (backends/tvm/depthwise.py) against TVM's unscheduled build.

Each case checks that ``DepthwiseConv`` is the rule that takes the convolution (so a rule that
silently stops matching fails here) and that the scheduled build computes what TVM's own
unscheduled build computes: strides 1 and 2, padding, a bias + ReLU6 epilogue, channel counts
that are not a vector multiple and widths with no good column tile.
"""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from tvm import relax

from backends.tvm import pipeline, schedules


@pytest.fixture(scope="module")
def target():
    from tvm.target.codegen import llvm_get_system_cpu

    return tvm.target.Target({"kind": "llvm", "mcpu": llvm_get_system_cpu()})


def _depthwise_module(rng, n, c, h, w, stride, padding, relu6):
    weight = rng.standard_normal((c, 1, 3, 3)).astype("float32")
    bias = rng.standard_normal((1, c, 1, 1)).astype("float32")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((n, c, h, w), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = relax.op.add(relax.op.nn.conv2d(x, relax.const(weight), strides=(stride, stride),
                                                padding=(padding, padding), groups=c), relax.const(bias))
            if relu6:
                y = relax.op.minimum(relax.op.maximum(y, relax.const(0.0)), relax.const(6.0))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def _run(executable, x):
    vm = relax.VirtualMachine(executable, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


@pytest.mark.parametrize("n,c,h,w,stride,padding,relu6", [
    (1, 32, 12, 12, 1, 1, True),
    (1, 48, 11, 13, 2, 1, True),
    (2, 24, 9, 7, 1, 1, False),
    (1, 16, 8, 8, 2, 0, True),
    (1, 20, 6, 10, 1, 1, True),
])
def test_depthwise_matches_unscheduled(rng, target, n, c, h, w, stride, padding, relu6):
    mod = _depthwise_module(rng, n, c, h, w, stride, padding, relu6)
    prepared = pipeline.prepare_module(mod, target=target)
    rules = {gv.name_hint: schedules.rule_for(f, target) for gv, f in prepared.functions.items()
             if isinstance(f, tvm.tirx.PrimFunc) and "conv2d" in gv.name_hint}
    assert rules and set(rules.values()) == {"DepthwiseConv"}, rules
    x = rng.standard_normal((n, c, h, w)).astype("float32")
    want = _run(tvm.compile(mod, target=target), x)
    np.testing.assert_allclose(_run(pipeline.build(mod, target, {}), x), want, rtol=1e-5, atol=1e-5)


def test_grouped_conv_is_not_depthwise(rng, target):
    """Two input channels per group: not the depthwise rule's class."""
    weight = rng.standard_normal((8, 2, 3, 3)).astype("float32")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 8, 6, 6), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.nn.conv2d(x, relax.const(weight), padding=(1, 1), groups=4))
        bb.emit_func_output(out)
    prepared = pipeline.prepare_module(bb.get(), target=target)
    rules = [schedules.rule_for(f, target) for gv, f in prepared.functions.items()
             if isinstance(f, tvm.tirx.PrimFunc) and "conv2d" in gv.name_hint]
    assert rules and "DepthwiseConv" not in rules
