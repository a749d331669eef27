"""The intermediate representation: a :class:`Graph` of :class:`Node` over networkx.

A node is one layer: its hierarchical name (``layer2.1.conv1``), op, normalised attributes,
ordered inputs, output shape (once inferred), the block instances it sits in, and the spec
location it came from. Storage is a ``networkx.MultiDiGraph`` (an input may feed a node
twice, e.g. ``multiply: [x, x]``); edges carry the input position as their key.
"""

from __future__ import annotations

import copy
import heapq
from dataclasses import dataclass, field
from typing import Any, Iterator

import networkx as nx

from archc.errors import Loc
from archc.layers import REGISTRY, Shape, fmt_shape


@dataclass
class Node:
    """One layer of a graph.

    Attributes
    ----------
    name : hierarchical name, dots separating block instances (``layer2.1.conv1``).
    op : registry op name (``conv2d``).
    attrs : attribute values after validation and defaults.
    inputs : names of the nodes feeding this one, in order.
    loc : the spec location of the entry that made it.
    scope : the block instances it sits in, outermost first (``("layer2", "layer2.1")``).
    trainable : False when the spec froze it (``trainable: false``).
    shape : output shape without the batch dimension, once inferred.
    trace : notes on how it was reached (block instantiations), for error messages.
    fused : the layers an optimisation pass merged into this one, as ``name (op)``.
    items : outputs per image, once inferred: 1, or a region layer's boxes per image
        (they join the batch: the runtime holds ``N * items`` of ``shape``).
    shares : the node whose parameters and buffers this one uses (a spec's ``shares:``:
        one head applied to every level of a pyramid), or None: its own.
    """

    name: str
    op: str
    attrs: dict[str, Any]
    inputs: list[str]
    loc: Loc | None = None
    scope: tuple[str, ...] = ()
    trainable: bool = True
    shape: Shape | None = None
    trace: tuple[str, ...] = ()
    fused: tuple[str, ...] = ()
    items: int = 1
    shares: str | None = None

    def describe(self) -> str:
        shape = fmt_shape(self.shape, self.items) if self.shape is not None else "?"
        return f"{self.name} ({self.op}) -> {shape}"


@dataclass(frozen=True)
class BlockInstance:
    """One use of a block, an inline sequential or a repeat group, for diagrams and reports.

    ``block`` is the block's name (``sequential`` for inline ones); for a repeat group it is
    the repeated layer or block and ``count`` the number of copies.
    """

    path: str
    block: str
    loc: Loc | None
    args: tuple[tuple[str, Any], ...] = ()
    output: str = ""
    count: int = 0  # for a 'repeat' group: how many copies it holds (its children)


@dataclass
class Graph:
    """A network: nodes in spec order, its inputs and outputs, and where it came from.

    Examples
    --------
    >>> g = Graph(name="tiny")
    >>> g.add(Node("input", "input", {"shape": (3, 8, 8)}, []))
    >>> g.add(Node("relu", "relu", {}, ["input"]))
    >>> g.inputs, g.outputs = ["input"], {"relu": "relu"}
    >>> [n.name for n in g]
    ['input', 'relu']
    """

    name: str = "network"
    source: str = "<spec>"
    inputs: list[str] = field(default_factory=list)
    outputs: dict[str, str] = field(default_factory=dict)
    # outputs computed in training only (GoogLeNet's auxiliary classifiers), key -> node,
    # each adding its loss times its weight to the training loss; the nodes that only they
    # need are left out of inference (cost, eval outputs, exports): training_only()
    train_outputs: dict[str, str] = field(default_factory=dict)
    loss_weights: dict[str, float] = field(default_factory=dict)
    blocks: dict[str, BlockInstance] = field(default_factory=dict)
    variables: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)  # the spec's training: section
    # the spec's torch_names: section (archc.naming.NameRule), PyTorch's names where they differ
    name_rules: list = field(default_factory=list)
    nx: nx.MultiDiGraph = field(default_factory=nx.MultiDiGraph)

    def add(self, node: Node) -> None:
        """Add a node whose inputs are already in the graph."""
        if node.name in self.nx:
            raise ValueError(f"node '{node.name}' already exists")
        self.nx.add_node(node.name, node=node, order=len(self.nx))
        for position, source in enumerate(node.inputs):
            if source not in self.nx:
                raise ValueError(f"node '{node.name}' input '{source}' does not exist")
            self.nx.add_edge(source, node.name, key=position)

    def __getitem__(self, name: str) -> Node:
        return self.nx.nodes[name]["node"]

    def __contains__(self, name: object) -> bool:
        return name in self.nx

    def __len__(self) -> int:
        return self.nx.number_of_nodes()

    def __iter__(self) -> Iterator[Node]:
        """Nodes in topological order, ties broken by spec order: the order networkx's
        ``lexicographical_topological_sort`` gives with the nodes' ``order`` as key (and
        insertion as the tie-break), computed on the adjacency dicts directly, five
        times faster (the analysis walks a graph several times: a sweep, thousands)."""
        graph = self.nx
        nodes, pred, succ = graph._node, graph._pred, graph._succ
        index: dict[str, int] = {}
        waiting: dict[str, int] = {}  # node -> edges from nodes not yet yielded
        ready = []
        for i, (name, data) in enumerate(nodes.items()):
            index[name] = i
            count = sum(len(keys) for keys in pred[name].values())  # a multigraph's edges
            if count:
                waiting[name] = count
            else:
                ready.append((data["order"], i, name))
        heapq.heapify(ready)
        while ready:
            _, _, name = heapq.heappop(ready)
            for child, keys in succ[name].items():
                waiting[child] -= len(keys)
                if not waiting[child]:
                    del waiting[child]
                    heapq.heappush(ready, (nodes[child]["order"], index[child], child))
            yield nodes[name]["node"]
        if waiting:
            raise nx.NetworkXUnfeasible("Graph contains a cycle or graph changed during "
                                        "iteration")

    @property
    def nodes(self) -> list[Node]:
        return list(self)

    def users(self, name: str) -> list[str]:
        """Names of the nodes that take ``name`` as an input."""
        return sorted(set(self.nx.successors(name)), key=lambda n: self.nx.nodes[n]["order"])

    def output_shapes(self) -> dict[str, Shape | None]:
        return {key: self[name].shape for key, name in self.outputs.items()}

    def training_only(self) -> set[str]:
        """The nodes only training outputs need: computed in training, left out of
        inference (its cost, outputs and exports)."""
        if not self.train_outputs:
            return set()
        needed = set(self.outputs.values()) | set(self.inputs)
        for name in list(needed):
            needed |= nx.ancestors(self.nx, name)
        extra = set(self.train_outputs.values())
        for name in list(extra):
            extra |= nx.ancestors(self.nx, name)
        return extra - needed

    def summary(self, batch: int = 1, device: str | None = None):
        """The analysis of this graph (:func:`archc.analysis.analyse`) as plain data.

        ``device`` names a roofline profile (``cpu``, ``h100``, ``h200``).
        """
        from archc.analysis import analyse, get_device

        return analyse(self, batch, get_device(device) if device else None)

    def copy(self) -> "Graph":
        """A deep copy: passes return new graphs and never mutate their input."""
        return copy.deepcopy(self)


class GraphInvalid(Exception):
    """A graph breaks an IR invariant. This is a bug in archc, not a user mistake."""


def verify(graph: Graph, require_shapes: bool = False) -> None:
    """Check the IR invariants (acyclic, known ops, arity, inputs exist, shapes set).

    Runs after building, after each pass under test and before lowering.

    Raises
    ------
    GraphInvalid
        Listing every broken invariant.
    """
    problems = []
    if not nx.is_directed_acyclic_graph(graph.nx):
        problems.append(f"graph has a cycle: {nx.find_cycle(graph.nx)}")
    for name in graph.nx:
        node = graph[name]
        if node.name != name:
            problems.append(f"node stored as '{name}' is named '{node.name}'")
        layer = REGISTRY.get(node.op)
        if layer is None:
            problems.append(f"{name}: unknown op '{node.op}'")
            continue
        low, high = layer.arity
        if len(node.inputs) < low or (high is not None and len(node.inputs) > high):
            problems.append(f"{name}: {node.op} takes {layer.arity} inputs, has {len(node.inputs)}")
        edges = sorted((k, u) for u, _, k in graph.nx.in_edges(name, keys=True))
        if [u for _, u in edges] != list(node.inputs):
            problems.append(f"{name}: edges {edges} disagree with inputs {node.inputs}")
        if require_shapes and node.shape is None:
            problems.append(f"{name}: shape not inferred")
    for name in graph.inputs:
        if name not in graph or graph[name].op != "input":
            problems.append(f"input '{name}' is not an input node")
    for key, name in {**graph.outputs, **graph.train_outputs}.items():
        if name not in graph:
            problems.append(f"output '{key}' names missing node '{name}'")
    if problems:
        raise GraphInvalid("; ".join(problems))
