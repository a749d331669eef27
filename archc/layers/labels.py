"""Short diagram labels for layer types, e.g. ``conv 3x3/2, 64`` or ``maxpool 3x3/2``."""

from __future__ import annotations

from typing import Callable


def pair_text(pair) -> str:
    """``(3, 3) -> '3'`` is not wanted in a label; ``(3, 3) -> '3x3'``, ``(2.0, 2.0) -> '2'``.

    Examples
    --------
    >>> pair_text((3, 3)), pair_text((1, 7)), pair_text((2.0, 2.0))
    ('3x3', '1x7', '2')
    """
    a, b = (f"{v:g}" if isinstance(v, float) else str(v) for v in pair)
    if isinstance(pair[0], float):
        return a if a == b else f"{a}x{b}"
    return f"{a}x{b}"


def _stride_text(stride) -> str:
    if stride is None or tuple(stride) == (1, 1):
        return ""
    a, b = stride
    return f"/{a}" if a == b else f"/{a}x{b}"


def conv_label(name: str) -> Callable[[dict], str]:
    """``conv 3x3/2, 64`` plus dilation and groups when they are not 1."""

    def label(attrs: dict) -> str:
        text = f"{name} {pair_text(attrs['kernel_size'])}{_stride_text(attrs['stride'])}"
        if tuple(attrs["dilation"]) != (1, 1):
            text += f" dil {pair_text(attrs['dilation']).split('x')[0]}"
        if attrs["groups"] > 1:
            text += f" g{attrs['groups']}"
        return f"{text}, {attrs['out_channels']}"

    return label


def window_label(name: str) -> Callable[[dict], str]:
    """``maxpool 3x3/2``."""

    def label(attrs: dict) -> str:
        stride = attrs["stride"] if attrs["stride"] is not None else attrs["kernel_size"]
        return f"{name} {pair_text(attrs['kernel_size'])}{_stride_text(stride)}"

    return label
