"""Fusion passes: an activation, and a residual add, carried out in the epilogue of the
conv, linear or batch-norm layer before them (``archc/layers/epilogue.py``) instead of in
passes of their own over memory. Exact: the fused kernel computes the same sums in the
same order, in training as in inference (``archc train`` runs them: a batch norm that
cannot fold into its conv, in training always, normalises, adds and activates in one
pass)."""

from __future__ import annotations

from archc.ir import Graph
from archc.layers import get_layer
from archc.layers import FUSABLE_ACTIVATIONS
from archc.passes.manager import Params, Pass, PassResult, register
from archc.passes.rewrite import absorb, set_inputs, sole_user

CARRIERS = ("conv2d", "linear", "batchnorm2d", "batchnorm1d")  # layer types with an epilogue
RESIDUAL_CARRIERS = ("conv2d", "batchnorm2d", "batchnorm1d")  # ... that take a residual


def _free_epilogue(graph: Graph, name: str, ops: tuple[str, ...]) -> bool:
    """A layer of one of ``ops`` with no fused activation or residual yet."""
    node = graph[name]
    return node.op in ops and node.attrs.get("activation") is None and len(node.inputs) == 1


def _fusable_activation(graph: Graph, name: str) -> str | None:
    """The activation node that is the only reader of ``name``, if there is one."""
    user = sole_user(graph, name)
    return user if user is not None and graph[user].op in FUSABLE_ACTIVATIONS else None


def _macs(graph: Graph, name: str) -> int:
    """The MACs of ``name``, or of what feeds it when it has none of its own (a batch norm
    after the conv of its branch)."""
    node = graph[name]
    macs = get_layer(node.op).cost.macs(node.attrs, [graph[i].shape for i in node.inputs],
                                        node.shape)
    return macs if macs or node.op not in RESIDUAL_CARRIERS[1:] else _macs(graph, node.inputs[0])


def _activation_value(node) -> tuple:
    return node.op, tuple(node.attrs.items())


def fuse_add(graph: Graph, params: Params | None, options: dict) -> PassResult:
    """Fuse ``add(conv(x), r)`` (and an activation right after it) into the conv, or into a
    batch norm in its place: it takes ``r`` as its residual input. Both operands must have
    the same shape, and the carrier must feed nothing else. When both operands qualify, the
    one with more MACs (a residual block's main branch, not its 1x1 shortcut) takes the
    other as its residual."""
    out = graph.copy()
    result = PassResult(out, params)
    for add in list(out):
        if add.name not in out or add.op != "add" or len(add.inputs) != 2 \
                or len(set(add.inputs)) != 2 \
                or any(out[i].shape != add.shape for i in add.inputs):
            continue
        candidates = [i for i in add.inputs if _free_epilogue(out, i, RESIDUAL_CARRIERS)
                      and sole_user(out, i) == add.name]
        if not candidates:
            continue
        conv = max(candidates, key=lambda n: (_macs(out, n), out.nx.nodes[n]["order"]))
        residual = next(i for i in add.inputs if i != conv)
        absorbed = [add.name]
        act = _fusable_activation(out, add.name)
        node = out[conv]
        if act is not None:
            node.attrs = {**node.attrs, "activation": _activation_value(out[act])}
            absorbed.append(act)
        set_inputs(out, conv, [node.inputs[0], residual])
        absorb(out, conv, absorbed)
        result.changes.append(f"fused {' + '.join(absorbed)} into {conv} (residual {residual})")
        result.groups.append((conv, *absorbed))
    return result


def fuse_activation(graph: Graph, params: Params | None, options: dict) -> PassResult:
    """Fuse an element-wise activation (any of ``FUSABLE_ACTIVATIONS``: relu, gelu, ...)
    into the conv, linear or batch-norm layer before it, when that layer feeds nothing
    else."""
    out = graph.copy()
    result = PassResult(out, params)
    for act in list(out):
        if act.name not in out or act.op not in FUSABLE_ACTIVATIONS:
            continue
        source = act.inputs[0]
        if out[source].op not in CARRIERS or out[source].attrs.get("activation") is not None \
                or sole_user(out, source) != act.name:
            continue
        node = out[source]
        node.attrs = {**node.attrs, "activation": _activation_value(act)}
        absorb(out, source, [act.name])
        result.changes.append(f"fused {act.name} ({act.op}) into {source}")
        result.groups.append((source, act.name))
    return result


register(Pass("fuse_add", fuse_add, fuse_add.__doc__, 2, True, training=True))
register(Pass("fuse_activation", fuse_activation, fuse_activation.__doc__, 2, True,
              training=True))
