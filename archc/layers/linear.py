"""Fully connected layers and the regularisers that sit between them."""

from __future__ import annotations

from archc.layers.activation import same_shape
from archc.layers.costs import Cost, numel, pointwise_rf, saves_inputs, whole_input_rf, zero
from archc.layers.epilogue import ACTIVATION_ATTR, epilogue_flops, epilogue_label, epilogue_saved
from archc.layers.base import (
    fan_in_uniform,
    Attr,
    Bool,
    Choice,
    Float,
    Int,
    LayerType,
    Optional,
    check_declared,
    weight_and_bias,
)


def _linear_shape(attrs: dict, inputs: list) -> tuple[int, ...]:
    (x,) = inputs
    check_declared(attrs, "in_features", x[-1], "features")
    return tuple(x[:-1]) + (attrs["out_features"],)


def _linear_params(attrs: dict, inputs: list) -> dict:
    out = attrs["out_features"]
    return weight_and_bias((out, inputs[0][-1]), out, attrs["bias"])


def _linear_rf(attrs: dict, inputs: list):
    """A vector's outputs see all of it; over the last axis of a map (channels-last),
    each position's outputs see that position."""
    return whole_input_rf(attrs, inputs) if len(inputs[0]) == 1 else pointwise_rf(attrs, inputs)


LINEAR = LayerType(
    op="linear",
    label=lambda a: f"linear {a['out_features']}" + epilogue_label(a),
    family="linear",
    doc="Fully connected layer: `y = W x + b` over the last axis, as PyTorch's Linear: a "
    "flat feature vector, or the channels of each position of a channels-last map (after "
    "`permute: [0, 2, 3, 1]`, as ConvNeXt's blocks are written); weight laid out "
    "(out_features, in_features) as in PyTorch. `activation` applies an activation to the "
    "output in the same kernel (fused).",
    attrs=(
        Attr("out_features", Int(minimum=1), doc="number of outputs"),
        Attr("bias", Bool(), True, "add a learned bias"),
        Attr("in_features", Optional(Int(minimum=1)), None, "optional check of the input size"),
        ACTIVATION_ATTR,
    ),
    infer_shape=_linear_shape,
    example="- linear: 10",
    positional=("out_features",),
    parameters=_linear_params,
    cost=Cost(
        macs=lambda a, i, o: numel(i[0]) * a["out_features"],
        flops=lambda a, i, o: (numel(o) if a["bias"] else 0) + epilogue_flops(a, i, o),
        saved=lambda a, i, o: saves_inputs(0)(a, i, o) + epilogue_saved(a, i, o),
        doc="MACs: in_features x out_features (per position over a map). Element-wise: one "
        "add per output for the bias, plus a fused activation's own count. Saves its input "
        "(and, with a fused activation, the value before it).",
    ),
    receptive_field=_linear_rf,
    init=fan_in_uniform,
    last_axis=True,
)

DROPOUT = LayerType(
    op="dropout",
    label=lambda a: f"dropout {a['p']:g}",
    family="regularize",
    doc="Dropout: in training, zero each element with probability `p` and scale the rest "
    "by `1 / (1 - p)`; identity in inference.",
    attrs=(Attr("p", Float(minimum=0.0, maximum=1.0, below_maximum=True), 0.5, "drop probability"),),
    infer_shape=same_shape,
    example="- dropout: 0.5",
    positional=("p",),
    cost=Cost(zero, lambda a, i, o: numel(o),
              "Inference: the identity, 0 FLOPs (training: a comparison and a multiply per "
              "element). Saves its mask in training, 1 byte per element."),
    receptive_field=pointwise_rf,
    view=True,
)

STOCHASTIC_DEPTH = LayerType(
    op="stochastic_depth",
    label=lambda a: f"drop path {a['p']:g}",
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
    cost=Cost(zero, lambda a, i, o: 1,
              "Inference: the identity, 0 FLOPs (training: one multiply per element). Saves "
              "one byte per sample (which samples were dropped)."),
    receptive_field=pointwise_rf,
    view=True,
)

LAYERS = (LINEAR, DROPOUT, STOCHASTIC_DEPTH)
