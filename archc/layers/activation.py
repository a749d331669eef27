"""Element-wise activations and softmax: the output shape is the input shape.

Each element-wise activation is one entry here (schema, cost, ONNX operator) and one
formula in ``runtime/backends/activations.py`` (its value and derivative, for every
backend); conv and linear layers can fuse any of them (:class:`Activation`).
"""

from __future__ import annotations

from typing import Any

from archc.errors import did_you_mean
from archc.layers.base import (
    Attr,
    AttrError,
    AttrType,
    Choice,
    Float,
    Int,
    LayerType,
    OnnxOp,
    ShapeError,
    describe,
    fmt_shape,
)
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
                positional: tuple = (), example: str = "", aliases: tuple = (),
                onnx: OnnxOp | None = None, validate=None) -> LayerType:
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
        elementwise=True,
        onnx=onnx,
        validate=validate,
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


def _positive_beta(attrs: dict) -> None:
    if attrs["beta"] <= 0:
        raise AttrError(f"'softplus' attribute 'beta' must be positive, got {attrs['beta']}",
                        attr="beta")


LAYERS = (
    _activation("relu", "Rectified linear unit: `max(0, x)`.", 1, "a comparison",
                onnx=OnnxOp("Relu")),
    _activation("relu6", "ReLU capped at 6: `min(max(0, x), 6)` (MobileNet).", 2,
                "two comparisons"),
    _activation(
        "leaky_relu",
        "Leaky ReLU: `x` if `x > 0` else `negative_slope * x`.",
        2, "a comparison and a multiply",
        (Attr("negative_slope", Float(), 0.01, "slope for negative inputs"),),
        ("negative_slope",),
        "- leaky_relu: 0.1",
        onnx=OnnxOp("LeakyRelu", (("negative_slope", "alpha"),)),
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
                "add, two comparisons, multiply, divide", onnx=OnnxOp("HardSwish")),
    _activation("hardsigmoid", "Hard sigmoid: `relu6(x + 3) / 6`.", 4,
                "add, two comparisons, divide"),
    _activation("sigmoid", "Logistic sigmoid: `1 / (1 + exp(-x))`.", 4,
                "negate, exp, add, divide", onnx=OnnxOp("Sigmoid")),
    _activation("tanh", "Hyperbolic tangent: `(e^x - e^-x) / (e^x + e^-x)`, in (-1, 1).", 1,
                "one tanh evaluation", onnx=OnnxOp("Tanh")),
    _activation(
        "softplus",
        "Softplus: `log(1 + exp(beta * x)) / beta`, a smooth ReLU; linear where "
        "`beta * x > 20` (PyTorch's threshold).",
        5, "multiply, exp, add 1, log, divide",
        (Attr("beta", Float(minimum=0.0), 1.0,
              "sharpness (larger: closer to ReLU); must be positive"),),
        ("beta",),
        "- softplus",
        onnx=OnnxOp("Softplus"),
        validate=_positive_beta,
    ),
    _activation("mish", "Mish: `x * tanh(softplus(x))` (Misra 2019; YOLOv4's backbone).", 7,
                "exp, add 1, log, tanh, multiply; softplus linear past 20"),
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


FUSABLE_ACTIVATIONS: tuple[str, ...] = tuple(layer.op for layer in LAYERS if layer.elementwise)
"""The activations a conv or linear layer can apply to its output in the same kernel."""

_FUSABLE = {layer.op: layer for layer in LAYERS if layer.elementwise}
_FUSABLE_ALIASES = {alias: layer.op for layer in _FUSABLE.values() for alias in layer.aliases}


class Activation(AttrType):
    """An activation fused into a layer's output: its name (``relu``), or a one-key mapping
    giving its attributes (``{leaky_relu: 0.2}``, ``{gelu: {approximate: tanh}}``).
    Normalised to ``(name, ((attribute, value), ...))`` with the activation's own schema
    (its registry entry), defaults filled in."""

    name = "activation name or {name: attributes}"

    def coerce(self, value: Any) -> tuple[str, tuple]:
        args: Any = {}
        if isinstance(value, dict) and len(value) == 1:
            ((value, args),) = value.items()
        if not isinstance(value, str):
            raise AttrError(f"expected an activation name such as relu, got {describe(value)}",
                            hint="e.g. activation: relu, or activation: {leaky_relu: 0.2}")
        op = _FUSABLE_ALIASES.get(value, value)
        if op not in _FUSABLE:
            raise AttrError(f"'{value}' is not an activation a layer can fuse (those are "
                            f"{', '.join(FUSABLE_ACTIVATIONS)})",
                            hint=did_you_mean(value, FUSABLE_ACTIVATIONS))
        layer = _FUSABLE[op]
        if args is None:
            args = {}
        if not isinstance(args, dict):
            if not layer.positional:
                raise AttrError(f"'{op}' takes no attributes, got {describe(args)}")
            args = {layer.positional[0]: args}
        return op, tuple(layer.normalize(args).items())


def activation_layer(attrs: dict) -> tuple[LayerType, dict] | None:
    """The registry entry and attributes of a layer's fused activation, or None."""
    if attrs.get("activation") is None:
        return None
    op, items = attrs["activation"]
    return _FUSABLE[op], dict(items)
