"""CUDA kernels (``numba.cuda``) and the thin host functions that launch them.

- ``gemm_kernel``: ``C = op(A) @ op(B)``, then the epilogue (a bias per row or per column,
  an activation) before C is written. Tiled and register-blocked: a block of 16 x 16
  threads computes a 64 x 64 tile of C, each thread a 4 x 4 register tile (rows
  ``ty + 16 i``, columns ``tx + 16 j``, so a warp's stores are contiguous); the 64 x 16
  and 16 x 64 panels of A and B go through shared memory, every element loaded once per
  block. Conv layers use it on im2col matrices (``out (O, N*HW) = W (O, K) @ cols``, bias
  per row) and linear layers directly (``y = x @ W.T``, bias per column).
- ``activation_forward_kernel`` / ``activation_backward_kernel``: grid-stride loops over
  the flattened tensor; ``activate`` and ``derivative`` are compiled from the same scalar
  formulas as the CPU kernels (``runtime/backends/activations.py``), so one code means one
  function everywhere.
- ``add_kernel``: element-wise sum of two same-shape tensors.

float32 throughout; every kernel is tested against NumPy under the CUDA simulator.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import os

import numpy as np
from numba import float32

from runtime.backends.cuda import numba_cuda
from runtime.backends.activations import NO_ACTIVATION, activation_code, dispatch_chain

cuda = numba_cuda()

# The simulator runs every GPU thread as a Python thread, so simulated tests use small
# blocks: the same kernels, fewer threads per block (and so more blocks).
SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
# threads per block of the element-wise kernels and reductions (a power of two), and the
# most blocks a grid-stride loop is launched with (each thread then takes several elements)
ELEMENTWISE_BLOCK = 8 if SIMULATED else 256
MAX_BLOCKS = 2 if SIMULATED else 4096
THREADS = 4 if SIMULATED else 16  # GEMM threads per block along each axis (16 x 16 = 256)
PER_THREAD = 4  # 4 x 4 outputs per thread
TILE = THREADS * PER_THREAD  # rows and columns of C per block (64)
TILE_K = 16  # depth of the shared-memory panels
# the panels' padded widths (a column more against bank conflicts), as constants: Numba
# needs a shared array's shape as literals, and `TILE_K + 1` written in a kernel is not one
# (the simulator accepts it; a real GPU does not)
TILE_K_PADDED = TILE_K + 1
TILE_PADDED = TILE + 1


# Where the memory plan puts the result of the op running now: (shape, view of the plan's
# device buffer), set for the duration of one op by `placing` (a context variable, so the
# slot belongs to the op that set it and to no other call).
_SLOT: contextvars.ContextVar = contextvars.ContextVar("archc_cuda_slot", default=None)


def reserve(buffers: dict, kind: str, nbytes: int):
    """A model's device buffer for a kind of pass (``buffers[kind]``), grown to the
    plan's size when needed."""
    buffer = buffers.get(kind)
    if buffer is None or buffer.size * 4 < nbytes:
        buffer = buffers[kind] = cuda.device_array(max(nbytes // 4, 1), dtype=np.float32)
    return buffer


@contextlib.contextmanager
def aside():
    """While the block runs, results do not take the planned room (a value the op keeps
    apart from its output, such as the one before a fused activation)."""
    token = _SLOT.set(None)
    try:
        yield
    finally:
        _SLOT.reset(token)


@contextlib.contextmanager
def placing(shape: tuple, view):
    """While the block runs, :func:`result` of ``shape``'s size is ``view`` (the plan's
    room for the op's output). Whatever takes it is safe: the plan keeps an op's output
    room clear of every value alive during the op."""
    token = _SLOT.set((shape, view))
    try:
        yield
    finally:
        _SLOT.reset(token)


def result(shape):
    """A device array for what a host function returns as the op's output: the planned
    room (:func:`placing`) when it has this many elements, taken once; otherwise a fresh
    allocation. Temporaries come from :func:`empty`, so which is asked first does not
    matter."""
    shape = shape if isinstance(shape, tuple) else (shape,)
    slot = _SLOT.get()
    if slot is not None and math.prod(slot[0]) == math.prod(shape):
        _SLOT.set(None)
        return slot[1].reshape(shape)
    return cuda.device_array(shape, dtype=np.float32)


def absent():
    """An empty float32 device array: what a kernel gets for an optional argument that is
    not there (the weight of a norm without affine parameters, a missing bias)."""
    return cuda.device_array(0, dtype=np.float32)


def axis_view(x, axis: int = 1):
    """x as (the axes before ``axis``, ``axis``, the axes after), each flattened: (N, C,
    H*W) for the default, the channels."""
    shape = tuple(x.shape)
    return x.reshape(math.prod(shape[:axis]), shape[axis], math.prod(shape[axis + 1:]))


def empty(shape, dtype=np.float32):
    """A fresh device array: temporaries, and results outside a planned forward pass."""
    return cuda.device_array(shape, dtype=dtype)


def _device(fn):
    return cuda.jit(device=True, inline=True)(fn)


def _activate_link(code, f, rest):
    def activate(v, c, a):
        if c == code:
            return f(v, a)
        return rest(v, c, a)
    return _device(activate)


def _derivative_link(code, df, rest):
    def derivative(x, y, c, a):
        if c == code:
            return df(x, y, a)
        return rest(x, y, c, a)
    return _device(derivative)


@cuda.jit(device=True, inline=True)
def _identity(v, c, a):
    return v


@cuda.jit(device=True, inline=True)
def _one(x, y, c, a):
    return 1.0


activate = dispatch_chain(_activate_link, _identity, lambda f: _device(f.forward))
"""``activate(v, code, a)``: activation ``code`` of one value (NO_ACTIVATION: the identity),
compiled from the formulas of ``runtime/backends/activations.py``."""

derivative = dispatch_chain(_derivative_link, _one, lambda f: _device(f.derivative))
"""``derivative(x, y, code, a)``: f'(x) of activation ``code`` (y: its output)."""


@cuda.jit(device=True, inline=True)
def _panel_product(sa, sb, acc, av, bv, tx, ty):
    """acc (this thread's 4 x 4 outputs: rows ty + 16 i, columns tx + 16 j) += the product
    of the shared panels sa (64 x 16) and sb (16 x 64), through registers av and bv."""
    for kk in range(TILE_K):
        for i in range(PER_THREAD):
            av[i] = sa[ty + THREADS * i, kk]
        for j in range(PER_THREAD):
            bv[j] = sb[kk, tx + THREADS * j]
        for i in range(PER_THREAD):
            for j in range(PER_THREAD):
                acc[i, j] += av[i] * bv[j]


@cuda.jit(cache=True)
def gemm_kernel(a, b, c, trans_a, trans_b, bias, bias_mode, code, slope):
    """c (M, N) = op(a) @ op(b), plus bias (mode 1: per row, 2: per column, 0: none), then
    activation ``code``; launched on a (ceil(N / 64), ceil(M / 64)) grid of 16 x 16
    blocks."""
    m, n = c.shape
    k = a.shape[0] if trans_a else a.shape[1]
    # one padding column: the loads below store down a column for a transposed operand,
    # which would otherwise hit one shared-memory bank 16 or 32 times over
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
    for k0 in range(0, k, TILE_K):
        # consecutive threads read consecutive addresses of each operand (coalesced):
        # along K of a row-major A (M, K), along M of a transposed one (K, M); the same
        # for B along N (K, N) or along K (N, K)
        for step in range(TILE * TILE_K // (THREADS * THREADS)):  # 4 loads per thread
            idx = tid + step * THREADS * THREADS
            if trans_a:
                r, q = idx % TILE, idx // TILE
            else:
                r, q = idx // TILE_K, idx % TILE_K
            gr, gk = row0 + r, k0 + q
            if gr < m and gk < k:
                sa[r, q] = a[gk, gr] if trans_a else a[gr, gk]
            else:
                sa[r, q] = 0.0
            if trans_b:
                r, q = idx % TILE_K, idx // TILE_K
            else:
                r, q = idx // TILE, idx % TILE
            gk, gc = k0 + r, col0 + q
            if gk < k and gc < n:
                sb[r, q] = b[gc, gk] if trans_b else b[gk, gc]
            else:
                sb[r, q] = 0.0
        cuda.syncthreads()
        _panel_product(sa, sb, acc, av, bv, tx, ty)
        cuda.syncthreads()
    for i in range(PER_THREAD):
        r = row0 + ty + THREADS * i
        if r >= m:
            continue
        for j in range(PER_THREAD):
            q = col0 + tx + THREADS * j
            if q < n:
                v = acc[i, j]
                if bias_mode == 1:
                    v += bias[r]
                elif bias_mode == 2:
                    v += bias[q]
                c[r, q] = activate(v, code, slope)


@cuda.jit(cache=True)
def activation_forward_kernel(x, y, code, slope):
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, x.size, stride):
        y[i] = activate(x[i], code, slope)


@cuda.jit(cache=True)
def activation_backward_kernel(x, y, gy, gx, code, slope):
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, x.size, stride):
        gx[i] = gy[i] * derivative(x[i], y[i], code, slope)


@cuda.jit(cache=True)
def add_kernel(a, b, out):
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, a.size, stride):
        out[i] = a[i] + b[i]


# --------------------------------------------------------------------------- launches
def _blocks(size: int) -> int:
    """Enough blocks of ELEMENTWISE_BLOCK threads for ``size`` elements, capped (the loops
    stride)."""
    return max(1, min(MAX_BLOCKS, (size + ELEMENTWISE_BLOCK - 1) // ELEMENTWISE_BLOCK))


def _codes(activation) -> tuple[int, float]:
    return activation_code(*activation) if activation is not None else (NO_ACTIVATION, 0.0)


def gemm(a, b, *, trans_a: bool = False, trans_b: bool = False, bias=None, bias_mode: int = 0,
         activation: tuple[str, dict] | None = None, out=None):
    """op(a) @ op(b) on the device, with the epilogue; a, b (and bias) device arrays;
    written into ``out`` (e.g. one group's rows of a larger result) when given."""
    m = a.shape[1] if trans_a else a.shape[0]
    n = b.shape[0] if trans_b else b.shape[1]
    k_a = a.shape[0] if trans_a else a.shape[1]
    k_b = b.shape[1] if trans_b else b.shape[0]
    if k_a != k_b:
        raise ValueError(f"gemm: inner dimensions differ ({k_a} and {k_b})")
    c = result((m, n)) if out is None else out
    if bias is None:
        bias, bias_mode = empty(1), 0
    code, slope = _codes(activation)
    grid = ((n + TILE - 1) // TILE, (m + TILE - 1) // TILE)
    gemm_kernel[grid, (THREADS, THREADS)](a, b, c, trans_a, trans_b, bias, bias_mode, code,
                                          slope)
    return c


def activation_forward(x, name: str, attrs: dict, out=None):
    """The activation of x (into ``out``, which may be x itself: element by element)."""
    code, slope = activation_code(name, attrs)
    flat = x.reshape(x.size)
    y = result(x.size) if out is None else out.reshape(x.size)
    _launch(activation_forward_kernel, x.size, flat, y, code, slope)
    return y.reshape(x.shape)


def activation_backward(x, y, gy, name: str, attrs: dict):
    code, slope = activation_code(name, attrs)
    gx = empty(x.size)
    _launch(activation_backward_kernel, x.size, x.reshape(x.size), y.reshape(y.size),
            gy.reshape(gy.size), gx, code, slope)
    return gx.reshape(x.shape)


def add(a, b, out=None):
    """a + b (into ``out``, which may be a or b: element by element)."""
    if a.shape != b.shape:
        raise ValueError(f"add: shapes differ ({a.shape} and {b.shape})")
    out = result(a.size) if out is None else out.reshape(a.size)
    _launch(add_kernel, a.size, a.reshape(a.size), b.reshape(b.size), out)
    return out.reshape(a.shape)


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
def nchw_to_rows_kernel(x, rows):
    n, c, h, w = x.shape
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, x.size, stride):
        b, ch, p = e // (c * h * w), (e // (h * w)) % c, e % (h * w)
        rows[ch, b * h * w + p] = x[b, ch, p // w, p % w]


@cuda.jit(device=True, inline=True)
def block_sum(partial, t, value):
    """The sum of ``value`` over the ELEMENTWISE_BLOCK threads of a block (thread ``t``
    gives its own), by a tree reduction in the shared array ``partial``; every thread gets
    the total. Each call needs its own shared array."""
    partial[t] = value
    cuda.syncthreads()
    step = ELEMENTWISE_BLOCK // 2
    while step > 0:
        if t < step:
            partial[t] += partial[t + step]
        cuda.syncthreads()
        step //= 2
    return partial[0]


@cuda.jit(cache=True)
def row_sum_kernel(a, out):
    """out[r] = sum of row r: one block per row, a shared-memory tree reduction."""
    partial = cuda.shared.array(ELEMENTWISE_BLOCK, float32)
    r, t = cuda.blockIdx.x, cuda.threadIdx.x
    total = 0.0
    for q in range(t, a.shape[1], ELEMENTWISE_BLOCK):
        total += a[r, q]
    total = block_sum(partial, t, total)
    if t == 0:
        out[r] = total


def _launch(kernel, size: int, *args) -> None:
    kernel[_blocks(size), ELEMENTWISE_BLOCK](*args)


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
    residual)`` in the kernel. Dense: the implicit GEMM (``conv_gemm_kernel``); grouped:
    im2col, a GEMM per group into that group's rows, the rows back to NCHW, the residual
    added after."""
    n, c = x.shape[:2]
    o, cg, kh, kw = w.shape
    (sh, sw), (dh, dw), ((pt, _), (pl, _)), (ho, wo) = stride, dilation, pads, out_hw
    y = result((n, o, ho, wo))
    if groups == 1:
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
    after = activation if residual is None else None
    for g in range(groups):
        gemm(wmat[g * og:(g + 1) * og], cols[g * k:(g + 1) * k],
             bias=None if bias is None else bias[g * og:(g + 1) * og],
             bias_mode=0 if bias is None else 1, activation=after,
             out=rows[g * og:(g + 1) * og])
    _launch(rows_to_nchw_kernel, y.size, rows, y)
    if residual is not None:  # in place: y is this op's own result
        y = add(y, residual, out=y)
        if activation is not None:
            y = activation_forward(y, *activation, out=y)
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
    gbias = empty(o)
    row_sum_kernel[o, ELEMENTWISE_BLOCK](gy_rows, gbias)
    return gx, gw.reshape(w.shape), gbias


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
    gbias = empty(cout)
    row_sum_kernel[cout, ELEMENTWISE_BLOCK](_rows(gy), gbias)
    return gx, gw.reshape(w.shape), gbias
