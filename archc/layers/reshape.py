"""Layers that move values around without arithmetic: flatten, reshape, permute, shuffle."""

from __future__ import annotations

import math

from archc.layers.activation import same_shape
from archc.layers.costs import Cost, pointwise_rf, whole_input_rf, zero
from archc.layers.base import (
    Attr,
    AttrError,
    Int,
    Ints,
    LayerType,
    Optional,
    ShapeError,
    fmt_shape,
    need_rank,
)


def _flatten_shape(attrs: dict, inputs: list) -> tuple[int, ...]:
    (x,) = inputs
    start = attrs["start_dim"]
    if not 1 <= start <= len(x):
        raise ShapeError(
            f"start_dim {start} does not exist in N x {fmt_shape(x)} (dim 0 is the batch)",
            input_index=0,
        )
    kept = tuple(x[: start - 1])
    return kept + (math.prod(x[start - 1 :]),)


FLATTEN = LayerType(
    op="flatten",
    label=lambda a: "flatten",
    family="reshape",
    doc="Flatten every dimension from `start_dim` on into one (default: all but the batch).",
    attrs=(Attr("start_dim", Int(minimum=1), 1, "first dimension to merge (0 is the batch)"),),
    infer_shape=_flatten_shape,
    example="- flatten",
    positional=("start_dim",),
    cost=Cost(zero, zero, "A view of its input: 0 FLOPs, no memory of its own."),
    receptive_field=whole_input_rf,
    view=True,
)


def _validate_reshape(attrs: dict) -> None:
    shape = attrs["shape"]
    if sum(1 for d in shape if d == -1) > 1:
        raise AttrError("at most one dimension may be -1", attr="shape")
    if any(d == 0 or d < -1 for d in shape):
        raise AttrError(f"dimensions must be positive or -1, got {list(shape)}", attr="shape")


def _reshape_shape(attrs: dict, inputs: list) -> tuple[int, ...]:
    (x,) = inputs
    total = math.prod(x)
    shape = list(attrs["shape"])
    known = math.prod(d for d in shape if d != -1)
    if -1 in shape:
        if total % known:
            raise ShapeError(
                f"cannot reshape {fmt_shape(x)} ({total} values) into {shape}: {known} does not "
                f"divide {total}",
                input_index=0,
            )
        shape[shape.index(-1)] = total // known
    elif known != total:
        raise ShapeError(
            f"cannot reshape {fmt_shape(x)} ({total} values) into {fmt_shape(shape)} "
            f"({known} values)",
            input_index=0,
        )
    return tuple(shape)


RESHAPE = LayerType(
    op="reshape",
    label=lambda a: "reshape " + "x".join(map(str, a["shape"])),
    family="reshape",
    doc="Reshape each sample to `shape` (the batch dimension is kept; one entry may be -1).",
    attrs=(Attr("shape", Ints(), doc="target shape without the batch dimension"),),
    infer_shape=_reshape_shape,
    example="- reshape: [-1, 8, 8]",
    positional=("shape",),
    validate=_validate_reshape,
    cost=Cost(zero, zero, "A view of its input: 0 FLOPs, no memory of its own."),
    receptive_field=whole_input_rf,
    view=True,
)


def _validate_permute(attrs: dict) -> None:
    dims = attrs["dims"]
    if sorted(dims) != list(range(len(dims))) or dims[0] != 0:
        raise AttrError(
            f"dims must be a permutation of 0..{len(dims) - 1} that keeps the batch (0) first, "
            f"got {list(dims)}",
            attr="dims",
        )


def _permute_shape(attrs: dict, inputs: list) -> tuple[int, ...]:
    (x,) = inputs
    dims = attrs["dims"]
    if len(dims) != len(x) + 1:
        raise ShapeError(
            f"dims {list(dims)} has {len(dims)} entries but the input N x {fmt_shape(x)} has "
            f"{len(x) + 1} dimensions",
            input_index=0,
        )
    full = (None,) + tuple(x)
    return tuple(full[d] for d in dims[1:])


# the permutes of a map that only move its channels (to the end, and back): each position
# stays one position, so its receptive field is kept
_CHANNEL_MOVES = ((0, 2, 3, 1), (0, 3, 1, 2))


def _permute_rf(attrs: dict, inputs: list):
    if len(inputs[0]) == 3 and tuple(attrs["dims"]) in _CHANNEL_MOVES:
        return pointwise_rf(attrs, inputs)
    return whole_input_rf(attrs, inputs)


PERMUTE = LayerType(
    op="permute",
    label=lambda a: "permute " + ",".join(map(str, a["dims"])),
    family="reshape",
    doc="Reorder dimensions, PyTorch style with the batch as dim 0 (which must stay first), "
    "e.g. `[0, 2, 3, 1]` for channels-last (where `linear` and `layernorm` act on the "
    "channels of each position) and `[0, 3, 1, 2]` back. Those two keep each position's "
    "receptive field; other orders count as mixing every position.",
    attrs=(Attr("dims", Ints(minimum=0), doc="new order of the dimensions, batch included"),),
    infer_shape=_permute_shape,
    example="- permute: [0, 2, 3, 1]",
    positional=("dims",),
    validate=_validate_permute,
    cost=Cost(zero, zero, "Moves data: 0 FLOPs, one copy. Saves nothing."),
    receptive_field=_permute_rf,
)


def _shuffle_shape(attrs: dict, inputs: list) -> tuple[int, ...]:
    (x,) = inputs
    need_rank(x, 3, "channel_shuffle")
    if x[0] % attrs["groups"]:
        raise ShapeError(
            f"{x[0]} channels cannot be split into {attrs['groups']} groups", input_index=0
        )
    return tuple(x)


CHANNEL_SHUFFLE = LayerType(
    op="channel_shuffle",
    label=lambda a: f"shuffle g={a['groups']}",
    family="reshape",
    doc="Channel shuffle (ShuffleNet): view the channels as (groups, C/groups), transpose, "
    "flatten back, so that grouped convolutions exchange information.",
    attrs=(Attr("groups", Int(minimum=1), doc="number of channel groups"),),
    infer_shape=_shuffle_shape,
    example="- channel_shuffle: 2",
    positional=("groups",),
    cost=Cost(zero, zero, "Moves channels: 0 FLOPs, one copy. Saves nothing."),
    receptive_field=pointwise_rf,
)

def _slice_bounds(attrs: dict, size: int) -> tuple[int, int]:
    start, end = attrs["start"], attrs["end"]
    end = size if end is None else end
    start, end = (v + size if v < 0 else v for v in (start, end))
    return max(0, min(start, size)), max(0, min(end, size))


def _slice_shape(attrs: dict, inputs: list) -> tuple[int, ...]:
    (x,) = inputs
    dim = attrs["dim"]
    if not 1 <= dim <= len(x):
        raise ShapeError(f"dim {dim} does not exist in N x {fmt_shape(x)} (dim 0 is the batch)",
                         input_index=0)
    start, end = _slice_bounds(attrs, x[dim - 1])
    if end <= start:
        raise ShapeError(
            f"slice [{attrs['start']}:{attrs['end']}] of a dimension of size {x[dim - 1]} is empty",
            input_index=0,
        )
    out = list(x)
    out[dim - 1] = end - start
    return tuple(out)


SLICE = LayerType(
    op="slice",
    family="reshape",
    label=lambda a: f"slice [{a['start']}:{'' if a['end'] is None else a['end']}]"
    + ("" if a["dim"] == 1 else f" dim {a['dim']}"),
    doc="Keep the indices `start` to `end` (exclusive; negative counts from the end, as in "
    "Python) along `dim` (1 = channels): ShuffleNet's channel split is two slices.",
    attrs=(
        Attr("start", Int(), 0, "first index kept"),
        Attr("end", Optional(Int()), None, "index after the last one kept (null: to the end)"),
        Attr("dim", Int(minimum=1), 1, "the dimension to slice (0 is the batch)"),
    ),
    infer_shape=_slice_shape,
    example="- slice: {start: 0, end: 4}",
    positional=("start", "end", "dim"),
    cost=Cost(zero, zero, "Selects a range: 0 FLOPs, one copy. Saves nothing."),
    receptive_field=lambda a, i: pointwise_rf(a, i) if a["dim"] == 1 else whole_input_rf(a, i),
)

IDENTITY = LayerType(
    op="identity",
    label=lambda a: "identity",
    family="reshape",
    doc="Pass the input through unchanged (a named tap point, or a no-op branch).",
    attrs=(),
    infer_shape=same_shape,
    example="- identity",
    cost=Cost(zero, zero, "Its input itself: 0 FLOPs, no memory of its own."),
    receptive_field=pointwise_rf,
    view=True,
)

LAYERS = (FLATTEN, RESHAPE, PERMUTE, CHANNEL_SHUFFLE, SLICE, IDENTITY)
