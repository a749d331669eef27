"""One emitter per layer type (``EMITTERS``; a test fails when a registry entry has none):
a single ONNX operator where ONNX has one, a composition where it has none; the
element-wise activations from their registry entries (``ACTIVATIONS``)."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from archc.layers import FUSABLE_ACTIVATIONS, REGISTRY
from archc.layers.conv import resolve_padding
from archc.export.onnx.emitter import Emitter


def _clip(e: Emitter, x: str, low: float, high: float) -> str:
    return e.emit("Clip", [x, e.scalar(low), e.scalar(high)])


def _gelu(e: Emitter, x: str, attrs: dict) -> str:
    if attrs["approximate"] == "none":  # 0.5 x (1 + erf(x / sqrt 2)), as torch.onnx writes it
        erf = e.emit("Erf", [e.emit("Div", [x, e.scalar(math.sqrt(2.0))])])
        return e.emit("Mul", [e.emit("Mul", [x, e.emit("Add", [erf, e.scalar(1.0)])]),
                              e.scalar(0.5)])
    cube = e.emit("Mul", [e.emit("Mul", [x, x]), x])  # 0.5 x (1 + tanh(c (x + 0.044715 x^3)))
    inner = e.emit("Add", [x, e.emit("Mul", [cube, e.scalar(0.044715)])])
    tanh = e.emit("Tanh", [e.emit("Mul", [inner, e.scalar(math.sqrt(2.0 / math.pi))])])
    return e.emit("Mul", [e.emit("Mul", [x, e.scalar(0.5)]),
                          e.emit("Add", [tanh, e.scalar(1.0)])])


def _softplus(e: Emitter, x: str, attrs: dict) -> str:
    beta = attrs["beta"]
    if beta == 1.0:
        return e.emit("Softplus", [x])
    scaled = e.emit("Softplus", [e.emit("Mul", [x, e.scalar(beta)])])
    return e.emit("Div", [scaled, e.scalar(beta)])


def _one_operator(onnx_op) -> Callable[[Emitter, str, dict], str]:
    return lambda e, x, a: e.emit(onnx_op.op_type, [x],
                                  **{theirs: a[ours] for ours, theirs in onnx_op.attrs})


COMPOSED: dict[str, Callable[[Emitter, str, dict], str]] = {
    "relu6": lambda e, x, a: _clip(e, x, 0.0, 6.0),
    "gelu": _gelu,
    "silu": lambda e, x, a: e.emit("Mul", [x, e.emit("Sigmoid", [x])]),
    "hardsigmoid": lambda e, x, a: e.emit("HardSigmoid", [x], alpha=1.0 / 6.0, beta=0.5),
    "softplus": _softplus,
    # opset 17 has no Mish (18 does): x tanh(softplus(x)), as torch.onnx writes it
    "mish": lambda e, x, a: e.emit("Mul", [x, e.emit("Tanh", [e.emit("Softplus", [x])])]),
}


"""Activations written as something other than their registry entry's ONNX operator."""


ACTIVATIONS: dict[str, Callable[[Emitter, str, dict], str]] = {
    op: COMPOSED.get(op) or _one_operator(REGISTRY[op].onnx)
    for op in FUSABLE_ACTIVATIONS if op in COMPOSED or REGISTRY[op].onnx is not None
}


"""The emitter of each element-wise activation (as a layer and as a fused epilogue)."""


def _epilogue(e: Emitter, y: str, xs: list[str]) -> str:
    """A fused residual (second input) and activation, as separate operators."""
    if len(xs) > 1:
        y = e.emit("Add", [y, xs[1]])
    if e.node.attrs.get("activation") is not None:
        op, items = e.node.attrs["activation"]
        y = ACTIVATIONS[op](e, y, dict(items))
    return y


def _pair_pads(pads) -> list[int]:
    (top, bottom), (left, right) = pads
    return [top, left, bottom, right]


def _conv2d(e: Emitter, xs: list[str]) -> str:
    a = e.node.attrs
    pads = resolve_padding(a["padding"], a["kernel_size"], a["stride"], a["dilation"],
                           e.in_shapes[0][1:])
    inputs = [xs[0], e.param("weight")] + ([e.param("bias")] if a["bias"] else [])
    y = e.emit("Conv", inputs, kernel_shape=list(a["kernel_size"]), strides=list(a["stride"]),
               pads=_pair_pads(pads), dilations=list(a["dilation"]), group=a["groups"])
    return _epilogue(e, y, xs)


def _conv_transpose2d(e: Emitter, xs: list[str]) -> str:
    a = e.node.attrs
    inputs = [xs[0], e.param("weight")] + ([e.param("bias")] if a["bias"] else [])
    (ph, pw) = a["padding"]
    return e.emit("ConvTranspose", inputs, kernel_shape=list(a["kernel_size"]),
                  strides=list(a["stride"]), pads=[ph, pw, ph, pw],
                  output_padding=list(a["output_padding"]), dilations=list(a["dilation"]),
                  group=a["groups"])


def _window(a: dict) -> dict:
    (ph, pw) = a["padding"]
    return {"kernel_shape": list(a["kernel_size"]),
            "strides": list(a["stride"] or a["kernel_size"]), "pads": [ph, pw, ph, pw]}


def _max_pool2d(e: Emitter, xs: list[str]) -> str:
    a = e.node.attrs
    indices = e.node.name in e.model.unpool_sources
    return e.emit("MaxPool", xs, outputs=2 if indices else 1, dilations=list(a["dilation"]),
                  ceil_mode=int(a["ceil_mode"]), **_window(a))


def _avg_pool2d(e: Emitter, xs: list[str]) -> str:
    a = e.node.attrs
    return e.emit("AveragePool", xs, ceil_mode=int(a["ceil_mode"]),
                  count_include_pad=int(a["count_include_pad"]), **_window(a))


def _adaptive_pool(e: Emitter, xs: list[str]) -> str:
    """PyTorch's bins [floor(i n / out), ceil((i + 1) n / out)): plain pooling when they are
    even, else a slice and a reduction per bin, one axis at a time (mean and max of a
    rectangle are separable)."""
    (x,), (_, h, w) = xs, e.in_shapes[0]
    ho, wo = e.node.shape[1:]
    average = "avg" in e.node.op
    if h % ho == 0 and w % wo == 0:
        kernel = [h // ho, w // wo]
        return e.emit("AveragePool" if average else "MaxPool", [x], kernel_shape=kernel,
                      strides=kernel)
    reduce = "ReduceMean" if average else "ReduceMax"
    y = x
    for axis, size, out in ((2, h, ho), (3, w, wo)):
        if size == out:
            continue
        parts = []
        for i in range(out):
            start, end = (i * size) // out, -((-(i + 1) * size) // out)
            part = e.emit("Slice", [y, e.ints(f"start{axis}_{i}", [start]),
                                    e.ints(f"end{axis}_{i}", [end]), e.ints(f"axis{axis}", [axis])])
            parts.append(e.emit(reduce, [part], axes=[axis], keepdims=1))
        y = e.emit("Concat", parts, axis=axis) if len(parts) > 1 else parts[0]
    return y


def _global_pool(e: Emitter, xs: list[str]) -> str:
    return e.emit("GlobalAveragePool" if "avg" in e.node.op else "GlobalMaxPool", xs)


def _batch_sizes(e: Emitter, x: str, spatial) -> str:
    """(N, C, *spatial) with the batch and channels read off ``x`` at run time."""
    lead = e.emit("Shape", [x], start=0, end=2)
    return e.emit("Concat", [lead, e.ints("spatial", spatial)], axis=0)


def _max_unpool2d(e: Emitter, xs: list[str]) -> str:
    a = e.node.attrs
    pool = e.model.graph[e.node.inputs[1]]
    indices = next(n.output[1] for n in e.model.nodes if n.name == pool.name)
    size = _batch_sizes(e, xs[0], a["output_size"] or e.node.shape[1:])
    return e.emit("MaxUnpool", [xs[0], indices, size], **_window(a))


def _unpool2d(e: Emitter, xs: list[str]) -> str:
    (kh, kw), (c, h, w) = e.node.attrs["kernel_size"], e.in_shapes[0]
    if e.node.attrs["mode"] == "nearest":
        return e.emit("Resize", [xs[0], "", e.const("scales", [1, 1, kh, kw])], mode="nearest",
                      coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    # bed of nails: each value at the top-left of its k x k cell, zeros around it
    y = e.emit("Reshape", [xs[0], e.ints("cells", [0, c, h, 1, w, 1])])
    y = e.emit("Pad", [y, e.ints("pads", [0, 0, 0, 0, 0, 0, 0, 0, 0, kh - 1, 0, kw - 1])])
    return e.emit("Reshape", [y, e.ints("shape", [0, c, h * kh, w * kw])])


def _upsample(e: Emitter, xs: list[str]) -> str:
    """ONNX Resize maps output to input coordinates with the scale it is given, as PyTorch
    does: ``scales`` for a scale factor (1 / factor), ``sizes`` for a size (in / out)."""
    a = e.node.attrs
    if a["scale_factor"] is not None:
        scales, sizes = e.const("scales", [1.0, 1.0, *a["scale_factor"]]), ""
    else:
        scales, sizes = "", _batch_sizes(e, xs[0], e.node.shape[1:])
    if a["mode"] == "nearest":
        mode = {"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
                "nearest_mode": "floor"}
    else:
        mode = {"mode": "linear", "coordinate_transformation_mode":
                "align_corners" if a["align_corners"] else "half_pixel"}
    inputs = [xs[0], "", scales] + ([sizes] if sizes else [])
    return e.emit("Resize", inputs, **mode)


def _center_crop(e: Emitter, xs: list[str]) -> str:
    (_, h, w), (ho, wo) = e.in_shapes[0], e.node.shape[1:]
    top, left = (h - ho) // 2, (w - wo) // 2
    return e.emit("Slice", [xs[0], e.ints("starts", [top, left]),
                            e.ints("ends", [top + ho, left + wo]), e.ints("axes", [2, 3])])


def _affine(e: Emitter, channels: int) -> tuple[str, str]:
    if e.node.attrs.get("affine", e.node.attrs.get("elementwise_affine")):
        return e.param("weight"), e.param("bias")
    return e.const("ones", np.ones(channels)), e.const("zeros", np.zeros(channels))


def _batchnorm(e: Emitter, xs: list[str]) -> str:
    return _epilogue(e, _normalise(e, xs), xs)


def _normalise(e: Emitter, xs: list[str]) -> str:
    a, channels = e.node.attrs, e.in_shapes[0][0]
    scale, bias = _affine(e, channels)
    if a["track_running_stats"]:
        return e.emit("BatchNormalization", [xs[0], scale, bias, e.param("running_mean"),
                                             e.param("running_var")],
                      epsilon=a["eps"], momentum=1.0 - a["momentum"])
    # no running statistics: PyTorch normalises with the batch's own, in eval mode too
    axes = [0] + list(range(2, len(e.in_shapes[0]) + 1))
    centred = e.emit("Sub", [xs[0], e.emit("ReduceMean", [xs[0]], axes=axes, keepdims=1)])
    var = e.emit("ReduceMean", [e.emit("Mul", [centred, centred])], axes=axes, keepdims=1)
    y = e.emit("Div", [centred, e.emit("Sqrt", [e.emit("Add", [var, e.scalar(a["eps"])])])])
    if not a["affine"]:
        return y
    per_channel = (channels,) + (1,) * (len(e.in_shapes[0]) - 1)
    w = e.emit("Reshape", [scale, e.ints("per_channel", per_channel)])
    b = e.emit("Reshape", [bias, e.ints("per_channel", per_channel)])
    return e.emit("Add", [e.emit("Mul", [y, w]), b])


def _layernorm(e: Emitter, xs: list[str]) -> str:
    """layernorm normalises the last axis, as ONNX does; layernorm2d the channels (axis
    1), which move last and back."""
    rank = len(e.in_shapes[0]) + 1
    last_axis = e.node.op == "layernorm"
    scale, bias = _affine(e, e.in_shapes[0][-1 if last_axis else 0])
    if rank == 2 or last_axis:
        return e.emit("LayerNormalization", [xs[0], scale, bias], axis=-1,
                      epsilon=e.node.attrs["eps"])
    last = [0] + list(range(2, rank)) + [1]
    back = [0, rank - 1] + list(range(1, rank - 1))
    y = e.emit("Transpose", xs, perm=last)
    y = e.emit("LayerNormalization", [y, scale, bias], axis=-1, epsilon=e.node.attrs["eps"])
    return e.emit("Transpose", [y], perm=back)


def _local_response_norm(e: Emitter, xs: list[str]) -> str:
    a = e.node.attrs
    size = a["size"]
    if size % 2:  # ONNX's LRN window is PyTorch's for odd sizes
        return e.emit("LRN", xs, size=size, alpha=a["alpha"], beta=a["beta"], bias=a["k"])
    # even sizes: PyTorch puts size // 2 channels before and (size - 1) // 2 after
    x = xs[0]
    sq = e.emit("Unsqueeze", [e.emit("Mul", [x, x]), e.ints("axis", [1])])
    sq = e.emit("Pad", [sq, e.ints("pads", [0, 0, size // 2, 0, 0, 0, 0, (size - 1) // 2, 0, 0])])
    mean = e.emit("AveragePool", [sq], kernel_shape=[size, 1, 1])
    mean = e.emit("Squeeze", [mean, e.ints("axis", [1])])
    base = e.emit("Add", [e.emit("Mul", [mean, e.scalar(a["alpha"])]), e.scalar(a["k"])])
    return e.emit("Div", [x, e.emit("Pow", [base, e.scalar(a["beta"])])])


def _linear(e: Emitter, xs: list[str]) -> str:
    """Gemm on a vector; over the last axis of a channels-last map, MatMul by the weight
    transposed (kept (out, in), as PyTorch stores it) and Add the bias."""
    if len(e.in_shapes[0]) == 1:
        inputs = [xs[0], e.param("weight")] + ([e.param("bias")] if e.node.attrs["bias"] else [])
        return _epilogue(e, e.emit("Gemm", inputs, transB=1), xs)
    y = e.emit("MatMul", [xs[0], e.emit("Transpose", [e.param("weight")], perm=[1, 0])])
    if e.node.attrs["bias"]:
        y = e.emit("Add", [y, e.param("bias")])
    return _epilogue(e, y, xs)


def _nothing_at_inference(e: Emitter, xs: list[str]) -> str:
    return e.emit("Identity", xs)


def _regions(e: Emitter, boxes: str) -> tuple[str, str]:
    """A region layer's boxes (N, R, 4) as ONNX's lists: rois (N R, 4) and the image of
    each (int64, row // R)."""
    rois = e.emit("Reshape", [boxes, e.ints("rois_shape", [-1, 4])])
    count = e.emit("Shape", [rois], start=0, end=1)
    rows = e.emit("Range", [e.const("zero", 0, np.int64), e.emit("Squeeze", [count]),
                            e.const("one", 1, np.int64)])
    return rois, e.emit("Div", [rows, e.const("per_image", e.model.graph[boxes].shape[0],
                                              np.int64)])


def _roi_align(e: Emitter, xs: list[str]) -> str:
    """RoiAlign per map; with a pyramid, every box through every level and each kept from
    the level FPN assigns it (floor(k0 + log2(sqrt(area) / size + 1e-6)), clamped)."""
    a = e.node.attrs
    *maps, boxes = xs
    rois, images = _regions(e, boxes)
    (ph, pw), grid = a["output_size"], max(a["sampling_ratio"], 0)
    mode = "half_pixel" if a["aligned"] else "output_half_pixel"

    def align(x, scale):
        return e.emit("RoiAlign", [x, rois, images], mode="avg", output_height=ph,
                      output_width=pw, sampling_ratio=grid, spatial_scale=scale,
                      coordinate_transformation_mode=mode)

    if len(maps) == 1:
        return align(maps[0], a["spatial_scale"][0])
    first_out = e.emit("Split", [rois, e.ints("split", [1, 1, 1, 1])], outputs=4, axis=1)
    x1, y1, x2, y2 = [first_out] + [f"{first_out}:{k}" for k in range(1, 4)]
    area = e.emit("Relu", [e.emit("Mul", [e.emit("Sub", [x2, x1]), e.emit("Sub", [y2, y1])])])
    ratio = e.emit("Add", [e.emit("Div", [e.emit("Sqrt", [area]),
                                          e.scalar(float(a["canonical_size"]))]),
                           e.scalar(1e-6)])
    first = round(-math.log2(a["spatial_scale"][0]))
    k = e.emit("Floor", [e.emit("Add", [e.emit("Div", [e.emit("Log", [ratio]),
                                                         e.scalar(math.log(2.0))]),
                                        e.scalar(float(a["canonical_level"] - first))])])
    level = e.emit("Clip", [k, e.scalar(0.0), e.scalar(float(len(maps) - 1))])
    level = e.emit("Reshape", [level, e.ints("level_shape", [-1, 1, 1, 1])])
    y = None
    for i, (x, scale) in enumerate(zip(maps, a["spatial_scale"])):
        part = align(x, scale)
        y = part if y is None else e.emit(
            "Where", [e.emit("Equal", [level, e.scalar(float(i))]), part, y])
    return y


def _roi_pool(e: Emitter, xs: list[str]) -> str:
    a = e.node.attrs
    rois, images = _regions(e, xs[1])
    listed = e.emit("Concat", [e.emit("Unsqueeze", [e.emit("Cast", [images], to=1),
                                                     e.ints("axis", [1])]), rois], axis=1)
    return e.emit("MaxRoiPool", [xs[0], listed], pooled_shape=list(a["output_size"]),
                  spatial_scale=a["spatial_scale"][0])


def _reshape(e: Emitter, xs: list[str]) -> str:
    if e.node.op == "flatten":  # keep the leading axes, merge the rest
        shape = [0] * e.node.attrs["start_dim"] + [-1]
    else:
        shape = [0, *e.node.shape]
    return e.emit("Reshape", [xs[0], e.ints("shape", shape)])


def _channel_shuffle(e: Emitter, xs: list[str]) -> str:
    g, (c, *spatial) = e.node.attrs["groups"], e.in_shapes[0]
    y = e.emit("Reshape", [xs[0], e.ints("groups", [0, g, c // g, *spatial])])
    y = e.emit("Transpose", [y], perm=[0, 2, 1] + list(range(3, 3 + len(spatial))))
    return e.emit("Reshape", [y, e.ints("shape", [0, c, *spatial])])


def _slice(e: Emitter, xs: list[str]) -> str:
    a = e.node.attrs
    dim = a["dim"]
    size = e.in_shapes[0][dim - 1]
    end = size if a["end"] is None else a["end"]
    return e.emit("Slice", [xs[0], e.ints("starts", [a["start"]]), e.ints("ends", [end]),
                            e.ints("axes", [dim])])


def _chain(op_type: str):
    def emit(e: Emitter, xs: list[str]) -> str:
        y = xs[0]
        for x in xs[1:]:
            y = e.emit(op_type, [y, x])
        return y
    return emit


def _activation(op: str):
    return lambda e, xs: ACTIVATIONS[op](e, xs[0], e.node.attrs)


EMITTERS: dict[str, Callable[[Emitter, list[str]], str]] = {
    "conv2d": _conv2d,
    "conv_transpose2d": _conv_transpose2d,
    "max_pool2d": _max_pool2d,
    "avg_pool2d": _avg_pool2d,
    "global_avg_pool2d": _global_pool,
    "global_max_pool2d": _global_pool,
    "adaptive_avg_pool2d": _adaptive_pool,
    "adaptive_max_pool2d": _adaptive_pool,
    "max_unpool2d": _max_unpool2d,
    "unpool2d": _unpool2d,
    "upsample": _upsample,
    "center_crop": _center_crop,
    "roi_align": _roi_align,
    "roi_pool": _roi_pool,
    "batchnorm2d": _batchnorm,
    "batchnorm1d": _batchnorm,
    "layernorm2d": _layernorm,
    "layernorm": _layernorm,
    "local_response_norm": _local_response_norm,
    "layer_scale": lambda e, xs: e.emit("Mul", [xs[0], e.param("weight")]),
    **{op: _activation(op) for op in ACTIVATIONS},
    "softmax": lambda e, xs: e.emit("Softmax", xs, axis=e.node.attrs["dim"]),
    "linear": _linear,
    "dropout": _nothing_at_inference,
    "stochastic_depth": _nothing_at_inference,
    "identity": _nothing_at_inference,
    "add": _chain("Add"),
    "multiply": _chain("Mul"),
    "join": lambda e, xs: e.emit("Mean", xs),  # drop-path: training only
    "concat": lambda e, xs: e.emit("Concat", xs, axis=e.node.attrs["dim"]),
    "flatten": _reshape,
    "reshape": _reshape,
    "permute": lambda e, xs: e.emit("Transpose", xs, perm=list(e.node.attrs["dims"])),
    "channel_shuffle": _channel_shuffle,
    "slice": _slice,
}


"""ONNX emitter per layer type: (emitter, input tensor names) -> the output tensor's name."""
