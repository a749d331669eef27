"""The spec's torch_names: section: library specs under torchvision's state_dict names
(every key, written out here from torchvision's module tree), weights files under either
name, and the section's mistakes as located errors."""

from __future__ import annotations

import numpy as np
import pytest

import archc
from archc.errors import SpecError
from archc.naming import torch_names
from conftest import SPECS
from runtime.params import fitted_params

BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _bn(prefix: str) -> list[str]:
    return [f"{prefix}.{k}" for k in BN]


def _conv_bn(prefix: str) -> list[str]:  # torchvision's Conv2dNormActivation
    return [f"{prefix}.0.weight"] + _bn(f"{prefix}.1")


def densenet121() -> list[str]:
    keys = ["features.conv0.weight"] + _bn("features.norm0")
    for b, n in enumerate([6, 12, 24, 16], 1):
        for k in range(1, n + 1):
            p = f"features.denseblock{b}.denselayer{k}"
            keys += _bn(f"{p}.norm1") + [f"{p}.conv1.weight"] + _bn(f"{p}.norm2")
            keys += [f"{p}.conv2.weight"]
        if b < 4:
            keys += _bn(f"features.transition{b}.norm") + [f"features.transition{b}.conv.weight"]
    return keys + _bn("features.norm5") + ["classifier.weight", "classifier.bias"]


def efficientnet_b0() -> list[str]:
    keys = _conv_bn("features.0")
    for s, (t, n) in enumerate([(1, 1), (6, 2), (6, 2), (6, 3), (6, 3), (6, 4), (6, 1)], 1):
        for j in range(n):
            p, k = f"features.{s}.{j}.block", 0
            if t != 1:
                keys += _conv_bn(f"{p}.0")
                k = 1
            keys += _conv_bn(f"{p}.{k}")
            keys += [f"{p}.{k + 1}.{fc}.{w}" for fc in ("fc1", "fc2") for w in ("weight", "bias")]
            keys += _conv_bn(f"{p}.{k + 2}")
    return keys + _conv_bn("features.8") + ["classifier.1.weight", "classifier.1.bias"]


def convnext_tiny() -> list[str]:
    wb = ("weight", "bias")
    keys = [f"features.0.{i}.{w}" for i in (0, 1) for w in wb]
    for s, n in enumerate([3, 3, 9, 3]):
        if s:
            keys += [f"features.{2 * s}.{i}.{w}" for i in (0, 1) for w in wb]
        for j in range(n):
            p = f"features.{2 * s + 1}.{j}"
            keys += [f"{p}.block.{i}.{w}" for i in (0, 2, 3, 5) for w in wb]
            keys.append(f"{p}.layer_scale")
    return keys + [f"classifier.{i}.{w}" for i in (0, 2) for w in wb]


def shufflenet_v2() -> list[str]:
    keys = _conv_bn("conv1")
    for s, n in zip((2, 3, 4), (4, 8, 4), strict=True):
        keys += [f"stage{s}.0.branch1.0.weight"] + _bn(f"stage{s}.0.branch1.1")
        keys += [f"stage{s}.0.branch1.2.weight"] + _bn(f"stage{s}.0.branch1.3")
        for j in range(n):
            for conv, bn in ((0, 1), (3, 4), (5, 6)):
                keys += [f"stage{s}.{j}.branch2.{conv}.weight"] + _bn(f"stage{s}.{j}.branch2.{bn}")
    return keys + _conv_bn("conv5") + ["fc.weight", "fc.bias"]


def regnet_y_800mf() -> list[str]:
    # torchvision: stem, trunk_output.block{s}.block{s}-{j} (ResBottleneckBlock: proj when
    # the shape changes, f = BottleneckTransform a, b, se, c), fc; stages of 1, 3, 8, 2
    keys = _conv_bn("stem")
    for s, n in enumerate([1, 3, 8, 2], 1):
        for j in range(n):
            p = f"trunk_output.block{s}.block{s}-{j}"
            keys += _conv_bn(f"{p}.proj") if j == 0 else []
            keys += _conv_bn(f"{p}.f.a") + _conv_bn(f"{p}.f.b")
            keys += [f"{p}.f.se.{fc}.{w}" for fc in ("fc1", "fc2") for w in ("weight", "bias")]
            keys += _conv_bn(f"{p}.f.c")
    return keys + ["fc.weight", "fc.bias"]


def inception_v3() -> list[str]:
    def conv(prefix: str) -> list[str]:  # BasicConv2d
        return [f"{prefix}.conv.weight"] + _bn(f"{prefix}.bn")

    branches = {
        "a": ["branch1x1", "branch5x5_1", "branch5x5_2", "branch3x3dbl_1", "branch3x3dbl_2",
              "branch3x3dbl_3", "branch_pool"],
        "b": ["branch3x3", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"],
        "c": ["branch1x1", "branch7x7_1", "branch7x7_2", "branch7x7_3"]
        + [f"branch7x7dbl_{i}" for i in range(1, 6)] + ["branch_pool"],
        "d": ["branch3x3_1", "branch3x3_2"] + [f"branch7x7x3_{i}" for i in range(1, 5)],
        "e": ["branch1x1", "branch3x3_1", "branch3x3_2a", "branch3x3_2b", "branch3x3dbl_1",
              "branch3x3dbl_2", "branch3x3dbl_3a", "branch3x3dbl_3b", "branch_pool"],
    }
    keys = []
    for stem in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1",
                 "Conv2d_4a_3x3"):
        keys += conv(stem)
    for mixed, kind in (("5b", "a"), ("5c", "a"), ("5d", "a"), ("6a", "b"), ("6b", "c"),
                        ("6c", "c"), ("6d", "c"), ("6e", "c"), ("7a", "d"), ("7b", "e"),
                        ("7c", "e")):
        for branch in branches[kind]:
            keys += conv(f"Mixed_{mixed}.{branch}")
    keys += conv("AuxLogits.conv0") + conv("AuxLogits.conv1")
    return keys + ["AuxLogits.fc.weight", "AuxLogits.fc.bias", "fc.weight", "fc.bias"]


@pytest.mark.parametrize("spec, torchvision", [
    ("densenet121", densenet121), ("efficientnet", efficientnet_b0),
    ("convnext_tiny", convnext_tiny), ("shufflenet_v2", shufflenet_v2),
    ("regnet", regnet_y_800mf), ("inception_v3", inception_v3),
])
def test_library_specs_carry_torchvisions_names(spec, torchvision):
    graph = archc.load(SPECS / f"{spec}.yaml", resolution=299 if spec == "inception_v3" else 64)
    model = archc.compile(graph)
    assert sorted(model.state_dict()) == sorted(torchvision())
    # weights under those names come back to archc's, array for array
    back = fitted_params(model.state_dict(), model.program)
    assert all(np.array_equal(back[k], v) for k, v in model.params.items())


def test_convnext_weights_have_torchvisions_shapes(tmp_path):
    """ConvNeXt's blocks are written channels-last as torchvision writes them, so every
    tensor has the shape of torchvision's (its load_state_dict(strict=True) takes them):
    Linear weights (out, in), the layer scale (C, 1, 1). An earlier export of 1x1 convs,
    (out, in, 1, 1), still loads."""
    graph = archc.load(SPECS / "convnext_tiny.yaml", resolution=32)
    model = archc.compile(graph, seed=2)
    state = model.state_dict()
    for s, c in enumerate([96, 192, 384, 768]):
        p = f"features.{2 * s + 1}.0"
        assert {k[len(p) + 1:]: state[k].shape for k in state if k.startswith(p + ".")} == {
            "block.0.weight": (c, 1, 7, 7), "block.0.bias": (c,), "block.2.weight": (c,),
            "block.2.bias": (c,), "block.3.weight": (4 * c, c), "block.3.bias": (4 * c,),
            "block.5.weight": (c, 4 * c), "block.5.bias": (c,), "layer_scale": (c, 1, 1)}
    older = {k: v[:, :, None, None] if ".block.3.weight" in k or ".block.5.weight" in k else v
             for k, v in state.items()}
    np.savez(tmp_path / "old.npz", **older)
    other = archc.compile(graph)
    other.load(tmp_path / "old.npz")
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    assert np.array_equal(other(x), model(x))


def test_a_linear_weight_loads_into_a_same_named_1x1_conv(tmp_path):
    """Without a torch_names rule too: archc's own name with a Linear's (out, in) array,
    and a 1x1 conv's (out, in, 1, 1) into a linear layer; other shapes stay refused."""
    graph = archc.load("net.yaml", text="""
name: net
input: {channels: 4, height: 3, width: 3}
layers:
  - conv2d: {out_channels: 5, kernel_size: 1}
    name: pw
  - conv2d: {out_channels: 2, kernel_size: 3}
    name: k3
  - flatten
  - linear: 3
    name: fc
""")
    model = archc.compile(graph, seed=1)
    state = model.parameters()
    flat = {**state, "pw.weight": state["pw.weight"][:, :, 0, 0],
            "fc.weight": state["fc.weight"][:, :, None, None]}
    np.savez(tmp_path / "w.npz", **flat)
    other = archc.compile(graph, seed=2)
    other.load(tmp_path / "w.npz")
    for name, value in state.items():
        assert np.array_equal(other.parameters()[name], value), name
    bad = {**state, "k3.weight": state["k3.weight"][:, :, 0, 0]}
    np.savez(tmp_path / "bad.npz", **bad)
    with pytest.raises(Exception, match=r"wrong shape: k3.weight \(2, 5\) \(expected "
                                        r"\(2, 5, 3, 3\)\)"):
        other.load(tmp_path / "bad.npz")


def test_a_state_dict_under_pytorch_names_fails_by_those_names(tmp_path):
    model = archc.compile(archc.load(SPECS / "mobilenet_v2.yaml", resolution=32))
    state = model.state_dict()
    del state["features.18.1.running_var"]
    state["features.19.weight"] = np.zeros(3, np.float32)
    np.savez(tmp_path / "w.npz", **state)
    with pytest.raises(Exception, match=r"missing: head.batchnorm2d.running_var \| "
                                        r"unexpected: features.19.weight"):
        model.load(tmp_path / "w.npz")


NET = """
name: net
input: {channels: 3, height: 8, width: 8}
layers:
  - conv2d: [4, 3]
    name: a
    repeat: 2
  - flatten
  - linear: 10
    name: fc
torch_names:
%s
"""


def test_rules_rename_layers_and_single_parameters():
    graph = archc.load("net.yaml", text=NET % '  "a.{i}": "features.{2 * i + 1}"\n'
                       '  fc.bias: head.b')
    assert torch_names(graph) == {"a.0.weight": "features.1.weight",
                                  "a.0.bias": "features.1.bias",
                                  "a.1.weight": "features.3.weight",
                                  "a.1.bias": "features.3.bias", "fc.bias": "head.b"}


def test_a_rule_part_of_several_dotted_parts():
    """{rest...} takes one or more parts whole: torchvision's RegNet names its blocks
    trunk_output.block2.block2-0...; one rule covers every layer under a stage."""
    graph = archc.load("net.yaml", text=NET % '  "a.{i}.{rest...}": "trunk.block{i}-{i}.{rest}"\n'
                       '  "{x...}": "head.{x}"')
    names = torch_names(graph)
    assert names["a.1.weight"] == "trunk.block1-1.weight"
    assert names["fc.bias"] == "head.fc.bias"  # the whole parameter name, dots and all


@pytest.mark.parametrize("rules, line, message", [
    ('  "a.{i}": "features.{j}"', 12, "'features.{j}' for 'a.0': undefined name 'j'"),
    ('  "a.{i}": features.0', 12, "'a.0.weight' and 'a.1.weight' would both be named "
                                  "'features.0.weight'"),
    ('  "a.{i}.{i}": x', 12, "'{i}' in 'a.{i}.{i}' must be a new name"),
    ('  "a.{1x}": x', 12, "'{1x}' in 'a.{1x}' must be a new name"),
    ('  "a.{r...}.{r}": x', 12, "'{r}' in 'a.{r...}.{r}' must be a new name"),
    ('  "a.{....}": x', 12, "'{....}' in 'a.{....}' must be a new name"),
    ('  "a.{i": x', 12, "unbalanced braces in 'a.{i'"),
    ('  fc: 3', 12, "'fc' must map to a name (text)"),
    ('  - a', 12, "'torch_names' must be a mapping"),
])
def test_mistakes_in_rules_are_located(rules, line, message):
    with pytest.raises(SpecError) as info:
        archc.load("net.yaml", text=NET % rules)
    assert message in info.value.message
    assert info.value.loc.line == line


@pytest.mark.parametrize("spec", ["fcn", "deeplab"])
def test_the_auxiliary_segmentation_head_carries_torchvisions_names(spec):
    """aux_loss=True: torchvision's aux_classifier (an FCNHead on layer3), a training
    output whose weights are part of the state_dict."""
    model = archc.compile(archc.load(SPECS / f"{spec}.yaml", aux_loss=True, resolution=64))
    state = model.state_dict()
    aux = sorted(k for k in state if k.startswith("aux_classifier."))
    assert aux == sorted(["aux_classifier.0.weight", *_bn("aux_classifier.1"),
                          "aux_classifier.4.weight", "aux_classifier.4.bias"])
    assert state["aux_classifier.0.weight"].shape == (256, 1024, 3, 3)
    assert state["aux_classifier.4.weight"].shape == (21, 256, 1, 1)
    assert model.program.train_outputs == {"aux": "aux"}
