"""Graph surgery shared by the passes: rewiring inputs, removing nodes, merging a chain of
nodes into one. Each helper edits the graph it is given; a pass calls them on its own
copy (``graph.copy()``), so the graph a pass receives is never changed."""

from __future__ import annotations

import dataclasses

from archc.ir import Graph, Node


def set_inputs(graph: Graph, name: str, inputs: list[str]) -> None:
    """Give node ``name`` new inputs, edges included."""
    node = graph[name]
    for source, _, key in list(graph.nx.in_edges(name, keys=True)):
        graph.nx.remove_edge(source, name, key=key)
    node.inputs = list(inputs)
    for position, source in enumerate(node.inputs):
        graph.nx.add_edge(source, name, key=position)


def redirect(graph: Graph, old: str, new: str) -> None:
    """Every use of ``old`` (node inputs and graph outputs) becomes a use of ``new``."""
    for user in graph.users(old):
        set_inputs(graph, user, [new if i == old else i for i in graph[user].inputs])
    graph.outputs = {key: new if value == old else value for key, value in graph.outputs.items()}
    graph.train_outputs = {key: new if value == old else value
                           for key, value in graph.train_outputs.items()}
    graph.blocks = {path: dataclasses.replace(inst, output=new) if inst.output == old else inst
                    for path, inst in graph.blocks.items()}


def prune_blocks(graph: Graph) -> None:
    """Forget the block instances no node sits in any more."""
    used = {path for name in graph.nx for path in graph[name].scope}
    graph.blocks = {path: inst for path, inst in graph.blocks.items()
                    if path in used and inst.output in graph}


def remove(graph: Graph, name: str) -> None:
    """Remove a node nothing uses any more."""
    assert not graph.users(name) and name not in graph.outputs.values() \
        and name not in graph.train_outputs.values(), name
    graph.nx.remove_node(name)


def shares_weights(graph: Graph, node) -> bool:
    """Whether ``node``'s parameters are also another node's (``shares:``, either way): a
    pass that rewrites weights leaves such a layer alone."""
    return node.shares is not None or any(n.shares == node.name for n in graph)


def sole_user(graph: Graph, name: str) -> str | None:
    """The one node that reads ``name``, when exactly one does (through one input) and the
    value is not also a graph output; otherwise None (the value is needed elsewhere)."""
    if name in graph.outputs.values() or name in graph.train_outputs.values():
        return None
    users = graph.users(name)
    if len(users) != 1 or graph[users[0]].inputs.count(name) != 1:
        return None
    return users[0]


def absorb(graph: Graph, keep: str, absorbed: list[str]) -> None:
    """Merge the chain ``keep -> absorbed[0] -> ... -> absorbed[-1]`` into ``keep``: the
    chain's users now read ``keep``, which takes the last place of the chain in spec order
    (so what the chain read, e.g. a residual computed after ``keep``, comes before it) and
    records what it absorbed (``bn1 (batchnorm2d)``) for reports and diagrams."""
    node: Node = graph[keep]
    for name in absorbed:
        node.fused += graph[name].fused + (f"{name} ({graph[name].op})",)
    redirect(graph, absorbed[-1], keep)
    order = max(graph.nx.nodes[n]["order"] for n in [keep] + absorbed)
    for name in reversed(absorbed):
        remove(graph, name)
    graph.nx.nodes[keep]["order"] = order


def fresh_name(graph: Graph, base: str) -> str:
    """``base``, or ``base_1``, ``base_2``... whichever no node has."""
    name, count = base, 0
    while name in graph:
        count += 1
        name = f"{base}_{count}"
    return name
