"""CUDA kernels that change the spatial size, with their launches: upsampling (nearest,
bilinear, any scale: the reference's two interpolation matrices, applied one axis at a
time), unpooling (nearest or bed of nails), adaptive average and max pooling over
PyTorch's bins, and the centre crop.

- upsample: ``y = R^T x C`` as two passes, ``t = x C`` along the width and ``y = R^T t``
  along the height (each output reads one row or column of the matrices, whose few
  non-zeros make this as cheap as a direct interpolation); its backward is
  ``gx = R gy C^T``, the same passes with the matrices transposed. The matrices are
  built on the host once per layer and input size (``runtime.backends.reference``'s
  definition) and kept on the device.
- adaptive pooling: one thread per output cell reduces its bin, rows
  ``floor(i H / Ho)`` to ``ceil((i + 1) H / Ho)``; max pooling records the position of
  each maximum (the first, or a NaN), and its backward is max pooling's scatter.
"""

from __future__ import annotations

import math

import numpy as np

from runtime.backends import lines
from runtime.backends.cuda.kernels import _launch, cuda, empty, fill_kernel, result, zeros
from runtime.backends.cuda.layers import max_pool_backward

_MATRICES: dict = {}


@cuda.jit(cache=True)
def along_width_kernel(x, m, y):
    """y[b, c, r, j] = sum_q x[b, c, r, q] m[q, j]."""
    n, c, h, w = x.shape
    wo = y.shape[3]
    for e in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        b, ch, r, j = e // (c * h * wo), (e // (h * wo)) % c, (e // wo) % h, e % wo
        total = 0.0
        for q in range(w):
            weight = m[q, j]
            if weight != 0.0:
                total += x[b, ch, r, q] * weight
        y[b, ch, r, j] = total


@cuda.jit(cache=True)
def along_height_kernel(x, m, y):
    """y[b, c, i, q] = sum_r m[r, i] x[b, c, r, q]."""
    n, c, h, w = x.shape
    ho = y.shape[2]
    for e in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        b, ch, i, q = e // (c * ho * w), (e // (ho * w)) % c, (e // w) % ho, e % w
        total = 0.0
        for r in range(h):
            weight = m[r, i]
            if weight != 0.0:
                total += x[b, ch, r, q] * weight
        y[b, ch, i, q] = total


def _matrices(op, in_hw):
    """(R, C, R^T, C^T) of an upsample on the device, built once per layer and size."""
    key = (op.name, tuple(op.attrs["out_size"]), tuple(in_hw), op.attrs["mode"],
           op.attrs["align_corners"], op.attrs["scale_factor"])
    if key not in _MATRICES:
        from runtime.backends.reference import resize_matrices

        rows, cols = resize_matrices(op, in_hw, np.float32)
        _MATRICES[key] = tuple(cuda.to_device(np.ascontiguousarray(m))
                               for m in (rows, cols, rows.T, cols.T))
    return _MATRICES[key]


def _apply(x, rows, cols):
    """rows^T x cols for every (sample, channel) plane: along the width, then the height."""
    n, c, h = x.shape[:3]
    t = empty((n, c, h, cols.shape[1]))
    _launch(along_width_kernel, t.size, x, cols, t)
    y = result((n, c, rows.shape[1], cols.shape[1]))
    _launch(along_height_kernel, y.size, t, rows, y)
    return y


def upsample(op, x):
    rows, cols, _, _ = _matrices(op, x.shape[2:])
    return _apply(x, rows, cols)


def upsample_backward(op, x_shape, gy):
    _, _, rows_t, cols_t = _matrices(op, x_shape[2:])
    return _apply(gy, rows_t, cols_t)


# --------------------------------------------------------------------------- unpooling
@cuda.jit(cache=True)
def unpool_kernel(x, y, kh, kw, nearest):
    """Every input value fills its kh x kw block (nearest) or its top-left cell."""
    n, c, ho, wo = y.shape
    for e in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        b, ch, r, q = e // (c * ho * wo), (e // (ho * wo)) % c, (e // wo) % ho, e % wo
        if nearest or (r % kh == 0 and q % kw == 0):
            y[b, ch, r, q] = x[b, ch, r // kh, q // kw]
        else:
            y[b, ch, r, q] = 0.0


_unpool_grad_cell = cuda.jit(device=True, inline=True)(lines.unpool_grad_cell)


@cuda.jit(cache=True)
def unpool_backward_kernel(gy, gx, kh, kw, nearest):
    n, c, h, w = gx.shape
    for e in range(cuda.grid(1), gx.size, cuda.gridsize(1)):
        b, ch, r, q = e // (c * h * w), (e // (h * w)) % c, (e // w) % h, e % w
        _unpool_grad_cell(gy, gx, b, ch, r, q, kh, kw, nearest)


def unpool(x, kernel, nearest: bool):
    n, c, h, w = x.shape
    y = result((n, c, h * kernel[0], w * kernel[1]))
    _launch(unpool_kernel, y.size, x, y, *kernel, nearest)
    return y


def unpool_backward(gy, x_shape, kernel, nearest: bool):
    gx = empty(x_shape)
    _launch(unpool_backward_kernel, gx.size, gy, gx, *kernel, nearest)
    return gx


@cuda.jit(cache=True)
def max_unpool_kernel(x, idx, y):
    """Each value to the position its max pool took it from (row * W + column of the
    pool's input plane; -1: nowhere), in a zeroed y. Where overlapping pool windows took
    one position twice, one of the values lands there, which one is not fixed (as in
    PyTorch's CUDA max_unpool2d; the CPU keeps the last in row-major order)."""
    n, c, h, w = x.shape
    wo = y.shape[3]
    for e in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        b, ch, r, q = e // (c * h * w), (e // (h * w)) % c, (e // w) % h, e % w
        at = idx[b, ch, r, q]
        if at >= 0:
            y[b, ch, at // wo, at % wo] = x[b, ch, r, q]


@cuda.jit(cache=True)
def max_unpool_backward_kernel(gy, idx, gx):
    n, c, h, w = gx.shape
    wo = gy.shape[3]
    for e in range(cuda.grid(1), gx.size, cuda.gridsize(1)):
        b, ch, r, q = e // (c * h * w), (e // (h * w)) % c, (e // w) % h, e % w
        at = idx[b, ch, r, q]
        gx[b, ch, r, q] = gy[b, ch, at // wo, at % wo] if at >= 0 else 0.0


def max_unpool(x, idx, out_hw):
    n, c = x.shape[:2]
    y = result((n, c) + tuple(out_hw))
    _launch(fill_kernel, y.size, y.reshape(y.size), 0.0)  # the planned room, zeroed
    _launch(max_unpool_kernel, x.size, x, idx, y)
    return y


def max_unpool_backward(gy, idx):
    gx = empty(idx.shape)
    _launch(max_unpool_backward_kernel, gx.size, gy, idx, gx)
    return gx


# --------------------------------------------------------------------------- adaptive pools
@cuda.jit(device=True, inline=True)
def _bin(i, size, out):
    return (i * size) // out, ((i + 1) * size + out - 1) // out


@cuda.jit(cache=True)
def adaptive_pool_kernel(x, y, idx, is_max):
    n, c, h, w = x.shape
    ho, wo = y.shape[2], y.shape[3]
    for e in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        b, ch, i, j = e // (c * ho * wo), (e // (ho * wo)) % c, (e // wo) % ho, e % wo
        r0, r1 = _bin(i, h, ho)
        c0, c1 = _bin(j, w, wo)
        if is_max:
            best, at = -math.inf, r0 * w + c0
            for r in range(r0, r1):
                for q in range(c0, c1):
                    v = x[b, ch, r, q]
                    if (v > best or v != v) and best == best:  # the first NaN stays
                        best, at = v, r * w + q
            y[b, ch, i, j] = best
            idx[b, ch, i, j] = at
        else:
            total = 0.0
            for r in range(r0, r1):
                for q in range(c0, c1):
                    total += x[b, ch, r, q]
            y[b, ch, i, j] = total / ((r1 - r0) * (c1 - c0))


@cuda.jit(cache=True)
def adaptive_avg_backward_kernel(gy, gx):
    n, c, h, w = gx.shape
    ho, wo = gy.shape[2], gy.shape[3]
    for e in range(cuda.grid(1), gy.size, cuda.gridsize(1)):
        b, ch, i, j = e // (c * ho * wo), (e // (ho * wo)) % c, (e // wo) % ho, e % wo
        r0, r1 = _bin(i, h, ho)
        c0, c1 = _bin(j, w, wo)
        g = gy[b, ch, i, j] / ((r1 - r0) * (c1 - c0))
        for r in range(r0, r1):
            for q in range(c0, c1):
                cuda.atomic.add(gx, (b, ch, r, q), g)


def adaptive_pool(x, out_hw, is_max: bool):
    """(y, positions of the maxima or None)."""
    n, c = x.shape[:2]
    y = result((n, c) + tuple(out_hw))
    idx = cuda.device_array(y.shape if is_max else (1, 1, 1, 1), dtype=np.int64)
    _launch(adaptive_pool_kernel, y.size, x, y, idx, is_max)
    return y, (idx if is_max else None)


def adaptive_pool_backward(gy, x_shape, idx):
    if idx is not None:
        return max_pool_backward(gy, idx, x_shape)
    gx = zeros(x_shape)
    _launch(adaptive_avg_backward_kernel, gy.size, gy, gx)
    return gx


# --------------------------------------------------------------------------- centre crop
@cuda.jit(cache=True)
def crop_kernel(x, y, top, left, forward):
    """y = x[:, :, top:top + Ho, left:left + Wo] (``forward``), or that window of y
    filled from x and the rest zeroed (the backward pass, x being the gradient)."""
    if forward:
        n, c, ho, wo = y.shape
        for e in range(cuda.grid(1), y.size, cuda.gridsize(1)):
            b, ch, r, q = e // (c * ho * wo), (e // (ho * wo)) % c, (e // wo) % ho, e % wo
            y[b, ch, r, q] = x[b, ch, r + top, q + left]
    else:
        n, c, h, w = y.shape
        ho, wo = x.shape[2], x.shape[3]
        for e in range(cuda.grid(1), y.size, cuda.gridsize(1)):
            b, ch, r, q = e // (c * h * w), (e // (h * w)) % c, (e // w) % h, e % w
            rr, qq = r - top, q - left
            y[b, ch, r, q] = x[b, ch, rr, qq] if 0 <= rr < ho and 0 <= qq < wo else 0.0


def center_crop(x, out_hw):
    ho, wo = out_hw
    top, left = (x.shape[2] - ho) // 2, (x.shape[3] - wo) // 2
    y = result(tuple(x.shape[:2]) + (ho, wo))
    _launch(crop_kernel, y.size, x, y, top, left, True)
    return y


def center_crop_backward(gy, x_shape):
    ho, wo = gy.shape[2:]
    top, left = (x_shape[2] - ho) // 2, (x_shape[3] - wo) // 2
    gx = empty(x_shape)
    _launch(crop_kernel, gx.size, gy, gx, top, left, False)
    return gx
