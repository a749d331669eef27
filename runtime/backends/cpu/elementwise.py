"""Activations on the CPU: for each activation a scalar function and its derivative,
inlined into a parallel loop over the flattened tensor. The kernel picks the activation
by a small integer code outside the loop, so every loop is branch-free and vectorises
(an earlier kernel that branched on the code inside the loop lost to NumPy everywhere).
runtime/backends/cpu/__init__.py uses these or NumPy's ufuncs per activation and
direction, whichever bench/bench_activations.py measured faster."""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from runtime.config import PARALLEL

CODES = {"relu": 0, "relu6": 1, "leaky_relu": 2, "silu": 3, "sigmoid": 4, "tanh": 5,
         "hardswish": 6, "hardsigmoid": 7, "gelu": 8, "gelu_tanh": 9}

_SQRT_HALF = math.sqrt(0.5)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_TANH_C = math.sqrt(2.0 / math.pi)


@njit(cache=True, inline="always")
def _sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v))


@njit(cache=True, inline="always")
def _hard(v):
    return min(max(v + 3.0, 0.0), 6.0) / 6.0


@njit(cache=True, inline="always")
def _gelu_tanh_inner(v):
    return math.tanh(_TANH_C * (v + 0.044715 * v * v * v))


@njit(cache=True, **PARALLEL)
def activation_forward_kernel(x, code, slope):
    f = x.ravel()
    y = np.empty_like(f)
    n = f.size
    if code == 0:
        for i in prange(n):
            y[i] = max(f[i], 0.0)
    elif code == 1:
        for i in prange(n):
            y[i] = min(max(f[i], 0.0), 6.0)
    elif code == 2:
        for i in prange(n):
            y[i] = f[i] if f[i] > 0 else slope * f[i]
    elif code == 3:
        for i in prange(n):
            y[i] = f[i] * _sigmoid(f[i])
    elif code == 4:
        for i in prange(n):
            y[i] = _sigmoid(f[i])
    elif code == 5:
        for i in prange(n):
            y[i] = math.tanh(f[i])
    elif code == 6:
        for i in prange(n):
            y[i] = f[i] * _hard(f[i])
    elif code == 7:
        for i in prange(n):
            y[i] = _hard(f[i])
    elif code == 8:
        for i in prange(n):
            y[i] = 0.5 * f[i] * (1.0 + math.erf(f[i] * _SQRT_HALF))
    else:
        for i in prange(n):
            y[i] = 0.5 * f[i] * (1.0 + _gelu_tanh_inner(f[i]))
    return y.reshape(x.shape)


@njit(cache=True, **PARALLEL)
def activation_backward_kernel(x, y, gy, code, slope):
    """gx = gy * f'(x), using the forward output y where it gives f' directly."""
    fx, fy, fg = x.ravel(), y.ravel(), gy.ravel()
    gx = np.empty_like(fg)
    n = fg.size
    if code == 0:
        for i in prange(n):
            gx[i] = fg[i] if fx[i] > 0 else 0.0
    elif code == 1:
        for i in prange(n):
            gx[i] = fg[i] if 0 < fx[i] < 6 else 0.0
    elif code == 2:
        for i in prange(n):
            gx[i] = fg[i] if fx[i] > 0 else slope * fg[i]
    elif code == 3:
        for i in prange(n):
            s = _sigmoid(fx[i])
            gx[i] = fg[i] * s * (1.0 + fx[i] * (1.0 - s))
    elif code == 4:
        for i in prange(n):
            gx[i] = fg[i] * fy[i] * (1.0 - fy[i])
    elif code == 5:
        for i in prange(n):
            gx[i] = fg[i] * (1.0 - fy[i] * fy[i])
    elif code == 6:
        for i in prange(n):
            v = fx[i]
            gx[i] = fg[i] * (0.0 if v < -3 else (1.0 if v > 3 else (2.0 * v + 3.0) / 6.0))
    elif code == 7:
        for i in prange(n):
            gx[i] = fg[i] / 6.0 if -3 < fx[i] < 3 else 0.0
    elif code == 8:
        for i in prange(n):
            v = fx[i]
            gx[i] = fg[i] * (0.5 * (1.0 + math.erf(v * _SQRT_HALF))
                             + v * math.exp(-0.5 * v * v) * _INV_SQRT_2PI)
    else:
        for i in prange(n):
            v = fx[i]
            t = _gelu_tanh_inner(v)
            gx[i] = fg[i] * (0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * _TANH_C
                             * (1.0 + 3.0 * 0.044715 * v * v))
    return gx.reshape(gy.shape)


def code_of(op) -> int:
    if op.kind == "gelu" and op.attrs["approximate"] != "none":
        return CODES["gelu_tanh"]
    return CODES[op.kind]


def activation_forward(op, xs, p, ctx):
    x = np.ascontiguousarray(xs[0])
    return activation_forward_kernel(x, code_of(op), op.attrs.get("negative_slope", 0.0))


def activation_backward(op, xs, y, gy, p, ctx):
    slope = op.attrs.get("negative_slope", 0.0)
    return [activation_backward_kernel(np.ascontiguousarray(xs[0]), np.ascontiguousarray(y),
                                       np.ascontiguousarray(gy), code_of(op), slope)], {}
