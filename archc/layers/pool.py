"""Pooling: max/average windows, global and adaptive pooling.

Window pooling uses the convolution size formula; with ``ceil_mode`` the division rounds
up, but a window that would start entirely in the right/bottom padding is dropped
(PyTorch's ``pooling_output_shape``).
"""

from __future__ import annotations

from archc.layers.costs import (
    INDEX_BYTES,
    Cost,
    RFStep,
    numel,
    saves_inputs,
    whole_input_rf,
    window_rf,
    zero,
)
from archc.layers.labels import window_label, pair_text
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


def _window_area(attrs: dict) -> int:
    return attrs["kernel_size"][0] * attrs["kernel_size"][1]


def _pool_rf(attrs: dict, inputs: list) -> RFStep:
    return window_rf(attrs["kernel_size"], _stride(attrs), attrs.get("dilation", (1, 1)),
                     attrs["padding"])


def _max_saved(attrs: dict, inputs: list, out: tuple) -> int:
    return saves_inputs(0)(attrs, inputs, out) + INDEX_BYTES * numel(out)


def _indices_saved(attrs: dict, inputs: list, out: tuple) -> int:
    return INDEX_BYTES * numel(out)


_WINDOW_ATTRS = (
    Attr("kernel_size", Pair(), doc="window size k or [kh, kw]"),
    Attr("stride", Optional(Pair()), None, "step between windows (default: kernel_size)"),
    Attr("padding", Pair(minimum=0), (0, 0), "implicit padding on each side"),
)

def default_stride(attrs: dict, inputs: list, out: tuple) -> dict:
    """What a kernel reads: the stride, the window when none is given."""
    return {"stride": attrs["stride"] or attrs["kernel_size"]}


MAX_POOL2D = LayerType(
    op="max_pool2d",
    label=window_label("maxpool"),
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
    cost=Cost(
        flops=lambda a, i, o: numel(o) * (_window_area(a) - 1),
        saved=_max_saved,
        doc="kh x kw - 1 comparisons per output element. Saves its input and the position "
        "of each maximum (int64).",
    ),
    receptive_field=_pool_rf,
    lower=default_stride,
)

AVG_POOL2D = LayerType(
    op="avg_pool2d",
    label=window_label("avgpool"),
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
    cost=Cost(
        flops=lambda a, i, o: numel(o) * _window_area(a),
        saved=zero,
        doc="kh x kw - 1 adds and one divide per output element. Saves nothing (backward "
        "needs only shapes).",
    ),
    receptive_field=_pool_rf,
    lower=default_stride,
)


def _global_shape(op: str):
    def rule(attrs: dict, inputs: list) -> tuple[int, int, int]:
        (shape,) = inputs
        need_rank(shape, 3, op)
        return (shape[0], 1, 1)

    return rule


GLOBAL_AVG_POOL2D = LayerType(
    op="global_avg_pool2d",
    label=lambda a: "global avgpool",
    family="pool",
    doc="Global average pooling: one mean per channel, CxHxW -> Cx1x1.",
    attrs=(),
    infer_shape=_global_shape("global_avg_pool2d"),
    example="- global_avg_pool2d",
    cost=Cost(
        flops=lambda a, i, o: numel(i[0]),
        saved=zero,
        doc="H x W - 1 adds and one divide per channel. Saves nothing.",
    ),
    receptive_field=whole_input_rf,
)

GLOBAL_MAX_POOL2D = LayerType(
    op="global_max_pool2d",
    label=lambda a: "global maxpool",
    family="pool",
    doc="Global max pooling: one maximum per channel, CxHxW -> Cx1x1.",
    attrs=(),
    infer_shape=_global_shape("global_max_pool2d"),
    example="- global_max_pool2d",
    cost=Cost(
        flops=lambda a, i, o: numel(i[0]) - numel(o),
        saved=_indices_saved,
        doc="H x W - 1 comparisons per channel. Saves the position of each maximum (int64).",
    ),
    receptive_field=whole_input_rf,
)


def _adaptive_shape(op: str):
    def rule(attrs: dict, inputs: list) -> tuple[int, int, int]:
        (shape,) = inputs
        need_rank(shape, 3, op)
        oh, ow = attrs["output_size"]
        return (shape[0], oh, ow)

    return rule


def adaptive_bins(size: int, out: int) -> list[tuple[int, int]]:
    """[start, end) of each adaptive-pooling bin along one axis (PyTorch's rule).

    Examples
    --------
    >>> adaptive_bins(5, 3)
    [(0, 2), (1, 4), (3, 5)]
    """
    return [((i * size) // out, -((-(i + 1) * size) // out)) for i in range(out)]


def _adaptive_reads(inputs: list, out: tuple) -> int:
    """Input elements read over all bins (bins may overlap)."""
    c, h, w = inputs[0]
    rows = sum(e - b for b, e in adaptive_bins(h, out[1]))
    cols = sum(e - b for b, e in adaptive_bins(w, out[2]))
    return c * rows * cols


def _adaptive_rf(attrs: dict, inputs: list) -> RFStep | None:
    sizes, outs = inputs[0][1:], attrs["output_size"]
    if tuple(outs) == (1, 1):
        return None
    # Bins of equal size when the output divides the input; otherwise the largest bin,
    # stepping n / out input pixels on average.
    spans = tuple(max(e - b for b, e in adaptive_bins(n, o)) for n, o in zip(sizes, outs))
    return RFStep(spans, tuple(n / o for n, o in zip(sizes, outs)),
                  tuple((k - 1) / 2 for k in spans))


ADAPTIVE_AVG_POOL2D = LayerType(
    op="adaptive_avg_pool2d",
    label=lambda a: "adaptive avgpool " + pair_text(a["output_size"]),
    family="pool",
    doc="Adaptive average pooling to a fixed output size; bin i along an axis of length n "
    "covers [floor(i*n/out), ceil((i+1)*n/out)).",
    attrs=(Attr("output_size", Pair(), doc="output size s or [h, w]"),),
    infer_shape=_adaptive_shape("adaptive_avg_pool2d"),
    example="- adaptive_avg_pool2d: [7, 7]",
    positional=("output_size",),
    cost=Cost(
        flops=lambda a, i, o: _adaptive_reads(i, o),
        saved=zero,
        doc="Per output element, bin size - 1 adds and one divide. Saves nothing.",
    ),
    receptive_field=_adaptive_rf,
)

ADAPTIVE_MAX_POOL2D = LayerType(
    op="adaptive_max_pool2d",
    label=lambda a: "adaptive maxpool " + pair_text(a["output_size"]),
    family="pool",
    doc="Adaptive max pooling to a fixed output size (bins as adaptive_avg_pool2d).",
    attrs=(Attr("output_size", Pair(), doc="output size s or [h, w]"),),
    infer_shape=_adaptive_shape("adaptive_max_pool2d"),
    example="- adaptive_max_pool2d: 1",
    positional=("output_size",),
    cost=Cost(
        flops=lambda a, i, o: _adaptive_reads(i, o) - numel(o),
        saved=_indices_saved,
        doc="Per output element, bin size - 1 comparisons. Saves the position of each "
        "maximum (int64).",
    ),
    receptive_field=_adaptive_rf,
)

LAYERS = (
    MAX_POOL2D,
    AVG_POOL2D,
    GLOBAL_AVG_POOL2D,
    GLOBAL_MAX_POOL2D,
    ADAPTIVE_AVG_POOL2D,
    ADAPTIVE_MAX_POOL2D,
)
