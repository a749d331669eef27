"""Activation gradients on the CPU: one parallel pass over the flattened tensor, the
activation chosen by a small integer code (a kernel takes arrays and scalars only). Used
where it beats NumPy's multi-pass expressions (runtime/backends/cpu/__init__.py); the
forward passes stay NumPy's SIMD ufuncs, which a branching Numba loop does not match."""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from runtime.config import PARALLEL

CODES = {"relu": 0, "relu6": 1, "leaky_relu": 2, "silu": 3, "sigmoid": 4, "tanh": 5,
         "hardswish": 6, "hardsigmoid": 7}


@njit(cache=True, **PARALLEL)
def activation_backward_kernel(x, y, gy, code, slope):
    fx, fy, fg = x.ravel(), y.ravel(), gy.ravel()
    gx = np.empty_like(fg)
    for i in prange(fg.size):
        v = fx[i]
        if code == 0:
            d = 1.0 if v > 0 else 0.0
        elif code == 1:
            d = 1.0 if 0 < v < 6 else 0.0
        elif code == 2:
            d = 1.0 if v > 0 else slope
        elif code == 3:
            s = 0.5 * (1.0 + math.tanh(0.5 * v))
            d = s * (1.0 + v * (1.0 - s))
        elif code == 4:
            d = fy[i] * (1.0 - fy[i])
        elif code == 5:
            d = 1.0 - fy[i] * fy[i]
        elif code == 6:
            d = 0.0 if v < -3 else (1.0 if v > 3 else (2.0 * v + 3.0) / 6.0)
        else:
            d = 1.0 / 6.0 if -3 < v < 3 else 0.0
        gx[i] = fg[i] * d
    return gx.reshape(gy.shape)


def activation_backward(op, xs, y, gy, p, ctx):
    slope = op.attrs.get("negative_slope", 0.0)
    return [activation_backward_kernel(np.ascontiguousarray(xs[0]), np.ascontiguousarray(y),
                                       np.ascontiguousarray(gy), CODES[op.kind], slope)], {}
