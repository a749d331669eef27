"""Batch normalisation on the CPU: one fused pass ``x * scale[c] + shift[c]`` with the
per-channel scale and shift folded from the running statistics (inference) or from the
batch statistics, computed per channel in parallel (training); and the training backward
pass in two sweeps per channel. The reference makes four passes and three temporaries."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from runtime.backends.reference import KERNELS as REFERENCE
from runtime.backends.reference_backward import BACKWARD as REFERENCE_BACKWARD
from runtime.config import PARALLEL


@njit(cache=True, **PARALLEL)
def scale_shift_kernel(x, scale, shift):
    n, c = x.shape[0], x.shape[1]
    flat = x.reshape(n, c, -1)
    y = np.empty_like(flat)
    for job in prange(n * c):
        b = job // c
        ch = job % c
        s, t = scale[ch], shift[ch]
        for i in range(flat.shape[2]):
            y[b, ch, i] = flat[b, ch, i] * s + t
    return y.reshape(x.shape)


def batchnorm_forward(op, xs, p, ctx):
    a = op.attrs
    if xs[0].ndim != 4:
        return REFERENCE[op.kind](op, xs, p, ctx)
    if ctx["train"] or not a["track_running_stats"]:
        return batchnorm_train_forward(op, xs, p, ctx)
    x = np.ascontiguousarray(xs[0])
    scale = 1.0 / np.sqrt(p["running_var"] + a["eps"])
    shift = -p["running_mean"] * scale
    if a["affine"]:
        scale, shift = scale * p["weight"], shift * p["weight"] + p["bias"]
    return scale_shift_kernel(x, scale.astype(x.dtype), shift.astype(x.dtype))


@njit(cache=True, **PARALLEL)
def batch_stats_kernel(x):
    """Per-channel mean and (biased) variance over (N, H, W), two-pass for accuracy."""
    n, c = x.shape[0], x.shape[1]
    flat = x.reshape(n, c, -1)
    m = flat.shape[2]
    mean = np.empty(c, dtype=np.float64)
    var = np.empty(c, dtype=np.float64)
    for ch in prange(c):
        s = 0.0
        for b in range(n):
            for i in range(m):
                s += flat[b, ch, i]
        mu = s / (n * m)
        q = 0.0
        for b in range(n):
            for i in range(m):
                d = flat[b, ch, i] - mu
                q += d * d
        mean[ch] = mu
        var[ch] = q / (n * m)
    return mean, var


@njit(cache=True, **PARALLEL)
def batchnorm_backward_kernel(x, gy, mean, invstd, weight):
    """Gradients of batch norm with batch statistics: input, weight, bias."""
    n, c = x.shape[0], x.shape[1]
    fx, fg = x.reshape(n, c, -1), gy.reshape(n, c, -1)
    m = fx.shape[2]
    count = n * m
    gx = np.empty_like(fx)
    gw = np.empty(c, dtype=np.float64)
    gb = np.empty(c, dtype=np.float64)
    for ch in prange(c):
        sg = 0.0
        sgx = 0.0
        for b in range(n):
            for i in range(m):
                g = fg[b, ch, i]
                sg += g
                sgx += g * (fx[b, ch, i] - mean[ch]) * invstd[ch]
        gw[ch] = sgx
        gb[ch] = sg
        k = weight[ch] * invstd[ch] / count
        for b in range(n):
            for i in range(m):
                xhat = (fx[b, ch, i] - mean[ch]) * invstd[ch]
                gx[b, ch, i] = k * (count * fg[b, ch, i] - sg - xhat * sgx)
    return gx.reshape(x.shape), gw, gb


def batchnorm_train_forward(op, xs, p, ctx):
    a = op.attrs
    x = np.ascontiguousarray(xs[0])
    mean, var = batch_stats_kernel(x)
    ctx.setdefault("saved", {})[op.output] = "batch"
    if a["track_running_stats"]:
        count = x.size // x.shape[1]
        m = a["momentum"]
        p["running_mean"][...] = (1 - m) * p["running_mean"] + m * mean
        p["running_var"][...] = (1 - m) * p["running_var"] + m * var * count / max(count - 1, 1)
        p["num_batches_tracked"][...] += 1
    scale = 1.0 / np.sqrt(var + a["eps"])
    shift = -mean * scale
    if a["affine"]:
        scale, shift = scale * p["weight"], shift * p["weight"] + p["bias"]
    return scale_shift_kernel(x, scale.astype(x.dtype), shift.astype(x.dtype))


def batchnorm_backward(op, xs, y, gy, p, ctx):
    a = op.attrs
    if ctx.get("saved", {}).get(op.output) != "batch":
        return REFERENCE_BACKWARD[op.kind](op, xs, y, gy, p, ctx)  # inference: one multiply
    x = np.ascontiguousarray(xs[0])
    mean, var = batch_stats_kernel(x)
    invstd = 1.0 / np.sqrt(var + a["eps"])
    weight = p["weight"].astype(np.float64) if a["affine"] else np.ones_like(invstd)
    gx, gw, gb = batchnorm_backward_kernel(x, np.ascontiguousarray(gy), mean, invstd, weight)
    grads = {"weight": gw.astype(x.dtype), "bias": gb.astype(x.dtype)} if a["affine"] else {}
    return [gx.astype(x.dtype)], grads
