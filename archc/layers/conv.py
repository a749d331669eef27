"""Convolutions: ``conv2d`` and ``conv_transpose2d``, with the standard size formulas.

Output size of a convolution along one axis (PyTorch ``Conv2d`` documentation;
Dumoulin and Visin, "A guide to convolution arithmetic", 2016)::

    out = floor((in + pad_before + pad_after - dilation * (kernel - 1) - 1) / stride) + 1

and of a transposed convolution::

    out = (in - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1
"""

from __future__ import annotations

import math

from archc.layers.costs import IDENTITY_STEP, Cost, RFStep, numel, saves_inputs, window_rf
from archc.layers.epilogue import (
    ACTIVATION_ATTR,
    check_residual,
    epilogue_flops,
    epilogue_label,
    epilogue_saved,
)
from archc.layers.labels import conv_label
from archc.layers.base import (
    fan_in_uniform,
    Float,
    Init,
    Attr,
    AttrError,
    Bool,
    Int,
    LayerType,
    Optional,
    Padding,
    Pair,
    ShapeError,
    check_declared,
    fmt_shape,
    need_rank,
    weight_and_bias,
)


def conv_output_size(size: int, kernel: int, stride: int, pad_total: int, dilation: int) -> int:
    """One axis of a convolution or pooling window's output (floor mode).

    Examples
    --------
    >>> conv_output_size(32, 5, 1, 4, 1)  # 32x32, 5x5 filter, pad 2: '32x32x10' in the notes
    32
    >>> conv_output_size(224, 7, 2, 6, 1)
    112
    """
    return (size + pad_total - dilation * (kernel - 1) - 1) // stride + 1


def resolve_padding(
    padding: tuple[int, int] | str,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
    in_hw: tuple[int, int],
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Padding as ((top, bottom), (left, right)) for an explicit pair or a mode.

    - ``valid``: no padding.
    - ``full``: ``dilation * (kernel - 1)`` on each side (every partial overlap is an output).
    - ``same``: output size ``ceil(in / stride)``; the total padding is split with the
      extra pixel after (TensorFlow's rule; for stride 1 it equals PyTorch's ``'same'``).

    Examples
    --------
    >>> resolve_padding("same", (3, 3), (1, 1), (1, 1), (8, 8))
    ((1, 1), (1, 1))
    >>> resolve_padding("same", (3, 3), (2, 2), (1, 1), (8, 8))
    ((0, 1), (0, 1))
    """
    if isinstance(padding, tuple):
        return (padding[0], padding[0]), (padding[1], padding[1])
    sides = []
    for k, s, d, n in zip(kernel, stride, dilation, in_hw):
        span = d * (k - 1)
        if padding == "valid":
            sides.append((0, 0))
        elif padding == "full":
            sides.append((span, span))
        else:
            total = max((math.ceil(n / s) - 1) * s + span + 1 - n, 0)
            sides.append((total // 2, total - total // 2))
    return sides[0], sides[1]


def _check_groups(attrs: dict, in_channels: int) -> None:
    groups = attrs["groups"]
    if in_channels % groups:
        raise ShapeError(
            f"input has {in_channels} channels, which {groups} groups do not divide",
            input_index=0,
            hint="groups must divide both in and out channels; for a depthwise conv "
            "set groups to the number of input channels",
        )


def _validate_conv(attrs: dict) -> None:
    if attrs["out_channels"] % attrs["groups"]:
        raise AttrError(
            f"out_channels {attrs['out_channels']} is not divisible by groups {attrs['groups']}",
            attr="groups",
        )


def _conv2d_shape(attrs: dict, inputs: list) -> tuple[int, int, int]:
    shape = inputs[0]
    need_rank(shape, 3, "conv2d", hint="conv2d works on feature maps; is there a flatten before it?")
    c, h, w = shape
    check_declared(attrs, "in_channels", c, "channels")
    _check_groups(attrs, c)
    k, s, d = attrs["kernel_size"], attrs["stride"], attrs["dilation"]
    pads = resolve_padding(attrs["padding"], k, s, d, (h, w))
    out = tuple(
        conv_output_size(n, k[i], s[i], sum(pads[i]), d[i]) for i, n in enumerate((h, w))
    )
    if min(out) < 1:
        span = tuple(d[i] * (k[i] - 1) + 1 for i in range(2))
        raise ShapeError(
            f"the {span[0]}x{span[1]} window (kernel {k[0]}x{k[1]}, dilation {d[0]}) does not fit "
            f"in the {h}x{w} input with padding {pads[0][0]}x{pads[1][0]}: output would be "
            f"{out[0]}x{out[1]}",
            input_index=0,
            hint="use a larger input, padding, or a smaller kernel",
        )
    result = (attrs["out_channels"], out[0], out[1])
    check_residual(inputs, result, "conv2d")
    return result


def _conv2d_macs(attrs: dict, inputs: list, out: tuple) -> int:
    k = attrs["kernel_size"]
    return numel(out) * (inputs[0][0] // attrs["groups"]) * k[0] * k[1]


def _transpose_macs(attrs: dict, inputs: list, out: tuple) -> int:
    k = attrs["kernel_size"]  # every input element scatters a (C_out / groups) x k x k block
    return numel(inputs[0]) * (attrs["out_channels"] // attrs["groups"]) * k[0] * k[1]


def _bias_adds(attrs: dict, inputs: list, out: tuple) -> int:
    return numel(out) if attrs["bias"] else 0


def _conv2d_flops(attrs: dict, inputs: list, out: tuple) -> int:
    return _bias_adds(attrs, inputs, out) + epilogue_flops(attrs, inputs, out)


def _conv2d_saved(attrs: dict, inputs: list, out: tuple) -> int:
    return saves_inputs(0)(attrs, inputs, out) + epilogue_saved(attrs, inputs, out)


def _conv2d_rf(attrs: dict, inputs: list) -> RFStep | list:
    k, s, d = attrs["kernel_size"], attrs["stride"], attrs["dilation"]
    (top, _), (left, _) = resolve_padding(attrs["padding"], k, s, d, tuple(inputs[0][1:]))
    step = window_rf(k, s, d, (top, left))
    return [step, IDENTITY_STEP] if len(inputs) > 1 else step  # a residual: pixel to pixel


def _transpose_rf(attrs: dict, inputs: list) -> RFStep:
    # Output pixel o reads the inputs i with i * s - p + t * d = o for a tap t < k: at most
    # ceil(span / s) of them, centred on (o + p - (span - 1) / 2) / s.
    k, s, d, p = attrs["kernel_size"], attrs["stride"], attrs["dilation"], attrs["padding"]
    spans = [d[i] * (k[i] - 1) + 1 for i in range(2)]
    return RFStep(tuple(math.ceil(spans[i] / s[i]) for i in range(2)),
                  tuple(1 / s[i] for i in range(2)),
                  tuple((p[i] - (spans[i] - 1) / 2) / s[i] for i in range(2)))


def _conv2d_params(attrs: dict, inputs: list) -> dict:
    c = inputs[0][0]
    k, out = attrs["kernel_size"], attrs["out_channels"]
    return weight_and_bias((out, c // attrs["groups"], k[0], k[1]), out, attrs["bias"])


_CONV_HEAD = (
    Attr("out_channels", Int(minimum=1), doc="number of filters (output channels)"),
    Attr("kernel_size", Pair(), doc="filter size k or [kh, kw]"),
    Attr("stride", Pair(), (1, 1), "step between windows"),
)
_CONV_TAIL = (
    Attr("dilation", Pair(), (1, 1), "spacing between filter taps (atrous convolution)"),
    Attr("groups", Int(minimum=1), 1, "channel groups; = input channels for depthwise"),
    Attr("bias", Bool(), True, "add a learned bias per output channel"),
    Attr("in_channels", Optional(Int(minimum=1)), None, "optional check of the input channels"),
)

_CONV_LABEL = conv_label("conv")


def _conv2d_init(role: str, attrs: dict, shapes: dict) -> Init:
    if role == "bias" and attrs.get("bias_init") is not None:
        return Init(value=float(attrs["bias_init"]))
    return fan_in_uniform(role, attrs, shapes)

CONV2D = LayerType(
    op="conv2d",
    label=lambda a: _CONV_LABEL(a) + epilogue_label(a),
    family="conv",
    doc="2-D convolution (cross-correlation, as in PyTorch) over NCHW feature maps. "
    "`groups` splits channels into independent groups; `groups` equal to the input "
    "channels makes it depthwise. Padding is a number, `[ph, pw]`, `valid`, `same` "
    "(output `ceil(H/stride)`) or `full` (every partial overlap). Fused epilogue: an "
    "optional second input is added to the result (a residual connection) and `activation` "
    "applied to it, in the same kernel: `activation(conv(x) + bias + residual)`; the "
    "optimisation passes write these, a spec may too.",
    attrs=_CONV_HEAD
    + (Attr("padding", Padding(), (0, 0), "zeros added on each side, or valid | same | full"),)
    + _CONV_TAIL + (ACTIVATION_ATTR,
                    Attr("bias_init", Optional(Float()), None,
                         "the bias's starting value (default PyTorch's uniform draw), e.g. "
                         "RetinaNet's focal-loss prior -log(99)")),
    infer_shape=_conv2d_shape,
    example="- conv2d: {out_channels: 64, kernel_size: 3, stride: 1, padding: same}",
    positional=("out_channels", "kernel_size", "stride", "padding"),
    arity=(1, 2),
    validate=_validate_conv,
    parameters=_conv2d_params,
    cost=Cost(
        macs=_conv2d_macs,
        flops=_conv2d_flops,
        saved=_conv2d_saved,
        doc="MACs: C_in / groups x kh x kw per output element. Element-wise: one add per "
        "output element for the bias (none without bias), one for a residual input, plus "
        "a fused activation's own count. Saves its input (and, with a fused activation, "
        "the value before it).",
    ),
    receptive_field=_conv2d_rf,
    lower=lambda a, i, o: {"pads": resolve_padding(a["padding"], a["kernel_size"], a["stride"],
                                                   a["dilation"], tuple(i[0][1:]))},
    init=_conv2d_init,
)


def _validate_transpose(attrs: dict) -> None:
    _validate_conv(attrs)
    for i, axis in enumerate(("height", "width")):
        op_, s, d = attrs["output_padding"][i], attrs["stride"][i], attrs["dilation"][i]
        if op_ >= max(s, d):
            raise AttrError(
                f"output_padding {op_} along {axis} must be smaller than stride ({s}) "
                f"or dilation ({d})",
                attr="output_padding",
            )


def _transpose_shape(attrs: dict, inputs: list) -> tuple[int, int, int]:
    (shape,) = inputs
    need_rank(shape, 3, "conv_transpose2d")
    c, h, w = shape
    check_declared(attrs, "in_channels", c, "channels")
    _check_groups(attrs, c)
    k, s, d = attrs["kernel_size"], attrs["stride"], attrs["dilation"]
    p, op_ = attrs["padding"], attrs["output_padding"]
    out = tuple(
        (n - 1) * s[i] - 2 * p[i] + d[i] * (k[i] - 1) + op_[i] + 1 for i, n in enumerate((h, w))
    )
    if min(out) < 1:
        raise ShapeError(
            f"padding {p[0]}x{p[1]} removes more than the {h}x{w} input gives: output would be "
            f"{fmt_shape(out)}",
            input_index=0,
        )
    return (attrs["out_channels"], out[0], out[1])


def _transpose_params(attrs: dict, inputs: list) -> dict:
    c = inputs[0][0]
    k, out = attrs["kernel_size"], attrs["out_channels"]
    # PyTorch lays out transposed-conv weights as (in, out / groups, kh, kw).
    return weight_and_bias((c, out // attrs["groups"], k[0], k[1]), out, attrs["bias"])


CONV_TRANSPOSE2D = LayerType(
    op="conv_transpose2d",
    label=conv_label("deconv"),
    family="conv",
    doc="Transposed 2-D convolution ('deconvolution'): each input pixel scatters a weighted "
    "copy of the filter into the output; with stride s the map grows about s times. "
    "Output: `(H - 1) * stride - 2 * padding + dilation * (k - 1) + output_padding + 1`.",
    attrs=_CONV_HEAD
    + (
        Attr("padding", Pair(minimum=0), (0, 0), "implicit zero padding removed from the output"),
        Attr("output_padding", Pair(minimum=0), (0, 0), "extra rows/columns added on one side"),
    )
    + _CONV_TAIL,
    infer_shape=_transpose_shape,
    example="- conv_transpose2d: {out_channels: 64, kernel_size: 2, stride: 2}",
    positional=("out_channels", "kernel_size", "stride", "padding"),
    validate=_validate_transpose,
    parameters=_transpose_params,
    cost=Cost(
        macs=_transpose_macs,
        flops=_bias_adds,
        saved=saves_inputs(0),
        doc="MACs: C_out / groups x kh x kw per input element (each input pixel scatters a "
        "filter-sized block). Element-wise: one add per output element for the bias. "
        "Saves its input.",
    ),
    receptive_field=_transpose_rf,
    init=fan_in_uniform,
)

LAYERS = (CONV2D, CONV_TRANSPOSE2D)
