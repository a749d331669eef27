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


def roi_align_cell(x, b, c, ylo, yhi, wylo, wyhi, xlo, xhi, wxlo, wxhi, k, p, q):
    """The sum of RoI Align's samples in bin (p, q) of region k over channel c of image b,
    from the row and column tables of ``runtime.backends.roi`` (in float64)."""
    total = 0.0
    for i in range(ylo.shape[2]):
        a0, a1 = wylo[k, p, i], wyhi[k, p, i]
        if a0 == 0.0 and a1 == 0.0:
            continue
        r0, r1 = ylo[k, p, i], yhi[k, p, i]
        for j in range(xlo.shape[2]):
            b0, b1 = wxlo[k, q, j], wxhi[k, q, j]
            if b0 == 0.0 and b1 == 0.0:
                continue
            s0, s1 = xlo[k, q, j], xhi[k, q, j]
            total += (a0 * (b0 * x[b, c, r0, s0] + b1 * x[b, c, r0, s1])
                      + a1 * (b0 * x[b, c, r1, s0] + b1 * x[b, c, r1, s1]))
    return total


def roi_pool_cell(x, b, c, r0, r1, s0, s1):
    """(maximum, its position row * W + column) of channel c of image b over rows r0..r1
    and columns s0..s1 (the first maximum; position -1 for an empty bin)."""
    best, at = -math.inf, -1
    for r in range(r0, r1):
        for s in range(s0, s1):
            v = x[b, c, r, s]
            if at < 0 or v > best:
                best, at = v, r * x.shape[3] + s
    return best, at
