"""Lowering: a shape-inferred Graph -> a :class:`runtime.program.Program`.

The only module of the compiler that knows the runtime's types. Attributes are resolved
to what a kernel needs (explicit per-side padding, default strides filled in, output
sizes), so the runtime never re-derives a shape rule.
"""

from __future__ import annotations

from archc.ir import Graph, verify
from archc.layers import get_layer
from archc.layers.conv import resolve_padding
from archc.naming import parameter_roles, torch_names
from runtime.program import Op, ParamSpec, Program


def _resolved_attrs(op: str, attrs: dict, in_shapes: list, out_shape: tuple) -> dict:
    out = dict(attrs)
    if op == "conv2d":
        out["pads"] = resolve_padding(attrs["padding"], attrs["kernel_size"], attrs["stride"],
                                      attrs["dilation"], tuple(in_shapes[0][1:]))
    if op in ("max_pool2d", "avg_pool2d", "max_unpool2d") and attrs["stride"] is None:
        out["stride"] = attrs["kernel_size"]
    if op in ("upsample", "max_unpool2d", "center_crop"):
        out["out_size"] = tuple(out_shape[1:])
    return out


def lower(graph: Graph) -> Program:
    """The runtime program of a shape-inferred graph.

    Examples
    --------
    >>> import archc
    >>> program = lower(archc.load("specs/lenet5.yaml"))
    >>> [op.kind for op in program.ops][:3], program.params["c1.weight"].shape
    (['conv2d', 'tanh', 'avg_pool2d'], (6, 1, 5, 5))
    """
    verify(graph, require_shapes=True)
    params: dict[str, ParamSpec] = {}
    roles: dict[str, dict[str, str]] = {}
    for node, role, shape, buffer in parameter_roles(graph):
        full = roles.setdefault(node.name, {})[role] = f"{node.name}.{role}"
        params[full] = ParamSpec(shape, buffer=buffer, trainable=node.trainable and not buffer,
                                 dtype="int64" if role == "num_batches_tracked" else "float32")
    ops = []
    for node in graph:
        if node.op == "input":
            continue
        in_shapes = [graph[i].shape for i in node.inputs]
        ops.append(Op(node.name, node.op, _resolved_attrs(node.op, node.attrs, in_shapes, node.shape),
                      tuple(node.inputs), node.name, roles.get(node.name, {}),
                      tuple(tuple(s) for s in in_shapes), tuple(node.shape),
                      get_layer(node.op).view))
    return Program(graph.name, {n: tuple(graph[n].shape) for n in graph.inputs}, tuple(ops),
                   dict(graph.outputs), params, torch_names(graph))
