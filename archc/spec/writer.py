"""Writing a graph back as a spec: the optimised graph of ``archc optimize -o``, and the
``yaml`` export. The spec is flat (one entry per layer, every attribute that differs from its default, block
structure and variables resolved away) and keeps every layer's full name, so parameter
files fit it unchanged; reading it back gives the same graph (tests/compiler/test_writer.py)."""

from __future__ import annotations

from typing import Any

import yaml

from archc.ir import Graph
from archc.layers import get_layer
from archc.layers.epilogue import activation_text
from archc.naming import torch_names


def _plain(value: Any) -> Any:
    """Spec values as YAML writes them: tuples as lists."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _flow(value: Any) -> str:
    return yaml.safe_dump(_plain(value), default_flow_style=True, width=10**6,
                          sort_keys=False).strip().removesuffix("\n...").strip()


def _input_text(attrs: dict) -> str:
    shape = list(attrs["shape"])
    if len(shape) == 3:
        return _flow({"channels": shape[0], "height": shape[1], "width": shape[2]})
    if len(shape) == 2:  # a region layer's boxes, [R, 4]
        return _flow({"shape": shape})
    return _flow({"features": shape[0]})


def spec_attrs(node) -> dict:
    """The attributes that differ from their defaults (required ones always)."""
    attrs = {}
    for attr in get_layer(node.op).attrs:
        value = node.attrs[attr.name]
        if not attr.required and _plain(value) == _plain(attr.default):
            continue
        attrs[attr.name] = activation_text(value) if attr.name == "activation" else value
    return attrs


def write_spec(graph: Graph, header: str = "") -> str:
    """The YAML text of a spec that archc reads back to ``graph``.

    Examples
    --------
    >>> import archc
    >>> g = archc.load("specs/lenet5.yaml")
    >>> text = write_spec(g)
    >>> [n.name for n in archc.load("copy.yaml", text=text)] == [n.name for n in g]
    True
    """
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    lines.append(f"name: {_flow(graph.name)}")
    inputs = [graph[name] for name in graph.inputs]
    if len(inputs) == 1 and inputs[0].name == "input":
        lines.append(f"input: {_input_text(inputs[0].attrs)}")
    else:
        lines.append("inputs:")
        lines += [f"  {_flow(n.name)}: {_input_text(n.attrs)}" for n in inputs]
    lines.append("layers:")
    previous = graph.inputs[0] if graph.inputs else None
    last = None
    for node in graph:
        if node.op == "input":
            continue
        if node.fused:
            lines.append(f"  # fused: {', '.join(node.fused)}")
        lines.append(f"  - name: {_flow(node.name)}")
        attrs = spec_attrs(node)
        lines.append(f"    {node.op}: {_flow(attrs)}" if attrs else f"    {node.op}:")
        if node.inputs != [previous]:
            lines.append(f"    inputs: {_flow(node.inputs)}")
        if not node.trainable:
            lines.append("    trainable: false")
        if node.shares is not None:
            lines.append(f"    shares: {_flow(node.shares)}")
        previous = last = node.name
    outputs = graph.outputs
    if any(key != value for key, value in outputs.items()):
        lines.append(f"outputs: {_flow(outputs)}")
    elif list(outputs) != [last]:
        lines.append(f"outputs: {_flow(list(outputs))}")
    if graph.train_outputs:
        lines.append("training_outputs: " + _flow({
            key: {"output": name, "loss_weight": graph.loss_weights.get(key, 1.0)}
            for key, name in graph.train_outputs.items()}))
    if graph.training:
        lines.append(f"training: {_flow(graph.training)}")
    names = torch_names(graph)
    if names:  # the rules as they came out, parameter by parameter (no variables here)
        lines.append("torch_names:")
        lines += [f"  {_flow(name)}: {_flow(torch)}" for name, torch in names.items()]
    return "\n".join(lines) + "\n"
