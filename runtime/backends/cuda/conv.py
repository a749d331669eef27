"""Convolutions on the device: the implicit GEMM for dense convs (``conv_gemm_kernel``,
the epilogue ``activation(conv + bias + residual)`` applied before each value is written),
im2col and a GEMM per group for grouped ones, col2im for input gradients, and transposed
convs as the adjoint."""

from __future__ import annotations

import numpy as np
from numba import float32

from runtime.backends.cuda.kernels import (PER_THREAD, THREADS, TILE, TILE_K, TILE_K_PADDED,
                                           TILE_PADDED, _codes, _launch, _panel_product,
                                           absent, activate, axis_view, channel_sums, cuda,
                                           empty, gemm, gemm_library, result)

# --------------------------------------------------------------------------- convolution
@cuda.jit(cache=True)
def im2col_kernel(x, cols, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo):
    """cols[(c, i, j), (n, y, x)] = x[n, c, y*sh + i*dh - pt, x*sw + j*dw - pl] (0 outside):
    one thread per element of cols, consecutive threads along a row (coalesced writes)."""
    n, c, h, w = x.shape
    width = n * ho * wo
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, cols.shape[0] * width, stride):
        row, col = e // width, e % width
        ch, i, j = row // (kh * kw), (row // kw) % kh, row % kw
        b, rest = col // (ho * wo), col % (ho * wo)
        sy = (rest // wo) * sh + i * dh - pt
        sx = (rest % wo) * sw + j * dw - pl
        cols[row, col] = x[b, ch, sy, sx] if 0 <= sy < h and 0 <= sx < w else 0.0


@cuda.jit(cache=True)
def col2im_kernel(cols, gx, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo):
    """The adjoint of im2col: each input pixel gathers the column entries that read it
    (one thread per pixel: no atomics)."""
    n, c, h, w = gx.shape
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, gx.size, stride):
        b, ch = e // (c * h * w), (e // (h * w)) % c
        y, x = (e // w) % h, e % w
        total = 0.0
        for i in range(kh):
            ty = y + pt - i * dh
            if ty < 0 or ty % sh != 0 or ty // sh >= ho:
                continue
            for j in range(kw):
                tx = x + pl - j * dw
                if tx < 0 or tx % sw != 0 or tx // sw >= wo:
                    continue
                total += cols[(ch * kh + i) * kw + j, (b * ho + ty // sh) * wo + tx // sw]
        gx[b, ch, y, x] = total


@cuda.jit(cache=True)
def rows_to_nchw_kernel(rows, out):
    """rows (C, N*HW) -> out (N, C, H, W), and its inverse when ``out`` is given as rows'
    shape by the caller (see nchw_to_rows)."""
    n, c, h, w = out.shape
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, out.size, stride):
        b, ch, p = e // (c * h * w), (e // (h * w)) % c, e % (h * w)
        out[b, ch, p // w, p % w] = rows[ch, b * h * w + p]


@cuda.jit(cache=True)
def rows_epilogue_kernel(rows, out, bias, residual, code, slope):
    """out (N, C, H, W) = activation(rows (C, N*HW) + bias[c] + residual): a GEMM's
    result put back in NCHW with the conv's epilogue, in one pass."""
    n, c, h, w = out.shape
    for e in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        b, ch, p = e // (c * h * w), (e // (h * w)) % c, e % (h * w)
        v = rows[ch, b * h * w + p]
        if bias.size:
            v += bias[ch]
        if residual.size:
            v += residual[b, ch, p // w, p % w]
        out[b, ch, p // w, p % w] = activate(v, code, slope)


@cuda.jit(cache=True)
def nchw_to_rows_kernel(x, rows):
    n, c, h, w = x.shape
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, x.size, stride):
        b, ch, p = e // (c * h * w), (e // (h * w)) % c, e % (h * w)
        rows[ch, b * h * w + p] = x[b, ch, p // w, p % w]


@cuda.jit(cache=True)
def conv_gemm_kernel(x, w, y, bias, residual, code, slope, kh, kw, sh, sw, dh, dw, pt, pl):
    """A dense conv as an implicit GEMM: ``y (O, N*Ho*Wo) = W (O, C*kh*kw) @ cols`` with the
    tiles of cols gathered from x as they are loaded (no im2col matrix in memory), and the
    epilogue (bias, residual, activation) applied before each value is written straight
    into NCHW. The GEMM kernel's tiling: a 64 x 64 tile per block of 16 x 16 threads, a
    4 x 4 register tile per thread, 64 x 16 and 16 x 64 shared-memory panels."""
    n, c, h, wd = x.shape
    o, ho, wo = y.shape[1], y.shape[2], y.shape[3]
    m, cols, k = o, n * ho * wo, c * kh * kw
    taps = kh * kw
    sa = cuda.shared.array((TILE, TILE_K_PADDED), float32)
    sb = cuda.shared.array((TILE_K, TILE_PADDED), float32)
    acc = cuda.local.array((PER_THREAD, PER_THREAD), float32)
    av = cuda.local.array(PER_THREAD, float32)
    bv = cuda.local.array(PER_THREAD, float32)
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    tid = ty * THREADS + tx
    row0, col0 = cuda.blockIdx.y * TILE, cuda.blockIdx.x * TILE
    for i in range(PER_THREAD):
        for j in range(PER_THREAD):
            acc[i, j] = 0.0
    # the column this thread loads is the same in every panel: decompose it once
    q = tid % TILE
    gc = col0 + q
    b, rest = gc // (ho * wo), gc % (ho * wo)
    y0, x0 = (rest // wo) * sh - pt, (rest % wo) * sw - pl
    for k0 in range(0, k, TILE_K):
        for step in range(TILE * TILE_K // (THREADS * THREADS)):
            idx = tid + step * THREADS * THREADS
            r, kq = idx // TILE_K, idx % TILE_K  # the weight panel, along K
            gr, gk = row0 + r, k0 + kq
            sa[r, kq] = w[gr, gk] if gr < m and gk < k else 0.0
            r = idx // TILE  # the gathered panel: row r (a tap of a channel), column q
            gk = k0 + r
            v = 0.0
            if gk < k and gc < cols:
                ch, tap = gk // taps, gk % taps
                sy, sx = y0 + (tap // kw) * dh, x0 + (tap % kw) * dw
                if 0 <= sy < h and 0 <= sx < wd:
                    v = x[b, ch, sy, sx]
            sb[r, q] = v
        cuda.syncthreads()
        _panel_product(sa, sb, acc, av, bv, tx, ty)
        cuda.syncthreads()
    for j in range(PER_THREAD):
        col = col0 + tx + THREADS * j
        if col >= cols:
            continue
        bj, rj = col // (ho * wo), col % (ho * wo)
        oy, ox = rj // wo, rj % wo
        for i in range(PER_THREAD):
            r = row0 + ty + THREADS * i
            if r < m:
                v = acc[i, j]
                if bias.size:
                    v += bias[r]
                if residual.size:
                    v += residual[bj, r, oy, ox]
                y[bj, r, oy, ox] = activate(v, code, slope)


def no_residual():
    """What an epilogue kernel gets when there is no residual to add."""
    return cuda.device_array((0, 0, 0, 0), dtype=np.float32)


def conv2d_forward(x, w, bias, *, stride, dilation, pads, out_hw, groups=1, activation=None,
                   residual=None):
    """A dense or grouped conv on the device, with the epilogue ``activation(conv + bias +
    residual)`` in the kernel. Dense: the implicit GEMM (``conv_gemm_kernel``); grouped, or
    dense where the GEMMs go to a library (cuBLAS): im2col, a GEMM per group into that
    group's rows, then one pass puts the rows back in NCHW with the epilogue."""
    n, c = x.shape[:2]
    o, cg, kh, kw = w.shape
    (sh, sw), (dh, dw), ((pt, _), (pl, _)), (ho, wo) = stride, dilation, pads, out_hw
    y = result((n, o, ho, wo))
    if groups == 1 and gemm_library()[0] is None:  # with a GEMM library: im2col + GEMM
        code, slope = _codes(activation)
        grid = ((n * ho * wo + TILE - 1) // TILE, (o + TILE - 1) // TILE)
        conv_gemm_kernel[grid, (THREADS, THREADS)](
            x, w.reshape(o, cg * kh * kw), y,
            bias if bias is not None else absent(),
            residual if residual is not None else no_residual(), code, slope, kh, kw, sh, sw,
            dh, dw, pt, pl)
        return y
    cols = empty((c * kh * kw, n * ho * wo))
    _launch(im2col_kernel, cols.size, x, cols, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo)
    rows = empty((o, n * ho * wo))
    og, k = o // groups, cg * kh * kw
    wmat = w.reshape(o, k)
    for g in range(groups):
        gemm(wmat[g * og:(g + 1) * og], cols[g * k:(g + 1) * k], out=rows[g * og:(g + 1) * og])
    code, slope = _codes(activation)
    _launch(rows_epilogue_kernel, y.size, rows, y, bias if bias is not None else absent(),
            residual if residual is not None else no_residual(), code, slope)
    return y


def conv2d_backward(x, w, gy, *, stride, dilation, pads, groups=1):
    """(gx, gw, gbias) of a dense or grouped conv from its input and output gradient, per
    group: gw = gy_rows @ cols.T, gcols = W.T @ gy_rows, gx = col2im(gcols); cols (x's
    im2col matrix) is built here, for the pass, not kept from the forward."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    ho, wo = gy.shape[2:]
    (sh, sw), (dh, dw), ((pt, _), (pl, _)) = stride, dilation, pads
    cols = empty((c * kh * kw, n * ho * wo))
    _launch(im2col_kernel, cols.size, x, cols, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo)
    gy_rows = empty((o, n * ho * wo))
    _launch(nchw_to_rows_kernel, gy.size, gy, gy_rows)
    og, k = o // groups, cg * kh * kw
    wmat = w.reshape(o, k)
    gw = empty((o, k))
    gcols = empty((c * kh * kw, n * ho * wo))
    for g in range(groups):
        rows, wg = gy_rows[g * og:(g + 1) * og], wmat[g * og:(g + 1) * og]
        gemm(rows, cols[g * k:(g + 1) * k], trans_b=True, out=gw[g * og:(g + 1) * og])
        gemm(wg, rows, trans_a=True, out=gcols[g * k:(g + 1) * k])
    gx = empty((n, c, h, wd))
    _launch(col2im_kernel, gx.size, gcols, gx, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo)
    return gx, gw.reshape(w.shape), channel_sums(axis_view(gy))


@cuda.jit(cache=True)
def add_bias_kernel(y, bias):
    """y[b, c, p] += bias[c] on an (N, C, HW) view."""
    n, c, hw = y.shape
    for e in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        y[e // (c * hw), (e // hw) % c, e % hw] += bias[(e // hw) % c]


def _rows(x):
    n, c, h, w = x.shape
    rows = empty((c, n * h * w))
    _launch(nchw_to_rows_kernel, x.size, x, rows)
    return rows


def conv_transpose2d_forward(x, w, bias, *, stride, dilation, padding, out_hw, groups=1):
    """The adjoint of a conv: per group, cols = W_g^T @ x_g's rows (a GEMM into that
    group's rows of cols), then col2im adds every input pixel's column onto the output;
    the bias after."""
    n, c, h, wd = x.shape
    cin, cout_g, kh, kw = w.shape
    cout = cout_g * groups
    (sh, sw), (dh, dw), (ph, pw), (ho, wo) = stride, dilation, padding, out_hw
    y = result((n, cout, ho, wo))
    rows = _rows(x)
    cin_g, k = cin // groups, cout_g * kh * kw
    wmat = w.reshape(cin, k)
    cols = empty((cout * kh * kw, n * h * wd))
    for g in range(groups):
        gemm(wmat[g * cin_g:(g + 1) * cin_g], rows[g * cin_g:(g + 1) * cin_g], trans_a=True,
             out=cols[g * k:(g + 1) * k])
    _launch(col2im_kernel, y.size, cols, y, kh, kw, sh, sw, dh, dw, ph, pw, h, wd)
    if bias is not None:
        _launch(add_bias_kernel, y.size, y.reshape(n, cout, ho * wo), bias)
    return y


def conv_transpose2d_backward(x, w, gy, *, stride, dilation, padding, groups=1):
    """(gx, gw, gbias): gy's im2col matrix (a conv's input); per group, gx_g = W_g @ its
    rows and gw_g = x_g's rows @ their transpose."""
    n, c, h, wd = x.shape
    cin, cout_g, kh, kw = w.shape
    cout = cout_g * groups
    (sh, sw), (dh, dw), (ph, pw) = stride, dilation, padding
    cols = empty((cout * kh * kw, n * h * wd))
    _launch(im2col_kernel, cols.size, gy, cols, kh, kw, sh, sw, dh, dw, ph, pw, h, wd)
    cin_g, k = cin // groups, cout_g * kh * kw
    wmat = w.reshape(cin, k)
    rows = _rows(x)
    gx_rows = empty((cin, n * h * wd))
    gw = empty((cin, k))
    for g in range(groups):
        part = cols[g * k:(g + 1) * k]
        gemm(wmat[g * cin_g:(g + 1) * cin_g], part, out=gx_rows[g * cin_g:(g + 1) * cin_g])
        gemm(rows[g * cin_g:(g + 1) * cin_g], part, trans_b=True,
             out=gw[g * cin_g:(g + 1) * cin_g])
    gx = empty(x.shape)
    _launch(rows_to_nchw_kernel, gx.size, gx_rows, gx)
    return gx, gw.reshape(w.shape), channel_sums(axis_view(gy))
