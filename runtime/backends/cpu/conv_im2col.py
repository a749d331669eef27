"""im2col for strided convolutions on the CPU: ``cols[(c, i, j), (n, y, x)] =
x_padded[n, c, y*s + i*d, x*s + j*d]`` for the whole batch (or a panel of it, fed straight
to a GEMM), and col2im, its adjoint, for the input gradient.

Every copy works on spans: the output columns of a filter tap whose source lies inside
the input are computed once per row (no test per element), and the indices in the loops
are unsigned (Numba checks a signed index for wrap-around, which keeps a loop scalar)."""

from __future__ import annotations

import numpy as np
from numba import njit, prange, uint64

from runtime.backends.cpu.blas import gemm
from runtime.backends.cpu.conv_pointwise import finish_block
from runtime.config import PARALLEL


@njit(cache=True)
def inside(j, dw, pl, sw, w, wo):
    """The output columns [x0, x1) whose source column ``xx*sw + j*dw - pl`` lies in
    [0, w), and that shift ``j*dw - pl``."""
    shift = j * dw - pl
    x0 = min(wo, max(0, (-shift + sw - 1) // sw))
    x1 = min(wo, max(x0, (w - 1 - shift) // sw + 1)) if w - 1 - shift >= 0 else x0
    return x0, x1, shift


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
        x0, x1, shift = inside(j, dw, pl, sw, w, wo)
        out = cols[row]
        usw = uint64(sw)
        for yy in range(ho):
            base = uint64(b * hw + yy * wo)
            src_y = yy * sh + i * dh - pt
            if src_y < 0 or src_y >= h:
                for xx in range(uint64(wo)):
                    out[base + xx] = 0.0
                continue
            for xx in range(uint64(x0)):
                out[base + xx] = 0.0
            at, src = base + uint64(x0), uint64(x0 * sw + shift)
            for k in range(uint64(x1 - x0)):
                out[at + k] = x[b, ch, src_y, src + k * usw]
            for xx in range(uint64(x1), uint64(wo)):
                out[base + xx] = 0.0
    return cols


@njit(cache=True)
def im2col_panel(x, panel, g, cg, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo, s, e):
    """Columns s..e-1 of group g's im2col matrix (the whole batch's output positions in
    order) into panel (cg*kh*kw, >= e - s)."""
    h, w = x.shape[2], x.shape[3]
    hw = ho * wo
    usw = uint64(sw)
    for r in range(cg * kh * kw):
        ch = g * cg + r // (kh * kw)
        i = (r // kw) % kh
        x0, x1, shift = inside(r % kw, dw, pl, sw, w, wo)
        row = panel[r]
        q = s
        while q < e:  # one output row (or the part of it in s..e-1) at a time
            b, rest = q // hw, q % hw
            yy, xs = rest // wo, rest % wo
            xe = min(wo, xs + e - q)
            at = uint64(q - s)  # the panel column of output column xs
            src_y = yy * sh + i * dh - pt
            lo, hi = max(xs, x0), min(xe, x1)
            if src_y < 0 or src_y >= h or lo >= hi:
                for k in range(uint64(xe - xs)):
                    row[at + k] = 0.0
            else:
                for k in range(uint64(lo - xs)):
                    row[at + k] = 0.0
                dest, src = at + uint64(lo - xs), uint64(lo * sw + shift)
                for k in range(uint64(hi - lo)):
                    row[dest + k] = x[b, ch, src_y, src + k * usw]
                for k in range(uint64(hi - xs), uint64(xe - xs)):
                    row[at + k] = 0.0
            q += xe - xs


@njit(cache=True, **PARALLEL)
def im2col_conv_kernel(x, wmat, groups, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo, block,
                       row_blocks, bias, residual, code, slope):
    """y (N, O, ho*wo): y[b] = W_g (O/g, C/g*kh*kw) @ sample b's im2col, the matrix never
    built whole: each thread job fills a panel of up to ``block`` of the sample's output
    positions (sized to stay in L2), multiplies it by a block of the filters' rows
    straight into y, and applies the epilogue (bias, residual (N, O, ho*wo), activation)
    to the block while it is in cache. ``row_blocks`` > 1 where the panels alone are too
    few jobs to share (a 7x7 map at batch 1 is one panel; each of those jobs fills the
    panel itself, cheap beside its GEMM)."""
    n, c = x.shape[0], x.shape[1]
    o = wmat.shape[0]
    og, cg = o // groups, c // groups
    hw = ho * wo
    y = np.empty((n, o, hw), dtype=x.dtype)
    blocks = (hw + block - 1) // block
    step = (og + row_blocks - 1) // row_blocks
    for job in prange(n * groups * row_blocks * blocks):
        b = job // (groups * row_blocks * blocks)
        g = (job // (row_blocks * blocks)) % groups
        r0 = g * og + ((job // blocks) % row_blocks) * step
        r1 = min((g + 1) * og, r0 + step)
        s = (job % blocks) * block
        e = min(hw, s + block)
        if r0 >= r1:
            continue
        panel = np.empty((cg * kh * kw, e - s), dtype=x.dtype)
        im2col_panel(x, panel, g, cg, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo, b * hw + s,
                     b * hw + e)
        out = y[b, r0:r1, s:e]
        gemm(wmat[r0:r1], panel, out, 0.0, False, False)
        finish_block(out, b, r0, s, e, bias, residual, code, slope)
    return y


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
    gx = np.empty((n, c, h, w), dtype=cols.dtype)
    hw = ho * wo
    usw = uint64(sw)
    for job in prange(n * c):  # each thread owns one (sample, channel) plane
        b = job // c
        ch = job % c
        plane = gx[b, ch]
        plane[:] = 0.0  # zeroed by the thread that fills it (one serial memset: 0.4 ms)
        for i in range(kh):
            for j in range(kw):
                row = (ch * kh + i) * kw + j
                x0, x1, shift = inside(j, dw, pl, sw, w, wo)
                src = cols[row]
                to = uint64(x0 * sw + shift)
                for yy in range(ho):
                    src_y = yy * sh + i * dh - pt
                    if src_y < 0 or src_y >= h:
                        continue
                    at = uint64(b * hw + yy * wo + x0)
                    dest = plane[src_y]  # a row: no 4-d index per element
                    if sw == 1:
                        for k in range(uint64(x1 - x0)):
                            dest[to + k] += src[at + k]
                    else:
                        for k in range(uint64(x1 - x0)):
                            dest[to + k * usw] += src[at + k]
    return gx
