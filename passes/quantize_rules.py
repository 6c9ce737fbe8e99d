"""Which layers static int8 leaves in float32 because int8 would be slower there.

Static int8 rewrites a layer into the QDQ form that onnxruntime fuses into QLinearConv / QGemm.
That is fast only for some layers; these rules keep the others float. The rules look at the IR
only (channel counts, kernel size, the activation, which neighbours are quantized), so the pass
stays backend-neutral; the thresholds were measured with onnxruntime 1.32 on x86 (AMD EPYC, AVX-512),
one thread, batch 64: single-layer models compiled float32 and int8 (float in -> layer -> float
out, so each int8 time includes its Q / DQ), and the zoo (``bench/bench_compression.py --zoo``).

Each function returns the reason a user reads in the quantization report, or None.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from compiler.ir import Node, Value
from passes.fuse_activation import activation_of

# Input channels per group below which a conv stays float. onnxruntime's int8 conv works on
# channels-last data and vectorizes along the input channels of a group; with few of them its
# im2col + u8s8 GEMM is slower than MLAS's float NCHWc conv. Measured (single layer, int8 / fp32,
# batch 64): 1->6 5x5 on 28x28 4.2x, 1->32 3x3 on 16x16 3.3x, 2->32 3x3 2.2x, 3->32 3x3 1.7x,
# 3->16 3x3 s2 on 64x64 2.8x, 6->32 3x3 1.3x, 4->32 3x3 0.99x, 6->32 5x5 0.72x; depthwise 3x3
# (1 channel per group) 1.5x at 16 channels, 0.8-1.0x at 32-72; from 8 channels on int8 wins:
# 8->32 3x3 0.51x, 16->32 3x3 0.41x, 8->64 1x1 0.53x. (The old rule, "fewer than 16 products per
# output", let LeNet's 1->6 5x5 conv through: 25 products, 4.2x slower.)
# Below MIN_CONV_CHANNELS_PER_GROUP a conv always stays float (1-2 channels: 2.2-4.2x slower). This
# covers depthwise convs too: at most 0.8x alone at 32-72 channels, 1.5x at 16, and int8 would
# need Q / DQ / reorders around them, so they are kept float (conservative).
MIN_CONV_CHANNELS_PER_GROUP = 3
# From MIN_CONV_CHANNELS_PER_GROUP up to here a conv is int8 only when an int8 layer reads its
# output: kept float, its output would need a QuantizeLinear (and an NCHWc reorder, and a residual
# add fed by it runs in float between DQ and Q), which costs about what the slow int8 kernel loses.
# Measured in the zoo ResNet: the 3->16 3x3 stem on 32x32 takes 1.56 ms as QLinearConv vs 0.65 ms
# float, but float adds a 0.55 ms reorder, a 0.2 ms Q and a float residual add with its DQ / Q /
# transpose (~1.5 ms): the model runs 0.52x with the stem int8 vs 0.57x with it float.
MIN_CONV_CHANNELS_PER_GROUP_ALONE = 8

# Activations onnxruntime folds into the int8 conv's output Q (ReluQuantFusion / ClipQuantFusion).
# Any other activation runs in float between a DequantizeLinear and a QuantizeLinear on the full
# conv output, while the float NCHWc conv applies it for free inside the conv.
FOLDED_ACTIVATIONS = ("relu", "clamp")
# Products per output (input channels per group x kernel area) below which a conv followed by an
# activation from outside FOLDED_ACTIVATIONS stays float. Measured in the zoo MobileNet: the 16->64
# 1x1 expand conv + hardswish on 32x32 took 0.66 ms as QLinearConv but 5.3 ms more for DQ,
# HardSigmoid, Mul and Q on its 4.2M outputs (~1.2 ns an output), against 2.0 ms for the whole
# float conv with the hardswish fused; int8 saves ~0.013 ns a product, so it pays from ~100
# products an output: 16->32 3x3 + hardswish (144) ran 0.42x, + gelu 0.49x, + sigmoid 0.44x.
MIN_REDUCTION_UNFOLDED_ACTIVATION = 128

# Products per output below which a conv stays float when no neighbouring layer is int8 (its
# input is not an int8 layer's output and no int8 layer reads its output): then it alone pays a
# QuantizeLinear on its input, a DequantizeLinear on its output (~0.2 ns an element each) and the
# NCHW <-> NHWC transposes onnxruntime's int8 conv needs, ~0.5 ns an output with the reorders,
# against ~0.013 ns an output saved per product. Measured in the zoo MobileNet: the isolated 16->32
# 1x1 expand conv ran 0.35 ms as QLinearConv + 0.2 ms Q + 0.5 ms DQ + 0.25 ms transposes vs
# 0.74 ms float.
MIN_REDUCTION_ISOLATED_CONV = 64


def conv_reduction(node: Node) -> int:
    """Products each output of a conv sums: input channels per group x kernel area."""
    return int(np.prod(node.inputs[1].shape[1:]))


def channels_per_group(node: Node) -> int:
    return int(node.inputs[1].shape[1])


def _activations_after(node: Node) -> list[str]:
    """The conv's fused activation, or the activation ops reading its output (not fused because
    the output has other readers)."""
    if node.attrs.get("activation"):
        return [node.attrs["activation"]]
    found = []
    for user in node.output.users():
        act = activation_of(user)
        if act is not None:
            found.append(act[0])
    return found


def _few_channels(node: Node, limit: int) -> str:
    channels = channels_per_group(node)
    if channels == 1 and node.attrs.get("groups", 1) > 1:
        return f"a depthwise conv has 1 input channel per group (< {limit})"
    return f"it reads only {channels} input channel{'s' if channels > 1 else ''} per group (< {limit})"


def conv_kernel_reason(node: Node) -> str | None:
    """A static-int8 conv that is slower than float whatever its neighbours are."""
    if channels_per_group(node) < MIN_CONV_CHANNELS_PER_GROUP:
        return (f"{_few_channels(node, MIN_CONV_CHANNELS_PER_GROUP)}: onnxruntime's int8 conv is several times "
                "slower than its float conv there (measured 1.5-4x, e.g. 4.2x for a 1-channel 5x5 input conv)")
    unfolded = [a for a in _activations_after(node) if a not in FOLDED_ACTIVATIONS]
    reduction = conv_reduction(node)
    if unfolded and reduction < MIN_REDUCTION_UNFOLDED_ACTIVATION:
        return (f"its {unfolded[0]} activation would run in float between a dequantize and a quantize on every "
                f"output, which costs more than int8 saves on a conv summing only {reduction} products per output "
                f"(< {MIN_REDUCTION_UNFOLDED_ACTIVATION}); float fuses it into the conv")
    return None


# Ops through which an int8 neighbour still counts as a neighbour: the pass-through ops keep the
# scale, and onnxruntime runs add / relu between quantized values in int8 (QLinearAdd, Relu folded
# into the Q), so a ResNet shortcut conv reading and feeding residual adds is not an island.
# Measured in the zoo ResNet: its 1x1 shortcut convs kept float cost 0.53x -> 0.66x overall.
CONNECTORS = ("add", "relu")
# Pooling that onnxruntime runs in int8 when a quantize lands on its input: its QDQ propagation
# moves the Q a layer puts on its input up through max-pool / reshape. Behind a float conv that
# makes a uint8 MaxPool on NCHW data, ~10x slower than the float one: 2x2 max-pool, batch 64,
# 16x10x10: 507 us vs 46 us; 6x28x28: 1423 us vs 137 us; 64x16x16: 4.0 ms vs 0.36 ms. In the zoo
# LeNet (convs float) quantizing fc1 put the Q in front of the 16x10x10 pool (298 us in the model)
# and made the model 1.3x slower than float, for ~45 us saved in fc1. (Behind an int8 conv the
# pool runs channels-last inside the int8 region and is cheap: the digits CNN stays 0.51x.)
INT8_SLOW_POOLS = ("max_pool", "adaptive_max_pool")


def _int8_above(v: Value, chosen: set[int], connectors: tuple[str, ...], seen: set[int]) -> bool:
    """Is ``v`` an int8 layer's output, or reached from one through ``connectors``?"""
    node = v.producer
    if node is None or id(node) in seen:
        return False
    seen.add(id(node))
    if id(node) in chosen:
        return True
    if node.op not in connectors:
        return False
    return any(_int8_above(i, chosen, connectors, seen) for i in node.inputs if i is not None)


def _int8_below(v: Value, chosen: set[int], connectors: tuple[str, ...], seen: set[int]) -> bool:
    """Does an int8 layer read ``v`` as its input, directly or through ``connectors``?"""
    for user in v.users():
        if id(user) in seen:
            continue
        seen.add(id(user))
        if id(user) in chosen and user.inputs[0] is v:
            return True
        if user.op in connectors and _int8_below(user.output, chosen, connectors, seen):
            return True
    return False


def _float_pool_above(v: Value, chosen: set[int], pass_through: tuple[str, ...]) -> str | None:
    """The max-pool op a quantize on ``v`` would move in front of, when its input is float."""
    pool = None
    while v.producer is not None and id(v.producer) not in chosen and v.producer.op in pass_through:
        if v.producer.op in INT8_SLOW_POOLS:
            pool = v.producer.op
        v = v.producer.inputs[0]
    if pool is None or (v.producer is not None and id(v.producer) in chosen):
        return None
    return pool


def context_reasons(layers: list[Node], pass_through: Iterable[str]) -> dict[int, str]:
    """{id(layer): reason} for the layers among ``layers`` (those static int8 would quantize) that
    would be slower in int8 because of their float neighbours: layers whose input quantize would
    turn a float max-pool into an int8 one, convs with few input channels that no int8 layer reads,
    and small conv islands. Repeated until nothing changes,
    since keeping one layer float can leave its neighbour alone."""
    pass_through = tuple(pass_through)
    connectors = pass_through + CONNECTORS
    chosen = {id(n) for n in layers}
    reasons: dict[int, str] = {}
    changed = True
    while changed:
        changed = False
        for node in layers:
            if id(node) not in chosen:
                continue
            reason = None
            pool = _float_pool_above(node.inputs[0], chosen, pass_through)
            if pool is not None:
                reason = (f"its input comes through a {pool.replace('_', '-')} from float layers, and quantizing it "
                          f"would make onnxruntime run that pool in int8, ~10x slower than in float, which costs more "
                          f"than the layer saves")
            elif node.op == "conv" and channels_per_group(node) < MIN_CONV_CHANNELS_PER_GROUP_ALONE \
                    and not _int8_below(node.output, chosen, connectors, set()):
                reason = (f"{_few_channels(node, MIN_CONV_CHANNELS_PER_GROUP_ALONE)} and no int8 layer reads its "
                          f"output: onnxruntime's int8 conv is slower than its float conv there (measured up to "
                          f"1.7x), which only pays when the next layers are int8 too")
            elif node.op == "conv" and conv_reduction(node) < MIN_REDUCTION_ISOLATED_CONV \
                    and not _int8_above(node.inputs[0], chosen, connectors, set()) \
                    and not _int8_below(node.output, chosen, connectors, set()):
                reason = (f"no neighbouring layer is int8, so it would convert its input to int8 and its output back to "
                          f"float on its own, which costs more than int8 saves on a conv summing only "
                          f"{conv_reduction(node)} products per output (< {MIN_REDUCTION_ISOLATED_CONV})")
            if reason:
                chosen.discard(id(node))
                reasons[id(node)] = reason
                changed = True
    return reasons


__all__ = ["FOLDED_ACTIVATIONS", "MIN_CONV_CHANNELS_PER_GROUP", "MIN_CONV_CHANNELS_PER_GROUP_ALONE",
           "MIN_REDUCTION_ISOLATED_CONV",
           "MIN_REDUCTION_UNFOLDED_ACTIVATION", "channels_per_group", "context_reasons", "conv_kernel_reason",
           "conv_reduction"]
