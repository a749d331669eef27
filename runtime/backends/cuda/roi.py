"""RoI Align and RoI Pool on the GPU, over the geometry tables of ``runtime.backends.roi``
(built on the host in float64, copied once per call): one thread per output cell, whose
body is ``lines.roi_align_cell`` / ``lines.roi_pool_cell`` as on the CPU; the backward
passes scatter each cell's gradient with atomic adds (regions overlap)."""

from __future__ import annotations

import numpy as np
from numba import float32

from runtime.backends import lines, roi
from runtime.backends.cuda.kernels import (_launch, cuda, result, to_device,
                                           to_device_together, zeros)

_align_cell = cuda.jit(device=True, inline=True)(lines.roi_align_cell)
_pool_cell = cuda.jit(device=True, inline=True)(lines.roi_pool_cell)


@cuda.jit(cache=True)
def align_forward_kernel(x, batch, ylo, yhi, wylo, wyhi, xlo, xhi, wxlo, wxhi, inv, y):
    k_, c_, ph_, pw_ = y.shape
    for e in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        k, c, p, q = e // (c_ * ph_ * pw_), (e // (ph_ * pw_)) % c_, (e // pw_) % ph_, e % pw_
        y[k, c, p, q] = inv[k] * _align_cell(x, batch[k], c, ylo, yhi, wylo, wyhi, xlo, xhi,
                                             wxlo, wxhi, k, p, q)


@cuda.jit(cache=True)
def align_backward_kernel(gy, batch, ylo, yhi, wylo, wyhi, xlo, xhi, wxlo, wxhi, inv, gx):
    k_, c_, ph_, pw_ = gy.shape
    for e in range(cuda.grid(1), gy.size, cuda.gridsize(1)):
        k, c, p, q = e // (c_ * ph_ * pw_), (e // (ph_ * pw_)) % c_, (e // pw_) % ph_, e % pw_
        g = gy[k, c, p, q] * inv[k]
        b = batch[k]
        if g != 0.0:
            for i in range(ylo.shape[2]):
                a0, a1 = wylo[k, p, i] * g, wyhi[k, p, i] * g
                if a0 == 0.0 and a1 == 0.0:
                    continue
                r0, r1 = ylo[k, p, i], yhi[k, p, i]
                for j in range(xlo.shape[2]):
                    b0, b1 = wxlo[k, q, j], wxhi[k, q, j]
                    if b0 == 0.0 and b1 == 0.0:
                        continue
                    s0, s1 = xlo[k, q, j], xhi[k, q, j]
                    cuda.atomic.add(gx, (b, c, r0, s0), float32(a0 * b0))
                    cuda.atomic.add(gx, (b, c, r0, s1), float32(a0 * b1))
                    cuda.atomic.add(gx, (b, c, r1, s0), float32(a1 * b0))
                    cuda.atomic.add(gx, (b, c, r1, s1), float32(a1 * b1))


@cuda.jit(cache=True)
def pool_forward_kernel(x, batch, rs, re, cs, ce, y, where):
    k_, c_, ph_, pw_ = y.shape
    for e in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        k, c, p, q = e // (c_ * ph_ * pw_), (e // (ph_ * pw_)) % c_, (e // pw_) % ph_, e % pw_
        best, at = _pool_cell(x, batch[k], c, rs[k, p], re[k, p], cs[k, q], ce[k, q])
        y[k, c, p, q] = best if at >= 0 else 0.0
        where[k, c, p, q] = at


@cuda.jit(cache=True)
def pool_backward_kernel(gy, where, batch, gx):
    k_, c_, ph_, pw_ = gy.shape
    w = gx.shape[3]
    for e in range(cuda.grid(1), gy.size, cuda.gridsize(1)):
        k, c, p, q = e // (c_ * ph_ * pw_), (e // (ph_ * pw_)) % c_, (e // pw_) % ph_, e % pw_
        at = where[k, c, p, q]
        if at >= 0:
            cuda.atomic.add(gx, (batch[k], c, at // w, at % w), gy[k, c, p, q])


def _tables(batch, boxes, scale, out_hw, sampling_ratio, aligned, in_hw):
    """RoI Align's image of each box and its sampling tables, on the device in one copy
    per dtype."""
    rows, cols, inv = roi.align_tables(boxes, scale, out_hw, sampling_ratio, aligned, in_hw)
    return to_device_together(batch.astype(np.int64), rows.lo, rows.hi, rows.w_lo,
                              rows.w_hi, cols.lo, cols.hi, cols.w_lo, cols.w_hi, inv)


def align_forward(x, boxes: np.ndarray, batch: np.ndarray, scale: float, out_hw, sampling_ratio: int,
                  aligned: bool):
    """RoI Align of the device array ``x`` over host ``boxes`` (K, 4) and ``batch`` (K,)."""
    roi.check_boxes(boxes, batch, x.shape[0])
    y = result((len(boxes), x.shape[1]) + tuple(out_hw))
    if y.size:
        _launch(align_forward_kernel, y.size, x,
                *_tables(batch, boxes, scale, out_hw, sampling_ratio, aligned, x.shape[2:]),
                y)
    return y


def align_backward(gy, boxes: np.ndarray, batch: np.ndarray, scale: float, sampling_ratio: int,
                   aligned: bool, in_shape: tuple):
    gx = zeros(in_shape, np.float32)
    if gy.size:
        _launch(align_backward_kernel, gy.size, gy,
                *_tables(batch, boxes, scale, gy.shape[2:], sampling_ratio, aligned,
                         in_shape[2:]), gx)
    return gx


def pool_forward(x, boxes: np.ndarray, batch: np.ndarray, scale: float, out_hw):
    """RoI Pool: (maxima, positions) as device arrays."""
    roi.check_boxes(boxes, batch, x.shape[0])
    (rs, re), (cs, ce) = roi.pool_bins(boxes, scale, out_hw, x.shape[2:])
    y = result((len(boxes), x.shape[1]) + tuple(out_hw))
    where = cuda.device_array(y.shape, dtype=np.int64)
    if y.size:
        _launch(pool_forward_kernel, y.size, x,
                *to_device_together(batch.astype(np.int64), rs, re, cs, ce), y, where)
    return y, where


def pool_backward(gy, where, batch: np.ndarray, in_shape: tuple):
    gx = zeros(in_shape, np.float32)
    if gy.size:
        _launch(pool_backward_kernel, gy.size, gy, where, to_device(batch.astype(np.int64)), gx)
    return gx


@cuda.jit(cache=True)
def put_rows_kernel(y, rows, part):
    """y[rows[i]] = part[i], row by row (a pyramid level's boxes into the output)."""
    inner = part.size // max(part.shape[0], 1)
    flat_y, flat_p = y.reshape((y.shape[0], inner)), part.reshape((part.shape[0], inner))
    for e in range(cuda.grid(1), part.size, cuda.gridsize(1)):
        flat_y[rows[e // inner], e % inner] = flat_p[e // inner, e % inner]


@cuda.jit(cache=True)
def take_rows_kernel(g, rows, part):
    """part[i] = g[rows[i]]."""
    inner = part.size // max(part.shape[0], 1)
    flat_g, flat_p = g.reshape((g.shape[0], inner)), part.reshape((part.shape[0], inner))
    for e in range(cuda.grid(1), part.size, cuda.gridsize(1)):
        flat_p[e // inner, e % inner] = flat_g[rows[e // inner], e % inner]


def _put(y, rows, part):
    if part.size:
        _launch(put_rows_kernel, part.size, y, to_device(rows.astype(np.int64)), part)


def _take(g, rows):
    part = cuda.device_array((len(rows),) + tuple(g.shape[1:]), dtype=np.float32)
    if part.size:
        _launch(take_rows_kernel, part.size, g, to_device(rows.astype(np.int64)), part)
    return part


def _host(array):
    return array.copy_to_host() if hasattr(array, "copy_to_host") else np.asarray(array)


KERNELS = roi.Kernels(align_forward, align_backward, pool_forward, pool_backward, zeros, _put,
                      _take, _host)


LAYERS = roi.layer_kernels(KERNELS)
"""roi_align and roi_pool: (forward, backward) over these kernels."""
