"""Merge nodes: several inputs, one output (residual add, concatenation, gating)."""

from __future__ import annotations

from archc.layers.base import (Attr, Float, Int, Ints, LayerType, Optional, ShapeError,
                               fmt_shape)
from archc.layers.costs import Cost, numel, pointwise_rf, saves_inputs, zero


def _merge_flops(attrs: dict, inputs: list, out: tuple) -> int:
    return (len(inputs) - 1) * numel(out)


def _equal_shapes(inputs: list, hint: str) -> tuple[int, ...]:
    first = tuple(inputs[0])
    for i, shape in enumerate(inputs[1:], start=1):
        if tuple(shape) != first:
            raise ShapeError(
                f"expected {fmt_shape(first)} (the shape of input 1), got {fmt_shape(shape)}",
                input_index=i, hint=hint)
    return first


def _add_shape(attrs: dict, inputs: list) -> tuple[int, ...]:
    return _equal_shapes(inputs, "add needs equal shapes; a residual shortcut that changes "
                         "channels or size needs a 1x1 conv (stride 2 when the size halves)")


def broadcast(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...] | None:
    """NumPy broadcasting of two shapes of equal rank; None if they do not broadcast."""
    if len(a) != len(b):
        return None
    out = []
    for x, y in zip(a, b):
        if x != y and 1 not in (x, y):
            return None
        out.append(max(x, y))
    return tuple(out)


def _multiply_shape(attrs: dict, inputs: list) -> tuple[int, ...]:
    out = tuple(inputs[0])
    for i, shape in enumerate(inputs[1:], start=1):
        merged = broadcast(out, tuple(shape))
        if merged is None:
            raise ShapeError(
                f"shape {fmt_shape(shape)} does not broadcast with {fmt_shape(out)}",
                input_index=i,
                hint="each dimension must be equal or 1 (e.g. Cx1x1 gates CxHxW in "
                "squeeze-excitation)",
            )
        out = merged
    return out


def _concat_shape(attrs: dict, inputs: list) -> tuple[int, ...]:
    dim = attrs["dim"]
    first = tuple(inputs[0])
    if not 1 <= dim <= len(first):
        raise ShapeError(
            f"dim {dim} does not exist in N x {fmt_shape(first)} (dim 0 is the batch)",
            input_index=0,
        )
    axis = dim - 1
    total = 0
    for i, shape in enumerate(inputs):
        shape = tuple(shape)
        rest = shape[:axis] + shape[axis + 1 :]
        if len(shape) != len(first) or rest != first[:axis] + first[axis + 1 :]:
            expected = list(first)
            expected[axis] = "*"
            raise ShapeError(
                f"shape {fmt_shape(shape)} cannot be concatenated along dim {dim} with "
                f"{fmt_shape(first)}: expected {'x'.join(map(str, expected))}",
                input_index=i,
                hint="all inputs of a concat must agree on every dimension except the "
                "concatenated one",
            )
        total += shape[axis]
    out = list(first)
    out[axis] = total
    return tuple(out)


ADD = LayerType(
    op="add",
    label=lambda a: "+",
    family="merge",
    doc="Element-wise sum of two or more inputs of the same shape (residual connections). "
    "A list value gives the inputs: `add: [-1, shortcut]`.",
    attrs=(),
    infer_shape=_add_shape,
    example="- add: [-1, shortcut]",
    arity=(2, None),
    cost=Cost(_merge_flops, zero, "inputs - 1 adds per output element. Saves nothing."),
    receptive_field=pointwise_rf,
)

MULTIPLY = LayerType(
    op="multiply",
    label=lambda a: "\u00d7",
    family="merge",
    doc="Element-wise product with broadcasting (a Cx1x1 gate scales a CxHxW map, as in "
    "squeeze-excitation).",
    attrs=(),
    infer_shape=_multiply_shape,
    example="- multiply: [features, gate]",
    arity=(2, None),
    cost=Cost(_merge_flops, lambda a, i, o: saves_inputs(*range(len(i)))(a, i, o),
              "inputs - 1 multiplies per output element. Saves its inputs."),
    receptive_field=pointwise_rf,
)

CONCAT = LayerType(
    op="concat",
    label=lambda a: "concat" if a["dim"] == 1 else f"concat dim {a['dim']}",
    family="merge",
    doc="Concatenate inputs along `dim` (1 = channels, the batch is 0), as Inception "
    "modules, DenseNet and U-Net skips do.",
    attrs=(Attr("dim", Int(), 1, "the axis to join along (0 is the batch)"),),
    infer_shape=_concat_shape,
    example="- concat: [branch1, branch2, branch3]",
    arity=(2, None),
    cost=Cost(zero, zero, "Copies its inputs side by side: 0 FLOPs. Saves nothing."),
    receptive_field=pointwise_rf,
)

def _join_shape(attrs: dict, inputs: list) -> tuple[int, ...]:
    shape = _equal_shapes(inputs, "join takes the mean of columns of one shape: give every "
                          "column the same channels and pool them alike")
    columns = attrs.get("columns")
    if columns is not None and len(columns) != len(inputs):
        raise ShapeError(f"{len(columns)} columns named for {len(inputs)} inputs",
                         hint="columns gives each input's column (0 = the shallowest), one "
                         "per input, for global drop-path")
    count = attrs.get("column_count")
    if columns is not None and count is not None and max(columns) >= count:
        raise ShapeError(f"column {max(columns)} of a network of {count} columns",
                         hint="column_count is the number of columns of the whole network")
    return shape


JOIN = LayerType(
    op="join",
    label=lambda a: "join" + (f" drop {a['drop_path']:g}" if a["drop_path"] else ""),
    family="merge",
    doc="FractalNet's join: the element-wise mean of its inputs (columns of a fractal "
    "block). In training, drop-path: each input is dropped with probability `drop_path` "
    "(local; one is always kept) and the mean taken over those left, per sample; a "
    "`global_drop` fraction of the samples instead keeps one column of the whole network, "
    "drawn once per pass among `column_count`, each join keeping its input from that column "
    "(`columns` names each input's column). The mean of all inputs in inference.",
    attrs=(
        Attr("drop_path", Float(minimum=0.0, maximum=1.0, below_maximum=True), 0.0,
             "local drop-path: the probability of dropping each input"),
        Attr("global_drop", Float(minimum=0.0, maximum=1.0), 0.0,
             "the fraction of samples that keep a single column of the network"),
        Attr("columns", Optional(Ints(minimum=0)), None,
             "each input's column (default 0, 1, ...)"),
        Attr("column_count", Optional(Int(minimum=1)), None,
             "columns of the whole network, for global drop-path (default: this join's)"),
    ),
    infer_shape=_join_shape,
    example="- join: {drop_path: 0.15}\n  inputs: [deep, shallow]",
    arity=(2, None),
    cost=Cost(lambda a, i, o: len(i) * numel(o), zero,
              "inputs - 1 adds and one multiply per output element (inputs x weights in "
              "training). Saves its per-sample weights (a few bytes)."),
    receptive_field=pointwise_rf,
)

LAYERS = (ADD, MULTIPLY, CONCAT, JOIN)
