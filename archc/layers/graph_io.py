"""The graph input: a node with no inputs whose shape is declared in the spec."""

from __future__ import annotations

from archc.layers.base import Attr, Ints, LayerType, ShapeError
from archc.layers.costs import Cost, pointwise_rf, zero


def _input_shape(attrs: dict, inputs: list) -> tuple[int, ...]:
    shape = attrs["shape"]
    if len(shape) not in (1, 2, 3):
        raise ShapeError("an input is [channels, height, width], [features] or [rows, "
                         f"columns] (boxes: [R, 4]), got {list(shape)}")
    return shape


INPUT = LayerType(
    op="input",
    label=lambda a: "input " + "x".join(map(str, a["shape"])),
    family="io",
    doc="A graph input (batch dimension implicit). Declared under `input:` or `inputs:`.",
    attrs=(Attr("shape", Ints(minimum=1), doc="[channels, height, width], [features] or "
                              "[rows, columns] (a region layer's boxes: [R, 4])"),),
    infer_shape=_input_shape,
    example="input: {channels: 3, height: 224, width: 224}",
    arity=(0, 0),
    internal=True,
    cost=Cost(zero, zero, "The data fed in: no computation."),
    receptive_field=pointwise_rf,
)

LAYERS = (INPUT,)
