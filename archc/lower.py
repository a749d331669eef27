"""Lowering: a shape-inferred Graph -> a :class:`runtime.program.Program`.

The only module of the compiler that knows the runtime's types. Attributes are resolved
to what a kernel needs (explicit per-side padding, default strides filled in, output
sizes), so the runtime never re-derives a shape rule.
"""

from __future__ import annotations

from archc.ir import Graph, verify
from archc.layers import get_layer
from archc.layers.base import default_init
from archc.naming import parameter_roles, torch_names
from runtime.program import Op, ParamSpec, Program


def resolved_attrs(op: str, attrs: dict, in_shapes: list, out_shape: tuple) -> dict:
    """A node's attributes plus what its registry entry's ``lower`` rule resolves for the
    kernels (explicit padding, default strides, output sizes)."""
    rule = get_layer(op).lower
    return {**attrs, **rule(attrs, in_shapes, tuple(out_shape))} if rule else dict(attrs)


def _init(node, role: str, shapes: dict) -> tuple[str, float]:
    layer = get_layer(node.op)
    init = (layer.init or default_init)(role, node.attrs, shapes)
    return init.kind, init.value


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
    shapes: dict[str, dict[str, tuple]] = {}
    for node, role, shape, buffer in parameter_roles(graph):
        shapes.setdefault(node.name, {})[role] = shape
    for node, role, shape, buffer in parameter_roles(graph):
        full = roles.setdefault(node.name, {})[role] = f"{node.name}.{role}"
        params[full] = ParamSpec(shape, buffer=buffer, trainable=node.trainable and not buffer,
                                 dtype="int64" if role == "num_batches_tracked" else "float32",
                                 init=_init(node, role, shapes[node.name]))
    ops = []
    for node in graph:
        if node.op == "input":
            continue
        in_shapes = [graph[i].shape for i in node.inputs]
        ops.append(Op(node.name, node.op, resolved_attrs(node.op, node.attrs, in_shapes, node.shape),
                      tuple(node.inputs), node.name, roles.get(node.name, {}),
                      tuple(tuple(s) for s in in_shapes), tuple(node.shape),
                      get_layer(node.op).view))
    return Program(graph.name, {n: tuple(graph[n].shape) for n in graph.inputs}, tuple(ops),
                   dict(graph.outputs), params, torch_names(graph))
