"""Stride-1 convolutions on the padded "grid" layout: the input copied once into
``grid (C, N*Hp*Wp + tail)`` (channel-major, each sample's padded map flattened), then one
GEMM per filter tap on column slices (``out_grid = sum_t W_t @ grid[:, off_t : off_t +
L]``), and the two gradients as the adjoint and a GEMM per tap."""

from __future__ import annotations

import numpy as np
from numba import njit, prange, uint64

from runtime.backends.cpu.blas import gemm
from runtime.backends.cpu.elementwise import activate_inplace
from runtime.config import PARALLEL


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
        dest = grid[ch]
        # unsigned column indices: a signed one is checked for wrap-around (a negative
        # index counts from the end) and that check keeps the copy from vectorising
        for yy in range(hp):
            row = uint64(base + yy * wp)
            src_y = yy - top
            if src_y < 0 or src_y >= h:
                for xx in range(uint64(wp)):
                    dest[row + xx] = 0.0
                continue
            for xx in range(uint64(left)):
                dest[row + xx] = 0.0
            at = row + uint64(left)
            for xx in range(uint64(w)):
                dest[at + xx] = x[b, ch, src_y, xx]
            for xx in range(uint64(left + w), uint64(wp)):
                dest[row + xx] = 0.0
        if b == n - 1:
            for t in range(uint64(tail)):
                dest[uint64(n * plane) + t] = 0.0
    return grid


@njit(cache=True, **PARALLEL)
def from_grid(grid, n, top, left, h, w, hp, wp, bias, residual, code, slope):
    """The (N, C, h, w) window at (top, left) of each sample's block of a grid, plus a
    per-channel bias and a residual (empty arrays add nothing), then activation ``code``
    (negative: none) on each plane while it is in cache: the fused epilogue."""
    c = grid.shape[0]
    plane = hp * wp
    y = np.empty((n, c, h, w), dtype=grid.dtype)
    shift = bias if bias.size else np.zeros(c, dtype=grid.dtype)
    for job in prange(n * c):
        b = job // c
        ch = job % c
        add = shift[ch]
        src = grid[ch]
        for yy in range(h):
            row = uint64(b * plane + (yy + top) * wp + left)
            for xx in range(uint64(w)):
                y[b, ch, yy, xx] = src[row + xx] + add
            if residual.shape[0]:
                for xx in range(uint64(w)):
                    y[b, ch, yy, xx] += residual[b, ch, yy, xx]
        activate_inplace(y[b, ch].reshape(h * w), code, slope)
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
