"""Winograd convolution F(m x m, 3 x 3) for 3x3 stride-1 convs (Lavin and Gray, 2015; the
transforms as in NNPACK and ncnn): each m x m block of outputs ("tile") comes from an
(m+2) x (m+2) block of input through

    Y = A^T [ (G g G^T) * (B^T d B) ] A

so a tile costs (m+2)^2 multiplications per (input, output) channel pair instead of
9 m^2: 2.25x fewer for F(2x2, 3x3), 4x fewer for F(4x4, 3x3). The elementwise products
of all tiles are (m+2)^2 GEMMs, ``M[k] (T, O) = V[k] (T, C) @ U[k] (C, O)``, one per
position k of the transformed tile, over all T tiles of the batch.

The transforms run on channels-last copies (input ``(N, Hp, Wp, C)``, the transformed
tiles ``(k, T, C)``, products ``(k, T, O)``), so that every transform is a loop over
contiguous channels that vectorises, whatever the size of the map. The filters are
transformed once per model (``U``, packed: runtime.packing).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange, uint64

from runtime.backends.cpu.blas import gemm
from runtime.backends.cpu.elementwise import activate_inplace
from runtime.config import PARALLEL

# F(2x2, 3x3): interpolation points 0, 1, -1 (and infinity)
BT2 = np.array([[1, 0, -1, 0],
                [0, 1, 1, 0],
                [0, -1, 1, 0],
                [0, 1, 0, -1]], dtype=np.float64)
G2 = np.array([[1, 0, 0],
               [0.5, 0.5, 0.5],
               [0.5, -0.5, 0.5],
               [0, 0, 1]], dtype=np.float64)
AT2 = np.array([[1, 1, 1, 0],
                [0, 1, -1, -1]], dtype=np.float64)

# F(4x4, 3x3): points 0, 1, -1, 2, -2 (and infinity)
BT4 = np.array([[4, 0, -5, 0, 1, 0],
                [0, -4, -4, 1, 1, 0],
                [0, 4, -4, -1, 1, 0],
                [0, -2, -1, 2, 1, 0],
                [0, 2, -1, -2, 1, 0],
                [0, 4, 0, -5, 0, 1]], dtype=np.float64)
G4 = np.array([[1 / 4, 0, 0],
               [-1 / 6, -1 / 6, -1 / 6],
               [-1 / 6, 1 / 6, -1 / 6],
               [1 / 24, 1 / 12, 1 / 6],
               [1 / 24, -1 / 12, 1 / 6],
               [0, 0, 1]], dtype=np.float64)
AT4 = np.array([[1, 1, 1, 1, 1, 0],
                [0, 1, -1, 2, -2, 0],
                [0, 1, 1, 4, 4, 0],
                [0, 1, -1, 8, -8, 1]], dtype=np.float64)

TRANSFORMS = {2: (BT2, G2, AT2), 4: (BT4, G4, AT4)}


def transform_filters(w: np.ndarray, m: int) -> np.ndarray:
    """U (a*a, C, O) = G g G^T per (output, input) channel pair (a = m + 2)."""
    _, g, _ = TRANSFORMS[m]
    return filter_transform_kernel(np.ascontiguousarray(w.transpose(1, 2, 3, 0)),
                                   g.astype(w.dtype))


@njit(cache=True, **PARALLEL)
def filter_transform_kernel(wt, g):
    """U (a*a, C, O) from the filters laid out (C, 3, 3, O): one input channel per job,
    every product a loop over the output channels, contiguous in both (a training step
    transforms the filters again after each update: for a 512x512 conv an einsum took
    100 ms, two NumPy GEMMs and a transpose 18-31 ms, this 4 ms for F(2x2), 15 for F(4x4))."""
    c, o = wt.shape[0], wt.shape[3]
    a = g.shape[0]
    u = np.empty((a * a, c, o), dtype=wt.dtype)
    for ch in prange(c):
        rows = np.empty((a, 3, o), dtype=wt.dtype)  # G g: the filter's rows combined
        for k in range(a):
            for j in range(3):
                g0, g1, g2 = g[k, 0], g[k, 1], g[k, 2]
                for q in range(uint64(o)):
                    rows[k, j, q] = g0 * wt[ch, 0, j, q] + g1 * wt[ch, 1, j, q] + \
                        g2 * wt[ch, 2, j, q]
        for k in range(a):
            for l in range(a):
                g0, g1, g2 = g[l, 0], g[l, 1], g[l, 2]
                for q in range(uint64(o)):
                    u[k * a + l, ch, q] = g0 * rows[k, 0, q] + g1 * rows[k, 1, q] + \
                        g2 * rows[k, 2, q]
    return u


@njit(cache=True, **PARALLEL)
def to_padded_nhwc(x, top, left, hp, wp):
    """x (N, C, H, W) -> (N, hp, wp, C), placed at (top, left), zeros around it."""
    n, c, h, w = x.shape
    out = np.zeros((n, hp, wp, c), dtype=x.dtype)
    for job in prange(n * h):
        b, r = job // h, job % h
        for ch in range(c):
            for col in range(w):
                out[b, r + top, col + left, ch] = x[b, ch, r, col]
    return out


@njit(cache=True, **PARALLEL)
def input_transform(xp, bt, m, th, tw):
    """V (a*a, T, C): V[i*a + j, t] = (B^T d B)[i, j] for the a x a input block d of tile
    t (sample-major, then tile row, tile column), channels innermost."""
    n, c = xp.shape[0], xp.shape[3]
    a = bt.shape[0]
    tiles = n * th * tw
    v = np.empty((a * a, tiles, c), dtype=xp.dtype)
    for t in prange(tiles):
        b = t // (th * tw)
        y0 = ((t // tw) % th) * m
        x0 = (t % tw) * m
        tmp = np.zeros((a, a, c), dtype=xp.dtype)  # B^T d, column by column
        for i in range(a):
            for r in range(a):
                coef = bt[i, r]
                if coef == 0.0:
                    continue
                for j in range(a):
                    for ch in range(uint64(c)):
                        tmp[i, j, ch] += coef * xp[b, y0 + r, x0 + j, ch]
        for i in range(a):
            for k in range(a):
                row = i * a + k
                for ch in range(uint64(c)):
                    v[row, t, ch] = 0.0
                for j in range(a):
                    coef = bt[k, j]
                    if coef == 0.0:
                        continue
                    for ch in range(uint64(c)):
                        v[row, t, ch] += coef * tmp[i, j, ch]
    return v


@njit(cache=True, **PARALLEL)
def tile_products(v, u, block):
    """M (a*a, T, O) = V[k] (T, C) @ U[k] (C, O) for every k; thread jobs are (k, block of
    tiles), each a single-threaded GEMM."""
    kk, tiles = v.shape[0], v.shape[1]
    o = u.shape[2]
    out = np.empty((kk, tiles, o), dtype=v.dtype)
    blocks = (tiles + block - 1) // block
    for job in prange(kk * blocks):
        k = job // blocks
        s = (job % blocks) * block
        e = min(tiles, s + block)
        gemm(v[k, s:e], u[k], out[k, s:e], 0.0, False, False)
    return out


@njit(cache=True, **PARALLEL)
def output_transform(mt, at, th, tw, n, ho, wo, bias, residual, code, slope):
    """y (N, O, ho, wo) from the products: each tile's A^T M A, the positions past the
    output dropped, then the epilogue (bias, residual, activation) per output plane."""
    o = mt.shape[2]
    m, a = at.shape[0], at.shape[1]
    y = np.empty((n, o, ho, wo), dtype=mt.dtype)
    for job in prange(n * th):  # a row of tiles of one sample
        b, ty = job // th, job % th
        tmp = np.empty((m, a, o), dtype=mt.dtype)
        res = np.empty((m, m, o), dtype=mt.dtype)
        for tx in range(tw):
            t = (b * th + ty) * tw + tx
            for i in range(m):
                for j in range(a):
                    for ch in range(uint64(o)):
                        tmp[i, j, ch] = 0.0
                    for k in range(a):
                        coef = at[i, k]
                        if coef == 0.0:
                            continue
                        for ch in range(uint64(o)):
                            tmp[i, j, ch] += coef * mt[k * a + j, t, ch]
            for i in range(m):
                for jj in range(m):
                    for ch in range(uint64(o)):
                        res[i, jj, ch] = 0.0
                    for j in range(a):
                        coef = at[jj, j]
                        if coef == 0.0:
                            continue
                        for ch in range(uint64(o)):
                            res[i, jj, ch] += coef * tmp[i, j, ch]
            for i in range(min(m, ho - ty * m)):
                for jj in range(min(m, wo - tx * m)):
                    for ch in range(o):
                        y[b, ch, ty * m + i, tx * m + jj] = res[i, jj, ch]
    for job in prange(n * o):
        b, ch = job // o, job % o
        add = bias[ch] if bias.size else 0.0
        plane = y[b, ch].reshape(ho * wo)
        if bias.size:
            for p in range(uint64(ho * wo)):
                plane[p] += add
        if residual.shape[0]:
            for yy in range(ho):
                for xx in range(uint64(wo)):
                    y[b, ch, yy, xx] += residual[b, ch, yy, xx]
        activate_inplace(plane, code, slope)
    return y
