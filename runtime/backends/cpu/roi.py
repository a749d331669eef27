"""RoI Align and RoI Pool on the CPU: Numba kernels over the geometry tables of
``runtime.backends.roi`` (which holds the definition).

Forward passes run one (region, channel) pair per iteration in parallel; backward passes
run one channel per thread, so that the regions of one image, which overlap, add into
their map without a race. Sums are in float64: a bin averages up to thousands of samples
and a map pixel gathers the gradients of every region that covers it.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from runtime.backends import lines, roi


_align_cell = njit(cache=True, inline="always")(lines.roi_align_cell)
_pool_cell = njit(cache=True, inline="always")(lines.roi_pool_cell)


@njit(parallel=True, cache=True)
def align_forward_kernel(x, batch, ylo, yhi, wylo, wyhi, xlo, xhi, wxlo, wxhi, inv, y):
    k_, c_, ph_, pw_ = y.shape
    for e in prange(k_ * c_):
        k, c = e // c_, e % c_
        for p in range(ph_):
            for q in range(pw_):
                y[k, c, p, q] = inv[k] * _align_cell(x, batch[k], c, ylo, yhi, wylo, wyhi,
                                                     xlo, xhi, wxlo, wxhi, k, p, q)


@njit(parallel=True, cache=True)
def align_backward_kernel(gy, batch, ylo, yhi, wylo, wyhi, xlo, xhi, wxlo, wxhi, inv, gx):
    k_, c_, ph_, pw_ = gy.shape
    gy_, gx_ = ylo.shape[2], xlo.shape[2]
    for c in prange(c_):
        for k in range(k_):
            b = batch[k]
            for p in range(ph_):
                for q in range(pw_):
                    g = gy[k, c, p, q] * inv[k]
                    if g == 0.0:
                        continue
                    for i in range(gy_):
                        a0, a1 = wylo[k, p, i] * g, wyhi[k, p, i] * g
                        if a0 == 0.0 and a1 == 0.0:
                            continue
                        r0, r1 = ylo[k, p, i], yhi[k, p, i]
                        for j in range(gx_):
                            b0, b1 = wxlo[k, q, j], wxhi[k, q, j]
                            s0, s1 = xlo[k, q, j], xhi[k, q, j]
                            gx[b, c, r0, s0] += a0 * b0
                            gx[b, c, r0, s1] += a0 * b1
                            gx[b, c, r1, s0] += a1 * b0
                            gx[b, c, r1, s1] += a1 * b1


@njit(parallel=True, cache=True)
def pool_forward_kernel(x, batch, rs, re, cs, ce, y, where):
    k_, c_, ph_, pw_ = y.shape
    for e in prange(k_ * c_):
        k, c = e // c_, e % c_
        for p in range(ph_):
            for q in range(pw_):
                best, at = _pool_cell(x, batch[k], c, rs[k, p], re[k, p], cs[k, q], ce[k, q])
                y[k, c, p, q] = best if at >= 0 else 0.0
                where[k, c, p, q] = at


@njit(parallel=True, cache=True)
def pool_backward_kernel(gy, where, batch, gx):
    k_, c_, ph_, pw_ = gy.shape
    w = gx.shape[3]
    for c in prange(c_):
        for k in range(k_):
            b = batch[k]
            for p in range(ph_):
                for q in range(pw_):
                    at = where[k, c, p, q]
                    if at >= 0:
                        gx[b, c, at // w, at % w] += gy[k, c, p, q]


def _tables(boxes, scale, out_hw, sampling_ratio, aligned, in_hw):
    rows, cols, inv = roi.align_tables(boxes, scale, out_hw, sampling_ratio, aligned, in_hw)
    return (rows.lo, rows.hi, rows.w_lo, rows.w_hi, cols.lo, cols.hi, cols.w_lo, cols.w_hi, inv)


def align_forward(x: np.ndarray, boxes: np.ndarray, batch: np.ndarray, scale: float,
                  out_hw: tuple[int, int], sampling_ratio: int, aligned: bool) -> np.ndarray:
    """As ``roi.align_forward``: (K, C, PH, PW) in ``x``'s dtype."""
    roi.check_boxes(boxes, batch, x.shape[0])
    y = np.empty((len(boxes), x.shape[1]) + tuple(out_hw), dtype=x.dtype)
    align_forward_kernel(np.ascontiguousarray(x), batch.astype(np.int64),
                         *_tables(boxes, scale, out_hw, sampling_ratio, aligned, x.shape[2:]), y)
    return y


def align_backward(gy: np.ndarray, boxes: np.ndarray, batch: np.ndarray, scale: float,
                   sampling_ratio: int, aligned: bool, in_shape: tuple) -> np.ndarray:
    """As ``roi.align_backward``."""
    gx = np.zeros(in_shape, dtype=np.float64)
    align_backward_kernel(np.ascontiguousarray(gy), batch.astype(np.int64),
                          *_tables(boxes, scale, gy.shape[2:], sampling_ratio, aligned,
                                   in_shape[2:]), gx)
    return gx.astype(gy.dtype)


def pool_forward(x: np.ndarray, boxes: np.ndarray, batch: np.ndarray, scale: float,
                 out_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """As ``roi.pool_forward``: maxima and their positions."""
    roi.check_boxes(boxes, batch, x.shape[0])
    (rs, re), (cs, ce) = roi.pool_bins(boxes, scale, out_hw, x.shape[2:])
    y = np.empty((len(boxes), x.shape[1]) + tuple(out_hw), dtype=x.dtype)
    where = np.empty(y.shape, dtype=np.int64)
    pool_forward_kernel(np.ascontiguousarray(x), batch.astype(np.int64), rs, re, cs, ce, y, where)
    return y, where


def pool_backward(gy: np.ndarray, where: np.ndarray, batch: np.ndarray,
                  in_shape: tuple) -> np.ndarray:
    """As ``roi.pool_backward``."""
    gx = np.zeros(in_shape, dtype=np.float64)
    pool_backward_kernel(np.ascontiguousarray(gy), where, batch.astype(np.int64), gx)
    return gx.astype(gy.dtype)


KERNELS = roi.Kernels(align_forward, align_backward, pool_forward, pool_backward,
                      roi.NUMPY.zeros, roi.NUMPY.put, roi.NUMPY.take)


LAYERS = roi.layer_kernels(KERNELS)
"""roi_align and roi_pool: (forward, backward) over these kernels."""
