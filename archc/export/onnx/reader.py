"""The state of one ONNX import (:class:`Reader`: the tensors read so far, their shapes and
constants, and the archc graph being built) and the helpers every rule uses (attributes,
names, padding)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from archc.errors import Loc, OnnxError
from archc.export.onnx.emitter import onnx_module
from archc.ir import Graph, Node
from archc.layers import AttrError, ShapeError, get_layer


NAME_PART = re.compile(r"[^A-Za-z0-9_\-]+")


PROBE_BATCH = 7  # a batch size no layer's own sizes are likely to equal


class Reader:
    """State of one import: the ONNX tensors read so far and the archc graph being built."""

    def __init__(self, model, source: str):
        onnx = onnx_module()
        self.onnx, self.source = onnx, source
        self.nodes = list(model.graph.node)
        self.consts: dict[str, np.ndarray] = {
            t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
        self.layer_of: dict[str, str] = {}  # ONNX tensor -> archc node computing it
        self.graph_outputs = {o.name for o in model.graph.output}
        self.consumers: dict[str, list] = {}
        for node in self.nodes:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.shapes = self._infer(model)
        self.graph = Graph(name=layer_name(model.graph.name) or Path(source).stem,
                           source=source)
        self.params: dict[str, np.ndarray] = {}
        self.done: set[int] = set()  # ids of ONNX nodes already read

    def _infer(self, model) -> dict[str, tuple]:
        """Every tensor's shape that ONNX's shape inference knows. The batch is fixed to
        :data:`PROBE_BATCH` first, so that shape arithmetic on it (``x.view(x.size(0), ...)``)
        comes out as numbers."""
        model = self._light(model)
        initializers = {t.name for t in model.graph.initializer}
        for info in model.graph.input:
            dims = info.type.tensor_type.shape.dim
            if info.name not in initializers and dims and not dims[0].HasField("dim_value"):
                dims[0].dim_value = PROBE_BATCH
        try:
            inferred = self.onnx.shape_inference.infer_shapes(model, data_prop=True)
        except Exception as exc:  # the model is inconsistent; report it in one line
            raise OnnxError(f"ONNX shape inference fails on this model: "
                            f"{str(exc).splitlines()[0]}", path=self.source) from None
        shapes = {}
        g = inferred.graph
        for info in list(g.value_info) + list(g.input) + list(g.output):
            if info.type.HasField("tensor_type") and info.type.tensor_type.HasField("shape"):
                shapes[info.name] = tuple(d.dim_value if d.HasField("dim_value") else None
                                          for d in info.type.tensor_type.shape.dim)
        return shapes

    def _light(self, model):
        """A copy of ``model`` for shape inference, its large weights declared by type and
        shape instead of carried (inference reads only the values of small constants such
        as Reshape's target; copying VGG-16's half gigabyte cost seconds)."""
        helper, graph = self.onnx.helper, model.graph
        small, declared = [], []
        for t in graph.initializer:
            if int(np.prod(t.dims)) <= 4096:
                small.append(t)
            else:
                declared.append(helper.make_tensor_value_info(t.name, t.data_type, t.dims))
        large = {d.name for d in declared}
        inputs = [i for i in graph.input if i.name not in large]
        return helper.make_model(
            helper.make_graph(graph.node, graph.name, inputs + declared, graph.output,
                              small, value_info=graph.value_info),
            opset_imports=model.opset_import, ir_version=model.ir_version,
            functions=model.functions)

    # ------------------------------------------------------------ helpers for rules
    def error(self, node, message: str, hint: str | None = None) -> OnnxError:
        return OnnxError(f"ONNX node '{node.name or node.op_type}' ({node.op_type}): {message}",
                         hint, self.source)

    def const(self, node, index: int, what: str) -> np.ndarray | None:
        """The constant value of input ``index`` (None when the input is omitted)."""
        if index >= len(node.input) or not node.input[index]:
            return None
        name = node.input[index]
        if name not in self.consts:
            raise self.error(node, f"its {what} must be a constant (a weight), but it is "
                             "computed in the graph", "archc imports inference graphs whose "
                             "weights are initializers")
        return self.consts[name]

    def shape(self, tensor: str) -> tuple:
        """A tensor's shape without the batch dimension: archc's for a tensor a layer
        computes, else ONNX's shape inference's."""
        if tensor in self.layer_of:
            return self.graph[self.layer_of[tensor]].shape
        shape = self.shapes.get(tensor)
        if shape is not None and shape[:1] not in ((None,), (PROBE_BATCH,)):
            raise OnnxError(f"ONNX tensor '{tensor}' has {shape[0]} where the batch should be "
                            f"(its shape is {shape} for a batch of {PROBE_BATCH}); archc's "
                            "layers keep the batch as the first axis", path=self.source)
        if shape is None or any(d is None for d in shape[1:]):
            raise OnnxError(f"the shape of ONNX tensor '{tensor}' is not known; archc needs "
                            "static shapes apart from the batch", path=self.source)
        return tuple(shape[1:])

    def single_user(self, tensor: str, op_type: str):
        """The one node reading ``tensor``, when it is one and of ``op_type``."""
        users = self.consumers.get(tensor, [])
        if len(users) == 1 and users[0].op_type == op_type and id(users[0]) not in self.done:
            return users[0]
        return None

    def add(self, onnx_node, op: str, raw: dict, inputs: list[str], output: str,
            params: dict | None = None, name: str | None = None) -> str:
        """Add one archc layer reading ONNX tensors ``inputs`` and computing ``output``."""
        layer = get_layer(op)
        try:
            attrs = layer.normalize(raw)
        except AttrError as exc:
            raise self.error(onnx_node, exc.message, exc.hint) from None
        sources = []
        for tensor in inputs:
            if tensor not in self.layer_of:
                raise self.error(onnx_node, f"input '{tensor}' is neither a graph input nor "
                                 "computed by an operator archc read")
            sources.append(self.layer_of[tensor])
        name = self._unique(name or derived_name(onnx_node, params, op))
        node = Node(name, op, attrs, sources, Loc(self.source))
        try:
            node.shape = tuple(layer.infer_shape(attrs, [self.graph[s].shape for s in sources]))
        except ShapeError as exc:
            raise self.error(onnx_node, f"as archc's {op}: {exc.message}", exc.hint) from None
        self.graph.add(node)
        for role, value in (params or {}).items():
            self.params[f"{name}.{role}"] = np.array(value, order="C")  # (0-d stays 0-d)
        self.layer_of[output] = name
        return name

    def _unique(self, name: str) -> str:
        if name not in self.graph:
            return name
        k = 2
        while f"{name}_{k}" in self.graph:
            k += 1
        return f"{name}_{k}"

    def axis(self, node, axis: int, rank: int) -> int:
        axis = axis + rank if axis < 0 else axis
        if axis == 0:
            raise self.error(node, "it works along the batch axis, which archc layers never do")
        return axis


def attr(node, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            from onnx import helper

            value = helper.get_attribute_value(a)
            if isinstance(value, float):  # ONNX stores float32: 1e-05, not 9.99999974e-06
                return float(str(np.float32(value)))
            return value.decode() if isinstance(value, bytes) else value
    return default


def layer_name(text: str) -> str:
    """A valid archc layer name from an ONNX name (dots kept between the parts)."""
    parts = [NAME_PART.sub("_", p).strip("_") for p in text.split(".")]
    return ".".join(p for p in parts if p)


def plain_name(text: str) -> str:
    """A name without dots, as the spec's inputs and outputs have."""
    return layer_name(text.replace(".", "_"))


def derived_name(node, params: dict | None, op: str) -> str:
    """PyTorch's module path: from a weight's name (``features.0.weight``) or the node's
    (``/features/features.0/Conv``)."""
    for name in node.input[1:]:
        head, _, role = name.rpartition(".")
        if head and not name.startswith("onnx::") and role in ("weight", "bias", "running_mean"):
            return layer_name(head) or op
    parts = [p for p in node.name.split("/") if p]
    if len(parts) < 2:  # "Relu_3", or no name at all
        return layer_name(parts[0]).lower() if parts and parts[0] != node.op_type else op
    # PyTorch's scopes name a module within its parent, a container's children as
    # "container.index": /layer2/layer2.0/downsample/downsample.0/Conv -> layer2.0.downsample.0
    path: list[str] = []
    for part in parts[:-1]:
        if path and part.startswith(path[-1] + "."):
            path[-1] = part
        else:
            path.append(part)
    return layer_name(".".join(path)) or op


def pads(reader: Reader, node) -> tuple[int, int]:
    if attr(node, "auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise reader.error(node, f"auto_pad {attr(node, 'auto_pad')} is not supported",
                           "export with explicit pads")
    pads = list(attr(node, "pads", [0, 0, 0, 0]))
    if len(pads) != 4 or pads[0] != pads[2] or pads[1] != pads[3]:
        raise reader.error(node, f"padding {pads} is not the same on both sides of an axis, "
                           "which archc's layers need (they pad top = bottom, left = right)")
    return pads[0], pads[1]


def window_attrs(reader: Reader, node) -> dict:
    kernel = list(attr(node, "kernel_shape"))
    if len(kernel) != 2:
        raise reader.error(node, f"a {len(kernel)}-d window; archc pools over 2-d maps")
    if attr(node, "storage_order", 0):
        raise reader.error(node, "column-major indices (storage_order 1) are not supported")
    return {"kernel_size": kernel, "stride": list(attr(node, "strides", [1, 1])),
            "padding": list(pads(reader, node))}


