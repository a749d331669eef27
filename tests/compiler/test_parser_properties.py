"""Property tests of the parser: random layer chains written in random (equivalent) forms
must give one graph, with the shapes a torch.nn.Sequential of the same layers gives."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import archc
from archc.errors import SpecError


@st.composite
def layer(draw):
    kind = draw(st.sampled_from(["conv", "pool", "avg", "relu", "bn", "up", "tconv", "drop"]))
    if kind == "conv":
        out, k = draw(st.integers(1, 6)), draw(st.integers(1, 5))
        s, p = draw(st.integers(1, 3)), draw(st.integers(0, 2))
        return ("conv2d", {"out_channels": out, "kernel_size": k, "stride": s, "padding": p},
                ["out_channels", "kernel_size", "stride", "padding"])
    if kind in ("pool", "avg"):
        k = draw(st.integers(1, 3))
        op = "max_pool2d" if kind == "pool" else "avg_pool2d"
        return (op, {"kernel_size": k, "stride": draw(st.integers(1, 3))}, ["kernel_size", "stride"])
    if kind == "tconv":
        return ("conv_transpose2d", {"out_channels": draw(st.integers(1, 6)),
                                     "kernel_size": draw(st.integers(1, 4)),
                                     "stride": draw(st.integers(1, 3))},
                ["out_channels", "kernel_size", "stride"])
    if kind == "up":
        return ("upsample", {"scale_factor": draw(st.sampled_from([2, 3]))}, ["scale_factor"])
    if kind == "drop":
        return ("dropout", {"p": 0.25}, ["p"])
    return ({"relu": "relu", "bn": "batchnorm2d"}[kind], {}, [])


def torch_layer(op, attrs, channels):
    if op == "conv2d":
        return nn.Conv2d(channels, attrs["out_channels"], attrs["kernel_size"], attrs["stride"],
                         attrs["padding"]), attrs["out_channels"]
    if op == "conv_transpose2d":
        return nn.ConvTranspose2d(channels, attrs["out_channels"], attrs["kernel_size"],
                                  attrs["stride"]), attrs["out_channels"]
    if op == "max_pool2d":
        return nn.MaxPool2d(attrs["kernel_size"], attrs["stride"]), channels
    if op == "avg_pool2d":
        return nn.AvgPool2d(attrs["kernel_size"], attrs["stride"]), channels
    if op == "upsample":
        return nn.Upsample(scale_factor=attrs["scale_factor"]), channels
    if op == "dropout":
        return nn.Dropout(attrs["p"]), channels
    if op == "batchnorm2d":
        return nn.BatchNorm2d(channels), channels
    return nn.ReLU(), channels


def write_entry(draw, op, attrs, positional, variables):
    """One entry, in a randomly chosen but equivalent form."""
    form = draw(st.sampled_from(["mapping", "list", "variables"])) if attrs else "bare"
    if form == "bare":
        return f"  - {op}\n"
    if form == "list" and list(attrs) == positional[: len(attrs)]:
        values = [attrs[k] for k in positional[: len(attrs)]]
        body = values[0] if len(values) == 1 else "[" + ", ".join(map(str, values)) + "]"
        return f"  - {op}: {body}\n"
    items = []
    for key, value in attrs.items():
        if form == "variables":
            name = f"v{len(variables)}"
            variables[name] = value
            value = f"{name} * 1" if draw(st.booleans()) else name
        items.append(f"{key}: {value}")
    return f"  - {op}: {{{', '.join(items)}}}\n"


@given(data=st.data(), layers=st.lists(layer(), min_size=1, max_size=7),
       size=st.integers(4, 24), channels=st.integers(1, 4))
def test_random_chains_match_pytorch(data, layers, size, channels):
    variables: dict = {}
    body = "".join(write_entry(data.draw, op, attrs, pos, variables) for op, attrs, pos in layers)
    header = "variables: {" + ", ".join(f"{k}: {v}" for k, v in variables.items()) + "}\n"
    text = (header if variables else "") + \
        f"input: {{channels: {channels}, height: {size}, width: {size}}}\nlayers:\n" + body

    modules, c = [], channels
    for op, attrs, _ in layers:
        module, c = torch_layer(op, attrs, c)
        modules.append(module)
    x = torch.zeros(1, channels, size, size)
    torch_shapes = []
    try:
        with torch.no_grad():
            for module in modules:
                x = module.eval()(x)
                if min(x.shape) < 1:
                    raise RuntimeError("empty")
                torch_shapes.append(tuple(x.shape[1:]))
    except RuntimeError:
        with pytest.raises(SpecError):
            archc.load("chain.yaml", text=text)
        return
    graph = archc.load("chain.yaml", text=text)
    nodes = graph.nodes[1:]
    assert [n.op for n in nodes] == [op for op, _, _ in layers]
    assert [n.shape for n in nodes] == torch_shapes
    assert len({n.name for n in graph}) == len(graph)
    for node, (op, attrs, _) in zip(nodes, layers):
        for key, value in attrs.items():
            got = node.attrs[key]
            assert got == value or got == (value, value)
