"""The layer registry stays complete: every layer type has what every stage needs, from
its shape rule to its kernels on each backend and its ONNX reading and writing; the test
names the layer type and the piece it lacks."""

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
    if op in ("roi_align", "roi_pool"):  # feature maps and the boxes, [R, 4] per image
        head = "inputs: {features: {channels: 8, height: 16, width: 16}, boxes: {shape: [5, 4]}}\n"
    prelude = {
        "max_unpool2d": "  - max_pool2d: 2\n    name: pool1\n  - relu\n",  # -3 is the input
        "add": "  - identity:\n    name: shortcut\n",
        "join": "  - identity:\n    name: shallow\n  - conv2d: [8, 3, 1, 1]\n    name: deep\n",
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


def _missing_pieces(op: str) -> list[str]:
    """What layer type ``op`` lacks, each piece named: every stage reads the registry, and
    the runtime's tables must cover every entry (or declare why not)."""
    from archc.export.onnx.emitters import EMITTERS
    from archc.export.onnx.rules import NOT_READ, READ_FROM, RULES
    from runtime.backends import cpu, reference, reference_backward
    from runtime.backends.activations import ACTIVATIONS
    from runtime.backends.cuda import backend as cuda

    layer = get_layer(op)
    checks = {
        "shape rule": callable(layer.infer_shape),
        "cost (MACs, FLOPs, saved bytes)": layer.cost is not None,
        "receptive field": layer.receptive_field is not None,
        "reference forward": op in reference.KERNELS,
        "reference backward": op in reference_backward.BACKWARD,
        "CPU forward and backward (Numba, or declared in cpu.NUMPY_OPS)":
            op in cpu.NUMBA_OPS or op in cpu.NUMPY_OPS,
        "CUDA forward and backward (or declared in cuda.HOST_FALLBACK)":
            (op in cuda.DEVICE_OPS and op in cuda.BACKWARD) or op in cuda.HOST_FALLBACK,
        "ONNX export (emitters.EMITTERS)": op in EMITTERS,
        "ONNX import (onnx.rules.READ_FROM with a rule, or a reason in NOT_READ)":
            (op in READ_FROM and all(t in RULES for t in READ_FROM[op])) or op in NOT_READ,
        "a formula in runtime/backends/activations.py (an element-wise layer)":
            not layer.elementwise or op in ACTIVATIONS,
    }
    return [piece for piece, present in checks.items() if not present]


@pytest.mark.parametrize("op", USER_OPS)
def test_every_layer_type_has_every_piece(op):
    missing = _missing_pieces(op)
    assert not missing, f"layer type '{op}' lacks: " + "; ".join(missing)


def test_runtime_formulas_are_the_registrys_activations():
    from archc.layers import FUSABLE_ACTIVATIONS
    from runtime.backends.activations import ACTIVATIONS

    assert sorted(ACTIVATIONS) == sorted(FUSABLE_ACTIVATIONS)


def test_the_completeness_check_names_what_is_missing(monkeypatch):
    from runtime.backends import reference

    monkeypatch.delitem(reference.KERNELS, "mish")
    assert _missing_pieces("mish") == ["reference forward"]
