"""Which layers static int8 keeps float (passes/quantize_rules.py): few input channels per group,
an activation the int8 conv cannot fold, a small conv alone between float ops, a layer whose
input quantize would turn a float max-pool into an int8 one; each with a reason a user can read.
"""

from __future__ import annotations

import numpy as np
import pytest

from passes import PassManager, make_pipeline
from passes.quantize import quantize_graph, select_layers
from passes.quantize_rules import MIN_CONV_CHANNELS_PER_GROUP

torch = pytest.importorskip("torch")
nn = torch.nn


def graph_of(model, *shape):
    from compiler.frontend import export_module, import_exported_program

    torch.manual_seed(0)
    graph = import_exported_program(export_module(model.eval(), (torch.randn(*shape),)))
    PassManager(make_pipeline(), verify=True).run(graph)
    return graph


def selection(model, *shape, skip=()):
    chosen, skipped = select_layers(graph_of(model, *shape), "int8", skip)
    return [n.op for n in chosen], {s["name"]: s["reason"] for s in skipped}, skipped


def test_a_one_input_channel_conv_stays_float_and_says_why():
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU())
    chosen, _, skipped = selection(model, 8, 1, 8, 8)
    assert chosen == ["conv"] and [s["op"] for s in skipped] == ["conv"]
    reason = skipped[0]["reason"]
    assert "only 1 input channel per group" in reason and f"< {MIN_CONV_CHANNELS_PER_GROUP}" in reason
    assert "slower than its float conv" in reason


def test_lenet_style_convs_with_1_and_6_input_channels_stay_float():
    model = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.Conv2d(6, 16, 5), nn.ReLU())
    chosen, _, skipped = selection(model, 4, 1, 28, 28)
    assert chosen == [] and ["6 input channels" in s["reason"] for s in skipped] == [False, True]


def test_a_3_channel_conv_is_int8_only_when_int8_layers_read_its_output():
    alone = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU())
    chosen, _, skipped = selection(alone, 4, 3, 16, 16)
    assert chosen == [] and "only 3 input channels per group (< 8) and no int8 layer reads its output" \
        in skipped[0]["reason"]
    stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU())
    assert selection(stem, 4, 3, 16, 16)[0] == ["conv", "conv"]


def test_a_16_channel_conv_is_quantized():
    chosen, _, skipped = selection(nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU()), 8, 16, 8, 8)
    assert chosen == ["conv"] and skipped == []


def test_depthwise_conv_stays_float():
    model = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.ReLU(),
                          nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.ReLU(),
                          nn.Conv2d(32, 32, 3, padding=1), nn.ReLU())
    chosen, _, skipped = selection(model, 4, 32, 8, 8)
    assert chosen == ["conv", "conv"] and len(skipped) == 1
    assert "depthwise conv has 1 input channel per group" in skipped[0]["reason"]


@pytest.mark.parametrize("act", [nn.Hardswish, nn.GELU, nn.Sigmoid, nn.SiLU])
def test_unfoldable_activation_keeps_a_small_conv_float_but_not_a_large_one(act):
    small = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 1), act())
    chosen, _, skipped = selection(small, 4, 32, 8, 8)
    assert chosen == ["conv"] and len(skipped) == 1  # the 3x3 relu conv stays int8
    assert "activation would run in float" in skipped[0]["reason"] and "32 products" in skipped[0]["reason"]
    large = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), act())  # 144 products per output
    assert selection(large, 4, 16, 8, 8)[0] == ["conv"]


def test_relu_and_relu6_fold_into_the_quantize():
    for act in (nn.ReLU, nn.ReLU6):
        model = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 1), act())
        assert selection(model, 4, 32, 8, 8)[0] == ["conv", "conv"]


def test_a_small_conv_alone_between_float_ops_stays_float_but_not_in_an_int8_chain():
    alone = nn.Sequential(nn.Conv2d(16, 32, 1), nn.ReLU())
    chosen, _, skipped = selection(alone, 4, 16, 8, 8)
    assert chosen == [] and "no neighbouring layer is int8" in skipped[0]["reason"]
    chain = nn.Sequential(nn.Conv2d(16, 32, 1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 32, 1), nn.ReLU())
    assert selection(chain, 4, 16, 8, 8)[0] == ["conv", "conv"]


def test_a_linear_behind_a_max_pool_of_float_convs_stays_float():
    model = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(6 * 14 * 14, 32), nn.ReLU(), nn.Linear(32, 10))
    chosen, _, skipped = selection(model, 4, 1, 28, 28)
    assert [s["op"] for s in skipped] == ["conv", "linear"] and chosen == ["linear"]
    assert "max-pool" in skipped[1]["reason"] and "int8" in skipped[1]["reason"]


def test_skip_on_request_still_wins_and_is_reported_as_such():
    model = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU())
    chosen, _, skipped = selection(model, 4, 16, 8, 8, skip=("conv",))
    assert chosen == [] and all(s["reason"] == "skipped on request" for s in skipped)


def test_other_modes_are_unaffected():
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 1), nn.Hardswish())
    graph = graph_of(model, 4, 1, 8, 8)
    assert len(select_layers(graph, "int8-weight")[0]) == 2


@pytest.mark.parametrize("name, float_layers", [
    ("lenet", ["conv", "conv", "linear"]),      # 1- and 6-channel convs; fc1 sits behind a max-pool
    ("resnet", []),                 # the 3-channel stem feeds int8 convs; the shortcut convs sit between int8 adds
    ("mlp", []), ("transformer", []),
])
def test_zoo_selection(name, float_layers):
    from models import ZOO

    model = ZOO[name].factory()
    example = model.example_inputs(2)
    from compiler.frontend import export_module, import_exported_program

    graph = import_exported_program(export_module(model.eval(), example))
    PassManager(make_pipeline(), verify=True).run(graph)
    _, skipped = select_layers(graph, "int8")
    assert [s["op"] for s in skipped] == float_layers, skipped


def test_zoo_mobilenet_keeps_hardswish_and_depthwise_convs_float():
    from compiler.frontend import export_module, import_exported_program
    from models import ZOO

    model = ZOO["mobilenet"].factory()
    graph = import_exported_program(export_module(model.eval(), model.example_inputs(2)))
    PassManager(make_pipeline(), verify=True).run(graph)
    chosen, skipped = select_layers(graph, "int8")
    assert not any(n.op == "conv" and (n.attrs.get("groups", 1) > 1 or n.attrs.get("activation") == "hardswish")
                   for n in chosen)
    assert all(s["reason"] for s in skipped)


def test_quantize_graph_reports_the_reasons():
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU())
    graph = graph_of(model, 4, 1, 8, 8)
    rng = np.random.default_rng(0)
    report = quantize_graph(graph, "int8", [[rng.standard_normal((4, 1, 8, 8)).astype(np.float32)]])
    assert len(report["quantized"]) == 1 and "input channel" in report["skipped"][0]["reason"]
