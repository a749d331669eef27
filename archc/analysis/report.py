"""The analysis of a graph as plain data: one record per node, per block and in total.

Conventions (docs/analysis.md):

- **MACs** count the multiply-accumulates of conv, transposed conv and linear layers
  (bias adds are not MACs). torchvision's "GFLOPS" and most papers' "FLOPs" are this.
- **FLOPs** = 2 x MACs + element-wise FLOPs (activations, normalisation, pooling, merges,
  bias adds), each counted by its layer type's stated rule.
- Parameters are counted once each (the spec language has no way to tie two layers'
  weights); buffers (batch-norm running statistics) are not parameters.
- Numbers are for the forward pass in inference, for the given batch size: the layers
  only training outputs need (auxiliary classifiers) are left out of MACs, FLOPs, memory
  and latency, and their parameters are counted apart (``inference_params``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import networkx as nx

from archc.analysis.memory import buffer_owners, inference_peak, saved_for_backward
from archc.analysis.receptive_field import ReceptiveField, receptive_fields
from archc.analysis.roofline import Device
from archc.layers import get_layer
from archc.layers.costs import FLOAT_BYTES
from archc.layers.epilogue import epilogue_label

if TYPE_CHECKING:  # the IR's Graph imports the analysis for Graph.summary()
    from archc.ir import Graph


@dataclass
class NodeReport:
    name: str
    op: str
    scope: tuple[str, ...]
    output_shape: tuple[int, ...]
    params: int
    trainable_params: int
    buffer_elements: int
    macs: int
    elementwise_flops: int
    activation_bytes: int
    saved_bytes: int
    bytes_moved: int
    receptive_field: ReceptiveField
    view: bool
    latency_s: float | None = None
    bound: str | None = None
    fused: tuple[str, ...] = ()  # the layers an optimisation pass merged into this one
    items: int = 1  # outputs per image (a region layer's boxes join the batch)
    shares: str | None = None  # the layer whose weights it uses (counted there)
    epilogue: str = ""  # what its kernel does after the product: "+add +relu"
    training_only: bool = False  # only training outputs need it: not in inference's totals

    @property
    def kind(self) -> str:
        """The op with its fused epilogue, as the table shows it: ``conv2d+add+relu``."""
        return self.op + self.epilogue.replace(" ", "")

    @property
    def flops(self) -> int:
        return 2 * self.macs + self.elementwise_flops

    @property
    def intensity(self) -> float | None:
        return self.flops / self.bytes_moved if self.bytes_moved else None

    def to_dict(self) -> dict:
        return {
            "name": self.name, "op": self.op, "scope": list(self.scope),
            "output_shape": list(self.output_shape), "items": self.items, "shares": self.shares,
            "params": self.params,
            "trainable_params": self.trainable_params, "param_bytes": FLOAT_BYTES * self.params,
            "macs": self.macs, "flops": self.flops,
            "elementwise_flops": self.elementwise_flops,
            "activation_bytes": self.activation_bytes, "saved_bytes": self.saved_bytes,
            "bytes_moved": self.bytes_moved,
            "arithmetic_intensity": None if self.intensity is None else round(self.intensity, 4),
            "receptive_field": self.receptive_field.to_dict(),
            "latency_s": self.latency_s, "bound": self.bound,
            "fused": list(self.fused), "epilogue": self.epilogue,
            "training_only": self.training_only,
        }


@dataclass
class BlockReport:
    path: str
    block: str
    count: int
    level: int
    output: str
    output_shape: tuple[int, ...]
    params: int
    macs: int
    flops: int
    receptive_field: ReceptiveField
    training_only: bool = False

    @property
    def label(self) -> str:
        return f"{self.block} x{self.count}" if self.count else self.block

    def to_dict(self) -> dict:
        return {"path": self.path, "block": self.block, "count": self.count,
                "output": self.output, "output_shape": list(self.output_shape),
                "params": self.params, "macs": self.macs, "flops": self.flops,
                "receptive_field": self.receptive_field.to_dict(),
                "training_only": self.training_only}


@dataclass
class Report:
    """Everything archc computes about a network before running it."""

    name: str
    source: str
    batch: int
    device: Device | None
    nodes: list[NodeReport]
    blocks: list[BlockReport]
    totals: dict[str, Any]
    inputs: dict[str, tuple[int, ...]]
    outputs: dict[str, dict]
    variables: dict[str, Any] = field(default_factory=dict)

    def node(self, name: str) -> NodeReport:
        return next(n for n in self.nodes if n.name == name)

    def to_dict(self) -> dict:
        """The JSON schema documented in docs/analysis.md."""
        return {
            "name": self.name, "spec": self.source, "batch": self.batch,
            "device": None if self.device is None else {
                "name": self.device.name, "peak_flops": self.device.peak_flops,
                "bandwidth": self.device.bandwidth, "source": self.device.source},
            "totals": self.totals,
            "inputs": {k: list(v) for k, v in self.inputs.items()},
            "outputs": self.outputs,
            "nodes": [n.to_dict() for n in self.nodes],
            "blocks": [b.to_dict() for b in self.blocks],
        }


def _count(shapes: dict) -> int:
    return sum(math.prod(s) for s in shapes.values())


def analyse(graph: Graph, batch: int = 1, device: Device | None = None) -> Report:
    """Parameters, MACs, FLOPs, memory, receptive fields and (with ``device``) a roofline
    latency estimate, for every node, block and in total.

    Examples
    --------
    >>> import archc
    >>> report = analyse(archc.load("specs/lenet5.yaml"))
    >>> report.totals["params"], report.totals["macs"]
    (61706, 416520)
    """
    if batch < 1:
        raise ValueError("batch must be at least 1")
    fields = receptive_fields(graph)
    saved = saved_for_backward(graph, batch)
    owner = buffer_owners(graph)
    training_only = graph.training_only()
    nodes: list[NodeReport] = []
    for node in graph:
        layer = get_layer(node.op)
        in_shapes = [graph[i].shape for i in node.inputs]
        own = node.shares is None  # a sharer's weights are counted once, at their owner
        params = _count(layer.parameters(node.attrs, in_shapes)) if own else 0
        buffers = layer.buffers(node.attrs, in_shapes) if own else {}
        per = batch * node.items  # a region layer's boxes join the batch
        out_bytes = FLOAT_BYTES * per * math.prod(node.shape)
        is_view = owner[node.name] != node.name
        moved = 0 if is_view or not node.inputs else (
            FLOAT_BYTES * batch * sum(graph[i].items * math.prod(graph[i].shape)
                                      for i in node.inputs) + out_bytes
            + FLOAT_BYTES * params)
        nodes.append(NodeReport(
            name=node.name, op=node.op, scope=node.scope, output_shape=node.shape,
            items=node.items, shares=node.shares,
            params=params, trainable_params=params if node.trainable else 0,
            buffer_elements=_count(buffers),
            macs=per * layer.cost.macs(node.attrs, in_shapes, node.shape),
            elementwise_flops=per * layer.cost.flops(node.attrs, in_shapes, node.shape),
            activation_bytes=out_bytes, saved_bytes=saved[node.name], bytes_moved=moved,
            receptive_field=fields[node.name], view=is_view, fused=node.fused,
            epilogue=(" +add" if len(node.inputs) > 1 and "activation" in node.attrs else "")
            + epilogue_label(node.attrs), training_only=node.name in training_only,
        ))
    if device is not None:
        for n in nodes:
            n.latency_s, n.bound = device.time(n.flops, n.bytes_moved) if n.bytes_moved else (0.0, None)
    peak, _ = inference_peak(graph, batch)
    totals = _totals(nodes, peak, device)
    if graph.train_outputs:
        totals["training_outputs"] = list(graph.train_outputs)
    blocks = _blocks(graph, nodes, fields)
    outputs = {key: _output_record(graph, name, fields) for key, name in graph.outputs.items()}
    inputs = {name: graph[name].shape for name in graph.inputs}
    return Report(graph.name, graph.source, batch, device, nodes, blocks, totals, inputs,
                  outputs, dict(graph.variables))


def _output_record(graph: Graph, name: str, fields: dict) -> dict:
    record = {"node": name, "shape": list(graph[name].shape), "items": graph[name].items,
              "receptive_field": fields[name].to_dict()}
    if fields[name].whole:
        # What a reader wants next: the widest field the network had before it went global.
        spatial = [a for a in nx.ancestors(graph.nx, name) if not fields[a].whole]
        if spatial:
            order = nx.get_node_attributes(graph.nx, "order")
            best = max(spatial, key=lambda a: (max(fields[a].size), order[a]))
            record["last_spatial"] = {"node": best, **fields[best].to_dict()}
    return record


def _totals(nodes: list[NodeReport], peak: int, device: Device | None) -> dict[str, Any]:
    """Parameters, gradients and what training saves: every node's; what inference
    computes, moves and takes: the nodes inference runs (not the training-only ones)."""
    params = sum(n.params for n in nodes)
    trainable = sum(n.trainable_params for n in nodes)
    run = [n for n in nodes if not n.training_only]
    macs = sum(n.macs for n in run)
    elementwise = sum(n.elementwise_flops for n in run)
    moved = sum(n.bytes_moved for n in run)
    inference_params = sum(n.params for n in run)
    totals: dict[str, Any] = {
        "params": params,
        "inference_params": inference_params,
        "trainable_params": trainable,
        "frozen_params": params - trainable,
        "buffer_elements": sum(n.buffer_elements for n in nodes),
        "macs": macs,
        "flops": 2 * macs + elementwise,
        "elementwise_flops": elementwise,
        "activation_bytes": sum(n.activation_bytes for n in run if not n.view),
        "inference_peak_bytes": peak,
        "training_saved_bytes": sum(n.saved_bytes for n in nodes),
        "param_bytes": FLOAT_BYTES * inference_params,
        "gradient_bytes": FLOAT_BYTES * trainable,
        "optimizer_state_bytes": {"sgd": 0, "sgd_momentum": FLOAT_BYTES * trainable,
                                  "adam": 2 * FLOAT_BYTES * trainable},
        "bytes_moved": moved,
        "arithmetic_intensity": round((2 * macs + elementwise) / moved, 4) if moved else None,
    }
    if device is not None:
        totals["latency_s"] = sum(n.latency_s or 0.0 for n in run)
        totals["compute_bound_nodes"] = sum(1 for n in run if n.bound == "compute")
        totals["memory_bound_nodes"] = sum(1 for n in run if n.bound == "memory")
    return totals


def _blocks(graph: Graph, nodes: list[NodeReport], fields: dict) -> list[BlockReport]:
    inside: dict[str, list[NodeReport]] = {}  # block path -> its nodes, in order
    for n in nodes:
        for path in n.scope:
            inside.setdefault(path, []).append(n)
    out = []
    for path, inst in graph.blocks.items():
        members = inside.get(path, [])
        level = next(n.scope.index(path) for n in members) if members else 0
        out.append(BlockReport(
            path=path, block=inst.block, count=inst.count, level=level, output=inst.output,
            output_shape=graph[inst.output].shape, params=sum(n.params for n in members),
            macs=sum(n.macs for n in members), flops=sum(n.flops for n in members),
            receptive_field=fields[inst.output],
            training_only=bool(members) and all(n.training_only for n in members),
        ))
    return out
