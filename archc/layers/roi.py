"""Region-of-interest layers: RoI Align (Mask R-CNN) and RoI Pool (Fast R-CNN), as
``torchvision.ops`` defines them (``runtime/backends/roi.py`` holds the definition).

A region layer takes feature maps and, as its last input, the boxes: a graph input of
shape ``[R, 4]``, R boxes ``(x1, y1, x2, y2)`` per image in the input image's pixels
(``inputs: {image: {...}, boxes: {shape: [R, 4]}}``). Its output is one ``C x PH x PW``
map per box: the R boxes of each image join the batch, so that the layers after it (a
box head's linear layers, a mask head's convs) run once per box. A node's ``items`` is
that count (1 elsewhere); the analysis multiplies its costs by it, and a network output
with R items per image comes out as ``(N, R, ...)``.

With several feature maps (a feature pyramid, finest first) each box is pooled from one
level, chosen as FPN's paper does (Lin et al. 2017, eq. 1, torchvision's
``LevelMapper``): ``k = floor(k0 + log2(sqrt(w h) / 224))``, clamped to the pyramid's
levels, where ``k0`` is ``canonical_level`` and level ``k`` has scale ``2^-k``.
"""

from __future__ import annotations

import math

from archc.layers.base import (
    Attr,
    AttrError,
    Bool,
    Int,
    LayerType,
    Pair,
    Scales,
    ShapeError,
    need_rank,
)
from archc.layers.costs import INDEX_BYTES, Cost, numel, whole_input_rf, zero
from archc.layers.labels import pair_text

ADAPTIVE_COUNTED = 2
"""Samples per bin side the cost counts for an adaptive lattice (``sampling_ratio`` 0 or
-1), whose real size depends on the boxes."""


def _region_shape(op: str):
    def rule(attrs: dict, inputs: list) -> tuple[int, int, int]:
        *maps, boxes = inputs
        if len(boxes) != 2 or boxes[1] != 4:
            raise ShapeError(
                f"'{op}' takes the boxes as its last input, R boxes of 4 coordinates "
                f"(shape Rx4); got {'x'.join(map(str, boxes))}", input_index=len(inputs) - 1,
                hint="declare them as an input: 'inputs: {image: {...}, boxes: {shape: [R, 4]}}'")
        for i, shape in enumerate(maps):
            need_rank(shape, 3, op, i)
            if shape[0] != maps[0][0]:
                raise ShapeError(f"every feature map must have the channels of the first "
                                 f"({maps[0][0]}), got {shape[0]}", input_index=i)
        scales = attrs["spatial_scale"]
        if len(scales) != len(maps):
            raise ShapeError(
                f"{len(maps)} feature map{'s' if len(maps) > 1 else ''} but {len(scales)} "
                f"spatial_scale value{'s' if len(scales) > 1 else ''}: give one scale per map",
                hint="e.g. spatial_scale: [1/4, 1/8, 1/16, 1/32] for FPN's P2-P5")
        if len(maps) > 1:
            levels = [-math.log2(s) for s in scales]
            if any(abs(lv - round(lv)) > 1e-6 for lv in levels) or any(
                    b - a != 1 for a, b in zip(map(round, levels), map(round, levels[1:]))):
                raise ShapeError(f"a pyramid's scales halve from one map to the next "
                                 f"(1/4, 1/8, ...); got {list(scales)}")
        oh, ow = attrs["output_size"]
        return (maps[0][0], oh, ow)

    return rule


def region_count(attrs: dict, inputs: list) -> int:
    """The boxes per image: the first axis of the last input."""
    return inputs[-1][0]


def _validate_align(attrs: dict) -> None:
    if attrs["sampling_ratio"] < -1:
        raise AttrError("'roi_align' attribute 'sampling_ratio': samples per bin side, or 0 "
                        f"(or -1) for ceil(box side / bins); got {attrs['sampling_ratio']}",
                        attr="sampling_ratio")


def _align_flops(attrs: dict, inputs: list, out: tuple) -> int:
    s = attrs["sampling_ratio"] if attrs["sampling_ratio"] > 0 else ADAPTIVE_COUNTED
    # per sample: 4 taps weighted and summed (7), one add into the bin; per bin: one scale
    return numel(out) * (s * s * 8 + 1)


def _pool_flops(attrs: dict, inputs: list, out: tuple) -> int:
    c, h, w = inputs[0]
    oh, ow = attrs["output_size"]
    # a box covering the whole map: every bin compares its share of the map's pixels
    return c * oh * ow * max(math.ceil(h / oh) * math.ceil(w / ow) - 1, 0)


def _scale_text(scales: tuple) -> str:
    return ",".join(f"1/{round(1 / s)}" if abs(1 / s - round(1 / s)) < 1e-9 else f"{s:g}"
                    for s in scales)


ROI_ALIGN = LayerType(
    op="roi_align",
    label=lambda a: f"roi align {pair_text(a['output_size'])} @{_scale_text(a['spatial_scale'])}",
    family="roi",
    doc="RoI Align (He et al., Mask R-CNN): each box's PH x PW bins average a lattice of "
    "bilinearly interpolated samples of the feature map, as torchvision.ops.roi_align "
    "(with several maps, MultiScaleRoIAlign: each box from the pyramid level FPN assigns "
    "it). Inputs: the feature map(s), then the boxes ([R, 4] per image, x1 y1 x2 y2 in "
    "input pixels); output: one C x PH x PW map per box, the boxes joining the batch.",
    attrs=(
        Attr("output_size", Pair(), doc="bins per box, s or [ph, pw]"),
        Attr("spatial_scale", Scales(), doc="feature pixels per input pixel (1/16 for a "
             "stride-16 map), one per feature map"),
        Attr("sampling_ratio", Int(), -1, doc="samples per bin side; 0 or -1: "
             "ceil(box side / bins), as torchvision"),
        Attr("aligned", Bool(), False, doc="shift boxes by half a pixel so samples refer to "
             "pixel centres (Detectron2's ROIAlignV2)"),
        Attr("canonical_level", Int(minimum=1), 4, doc="FPN's k0: the level of a "
             "canonical_size box (several maps only)"),
        Attr("canonical_size", Int(minimum=1), 224, doc="FPN's canonical box side in input "
             "pixels"),
    ),
    infer_shape=_region_shape("roi_align"),
    example="- roi_align: {output_size: 7, spatial_scale: 1/16, sampling_ratio: 2}\n"
            "  inputs: [features, boxes]",
    positional=("output_size", "spatial_scale"),
    arity=(2, None),
    validate=_validate_align,
    cost=Cost(flops=_align_flops, saved=zero,
              doc="Per output element, sampling_ratio^2 samples of 4 weighted taps (8 "
              "FLOPs each with the bin's sum) and one scale; an adaptive lattice counted "
              f"as {ADAPTIVE_COUNTED}x{ADAPTIVE_COUNTED}. Saves nothing (the boxes are "
              "inputs)."),
    receptive_field=whole_input_rf,
    rf_inputs=(0,),
    items=region_count,
)

ROI_POOL = LayerType(
    op="roi_pool",
    label=lambda a: f"roi pool {pair_text(a['output_size'])} @{_scale_text(a['spatial_scale'])}",
    family="roi",
    doc="RoI Pool (Girshick, Fast R-CNN): each box, rounded to the feature grid, is cut "
    "into PH x PW bins of whole pixels and each bin takes its maximum (0 when empty), as "
    "torchvision.ops.roi_pool. Inputs: the feature map, then the boxes ([R, 4] per image); "
    "output: one C x PH x PW map per box, the boxes joining the batch.",
    attrs=(
        Attr("output_size", Pair(), doc="bins per box, s or [ph, pw]"),
        Attr("spatial_scale", Scales(), doc="feature pixels per input pixel (1/16 for a "
             "stride-16 map)"),
    ),
    infer_shape=_region_shape("roi_pool"),
    example="- roi_pool: {output_size: 7, spatial_scale: 1/16}\n  inputs: [features, boxes]",
    positional=("output_size", "spatial_scale"),
    arity=(2, 2),
    cost=Cost(flops=_pool_flops, saved=lambda a, i, o: INDEX_BYTES * numel(o),
              doc="Per output element, the comparisons of a bin of a box covering the "
              "whole map (bins depend on the boxes). Saves the position of each maximum "
              "(int64)."),
    receptive_field=whole_input_rf,
    rf_inputs=(0,),
    items=region_count,
)

LAYERS = (ROI_ALIGN, ROI_POOL)
