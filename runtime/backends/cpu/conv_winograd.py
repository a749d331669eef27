"""Winograd convolution F(m x m, 3 x 3) for 3x3 stride-1 convs (Lavin and Gray, 2015; the
transforms as in NNPACK and ncnn): each m x m block of outputs ("tile") comes from an
(m+2) x (m+2) block of input through

    Y = A^T [ (G g G^T) * (B^T d B) ] A

so a tile costs (m+2)^2 multiplications per (input, output) channel pair instead of
9 m^2: 2.25x fewer for F(2x2, 3x3), 4x fewer for F(4x4, 3x3). The elementwise products
of all tiles are (m+2)^2 GEMMs, ``M[k] (T, O) = V[k] (T, C) @ U[k] (C, O)``, one per
position k of the transformed tile, over all T tiles of the batch.

The transformed tiles are channels-last, ``V (k, T, C)``, and so are the products ``M (k,
T, O)``: every transform is straight-line code over a vector of 16 channels (the fewest
additions and multiplications, as NNPACK writes them: :func:`_bt4`, :func:`_at4`), its
values in registers and a stack buffer that nothing else can alias, so that LLVM
vectorises it without run-time checks. The maps stay planes (N, C, H, W): each row of
tiles turns its (m+2) input rows channels-last into a small strip first
(:func:`input_row`), and writes its m output rows back plane by plane with the epilogue
(:func:`output_row`), in cache. (Transforms vectorised along the tiles of a plane instead,
on the input split into m x m phases, were tried: faster on 56x56 maps, 2-5x slower on
the 7x7 to 28x28 maps where most ResNet tiles are.)

Where the whole batch's V and M fit the cache, the conv runs in three passes over the
batch, each parallel, the (m+2)^2 GEMMs sharing U among all the tiles; where they would
not and U is small, fused per block of tile rows (:func:`fused_tiles`), each job from its
input to its output in its own cache. The filters are transformed once per model (``U``,
packed: runtime.packing).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange, uint64

from runtime.backends.cpu.blas import gemm
from runtime.backends.cpu.elementwise import activate_inplace
from runtime.backends.cpu.lowlevel import stack_buffer
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

LANES = 16  # channels a transform takes at once: one AVX-512 vector of float32


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


@njit(cache=True, inline="always")
def _bt2(d0, d1, d2, d3):
    """B^T d for F(2x2, 3x3), d a column (or row) of an input block."""
    return d0 - d2, d1 + d2, d2 - d1, d1 - d3


@njit(cache=True, inline="always")
def _bt4(d0, d1, d2, d3, d4, d5, two, four, five):
    """B^T d for F(4x4, 3x3) (the rows of BT4), with the fewest operations."""
    return (four * d0 - five * d2 + d4, d3 + d4 - four * (d1 + d2),
            four * (d1 - d2) + d4 - d3, two * (d3 - d1) + d4 - d2,
            two * (d1 - d3) + d4 - d2, four * d1 - five * d3 + d5)


@njit(cache=True, inline="always")
def _row2(row, x0, ch):
    """d B for one row of a 4 x 4 input block (a strip row (columns, channels))."""
    return _bt2(row[x0, ch], row[x0 + 1, ch], row[x0 + 2, ch], row[x0 + 3, ch])


@njit(cache=True, inline="always")
def _copy_out(buf, count, v, t, ch0, width):
    """v[k, t, ch0 + lane] = buf[k * LANES + lane] for k < count, lane < width: a whole
    vector's copy where width is LANES (a copy of a length LLVM cannot know became a call
    to memcpy per row, and a view per row two atomic reference counts), the rest apart."""
    tu, first = uint64(t), uint64(ch0)
    if width == LANES:
        for k in range(uint64(count)):
            for lane in range(uint64(LANES)):
                v[k, tu, first + lane] = buf[k * uint64(LANES) + lane]
        return
    for k in range(uint64(count)):
        for lane in range(uint64(width)):
            v[k, tu, first + lane] = buf[k * uint64(LANES) + lane]


@njit(cache=True, inline="always")
def _put2(buf, j, lane, col):
    """Column ``j`` of a 2 x 2 block, rows 0, 1: into buf[(j*2 + i) * LANES + lane]."""
    buf[(j * 2) * LANES + lane] = col[0]
    buf[(j * 2 + 1) * LANES + lane] = col[1]


@njit(cache=True, inline="always")
def _put4(buf, j, lane, col):
    """Column ``j`` of a 4 x 4 block: its row i into buf[(i*4 + j) * LANES + lane]."""
    buf[j * LANES + lane] = col[0]
    buf[(4 + j) * LANES + lane] = col[1]
    buf[(8 + j) * LANES + lane] = col[2]
    buf[(12 + j) * LANES + lane] = col[3]


@njit(cache=True, inline="always")
def _put6(buf, j, lane, col):
    """Column ``j`` of a 6 x 6 block: its row i into buf[(i*6 + j) * LANES + lane]."""
    buf[j * LANES + lane] = col[0]
    buf[(6 + j) * LANES + lane] = col[1]
    buf[(12 + j) * LANES + lane] = col[2]
    buf[(18 + j) * LANES + lane] = col[3]
    buf[(24 + j) * LANES + lane] = col[4]
    buf[(30 + j) * LANES + lane] = col[5]


@njit(cache=True, inline="always")
def _at2(m0, m1, m2, m3):
    """A^T m for F(2x2, 3x3)."""
    return m0 + m1 + m2, m1 - m2 - m3


@njit(cache=True, inline="always")
def _at4(m0, m1, m2, m3, m4, m5, two, four, eight):
    """A^T m for F(4x4, 3x3) (the rows of AT4)."""
    s12, d12, s34, d34 = m1 + m2, m1 - m2, m3 + m4, m3 - m4
    return m0 + s12 + s34, d12 + two * d34, s12 + four * s34, d12 + eight * d34 + m5


@njit(cache=True, **PARALLEL)
def input_tiles(x, m, pt, pl, th, tw, k):
    """V (a*a, T, C) for every m x m output tile of x (N, C, H, W), a = m + 2:
    V[i*a + j, t] = (B^T d B)[i, j] for the a x a input block d of tile t (sample-major,
    then tile row, tile column), channels innermost; one row of tiles per job
    (:func:`input_row`). ``k`` holds the constants 2, 4, 5, 8 in x's dtype."""
    n, c = x.shape[0], x.shape[1]
    v = np.empty(((m + 2) ** 2, n * th * tw, c), dtype=x.dtype)
    for job in prange(n * th):
        strip = np.empty((m + 2, tw * m + 2, c), dtype=x.dtype)
        input_row(x, job // th, job % th, m, pt, pl, tw, k, strip, v, job * tw)
    return v


@njit(cache=True)
def channels_last_rows(x, b, y0, left, strip):
    """strip (rows, width, C) = rows y0 .. y0+rows of sample ``b`` of x (N, C, H, W),
    channels innermost, column j of the strip from the map's column j - ``left``; zeros
    where that falls outside the map."""
    c, h, w = x.shape[1], x.shape[2], x.shape[3]
    width = strip.shape[1]
    lo, hi = max(0, -left), min(w, width - left)  # the map's columns inside the strip
    for r in range(strip.shape[0]):
        yy = y0 + r
        if yy < 0 or yy >= h or hi <= lo:
            strip[r] = 0.0
            continue
        for col in range(lo + left):
            strip[r, col] = 0.0
        for col in range(hi + left, width):
            strip[r, col] = 0.0
        # indexed whole: a view per (row, channel) costs two atomic reference counts
        bu, ru, shift = uint64(b), uint64(r), uint64(lo + left)
        for ch in range(uint64(c)):
            for xx in range(uint64(hi - lo)):
                strip[ru, shift + xx, ch] = x[bu, ch, uint64(yy), uint64(lo) + xx]


@njit(cache=True)
def input_row(x, b, ty, m, pt, pl, tw, k, strip, v, t0):
    """The transformed input of the tiles in row ``ty`` of sample ``b`` into V[:, t0 ..
    t0+tw]: its a input rows turned channels-last into ``strip`` (a, tw*m + 2, C) first
    (the padding zeros), then each tile's transform straight-line code (_bt2/_bt4) over a
    vector of channels, every value in registers or on the stack."""
    c = x.shape[1]
    two, four, five = k[0], k[1], k[2]
    buf2 = stack_buffer(256, x.dtype)  # 16 transformed values x LANES channels
    buf4 = stack_buffer(576, x.dtype)  # 36 x LANES
    channels_last_rows(x, b, ty * m - pt, pl, strip)
    for tx in range(tw):
        t = t0 + tx
        x0 = tx * m
        for ch0 in range(0, c, LANES):
            width = min(LANES, c - ch0)
            if m == 2:
                for lane in range(uint64(width)):  # vectorises: strip -> stack
                    ch = uint64(ch0) + lane
                    e0 = _row2(strip[0], x0, ch)
                    e1 = _row2(strip[1], x0, ch)
                    e2 = _row2(strip[2], x0, ch)
                    e3 = _row2(strip[3], x0, ch)
                    _put4(buf2, 0, lane, _bt2(e0[0], e1[0], e2[0], e3[0]))
                    _put4(buf2, 1, lane, _bt2(e0[1], e1[1], e2[1], e3[1]))
                    _put4(buf2, 2, lane, _bt2(e0[2], e1[2], e2[2], e3[2]))
                    _put4(buf2, 3, lane, _bt2(e0[3], e1[3], e2[3], e3[3]))
                _copy_out(buf2, 16, v, t, ch0, width)
            else:
                for lane in range(uint64(width)):
                    ch = uint64(ch0) + lane
                    e0 = _row4(strip[0], x0, ch, two, four, five)
                    e1 = _row4(strip[1], x0, ch, two, four, five)
                    e2 = _row4(strip[2], x0, ch, two, four, five)
                    e3 = _row4(strip[3], x0, ch, two, four, five)
                    e4 = _row4(strip[4], x0, ch, two, four, five)
                    e5 = _row4(strip[5], x0, ch, two, four, five)
                    _put6(buf4, 0, lane, _bt4(e0[0], e1[0], e2[0], e3[0], e4[0], e5[0],
                                              two, four, five))
                    _put6(buf4, 1, lane, _bt4(e0[1], e1[1], e2[1], e3[1], e4[1], e5[1],
                                              two, four, five))
                    _put6(buf4, 2, lane, _bt4(e0[2], e1[2], e2[2], e3[2], e4[2], e5[2],
                                              two, four, five))
                    _put6(buf4, 3, lane, _bt4(e0[3], e1[3], e2[3], e3[3], e4[3], e5[3],
                                              two, four, five))
                    _put6(buf4, 4, lane, _bt4(e0[4], e1[4], e2[4], e3[4], e4[4], e5[4],
                                              two, four, five))
                    _put6(buf4, 5, lane, _bt4(e0[5], e1[5], e2[5], e3[5], e4[5], e5[5],
                                              two, four, five))
                _copy_out(buf4, 36, v, t, ch0, width)


@njit(cache=True, inline="always")
def _row4(row, x0, ch, two, four, five):
    """d B for one row of a 6 x 6 input block (a strip row (columns, channels))."""
    return _bt4(row[x0, ch], row[x0 + 1, ch], row[x0 + 2, ch], row[x0 + 3, ch],
                row[x0 + 4, ch], row[x0 + 5, ch], two, four, five)


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
def fused_tiles(x, u, m, pt, pl, th, tw, rows_per_job, ho, wo, bias, residual, code, slope,
                k):
    """The whole convolution, y (N, O, ho, wo), a block of ``rows_per_job`` rows of tiles
    of one sample per job, from its input to its output in the thread's cache: the
    block's transformed input V (a*a, tiles, C), its (m+2)^2 GEMMs with U, the output
    transform and epilogue. Where the batch's V and M would outgrow the cache, this keeps
    them in it (each job reads U instead)."""
    n, c = x.shape[0], x.shape[1]
    o = u.shape[2]
    a = m + 2
    blocks = (th + rows_per_job - 1) // rows_per_job
    y = np.empty((n, o, ho, wo), dtype=x.dtype)
    for job in prange(n * blocks):
        b, ty0 = job // blocks, (job % blocks) * rows_per_job
        ty1 = min(th, ty0 + rows_per_job)
        v = np.empty((a * a, (ty1 - ty0) * tw, c), dtype=x.dtype)
        mt = np.empty((a * a, (ty1 - ty0) * tw, o), dtype=x.dtype)
        strip = np.empty((a, tw * m + 2, c), dtype=x.dtype)
        rows = np.empty((m, tw * m, o), dtype=x.dtype)
        for ty in range(ty0, ty1):
            input_row(x, b, ty, m, pt, pl, tw, k, strip, v, (ty - ty0) * tw)
        for kk in range(a * a):
            gemm(v[kk], u[kk], mt[kk], 0.0, False, False)
        for ty in range(ty0, ty1):
            output_row(mt, (ty - ty0) * tw, m, tw, b, ty, y, rows, bias, residual, code,
                       slope, k)
    return y


@njit(cache=True, **PARALLEL)
def output_tiles(mt, m, th, tw, n, ho, wo, bias, residual, code, slope, k):
    """y (N, O, ho, wo) from the products M (a*a, T, O); one row of tiles per job
    (:func:`output_row`)."""
    o = mt.shape[2]
    y = np.empty((n, o, ho, wo), dtype=mt.dtype)
    for job in prange(n * th):
        rows = np.empty((m, tw * m, o), dtype=mt.dtype)
        output_row(mt, job * tw, m, tw, job // th, job % th, y, rows, bias, residual, code,
                   slope, k)
    return y


@njit(cache=True)
def output_row(mt, t0, m, tw, b, ty, y, rows, bias, residual, code, slope, k):
    """Output rows ty*m .. ty*m+m-1 of sample ``b`` from the products of tiles t0 ..
    t0+tw: each tile's A^T M A straight-line code (_at2/_at4) over a vector of channels
    into the channels-last buffer ``rows`` (m, tw*m, O), then written plane by plane, a
    row at a time, with the epilogue (bias, residual, activation ``code``) while it is in
    cache."""
    o, ho, wo = y.shape[1], y.shape[2], y.shape[3]
    two, four, eight = k[0], k[1], k[3]
    out2 = stack_buffer(64, mt.dtype)  # 4 outputs x LANES channels
    out4 = stack_buffer(256, mt.dtype)  # 16 x LANES
    for tx in range(tw):
        t = t0 + tx
        x0 = tx * m
        for ch0 in range(0, o, LANES):
            width = min(LANES, o - ch0)
            if m == 2:
                for lane in range(uint64(width)):  # vectorises: M -> stack
                    ch = uint64(ch0) + lane
                    g0 = _at2(mt[0, t, ch], mt[1, t, ch], mt[2, t, ch], mt[3, t, ch])
                    g1 = _at2(mt[4, t, ch], mt[5, t, ch], mt[6, t, ch], mt[7, t, ch])
                    g2 = _at2(mt[8, t, ch], mt[9, t, ch], mt[10, t, ch], mt[11, t, ch])
                    g3 = _at2(mt[12, t, ch], mt[13, t, ch], mt[14, t, ch], mt[15, t, ch])
                    _put2(out2, 0, lane, _at2(g0[0], g1[0], g2[0], g3[0]))
                    _put2(out2, 1, lane, _at2(g0[1], g1[1], g2[1], g3[1]))
                for i in range(2):
                    for jj in range(2):
                        _copy_row(out2, jj * 2 + i, rows, i, x0 + jj, ch0, width)
            else:
                for lane in range(uint64(width)):
                    ch = uint64(ch0) + lane
                    g0 = _products4(mt, 0, t, ch, two, four, eight)
                    g1 = _products4(mt, 6, t, ch, two, four, eight)
                    g2 = _products4(mt, 12, t, ch, two, four, eight)
                    g3 = _products4(mt, 18, t, ch, two, four, eight)
                    g4 = _products4(mt, 24, t, ch, two, four, eight)
                    g5 = _products4(mt, 30, t, ch, two, four, eight)
                    _put4(out4, 0, lane, _at4(g0[0], g1[0], g2[0], g3[0], g4[0], g5[0],
                                              two, four, eight))
                    _put4(out4, 1, lane, _at4(g0[1], g1[1], g2[1], g3[1], g4[1], g5[1],
                                              two, four, eight))
                    _put4(out4, 2, lane, _at4(g0[2], g1[2], g2[2], g3[2], g4[2], g5[2],
                                              two, four, eight))
                    _put4(out4, 3, lane, _at4(g0[3], g1[3], g2[3], g3[3], g4[3], g5[3],
                                              two, four, eight))
                for i in range(4):
                    for jj in range(4):
                        _copy_row(out4, i * 4 + jj, rows, i, x0 + jj, ch0, width)
    # planes again, indexed whole (a view per row costs two atomic reference counts), the
    # activation once over a channel's m rows (contiguous)
    count = min(m, ho - ty * m)
    flat = y.reshape(-1)
    bu = uint64(b)
    for ch in range(uint64(o)):
        add = bias[ch] if bias.size else two - two
        for i in range(uint64(count)):
            yy = uint64(ty * m) + i
            if residual.shape[0]:
                for xx in range(uint64(wo)):
                    y[bu, ch, yy, xx] = rows[i, xx, ch] + add + residual[bu, ch, yy, xx]
            else:
                for xx in range(uint64(wo)):
                    y[bu, ch, yy, xx] = rows[i, xx, ch] + add
        if code >= 0:
            first = ((b * o + np.int64(ch)) * ho + ty * m) * wo
            activate_inplace(flat[first:first + count * wo], code, slope)


@njit(cache=True, inline="always")
def _copy_row(buf, k, rows, i, col, ch0, width):
    """rows[i, col, ch0 + lane] = buf[k * LANES + lane] for lane < width (_copy_out's
    whole vectors where it can)."""
    iu, cu, first, at = uint64(i), uint64(col), uint64(ch0), uint64(k * LANES)
    if width == LANES:
        for lane in range(uint64(LANES)):
            rows[iu, cu, first + lane] = buf[at + lane]
        return
    for lane in range(uint64(width)):
        rows[iu, cu, first + lane] = buf[at + lane]


@njit(cache=True, inline="always")
def _products4(mt, row, t, ch, two, four, eight):
    """M A for one row of a tile's 6 x 6 products (rows ``row`` .. row+5 of M)."""
    return _at4(mt[row, t, ch], mt[row + 1, t, ch], mt[row + 2, t, ch], mt[row + 3, t, ch],
                mt[row + 4, t, ch], mt[row + 5, t, ch], two, four, eight)


# The weight gradient of a 3x3 stride-1 conv is F(3x3, 2x2): over every 2x2 tile t of the
# output gradient g and the 4x4 input block d under it,
#
#     dW = G^T [ sum_t (A g_t A^T) * (B^T d_t B) ] G
#
# with F(2x2, 3x3)'s own matrices (A = AT2.T), so the sums are 16 GEMMs, ``M[k] (C, O) =
# V[k].T (C, T) @ E[k] (T, O)``, over all the tiles of the batch: 2.25x fewer
# multiplications than summing 9 taps over every position.

@njit(cache=True, inline="always")
def _a2(g0, g1):
    """A g for a column (or row) of a 2x2 tile of the output gradient (A = AT2.T)."""
    return g0, g0 + g1, g0 - g1, -g1


@njit(cache=True)
def gradient_row(gy, b, ty, tw, strip, e, t0):
    """E (16, T, O)[:, t0 .. t0+tw] = A g A^T for the 2x2 tiles of the output gradient in
    row ``ty`` of sample ``b`` (zeros past the map), channels innermost: its two rows turned
    channels-last into ``strip`` (2, tw*2, O) first."""
    o = gy.shape[1]
    buf = stack_buffer(256, gy.dtype)  # 16 values x LANES channels
    channels_last_rows(gy, b, ty * 2, 0, strip)
    for tx in range(tw):
        t = t0 + tx
        x0 = tx * 2
        for ch0 in range(0, o, LANES):
            width = min(LANES, o - ch0)
            for lane in range(uint64(width)):  # vectorises: strip -> stack
                ch = uint64(ch0) + lane
                e0 = _a2(strip[0, x0, ch], strip[0, x0 + 1, ch])
                e1 = _a2(strip[1, x0, ch], strip[1, x0 + 1, ch])
                _put4(buf, 0, lane, _a2(e0[0], e1[0]))
                _put4(buf, 1, lane, _a2(e0[1], e1[1]))
                _put4(buf, 2, lane, _a2(e0[2], e1[2]))
                _put4(buf, 3, lane, _a2(e0[3], e1[3]))
            _copy_out(buf, 16, e, t, ch0, width)


@njit(cache=True, **PARALLEL)
def weight_grad_sums(x, gy, pt, pl, th, tw, rows_per_job, splits, k):
    """M (16, C, O) = sum over the batch's 2x2 output tiles of V[k].T @ E[k] (F(3x3, 2x2):
    the block comment above): ``splits`` partial sums, each over every splits-th block of
    ``rows_per_job`` rows of tiles, transformed and multiplied while in the thread's cache."""
    n, c = x.shape[0], x.shape[1]
    o = gy.shape[1]
    blocks = (th + rows_per_job - 1) // rows_per_job
    partial = np.zeros((splits, 16, c, o), dtype=x.dtype)
    for s in prange(splits):
        v = np.empty((16, rows_per_job * tw, c), dtype=x.dtype)
        e = np.empty((16, rows_per_job * tw, o), dtype=x.dtype)
        strip = np.empty((4, tw * 2 + 2, c), dtype=x.dtype)
        gstrip = np.empty((2, tw * 2, o), dtype=x.dtype)
        for job in range(s, n * blocks, splits):
            b, ty0 = job // blocks, (job % blocks) * rows_per_job
            ty1 = min(th, ty0 + rows_per_job)
            for ty in range(ty0, ty1):
                input_row(x, b, ty, 2, pt, pl, tw, k, strip, v, (ty - ty0) * tw)
                gradient_row(gy, b, ty, tw, gstrip, e, (ty - ty0) * tw)
            tiles = (ty1 - ty0) * tw
            for kk in range(16):
                gemm(v[kk, :tiles], e[kk, :tiles], partial[s, kk], 1.0, True, False)
    return partial.sum(axis=0)


def weight_gradient(x, gy, pt, pl, rows_per_job, splits):
    """A 3x3 stride-1 conv's weight gradient (O, C, 3, 3) by F(3x3, 2x2): x (N, C, H, W)
    its input, gy (N, O, ho, wo) its output gradient, (pt, pl) its padding at the top and
    left."""
    ho, wo = gy.shape[2:]
    th, tw = -(-ho // 2), -(-wo // 2)
    k = np.array([2, 4, 5, 8], dtype=x.dtype)
    sums = weight_grad_sums(x, gy, pt, pl, th, tw, min(rows_per_job, th), splits, k)
    g = G2.astype(x.dtype)
    sums = sums.reshape(4, 4, *sums.shape[1:])  # (i, j, C, O)
    return np.ascontiguousarray(np.einsum("ia,ijco,jb->ocab", g, sums, g, optimize=True))
