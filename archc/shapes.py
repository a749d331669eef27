"""Shape inference: run every node's registry shape rule in topological order.

The rules live with their layer types in :mod:`archc.layers`; this driver feeds them the
input shapes and turns a rule's complaint into a :class:`SpecError` at the node's spec
location, naming the node, the input at fault and both shapes.
"""

from __future__ import annotations

from archc.errors import SpecError
from archc.ir import Graph
from archc.layers import ShapeError, fmt_shape, get_layer


def infer_shapes(graph: Graph) -> Graph:
    """Fill in ``node.shape`` for every node of ``graph`` (in place) and return it.

    Raises
    ------
    SpecError
        When a layer cannot take the shapes it is given, or an output dimension drops
        below 1.

    Examples
    --------
    >>> from archc.spec import load_spec
    >>> text = "input: {channels: 3, height: 32, width: 32}\\nlayers: [{conv2d: [10, 5, 1, 2]}]"
    >>> infer_shapes(load_spec("demo.yaml", text=text))["conv2d"].shape
    (10, 32, 32)
    """
    for node in graph:
        infer_node(graph, node)
    for node in graph:
        if node.shares is not None:
            _check_shared(graph, node)
    return graph


def infer_node(graph: Graph, node) -> None:
    """Fill in one node's shape (and items per image), its inputs' being known: the
    expander asks so for what a block receives, while the graph is still being built."""
    layer = get_layer(node.op)
    in_shapes = [graph[name].shape for name in node.inputs]
    try:
        if layer.last_axis and len(in_shapes[0]) == 3 and not channels_last(graph, node.inputs[0]):
            raise ShapeError(
                f"'{node.op}' expects a flat vector of features or a channels-last map, got "
                f"the map {fmt_shape(in_shapes[0])} (channels first)", input_index=0,
                hint="add a 'flatten' (or global pooling + flatten) before it; to apply it to "
                "the channels at each position, make the map channels-last first (permute: "
                "[0, 2, 3, 1], and back with [0, 3, 1, 2])")
        shape = tuple(layer.infer_shape(node.attrs, in_shapes))
    except ShapeError as exc:
        raise _shape_error(graph, node, exc) from None
    if any(d < 1 for d in shape):
        raise _shape_error(
            graph, node,
            ShapeError(f"output shape would be {fmt_shape(shape)}: a dimension below 1"),
        )
    node.shape = shape
    node.items = _items(graph, node, layer, in_shapes)


def channels_last(graph: Graph, name: str) -> bool:
    """Whether the map ``name`` was permuted (channels-last) on its way here: through
    layers that keep the layout (activations, dropout, adds and multiplies, and the layers
    over the last axis themselves) back to a ``permute``."""
    while True:
        node = graph[name]
        if node.op == "permute":
            return True
        layer = get_layer(node.op)
        if not (layer.elementwise or layer.last_axis or layer.family == "regularize"
                or node.op in ("add", "multiply", "identity")):
            return False
        name = node.inputs[0]


def _tables(graph: Graph, node) -> dict:
    layer, in_shapes = get_layer(node.op), [graph[i].shape for i in node.inputs]
    return {**layer.parameters(node.attrs, in_shapes), **layer.buffers(node.attrs, in_shapes)}


def _check_shared(graph: Graph, node) -> None:
    """A node that uses another's weights must be the same layer with the same shapes."""
    owner = graph[node.shares]
    mine, theirs = _tables(graph, node), _tables(graph, owner)
    if not mine and not theirs and owner.op == node.op:  # nothing to share (an activation)
        node.shares = None
        return
    if owner.op != node.op or mine != theirs:
        what = (f"is {node.op}, '{owner.name}' is {owner.op}" if owner.op != node.op else
                "needs parameters " + ", ".join(f"{k} {fmt_shape(v)}" for k, v in mine.items())
                + f" but '{owner.name}' holds "
                + ", ".join(f"{k} {fmt_shape(v)}" for k, v in theirs.items()))
        raise SpecError(f"layer '{node.name}' cannot share the weights of '{owner.name}': it "
                        f"{what}", node.loc, "a shared layer must see inputs of the same "
                        "channels as the one it shares with", notes=list(node.trace))


def _items(graph: Graph, node, layer, in_shapes: list) -> int:
    """Outputs per image: the layer's own rule, or the count its inputs share (a value
    per box cannot meet a value per image)."""
    if layer.items is not None:
        return layer.items(node.attrs, in_shapes)
    counts = {graph[name].items for name in node.inputs} or {1}
    if len(counts) > 1:
        per = ", ".join(f"'{name}' {graph[name].items}" for name in node.inputs)
        raise SpecError(f"layer '{node.name}' ({node.op}) joins values with different "
                        f"numbers of items per image ({per}): a region layer's output has "
                        "one per box", node.loc, notes=list(node.trace))
    return counts.pop()


def _shape_error(graph: Graph, node, exc: ShapeError) -> SpecError:
    message = f"layer '{node.name}' ({node.op})"
    if exc.input_index is not None and exc.input_index < len(node.inputs):
        source = graph[node.inputs[exc.input_index]]
        position = (f"input {exc.input_index + 1} of {len(node.inputs)}"
                    if len(node.inputs) > 1 else "input")
        message += f", {position} '{source.name}' ({fmt_shape(source.shape)})"
    message += f": {exc.message}"
    return SpecError(message, node.loc, exc.hint, notes=list(node.trace))
