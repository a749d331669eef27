"""Lowering: a shape-inferred Graph -> a :class:`runtime.program.Program`, and a model.

The only module of the compiler that knows the runtime's types. Attributes are resolved
to what a kernel needs (explicit per-side padding, default strides filled in, output
sizes), so the runtime never re-derives a shape rule. :func:`compile` hands the program
to a runtime model; :func:`evaluator` gives the passes that must run a network (output
verification, low-rank calibration) a way to do it on a backend of the caller's choice.
"""

from __future__ import annotations

from typing import Callable

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
    for node in graph:  # a sharer reads its owner's parameters under their names
        if node.shares is not None:
            roles[node.name] = dict(roles.get(node.shares, {}))
    ops = []
    for node in graph:
        if node.op == "input":
            continue
        in_shapes = [graph[i].shape for i in node.inputs]
        ops.append(Op(node.name, node.op, resolved_attrs(node.op, node.attrs, in_shapes, node.shape),
                      tuple(node.inputs), node.name, roles.get(node.name, {}),
                      tuple(tuple(s) for s in in_shapes), tuple(node.shape),
                      get_layer(node.op).view, node.items))
    return Program(graph.name, {n: tuple(graph[n].shape) for n in graph.inputs}, tuple(ops),
                   dict(graph.outputs), params, torch_names(graph), dict(graph.training),
                   dict(graph.train_outputs), dict(graph.loss_weights))


def compile(graph: Graph, backend: str = "reference", seed: int = 0, dtype: str = "float32",
            params: dict | None = None):
    """Lower ``graph`` and return a runnable ``runtime.model.Model`` with ``params`` (name ->
    array, checked against the graph) or else parameters initialised as PyTorch initialises
    the same layers (reproducible from ``seed``).

    Examples
    --------
    >>> import numpy as np, archc
    >>> model = archc.compile(archc.load("specs/lenet5.yaml"))
    >>> model(np.zeros((2, 1, 32, 32), np.float32)).shape
    (2, 10)
    """
    from runtime.model import Model

    return Model(lower(graph), backend=backend, seed=seed, dtype=dtype, params=params)


Evaluate = Callable[..., object]
"""``evaluate(graph, params, x, every=False)``: the outputs of ``graph`` with ``params`` on
inputs ``x`` in inference mode (an array, or a dict by output name), or with ``every``
each node's value by name."""


def evaluator(backend: str = "cpu") -> Evaluate:
    """An :data:`Evaluate` that runs graphs on ``backend`` (what ``archc optimize`` hands
    its passes and its verification).

    Examples
    --------
    >>> import numpy as np, archc
    >>> graph = archc.load("specs/lenet5.yaml")
    >>> run = evaluator("reference")
    >>> run(graph, compile(graph).params, np.zeros((1, 1, 32, 32), np.float32)).shape
    (1, 10)
    """

    def evaluate(graph: Graph, params: dict, x, every: bool = False):
        model = compile(graph, backend=backend, params=params).eval()
        return model.intermediates(x) if every else model.predict(x)

    return evaluate
