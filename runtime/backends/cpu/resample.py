"""Upsampling on the CPU (nearest and bilinear, PyTorch's source-index rules): each output
pixel reads at most 2 x 2 input pixels, so the kernel takes the two source rows and
columns with their weights (from the same interpolation matrices as the reference
backend) instead of multiplying by the mostly-zero matrices; the backward pass adds the
same weights back, one (sample, channel) plane per thread."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from runtime.backends.reference import resize_matrices
from runtime.config import PARALLEL


@njit(cache=True, **PARALLEL)
def resize_forward_kernel(x, r_src, r_wt, c_src, c_wt):
    n, c = x.shape[0], x.shape[1]
    ho, wo = r_src.shape[0], c_src.shape[0]
    y = np.empty((n, c, ho, wo), dtype=x.dtype)
    for job in prange(n * c):
        b = job // c
        ch = job % c
        for i in range(ho):
            r0, r1 = r_src[i, 0], r_src[i, 1]
            a0, a1 = r_wt[i, 0], r_wt[i, 1]
            for j in range(wo):
                q0, q1 = c_src[j, 0], c_src[j, 1]
                top = c_wt[j, 0] * x[b, ch, r0, q0] + c_wt[j, 1] * x[b, ch, r0, q1]
                bottom = c_wt[j, 0] * x[b, ch, r1, q0] + c_wt[j, 1] * x[b, ch, r1, q1]
                y[b, ch, i, j] = a0 * top + a1 * bottom
    return y


@njit(cache=True, **PARALLEL)
def resize_backward_kernel(gy, r_src, r_wt, c_src, c_wt, h, w):
    n, c, ho, wo = gy.shape
    gx = np.zeros((n, c, h, w), dtype=gy.dtype)
    for job in prange(n * c):  # each thread owns one (sample, channel) plane
        b = job // c
        ch = job % c
        for i in range(ho):
            r0, r1 = r_src[i, 0], r_src[i, 1]
            a0, a1 = r_wt[i, 0], r_wt[i, 1]
            for j in range(wo):
                g = gy[b, ch, i, j]
                q0, q1 = c_src[j, 0], c_src[j, 1]
                gx[b, ch, r0, q0] += a0 * c_wt[j, 0] * g
                gx[b, ch, r0, q1] += a0 * c_wt[j, 1] * g
                gx[b, ch, r1, q0] += a1 * c_wt[j, 0] * g
                gx[b, ch, r1, q1] += a1 * c_wt[j, 1] * g
    return gx


def _two_taps(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(input, output) interpolation weights -> per output: two source indices and their
    weights (the second weight 0 where one source suffices)."""
    size, out = matrix.shape
    src = np.zeros((out, 2), dtype=np.int64)
    wt = np.zeros((out, 2), dtype=matrix.dtype)
    for o in range(out):
        (nonzero,) = np.nonzero(matrix[:, o])
        src[o, :len(nonzero)] = nonzero
        src[o, len(nonzero):] = nonzero[0] if len(nonzero) else 0
        wt[o, :len(nonzero)] = matrix[nonzero, o]
    return src, wt


def _taps(op, x):
    rmat, cmat = resize_matrices(op, x.shape[2:], x.dtype)
    return (*_two_taps(rmat), *_two_taps(cmat))


def upsample_forward(op, xs, p, ctx):
    x = np.ascontiguousarray(xs[0])
    return resize_forward_kernel(x, *_taps(op, x))


def upsample_backward(op, xs, y, gy, p, ctx):
    x = xs[0]
    gx = resize_backward_kernel(np.ascontiguousarray(gy), *_taps(op, x), *x.shape[2:])
    return [gx] + [None] * (len(xs) - 1), {}
