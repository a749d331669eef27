"""Activation memory with liveness: when each tensor is allocated and freed.

In inference a node's output is allocated when the node runs and freed after its last
user has run (graph outputs live to the end). Views (flatten, reshape, identity, and
dropout at inference) share their input's memory, which lives as long as any view of it.
The peak is the largest total of live tensors at any step, the step's inputs and output
included. In training everything a node saves for its backward pass stays until the
backward pass: the registry states what each layer type saves.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from archc.layers import get_layer
from archc.layers.costs import FLOAT_BYTES

if TYPE_CHECKING:  # the IR's Graph imports the analysis for Graph.summary()
    from archc.ir import Graph


def buffer_owners(graph: Graph) -> dict[str, str]:
    """For each node, the node whose memory its output occupies (itself unless a view)."""
    owner: dict[str, str] = {}
    for node in graph:
        view = get_layer(node.op).view and node.inputs
        owner[node.name] = owner[node.inputs[0]] if view else node.name
    return owner


def inference_peak(graph: Graph, batch: int = 1) -> tuple[int, list[int]]:
    """(peak bytes, live bytes after each step's allocation), for a batch of ``batch``.

    Examples
    --------
    >>> import archc
    >>> g = archc.load("m.yaml", text="input: {features: 10}\\n"
    ...                "layers: [{linear: 20}, relu, {linear: 5}]")
    >>> inference_peak(g)[0]  # relu's input (20 floats) and output (20 floats) are live
    160
    """
    owner = buffer_owners(graph)
    skipped = graph.training_only()  # not run in inference
    order = [node.name for node in graph if node.name not in skipped]
    step = {name: i for i, name in enumerate(order)}
    last_use = {name: step[name] for name in order}
    for node in graph:
        if node.name in skipped:
            continue
        for source in node.inputs:
            buf = owner[source]
            last_use[buf] = max(last_use[buf], step[node.name])
    for out in graph.outputs.values():
        last_use[owner[out]] = len(order)
    size = {name: FLOAT_BYTES * batch * graph[name].items * math.prod(graph[name].shape)
            for name in order}
    live, peak, trace = 0, 0, []
    frees: dict[int, list[str]] = {}
    for buf in set(owner.values()) - skipped:
        frees.setdefault(last_use[buf], []).append(buf)
    for i, name in enumerate(order):
        if owner[name] == name:
            live += size[name]
        trace.append(live)
        peak = max(peak, live)
        live -= sum(size[buf] for buf in frees.get(i, ()))
    return peak, trace


def saved_for_backward(graph: Graph, batch: int = 1) -> dict[str, int]:
    """Bytes each node keeps for the backward pass in training, for a batch."""
    saved = {}
    for node in graph:
        layer = get_layer(node.op)
        in_shapes = [graph[i].shape for i in node.inputs]
        saved[node.name] = batch * node.items * layer.cost.saved(node.attrs, in_shapes, node.shape)
    return saved
