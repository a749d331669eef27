"""im2col for strided convolutions on the CPU: ``cols[(c, i, j), (n, y, x)] =
x_padded[n, c, y*s + i*d, x*s + j*d]`` for the whole batch (or a panel of it, fed straight
to a GEMM), and col2im, its adjoint, for the input gradient."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from runtime.backends.cpu.blas import gemm
from runtime.config import PARALLEL


@njit(cache=True, **PARALLEL)
def im2col_kernel(x, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo):
    """cols (C*kh*kw, N*ho*wo) of a batch x (N, C, H, W), zero outside the input: the whole
    batch in one matrix, so each group is a single large GEMM. Each output row's span
    inside the input is computed once, so the copy loop has no border tests."""
    n, c, h, w = x.shape
    hw = ho * wo
    cols = np.empty((c * kh * kw, n * hw), dtype=x.dtype)
    for job in prange(c * kh * kw * n):
        row = job // n
        b = job % n
        ch = row // (kh * kw)
        i = (row // kw) % kh
        j = row % kw
        # output columns xx whose source column xx*sw + j*dw - pl lies in [0, w)
        shift = j * dw - pl
        x0 = min(wo, max(0, (-shift + sw - 1) // sw))
        x1 = min(wo, max(x0, (w - 1 - shift) // sw + 1)) if w - 1 - shift >= 0 else x0
        out = cols[row]
        for yy in range(ho):
            base = b * hw + yy * wo
            src_y = yy * sh + i * dh - pt
            if src_y < 0 or src_y >= h:
                for xx in range(wo):
                    out[base + xx] = 0.0
                continue
            src = x[b, ch, src_y]
            for xx in range(x0):
                out[base + xx] = 0.0
            if sw == 1:
                for xx in range(x0, x1):
                    out[base + xx] = src[xx + shift]
            else:
                for xx in range(x0, x1):
                    out[base + xx] = src[xx * sw + shift]
            for xx in range(x1, wo):
                out[base + xx] = 0.0
    return cols


@njit(cache=True)
def im2col_panel(x, panel, g, cg, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo, s, e):
    """Columns s..e-1 of group g's im2col matrix (the whole batch's output positions in
    order) into panel (cg*kh*kw, >= e - s)."""
    h, w = x.shape[2], x.shape[3]
    hw = ho * wo
    for r in range(cg * kh * kw):
        ch = g * cg + r // (kh * kw)
        i = (r // kw) % kh
        j = r % kw
        b, rest = s // hw, s % hw
        yy, xx = rest // wo, rest % wo
        row = panel[r]
        for q in range(e - s):
            src_y = yy * sh + i * dh - pt
            src_x = xx * sw + j * dw - pl
            if 0 <= src_y < h and 0 <= src_x < w:
                row[q] = x[b, ch, src_y, src_x]
            else:
                row[q] = 0.0
            xx += 1
            if xx == wo:
                xx = 0
                yy += 1
                if yy == ho:
                    yy = 0
                    b += 1


@njit(cache=True, **PARALLEL)
def im2col_gemm_kernel(x, wmat, groups, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo, block):
    """out (O, N*ho*wo) = W_g (O/g, C/g*kh*kw) @ im2col, the im2col matrix never built
    whole: each thread job fills a panel of ``block`` columns (sized to stay in L2) and
    multiplies it at once."""
    n, c = x.shape[0], x.shape[1]
    o = wmat.shape[0]
    og, cg = o // groups, c // groups
    length = n * ho * wo
    out = np.empty((o, length), dtype=x.dtype)
    blocks = (length + block - 1) // block
    for job in prange(groups * blocks):
        g = job // blocks
        s = (job % blocks) * block
        e = min(length, s + block)
        panel = np.empty((cg * kh * kw, e - s), dtype=x.dtype)
        im2col_panel(x, panel, g, cg, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo, s, e)
        gemm(wmat[g * og:(g + 1) * og], panel, out[g * og:(g + 1) * og, s:e], 0.0, False, False)
    return out


@njit(cache=True, **PARALLEL)
def im2col_weight_grad_kernel(x, gy_grid, groups, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo,
                              splits, block):
    """(O, C/g*kh*kw) = gy_grid @ im2col.T, from panels as in im2col_gemm_kernel; the
    positions are cut into ``splits`` parts (one per thread, summed at the end)."""
    c = x.shape[1]
    o, length = gy_grid.shape
    og, cg = o // groups, c // groups
    k = cg * kh * kw
    part = (length + splits - 1) // splits
    partial = np.zeros((splits, o, k), dtype=x.dtype)
    for sp in prange(splits):
        panel = np.empty((k, block), dtype=x.dtype)
        for s in range(sp * part, min(length, (sp + 1) * part), block):
            e = min(length, (sp + 1) * part, s + block)
            for g in range(groups):
                im2col_panel(x, panel, g, cg, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo, s, e)
                gemm(gy_grid[g * og:(g + 1) * og, s:e], panel[:, :e - s],
                     partial[sp, g * og:(g + 1) * og], 1.0, False, True)
    return partial.sum(axis=0)


@njit(cache=True, **PARALLEL)
def col2im_kernel(cols, n, c, h, w, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo):
    """The adjoint of im2col: add each column entry back onto its input pixel."""
    gx = np.zeros((n, c, h, w), dtype=cols.dtype)
    hw = ho * wo
    for job in prange(n * c):  # each thread owns one (sample, channel) plane
        b = job // c
        ch = job % c
        for i in range(kh):
            for j in range(kw):
                row = (ch * kh + i) * kw + j
                for yy in range(ho):
                    src_y = yy * sh + i * dh - pt
                    if src_y < 0 or src_y >= h:
                        continue
                    for xx in range(wo):
                        src_x = xx * sw + j * dw - pl
                        if 0 <= src_x < w:
                            gx[b, ch, src_y, src_x] += cols[row, b * hw + yy * wo + xx]
    return gx
