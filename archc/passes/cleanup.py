"""Exact clean-up passes: layers that do nothing at inference, views that cancel, nodes no
output needs."""

from __future__ import annotations

import networkx as nx

from archc.ir import Graph
from archc.passes.manager import Params, Pass, PassResult, register
from archc.passes.rewrite import prune_blocks, redirect, remove, set_inputs, sole_user

INFERENCE_IDENTITIES = ("identity", "dropout", "stochastic_depth")
VIEWS = ("flatten", "reshape")


def _bypass(graph: Graph, name: str) -> bool:
    """Make the users of a one-input node read its input instead, and drop it. A graph
    output that would become a graph input is left alone."""
    node = graph[name]
    source = node.inputs[0]
    if (name in graph.outputs.values() or name in graph.train_outputs.values()) \
            and source in graph.inputs:
        return False
    redirect(graph, name, source)
    remove(graph, name)
    return True


def eliminate_identity(graph: Graph, params: Params | None, options: dict) -> PassResult:
    """Drop identity layers and those that are the identity at inference (dropout,
    stochastic depth)."""
    out = graph.copy()
    changes = []
    for node in list(out):
        if node.op in INFERENCE_IDENTITIES and _bypass(out, node.name):
            changes.append(f"removed {node.name} ({node.op}: the identity at inference)")
    return PassResult(out, params, changes)


def simplify_reshape(graph: Graph, params: Params | None, options: dict) -> PassResult:
    """Merge consecutive flatten/reshape layers into one reshape (row-major reshapes
    compose), compose consecutive permutes, and drop reshapes and permutes that change
    nothing."""
    out = graph.copy()
    changes = []
    for node in list(out):
        if node.name not in out:
            continue
        source = out[node.inputs[0]] if node.inputs else None
        if node.op in VIEWS + ("permute",) and source is not None and source.shape == node.shape \
                and (node.op != "permute" or list(node.attrs["dims"]) == sorted(node.attrs["dims"])):
            if _bypass(out, node.name):
                changes.append(f"removed {node.name} ({node.op} to the same shape)")
            continue
        if source is None or sole_user(out, source.name) != node.name:
            continue
        if node.op in VIEWS and source.op in VIEWS:
            if not (node.op == "flatten" and node.attrs["start_dim"] == 1):
                node.op, node.attrs = "reshape", {"shape": tuple(node.shape)}
            set_inputs(out, node.name, [source.inputs[0]])
            remove(out, source.name)
            changes.append(f"merged {source.name} ({source.op}) into {node.name} ({node.op})")
        elif node.op == "permute" and source.op == "permute":
            dims = tuple(source.attrs["dims"][d] for d in node.attrs["dims"])
            node.attrs = {**node.attrs, "dims": dims}
            set_inputs(out, node.name, [source.inputs[0]])
            remove(out, source.name)
            changes.append(f"composed {source.name} and {node.name} (permute {list(dims)})")
            if list(dims) == sorted(dims) and _bypass(out, node.name):
                changes.append(f"removed {node.name} (the permutations cancel)")
    return PassResult(out, params, changes)


def eliminate_dead(graph: Graph, params: Params | None, options: dict) -> PassResult:
    """Drop every node no graph output (training outputs included) depends on (and its
    parameters)."""
    out = graph.copy()
    live = set(out.outputs.values()) | set(out.train_outputs.values()) | set(out.inputs)
    for name in list(live):
        live |= nx.ancestors(out.nx, name)
    changes = []
    dead = [n.name for n in reversed(out.nodes) if n.name not in live]
    for name in dead:
        out.nx.remove_node(name)
        changes.append(f"removed {name} (no output depends on it)")
    prune_blocks(out)
    if params is not None and dead:
        params = {k: v for k, v in params.items() if k.rsplit(".", 1)[0] not in dead}
    return PassResult(out, params, changes)


register(Pass("eliminate_identity", eliminate_identity, eliminate_identity.__doc__, 1, True))
register(Pass("simplify_reshape", simplify_reshape, simplify_reshape.__doc__, 1, True))
register(Pass("eliminate_dead", eliminate_dead, eliminate_dead.__doc__, 1, True))
