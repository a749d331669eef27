"""Kernel bodies written once for both devices: scalar Python over arrays, compiled by
Numba for the CPU kernels and as CUDA device functions for the GPU kernels (as
``activations.py`` does for element-wise functions). Each computes one line or one cell;
the kernels only decide which thread takes which: softmax along the middle axis of
(outer, C, inner) arrays, and the gradient of unpooling at one input cell."""

from __future__ import annotations

import math


def softmax_line(x, y, a, k):
    """``y[a, :, k]`` = the softmax of ``x[a, :, k]`` (the maximum subtracted first)."""
    c = x.shape[1]
    top = x[a, 0, k]
    for i in range(1, c):
        top = max(top, x[a, i, k])
    total = 0.0
    for i in range(c):
        e = math.exp(x[a, i, k] - top)
        y[a, i, k] = e
        total += e
    for i in range(c):
        y[a, i, k] /= total


def softmax_grad_line(y, gy, gx, a, k):
    """``gx[a, :, k]`` = ``y * (gy - sum(gy * y))`` along the line: the softmax's backward."""
    c = y.shape[1]
    dot = 0.0
    for i in range(c):
        dot += gy[a, i, k] * y[a, i, k]
    for i in range(c):
        gx[a, i, k] = y[a, i, k] * (gy[a, i, k] - dot)


def unpool_grad_cell(gy, gx, b, ch, r, q, kh, kw, nearest):
    """``gx[b, ch, r, q]``: the gradient of unpooling by (kh, kw) at one input cell, the sum
    of its copies' gradients (nearest) or its one copy's (bed of nails)."""
    if nearest:
        total = 0.0
        for i in range(kh):
            for j in range(kw):
                total += gy[b, ch, r * kh + i, q * kw + j]
        gx[b, ch, r, q] = total
    else:
        gx[b, ch, r, q] = gy[b, ch, r * kh, q * kw]
