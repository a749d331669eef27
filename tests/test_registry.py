"""The layer registry stays complete: every layer type has what every stage needs.

Later stages (analysis, lowering, kernels, rendering, export) extend this test with their
own fields, so a layer type cannot be added without them.
"""

from __future__ import annotations

import pytest

import archc
from archc.layers import REGISTRY, get_layer, user_layer_names
from archc.layers.base import AttrType

USER_OPS = sorted(op for op, layer in REGISTRY.items() if not layer.internal)

# MISSION.md section 2: the layer set users expect.
MISSION_LAYERS = [
    "conv2d", "conv_transpose2d", "max_pool2d", "avg_pool2d", "global_avg_pool2d",
    "global_max_pool2d", "adaptive_avg_pool2d", "unpool2d", "max_unpool2d", "upsample",
    "batchnorm2d", "layernorm2d", "local_response_norm", "dropout", "flatten", "linear",
    "relu", "leaky_relu", "relu6", "gelu", "silu", "swish", "hardswish", "sigmoid", "tanh",
    "softmax", "channel_shuffle", "add", "concat", "multiply", "identity",
]


def test_mission_layer_set_is_registered():
    missing = [op for op in MISSION_LAYERS if op not in user_layer_names()]
    assert not missing


@pytest.mark.parametrize("op", USER_OPS)
def test_layer_entry_is_complete(op):
    layer = get_layer(op)
    assert layer.op == op and layer.family and len(layer.doc) > 20
    assert callable(layer.infer_shape) and callable(layer.parameters) and callable(layer.buffers)
    for attr in layer.attrs:
        assert isinstance(attr.type, AttrType) and attr.doc, f"{op}.{attr.name} undocumented"
        if not attr.required:
            assert attr.type.coerce(attr.default) == attr.default, f"{op}.{attr.name} default"
    for name in layer.positional:
        assert name in layer.attr_names
    low, high = layer.arity
    assert low >= 1 and (high is None or high >= low)


@pytest.mark.parametrize("op", USER_OPS)
def test_documented_example_builds(op):
    """Each layer's example is a real spec entry: it parses and infers a shape."""
    layer = get_layer(op)
    rank1 = op in ("linear", "batchnorm1d", "layernorm")
    head = ("input: {features: 32}\n" if rank1 else "input: {channels: 8, height: 16, width: 16}\n")
    prelude = {
        "max_unpool2d": "  - max_pool2d: 2\n    name: pool1\n  - relu\n",  # -3 is the input
        "add": "  - identity:\n    name: shortcut\n",
        "multiply": "  - identity:\n    name: features\n  - global_avg_pool2d:\n    name: gate\n",
        "concat": "".join(f"  - identity:\n    name: branch{i}\n" for i in (1, 2, 3)),
        "reshape": "  - flatten\n",
        "center_crop": "  - identity:\n    name: enc\n  - conv2d: [8, 3]\n",
    }.get(op, "")
    example = "\n".join("  " + line for line in layer.example.splitlines()) + "\n"
    text = head + "layers:\n" + prelude + example
    graph = archc.load("example.yaml", text=text)
    node = graph.nodes[-1]
    assert node.op == op
    assert layer.short_label(node.attrs).strip()  # what diagrams print


def test_aliases_resolve():
    assert get_layer("swish") is get_layer("silu")
