"""How each ONNX operator (or the composition it starts) becomes archc layers: one rule
per operator (``RULES``), and which layer types foreign files can give (``READ_FROM``,
``NOT_READ``)."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from archc.export.onnx.reader import PROBE_BATCH, Reader, attr, pads, window_attrs
from archc.layers import REGISTRY


def _conv(r: Reader, n) -> None:
    w, b = r.const(n, 1, "weight"), r.const(n, 2, "bias")
    if w.ndim != 4:
        raise r.error(n, f"a {w.ndim - 2}-d convolution; archc convolves 2-d maps")
    group = attr(n, "group", 1)
    params = {"weight": w} | ({"bias": b} if b is not None else {})
    common = {"kernel_size": list(w.shape[2:]), "stride": list(attr(n, "strides", [1, 1])),
              "dilation": list(attr(n, "dilations", [1, 1])), "groups": group,
              "bias": b is not None, "padding": list(pads(r, n))}
    if n.op_type == "Conv":
        r.add(n, "conv2d", {"out_channels": w.shape[0], **common}, [n.input[0]], n.output[0],
              params)
        return
    if attr(n, "output_shape") is not None:
        raise r.error(n, "an explicit output_shape is not supported", "give pads and "
                      "output_padding instead (PyTorch's exporter does)")
    r.add(n, "conv_transpose2d", {"out_channels": w.shape[1] * group, **common,
                                  "output_padding": list(attr(n, "output_padding", [0, 0]))},
          [n.input[0]], n.output[0], params)


def _gemm(r: Reader, n) -> None:
    if attr(n, "transA", 0) or attr(n, "alpha", 1.0) != 1.0 or attr(n, "beta", 1.0) != 1.0:
        raise r.error(n, "only y = x W^T + b (transA 0, alpha and beta 1) is a linear layer")
    w, b = r.const(n, 1, "weight"), r.const(n, 2, "bias")
    w = w if attr(n, "transB", 0) else w.T
    _linear(r, n, w, None if b is None else b.reshape(-1), n.output[0])


def _linear(r: Reader, n, w: np.ndarray, b, output: str) -> None:
    params = {"weight": w} | ({"bias": b} if b is not None else {})
    r.add(n, "linear", {"out_features": w.shape[0], "bias": b is not None}, [n.input[0]],
          output, params)


def _matmul(r: Reader, n) -> None:
    w = r.const(n, 1, "weight")  # x @ W: W is (in, out)
    bias_add = r.single_user(n.output[0], "Add")
    b = None
    if bias_add is not None:
        other = [t for t in bias_add.input if t != n.output[0]]
        if len(other) == 1 and other[0] in r.consts:
            b, output = r.consts[other[0]].reshape(-1), bias_add.output[0]
            r.done.add(id(bias_add))
    _linear(r, n, w.T, b, output if b is not None else n.output[0])


def _pool(r: Reader, n) -> None:
    attrs = window_attrs(r, n) | {"ceil_mode": bool(attr(n, "ceil_mode", 0))}
    if n.op_type == "MaxPool":
        attrs["dilation"] = list(attr(n, "dilations", [1, 1]))
        name = r.add(n, "max_pool2d", attrs, [n.input[0]], n.output[0])
        if len(n.output) > 1 and n.output[1]:
            r.layer_of[n.output[1]] = name  # its indices, for MaxUnpool (same shape)
        return
    if attr(n, "dilations", [1, 1]) != [1, 1]:
        raise r.error(n, "dilated average pooling is not supported")
    attrs["count_include_pad"] = bool(attr(n, "count_include_pad", 0))
    r.add(n, "avg_pool2d", attrs, [n.input[0]], n.output[0])


def _max_unpool(r: Reader, n) -> None:
    size = r.const(n, 2, "output shape")
    attrs = window_attrs(r, n) | ({} if size is None else
                                   {"output_size": [int(v) for v in size[2:]]})
    r.add(n, "max_unpool2d", attrs, [n.input[0], n.input[1]], n.output[0])


def _global_pool(r: Reader, n) -> None:
    r.add(n, "global_avg_pool2d" if "Average" in n.op_type else "global_max_pool2d", {},
          [n.input[0]], n.output[0])


def _reduce(r: Reader, n) -> None:
    axes = attr(n, "axes")
    if axes is None and len(n.input) > 1 and n.input[1]:
        axes = r.const(n, 1, "axes").tolist()
    rank = len(r.shape(n.input[0])) + 1
    if rank != 4 or sorted(a % 4 for a in axes or []) != [2, 3]:
        raise r.error(n, f"a reduction over axes {axes}; archc has it only as global pooling "
                      "(axes 2 and 3 of an N, C, H, W map)")
    op = "global_avg_pool2d" if n.op_type == "ReduceMean" else "global_max_pool2d"
    if attr(n, "keepdims", 1):
        r.add(n, op, {}, [n.input[0]], n.output[0])
        return
    pooled = r.add(n, op, {}, [n.input[0]], n.output[0] + "/pooled")
    r.add(n, "flatten", {}, [n.output[0] + "/pooled"], n.output[0], name=pooled + "_flat")


def _batchnorm(r: Reader, n) -> None:
    if attr(n, "training_mode", 0):
        raise r.error(n, "a batch norm in training mode; export the model in eval mode")
    scale, bias, mean, var = (r.const(n, i, what) for i, what in
                              ((1, "scale"), (2, "bias"), (3, "mean"), (4, "variance")))
    rank = len(r.shape(n.input[0])) + 1
    params = {"weight": scale, "bias": bias, "running_mean": mean, "running_var": var,
              "num_batches_tracked": np.zeros((), np.int64)}
    r.add(n, "batchnorm2d" if rank == 4 else "batchnorm1d",
          {"eps": attr(n, "epsilon", 1e-5), "momentum": round(1 - attr(n, "momentum", 0.9), 7)},
          [n.input[0]], n.output[0], params)


def _layernorm(r: Reader, n, x: str, output: str, op: str) -> None:
    scale, bias = r.const(n, 1, "scale"), r.const(n, 2, "bias")
    if bias is None:
        bias = np.zeros_like(scale)
    r.add(n, op, {"eps": attr(n, "epsilon", 1e-5)}, [x], output,
          {"weight": scale, "bias": bias})


def _layernorm_plain(r: Reader, n) -> None:
    rank = len(r.shape(n.input[0])) + 1
    if rank != 2 or attr(n, "axis", -1) not in (-1, 1):
        raise r.error(n, "layer normalisation over the trailing axes of a map; archc "
                      "normalises over the channels (Transpose to channels-last around it)")
    _layernorm(r, n, n.input[0], n.output[0], "layernorm")


def _transpose(r: Reader, n) -> None:
    perm = list(attr(n, "perm"))
    rank = len(perm)
    norm = r.single_user(n.output[0], "LayerNormalization")
    back = norm and r.single_user(norm.output[0], "Transpose")
    if (rank >= 3 and perm == [0] + list(range(2, rank)) + [1] and back is not None
            and list(attr(back, "perm")) == [0, rank - 1] + list(range(1, rank - 1))
            and attr(norm, "axis", -1) in (-1, rank - 1)):
        r.done.update((id(norm), id(back)))  # channels-last layer norm: normalises channels
        _layernorm(r, norm, n.input[0], back.output[0], "layernorm2d")
        return
    r.add(n, "permute", {"dims": perm}, [n.input[0]], n.output[0])


def _reshape_target(r: Reader, n, shape_in: tuple) -> tuple:
    """The output shape (batch aside) of a Reshape to a constant target, read as ONNX
    does (0 copies the input's size, -1 takes what is left) for a batch of PROBE_BATCH."""
    target = [int(v) for v in r.const(n, 1, "target shape")]
    full = (PROBE_BATCH,) + shape_in
    if not attr(n, "allowzero", 0):
        target = [full[i] if v == 0 else v for i, v in enumerate(target)]
    if target.count(-1) == 1:
        known = math.prod(v for v in target if v != -1)
        target[target.index(-1)] = math.prod(full) // max(known, 1)
    if not target or target[0] != PROBE_BATCH or math.prod(target) != math.prod(full):
        raise r.error(n, f"it reshapes {full} to {tuple(target)} for a batch of "
                      f"{PROBE_BATCH}: the batch does not stay the first axis, which archc's "
                      "reshape keeps")
    return tuple(target[1:])


def _reshape(r: Reader, n) -> None:
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


def _channel_shuffle(r: Reader, n, shape_in, shape_out) -> bool:
    """Reshape (g, C/g, ...) -> Transpose(swap the two) -> Reshape back: channel shuffle."""
    swap = r.single_user(n.output[0], "Transpose")
    back = swap and r.single_user(swap.output[0], "Reshape")
    if (back is None or len(shape_out) != len(shape_in) + 1 or len(shape_in) < 2
            or shape_out[0] * shape_out[1] != shape_in[0] or shape_out[2:] != shape_in[1:]
            or list(attr(swap, "perm")) != [0, 2, 1] + list(range(3, len(shape_out) + 1))
            or _reshape_target(r, back, shape_out[1:2] + shape_out[:1] + shape_out[2:])
            != shape_in):
        return False
    r.done.update((id(swap), id(back)))
    r.add(n, "channel_shuffle", {"groups": shape_out[0]}, [n.input[0]], back.output[0])
    return True


def _flatten(r: Reader, n) -> None:
    axis = attr(n, "axis", 1)
    if axis != 1:
        raise r.error(n, f"Flatten with axis {axis} folds the batch into the features; "
                      "archc keeps the batch apart (axis 1)")
    r.add(n, "flatten", {}, [n.input[0]], n.output[0])


def _merge(r: Reader, n) -> None:
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


def _mean(r: Reader, n) -> None:
    if any(t in r.consts for t in n.input) or len(n.input) < 2:
        raise r.error(n, "Mean imports as a join of two or more tensors computed by layers")
    r.add(n, "join", {}, list(n.input), n.output[0])


def _concat(r: Reader, n) -> None:
    rank = len(r.shape(n.input[0])) + 1
    r.add(n, "concat", {"dim": r.axis(n, attr(n, "axis"), rank)}, list(n.input), n.output[0])


def _slices(r: Reader, n, x: str, axis: int, ranges: list[tuple[int, int]], outputs) -> None:
    size = r.shape(x)[axis - 1]
    for (start, end), output in zip(ranges, outputs):
        start, end = (v + size if v < 0 else v for v in (start, end))
        r.add(n, "slice", {"start": start, "end": min(end, size), "dim": axis}, [x], output)


def _slice(r: Reader, n) -> None:
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


def _split(r: Reader, n) -> None:
    rank = len(r.shape(n.input[0])) + 1
    axis = r.axis(n, attr(n, "axis", 0), rank)
    sizes = attr(n, "split")
    if sizes is None and len(n.input) > 1 and n.input[1]:
        sizes = r.const(n, 1, "split").tolist()
    if sizes is None:
        sizes = [r.shape(o)[axis - 1] for o in n.output]
    bounds = np.cumsum([0] + list(sizes)).tolist()
    _slices(r, n, n.input[0], axis, list(zip(bounds[:-1], bounds[1:])), list(n.output))


def _resize(r: Reader, n) -> None:
    mode, coords = attr(n, "mode", "nearest"), attr(n, "coordinate_transformation_mode",
                                                      "half_pixel")
    attrs: dict = {}
    if mode == "nearest" and coords == "asymmetric" and attr(n, "nearest_mode",
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


def _clip(r: Reader, n) -> None:
    low, high = r.const(n, 1, "minimum"), r.const(n, 2, "maximum")
    low = attr(n, "min", -np.inf) if low is None else float(low)
    high = attr(n, "max", np.inf) if high is None else float(high)
    if low == 0 and high == 6:
        r.add(n, "relu6", {}, [n.input[0]], n.output[0])
    elif low == 0 and high == np.inf:
        r.add(n, "relu", {}, [n.input[0]], n.output[0])
    else:
        raise r.error(n, f"clipping to [{low}, {high}] has no archc layer (relu6 clips to [0, 6])")


def _sigmoid(r: Reader, n) -> None:
    mul = r.single_user(n.output[0], "Mul")
    if mul is not None and sorted(mul.input) == sorted([n.input[0], n.output[0]]):
        r.done.add(id(mul))  # x * sigmoid(x)
        r.add(n, "silu", {}, [n.input[0]], mul.output[0])
        return
    r.add(n, "sigmoid", {}, [n.input[0]], n.output[0])


def _softplus(r: Reader, n) -> None:
    tanh = r.single_user(n.output[0], "Tanh")
    mul = tanh and r.single_user(tanh.output[0], "Mul")
    if mul is not None and sorted(mul.input) == sorted([n.input[0], tanh.output[0]]):
        r.done.update((id(tanh), id(mul)))  # x * tanh(softplus(x)), as torch.onnx writes Mish
        r.add(n, "mish", {}, [n.input[0]], mul.output[0])
        return
    r.add(n, "softplus", {}, [n.input[0]], n.output[0])


def _is_scalar(r: Reader, node, value: float) -> str | None:
    """The non-constant input of ``node`` when its other input is the scalar ``value``."""
    if node is None or len(node.input) != 2:
        return None
    for a, b in (node.input, node.input[::-1]):
        if b in r.consts and r.consts[b].size == 1 and math.isclose(
                float(r.consts[b].reshape(())), value, rel_tol=1e-6) and a not in r.consts:
            return a
    return None


def _gelu_by_erf(r: Reader, n) -> None:
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
    def rule(r: Reader, n) -> None:
        attrs = {key: read(n) for key, read in fixed.items()}
        r.add(n, op, attrs, [n.input[0]], n.output[0])
    return rule


def _one_operator(layer):
    """The rule of an operator that is exactly ``layer`` (its registry entry's ``onnx``),
    its attributes renamed, absent ones at archc's defaults."""
    defaults = {a.name: a.default for a in layer.attrs}
    return _activation(layer.op, **{ours: (lambda n, o=ours, t=theirs: attr(n, t, defaults[o]))
                                    for ours, theirs in layer.onnx.attrs})


def _hardsigmoid(r: Reader, n) -> None:
    if not (math.isclose(attr(n, "alpha", 0.2), 1 / 6, rel_tol=1e-5)
            and math.isclose(attr(n, "beta", 0.5), 0.5)):
        raise r.error(n, "HardSigmoid with alpha/beta other than PyTorch's (1/6, 1/2)")
    r.add(n, "hardsigmoid", {}, [n.input[0]], n.output[0])


def _softmax(r: Reader, n) -> None:
    rank = len(r.shape(n.input[0])) + 1
    r.add(n, "softmax", {"dim": r.axis(n, attr(n, "axis", -1), rank)}, [n.input[0]],
          n.output[0])


def _dropout(r: Reader, n) -> None:
    ratio = r.const(n, 1, "ratio")
    p = float(str(np.float32(ratio))) if ratio is not None else attr(n, "ratio", 0.5)
    r.add(n, "dropout", {"p": p}, [n.input[0]], n.output[0])


def _identity(r: Reader, n) -> None:
    if n.output[0] in r.graph_outputs and n.input[0] in r.layer_of:
        r.layer_of[n.output[0]] = r.layer_of[n.input[0]]  # names an output: no layer
        return
    r.add(n, "identity", {}, [n.input[0]], n.output[0])


def _lrn(r: Reader, n) -> None:
    size = attr(n, "size")
    if size % 2 == 0:
        raise r.error(n, "an even LRN window, which ONNX centres differently from PyTorch")
    r.add(n, "local_response_norm", {"size": size, "alpha": attr(n, "alpha", 1e-4),
                                     "beta": attr(n, "beta", 0.75), "k": attr(n, "bias", 1.0)},
          [n.input[0]], n.output[0])


RULES: dict[str, Callable[[Reader, object], None]] = {
    "Conv": _conv, "ConvTranspose": _conv, "Gemm": _gemm, "MatMul": _matmul,
    "MaxPool": _pool, "AveragePool": _pool, "MaxUnpool": _max_unpool,
    "GlobalAveragePool": _global_pool, "GlobalMaxPool": _global_pool,
    "ReduceMean": _reduce, "ReduceMax": _reduce,
    "BatchNormalization": _batchnorm, "LayerNormalization": _layernorm_plain, "LRN": _lrn,
    "Clip": _clip,
    "Gelu": _activation("gelu", approximate=lambda n: attr(n, "approximate", "none")),
    "Div": _gelu_by_erf, "Sigmoid": _sigmoid, "Softplus": _softplus,
    "HardSigmoid": _hardsigmoid, "Softmax": _softmax,
    "Add": _merge, "Sum": _merge, "Mul": _merge, "Mean": _mean, "Concat": _concat,
    "Flatten": _flatten, "Reshape": _reshape, "Transpose": _transpose,
    "Slice": _slice, "Split": _split, "Resize": _resize,
    "Dropout": _dropout, "Identity": _identity,
}


READ_FROM: dict[str, tuple[str, ...]] = {
    "mish": ("Softplus",),  # with the Tanh and Mul that follow it
    "conv2d": ("Conv",), "conv_transpose2d": ("ConvTranspose",), "linear": ("Gemm", "MatMul"),
    "max_pool2d": ("MaxPool",), "avg_pool2d": ("AveragePool",), "max_unpool2d": ("MaxUnpool",),
    "global_avg_pool2d": ("GlobalAveragePool", "ReduceMean"),
    "global_max_pool2d": ("GlobalMaxPool", "ReduceMax"),
    "batchnorm2d": ("BatchNormalization",), "batchnorm1d": ("BatchNormalization",),
    "layernorm": ("LayerNormalization",), "layernorm2d": ("Transpose",),
    "local_response_norm": ("LRN",), "layer_scale": ("Mul",),
    "relu": ("Clip",), "relu6": ("Clip",), "gelu": ("Gelu", "Div"), "silu": ("Sigmoid",),
    "hardsigmoid": ("HardSigmoid",), "softmax": ("Softmax",),
    "add": ("Add", "Sum"), "multiply": ("Mul",), "join": ("Mean",), "concat": ("Concat",),
    "flatten": ("Flatten", "Reshape"), "reshape": ("Reshape",), "permute": ("Transpose",),
    "channel_shuffle": ("Reshape",), "slice": ("Slice", "Split"), "upsample": ("Resize",),
    "dropout": ("Dropout",), "identity": ("Identity",),
}


"""The ONNX operators (the first of a composition) that import as each layer type, beside
those of registry entries with an ``onnx`` operator; archc's own files read every layer
back through their notes."""


NOT_READ: dict[str, str] = {
    "adaptive_avg_pool2d": "written as pooling (even bins) or slices and means, which import "
                           "as those",
    "adaptive_max_pool2d": "written as pooling (even bins) or slices and maxima, which import "
                           "as those",
    "unpool2d": "written as a nearest Resize or a scatter composition, which import as those",
    "center_crop": "written as two slices, which import as slices",
    "stochastic_depth": "nothing at inference: ONNX has no operator for it",
    "roi_align": "written as RoiAlign after a reshape of the boxes and their image indices "
                 "(and a level choice for a pyramid), which import does not gather back",
    "roi_pool": "written as MaxRoiPool after a reshape of the boxes and their image indices, "
                "which import does not gather back",
}


"""Layer types that only archc's own files (their notes) read back, and why."""


for _layer in REGISTRY.values():  # the operators that are one registry entry each
    if _layer.onnx is not None and _layer.onnx.op_type not in RULES:
        RULES[_layer.onnx.op_type] = _one_operator(_layer)
    if _layer.onnx is not None:
        READ_FROM.setdefault(_layer.op, (_layer.onnx.op_type,))


"""How each ONNX operator (or the composition it starts) becomes archc layers."""


