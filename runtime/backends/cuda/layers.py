"""CUDA kernels for pooling and batch normalisation (inference), with their launches.

- max/avg pooling: one thread per output element walks its window (cells outside the
  input are -inf for max, zero for average; the average's divisor counts the declared
  padding when ``count_include_pad``, as PyTorch); the backward passes scatter with
  atomic adds (windows overlap when the stride is below the kernel size). Max pooling
  records each maximum's position (row * W + column, -1 for a window wholly in the
  padding) as PyTorch does, for its backward and for max-unpooling.
- global average pooling: a shared-memory tree reduction per (sample, channel) plane.
- depthwise conv (one filter per channel, or ``mult`` per channel): one thread per output
  element, bias, residual and activation in the same thread (the fused epilogue); the input
  gradient gathered per input pixel (no atomics), the filter gradient reduced per tap.
- batch norm: ``(x - mean) / sqrt(var + eps) * weight + bias`` with the given statistics
  (running, or the batch's in training), plus the residual and then the activation a
  fused batch norm carries, in one pass (a plane kernel: 1/std once per channel and
  image); its backward with running statistics reduces ``gy`` and ``gy * x_hat`` per
  channel.
"""

from __future__ import annotations

import math

import numpy as np
from numba import float64

from runtime.backends.cuda.kernels import (
    ELEMENTWISE_BLOCK,
    _codes,
    _launch,
    _launch_planes,
    activate,
    block_sum,
    absent,
    axis_view,
    channel_sums,
    chunk_bounds,
    chunk_step,
    chunk_walk,
    cuda,
    reduction_chunks,
    row_sum,
    empty,
    plane_range,
    result,
    zeros,
)


@cuda.jit(cache=True)
def max_pool_kernel(x, y, idx, kh, kw, sh, sw, dh, dw, top, left):
    n, c, h, w = x.shape
    ho, wo = y.shape[2], y.shape[3]
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, y.size, stride):
        b, ch, oy, ox = e // (c * ho * wo), (e // (ho * wo)) % c, (e // wo) % ho, e % wo
        best, where = -math.inf, -1
        for i in range(kh):
            r = oy * sh - top + i * dh
            if r < 0 or r >= h:
                continue
            for j in range(kw):
                q = ox * sw - left + j * dw
                if 0 <= q < w and (where < 0 or x[b, ch, r, q] > best):
                    best, where = x[b, ch, r, q], r * w + q
        y[b, ch, oy, ox] = best
        idx[b, ch, oy, ox] = where


@cuda.jit(cache=True)
def max_pool_backward_kernel(gy, idx, gx):
    n, c, ho, wo = gy.shape
    w = gx.shape[3]
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, gy.size, stride):
        b, ch, oy, ox = e // (c * ho * wo), (e // (ho * wo)) % c, (e // wo) % ho, e % wo
        where = idx[b, ch, oy, ox]
        if where >= 0:
            cuda.atomic.add(gx, (b, ch, where // w, where % w), gy[b, ch, oy, ox])


@cuda.jit(device=True, inline=True)
def _divisor(oy, ox, kh, kw, sh, sw, top, left, h, w, pt, pl, include_pad):
    """Cells of the window at (oy, ox) that count: inside the input, or inside the declared
    padding too when ``include_pad`` (the extra rows ceil_mode adds never count)."""
    lo_r, hi_r = (-pt, h + pt) if include_pad else (0, h)
    lo_c, hi_c = (-pl, w + pl) if include_pad else (0, w)
    r0, c0 = oy * sh - top, ox * sw - left
    rows = min(r0 + kh, hi_r) - max(r0, lo_r)
    cols = min(c0 + kw, hi_c) - max(c0, lo_c)
    return max(rows, 0) * max(cols, 0)


@cuda.jit(cache=True)
def avg_pool_kernel(x, y, kh, kw, sh, sw, top, left, pt, pl, include_pad):
    n, c, h, w = x.shape
    ho, wo = y.shape[2], y.shape[3]
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, y.size, stride):
        b, ch, oy, ox = e // (c * ho * wo), (e // (ho * wo)) % c, (e // wo) % ho, e % wo
        total = 0.0
        for i in range(kh):
            r = oy * sh - top + i
            if 0 <= r < h:
                for j in range(kw):
                    q = ox * sw - left + j
                    if 0 <= q < w:
                        total += x[b, ch, r, q]
        y[b, ch, oy, ox] = total / _divisor(oy, ox, kh, kw, sh, sw, top, left, h, w, pt, pl,
                                            include_pad)


@cuda.jit(cache=True)
def avg_pool_backward_kernel(gy, gx, kh, kw, sh, sw, top, left, pt, pl, include_pad):
    n, c, h, w = gx.shape
    ho, wo = gy.shape[2], gy.shape[3]
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, gy.size, stride):
        b, ch, oy, ox = e // (c * ho * wo), (e // (ho * wo)) % c, (e // wo) % ho, e % wo
        g = gy[b, ch, oy, ox] / _divisor(oy, ox, kh, kw, sh, sw, top, left, h, w, pt, pl,
                                         include_pad)
        for i in range(kh):
            r = oy * sh - top + i
            if 0 <= r < h:
                for j in range(kw):
                    q = ox * sw - left + j
                    if 0 <= q < w:
                        cuda.atomic.add(gx, (b, ch, r, q), g)


@cuda.jit(cache=True)
def broadcast_plane_kernel(g, gx, scale):
    """gx[n, c, :, :] = g[n * C + c] * scale (the global average pool's backward)."""
    start, stride = cuda.grid(1), cuda.gridsize(1)
    c, w = gx.shape[1], gx.shape[3]
    plane = gx.shape[2] * w
    for e in range(start, gx.size, stride):  # (no reshape in here: it keeps the kernel
        nc, p = e // plane, e % plane       # from the on-disk cache on a real GPU)
        gx[nc // c, nc % c, p // w, p % w] = g[nc] * scale


@cuda.jit(cache=True)
def batchnorm_kernel(x, y, mean, var, weight, bias, residual, code, slope, eps):
    """y = activation(batch norm of x + residual) over (N, C, H*W) views, with the given
    statistics: a plane kernel, each channel's 1/std worked out once per plane. Empty
    weight and bias: not affine; an empty residual: none."""
    n, c, hw = x.shape
    first, step, plane0, planes = plane_range()
    for plane in range(plane0, n * c, planes):
        b, ch = plane // c, plane % c
        inv, mu = 1.0 / math.sqrt(var[ch] + eps), mean[ch]
        scale = weight[ch] * inv if weight.size else inv
        shift = bias[ch] if bias.size else 0.0
        for p in range(first, hw, step):
            v = (x[b, ch, p] - mu) * scale + shift
            if residual.size:
                v += residual[b, ch, p]
            y[b, ch, p] = activate(v, code, slope)


@cuda.jit(cache=True)
def batchnorm_grad_partials_kernel(x, gy, mean, var, weight, eps, p0, p1, gx):
    """Grid (C, chunks): the float64 partial sums, over block k's slice of channel ch of
    (N, C, M) views, of gy (the bias gradient's) and gy * x_hat (the weight gradient's)
    into p0[ch, k] and p1[ch, k]; with running statistics (``gx`` not empty) also
    gx = gy * weight / std, which needs no sum."""
    n, c, m = x.shape
    ch, k, t = cuda.blockIdx.x, cuda.blockIdx.y, cuda.threadIdx.x
    bias_sums = cuda.shared.array(ELEMENTWISE_BLOCK, float64)  # float64 sums, as the CPU's
    weight_sums = cuda.shared.array(ELEMENTWISE_BLOCK, float64)
    lo, hi = chunk_bounds(n * m, k, p0.shape[1])
    inv = 1.0 / math.sqrt(var[ch] + eps)
    scale = inv * (weight[ch] if weight.size else 1.0)
    mu = mean[ch]
    s0, s1 = float64(0.0), float64(0.0)
    b, p, step_b, step_p = chunk_walk(lo, t, m)
    for _ in range(lo + t, hi, ELEMENTWISE_BLOCK):
        g = gy[b, ch, p]
        if gx.size:
            gx[b, ch, p] = g * scale
        s0 += g
        s1 += g * (x[b, ch, p] - mu) * inv
        b, p = chunk_step(b, p, step_b, step_p, m)
    s0 = block_sum(bias_sums, t, s0)
    s1 = block_sum(weight_sums, t, s1)
    if t == 0:
        p0[ch, k], p1[ch, k] = s0, s1


@cuda.jit(cache=True)
def batchnorm_grad_finish_kernel(p0, p1, g_bias, g_weight, s0, s1):
    """Per channel: the bias and weight gradients from their partial sums, and (s0 and s1
    not empty) the float64 sums themselves, for the gradient of the input."""
    for ch in range(cuda.grid(1), g_bias.size, cuda.gridsize(1)):
        b, w = row_sum(p0, ch), row_sum(p1, ch)
        g_bias[ch], g_weight[ch] = b, w
        if s0.size:
            s0[ch], s1[ch] = b, w


def batchnorm_grad_sums(view, gy_view, mean, var, weight, eps: float, gx=None,
                        keep: bool = False):
    """(g_weight, g_bias, s0, s1): batch norm's parameter gradients, from the channel sums
    of gy and gy * x_hat split among blocks per channel, and with ``keep`` the sums in
    float64 (else None); with ``gx``, gx = gy * weight / std is written on the way (the
    backward pass with running statistics)."""
    n, c, m = view.shape
    chunks = reduction_chunks(c, n * m)
    p0, p1 = empty((c, chunks), np.float64), empty((c, chunks), np.float64)
    batchnorm_grad_partials_kernel[(c, chunks), ELEMENTWISE_BLOCK](
        view, gy_view, mean, var, absent() if weight is None else weight, eps, p0, p1,
        absent().reshape(0, 0, 0) if gx is None else gx)
    g_weight, g_bias = empty(c), empty(c)
    s0, s1 = (empty(c, np.float64), empty(c, np.float64)) if keep else (None, None)
    _launch(batchnorm_grad_finish_kernel, c, p0, p1, g_bias, g_weight,
            absent(np.float64) if s0 is None else s0, absent(np.float64) if s1 is None else s1)
    return g_weight, g_bias, s0, s1


@cuda.jit(cache=True)
def depthwise_kernel(x, w, bias, residual, y, sh, sw, dh, dw, pt, pl, code, slope):
    n, c, h, wd = x.shape
    o, ho, wo = y.shape[1], y.shape[2], y.shape[3]
    kh, kw = w.shape[2], w.shape[3]
    mult = o // c
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, y.size, stride):
        b, oc, oy, ox = e // (o * ho * wo), (e // (ho * wo)) % o, (e // wo) % ho, e % wo
        ch = oc // mult
        total = bias[oc] if bias.size else 0.0
        for i in range(kh):
            r = oy * sh - pt + i * dh
            if 0 <= r < h:
                for j in range(kw):
                    q = ox * sw - pl + j * dw
                    if 0 <= q < wd:
                        total += x[b, ch, r, q] * w[oc, 0, i, j]
        if residual.size:
            total += residual[b, oc, oy, ox]
        y[b, oc, oy, ox] = activate(total, code, slope)


@cuda.jit(cache=True)
def depthwise_input_grad_kernel(gy, w, gx, sh, sw, dh, dw, pt, pl):
    n, c, h, wd = gx.shape
    o, ho, wo = gy.shape[1], gy.shape[2], gy.shape[3]
    kh, kw = w.shape[2], w.shape[3]
    mult = o // c
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, gx.size, stride):
        b, ch, r, q = e // (c * h * wd), (e // (h * wd)) % c, (e // wd) % h, e % wd
        total = 0.0
        for m in range(mult):
            oc = ch * mult + m
            for i in range(kh):
                ty = r + pt - i * dh
                if ty < 0 or ty % sh != 0 or ty // sh >= ho:
                    continue
                for j in range(kw):
                    tx = q + pl - j * dw
                    if tx < 0 or tx % sw != 0 or tx // sw >= wo:
                        continue
                    total += gy[b, oc, ty // sh, tx // sw] * w[oc, 0, i, j]
        gx[b, ch, r, q] = total


@cuda.jit(cache=True)
def depthwise_filter_grad_kernel(x, gy, gw, sh, sw, dh, dw, pt, pl):
    """One block per filter tap (o, i, j): the sum over samples and output pixels."""
    n, c, h, wd = x.shape
    o, ho, wo = gy.shape[1], gy.shape[2], gy.shape[3]
    kh, kw = gw.shape[2], gw.shape[3]
    tap, t = cuda.blockIdx.x, cuda.threadIdx.x
    oc, i, j = tap // (kh * kw), (tap // kw) % kh, tap % kw
    ch = oc // (o // c)
    partial = cuda.shared.array(ELEMENTWISE_BLOCK, float64)  # sums that cancel: float64
    total = float64(0.0)
    for e in range(t, n * ho * wo, ELEMENTWISE_BLOCK):
        b, oy, ox = e // (ho * wo), (e // wo) % ho, e % wo
        r, q = oy * sh - pt + i * dh, ox * sw - pl + j * dw
        if 0 <= r < h and 0 <= q < wd:
            total += gy[b, oc, oy, ox] * x[b, ch, r, q]
    total = block_sum(partial, t, total)
    if t == 0:
        gw[oc, 0, i, j] = total


# --------------------------------------------------------------------------- launches
def depthwise(x, w, bias, *, stride, dilation, pads, out_hw, activation=None, residual=None):
    """A depthwise conv with the epilogue act(conv + bias + residual) in its kernel."""
    n = x.shape[0]
    o = w.shape[0]
    (sh, sw), (dh, dw), ((pt, _), (pl, _)) = stride, dilation, pads
    y = result((n, o) + tuple(out_hw))
    code, slope = _codes(activation)
    _launch(depthwise_kernel, y.size, x, w, absent() if bias is None else bias,
            absent(ndim=4) if residual is None else residual, y, sh, sw, dh, dw, pt, pl, code,
            slope)
    return y


def depthwise_backward(x, w, gy, *, stride, dilation, pads, input_grad=True):
    """(gx, gw) of a depthwise conv; gx None without ``input_grad``."""
    (sh, sw), (dh, dw), ((pt, _), (pl, _)) = stride, dilation, pads
    gx = None
    if input_grad:
        gx = empty(x.shape)
        _launch(depthwise_input_grad_kernel, gx.size, gy, w, gx, sh, sw, dh, dw, pt, pl)
    gw = empty(w.shape)
    depthwise_filter_grad_kernel[w.size, ELEMENTWISE_BLOCK](x, gy, gw, sh, sw, dh, dw, pt, pl)
    return gx, gw


def max_pool(x, kernel, stride, dilation, top, left, out_hw):
    n, c = x.shape[:2]
    y = result((n, c) + tuple(out_hw))
    idx = cuda.device_array((n, c) + tuple(out_hw), dtype=np.int64)
    _launch(max_pool_kernel, y.size, x, y, idx, *kernel, *stride, *dilation, top, left)
    return y, idx


def max_pool_backward(gy, idx, x_shape):
    gx = zeros(x_shape)
    _launch(max_pool_backward_kernel, gy.size, gy, idx, gx)
    return gx


def avg_pool(x, kernel, stride, top, left, padding, include_pad, out_hw):
    n, c = x.shape[:2]
    y = result((n, c) + tuple(out_hw))
    _launch(avg_pool_kernel, y.size, x, y, *kernel, *stride, top, left, *padding, include_pad)
    return y


def avg_pool_backward(gy, x_shape, kernel, stride, top, left, padding, include_pad):
    gx = zeros(x_shape)
    _launch(avg_pool_backward_kernel, gy.size, gy, gx, *kernel, *stride, top, left, *padding,
            include_pad)
    return gx


def global_avg_pool(x):
    n, c, h, w = x.shape
    sums = channel_sums(x.reshape(1, n * c, h * w))
    return _scaled(sums, 1.0 / (h * w)).reshape(n, c, 1, 1)


def global_avg_pool_backward(gy, x_shape):
    gx = empty(x_shape)
    n, c, h, w = x_shape
    _launch(broadcast_plane_kernel, gx.size, gy.reshape(n * c), gx, 1.0 / (h * w))
    return gx


@cuda.jit(cache=True)
def _scale_kernel(a, out, scale):
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for e in range(start, a.size, stride):
        out[e] = a[e] * scale


def _scaled(a, scale: float):
    out = result(a.size)
    _launch(_scale_kernel, a.size, a, out, scale)
    return out


def batchnorm(x, mean, var, weight, bias, eps: float, activation=None, residual=None):
    """activation(batch norm of x with these statistics + residual), in one pass."""
    view = axis_view(x)
    n, c, hw = view.shape
    y = result(view.shape)
    _launch_planes(batchnorm_kernel, n * c, hw, view, y, mean, var,
                   absent() if weight is None else weight, absent() if bias is None else bias,
                   absent(ndim=3) if residual is None else axis_view(residual),
                   *_codes(activation), eps)
    return y.reshape(x.shape)


def batchnorm_backward(x, gy, mean, var, weight, eps: float):
    """(gx, g_weight, g_bias) with running statistics (inference-mode batch norm)."""
    shape = axis_view(x).shape
    gx = empty(shape)
    g_weight, g_bias, _, _ = batchnorm_grad_sums(x.reshape(shape), gy.reshape(shape), mean,
                                                 var, weight, eps, gx)
    return gx.reshape(x.shape), g_weight, g_bias


# --------------------------------------------------------------------------- layer norm
@cuda.jit(device=True, inline=True)
def _channel_moments(x, b, p, eps):
    """(mean, 1 / sqrt(var + eps)) of x[b, :, p] over the channels, in two sweeps."""
    c = x.shape[1]
    mu = 0.0
    for ch in range(c):
        mu += x[b, ch, p]
    mu /= c
    var = 0.0
    for ch in range(c):
        d = x[b, ch, p] - mu
        var += d * d
    return mu, 1.0 / math.sqrt(var / c + eps)


@cuda.jit(cache=True)
def layernorm_kernel(x, y, weight, bias, eps):
    """Normalise over the channels of (N, C, HW) at every (sample, position): one thread
    each walks its C values (mean, then the mean squared deviation); empty weight/bias:
    no affine."""
    n, c, hw = x.shape
    for e in range(cuda.grid(1), n * hw, cuda.gridsize(1)):
        b, p = e // hw, e % hw
        mu, inv = _channel_moments(x, b, p, eps)
        for ch in range(c):
            v = (x[b, ch, p] - mu) * inv
            y[b, ch, p] = v * weight[ch] + bias[ch] if weight.size else v


@cuda.jit(cache=True)
def layernorm_backward_kernel(x, gy, weight, eps, gx, gy_xhat):
    """gx = inv * (g - mean(g) - x_hat * mean(g * x_hat)) with g = gy * weight, per
    (sample, position); gy_xhat = gy * x_hat, which the weight gradient sums."""
    n, c, hw = x.shape
    for e in range(cuda.grid(1), n * hw, cuda.gridsize(1)):
        b, p = e // hw, e % hw
        mu, inv = _channel_moments(x, b, p, eps)
        mean_g, mean_gx = 0.0, 0.0
        for ch in range(c):
            xhat = (x[b, ch, p] - mu) * inv
            g = gy[b, ch, p] * (weight[ch] if weight.size else 1.0)
            mean_g += g
            mean_gx += g * xhat
            gy_xhat[b, ch, p] = gy[b, ch, p] * xhat
        mean_g /= c
        mean_gx /= c
        for ch in range(c):
            xhat = (x[b, ch, p] - mu) * inv
            g = gy[b, ch, p] * (weight[ch] if weight.size else 1.0)
            gx[b, ch, p] = inv * (g - mean_g - xhat * mean_gx)


def layernorm(x, weight, bias, eps: float):
    view = axis_view(x)
    y = result(view.shape)
    _launch(layernorm_kernel, view.shape[0] * view.shape[2], view, y,
            absent() if weight is None else weight, absent() if bias is None else bias, eps)
    return y.reshape(x.shape)


def layernorm_backward(x, gy, weight, eps: float):
    """(gx, g_weight, g_bias)."""
    view = axis_view(x)
    gx = empty(view.shape)
    gy_xhat = empty(view.shape)
    _launch(layernorm_backward_kernel, view.shape[0] * view.shape[2], view, axis_view(gy),
            absent() if weight is None else weight, eps, gx, gy_xhat)
    return gx.reshape(x.shape), channel_sums(gy_xhat), channel_sums(axis_view(gy))


# --------------------------------------------------------------------------- LRN
@cuda.jit(device=True, inline=True)
def _lrn_denominator(x, b, ch, p, size, alpha, k):
    """k + alpha / size * the sum of squares over channels ch - size//2 .. ch + (size-1)//2."""
    c = x.shape[1]
    total = 0.0
    for j in range(max(ch - size // 2, 0), min(ch + (size - 1) // 2 + 1, c)):
        total += x[b, j, p] * x[b, j, p]
    return k + alpha / size * total


@cuda.jit(cache=True)
def lrn_kernel(x, y, size, alpha, beta, k):
    n, c, hw = x.shape
    for e in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        b, ch, p = e // (c * hw), (e // hw) % c, e % hw
        y[b, ch, p] = x[b, ch, p] * _lrn_denominator(x, b, ch, p, size, alpha, k) ** -beta


@cuda.jit(cache=True)
def lrn_backward_kernel(x, gy, gx, size, alpha, beta, k):
    """gx_c = gy_c d_c^-beta - 2 alpha beta / size x_c sum_j gy_j x_j d_j^(-beta-1) over
    the channels j whose window holds c."""
    n, c, hw = x.shape
    for e in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        b, ch, p = e // (c * hw), (e // hw) % c, e % hw
        total = 0.0
        for j in range(max(ch - (size - 1) // 2, 0), min(ch + size // 2 + 1, c)):
            d = _lrn_denominator(x, b, j, p, size, alpha, k)
            total += gy[b, j, p] * x[b, j, p] * d ** (-beta - 1.0)
        d = _lrn_denominator(x, b, ch, p, size, alpha, k)
        gx[b, ch, p] = gy[b, ch, p] * d ** -beta - 2.0 * alpha * beta / size * x[b, ch, p] * total


def lrn(x, size: int, alpha: float, beta: float, k: float):
    y = result(x.shape)
    _launch(lrn_kernel, x.size, axis_view(x), axis_view(y), size, alpha, beta, k)
    return y


def lrn_backward(x, gy, size: int, alpha: float, beta: float, k: float):
    gx = empty(x.shape)
    _launch(lrn_backward_kernel, x.size, axis_view(x), axis_view(gy), axis_view(gx), size, alpha,
            beta, k)
    return gx
