"""Batch normalisation on the CPU: one fused pass ``x * scale[c] + shift[c]`` with the
per-channel scale and shift folded from the running statistics (inference) or from the
batch statistics, computed per channel in parallel (training); and the training backward
pass in two sweeps per channel. The reference makes four passes and three temporaries."""

from __future__ import annotations

import numpy as np
from numba import njit, prange, uint64

from runtime.backends.activations import NO_ACTIVATION
from runtime.backends.cpu.elementwise import (
    activate_inplace,
    activation_forward_kernel,
    cpu_activation_code,
    numpy_activation,
    numpy_forward,
)
from runtime.backends.cpu.lowlevel import unit_stride
from runtime.backends.epilogue import activation_of, keep_pre_activation, needs_pre_activation
from runtime.backends.reference import batch_statistics
from runtime.config import PARALLEL


@njit(cache=True)
def _scale_shift_row(x, out, residual, s, t, add, code, slope):
    """out = x * s + t (+ residual where ``add``), then activation ``code``, over rows of
    unit stride (a function of its own: its stride checks inside the prange loop would
    keep that loop serial)."""
    row, out = unit_stride(x), unit_stride(out)
    if add:
        r = unit_stride(residual)
        for i in range(uint64(row.shape[0])):
            out[i] = row[i] * s + t + r[i]
    else:
        for i in range(uint64(row.shape[0])):
            out[i] = row[i] * s + t
    activate_inplace(out, code, slope)


@njit(cache=True, **PARALLEL)
def scale_shift_kernel(x, scale, shift, residual, code, slope):
    """y = x * scale[c] + shift[c], plus ``residual`` (when it is not empty) and activation
    ``code``: each (sample, channel) plane in one pass while it is in cache (the fused
    epilogue of a batch norm)."""
    n, c = x.shape[0], x.shape[1]
    flat = x.reshape(n, c, -1)
    add = residual.size > 0
    res = residual.reshape(n, c, -1) if add else flat
    y = np.empty_like(flat)
    for job in prange(n * c):
        b = job // c
        ch = job % c
        _scale_shift_row(flat[b, ch], y[b, ch], res[b, ch], scale[ch], shift[ch], add, code,
                         slope)
    return y.reshape(x.shape)


def _normalise(op, xs, ctx, scale, shift):
    """The batch norm's affine map per channel with its fused epilogue (residual and
    activation: runtime/backends/epilogue.py), in one pass where it can."""
    x = xs[0]
    scale, shift = scale.astype(x.dtype), shift.astype(x.dtype)
    residual = np.ascontiguousarray(xs[1]) if len(xs) > 1 else x[:0]
    act = activation_of(op)
    if act is None:
        return scale_shift_kernel(x, scale, shift, residual, NO_ACTIVATION, 0.0)
    if needs_pre_activation(act, ctx) or numpy_forward(act[0], x.dtype):
        pre = scale_shift_kernel(x, scale, shift, residual, NO_ACTIVATION, 0.0)
        keep_pre_activation(op, pre, ctx)
        if numpy_forward(act[0], x.dtype):
            return numpy_activation(pre, act)
        return activation_forward_kernel(pre, *cpu_activation_code(*act, x.dtype))
    return scale_shift_kernel(x, scale, shift, residual, *cpu_activation_code(*act, x.dtype))


def batchnorm_forward(op, xs, p, ctx):
    a = op.attrs
    if batch_statistics(a, ctx.train):
        return batchnorm_train_forward(op, xs, p, ctx)
    x = np.ascontiguousarray(xs[0])
    scale = 1.0 / np.sqrt(p["running_var"] + a["eps"])
    shift = -p["running_mean"] * scale
    if a["affine"]:
        scale, shift = scale * p["weight"], shift * p["weight"] + p["bias"]
    return _normalise(op, [x] + list(xs[1:]), ctx, scale, shift)


FLUSH = 4096  # elements summed in the values' dtype (vector lanes of partial sums, each
# a 256th of them at 16 lanes) before they go into a float64 total


@njit(cache=True, error_model="numpy", fastmath={"reassoc", "contract"})
def lane_sums(values, shift, weights):
    """(sum of d, sum of d * d) over ``values`` with d = values - shift, or (sum of
    weights, sum of weights * d) where ``weights`` is not empty (as long as ``values``):
    sums of the values' dtype over FLUSH elements at a time, added into float64 totals.
    ``fastmath`` lets only these block sums be reordered (and multiply-adds fused): LLVM
    then keeps a vector of partial sums, one per lane, where one accumulator in order
    would keep the loop scalar (the same rounding as lanes summed by hand, a fixed order
    of the machine code, so the same result every run)."""
    row = unit_stride(values)
    weighted = weights.shape[0] > 0
    w = unit_stride(weights) if weighted else row
    m = row.shape[0]
    total1 = 0.0
    total2 = 0.0
    for start in range(0, m, FLUSH):
        end = uint64(min(m, start + FLUSH))
        first = values.dtype.type(0.0)
        second = values.dtype.type(0.0)
        if weighted:
            for i in range(uint64(start), end):
                g = w[i]
                first += g
                second += g * (row[i] - shift)
        else:
            for i in range(uint64(start), end):
                d = row[i] - shift
                first += d
                second += d * d
        total1 += first
        total2 += second
    return total1, total2


@njit(cache=True, error_model="numpy")
def _affine_rows(g, x, out, a, b, centre, c):
    """out = a * g + b * (x - centre) + c over 1-D rows of unit stride."""
    g, x, out = unit_stride(g), unit_stride(x), unit_stride(out)
    for i in range(uint64(out.shape[0])):
        out[i] = a * g[i] + b * (x[i] - centre) + c


@njit(cache=True, **PARALLEL)
def batch_stats_kernel(x):
    """Per-channel mean and (biased) variance over (N, H, W) in one pass: sums of x - x0
    and its square (lanes of x's dtype, totals in float64: lane_sums), shifted by the
    channel's first value so that a large mean does not cancel the variance's digits."""
    n, c = x.shape[0], x.shape[1]
    flat = x.reshape(n, c, -1)
    m = flat.shape[2]
    mean = np.empty(c, dtype=np.float64)
    var = np.empty(c, dtype=np.float64)
    none = np.empty(0, dtype=x.dtype)
    for ch in prange(c):
        shift = flat[0, ch, 0]
        s = 0.0
        q = 0.0
        for b in range(n):
            s1, s2 = lane_sums(flat[b, ch], shift, none)
            s += s1
            q += s2
        mu = s / (n * m)
        mean[ch] = shift + mu
        var[ch] = max(q / (n * m) - mu * mu, 0.0)
    return mean, var


@njit(cache=True, error_model="numpy", **PARALLEL)
def batchnorm_backward_kernel(x, gy, mean, invstd, weight):
    """Gradients of batch norm with batch statistics: input, weight, bias. Per channel,
    the sums of gy and gy * (x - mean) (lane_sums), then
    gx = k * (count * gy - sum(gy) - xhat * sum(gy * xhat)) with float32 coefficients on
    x - mean (never x and mean apart: they may nearly cancel)."""
    n, c = x.shape[0], x.shape[1]
    fx, fg = x.reshape(n, c, -1), gy.reshape(n, c, -1)
    m = fx.shape[2]
    count = n * m
    gx = np.empty_like(fx)
    gw = np.empty(c, dtype=np.float64)
    gb = np.empty(c, dtype=np.float64)
    for ch in prange(c):
        centre = x.dtype.type(mean[ch])
        sg = 0.0
        sgd = 0.0
        for b in range(n):
            s1, s2 = lane_sums(fx[b, ch], centre, fg[b, ch])
            sg += s1
            sgd += s2
        # the float32 centre's own offset from the float64 mean, put back exactly
        sgx = (sgd + sg * (np.float64(centre) - mean[ch])) * invstd[ch]
        gw[ch] = sgx
        gb[ch] = sg
        k = weight[ch] * invstd[ch] / count
        a = x.dtype.type(k * count)
        bx = x.dtype.type(-k * sgx * invstd[ch])
        c0 = x.dtype.type(-k * sg)
        for b in range(n):
            _affine_rows(fg[b, ch], fx[b, ch], gx[b, ch], a, bx, centre, c0)
    return gx.reshape(x.shape), gw, gb


@njit(cache=True, **PARALLEL)
def batchnorm_input_grad_kernel(x, gy, mean, invstd, weight, sg, sgx, count):
    """The input gradient of batch norm with batch statistics, given the per-channel sums
    of gy and gy * xhat over the whole batch (other processes' included: synchronised
    batch norm) and that batch's size per channel."""
    n, c = x.shape[0], x.shape[1]
    fx, fg = x.reshape(n, c, -1), gy.reshape(n, c, -1)
    gx = np.empty_like(fx)
    for job in prange(n * c):
        b = job // c
        ch = job % c
        k = weight[ch] * invstd[ch] / count
        for i in range(fx.shape[2]):
            xhat = (fx[b, ch, i] - mean[ch]) * invstd[ch]
            gx[b, ch, i] = k * (count * fg[b, ch, i] - sg[ch] - xhat * sgx[ch])
    return gx.reshape(x.shape)


def batchnorm_train_forward(op, xs, p, ctx):
    a = op.attrs
    x = np.ascontiguousarray(xs[0])
    mean, var = batch_stats_kernel(x)
    count = x.size // x.shape[1]
    sync = ctx.sync_bn
    if sync is not None:  # the statistics of the batch across every process
        count, mean, var = sync.moments(count, mean, var)
    ctx.saved[op.output] = "batch"
    ctx.batch_stats[op.output] = (mean, var, count)  # for backward
    if a["track_running_stats"]:
        m = a["momentum"]
        p["running_mean"][...] = (1 - m) * p["running_mean"] + m * mean
        p["running_var"][...] = (1 - m) * p["running_var"] + m * var * count / max(count - 1, 1)
        p["num_batches_tracked"][...] += 1
    scale = 1.0 / np.sqrt(var + a["eps"])
    shift = -mean * scale
    if a["affine"]:
        scale, shift = scale * p["weight"], shift * p["weight"] + p["bias"]
    return _normalise(op, [x] + list(xs[1:]), ctx, scale, shift)


def batchnorm_backward(op, xs, y, gy, p, ctx):
    a = op.attrs
    x = np.ascontiguousarray(xs[0])
    if ctx.saved.get(op.output) != "batch":  # running statistics: constants
        invstd = 1.0 / np.sqrt(p["running_var"].astype(np.float64) + a["eps"])
        weight = p["weight"].astype(np.float64) if a["affine"] else np.ones_like(invstd)
        gy = np.ascontiguousarray(gy)
        gx = scale_shift_kernel(gy, (weight * invstd).astype(x.dtype),
                                np.zeros(x.shape[1], x.dtype), gy[:0], NO_ACTIVATION, 0.0)
        gw, gb = channel_sums_kernel(x, gy, p["running_mean"].astype(np.float64), invstd)
        grads = {"weight": gw.astype(x.dtype), "bias": gb.astype(x.dtype)} if a["affine"] else {}
        return [gx], grads
    mean, var, count = ctx.batch_stats[op.output]
    invstd = 1.0 / np.sqrt(var + a["eps"])
    weight = p["weight"].astype(np.float64) if a["affine"] else np.ones_like(invstd)
    gy = np.ascontiguousarray(gy)
    sync = ctx.sync_bn
    if sync is None:
        gx, gw, gb = batchnorm_backward_kernel(x, gy, mean, invstd, weight)
    else:  # the input gradient needs the sums over the whole batch, every process's
        gw, gb = channel_sums_kernel(x, gy, mean, invstd)
        sg, sgx = sync.grad_sums(gb, gw)
        gx = batchnorm_input_grad_kernel(x, gy, mean, invstd, weight, sg, sgx, count)
    grads = {"weight": gw.astype(x.dtype), "bias": gb.astype(x.dtype)} if a["affine"] else {}
    return [gx.astype(x.dtype, copy=False)], grads


@njit(cache=True, **PARALLEL)
def channel_sums_kernel(x, gy, center, scale):
    """Per channel: sum of gy * (x - center) * scale, and sum of gy (the weight and bias
    gradients of a per-channel affine map of a normalised x)."""
    n, c = x.shape[0], x.shape[1]
    fx, fg = x.reshape(n, c, -1), gy.reshape(n, c, -1)
    gw = np.empty(c, dtype=np.float64)
    gb = np.empty(c, dtype=np.float64)
    for ch in prange(c):
        sw = 0.0
        sb = 0.0
        for b in range(n):
            for i in range(fx.shape[2]):
                g = fg[b, ch, i]
                sw += g * (fx[b, ch, i] - center[ch]) * scale[ch]
                sb += g
        gw[ch] = sw
        gb[ch] = sb
    return gw, gb


# ------------------------------------------------------------------ layer scale (ConvNeXt)
def layer_scale_forward(op, xs, p, ctx):
    x = np.ascontiguousarray(xs[0])
    w = p["weight"].reshape(-1).astype(x.dtype)
    return scale_shift_kernel(x, w, np.zeros_like(w), x[:0], NO_ACTIVATION, 0.0)


def layer_scale_backward(op, xs, y, gy, p, ctx):
    x, gy = np.ascontiguousarray(xs[0]), np.ascontiguousarray(gy)
    w = p["weight"].reshape(-1).astype(x.dtype)
    zero = np.zeros(x.shape[1], dtype=np.float64)
    gw, _ = channel_sums_kernel(x, gy, zero, np.ones_like(zero))
    return [scale_shift_kernel(gy, w, np.zeros_like(w), gy[:0], NO_ACTIVATION, 0.0)], \
        {"weight": gw.astype(x.dtype).reshape(p["weight"].shape)}


# ------------------------------------------------------------- layer norm over channels
@njit(cache=True, **PARALLEL)
def layernorm_forward_kernel(x, weight, bias, eps, affine):
    """x (N, C, S): every position normalised over the channels; one sample per job, the
    statistics accumulated along contiguous rows. Returns y, the means and 1/std."""
    n, c, s = x.shape
    y = np.empty_like(x)
    mean = np.empty((n, s), dtype=np.float64)
    invstd = np.empty((n, s), dtype=np.float64)
    for b in prange(n):
        acc = np.zeros(s, dtype=np.float64)
        for ch in range(c):
            for q in range(s):
                acc[q] += x[b, ch, q]
        mu = acc / c
        acc[:] = 0.0
        for ch in range(c):
            for q in range(s):
                d = x[b, ch, q] - mu[q]
                acc[q] += d * d
        inv = 1.0 / np.sqrt(acc / c + eps)
        mean[b] = mu
        invstd[b] = inv
        for ch in range(c):
            wt = weight[ch] if affine else 1.0
            bs = bias[ch] if affine else 0.0
            for q in range(s):
                y[b, ch, q] = (x[b, ch, q] - mu[q]) * inv[q] * wt + bs
    return y, mean, invstd


@njit(cache=True, **PARALLEL)
def layernorm_backward_kernel(x, gy, mean, invstd, weight, affine):
    n, c, s = x.shape
    gx = np.empty_like(x)
    for b in prange(n):
        sum_g = np.zeros(s, dtype=np.float64)
        sum_gx = np.zeros(s, dtype=np.float64)
        for ch in range(c):
            wt = weight[ch] if affine else 1.0
            for q in range(s):
                g = gy[b, ch, q] * wt
                sum_g[q] += g
                sum_gx[q] += g * (x[b, ch, q] - mean[b, q]) * invstd[b, q]
        for ch in range(c):
            wt = weight[ch] if affine else 1.0
            for q in range(s):
                xhat = (x[b, ch, q] - mean[b, q]) * invstd[b, q]
                gx[b, ch, q] = invstd[b, q] / c * (c * gy[b, ch, q] * wt - sum_g[q]
                                                   - xhat * sum_gx[q])
    return gx


@njit(cache=True, **PARALLEL)
def layernorm_param_grad_kernel(x, gy, mean, invstd):
    n, c, s = x.shape
    gw = np.zeros(c, dtype=np.float64)
    gb = np.zeros(c, dtype=np.float64)
    for ch in prange(c):
        for b in range(n):
            for q in range(s):
                g = gy[b, ch, q]
                gw[ch] += g * (x[b, ch, q] - mean[b, q]) * invstd[b, q]
                gb[ch] += g
    return gw, gb


def _layernorm_args(op, x, p):
    affine = op.attrs["elementwise_affine"]
    c = x.shape[1]
    weight = p["weight"].astype(np.float64) if affine else np.ones(c)
    bias = p["bias"].astype(np.float64) if affine else np.zeros(c)
    return np.ascontiguousarray(x).reshape(x.shape[0], c, -1), weight, bias, affine


def layernorm_forward(op, xs, p, ctx):
    x3, weight, bias, affine = _layernorm_args(op, xs[0], p)
    y, _, _ = layernorm_forward_kernel(x3, weight, bias, op.attrs["eps"], affine)
    return y.reshape(xs[0].shape)


def layernorm_backward(op, xs, y, gy, p, ctx):
    x3, weight, bias, affine = _layernorm_args(op, xs[0], p)
    _, mean, invstd = layernorm_forward_kernel(x3, weight, bias, op.attrs["eps"], affine)
    gy3 = np.ascontiguousarray(gy).reshape(x3.shape)
    gx = layernorm_backward_kernel(x3, gy3, mean, invstd, weight, affine).reshape(xs[0].shape)
    if not affine:
        return [gx], {}
    gw, gb = layernorm_param_grad_kernel(x3, gy3, mean, invstd)
    return [gx], {"weight": gw.astype(gx.dtype), "bias": gb.astype(gx.dtype)}


# -------------------------------------------------------------- local response norm
@njit(cache=True, **PARALLEL)
def lrn_denominator_kernel(x, size, alpha, k):
    """d[c] = k + alpha / size * sum of x[j]^2 over j in [c - size//2, c + (size-1)//2]."""
    n, c, s = x.shape
    d = np.empty(x.shape, dtype=np.float64)
    for b in prange(n):
        for ch in range(c):
            lo, hi = max(0, ch - size // 2), min(c, ch + (size - 1) // 2 + 1)
            for q in range(s):
                acc = 0.0
                for j in range(lo, hi):
                    acc += x[b, j, q] * x[b, j, q]
                d[b, ch, q] = k + alpha / size * acc
    return d


@njit(cache=True, **PARALLEL)
def lrn_backward_kernel(x, gy, d, size, alpha, beta):
    n, c, s = x.shape
    t = np.empty(x.shape, dtype=np.float64)
    gx = np.empty_like(x)
    for b in prange(n):
        for ch in range(c):
            for q in range(s):
                t[b, ch, q] = gy[b, ch, q] * x[b, ch, q] * d[b, ch, q] ** (-beta - 1.0)
        for ch in range(c):
            lo, hi = max(0, ch - (size - 1) // 2), min(c, ch + size // 2 + 1)
            for q in range(s):
                back = 0.0
                for j in range(lo, hi):
                    back += t[b, j, q]
                gx[b, ch, q] = gy[b, ch, q] * d[b, ch, q] ** (-beta) \
                    - 2.0 * alpha * beta / size * x[b, ch, q] * back
    return gx


def _lrn(op, x):
    a = op.attrs
    x3 = np.ascontiguousarray(x).reshape(x.shape[0], x.shape[1], -1)
    return x3, lrn_denominator_kernel(x3, a["size"], a["alpha"], a["k"])


@njit(cache=True, **PARALLEL)
def lrn_forward_kernel(x, d, beta):
    n, c, s = x.shape
    y = np.empty_like(x)
    for job in prange(n * c):
        b = job // c
        ch = job % c
        for q in range(s):
            y[b, ch, q] = x[b, ch, q] * d[b, ch, q] ** (-beta)
    return y


def lrn_forward(op, xs, p, ctx):
    x3, d = _lrn(op, xs[0])
    return lrn_forward_kernel(x3, d, op.attrs["beta"]).reshape(xs[0].shape)


def lrn_backward(op, xs, y, gy, p, ctx):
    a = op.attrs
    x3, d = _lrn(op, xs[0])
    gy3 = np.ascontiguousarray(gy).reshape(x3.shape)
    return [lrn_backward_kernel(x3, gy3, d, a["size"], a["alpha"], a["beta"]).reshape(
        xs[0].shape)], {}
