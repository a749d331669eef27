"""Convolutions that need no im2col: unpadded 1x1 (a GEMM per sample on the map as it
lies) and depthwise (a direct loop: one filter per channel, where a GEMM would be C tiny
products), with their gradients and the fused epilogue applied per output row."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from runtime.backends.cpu.blas import gemm
from runtime.backends.cpu.elementwise import activate_inplace
from runtime.config import PARALLEL


@njit(cache=True, **PARALLEL)
def pointwise_kernel(x, w, groups, transpose, bias, block, residual, code, slope):
    """A 1x1 conv per sample on the map as it lies: y[b] = W_g @ x[b] per group (x (N, C,
    HW), w (O, C/g)), or W_g.T @ x[b] when ``transpose`` (the input gradient); threads take
    (sample, group, column block) jobs. The epilogue (bias, residual (N, O, HW), activation
    ``code``) runs on each block right after its GEMM; empty arrays and a negative code
    add nothing."""
    n, hw = x.shape[0], x.shape[2]
    og, cg = w.shape[0] // groups, w.shape[1]
    rows_in, rows_out = (og, cg) if transpose else (cg, og)
    y = np.empty((n, rows_out * groups, hw), dtype=x.dtype)
    blocks = (hw + block - 1) // block
    for job in prange(n * groups * blocks):
        b = job // (groups * blocks)
        g = (job // blocks) % groups
        s = (job % blocks) * block
        e = min(hw, s + block)
        out = y[b, g * rows_out:(g + 1) * rows_out, s:e]
        gemm(w[g * og:(g + 1) * og], x[b, g * rows_in:(g + 1) * rows_in, s:e], out, 0.0,
             transpose, False)
        for r in range(rows_out):
            if bias.size:
                out[r] += bias[g * rows_out + r]
            if residual.shape[0]:
                out[r] += residual[b, g * rows_out + r, s:e]
            activate_inplace(out[r], code, slope)
    return y


@njit(cache=True, **PARALLEL)
def pointwise_weight_grad_kernel(x, gy, groups, splits):
    """(O, C/g) = sum over samples of gy[b] @ x[b].T per group; the samples are dealt out
    to ``splits`` partial sums."""
    n, c, hw = x.shape
    o = gy.shape[1]
    og, cg = o // groups, c // groups
    partial = np.zeros((splits, o, cg), dtype=x.dtype)
    for job in prange(splits * groups):
        k = job // groups
        g = job % groups
        for b in range(k, n, splits):
            gemm(gy[b, g * og:(g + 1) * og], x[b, g * cg:(g + 1) * cg],
                 partial[k, g * og:(g + 1) * og], 1.0, False, True)
    return partial.sum(axis=0)


@njit(cache=True)
def _finish_row(acc, bias, residual, b, o, yy, code, slope):
    """A depthwise output row's epilogue: bias, residual, activation (empty: nothing)."""
    if bias.size:
        add = bias[o]
        for xx in range(acc.size):
            acc[xx] += add
    if residual.shape[0]:
        res = residual[b, o, yy]
        for xx in range(acc.size):
            acc[xx] += res[xx]
    activate_inplace(acc, code, slope)


@njit(cache=True, **PARALLEL)
def depthwise_forward_kernel(xp, w, kh, kw, sh, sw, dh, dw, ho, wo, mult, bias, residual,
                             code, slope):
    """y[n, c*mult + m] = sum_ij w[c*mult + m, 0, i, j] * xp[n, c, ...] on the zero-padded
    input xp (no border tests). Each output row is summed in a small local buffer and
    written once: the taps' loops then vectorise (adding into the output array in place
    did not, Numba cannot rule out that it overlaps the input: 10x slower). 3x3 filters,
    the MobileNet case, take all nine taps in one pass over the row. Each row gets the
    epilogue (bias, residual, activation) before it is written."""
    n, c = xp.shape[0], xp.shape[1]
    y = np.empty((n, c * mult, ho, wo), dtype=xp.dtype)
    for job in prange(n * c * mult):
        b = job // (c * mult)
        o = job % (c * mult)
        ch = o // mult
        acc = np.empty(wo, dtype=xp.dtype)
        if kh == 3 and kw == 3:
            w00, w01, w02 = w[o, 0, 0, 0], w[o, 0, 0, 1], w[o, 0, 0, 2]
            w10, w11, w12 = w[o, 0, 1, 0], w[o, 0, 1, 1], w[o, 0, 1, 2]
            w20, w21, w22 = w[o, 0, 2, 0], w[o, 0, 2, 1], w[o, 0, 2, 2]
            for yy in range(ho):
                r0 = xp[b, ch, yy * sh]
                r1 = xp[b, ch, yy * sh + dh]
                r2 = xp[b, ch, yy * sh + 2 * dh]
                if sw == 1:
                    for xx in range(wo):
                        acc[xx] = (w00 * r0[xx] + w01 * r0[xx + dw] + w02 * r0[xx + 2 * dw]
                                   + w10 * r1[xx] + w11 * r1[xx + dw] + w12 * r1[xx + 2 * dw]
                                   + w20 * r2[xx] + w21 * r2[xx + dw] + w22 * r2[xx + 2 * dw])
                else:
                    for xx in range(wo):
                        q = xx * sw
                        acc[xx] = (w00 * r0[q] + w01 * r0[q + dw] + w02 * r0[q + 2 * dw]
                                   + w10 * r1[q] + w11 * r1[q + dw] + w12 * r1[q + 2 * dw]
                                   + w20 * r2[q] + w21 * r2[q + dw] + w22 * r2[q + 2 * dw])
                _finish_row(acc, bias, residual, b, o, yy, code, slope)
                y[b, o, yy, :] = acc
            continue
        for yy in range(ho):
            acc[:] = 0.0
            for i in range(kh):
                src = xp[b, ch, yy * sh + i * dh]
                for j in range(kw):
                    wt = w[o, 0, i, j]
                    start = j * dw
                    if sw == 1:
                        for xx in range(wo):
                            acc[xx] += wt * src[start + xx]
                    else:
                        for xx in range(wo):
                            acc[xx] += wt * src[start + xx * sw]
            _finish_row(acc, bias, residual, b, o, yy, code, slope)
            y[b, o, yy, :] = acc
    return y


@njit(cache=True, **PARALLEL)
def depthwise_filter_grad_kernel(xp, gy, kh, kw, sh, sw, dh, dw, mult):
    """Filter gradients, per sample (summed after): dot products of gy with the shifted
    padded input, accumulated per column in a local row (vectorises; a scalar sum does not
    without reassociation)."""
    n, c = xp.shape[0], xp.shape[1]
    ho, wo = gy.shape[2], gy.shape[3]
    gw = np.empty((n, c * mult, 1, kh, kw), dtype=xp.dtype)
    for job in prange(n * c * mult):
        b = job // (c * mult)
        o = job % (c * mult)
        ch = o // mult
        acc = np.empty(wo, dtype=xp.dtype)
        for i in range(kh):
            for j in range(kw):
                acc[:] = 0.0
                start = j * dw
                for yy in range(ho):
                    g = gy[b, o, yy]
                    src = xp[b, ch, yy * sh + i * dh]
                    if sw == 1:
                        for xx in range(wo):
                            acc[xx] += src[start + xx] * g[xx]
                    else:
                        for xx in range(wo):
                            acc[xx] += src[start + xx * sw] * g[xx]
                gw[b, o, 0, i, j] = acc.sum()
    return gw.sum(axis=0)


@njit(cache=True, **PARALLEL)
def depthwise_input_grad_kernel(gy, w, hp, wp, kh, kw, sh, sw, dh, dw, mult):
    """The gradient on the padded input by scattering (any stride or multiplier)."""
    n, ho, wo = gy.shape[0], gy.shape[2], gy.shape[3]
    c = gy.shape[1] // mult
    gxp = np.zeros((n, c, hp, wp), dtype=gy.dtype)
    for job in prange(n * c):  # each thread owns one (sample, channel) plane
        b = job // c
        ch = job % c
        for m in range(mult):
            o = ch * mult + m
            for i in range(kh):
                for j in range(kw):
                    wt = w[o, 0, i, j]
                    for yy in range(ho):
                        dst = gxp[b, ch, yy * sh + i * dh]
                        g = gy[b, o, yy]
                        for xx in range(wo):
                            dst[j * dw + xx * sw] += wt * g[xx]
    return gxp
