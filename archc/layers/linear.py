"""Fully connected layers and the regularisers that sit between them."""

from __future__ import annotations

from archc.layers.activation import same_shape
from archc.layers.base import (
    Attr,
    Bool,
    Choice,
    Float,
    Int,
    LayerType,
    Optional,
    check_declared,
    need_rank,
    weight_and_bias,
)


def _linear_shape(attrs: dict, inputs: list) -> tuple[int]:
    (x,) = inputs
    need_rank(x, 1, "linear", hint="add a 'flatten' (or global pooling + flatten) before it")
    check_declared(attrs, "in_features", x[0], "features")
    return (attrs["out_features"],)


def _linear_params(attrs: dict, inputs: list) -> dict:
    out = attrs["out_features"]
    return weight_and_bias((out, inputs[0][0]), out, attrs["bias"])


LINEAR = LayerType(
    op="linear",
    family="linear",
    doc="Fully connected layer: `y = W x + b` on a flat feature vector; weight laid out "
    "(out_features, in_features) as in PyTorch.",
    attrs=(
        Attr("out_features", Int(minimum=1), doc="number of outputs"),
        Attr("bias", Bool(), True, "add a learned bias"),
        Attr("in_features", Optional(Int(minimum=1)), None, "optional check of the input size"),
    ),
    infer_shape=_linear_shape,
    example="- linear: 10",
    positional=("out_features",),
    parameters=_linear_params,
)

DROPOUT = LayerType(
    op="dropout",
    family="regularize",
    doc="Dropout: in training, zero each element with probability `p` and scale the rest "
    "by `1 / (1 - p)`; identity in inference.",
    attrs=(Attr("p", Float(minimum=0.0, maximum=1.0, below_maximum=True), 0.5, "drop probability"),),
    infer_shape=same_shape,
    example="- dropout: 0.5",
    positional=("p",),
)

STOCHASTIC_DEPTH = LayerType(
    op="stochastic_depth",
    family="regularize",
    doc="Stochastic depth (drop path): in training, zero a whole sample's residual branch with "
    "probability `p` (`mode: row`) or the whole batch's (`mode: batch`), scaling survivors "
    "by `1 / (1 - p)`; identity in inference.",
    attrs=(
        Attr("p", Float(minimum=0.0, maximum=1.0, below_maximum=True), doc="drop probability"),
        Attr("mode", Choice(("row", "batch")), "row", "drop per sample or per batch"),
    ),
    infer_shape=same_shape,
    example="- stochastic_depth: {p: 0.1}",
    positional=("p",),
)

LAYERS = (LINEAR, DROPOUT, STOCHASTIC_DEPTH)
