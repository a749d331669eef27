"""archc graph -> ONNX model, built with the ``onnx`` package's helpers.

One emitter per layer type (``EMITTERS``; a test fails when a registry entry has none)
writes the layer as standard ONNX operators, opset :data:`OPSET`: a single operator where
ONNX has one (``Conv``, ``MaxPool``, ``BatchNormalization``...), a composition where it has
none (channel shuffle as Reshape/Transpose/Reshape, exact GELU through ``Erf``, adaptive
pooling over uneven bins as slices and reductions). Conventions:

- the batch dimension is symbolic (``batch``); the graph's inputs and outputs keep their
  names, weights are initializers named as archc (and PyTorch's state_dict) names them;
- every ONNX node is named after the layer it comes from (``layer2.1.conv1``; the parts of
  a composition ``layer2.1.shuffle/Transpose``), and the layer's output tensor carries the
  layer's name;
- the first node of each layer records the layer's op and attributes in its doc_string
  (``archc: {"op": ..., "attrs": ..., "inputs": ...}``). ONNX cannot tell some archc layers apart (dropout
  and identity both run as nothing at inference; adaptive pooling over even bins is plain
  pooling), so :func:`archc.export.from_onnx` reads the note back to rebuild the same graph.
  Other programs ignore it.
"""

from __future__ import annotations

import json

import numpy as np

from archc.errors import OnnxError
from archc.export.onnx.emitter import (
    NAMES_KEY,
    OPSET,
    TRAINING_KEY,
    Builder,
    Emitter,
)
from archc.export.onnx.emitters import EMITTERS
from archc.ir import Graph
from archc.naming import torch_names


def _rename_output(builder: Builder, emitted: str, name: str) -> None:
    """The layer's last operator writes the tensor named after the layer."""
    for proto in reversed(builder.nodes):
        if emitted in proto.output:
            proto.output[list(proto.output).index(emitted)] = name
            return


def _renamed(builder: Builder, old: str, new: str) -> str:
    """Call tensor ``old`` ``new`` wherever the operators write or read it."""
    for proto in builder.nodes:
        for names in (proto.input, proto.output):
            for i, tensor in enumerate(names):
                if tensor == old:
                    names[i] = new
    return new


def to_onnx(graph: Graph, params: dict, *, doc: str = ""):
    """An ``onnx.ModelProto`` computing ``graph`` in inference mode with ``params`` (the
    layers only training outputs need are left out, with their weights).

    Raises OnnxError naming the layer when one cannot be written (an op without an emitter).

    Examples
    --------
    >>> import archc
    >>> graph = archc.load("specs/lenet5.yaml")
    >>> model = to_onnx(graph, archc.compile(graph).params)
    >>> [n.op_type for n in model.graph.node][:3], model.opset_import[0].version
    (['Conv', 'Tanh', 'AveragePool'], 17)
    """
    builder = Builder(graph, params)
    onnx = builder.onnx
    helper, float_type = onnx.helper, onnx.TensorProto.FLOAT
    training_only = graph.training_only()  # inference only: no auxiliary classifiers
    for node in graph:
        if node.op == "input" or node.name in training_only:
            continue
        emitter = EMITTERS.get(node.op)
        if emitter is None:
            raise OnnxError(f"layer '{node.name}' ({node.op}) cannot be written to ONNX: archc "
                            "has no ONNX form for this layer type")
        out = emitter(Emitter(builder, node), list(node.inputs))
        if out in node.inputs or out in graph.inputs:
            raise AssertionError(f"{node.op} emitter wrote no operator")  # a bug, not user input
        _rename_output(builder, out, node.name)

    def value(name: str, shape) -> object:
        return helper.make_tensor_value_info(name, float_type, ["batch", *shape])

    outputs = []
    for key, name in graph.outputs.items():
        items, shape = graph[name].items, graph[name].shape
        if items > 1:  # one row per box inside; (N, R, ...) out, as the runtime gives it
            rows = _renamed(builder, name, f"{name}/rows") if key == name else name
            builder.nodes.append(helper.make_node(
                "Reshape", [rows, builder.constant(f"output/{key}/shape",
                                                    np.array([-1, items, *shape], np.int64))],
                [key], name=f"output/{key}"))
            shape = (items, *shape)
        elif key != name:  # an output named apart from its layer
            builder.nodes.append(helper.make_node("Identity", [name], [key], name=f"output/{key}"))
        outputs.append(value(key, shape))
    model = onnx.ModelProto(ir_version=8,  # what opset 17 needs; onnxruntime >= 1.12 reads it
                            producer_name="archc", doc_string=doc)
    model.opset_import.append(helper.make_opsetid("", OPSET))
    model.graph.name = graph.name
    model.graph.node.extend(builder.nodes)
    model.graph.input.extend(value(n, graph[n].shape) for n in graph.inputs)
    model.graph.output.extend(outputs)
    builder.write_initializers(model.graph)
    props = {}
    if graph.training:  # the spec's training settings, for archc import
        props[TRAINING_KEY] = json.dumps(graph.training, default=list)
    if names := torch_names(graph):  # PyTorch's parameter names, for archc import
        props[NAMES_KEY] = json.dumps(names)
    if props:
        helper.set_model_props(model, props)
    return model
