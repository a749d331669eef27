"""Unpadded 1x1 convolutions: a GEMM per sample on the map as it lies (no im2col), with
their gradients and the fused epilogue applied per output row."""

from __future__ import annotations

import numpy as np
from numba import njit, prange, uint64

from runtime.backends.cpu.blas import gemm
from runtime.backends.cpu.elementwise import activate_inplace
from runtime.backends.cpu.lowlevel import stack_buffer, unit_stride
from runtime.config import PARALLEL


@njit(cache=True)
def finish_block(out, b, row0, s, e, bias, residual, code, slope):
    """The fused epilogue of a block of output rows (channels row0..) and columns s..e of
    sample b, right after its GEMM while it is in cache: bias, residual (N, O, HW),
    activation ``code`` (empty arrays and a negative code: nothing)."""
    for r in range(out.shape[0]):
        row = unit_stride(out[r])
        if bias.size:
            add = bias[row0 + r]
            for i in range(uint64(row.size)):
                row[i] += add
        if residual.shape[0]:
            res = unit_stride(residual[b, row0 + r, s:e])
            for i in range(uint64(row.size)):
                row[i] += res[i]
        activate_inplace(row, code, slope)


@njit(cache=True, inline="always")
def _job(job, groups, row_blocks, blocks, step, rows_out, block, hw):
    """The (sample, group, rows r0..r1, columns s..e) of a 1x1 conv's thread job."""
    b = job // (groups * row_blocks * blocks)
    g = (job // (row_blocks * blocks)) % groups
    r0 = ((job // blocks) % row_blocks) * step
    s = (job % blocks) * block
    return b, g, r0, min(rows_out, r0 + step), s, min(hw, s + block)


@njit(cache=True, **PARALLEL)
def pointwise_kernel(x, w, groups, transpose, bias, block, row_blocks, residual, code, slope):
    """A 1x1 conv per sample on the map as it lies: y[b] = W_g @ x[b] per group (x (N, C,
    HW), w (O, C/g)), or W_g.T @ x[b] when ``transpose`` (the input gradient); threads take
    (sample, group, row block, column block) jobs (``row_blocks`` > 1 where the columns
    alone are too few to share: a 7x7 map is one block). The epilogue (bias, residual (N,
    O, HW), activation ``code``) runs on each block right after its GEMM; empty arrays and
    a negative code add nothing. Planes in and out: :func:`pointwise_last_kernel` takes a
    channels-last side (kept apart so that a network without one never compiles it)."""
    n, hw = x.shape[0], x.shape[2]
    og, cg = w.shape[0] // groups, w.shape[1]
    rows_in, rows_out = (og, cg) if transpose else (cg, og)
    y = np.empty((n, rows_out * groups, hw), dtype=x.dtype)
    blocks = (hw + block - 1) // block
    step = (rows_out + row_blocks - 1) // row_blocks
    for job in prange(n * groups * row_blocks * blocks):
        b, g, r0, r1, s, e = _job(job, groups, row_blocks, blocks, step, rows_out, block, hw)
        if r0 >= r1:
            continue
        if transpose:
            a = w[g * og:(g + 1) * og, r0:r1]
        else:
            a = w[g * og + r0:g * og + r1]
        out = y[b, g * rows_out + r0:g * rows_out + r1, s:e]
        gemm(a, x[b, g * rows_in:(g + 1) * rows_in, s:e], out, 0.0, transpose, False)
        finish_block(out, b, g * rows_out + r0, s, e, bias, residual, code, slope)
    return y


@njit(cache=True, **PARALLEL)
def pointwise_last_kernel(x, w, bias, block, row_blocks, residual, code, slope, in_last,
                          out_last, wt):
    """:func:`pointwise_kernel` (one group, no transpose) with either side channels-last
    (the layout plan, layout.py): x (N, HW, C) with ``in_last``, y (N, HW, O) with
    ``out_last`` (no residual then), the same GEMM with its operands read transposed (no
    copy); from planes to channels-last in register tiles (:func:`pointwise_last_tiles`)
    where the filters packed for them are given, ``wt`` (C, O) (shape (0, 0): not)."""
    n = x.shape[0]
    hw = x.shape[1] if in_last else x.shape[2]
    rows_out = w.shape[0]
    y = np.empty((n, hw, rows_out) if out_last else (n, rows_out, hw), dtype=x.dtype)
    blocks = (hw + block - 1) // block
    step = (rows_out + row_blocks - 1) // row_blocks
    for job in prange(n * row_blocks * blocks):
        b, _, r0, r1, s, e = _job(job, 1, row_blocks, blocks, step, rows_out, block, hw)
        if r0 >= r1:
            continue
        a = w[r0:r1]
        if out_last:  # (positions, channels) = x.T @ a.T
            out = y[b, s:e, r0:r1]
            if in_last:
                gemm(x[b, s:e], a, out, 0.0, False, True)
            elif wt.shape[0]:
                pointwise_last_tiles(x[b], wt, y[b], s, e, r0, r1, s)
            else:
                gemm(x[b, :, s:e], a, out, 0.0, True, True)
            _finish_rows(y[b, s:e], r0, r1, bias, code, slope)
        else:
            out = y[b, r0:r1, s:e]
            gemm(a, x[b, s:e], out, 0.0, False, True)
            finish_block(out, b, r0, s, e, bias, residual, code, slope)
    return y


@njit(cache=True)
def pointwise_vector_kernel(x, w, bias, residual, code, slope):
    """A 1x1 conv on a 1x1 map (squeeze-excitation's convs, heads after a global pool):
    y (N, O) = x (N, C) @ w (O, C).T, then bias, residual (N, O) and activation ``code``
    (empty arrays and a negative code: nothing), in one call on the calling thread. A
    parallel kernel's start took longer than the work, and NumPy's matmul with a parallel
    epilogue after it was two calls where one does (EfficientNet-B0 at batch 1, its 32
    squeeze-excitation convs: 17.24 -> 16.83 ms the pass, interleaved)."""
    n, o = x.shape[0], w.shape[0]
    y = np.empty((n, o), dtype=x.dtype)
    gemm(x, w, y, 0.0, False, True)
    for b in range(n):
        row = y[b]
        if bias.size:
            for j in range(uint64(o)):
                row[j] += bias[j]
        if residual.shape[0]:
            for j in range(uint64(o)):
                row[j] += residual[b, j]
        activate_inplace(row, code, slope)
    return y


@njit(cache=True)
def _finish_rows(out, r0, r1, bias, code, slope):
    """The epilogue of channels-last rows ``out`` (positions, O) in channels r0..r1: bias
    (empty: none), activation ``code``; all channels in one pass where the block has them
    (a call per row of 96 channels was slow)."""
    if bias.size:
        add = unit_stride(bias[r0:r1])
        for r in range(out.shape[0]):
            row = unit_stride(out[r, r0:r1])
            for q in range(uint64(r1 - r0)):
                row[q] += add[q]
    if r1 - r0 == out.shape[1]:
        activate_inplace(out.reshape(out.size), code, slope)
    else:
        for r in range(out.shape[0]):
            activate_inplace(out[r, r0:r1], code, slope)


# A 1x1 conv's GEMM from planes to channels-last, out[p, o] = sum_c x[c, p] * w[o, c], in
# register tiles of TILE_POSITIONS positions x TILE_CHANNELS output channels (24 of
# AVX-512's 32 vector registers): one vector of the filters (packed (C, O) once per model)
# feeds a multiply-add per position, with the position's input value broadcast. Against
# OpenBLAS's sgemm on the transposed operands, one thread, MobileNetV2's shapes: 1.03-1.43x
# faster (16 channels -> 96 on 336 positions 10.9 against 12.9 us; 160 -> 960 on 25
# positions 70 against 100 us; 96 -> 576 on 196 positions 154 against 168): BLAS packs its
# operands for every call, a cost these small GEMMs do not amortise.
TILE_POSITIONS = 6
TILE_CHANNELS = 64
LAST_TILES = True  # False: BLAS for these GEMMs too (bench, tests)


@njit(cache=True, inline="always")
def _last_sums(acc, x, wt, k, p, o, rows, width):
    """acc[r * width + l] = sum over c < k of x[c, p + r] * wt[c, o + l], for ``rows``
    positions and ``width`` channels, both literals (LLVM keeps acc in registers, as
    conv_direct._sums)."""
    for i in range(rows * width):
        acc[i] = 0.0
    first = uint64(o)
    for c in range(uint64(k)):
        for l in range(uint64(width)):
            wv = wt[c, first + l]
            for r in range(rows):
                acc[uint64(r * width) + l] += x[c, uint64(p + r)] * wv


@njit(cache=True, inline="always")
def _last_store(acc, out, row, o, rows, width):
    """out[row + r, o + l] = acc[r * width + l]."""
    for r in range(rows):
        for l in range(uint64(width)):
            out[uint64(row + r), uint64(o) + l] = acc[uint64(r * width) + l]


@njit(cache=True, fastmath={"contract"})
def pointwise_last_tiles(x, wt, out, p_lo, p_hi, o_lo, o_hi, row0):
    """out[row0 + p - p_lo, o] = sum over c of x[c, p] * wt[c, o] for p_lo <= p < p_hi,
    o_lo <= o < o_hi: a 1x1 conv's GEMM from the planes x (C, positions) into channels-last
    rows of ``out`` (positions, O), on the calling thread, in register tiles (above);
    ``fastmath`` allows only contraction into fused multiply-adds."""
    k = x.shape[0]
    big = stack_buffer(384, x.dtype)  # TILE_POSITIONS x TILE_CHANNELS
    big1 = stack_buffer(64, x.dtype)  # 1 x TILE_CHANNELS
    vec = stack_buffer(96, x.dtype)  # TILE_POSITIONS x 16
    vec1 = stack_buffer(16, x.dtype)  # 1 x 16
    p_full = p_lo + (p_hi - p_lo) // TILE_POSITIONS * TILE_POSITIONS
    o_wide = o_lo + (o_hi - o_lo) // TILE_CHANNELS * TILE_CHANNELS
    o_vec = o_lo + (o_hi - o_lo) // 16 * 16
    for o in range(o_lo, o_wide, TILE_CHANNELS):
        for p in range(p_lo, p_full, TILE_POSITIONS):
            _last_sums(big, x, wt, k, p, o, 6, 64)
            _last_store(big, out, row0 + p - p_lo, o, 6, 64)
        for p in range(p_full, p_hi):
            _last_sums(big1, x, wt, k, p, o, 1, 64)
            _last_store(big1, out, row0 + p - p_lo, o, 1, 64)
    for o in range(o_wide, o_vec, 16):
        for p in range(p_lo, p_full, TILE_POSITIONS):
            _last_sums(vec, x, wt, k, p, o, 6, 16)
            _last_store(vec, out, row0 + p - p_lo, o, 6, 16)
        for p in range(p_full, p_hi):
            _last_sums(vec1, x, wt, k, p, o, 1, 16)
            _last_store(vec1, out, row0 + p - p_lo, o, 1, 16)
    for o in range(o_vec, o_hi):  # the last channels, fewer than a vector
        for p in range(p_lo, p_hi):
            total = x.dtype.type(0.0)
            for c in range(k):
                total += x[c, p] * wt[c, o]
            out[row0 + p - p_lo, o] = total


def pack_last(w: np.ndarray) -> np.ndarray:
    """A 1x1 conv's filters (O, C, 1, 1) or (O, C) as pointwise_last_tiles reads them:
    (C, O), contiguous."""
    return np.ascontiguousarray(w.reshape(w.shape[0], -1).T)


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


@njit(cache=True, **PARALLEL)
def subsample_kernel(x, sh, sw):
    """x[:, :, ::sh, ::sw] as a new contiguous array, a plane per job: what a strided 1x1
    conv's GEMM reads (NumPy's copy of the view ran on one thread)."""
    n, c, h, w = x.shape
    ho, wo = (h + sh - 1) // sh, (w + sw - 1) // sw
    out = np.empty((n, c, ho, wo), dtype=x.dtype)
    for job in prange(n * c):
        b, ch = job // c, job % c
        for i in range(ho):
            src, dst = x[b, ch, i * sh], out[b, ch, i]
            for j in range(wo):
                dst[j] = src[j * sw]
    return out


@njit(cache=True, **PARALLEL)
def upsample_kernel(g, sh, sw, h, w):
    """The (N, C, h, w) array that is ``g`` at every sh-th row and sw-th column and zero
    elsewhere, a plane per job (zeroed by the thread that fills it): a strided 1x1 conv's
    input gradient from its GEMM's."""
    n, c, ho, wo = g.shape
    out = np.empty((n, c, h, w), dtype=g.dtype)
    for job in prange(n * c):
        b, ch = job // c, job % c
        plane = out[b, ch]
        plane[:] = 0.0
        for i in range(ho):
            src, dst = g[b, ch, i], plane[i * sh]
            for j in range(wo):
                dst[j * sw] = src[j]
    return out
