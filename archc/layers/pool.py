"""Pooling: max/average windows, global and adaptive pooling.

Window pooling uses the convolution size formula; with ``ceil_mode`` the division rounds
up, but a window that would start entirely in the right/bottom padding is dropped
(PyTorch's ``pooling_output_shape``).
"""

from __future__ import annotations

from archc.layers.base import (
    Attr,
    AttrError,
    Bool,
    LayerType,
    Optional,
    Pair,
    ShapeError,
    need_rank,
)


def pool_output_size(
    size: int, kernel: int, stride: int, pad: int, dilation: int = 1, ceil_mode: bool = False
) -> int:
    """One axis of a pooling output, PyTorch's rule.

    Examples
    --------
    >>> pool_output_size(8, 2, 2, 0)  # '8x8x10 pooled 2x2/2 is 4x4x10' in the notes
    4
    >>> pool_output_size(112, 3, 2, 0, ceil_mode=True), pool_output_size(112, 3, 2, 0)
    (56, 55)
    """
    span = dilation * (kernel - 1) + 1
    numerator = size + 2 * pad - span + (stride - 1 if ceil_mode else 0)
    out = numerator // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _stride(attrs: dict) -> tuple[int, int]:
    return attrs["stride"] if attrs["stride"] is not None else attrs["kernel_size"]


def _validate_window(attrs: dict) -> None:
    k, p = attrs["kernel_size"], attrs["padding"]
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        raise AttrError(
            f"padding {list(p)} is more than half the kernel {list(k)}",
            attr="padding",
            hint="pooling padding may be at most kernel_size // 2 (as in PyTorch)",
        )


def _window_shape(op: str):
    def rule(attrs: dict, inputs: list) -> tuple[int, int, int]:
        (shape,) = inputs
        need_rank(shape, 3, op)
        c, h, w = shape
        k, s, p = attrs["kernel_size"], _stride(attrs), attrs["padding"]
        d = attrs.get("dilation", (1, 1))
        out = tuple(
            pool_output_size(n, k[i], s[i], p[i], d[i], attrs["ceil_mode"])
            for i, n in enumerate((h, w))
        )
        if min(out) < 1:
            raise ShapeError(
                f"the {k[0]}x{k[1]} window does not fit in the {h}x{w} input: output would be "
                f"{out[0]}x{out[1]}",
                input_index=0,
                hint="the feature map has shrunk too far; remove a pooling layer or "
                "use a larger input",
            )
        return (c, out[0], out[1])

    return rule


_WINDOW_ATTRS = (
    Attr("kernel_size", Pair(), doc="window size k or [kh, kw]"),
    Attr("stride", Optional(Pair()), None, "step between windows (default: kernel_size)"),
    Attr("padding", Pair(minimum=0), (0, 0), "implicit padding on each side"),
)

MAX_POOL2D = LayerType(
    op="max_pool2d",
    family="pool",
    doc="Max pooling: the largest value in each window. Padding counts as minus infinity.",
    attrs=_WINDOW_ATTRS
    + (
        Attr("dilation", Pair(), (1, 1), "spacing between window taps"),
        Attr("ceil_mode", Bool(), False, "round the output size up instead of down"),
    ),
    infer_shape=_window_shape("max_pool2d"),
    example="- max_pool2d: {kernel_size: 3, stride: 2, padding: 1}",
    positional=("kernel_size", "stride", "padding"),
    validate=_validate_window,
)

AVG_POOL2D = LayerType(
    op="avg_pool2d",
    family="pool",
    doc="Average pooling: the mean of each window.",
    attrs=_WINDOW_ATTRS
    + (
        Attr("ceil_mode", Bool(), False, "round the output size up instead of down"),
        Attr("count_include_pad", Bool(), True, "count padded zeros in the divisor"),
    ),
    infer_shape=_window_shape("avg_pool2d"),
    example="- avg_pool2d: {kernel_size: 2, stride: 2}",
    positional=("kernel_size", "stride", "padding"),
    validate=_validate_window,
)


def _global_shape(op: str):
    def rule(attrs: dict, inputs: list) -> tuple[int, int, int]:
        (shape,) = inputs
        need_rank(shape, 3, op)
        return (shape[0], 1, 1)

    return rule


GLOBAL_AVG_POOL2D = LayerType(
    op="global_avg_pool2d",
    family="pool",
    doc="Global average pooling: one mean per channel, CxHxW -> Cx1x1.",
    attrs=(),
    infer_shape=_global_shape("global_avg_pool2d"),
    example="- global_avg_pool2d",
)

GLOBAL_MAX_POOL2D = LayerType(
    op="global_max_pool2d",
    family="pool",
    doc="Global max pooling: one maximum per channel, CxHxW -> Cx1x1.",
    attrs=(),
    infer_shape=_global_shape("global_max_pool2d"),
    example="- global_max_pool2d",
)


def _adaptive_shape(op: str):
    def rule(attrs: dict, inputs: list) -> tuple[int, int, int]:
        (shape,) = inputs
        need_rank(shape, 3, op)
        oh, ow = attrs["output_size"]
        return (shape[0], oh, ow)

    return rule


ADAPTIVE_AVG_POOL2D = LayerType(
    op="adaptive_avg_pool2d",
    family="pool",
    doc="Adaptive average pooling to a fixed output size; bin i along an axis of length n "
    "covers [floor(i*n/out), ceil((i+1)*n/out)).",
    attrs=(Attr("output_size", Pair(), doc="output size s or [h, w]"),),
    infer_shape=_adaptive_shape("adaptive_avg_pool2d"),
    example="- adaptive_avg_pool2d: [7, 7]",
    positional=("output_size",),
)

ADAPTIVE_MAX_POOL2D = LayerType(
    op="adaptive_max_pool2d",
    family="pool",
    doc="Adaptive max pooling to a fixed output size (bins as adaptive_avg_pool2d).",
    attrs=(Attr("output_size", Pair(), doc="output size s or [h, w]"),),
    infer_shape=_adaptive_shape("adaptive_max_pool2d"),
    example="- adaptive_max_pool2d: 1",
    positional=("output_size",),
)

LAYERS = (
    MAX_POOL2D,
    AVG_POOL2D,
    GLOBAL_AVG_POOL2D,
    GLOBAL_MAX_POOL2D,
    ADAPTIVE_AVG_POOL2D,
    ADAPTIVE_MAX_POOL2D,
)
