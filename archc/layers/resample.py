"""Growing feature maps without learned weights: unpooling and upsampling."""

from __future__ import annotations

import math

from archc.layers.costs import Cost, RFStep, numel, upsampling_rf, zero
from archc.layers.labels import window_label, pair_text
from archc.layers.pool import default_stride
from archc.layers.base import (
    Attr,
    AttrError,
    Bool,
    Choice,
    FloatPair,
    LayerType,
    Optional,
    Pair,
    ShapeError,
    fmt_shape,
    need_rank,
)


def _max_unpool_shape(attrs: dict, inputs: list) -> tuple[int, int, int]:
    x, pooled = inputs[:2]
    need_rank(x, 3, "max_unpool2d")
    if tuple(x) != tuple(pooled):
        raise ShapeError(
            f"the values to unpool have shape {fmt_shape(x)} but the max_pool2d whose "
            f"positions they use produced {fmt_shape(pooled)}; they must match",
            input_index=0,
        )
    if len(inputs) == 3:
        like = inputs[2]
        need_rank(like, 3, "max_unpool2d", index=2)
        if attrs["output_size"] is not None and tuple(attrs["output_size"]) != tuple(like[1:]):
            raise ShapeError(
                f"output_size {list(attrs['output_size'])} disagrees with the size "
                f"{like[1]}x{like[2]} of the third input",
                input_index=2,
            )
        return (x[0], like[1], like[2])
    if attrs["output_size"] is not None:
        return (x[0],) + tuple(attrs["output_size"])
    k, p = attrs["kernel_size"], attrs["padding"]
    s = attrs["stride"] if attrs["stride"] is not None else k
    out = tuple((n - 1) * s[i] - 2 * p[i] + k[i] for i, n in enumerate(x[1:]))
    if min(out) < 1:
        raise ShapeError(f"output would be {fmt_shape(out)}", input_index=0)
    return (x[0], out[0], out[1])


def output_size(attrs: dict, inputs: list, out: tuple) -> dict:
    """What a kernel reads: the output's height and width, as the shape rule found them."""
    return {"out_size": tuple(out[1:])}


MAX_UNPOOL2D = LayerType(
    op="max_unpool2d",
    label=window_label("max unpool"),
    family="resample",
    doc="Max unpooling: puts each value back at the position its `max_pool2d` took it from "
    "and zeros elsewhere. Inputs: the values, the `max_pool2d` node whose positions to "
    "use, and optionally a third tensor whose height and width the output takes (give the "
    "pool's input, as SegNet does, so odd sizes come back exactly). Otherwise the output is "
    "`output_size`, or `(H - 1) * stride - 2 * padding + kernel`.",
    attrs=(
        Attr("kernel_size", Pair(), doc="the pooling window"),
        Attr("stride", Optional(Pair()), None, "the pooling stride (default: kernel_size)"),
        Attr("padding", Pair(minimum=0), (0, 0), "the pooling padding"),
        Attr("output_size", Optional(Pair()), None, "exact output size (e.g. the pool's input)"),
    ),
    infer_shape=_max_unpool_shape,
    example="- max_unpool2d: {kernel_size: 2}\n  inputs: [-1, pool1, -3]",
    positional=("kernel_size", "stride", "padding"),
    arity=(2, 3),
    input_ops=((1, ("max_pool2d",)),),
    cost=Cost(zero, zero, "A scatter: data movement only, 0 FLOPs. Saves nothing (the "
              "positions are the max_pool2d's)."),
    receptive_field=lambda a, i: upsampling_rf(
        tuple(o / n for o, n in zip(_max_unpool_shape(a, i)[1:], i[0][1:])), 1),
    rf_inputs=(0,),
    lower=lambda a, i, o: {**default_stride(a, i, o), **output_size(a, i, o)},
)


def _unpool_shape(attrs: dict, inputs: list) -> tuple[int, int, int]:
    (x,) = inputs
    need_rank(x, 3, "unpool2d")
    k = attrs["kernel_size"]
    return (x[0], x[1] * k[0], x[2] * k[1])


UNPOOL2D = LayerType(
    op="unpool2d",
    label=lambda a: f"unpool x{pair_text(a['kernel_size'])} " + a["mode"].replace("_", " "),
    family="resample",
    doc="Fixed unpooling by a factor k: `nearest` copies each value into its k x k cell; "
    "`bed_of_nails` puts it in the cell's top-left corner and zeros elsewhere.",
    attrs=(
        Attr("kernel_size", Pair(), doc="growth factor k or [kh, kw]"),
        Attr("mode", Choice(("nearest", "bed_of_nails")), "nearest", "how a cell is filled"),
    ),
    infer_shape=_unpool_shape,
    example="- unpool2d: {kernel_size: 2, mode: bed_of_nails}",
    positional=("kernel_size", "mode"),
    cost=Cost(zero, zero, "Copies (nearest) or places (bed of nails) values: 0 FLOPs. Saves "
              "nothing."),
    receptive_field=lambda a, i: upsampling_rf(a["kernel_size"], 1),
)


def _validate_upsample(attrs: dict) -> None:
    if attrs["size"] is not None and attrs["scale_factor"] is not None:
        raise AttrError(
            "upsample takes 'size' or 'scale_factor', not both",
            hint="e.g. upsample: {scale_factor: 2} or upsample: {size: [56, 56]}",
        )
    if attrs["align_corners"] and attrs["mode"] != "bilinear":
        raise AttrError("align_corners applies to bilinear mode only", attr="align_corners")


def _upsample_shape(attrs: dict, inputs: list) -> tuple[int, int, int]:
    x = inputs[0]
    need_rank(x, 3, "upsample")
    if len(inputs) == 2:
        need_rank(inputs[1], 3, "upsample", index=1)
        if attrs["size"] is not None or attrs["scale_factor"] is not None:
            raise ShapeError("with a second input to match, give neither size nor scale_factor",
                             input_index=1)
        return (x[0],) + tuple(inputs[1][1:])
    if attrs["size"] is None and attrs["scale_factor"] is None:
        raise ShapeError(
            "upsample needs a size, a scale_factor or a second input whose size to match",
            hint="e.g. 'upsample: 2', 'upsample: {size: [56, 56]}' or "
            "'upsample: {mode: bilinear}' with 'inputs: [-1, input]'",
        )
    if attrs["size"] is not None:
        return (x[0],) + tuple(attrs["size"])
    sh, sw = attrs["scale_factor"]
    out = (math.floor(x[1] * sh), math.floor(x[2] * sw))
    if min(out) < 1:
        raise ShapeError(f"scale_factor shrinks {x[1]}x{x[2]} to {fmt_shape(out)}", input_index=0)
    return (x[0], out[0], out[1])


UPSAMPLE = LayerType(
    op="upsample",
    label=lambda a: "upsample " + (pair_text(a["size"]) if a["size"] else
                                   "x" + pair_text(a["scale_factor"]) if a["scale_factor"]
                                   else "to size") + ("" if a["mode"] == "nearest" else " bilinear"),
    family="resample",
    doc="Resize by `scale_factor` (output `floor(H * s)`), to a fixed `size`, or to the size "
    "of a second input (`inputs: [-1, input]`, as FCN and DeepLab upsample to the image), "
    "with `nearest` (nearest-neighbour unpooling) or `bilinear` interpolation (PyTorch "
    "`F.interpolate` semantics).",
    attrs=(
        Attr("scale_factor", Optional(FloatPair()), None, "growth factor s or [sh, sw]"),
        Attr("size", Optional(Pair()), None, "output size s or [h, w]"),
        Attr("mode", Choice(("nearest", "bilinear")), "nearest", "interpolation"),
        Attr("align_corners", Bool(), False, "bilinear: align corner pixel centres"),
    ),
    infer_shape=_upsample_shape,
    example="- upsample: {scale_factor: 2, mode: bilinear}",
    positional=("scale_factor",),
    arity=(1, 2),
    validate=_validate_upsample,
    cost=Cost(
        flops=lambda a, i, o: 0 if a["mode"] == "nearest" else 7 * numel(o),
        saved=zero,
        doc="nearest: copies, 0 FLOPs; bilinear: 4 multiplies and 3 adds per output "
        "element. Saves nothing.",
    ),
    receptive_field=lambda a, i: upsampling_rf(
        tuple(o / n for o, n in zip(_upsample_shape(a, i)[1:], i[0][1:])),
        1 if a["mode"] == "nearest" else 2),
    rf_inputs=(0,),
    lower=output_size,
)

def _crop_shape(attrs: dict, inputs: list) -> tuple[int, int, int]:
    x, like = inputs
    need_rank(x, 3, "center_crop")
    need_rank(like, 3, "center_crop", index=1)
    if like[1] > x[1] or like[2] > x[2]:
        raise ShapeError(
            f"cannot crop {x[1]}x{x[2]} to the larger {like[1]}x{like[2]}", input_index=0,
            hint="the first input is cropped to the second input's size",
        )
    return (x[0], like[1], like[2])


def _crop_rf(attrs: dict, inputs: list) -> RFStep:
    x, like = inputs
    return RFStep((1, 1), (1, 1), tuple(float((x[i] - like[i]) // 2) for i in (1, 2)))


CENTER_CROP = LayerType(
    op="center_crop",
    family="resample",
    label=lambda a: "center crop",
    doc="Crop the first input's centre to the height and width of the second input (the "
    "original U-Net crops its unpadded encoder maps so before concatenating them). An odd "
    "difference leaves the extra row or column on the bottom/right.",
    attrs=(),
    infer_shape=_crop_shape,
    example="- center_crop: [enc, -1]",
    arity=(2, 2),
    cost=Cost(zero, zero, "Copies a window: 0 FLOPs. Saves nothing."),
    receptive_field=_crop_rf,
    rf_inputs=(0,),
    lower=output_size,
)

LAYERS = (MAX_UNPOOL2D, UNPOOL2D, UPSAMPLE, CENTER_CROP)
