"""Element-wise activations and softmax: the output shape is the input shape."""

from __future__ import annotations

from archc.layers.base import Attr, Choice, Float, Int, LayerType, ShapeError, fmt_shape


def same_shape(attrs: dict, inputs: list) -> tuple[int, ...]:
    (x,) = inputs
    return tuple(x)


def _activation(op: str, doc: str, attrs: tuple = (), positional: tuple = (), example: str = "",
                aliases: tuple = ()) -> LayerType:
    return LayerType(
        op=op,
        family="activation",
        doc=doc,
        attrs=attrs,
        infer_shape=same_shape,
        example=example or f"- {op}",
        positional=positional,
        aliases=aliases,
    )


def _softmax_shape(attrs: dict, inputs: list) -> tuple[int, ...]:
    (x,) = inputs
    if not 1 <= attrs["dim"] <= len(x):
        raise ShapeError(
            f"dim {attrs['dim']} does not exist in a {len(x) + 1}-d tensor N x {fmt_shape(x)} "
            f"(dim 0 is the batch)",
            input_index=0,
        )
    return tuple(x)


LAYERS = (
    _activation("relu", "Rectified linear unit: `max(0, x)`."),
    _activation("relu6", "ReLU capped at 6: `min(max(0, x), 6)` (MobileNet)."),
    _activation(
        "leaky_relu",
        "Leaky ReLU: `x` if `x > 0` else `negative_slope * x`.",
        (Attr("negative_slope", Float(), 0.01, "slope for negative inputs"),),
        ("negative_slope",),
        "- leaky_relu: 0.1",
    ),
    _activation(
        "gelu",
        "Gaussian error linear unit: `x * Phi(x)`; `approximate: tanh` uses the tanh formula.",
        (Attr("approximate", Choice(("none", "tanh")), "none", "exact or tanh approximation"),),
        ("approximate",),
    ),
    _activation("silu", "Sigmoid linear unit (swish): `x * sigmoid(x)`.", aliases=("swish",)),
    _activation("hardswish", "Hard swish: `x * relu6(x + 3) / 6` (MobileNetV3)."),
    _activation("hardsigmoid", "Hard sigmoid: `relu6(x + 3) / 6`."),
    _activation("sigmoid", "Logistic sigmoid: `1 / (1 + exp(-x))`."),
    _activation("tanh", "Hyperbolic tangent: `(e^x - e^-x) / (e^x + e^-x)`, in (-1, 1)."),
    LayerType(
        op="softmax",
        family="activation",
        doc="Softmax along `dim` (1 = channels/classes, as in PyTorch with the batch at 0).",
        attrs=(Attr("dim", Int(), 1, "the axis that sums to one (0 is the batch)"),),
        infer_shape=_softmax_shape,
        example="- softmax",
        positional=("dim",),
    ),
)
