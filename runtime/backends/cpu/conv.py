"""Convolution kernels for the CPU, the algorithm chosen per case (measurements in
docs/performance.md):

- stride 1 (any kernel size, dilation, groups): one GEMM per filter tap on a padded
  "grid" layout, no im2col. The input is copied once into ``grid (C, N*Hp*Wp + tail)``:
  channel-major, each sample's padded map flattened. Output position p of the grid sees
  tap (i, j) at column ``p + i*dh*Wp + j*dw``, so ``out_grid (O, N*Hp*Wp) = sum_t W_t @
  grid[:, off_t : off_t + L]``: kh*kw GEMMs accumulating in place (beta = 1) on column
  slices, every one a large matrix product. Grid positions past the output's width or
  height are computed and dropped (a few percent at 56x56). The input gradient is the
  adjoint (``W_t.T @ gy_grid`` added at the shifted columns) and the weight gradient per
  tap ``gy_grid @ grid[:, off_t : off_t + L].T`` (a GEMM with a long inner dimension).
- strided: im2col of the whole batch + one GEMM per group;
  ``cols[(c, i, j), (n, y, x)] = x_padded[n, c, y*s + i*d, x*s + j*d]``, input gradient by
  col2im.
- unpadded 1x1: a GEMM per sample on the map as it lies.
- depthwise: a direct loop (one filter per channel: a GEMM would be C tiny products).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from runtime.backends.cpu.blas import gemm
from runtime.backends.cpu.elementwise import NO_ACTIVATION, activate_inplace, fused_forward
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


@njit(cache=True, **PARALLEL)
def to_grid(x, top, left, hp, wp, tail):
    """x (N, C, H, W) -> grid (C, N*hp*wp + tail): sample b's map placed at (top, left) of
    its hp x wp block, zeros around it and in the tail."""
    n, c, h, w = x.shape
    plane = hp * wp
    grid = np.empty((c, n * plane + tail), dtype=x.dtype)
    for job in prange(c * n):
        ch = job // n
        b = job % n
        base = b * plane
        for yy in range(hp):
            row = base + yy * wp
            src_y = yy - top
            if src_y < 0 or src_y >= h:
                for xx in range(wp):
                    grid[ch, row + xx] = 0.0
                continue
            for xx in range(left):
                grid[ch, row + xx] = 0.0
            for xx in range(w):
                grid[ch, row + left + xx] = x[b, ch, src_y, xx]
            for xx in range(left + w, wp):
                grid[ch, row + xx] = 0.0
        if b == n - 1:
            for t in range(tail):
                grid[ch, n * plane + t] = 0.0
    return grid


@njit(cache=True, **PARALLEL)
def from_grid(grid, n, top, left, h, w, hp, wp, bias, residual, code, slope):
    """The (N, C, h, w) window at (top, left) of each sample's block of a grid, plus a
    per-channel bias and a residual (empty arrays add nothing), then activation ``code``
    (negative: none), row by row while the row is in cache: the fused epilogue."""
    c = grid.shape[0]
    plane = hp * wp
    y = np.empty((n, c, h, w), dtype=grid.dtype)
    for job in prange(n * c):
        b = job // c
        ch = job % c
        add = bias[ch] if bias.size else 0.0
        for yy in range(h):
            row = b * plane + (yy + top) * wp + left
            out = y[b, ch, yy]
            for xx in range(w):
                out[xx] = grid[ch, row + xx] + add
            if residual.shape[0]:
                res = residual[b, ch, yy]
                for xx in range(w):
                    out[xx] += res[xx]
            activate_inplace(out, code, slope)
    return y


ROW_BLOCK = 128  # output channels per job in grid_conv_kernel (a constant: Numba freezes it)


@njit(cache=True, **PARALLEL)
def grid_conv_kernel(grid, taps, offsets, groups, length, block):
    """out (O, length) = sum over taps t of taps[t] @ grid[:, off_t : off_t + length], per
    group. The threads share column blocks of the output (``block`` wide, an output block
    stays in cache while every tap adds to it); each block's GEMMs are single-threaded."""
    o, cg = taps.shape[1], taps.shape[2]
    og = o // groups
    rows = min(og, ROW_BLOCK)  # many output channels: row blocks too, for more jobs
    row_blocks = (og + rows - 1) // rows
    out = np.empty((o, length), dtype=grid.dtype)
    blocks = (length + block - 1) // block
    for job in prange(groups * row_blocks * blocks):
        g = job // (row_blocks * blocks)
        r0 = g * og + ((job // blocks) % row_blocks) * rows
        r1 = min((g + 1) * og, r0 + rows)
        s = (job % blocks) * block
        e = min(length, s + block)
        for t in range(offsets.size):
            off = offsets[t]
            gemm(taps[t, r0:r1], grid[g * cg:(g + 1) * cg, s + off:e + off], out[r0:r1, s:e],
                 0.0 if t == 0 else 1.0, False, False)
    return out


@njit(cache=True, **PARALLEL)
def grid_conv_input_grad_kernel(taps, offsets, groups, gy_grid, width, block):
    """The input gradient on the grid (C, width): column q gathers taps[t].T @ gy_grid[:,
    q - off_t] over the taps that reach it; the threads share column blocks."""
    o, cg = taps.shape[1], taps.shape[2]
    og = o // groups
    length = gy_grid.shape[1]
    g_grid = np.zeros((cg * groups, width), dtype=gy_grid.dtype)
    blocks = (width + block - 1) // block
    for job in prange(groups * blocks):
        g = job // blocks
        s = (job % blocks) * block
        e = min(width, s + block)
        for t in range(offsets.size):
            off = offsets[t]
            lo, hi = max(s, off), min(e, length + off)
            if lo < hi:
                gemm(taps[t, g * og:(g + 1) * og], gy_grid[g * og:(g + 1) * og, lo - off:hi - off],
                     g_grid[g * cg:(g + 1) * cg, lo:hi], 1.0, True, False)
    return g_grid


@njit(cache=True, **PARALLEL)
def grid_conv_weight_grad_kernel(grid, offsets, groups, gy_grid, cg, splits, block):
    """Per-tap weight gradients (taps, O, C/g): gy_grid @ grid[:, off_t : off_t + L].T. The
    long inner dimension L is cut into ``splits`` parts (one per thread, summed at the end),
    each walked in blocks of ``block`` columns with every tap applied to a block while it is
    in cache (tap by tap over the whole of L read everything once per tap)."""
    o, length = gy_grid.shape
    og = o // groups
    taps = offsets.size
    part = (length + splits - 1) // splits
    partial = np.zeros((splits, taps, o, cg), dtype=gy_grid.dtype)
    for k in prange(splits):
        for s in range(k * part, min(length, (k + 1) * part), block):
            e = min(length, (k + 1) * part, s + block)
            for g in range(groups):
                for t in range(taps):
                    off = offsets[t]
                    gemm(gy_grid[g * og:(g + 1) * og, s:e],
                         grid[g * cg:(g + 1) * cg, s + off:e + off],
                         partial[k, t, g * og:(g + 1) * og], 1.0, False, True)
    return partial.sum(axis=0)


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


def _padded(x, op):
    (pt, pb), (pl, pr) = op.attrs["pads"]
    return np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr))) if pt or pb or pl or pr else x


def _geometry(op):
    a = op.attrs
    (kh, kw), (sh, sw), (dh, dw) = a["kernel_size"], a["stride"], a["dilation"]
    (pt, _), (pl, _) = a["pads"]
    ho, wo = op.out_shape[1:]
    return kh, kw, sh, sw, dh, dw, pt, pl, ho, wo


def _is_pointwise(op) -> bool:
    """A 1x1 conv without padding is a GEMM per sample on the map as it lies: no im2col."""
    a = op.attrs
    return tuple(a["kernel_size"]) == (1, 1) and a["pads"] == ((0, 0), (0, 0))


def _pointwise_input(op, x):
    sh, sw = op.attrs["stride"]
    return np.ascontiguousarray(x[:, :, ::sh, ::sw]) if (sh, sw) != (1, 1) else x


def _is_depthwise(op, x) -> bool:
    g = op.attrs["groups"]
    return g > 1 and g == x.shape[1]


class _Grid:
    """Where a stride-1 conv's input sits in the grid layout (see the module docstring)."""

    def __init__(self, op, x):
        a = op.attrs
        (kh, kw), (dh, dw) = a["kernel_size"], a["dilation"]
        (self.top, bottom), (self.left, right) = a["pads"]
        self.n, _, self.h, self.w = x.shape
        self.hp, self.wp = self.h + self.top + bottom, self.w + self.left + right
        self.offsets = np.array([i * dh * self.wp + j * dw for i in range(kh) for j in range(kw)],
                                dtype=np.int64)
        self.tail = int(self.offsets[-1])
        self.length = self.n * self.hp * self.wp

    def grid(self, x):
        return to_grid(x, self.top, self.left, self.hp, self.wp, self.tail)


def _taps(w):
    """(O, C/g, kh, kw) -> (kh*kw, O, C/g): one contiguous matrix per filter tap."""
    o, cg, kh, kw = w.shape
    return np.ascontiguousarray(w.transpose(2, 3, 0, 1).reshape(kh * kw, o, cg))


def _block(rows: int) -> int:
    """Output columns per thread job: about 256 KB of output block, so it stays in L2 while
    every tap adds to it."""
    return max(256, min(8192, (65536 // max(rows, 1)) // 64 * 64))


def _panel(rows: int) -> int:
    """im2col columns per panel: about 512 KB of panel, so it stays in L2 for its GEMM."""
    return max(64, min(8192, (131072 // max(rows, 1)) // 16 * 16))


def _grid_forward(op, x, w, bias, residual, code, slope):
    layout = _Grid(op, x)
    out = grid_conv_kernel(layout.grid(x), _taps(w), layout.offsets, op.attrs["groups"],
                           layout.length, _block(w.shape[0] // op.attrs["groups"]))
    ho, wo = op.out_shape[1:]
    return from_grid(out, layout.n, 0, 0, ho, wo, layout.hp, layout.wp, bias, residual, code,
                     slope)


def _grid_backward(op, x, w, gy):
    layout = _Grid(op, x)
    groups = op.attrs["groups"]
    gy_grid = to_grid(gy, 0, 0, layout.hp, layout.wp, 0)
    taps = _taps(w)
    g_grid = grid_conv_input_grad_kernel(taps, layout.offsets, groups, gy_grid,
                                         layout.length + layout.tail, _block(w.shape[1]))
    gx = from_grid(g_grid, layout.n, layout.top, layout.left, layout.h, layout.w, layout.hp,
                   layout.wp, *_no_epilogue(x))
    g_taps = grid_conv_weight_grad_kernel(layout.grid(x), layout.offsets, groups, gy_grid,
                                          w.shape[1], numba.get_num_threads(), _block(w.shape[0]))
    kh, kw = op.attrs["kernel_size"]
    gw = g_taps.reshape(kh, kw, *w.shape[:2]).transpose(2, 3, 0, 1)
    return gx, np.ascontiguousarray(gw)


# Stride-1 convs on the grid (a GEMM per tap) rather than through im2col, unless the grid
# is mostly padding and the channels many: bench/bench_conv.py, which times both on the
# same shapes (the switches are for it), measured the grid 1.03-3.7x faster down to 8x8
# maps (a grid 1.56x the map) and at LeNet's 6 channels even with a grid 1.96x the map,
# and im2col 1.4x faster at 7x7 with 512 channels (a grid 1.65x the map).
GRID_AT_STRIDE_1 = True
GRID_WASTE_LIMIT = 1.6
GRID_FEW_CHANNELS = 128  # below this many input channels per group, the grid regardless


def _use_grid(op, x) -> bool:
    (pt, pb), (pl, pr) = op.attrs["pads"]
    h, w = x.shape[2:]
    ho, wo = op.out_shape[1:]
    waste = (h + pt + pb) * (w + pl + pr) / (ho * wo)
    few = x.shape[1] // op.attrs["groups"] < GRID_FEW_CHANNELS
    return GRID_AT_STRIDE_1 and tuple(op.attrs["stride"]) == (1, 1) and (
        waste <= GRID_WASTE_LIMIT or few)


def _bias(p, x):
    return p["bias"] if "bias" in p else np.empty(0, dtype=x.dtype)


def _no_residual(x, rank: int = 4):
    return np.empty((0,) * rank, dtype=x.dtype)


def _no_epilogue(x, rank: int = 4):
    """Epilogue arguments that do nothing: (bias, residual, activation code, slope)."""
    return np.empty(0, dtype=x.dtype), _no_residual(x, rank), NO_ACTIVATION, 0.0


def _conv2d(op, xs, p, code, slope):
    """The conv and its epilogue: bias, residual (a second input), activation ``code``."""
    x = np.ascontiguousarray(xs[0])
    residual = np.ascontiguousarray(xs[1]) if len(xs) > 1 else _no_residual(x)
    w = p["weight"]
    kh, kw, sh, sw, dh, dw, pt, pl, ho, wo = _geometry(op)
    groups = op.attrs["groups"]
    if _is_depthwise(op, x):
        return depthwise_forward_kernel(_padded(x, op), np.ascontiguousarray(w), kh, kw, sh, sw,
                                        dh, dw, ho, wo, w.shape[0] // x.shape[1], _bias(p, x),
                                        residual, code, slope)
    if _is_pointwise(op):
        xs_ = _pointwise_input(op, x)
        n, c = xs_.shape[:2]
        w2 = np.ascontiguousarray(w.reshape(w.shape[0], -1))
        res3 = residual.reshape(n, w.shape[0], ho * wo) if residual.size else _no_residual(x, 3)
        y = pointwise_kernel(xs_.reshape(n, c, ho * wo), w2, groups, False, _bias(p, x),
                             _block(w.shape[0] // groups), res3, code, slope)
        return y.reshape(n, w.shape[0], ho, wo)
    if _use_grid(op, x):
        return _grid_forward(op, x, w, _bias(p, x), residual, code, slope)
    # otherwise im2col + GEMM, panel by panel; the output is a grid with hp, wp = ho, wo
    wmat = np.ascontiguousarray(w.reshape(w.shape[0], -1))
    out = im2col_gemm_kernel(x, wmat, groups, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo,
                             _panel(wmat.shape[1]))
    return from_grid(out, x.shape[0], 0, 0, ho, wo, ho, wo, _bias(p, x), residual, code, slope)


conv2d_forward = fused_forward(_conv2d)


def conv2d_backward(op, xs, y, gy, p, ctx):
    (x,) = xs
    w = p["weight"]
    kh, kw, sh, sw, dh, dw, pt, pl, ho, wo = _geometry(op)
    x = np.ascontiguousarray(x)
    gy = np.ascontiguousarray(gy)
    groups = op.attrs["groups"]
    grads = {}
    if "bias" in p:
        grads["bias"] = gy.sum(axis=(0, 2, 3))
    if _is_depthwise(op, x):
        mult = w.shape[0] // x.shape[1]
        xp = _padded(x, op)
        grads["weight"] = depthwise_filter_grad_kernel(xp, gy, kh, kw, sh, sw, dh, dw, mult)
        hp, wp = xp.shape[2:]
        if (sh, sw) == (1, 1) and mult == 1:
            # a stride-1 depthwise conv's input gradient is the forward kernel run on gy
            # padded by the filter's reach, with the filters flipped
            eh, ew = (kh - 1) * dh, (kw - 1) * dw
            gyp = np.pad(gy, ((0, 0), (0, 0), (eh, eh), (ew, ew)))
            flipped = np.ascontiguousarray(w[:, :, ::-1, ::-1])
            gxp = depthwise_forward_kernel(gyp, flipped, kh, kw, 1, 1, dh, dw, hp, wp, 1,
                                           *_no_epilogue(gy))
        else:
            gxp = depthwise_input_grad_kernel(gy, np.ascontiguousarray(w), hp, wp, kh, kw, sh,
                                              sw, dh, dw, mult)
        h, wd = x.shape[2:]
        return [np.ascontiguousarray(gxp[:, :, pt:pt + h, pl:pl + wd])], grads
    if _is_pointwise(op):
        xs_ = _pointwise_input(op, x)
        n, c = xs_.shape[:2]
        x3, gy3 = xs_.reshape(n, c, ho * wo), gy.reshape(n, w.shape[0], ho * wo)
        w2 = np.ascontiguousarray(w.reshape(w.shape[0], -1))
        bias, residual, code, slope = _no_epilogue(x, rank=3)
        gsub = pointwise_kernel(gy3, w2, groups, True, bias, _block(c // groups), residual, code,
                                slope).reshape(n, c, ho, wo)
        grads["weight"] = pointwise_weight_grad_kernel(
            x3, gy3, groups, min(n, numba.get_num_threads())).reshape(w.shape)
        if (sh, sw) == (1, 1):
            return [gsub], grads
        gx = np.zeros_like(x)
        gx[:, :, ::sh, ::sw] = gsub
        return [gx], grads
    if _use_grid(op, x):
        gx, grads["weight"] = _grid_backward(op, x, w, gy)
        return [gx], grads
    n, c, h, wd = x.shape
    taps = np.ascontiguousarray(w.reshape(1, w.shape[0], -1))
    gy_grid = to_grid(gy, 0, 0, ho, wo, 0)
    gcols = grid_conv_input_grad_kernel(taps, np.zeros(1, np.int64), groups, gy_grid,
                                        gy_grid.shape[1], _block(taps.shape[2]))
    gx = col2im_kernel(gcols, n, c, h, wd, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo)
    gw = im2col_weight_grad_kernel(x, gy_grid, groups, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo,
                                   numba.get_num_threads(), _panel(taps.shape[2]))
    grads["weight"] = gw.reshape(w.shape)
    return [gx], grads


def _transposed_geometry(op, x):
    a = op.attrs
    (kh, kw), (sh, sw), (dh, dw) = a["kernel_size"], a["stride"], a["dilation"]
    (ph, pw) = a["padding"]
    return kh, kw, sh, sw, dh, dw, ph, pw


def conv_transpose2d_forward(op, xs, p, ctx):
    """The adjoint of a conv: every input pixel's column W_g.T @ x (one GEMM for the
    batch, the im2col layout) added back onto the output by col2im."""
    x = np.ascontiguousarray(xs[0])
    w = p["weight"]  # (in, out / groups, kh, kw)
    n, c, h, wd = x.shape
    kh, kw, sh, sw, dh, dw, ph, pw = _transposed_geometry(op, x)
    groups = op.attrs["groups"]
    taps = np.ascontiguousarray(w.reshape(1, c, -1))
    cols = grid_conv_input_grad_kernel(taps, np.zeros(1, np.int64), groups,
                                       to_grid(x, 0, 0, h, wd, 0), n * h * wd,
                                       _block(taps.shape[2]))
    ho, wo = op.out_shape[1:]
    y = col2im_kernel(cols, n, w.shape[1] * groups, ho, wo, kh, kw, sh, sw, dh, dw, ph, pw, h, wd)
    if "bias" in p:
        y += p["bias"].reshape(1, -1, 1, 1)
    return y


def conv_transpose2d_backward(op, xs, y, gy, p, ctx):
    """The input gradient is a conv of gy (im2col + GEMM), the weight gradient x's grid
    times gy's im2col matrix."""
    x = np.ascontiguousarray(xs[0])
    w = p["weight"]
    n, c, h, wd = x.shape
    kh, kw, sh, sw, dh, dw, ph, pw = _transposed_geometry(op, x)
    groups = op.attrs["groups"]
    taps = np.ascontiguousarray(w.reshape(1, c, -1))
    zero = np.zeros(1, np.int64)
    cols = im2col_kernel(np.ascontiguousarray(gy), kh, kw, sh, sw, dh, dw, ph, pw, h, wd)
    gx_grid = grid_conv_kernel(cols, taps, zero, groups, n * h * wd, _block(c // groups))
    gx = from_grid(gx_grid, n, 0, 0, h, wd, h, wd, *_no_epilogue(x))
    g_taps = grid_conv_weight_grad_kernel(cols, zero, groups, to_grid(x, 0, 0, h, wd, 0),
                                          taps.shape[2], numba.get_num_threads(), _block(c))
    grads = {"weight": g_taps.reshape(w.shape)}
    if "bias" in p:
        grads["bias"] = gy.sum(axis=(0, 2, 3))
    return [gx], grads
