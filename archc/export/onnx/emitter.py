"""What every ONNX emitter uses: the opset and keys archc writes, the ``onnx`` package,
:class:`Emitter` (one layer's operators, named after it, with its weights as
initializers) and :class:`Builder` (the model's graph as it grows)."""

from __future__ import annotations

import json

import numpy as np

from archc.errors import UsageError, WeightsError
from archc.ir import Graph, Node
from archc.spec.writer import spec_attrs


OPSET = 17


DOC_PREFIX = "archc: "


TRAINING_KEY = "archc.training"


NAMES_KEY = "archc.torch_names"


def onnx_module():
    """The ``onnx`` package, or a UsageError saying how to install it."""
    try:
        import onnx
    except ImportError:
        raise UsageError("ONNX export and import need the 'onnx' package, which is not installed",
                        hint="pip install 'archc[onnx]' (or pip install onnx)") from None
    return onnx


class Emitter:
    """Writes the ONNX nodes of one layer; :func:`to_onnx` makes one per layer."""

    def __init__(self, model: "Builder", node: Node):
        self.model, self.node, self.count = model, node, 0

    def emit(self, op_type: str, inputs: list[str], outputs: int = 1, **attrs) -> str:
        """Add one operator; returns its (first) output's name."""
        helper = self.model.onnx.helper
        self.count += 1
        name = self.node.name if self.count == 1 else f"{self.node.name}/{op_type}_{self.count}"
        outs = [f"{self.node.name}/{op_type}_{self.count}"]
        outs += [f"{outs[0]}:{k}" for k in range(1, outputs)]
        proto = helper.make_node(op_type, inputs, outs, name=name, **attrs)
        if self.count == 1:
            proto.doc_string = DOC_PREFIX + json.dumps(
                {"op": self.node.op, "attrs": spec_attrs(self.node), "inputs": self.node.inputs}
                | ({} if self.node.trainable else {"trainable": False}), default=list)
        self.model.nodes.append(proto)
        return outs[0]

    def param(self, role: str) -> str:
        """The initializer of one of the layer's parameters (``weight``, ``running_mean``)."""
        return self.model.initializer(f"{self.node.shares or self.node.name}.{role}")

    def const(self, tag: str, value, dtype=np.float32) -> str:
        """A constant tensor of this layer (a shape, a scale), as an initializer."""
        return self.model.constant(f"{self.node.name}/{tag}", np.asarray(value, dtype=dtype))

    def ints(self, tag: str, values) -> str:
        return self.const(tag, list(values), np.int64)

    def scalar(self, value: float) -> str:
        """A float32 scalar shared by the whole model (1, 0.5, 6...)."""
        return self.model.constant(f"scalar/{value!r}", np.asarray(value, dtype=np.float32))

    @property
    def in_shapes(self) -> list[tuple[int, ...]]:
        return [tuple(self.model.graph[i].shape) for i in self.node.inputs]


class Builder:
    def __init__(self, graph: Graph, params: dict):
        self.onnx = onnx_module()
        self.graph, self.params = graph, params
        self.nodes: list = []
        self.initializers: dict[str, object] = {}
        self.unpool_sources = {n.inputs[1] for n in graph if n.op == "max_unpool2d"}

    def initializer(self, name: str) -> str:
        if name not in self.initializers:
            if name not in self.params:
                raise WeightsError(f"the weights have no '{name}', which the ONNX model needs")
            self.constant(name, np.asarray(self.params[name]))
        return name

    def constant(self, name: str, value: np.ndarray) -> str:
        self.initializers.setdefault(name, value)
        return name

    def write_initializers(self, graph_proto) -> None:
        """Each weight written once, in place (building TensorProtos apart and copying them
        into the graph cost VGG-16 seconds)."""
        helper = self.onnx.helper
        for name, value in self.initializers.items():
            value = np.asarray(value, dtype=value.dtype.newbyteorder("<"), order="C")
            tensor = graph_proto.initializer.add()
            tensor.name = name
            tensor.data_type = helper.np_dtype_to_tensor_dtype(value.dtype)
            tensor.dims.extend(value.shape)
            tensor.raw_data = value.tobytes()


