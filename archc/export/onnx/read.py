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

Files archc wrote itself carry a note per layer (see :mod:`archc.export.onnx.write`): the
operators of one layer are then read back as that layer, which makes archc -> ONNX -> archc
give the same graph even where ONNX cannot tell two layers apart.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np

from archc.errors import Loc, OnnxError, SpecError
from archc.export.onnx.emitter import DOC_PREFIX, NAMES_KEY, TRAINING_KEY, onnx_module
from archc.export.onnx.reader import Reader, attr, plain_name
from archc.export.onnx.rules import RULES
from archc.ir import Graph, Node
from archc.layers import get_layer
from archc.naming import NameRule, torch_names
from archc.shapes import infer_shapes
from archc.spec.expand import MAX_NODES


def _all_text(model) -> bool:
    """Whether every name and note archc reads is text (protobuf hands invalid UTF-8 in a
    string field back as bytes)."""
    g = model.graph
    fields = [g.name, model.doc_string, *(p.key for p in model.metadata_props),
              *(p.value for p in model.metadata_props),
              *(i.name for part in (g.input, g.output, g.initializer, g.value_info)
                for i in part)]
    for node in g.node:
        fields += [node.name, node.op_type, node.doc_string, node.domain, *node.input,
                   *node.output, *(a.name for a in node.attribute)]
    return all(isinstance(f, str) for f in fields)


def _note(node) -> dict | None:
    if not node.doc_string.startswith(DOC_PREFIX):
        return None
    try:
        note = json.loads(node.doc_string[len(DOC_PREFIX):])
    except json.JSONDecodeError:
        return None
    return note if isinstance(note, dict) and "op" in note else None


def _read_noted(r: Reader, index: int, note: dict) -> bool:
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


def _fold(r: Reader, node) -> None:
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


def _fold_constants(r: Reader) -> None:
    """Every tensor that does not depend on the data: Constant nodes, shapes (for a batch
    of PROBE_BATCH) and what is computed from them and the weights alone."""
    for node in r.nodes:
        inputs = [t for t in node.input if t]
        if node.op_type == "Constant":
            r.consts[node.output[0]] = r.onnx.numpy_helper.to_array(attr(node, "value"))
        elif node.op_type == "Shape":
            shape = r.shapes.get(node.input[0])
            if shape is not None and None not in shape:
                full = np.array(shape, np.int64)
                r.consts[node.output[0]] = full[attr(node, "start", 0): attr(node, "end")]
        elif inputs and all(t in r.consts for t in inputs):
            _fold(r, node)


def _read_inputs(r: Reader, model) -> None:
    for info in model.graph.input:
        if info.name in r.consts:
            continue  # old exporters list the initializers as inputs too
        dims = r.shapes.get(info.name)
        if dims is None or len(dims) not in (2, 4) or any(d is None for d in dims[1:]):
            raise OnnxError(f"graph input '{info.name}' has shape {dims}; archc reads inputs "
                            "of shape (batch, channels, height, width) or (batch, features) "
                            "with every size but the batch fixed", path=r.source)
        name = r._unique(plain_name(info.name) or "input")
        r.graph.add(Node(name, "input", {"shape": tuple(dims[1:])}, [], Loc(r.source)))
        r.graph[name].shape = tuple(dims[1:])
        r.graph.inputs.append(name)
        r.layer_of[info.name] = name


MAX_ONNX_BYTES = 2 << 30  # protobuf's own limit for one message


def _read_file(path: Path) -> bytes:
    """The bytes of an ONNX file: a regular file (not a FIFO or a device) under 2 GiB."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise OnnxError("not an ONNX model: not a regular file (a folder, device, pipe "
                            "or socket)", path=str(path))
        if info.st_size > MAX_ONNX_BYTES:
            raise OnnxError(f"the file is {info.st_size:,} bytes, over ONNX's limit of "
                            f"{MAX_ONNX_BYTES:,} for one model (external data is not read)",
                            path=str(path))
        return path.read_bytes()
    except FileNotFoundError:
        raise OnnxError("no such file", path=str(path)) from None
    except OSError as exc:
        raise OnnxError(f"cannot read the file: {exc.strerror or exc}", path=str(path)) from None


def _parse(source: str | Path | bytes, name: str):
    onnx = onnx_module()
    data = source if isinstance(source, bytes) else _read_file(Path(source))
    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:
        raise OnnxError(f"not an ONNX model: the file does not parse as one ("
                        f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__})",
                        path=name) from None
    if not model.graph.node or not model.graph.output:
        raise OnnxError("not an ONNX model: the file holds no graph", path=name)
    if not _all_text(model):
        raise OnnxError("the model holds names or notes that are not valid UTF-8 text (a "
                        "damaged file?)", path=name)
    if len(model.graph.node) > MAX_NODES:
        raise OnnxError(f"the model has {len(model.graph.node):,} operators; an archc spec "
                        f"holds at most {MAX_NODES:,} layers", path=name)
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
    r = Reader(model, source_name)
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
        r.graph.outputs[layer if layer == info.name else plain_name(info.name) or "output"] = layer
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
