"""Convolutions on the device. Dense convs: with a GEMM library (cuBLAS), image by image
where the images are not small (one strided-batched call: the weights times each image's
im2col matrix, written straight into that image's NCHW output; a 1x1 conv of stride 1
multiplies the input itself, no im2col), then the epilogue ``activation(conv + bias +
residual)`` in place when there is one; with archc's own kernel, the implicit GEMM
(``conv_gemm_kernel``, the epilogue applied before each value is written). Grouped convs,
and dense ones on small images: im2col and one batch of per-group GEMMs into rows put back
in NCHW with the epilogue; col2im for input gradients; transposed convs as the
adjoint."""

from __future__ import annotations

from numba import float32

from runtime.backends.cuda.kernels import (PER_THREAD, THREADS, TILE, TILE_K, TILE_K_PADDED,
                                           TILE_PADDED, _codes, _device, _launch_planes,
                                           _panel_product, absent, activate, add,
                                           axis_view, cuda, empty, gemm,
                                           gemm_library, plane_range, result)
from runtime.backends.cuda.strategy import by_image_rule, choose, key

# --------------------------------------------------------------------------- convolution
@_device
def _gathered(x, b, ch, i, j, p, sh, sw, dh, dw, pt, pl, wo):
    """What an im2col matrix holds for image b, channel ch, kernel tap (i, j) and output
    pixel p: x[b, ch, y*sh + i*dh - pt, x*sw + j*dw - pl], 0 outside."""
    sy = (p // wo) * sh + i * dh - pt
    sx = (p % wo) * sw + j * dw - pl
    if 0 <= sy < x.shape[2] and 0 <= sx < x.shape[3]:
        return x[b, ch, sy, sx]
    return 0.0


@_device
def _row_of(row, kh, kw):
    """The (channel, tap row i, tap column j) of an im2col matrix's row (c, i, j)."""
    tap = row % (kh * kw)
    return row // (kh * kw), tap // kw, tap % kw


@cuda.jit(cache=True)
def im2col_kernel(x, cols, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo):
    """cols[(c, i, j), (n, y, x)] = x[n, c, y*sh + i*dh - pt, x*sw + j*dw - pl] (0 outside):
    a plane kernel, one plane per (row of cols, image), consecutive threads along the
    image's pixels (coalesced writes)."""
    n, hw = x.shape[0], ho * wo
    first, step, plane0, planes = plane_range()
    for plane in range(plane0, cols.shape[0] * n, planes):
        row, b = plane // n, plane % n
        ch, i, j = _row_of(row, kh, kw)
        for p in range(first, hw, step):
            cols[row, b * hw + p] = _gathered(x, b, ch, i, j, p, sh, sw, dh, dw, pt, pl, wo)


@cuda.jit(cache=True)
def im2col_images_kernel(x, cols, kh, kw, sh, sw, dh, dw, pt, pl, wo):
    """Each image's own im2col matrix: cols[n, (c, i, j), (y, x)], the same values as
    :func:`im2col_kernel` with the image first, so that image n's product with the
    weights is one item of a strided batch. One plane per (image, row)."""
    rows, hw = cols.shape[1], cols.shape[2]
    first, step, plane0, planes = plane_range()
    for plane in range(plane0, cols.shape[0] * rows, planes):
        b, row = plane // rows, plane % rows
        ch, i, j = _row_of(row, kh, kw)
        for p in range(first, hw, step):
            cols[b, row, p] = _gathered(x, b, ch, i, j, p, sh, sw, dh, dw, pt, pl, wo)


@_device
def _source(t, pad, dilated, stride, size):
    """The output coordinate whose kernel tap at offset ``dilated`` reads input coordinate
    t (t + pad - dilated = out * stride), or -1 where none does."""
    t = t + pad - dilated
    if t < 0:
        return -1
    if stride != 1:  # (a stride-1 conv, most of them, divides nothing)
        if t % stride != 0:
            return -1
        t = t // stride
    return t if t < size else -1


@cuda.jit(cache=True)
def col2im_kernel(cols, gx, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo):
    """The adjoint of im2col: each input pixel gathers the column entries that read it
    (one thread per pixel: no atomics); a plane kernel over gx's (image, channel)."""
    n, c, h, w = gx.shape
    first, step, plane0, planes = plane_range()
    for plane in range(plane0, n * c, planes):
        b, ch = plane // c, plane % c
        for p in range(first, h * w, step):
            y, x = p // w, p % w
            total = 0.0
            for i in range(kh):
                oy = _source(y, pt, i * dh, sh, ho)
                if oy < 0:
                    continue
                for j in range(kw):
                    ox = _source(x, pl, j * dw, sw, wo)
                    if ox >= 0:
                        total += cols[(ch * kh + i) * kw + j, (b * ho + oy) * wo + ox]
            gx[b, ch, y, x] = total


@cuda.jit(cache=True)
def rows_to_nchw_kernel(rows, out):
    """rows (C, N*HW) -> out (N, C, HW): a plane kernel over out's (image, channel)."""
    n, c, hw = out.shape
    first, step, plane0, planes = plane_range()
    for plane in range(plane0, n * c, planes):
        b, ch = plane // c, plane % c
        for p in range(first, hw, step):
            out[b, ch, p] = rows[ch, b * hw + p]


@_device
def _conv_epilogue(v, bias, ch, added, code, slope):
    """A conv's output value in channel ch with its epilogue: activation(v + bias[ch] +
    added), the bias only where given (a 0-size array where not); ``added``: the
    residual's value there, or 0."""
    if bias.size:
        v += bias[ch]
    return activate(v + added, code, slope)


@cuda.jit(cache=True)
def epilogue_kernel(rows, out, bias, residual, code, slope):
    """out (N, C, HW) = activation(rows (C, N*HW) + bias[c] + residual (N, C, HW)): a
    GEMM's result put back in NCHW with the conv's epilogue, in one pass; with ``rows``
    empty, in place on out (a conv the library wrote straight into NCHW)."""
    n, c, hw = out.shape
    first, step, plane0, planes = plane_range()
    for plane in range(plane0, n * c, planes):
        b, ch = plane // c, plane % c
        for p in range(first, hw, step):
            v = rows[ch, b * hw + p] if rows.size else out[b, ch, p]
            added = residual[b, ch, p] if residual.size else 0.0
            out[b, ch, p] = _conv_epilogue(v, bias, ch, added, code, slope)


@cuda.jit(cache=True)
def nchw_to_rows_kernel(x, rows):
    """x (N, C, HW) -> rows (C, N*HW): a plane kernel over x's (image, channel)."""
    n, c, hw = x.shape
    first, step, plane0, planes = plane_range()
    for plane in range(plane0, n * c, planes):
        b, ch = plane // c, plane % c
        for p in range(first, hw, step):
            rows[ch, b * hw + p] = x[b, ch, p]


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
                added = residual[bj, r, oy, ox] if residual.size else 0.0
                y[bj, r, oy, ox] = _conv_epilogue(acc[i, j], bias, r, added, code, slope)


def _pointwise(x, kernel: tuple, stride: tuple, pads) -> bool:
    """Whether a conv's im2col matrix is its input as it is: a 1x1 kernel, stride 1, no
    padding, over a contiguous NCHW array (image n's matrix is x[n] as (C, H*W))."""
    return (kernel == (1, 1) and tuple(stride) == (1, 1)
            and all(p == 0 for side in pads for p in side) and x.is_c_contiguous())


def _epilogue_args(bias, residual, activation, planes: bool = True) -> tuple:
    """(bias, residual, code, slope) as a conv's epilogue takes them, an absent bias or
    residual as a 0-size array: the residual (N, C, H*W) for the plane kernels, NCHW for
    the implicit GEMM."""
    if residual is None:
        residual = absent(ndim=3 if planes else 4)
    elif planes:
        residual = axis_view(residual)
    return (bias if bias is not None else absent(), residual, *_codes(activation))


# The most bytes an im2col matrix takes (and its gradient, in the backward pass): a batch
# whose matrix would be larger goes through in chunks of images, each conv's workspace
# bounded whatever the batch (ResNet's stem at batch 512: 3.8 GB of columns in one piece).
WORKSPACE_BYTES = 256 << 20


def _chunks(n: int, per_image: int):
    """(start, stop) of the image ranges a batch of ``n`` goes through in, each one's
    columns at most WORKSPACE_BYTES (one image at least)."""
    step = max(1, min(n, WORKSPACE_BYTES // max(per_image, 1)))
    return [(b0, min(n, b0 + step)) for b0 in range(0, n, step)]


def conv2d_forward(x, w, bias, *, stride, dilation, pads, out_hw, groups=1, activation=None,
                   residual=None):
    """A dense or grouped conv on the device, with the epilogue ``activation(conv + bias +
    residual)``. Dense with a GEMM library (cuBLAS) on images of 256+ output pixels: each
    image's product with the weights written straight into its NCHW output, one strided
    batch (the image's im2col matrix, or a 1x1 conv's input itself), the epilogue in place
    after; dense with archc's kernel: the implicit GEMM, the epilogue inside; otherwise
    (grouped, or small images): im2col, a batch of one GEMM per group into that group's
    rows, then one pass puts the rows back in NCHW with the epilogue. Through im2col, in
    chunks of images whose columns fit WORKSPACE_BYTES."""
    n, c = x.shape[:2]
    o, cg, kh, kw = w.shape
    (sh, sw), (dh, dw), ((pt, _), (pl, _)), (ho, wo) = stride, dilation, pads, out_hw
    y = result((n, o, ho, wo))
    if groups == 1 and gemm_library()[0] is None:
        k = cg * kh * kw
        grid = ((n * ho * wo + TILE - 1) // TILE, (o + TILE - 1) // TILE)
        conv_gemm_kernel[grid, (THREADS, THREADS)](
            x, w.reshape(o, k), y, *_epilogue_args(bias, residual, activation, False), kh, kw,
            sh, sw, dh, dw, pt, pl)
        return y

    def run(by_image: bool) -> None:
        pointwise = by_image and _pointwise(x, (kh, kw), stride, pads)
        per_image = 0 if pointwise else c * kh * kw * ho * wo * 4
        for b0, b1 in _chunks(n, per_image):
            _conv_images(x[b0:b1], w, bias, y[b0:b1], None if residual is None else
                         residual[b0:b1], activation, stride, dilation, pads, groups,
                         by_image, pointwise)

    rule = by_image_rule(ho, wo, groups)
    if groups == 1:
        epilogue = bias is not None or residual is not None or activation is not None
        rule = choose(key("forward", x.shape, w.shape, stride, dilation, pads, epilogue),
                      rule, run)
    run(rule)
    return y


def _conv_images(x, w, bias, y, residual, activation, stride, dilation, pads, groups: int,
                 by_image: bool, pointwise: bool) -> None:
    """:func:`conv2d_forward` through im2col (or a 1x1 conv's input) and the library's
    GEMMs, for the images of x into y: image by image into NCHW, or over the batch's
    rows."""
    n, c = x.shape[:2]
    o, cg, kh, kw = w.shape
    (sh, sw), (dh, dw), ((pt, _), (pl, _)) = stride, dilation, pads
    ho, wo = y.shape[2:]
    k = cg * kh * kw
    if by_image:  # the library, image by image, into NCHW
        if pointwise:
            cols = x.reshape(n, c, ho * wo)
        else:
            cols = empty((n, k, ho * wo))
            _launch_planes(im2col_images_kernel, n * k, ho * wo, x, cols, kh, kw, sh, sw, dh,
                           dw, pt, pl, wo)
        gemm(w.reshape(o, k), cols, out=y.reshape(n, o, ho * wo))
        if bias is not None or residual is not None or activation is not None:
            _launch_planes(epilogue_kernel, n * o, ho * wo, absent(ndim=2), axis_view(y),
                           *_epilogue_args(bias, residual, activation))
        return
    cols = _im2col(x, kh, kw, stride, dilation, pt, pl, ho, wo)
    rows = empty((o, n * ho * wo))
    og = o // groups
    gemm(w.reshape(groups, og, k), cols.reshape(groups, k, n * ho * wo),
         out=rows.reshape(groups, og, n * ho * wo))
    _launch_planes(epilogue_kernel, n * o, ho * wo, rows, axis_view(y),
                   *_epilogue_args(bias, residual, activation))


def conv2d_backward(x, w, gy, *, stride, dilation, pads, groups=1, input_grad=True):
    """(gx, gw) of a dense or grouped conv from its input and output gradient, one
    batch of per-group GEMMs each: gw = gy_rows @ cols.T, gcols = W.T @ gy_rows, gx =
    col2im(gcols); cols (x's im2col matrix) is built here, for the pass, not kept from the
    forward; in chunks of images whose columns fit WORKSPACE_BYTES, the weight gradient
    summed over them. A 1x1 conv of stride 1 that runs image by image (the rule or
    benchmark mode, ``strategy.py``): gx is W.T @ gy[n] for each image, straight into NCHW
    (no gcols, no col2im). gx is None without ``input_grad`` (a training step's first
    conv: no gcols GEMM, no col2im). A bias's gradient is the op's to add
    (``ops.py``)."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    ho, wo = gy.shape[2:]
    gx = empty((n, c, h, wd)) if input_grad else None

    def run(direct: bool):  # gx filled, gw returned
        gw = None
        for b0, b1 in _chunks(n, c * kh * kw * ho * wo * 4):
            part = _conv_images_backward(x[b0:b1], w, gy[b0:b1],
                                         None if gx is None else gx[b0:b1], stride, dilation,
                                         pads, groups, direct)
            gw = part if gw is None else add(gw, part, out=gw)
        return gw

    # the input gradient of a 1x1 conv of stride 1 can skip gcols and col2im
    can = (input_grad and gy.is_c_contiguous() and _pointwise(x, (kh, kw), stride, pads)
           and groups == 1)
    direct = can and by_image_rule(ho, wo, groups)
    if can and gemm_library()[0] is not None:
        direct = choose(key("backward", x.shape, w.shape, stride, dilation, pads), direct,
                        run)
    gw = run(direct)
    return gx, gw.reshape(w.shape)


def _conv_images_backward(x, w, gy, gx, stride, dilation, pads, groups: int, direct: bool):
    """:func:`conv2d_backward` for the images of x: their input gradient into gx (with
    ``direct``, a 1x1 conv of stride 1's, W.T @ gy[n] straight into NCHW; none where gx is
    None), and their share of the weight gradient (groups, O / groups, K), returned."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    ho, wo = gy.shape[2:]
    (pt, _), (pl, _) = pads
    width = n * ho * wo
    cols = _im2col(x, kh, kw, stride, dilation, pt, pl, ho, wo)
    gy_rows = _rows(gy)
    og, k = o // groups, cg * kh * kw
    wmat, rows = w.reshape(groups, og, k), gy_rows.reshape(groups, og, width)
    gw = empty((groups, og, k))
    gemm(rows, cols.reshape(groups, k, width), trans_b=True, out=gw)
    if gx is None:
        return gw
    if direct:
        gemm(w.reshape(o, c), gy.reshape(n, o, ho * wo), trans_a=True,
             out=gx.reshape(n, c, h * wd))
    else:
        gcols = empty((c * kh * kw, width))
        gemm(wmat, rows, trans_a=True, out=gcols.reshape(groups, k, width))
        _col2im(gcols, gx, kh, kw, stride, dilation, pt, pl, ho, wo)
    return gw


def _im2col(x, kh, kw, stride, dilation, pt, pl, ho, wo):
    """x's im2col matrix (C*kh*kw, N*ho*wo), rows (c, i, j), columns (image, pixel)."""
    (sh, sw), (dh, dw) = stride, dilation
    n, c = x.shape[:2]
    cols = empty((c * kh * kw, n * ho * wo))
    _launch_planes(im2col_kernel, c * kh * kw * n, ho * wo, x, cols, kh, kw, sh, sw, dh, dw,
                   pt, pl, ho, wo)
    return cols


def _col2im(cols, out, kh, kw, stride, dilation, pt, pl, ho, wo) -> None:
    """out (N, C, H, W) = the adjoint of im2col applied to cols (its columns (image,
    pixel) of an ho x wo map)."""
    (sh, sw), (dh, dw) = stride, dilation
    n, c, h, w = out.shape
    _launch_planes(col2im_kernel, n * c, h * w, cols, out, kh, kw, sh, sw, dh, dw, pt, pl,
                   ho, wo)


def _rows(x):
    n, c, h, w = x.shape
    rows = empty((c, n * h * w))
    _launch_planes(nchw_to_rows_kernel, n * c, h * w, axis_view(x), rows)
    return rows


def conv_transpose2d_forward(x, w, bias, *, stride, dilation, padding, out_hw, groups=1):
    """The adjoint of a conv: cols = W_g^T @ x_g's rows, one batch of a GEMM per group
    (into that group's rows of cols), then col2im adds every input pixel's column onto the
    output; the bias after."""
    n, c, h, wd = x.shape
    cin, cout_g, kh, kw = w.shape
    cout = cout_g * groups
    (ph, pw), (ho, wo) = padding, out_hw
    y = result((n, cout, ho, wo))
    cin_g, k, width = cin // groups, cout_g * kh * kw, n * h * wd
    cols = empty((cout * kh * kw, width))
    gemm(w.reshape(groups, cin_g, k), _rows(x).reshape(groups, cin_g, width), trans_a=True,
         out=cols.reshape(groups, k, width))
    _col2im(cols, y, kh, kw, stride, dilation, ph, pw, h, wd)
    if bias is not None:
        _launch_planes(epilogue_kernel, n * cout, ho * wo, absent(ndim=2), axis_view(y),
                       *_epilogue_args(bias, None, None))
    return y


def conv_transpose2d_backward(x, w, gy, *, stride, dilation, padding, groups=1,
                              input_grad=True):
    """(gx, gw): gy's im2col matrix (a conv's input); one batch of a GEMM per group
    each, gx_g = W_g @ its rows and gw_g = x_g's rows @ their transpose. gx is None
    without ``input_grad``."""
    n, c, h, wd = x.shape
    cin, cout_g, kh, kw = w.shape
    ph, pw = padding
    cin_g, k, width = cin // groups, cout_g * kh * kw, n * h * wd
    cols = _im2col(gy, kh, kw, stride, dilation, ph, pw, h, wd)
    parts = cols.reshape(groups, k, width)
    gw = empty((groups, cin_g, k))
    gemm(_rows(x).reshape(groups, cin_g, width), parts, trans_b=True, out=gw)
    gx = None
    if input_grad:
        gx_rows = empty((cin, width))
        gemm(w.reshape(groups, cin_g, k), parts, out=gx_rows.reshape(groups, cin_g, width))
        gx = empty(x.shape)
        _launch_planes(rows_to_nchw_kernel, n * c, h * wd, gx_rows, axis_view(gx))
    return gx, gw.reshape(w.shape)
