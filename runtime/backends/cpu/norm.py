"""Batch normalisation on the CPU in inference: one fused pass ``x * scale[c] + shift[c]``
with the per-channel scale and shift folded from the running statistics (the reference
makes four passes and three temporaries). Training mode uses the reference kernels."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from runtime.backends.reference import KERNELS as REFERENCE
from runtime.config import PARALLEL


@njit(**PARALLEL)
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
    if ctx["train"] or not a["track_running_stats"]:
        return REFERENCE[op.kind](op, xs, p, ctx)
    x = np.ascontiguousarray(xs[0])
    scale = 1.0 / np.sqrt(p["running_var"] + a["eps"])
    shift = -p["running_mean"] * scale
    if a["affine"]:
        scale, shift = scale * p["weight"], shift * p["weight"] + p["bias"]
    return scale_shift_kernel(x, scale.astype(x.dtype), shift.astype(x.dtype))
