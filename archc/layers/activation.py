"""Element-wise activations and softmax: the output shape is the input shape."""

from __future__ import annotations

from archc.layers.base import Attr, Choice, Float, Int, LayerType, ShapeError, fmt_shape
from archc.layers.costs import (
    Cost,
    numel,
    per_output,
    pointwise_rf,
    saves_output,
    whole_input_rf,
)


def same_shape(attrs: dict, inputs: list) -> tuple[int, ...]:
    (x,) = inputs
    return tuple(x)


def _activation(op: str, doc: str, flops, how: str, attrs: tuple = (),
                positional: tuple = (), example: str = "", aliases: tuple = ()) -> LayerType:
    return LayerType(
        op=op,
        family="activation",
        doc=doc,
        attrs=attrs,
        infer_shape=same_shape,
        example=example or f"- {op}",
        positional=positional,
        aliases=aliases,
        cost=Cost(per_output(flops) if isinstance(flops, int) else flops, saves_output,
                  (f"{flops} per element ({how})" if isinstance(flops, int) else how)
                  + ". Saves one tensor of its output's size."),
        receptive_field=pointwise_rf,
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
    _activation("relu", "Rectified linear unit: `max(0, x)`.", 1, "a comparison"),
    _activation("relu6", "ReLU capped at 6: `min(max(0, x), 6)` (MobileNet).", 2,
                "two comparisons"),
    _activation(
        "leaky_relu",
        "Leaky ReLU: `x` if `x > 0` else `negative_slope * x`.",
        2, "a comparison and a multiply",
        (Attr("negative_slope", Float(), 0.01, "slope for negative inputs"),),
        ("negative_slope",),
        "- leaky_relu: 0.1",
    ),
    _activation(
        "gelu",
        "Gaussian error linear unit: `x * Phi(x)`; `approximate: tanh` uses the tanh formula.",
        lambda a, i, o: (5 if a["approximate"] == "none" else 9) * numel(o),
        "5 per element (divide by sqrt(2), erf, add 1, two multiplies); 9 for the tanh form "
        "(cube, scale, add, tanh, add 1, two multiplies)",
        (Attr("approximate", Choice(("none", "tanh")), "none", "exact or tanh approximation"),),
        ("approximate",),
    ),
    _activation("silu", "Sigmoid linear unit (swish): `x * sigmoid(x)`.", 5,
                "negate, exp, add, divide, multiply", aliases=("swish",)),
    _activation("hardswish", "Hard swish: `x * relu6(x + 3) / 6` (MobileNetV3).", 5,
                "add, two comparisons, multiply, divide"),
    _activation("hardsigmoid", "Hard sigmoid: `relu6(x + 3) / 6`.", 4,
                "add, two comparisons, divide"),
    _activation("sigmoid", "Logistic sigmoid: `1 / (1 + exp(-x))`.", 4,
                "negate, exp, add, divide"),
    _activation("tanh", "Hyperbolic tangent: `(e^x - e^-x) / (e^x + e^-x)`, in (-1, 1).", 1,
                "one tanh evaluation"),
    LayerType(
        op="softmax",
        family="activation",
        doc="Softmax along `dim` (1 = channels/classes, as in PyTorch with the batch at 0).",
        attrs=(Attr("dim", Int(), 1, "the axis that sums to one (0 is the batch)"),),
        infer_shape=_softmax_shape,
        example="- softmax",
        positional=("dim",),
        cost=Cost(per_output(5), saves_output, "5 per element (running max, subtract, exp, "
                  "sum, divide). Saves its output."),
        receptive_field=lambda a, i: pointwise_rf(a, i) if a["dim"] == 1 else whole_input_rf(a, i),
    ),
)
