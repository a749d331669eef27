"""ONNX model -> archc graph and weights: what ``archc import`` runs.

Reads the CNN subset of ONNX that archc can represent, as PyTorch's exporter and other
tools write it: convolutions (plain, grouped, transposed), pooling (window, global,
max-unpooling), batch and layer normalisation, LRN, the activations archc has (including
GELU and SiLU written as compositions), Gemm/MatMul, flatten/reshape/transpose, add,
multiply, concat, split and slice, resize, dropout. Constant sub-graphs are folded
(``onnx.reference``); shape arithmetic (``Shape -> Gather -> Concat -> Reshape``) is read
through ONNX's shape inference. The first operator archc has no layer for stops the import
with an error naming it.

Layer names come from the weights where they carry PyTorch's names (``features.0.weight``
makes the layer ``features.0``, so the weights keep their state_dict names), else from the
ONNX node names (``/layer1/layer1.0/relu/Relu`` -> ``layer1.0.relu``).

Files archc wrote itself carry a note per layer (see :mod:`archc.export.onnx_export`): the
operators of one layer are then read back as that layer, which makes archc -> ONNX -> archc
give the same graph even where ONNX cannot tell two layers apart.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Callable

import numpy as np

from archc.errors import Loc, OnnxError, SpecError
from archc.export.onnx_export import DOC_PREFIX, NAMES_KEY, TRAINING_KEY, onnx_module
from archc.ir import Graph, Node
from archc.layers import REGISTRY, AttrError, ShapeError, get_layer
from archc.naming import NameRule, torch_names
from archc.shapes import infer_shapes

_NAME_PART = re.compile(r"[^A-Za-z0-9_\-]+")
PROBE_BATCH = 7  # a batch size no layer's own sizes are likely to equal


class _Reader:
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
        self.graph = Graph(name=_layer_name(model.graph.name) or Path(source).stem,
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
        name = self._unique(name or _derived_name(onnx_node, params, op))
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


def _attr(node, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            from onnx import helper

            value = helper.get_attribute_value(a)
            if isinstance(value, float):  # ONNX stores float32: 1e-05, not 9.99999974e-06
                return float(str(np.float32(value)))
            return value.decode() if isinstance(value, bytes) else value
    return default


def _layer_name(text: str) -> str:
    """A valid archc layer name from an ONNX name (dots kept between the parts)."""
    parts = [_NAME_PART.sub("_", p).strip("_") for p in text.split(".")]
    return ".".join(p for p in parts if p)


def _plain_name(text: str) -> str:
    """A name without dots, as the spec's inputs and outputs have."""
    return _layer_name(text.replace(".", "_"))


def _derived_name(node, params: dict | None, op: str) -> str:
    """PyTorch's module path: from a weight's name (``features.0.weight``) or the node's
    (``/features/features.0/Conv``)."""
    for name in node.input[1:]:
        head, _, role = name.rpartition(".")
        if head and not name.startswith("onnx::") and role in ("weight", "bias", "running_mean"):
            return _layer_name(head) or op
    parts = [p for p in node.name.split("/") if p]
    if len(parts) < 2:  # "Relu_3", or no name at all
        return _layer_name(parts[0]).lower() if parts and parts[0] != node.op_type else op
    # PyTorch's scopes name a module within its parent, a container's children as
    # "container.index": /layer2/layer2.0/downsample/downsample.0/Conv -> layer2.0.downsample.0
    path: list[str] = []
    for part in parts[:-1]:
        if path and part.startswith(path[-1] + "."):
            path[-1] = part
        else:
            path.append(part)
    return _layer_name(".".join(path)) or op


def _pads(reader: _Reader, node) -> tuple[int, int]:
    if _attr(node, "auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise reader.error(node, f"auto_pad {_attr(node, 'auto_pad')} is not supported",
                           "export with explicit pads")
    pads = list(_attr(node, "pads", [0, 0, 0, 0]))
    if len(pads) != 4 or pads[0] != pads[2] or pads[1] != pads[3]:
        raise reader.error(node, f"padding {pads} is not the same on both sides of an axis, "
                           "which archc's layers need (they pad top = bottom, left = right)")
    return pads[0], pads[1]


def _window_attrs(reader: _Reader, node) -> dict:
    kernel = list(_attr(node, "kernel_shape"))
    if len(kernel) != 2:
        raise reader.error(node, f"a {len(kernel)}-d window; archc pools over 2-d maps")
    if _attr(node, "storage_order", 0):
        raise reader.error(node, "column-major indices (storage_order 1) are not supported")
    return {"kernel_size": kernel, "stride": list(_attr(node, "strides", [1, 1])),
            "padding": list(_pads(reader, node))}


# ------------------------------------------------------------------ rules, one per operator

def _conv(r: _Reader, n) -> None:
    w, b = r.const(n, 1, "weight"), r.const(n, 2, "bias")
    if w.ndim != 4:
        raise r.error(n, f"a {w.ndim - 2}-d convolution; archc convolves 2-d maps")
    group = _attr(n, "group", 1)
    params = {"weight": w} | ({"bias": b} if b is not None else {})
    common = {"kernel_size": list(w.shape[2:]), "stride": list(_attr(n, "strides", [1, 1])),
              "dilation": list(_attr(n, "dilations", [1, 1])), "groups": group,
              "bias": b is not None, "padding": list(_pads(r, n))}
    if n.op_type == "Conv":
        r.add(n, "conv2d", {"out_channels": w.shape[0], **common}, [n.input[0]], n.output[0],
              params)
        return
    if _attr(n, "output_shape") is not None:
        raise r.error(n, "an explicit output_shape is not supported", "give pads and "
                      "output_padding instead (PyTorch's exporter does)")
    r.add(n, "conv_transpose2d", {"out_channels": w.shape[1] * group, **common,
                                  "output_padding": list(_attr(n, "output_padding", [0, 0]))},
          [n.input[0]], n.output[0], params)


def _gemm(r: _Reader, n) -> None:
    if _attr(n, "transA", 0) or _attr(n, "alpha", 1.0) != 1.0 or _attr(n, "beta", 1.0) != 1.0:
        raise r.error(n, "only y = x W^T + b (transA 0, alpha and beta 1) is a linear layer")
    w, b = r.const(n, 1, "weight"), r.const(n, 2, "bias")
    w = w if _attr(n, "transB", 0) else w.T
    _linear(r, n, w, None if b is None else b.reshape(-1), n.output[0])


def _linear(r: _Reader, n, w: np.ndarray, b, output: str) -> None:
    params = {"weight": w} | ({"bias": b} if b is not None else {})
    r.add(n, "linear", {"out_features": w.shape[0], "bias": b is not None}, [n.input[0]],
          output, params)


def _matmul(r: _Reader, n) -> None:
    w = r.const(n, 1, "weight")  # x @ W: W is (in, out)
    bias_add = r.single_user(n.output[0], "Add")
    b = None
    if bias_add is not None:
        other = [t for t in bias_add.input if t != n.output[0]]
        if len(other) == 1 and other[0] in r.consts:
            b, output = r.consts[other[0]].reshape(-1), bias_add.output[0]
            r.done.add(id(bias_add))
    _linear(r, n, w.T, b, output if b is not None else n.output[0])


def _pool(r: _Reader, n) -> None:
    attrs = _window_attrs(r, n) | {"ceil_mode": bool(_attr(n, "ceil_mode", 0))}
    if n.op_type == "MaxPool":
        attrs["dilation"] = list(_attr(n, "dilations", [1, 1]))
        name = r.add(n, "max_pool2d", attrs, [n.input[0]], n.output[0])
        if len(n.output) > 1 and n.output[1]:
            r.layer_of[n.output[1]] = name  # its indices, for MaxUnpool (same shape)
        return
    if _attr(n, "dilations", [1, 1]) != [1, 1]:
        raise r.error(n, "dilated average pooling is not supported")
    attrs["count_include_pad"] = bool(_attr(n, "count_include_pad", 0))
    r.add(n, "avg_pool2d", attrs, [n.input[0]], n.output[0])


def _max_unpool(r: _Reader, n) -> None:
    size = r.const(n, 2, "output shape")
    attrs = _window_attrs(r, n) | ({} if size is None else
                                   {"output_size": [int(v) for v in size[2:]]})
    r.add(n, "max_unpool2d", attrs, [n.input[0], n.input[1]], n.output[0])


def _global_pool(r: _Reader, n) -> None:
    r.add(n, "global_avg_pool2d" if "Average" in n.op_type else "global_max_pool2d", {},
          [n.input[0]], n.output[0])


def _reduce(r: _Reader, n) -> None:
    axes = _attr(n, "axes")
    if axes is None and len(n.input) > 1 and n.input[1]:
        axes = r.const(n, 1, "axes").tolist()
    rank = len(r.shape(n.input[0])) + 1
    if rank != 4 or sorted(a % 4 for a in axes or []) != [2, 3]:
        raise r.error(n, f"a reduction over axes {axes}; archc has it only as global pooling "
                      "(axes 2 and 3 of an N, C, H, W map)")
    op = "global_avg_pool2d" if n.op_type == "ReduceMean" else "global_max_pool2d"
    if _attr(n, "keepdims", 1):
        r.add(n, op, {}, [n.input[0]], n.output[0])
        return
    pooled = r.add(n, op, {}, [n.input[0]], n.output[0] + "/pooled")
    r.add(n, "flatten", {}, [n.output[0] + "/pooled"], n.output[0], name=pooled + "_flat")


def _batchnorm(r: _Reader, n) -> None:
    if _attr(n, "training_mode", 0):
        raise r.error(n, "a batch norm in training mode; export the model in eval mode")
    scale, bias, mean, var = (r.const(n, i, what) for i, what in
                              ((1, "scale"), (2, "bias"), (3, "mean"), (4, "variance")))
    rank = len(r.shape(n.input[0])) + 1
    params = {"weight": scale, "bias": bias, "running_mean": mean, "running_var": var,
              "num_batches_tracked": np.zeros((), np.int64)}
    r.add(n, "batchnorm2d" if rank == 4 else "batchnorm1d",
          {"eps": _attr(n, "epsilon", 1e-5), "momentum": round(1 - _attr(n, "momentum", 0.9), 7)},
          [n.input[0]], n.output[0], params)


def _layernorm(r: _Reader, n, x: str, output: str, op: str) -> None:
    scale, bias = r.const(n, 1, "scale"), r.const(n, 2, "bias")
    if bias is None:
        bias = np.zeros_like(scale)
    r.add(n, op, {"eps": _attr(n, "epsilon", 1e-5)}, [x], output,
          {"weight": scale, "bias": bias})


def _layernorm_plain(r: _Reader, n) -> None:
    rank = len(r.shape(n.input[0])) + 1
    if rank != 2 or _attr(n, "axis", -1) not in (-1, 1):
        raise r.error(n, "layer normalisation over the trailing axes of a map; archc "
                      "normalises over the channels (Transpose to channels-last around it)")
    _layernorm(r, n, n.input[0], n.output[0], "layernorm")


def _transpose(r: _Reader, n) -> None:
    perm = list(_attr(n, "perm"))
    rank = len(perm)
    norm = r.single_user(n.output[0], "LayerNormalization")
    back = norm and r.single_user(norm.output[0], "Transpose")
    if (rank >= 3 and perm == [0] + list(range(2, rank)) + [1] and back is not None
            and list(_attr(back, "perm")) == [0, rank - 1] + list(range(1, rank - 1))
            and _attr(norm, "axis", -1) in (-1, rank - 1)):
        r.done.update((id(norm), id(back)))  # channels-last layer norm: normalises channels
        _layernorm(r, norm, n.input[0], back.output[0], "layernorm2d")
        return
    r.add(n, "permute", {"dims": perm}, [n.input[0]], n.output[0])


def _reshape_target(r: _Reader, n, shape_in: tuple) -> tuple:
    """The output shape (batch aside) of a Reshape to a constant target, read as ONNX
    does (0 copies the input's size, -1 takes what is left) for a batch of PROBE_BATCH."""
    target = [int(v) for v in r.const(n, 1, "target shape")]
    full = (PROBE_BATCH,) + shape_in
    if not _attr(n, "allowzero", 0):
        target = [full[i] if v == 0 else v for i, v in enumerate(target)]
    if target.count(-1) == 1:
        known = math.prod(v for v in target if v != -1)
        target[target.index(-1)] = math.prod(full) // max(known, 1)
    if not target or target[0] != PROBE_BATCH or math.prod(target) != math.prod(full):
        raise r.error(n, f"it reshapes {full} to {tuple(target)} for a batch of "
                      f"{PROBE_BATCH}: the batch does not stay the first axis, which archc's "
                      "reshape keeps")
    return tuple(target[1:])


def _reshape(r: _Reader, n) -> None:
    shape_in = r.shape(n.input[0])
    shape_out = _reshape_target(r, n, shape_in)
    shuffle = _channel_shuffle(r, n, shape_in, shape_out)
    if shuffle:
        return
    for k in range(len(shape_in)):  # keep the first k axes, merge the rest: a flatten
        if shape_out == shape_in[:k] + (math.prod(shape_in[k:]),):
            r.add(n, "flatten", {"start_dim": k + 1} if k else {}, [n.input[0]], n.output[0])
            return
    r.add(n, "reshape", {"shape": list(shape_out)}, [n.input[0]], n.output[0])


def _channel_shuffle(r: _Reader, n, shape_in, shape_out) -> bool:
    """Reshape (g, C/g, ...) -> Transpose(swap the two) -> Reshape back: channel shuffle."""
    swap = r.single_user(n.output[0], "Transpose")
    back = swap and r.single_user(swap.output[0], "Reshape")
    if (back is None or len(shape_out) != len(shape_in) + 1 or len(shape_in) < 2
            or shape_out[0] * shape_out[1] != shape_in[0] or shape_out[2:] != shape_in[1:]
            or list(_attr(swap, "perm")) != [0, 2, 1] + list(range(3, len(shape_out) + 1))
            or _reshape_target(r, back, shape_out[1:2] + shape_out[:1] + shape_out[2:])
            != shape_in):
        return False
    r.done.update((id(swap), id(back)))
    r.add(n, "channel_shuffle", {"groups": shape_out[0]}, [n.input[0]], back.output[0])
    return True


def _flatten(r: _Reader, n) -> None:
    axis = _attr(n, "axis", 1)
    if axis != 1:
        raise r.error(n, f"Flatten with axis {axis} folds the batch into the features; "
                      "archc keeps the batch apart (axis 1)")
    r.add(n, "flatten", {}, [n.input[0]], n.output[0])


def _merge(r: _Reader, n) -> None:
    consts = [t for t in n.input if t in r.consts]
    if n.op_type == "Mul" and len(consts) == 1 and len(n.input) == 2:
        x = next(t for t in n.input if t not in r.consts)
        scale = r.consts[consts[0]]
        channels = r.shape(x)[0]
        if scale.shape == (channels,) + (1,) * (len(r.shape(x)) - 1):
            r.add(n, "layer_scale", {}, [x], n.output[0], {"weight": scale})
            return
    if consts:
        raise r.error(n, f"{n.op_type} with a constant operand has no archc layer (archc's "
                      "add and multiply join tensors computed by layers)")
    op = "multiply" if n.op_type == "Mul" else "add"
    r.add(n, op, {}, list(n.input), n.output[0])


def _concat(r: _Reader, n) -> None:
    rank = len(r.shape(n.input[0])) + 1
    r.add(n, "concat", {"dim": r.axis(n, _attr(n, "axis"), rank)}, list(n.input), n.output[0])


def _slices(r: _Reader, n, x: str, axis: int, ranges: list[tuple[int, int]], outputs) -> None:
    size = r.shape(x)[axis - 1]
    for (start, end), output in zip(ranges, outputs):
        start, end = (v + size if v < 0 else v for v in (start, end))
        r.add(n, "slice", {"start": start, "end": min(end, size), "dim": axis}, [x], output)


def _slice(r: _Reader, n) -> None:
    starts, ends = r.const(n, 1, "starts").tolist(), r.const(n, 2, "ends").tolist()
    rank = len(r.shape(n.input[0])) + 1
    axes = r.const(n, 3, "axes")
    axes = list(range(len(starts))) if axes is None else axes.tolist()
    steps = r.const(n, 4, "steps")
    if steps is not None and any(s != 1 for s in steps.tolist()):
        raise r.error(n, f"a slice with steps {steps.tolist()}; archc slices take every element")
    x = n.input[0]
    for i, (axis, start, end) in enumerate(zip(axes, starts, ends)):
        last = i == len(axes) - 1
        out = n.output[0] if last else f"{n.output[0]}/{i}"
        _slices(r, n, x, r.axis(n, axis, rank), [(start, end)], [out])
        x = out


def _split(r: _Reader, n) -> None:
    rank = len(r.shape(n.input[0])) + 1
    axis = r.axis(n, _attr(n, "axis", 0), rank)
    sizes = _attr(n, "split")
    if sizes is None and len(n.input) > 1 and n.input[1]:
        sizes = r.const(n, 1, "split").tolist()
    if sizes is None:
        sizes = [r.shape(o)[axis - 1] for o in n.output]
    bounds = np.cumsum([0] + list(sizes)).tolist()
    _slices(r, n, n.input[0], axis, list(zip(bounds[:-1], bounds[1:])), list(n.output))


def _resize(r: _Reader, n) -> None:
    mode, coords = _attr(n, "mode", "nearest"), _attr(n, "coordinate_transformation_mode",
                                                      "half_pixel")
    attrs: dict = {}
    if mode == "nearest" and coords == "asymmetric" and _attr(n, "nearest_mode",
                                                              "round_prefer_floor") == "floor":
        attrs["mode"] = "nearest"
    elif mode == "linear" and coords in ("half_pixel", "pytorch_half_pixel", "align_corners"):
        attrs.update(mode="bilinear", align_corners=coords == "align_corners")
    else:
        raise r.error(n, f"resize mode {mode} with {coords} coordinates has no archc form",
                      "archc resizes as PyTorch's nearest and bilinear interpolation do")
    scales = r.const(n, 2, "scales") if len(n.input) > 2 and n.input[2] else None
    if scales is not None and scales.size:
        if list(scales[:2]) != [1, 1]:
            raise r.error(n, "it resizes the batch or channel axes")
        attrs["scale_factor"] = [float(s) for s in scales[2:]]
    else:
        sizes = r.const(n, 3, "sizes")
        if sizes is None:
            raise r.error(n, "neither scales nor sizes are given")
        attrs["size"] = [int(v) for v in sizes[2:]]
    r.add(n, "upsample", attrs, [n.input[0]], n.output[0])


def _clip(r: _Reader, n) -> None:
    low, high = r.const(n, 1, "minimum"), r.const(n, 2, "maximum")
    low = _attr(n, "min", -np.inf) if low is None else float(low)
    high = _attr(n, "max", np.inf) if high is None else float(high)
    if low == 0 and high == 6:
        r.add(n, "relu6", {}, [n.input[0]], n.output[0])
    elif low == 0 and high == np.inf:
        r.add(n, "relu", {}, [n.input[0]], n.output[0])
    else:
        raise r.error(n, f"clipping to [{low}, {high}] has no archc layer (relu6 clips to [0, 6])")


def _sigmoid(r: _Reader, n) -> None:
    mul = r.single_user(n.output[0], "Mul")
    if mul is not None and sorted(mul.input) == sorted([n.input[0], n.output[0]]):
        r.done.add(id(mul))  # x * sigmoid(x)
        r.add(n, "silu", {}, [n.input[0]], mul.output[0])
        return
    r.add(n, "sigmoid", {}, [n.input[0]], n.output[0])


def _is_scalar(r: _Reader, node, value: float) -> str | None:
    """The non-constant input of ``node`` when its other input is the scalar ``value``."""
    if node is None or len(node.input) != 2:
        return None
    for a, b in (node.input, node.input[::-1]):
        if b in r.consts and r.consts[b].size == 1 and math.isclose(
                float(r.consts[b].reshape(())), value, rel_tol=1e-6) and a not in r.consts:
            return a
    return None


def _gelu_by_erf(r: _Reader, n) -> None:
    """0.5 x (1 + erf(x / sqrt 2)), as PyTorch's exporter writes nn.GELU() before opset 20."""
    x = _is_scalar(r, n, math.sqrt(2.0))
    erf = r.single_user(n.output[0], "Erf")
    plus = erf and r.single_user(erf.output[0], "Add")
    times = plus and r.single_user(plus.output[0], "Mul")
    half = times and r.single_user(times.output[0], "Mul")
    if (x is None or n.op_type != "Div" or half is None or _is_scalar(r, plus, 1.0) is None
            or sorted(times.input) != sorted([x, plus.output[0]])
            or _is_scalar(r, half, 0.5) != times.output[0]):
        raise r.error(n, f"{n.op_type} of a tensor by a constant has no archc layer",
                      "archc reads it only as part of GELU: 0.5 x (1 + erf(x / sqrt 2))")
    r.done.update(id(m) for m in (erf, plus, times, half))
    r.add(n, "gelu", {}, [x], half.output[0])


def _activation(op: str, **fixed: Callable):
    def rule(r: _Reader, n) -> None:
        attrs = {key: read(n) for key, read in fixed.items()}
        r.add(n, op, attrs, [n.input[0]], n.output[0])
    return rule


def _one_operator(layer):
    """The rule of an operator that is exactly ``layer`` (its registry entry's ``onnx``),
    its attributes renamed, absent ones at archc's defaults."""
    defaults = {a.name: a.default for a in layer.attrs}
    return _activation(layer.op, **{ours: (lambda n, o=ours, t=theirs: _attr(n, t, defaults[o]))
                                    for ours, theirs in layer.onnx.attrs})


def _hardsigmoid(r: _Reader, n) -> None:
    if not (math.isclose(_attr(n, "alpha", 0.2), 1 / 6, rel_tol=1e-5)
            and math.isclose(_attr(n, "beta", 0.5), 0.5)):
        raise r.error(n, "HardSigmoid with alpha/beta other than PyTorch's (1/6, 1/2)")
    r.add(n, "hardsigmoid", {}, [n.input[0]], n.output[0])


def _softmax(r: _Reader, n) -> None:
    rank = len(r.shape(n.input[0])) + 1
    r.add(n, "softmax", {"dim": r.axis(n, _attr(n, "axis", -1), rank)}, [n.input[0]],
          n.output[0])


def _dropout(r: _Reader, n) -> None:
    ratio = r.const(n, 1, "ratio")
    p = float(str(np.float32(ratio))) if ratio is not None else _attr(n, "ratio", 0.5)
    r.add(n, "dropout", {"p": p}, [n.input[0]], n.output[0])


def _identity(r: _Reader, n) -> None:
    if n.output[0] in r.graph_outputs and n.input[0] in r.layer_of:
        r.layer_of[n.output[0]] = r.layer_of[n.input[0]]  # names an output: no layer
        return
    r.add(n, "identity", {}, [n.input[0]], n.output[0])


def _lrn(r: _Reader, n) -> None:
    size = _attr(n, "size")
    if size % 2 == 0:
        raise r.error(n, "an even LRN window, which ONNX centres differently from PyTorch")
    r.add(n, "local_response_norm", {"size": size, "alpha": _attr(n, "alpha", 1e-4),
                                     "beta": _attr(n, "beta", 0.75), "k": _attr(n, "bias", 1.0)},
          [n.input[0]], n.output[0])


RULES: dict[str, Callable[[_Reader, object], None]] = {
    "Conv": _conv, "ConvTranspose": _conv, "Gemm": _gemm, "MatMul": _matmul,
    "MaxPool": _pool, "AveragePool": _pool, "MaxUnpool": _max_unpool,
    "GlobalAveragePool": _global_pool, "GlobalMaxPool": _global_pool,
    "ReduceMean": _reduce, "ReduceMax": _reduce,
    "BatchNormalization": _batchnorm, "LayerNormalization": _layernorm_plain, "LRN": _lrn,
    "Clip": _clip,
    "Gelu": _activation("gelu", approximate=lambda n: _attr(n, "approximate", "none")),
    "Div": _gelu_by_erf, "Sigmoid": _sigmoid, "HardSigmoid": _hardsigmoid, "Softmax": _softmax,
    "Add": _merge, "Sum": _merge, "Mul": _merge, "Concat": _concat,
    "Flatten": _flatten, "Reshape": _reshape, "Transpose": _transpose,
    "Slice": _slice, "Split": _split, "Resize": _resize,
    "Dropout": _dropout, "Identity": _identity,
}
READ_FROM: dict[str, tuple[str, ...]] = {
    "conv2d": ("Conv",), "conv_transpose2d": ("ConvTranspose",), "linear": ("Gemm", "MatMul"),
    "max_pool2d": ("MaxPool",), "avg_pool2d": ("AveragePool",), "max_unpool2d": ("MaxUnpool",),
    "global_avg_pool2d": ("GlobalAveragePool", "ReduceMean"),
    "global_max_pool2d": ("GlobalMaxPool", "ReduceMax"),
    "batchnorm2d": ("BatchNormalization",), "batchnorm1d": ("BatchNormalization",),
    "layernorm": ("LayerNormalization",), "layernorm2d": ("Transpose",),
    "local_response_norm": ("LRN",), "layer_scale": ("Mul",),
    "relu": ("Clip",), "relu6": ("Clip",), "gelu": ("Gelu", "Div"), "silu": ("Sigmoid",),
    "hardsigmoid": ("HardSigmoid",), "softmax": ("Softmax",),
    "add": ("Add", "Sum"), "multiply": ("Mul",), "concat": ("Concat",),
    "flatten": ("Flatten", "Reshape"), "reshape": ("Reshape",), "permute": ("Transpose",),
    "channel_shuffle": ("Reshape",), "slice": ("Slice", "Split"), "upsample": ("Resize",),
    "dropout": ("Dropout",), "identity": ("Identity",),
}
"""The ONNX operators (the first of a composition) that import as each layer type, beside
those of registry entries with an ``onnx`` operator; archc's own files read every layer
back through their notes."""

NOT_READ: dict[str, str] = {
    "mish": "PyTorch writes it at opset 17 as Softplus, Tanh and Mul, which import as those "
            "three layers (the same function)",
    "adaptive_avg_pool2d": "written as pooling (even bins) or slices and means, which import "
                           "as those",
    "adaptive_max_pool2d": "written as pooling (even bins) or slices and maxima, which import "
                           "as those",
    "unpool2d": "written as a nearest Resize or a scatter composition, which import as those",
    "center_crop": "written as two slices, which import as slices",
    "stochastic_depth": "nothing at inference: ONNX has no operator for it",
}
"""Layer types that only archc's own files (their notes) read back, and why."""

for _layer in REGISTRY.values():  # the operators that are one registry entry each
    if _layer.onnx is not None and _layer.onnx.op_type not in RULES:
        RULES[_layer.onnx.op_type] = _one_operator(_layer)
    if _layer.onnx is not None:
        READ_FROM.setdefault(_layer.op, (_layer.onnx.op_type,))
"""How each ONNX operator (or the composition it starts) becomes archc layers."""


# ------------------------------------------------------------------ layers archc wrote

def _note(node) -> dict | None:
    if not node.doc_string.startswith(DOC_PREFIX):
        return None
    try:
        note = json.loads(node.doc_string[len(DOC_PREFIX):])
    except json.JSONDecodeError:
        return None
    return note if isinstance(note, dict) and "op" in note else None


def _read_noted(r: _Reader, index: int, note: dict) -> bool:
    """The operators of one layer archc wrote (named ``layer`` and ``layer/...``), read
    back as that layer; False when they do not hold together (the file was edited)."""
    first = r.nodes[index]
    name = first.name
    group = [first]
    for node in r.nodes[index + 1:]:
        if not node.name.startswith(name + "/"):
            break
        group.append(node)
    made = {o for node in group for o in node.output}
    read = {t for node in group for t in node.input if t and t not in made}
    inputs = note.get("inputs")
    # the layers it reads are tensors of the same names (a centre crop reads its reference
    # layer's shape only, so that one need not be read in ONNX)
    if (name not in made or not isinstance(inputs, list)
            or any(t not in r.layer_of or r.layer_of[t] != t for t in inputs)
            or not all(t in inputs or t in r.consts or t in r.layer_of for t in read)):
        return False
    op, raw = note["op"], note.get("attrs", {})
    try:
        layer = get_layer(op)
    except KeyError:
        return False
    in_shapes = [r.graph[r.layer_of[t]].shape for t in inputs]
    try:
        attrs = layer.normalize(raw)
        tables = {**layer.parameters(attrs, in_shapes), **layer.buffers(attrs, in_shapes)}
    except Exception:
        return False
    params = {}
    for role, shape in tables.items():
        value = r.consts.get(f"{name}.{role}")
        if value is None and role == "num_batches_tracked":
            value = np.zeros((), np.int64)
        if value is None or tuple(value.shape) != tuple(shape):
            return False
        params[role] = value
    r.add(first, op, raw, inputs, name, params, name=name)
    r.graph[name].trainable = note.get("trainable", True) is not False
    for node in group:
        r.done.add(id(node))
        for tensor in node.output[1:]:  # max pooling's indices, for max-unpooling
            r.layer_of[tensor] = name
    return True


# ------------------------------------------------------------------ the driver

def _fold(r: _Reader, node) -> None:
    """An operator of constants only: computed now (onnx's reference evaluator)."""
    from onnx.reference import ReferenceEvaluator

    helper = r.onnx.helper
    inputs = [t for t in node.input if t]
    graph = helper.make_graph(
        [node], "fold",
        [helper.make_tensor_value_info(t, helper.np_dtype_to_tensor_dtype(r.consts[t].dtype),
                                       r.consts[t].shape) for t in inputs],
        [helper.make_empty_tensor_value_info(o) for o in node.output if o])
    values = ReferenceEvaluator(helper.make_model(graph)).run(None, {t: r.consts[t]
                                                                    for t in inputs})
    for name, value in zip([o for o in node.output if o], values):
        r.consts[name] = np.asarray(value)


def _fold_constants(r: _Reader) -> None:
    """Every tensor that does not depend on the data: Constant nodes, shapes (for a batch
    of PROBE_BATCH) and what is computed from them and the weights alone."""
    for node in r.nodes:
        inputs = [t for t in node.input if t]
        if node.op_type == "Constant":
            r.consts[node.output[0]] = r.onnx.numpy_helper.to_array(_attr(node, "value"))
        elif node.op_type == "Shape":
            shape = r.shapes.get(node.input[0])
            if shape is not None and None not in shape:
                full = np.array(shape, np.int64)
                r.consts[node.output[0]] = full[_attr(node, "start", 0): _attr(node, "end")]
        elif inputs and all(t in r.consts for t in inputs):
            _fold(r, node)


def _read_inputs(r: _Reader, model) -> None:
    for info in model.graph.input:
        if info.name in r.consts:
            continue  # old exporters list the initializers as inputs too
        dims = r.shapes.get(info.name)
        if dims is None or len(dims) not in (2, 4) or any(d is None for d in dims[1:]):
            raise OnnxError(f"graph input '{info.name}' has shape {dims}; archc reads inputs "
                            "of shape (batch, channels, height, width) or (batch, features) "
                            "with every size but the batch fixed", path=r.source)
        name = r._unique(_plain_name(info.name) or "input")
        r.graph.add(Node(name, "input", {"shape": tuple(dims[1:])}, [], Loc(r.source)))
        r.graph[name].shape = tuple(dims[1:])
        r.graph.inputs.append(name)
        r.layer_of[info.name] = name


def _parse(source: str | Path | bytes, name: str):
    onnx = onnx_module()
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:
        raise OnnxError(f"not an ONNX model: the file does not parse as one ("
                        f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__})",
                        path=name) from None
    if not model.graph.node or not model.graph.output:
        raise OnnxError("not an ONNX model: the file holds no graph", path=name)
    try:
        onnx.checker.check_model(data)  # the bytes: no second serialisation
    except Exception as exc:
        raise OnnxError(f"{name} is not a valid ONNX model: {str(exc).splitlines()[0]}",
                        path=name) from None
    return model


def _name_rules(text: str) -> list[NameRule]:
    """The torch_names archc wrote into the model's properties (none from an edited note)."""
    try:
        names = json.loads(text)
    except ValueError:
        return []
    if not isinstance(names, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and "{" not in k + v
            for k, v in names.items()):
        return []
    return [NameRule(k, v) for k, v in names.items()]


def from_onnx(source: str | Path | bytes, name: str | None = None) -> tuple[Graph, dict]:
    """The archc graph (shapes inferred) and weights of an ONNX model file (or its bytes).

    Raises OnnxError, one line, for a file that is not ONNX, an operator archc has no
    layer for, or a graph archc cannot represent.

    Examples
    --------
    >>> import archc
    >>> from archc.export import to_onnx
    >>> g = archc.load("specs/lenet5.yaml")
    >>> back, weights = from_onnx(to_onnx(g, archc.compile(g).params).SerializeToString())
    >>> [n.name for n in back] == [n.name for n in g], sorted(weights)[:2]
    (True, ['c1.bias', 'c1.weight'])
    """
    source_name = name or (str(source) if not isinstance(source, bytes) else "model.onnx")
    model = _parse(source, source_name)
    r = _Reader(model, source_name)
    _read_inputs(r, model)
    _fold_constants(r)
    for index, node in enumerate(r.nodes):
        if id(node) in r.done:
            continue
        note = _note(node)
        if note is not None and _read_noted(r, index, note):
            continue
        if all(t in r.consts for t in node.output):
            continue  # folded before
        if node.op_type in RULES:
            RULES[node.op_type](r, node)
        else:
            raise OnnxError(
                f"ONNX operator {node.op_type} (node '{node.name or node.output[0]}') has no "
                f"archc layer", f"archc imports: {', '.join(sorted(RULES))}", source_name)
    for info in model.graph.output:
        if info.name not in r.layer_of:
            raise OnnxError(f"graph output '{info.name}' is not computed by any layer archc "
                            "read", path=source_name)
        layer = r.layer_of[info.name]
        r.graph.outputs[layer if layer == info.name else _plain_name(info.name) or "output"] = layer
    for prop in model.metadata_props:
        if prop.key == TRAINING_KEY:
            try:
                r.graph.training = dict(json.loads(prop.value))
            except (ValueError, TypeError):
                pass  # an edited note: the spec gets no training section
        elif prop.key == NAMES_KEY:
            r.graph.name_rules = _name_rules(prop.value)
    for tensor, layer in r.layer_of.items():  # archc's shapes are ONNX's, tensor by tensor
        expected, got = r.shapes.get(tensor), r.graph[layer].shape
        if expected and None not in expected[1:] and tuple(expected[1:]) != got:
            raise OnnxError(f"layer '{layer}' ({r.graph[layer].op}) computes {got} where the "
                            f"ONNX model has {tuple(expected[1:])}", path=source_name)
    graph = infer_shapes(r.graph)
    try:
        torch_names(graph)
    except SpecError:  # names that no longer fit what was read: the spec goes without
        graph.name_rules = []
    return graph, r.params
