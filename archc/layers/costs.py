"""Cost and receptive-field rules that layer types share.

A layer's :class:`Cost` says, per sample: its multiply-accumulates (conv and linear
layers), its other floating-point operations ("element-wise FLOPs": activations,
normalisation, pooling, merges, bias adds), and the bytes it saves for the backward pass
in training. Every layer type states its cost, with a sentence saying how it is counted
(docs/analysis.md lists them); a zero is always a stated zero, never a forgotten one.

A layer's receptive-field rule returns an :class:`RFStep` (how one output pixel's window
maps onto the layer's input, per axis) or ``None`` when every output depends on the whole
input (global pooling, linear layers, flattening).

Counting convention: one FLOP per addition, multiplication, division, comparison or
transcendental function (exp, tanh, erf) evaluation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

CostRule = Callable[[dict, list, tuple], int]
FLOAT_BYTES = 4  # archc computes in float32
INDEX_BYTES = 8  # PyTorch saves pooling positions as int64


def numel(shape: tuple) -> int:
    return math.prod(shape)


def zero(attrs: dict, inputs: list, out: tuple) -> int:
    return 0


@dataclass(frozen=True)
class Cost:
    """How much one layer type computes and keeps for backward, per sample."""

    flops: CostRule
    saved: CostRule
    doc: str
    macs: CostRule = zero


def per_output(n: int) -> CostRule:
    """``n`` FLOPs for every output element."""
    return lambda attrs, inputs, out: n * numel(out)


def saves_inputs(*positions: int) -> CostRule:
    """Backward needs these inputs (float32), e.g. a conv its input for the weight gradient."""
    return lambda attrs, inputs, out: FLOAT_BYTES * sum(numel(inputs[i]) for i in positions)


def saves_output(attrs: dict, inputs: list, out: tuple) -> int:
    return FLOAT_BYTES * numel(out)


ELEMENTWISE_SAVES_INPUT = saves_inputs(0)


@dataclass(frozen=True)
class RFStep:
    """One layer's window on its input, per axis (height, width).

    kernel: the span of input pixels one output pixel reads (``dilation * (k - 1) + 1``);
    stride: input pixels between neighbouring output pixels (below 1 when upsampling);
    offset: input coordinate of the centre of output pixel 0's window (``(kernel - 1) / 2 -
    padding`` for a convolution; pixel centres sit at integer coordinates).
    """

    kernel: tuple[float, float]
    stride: tuple[float, float]
    offset: tuple[float, float]


IDENTITY_STEP = RFStep((1, 1), (1, 1), (0.0, 0.0))


def pointwise_rf(attrs: dict, inputs: list) -> RFStep:
    """Each output pixel reads the input pixel at the same place."""
    return IDENTITY_STEP


def whole_input_rf(attrs: dict, inputs: list) -> None:
    """Every output depends on the whole input."""
    return None


def window_rf(kernel: tuple, stride: tuple, dilation: tuple, pad_before: tuple) -> RFStep:
    spans = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation))
    return RFStep(spans, tuple(stride), tuple((s - 1) / 2 - p for s, p in zip(spans, pad_before)))


def upsampling_rf(scale: tuple, reads: int) -> RFStep:
    """Output pixel o reads ``reads`` input pixels around ``(o + 0.5) / scale - 0.5``."""
    return RFStep((reads, reads), tuple(1 / s for s in scale),
                  tuple(0.5 / s - 0.5 for s in scale))
