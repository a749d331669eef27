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

from runtime.backends.epilogue import (  # noqa: F401 (CODES: the kernels' codes, re-exported)
    CODES,
    NO_ACTIVATION,
    activation_code,
    activation_of,
    keep_pre_activation,
)
from runtime.config import PARALLEL


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


@njit(cache=True)
def activate_inplace(v, code, slope):
    """Apply activation ``code`` to a 1-D array in place (the branch is taken once, so
    each loop is branch-free and vectorises). Conv and linear kernels call it on their
    output rows while they are in cache: the fused epilogue. NO_ACTIVATION does nothing."""
    n = v.size
    if code == 0:
        for i in range(n):
            v[i] = max(v[i], 0.0)
    elif code == 1:
        for i in range(n):
            v[i] = min(max(v[i], 0.0), 6.0)
    elif code == 2:
        for i in range(n):
            v[i] = v[i] if v[i] > 0 else slope * v[i]
    elif code == 3:
        for i in range(n):
            v[i] = v[i] * _sigmoid(v[i])
    elif code == 4:
        for i in range(n):
            v[i] = _sigmoid(v[i])
    elif code == 5:
        for i in range(n):
            v[i] = math.tanh(v[i])
    elif code == 6:
        for i in range(n):
            v[i] = v[i] * _hard(v[i])
    elif code == 7:
        for i in range(n):
            v[i] = _hard(v[i])
    elif code == 8:
        for i in range(n):
            v[i] = 0.5 * v[i] * (1.0 + math.erf(v[i] * _SQRT_HALF))
    elif code == 9:
        for i in range(n):
            v[i] = 0.5 * v[i] * (1.0 + _gelu_tanh_inner(v[i]))


CHUNK = 16384  # elements per thread job of the element-wise kernels


@njit(cache=True, **PARALLEL)
def activation_forward_kernel(x, code, slope):
    y = x.copy().ravel()
    n = y.size
    for job in prange((n + CHUNK - 1) // CHUNK):
        activate_inplace(y[job * CHUNK:min(n, (job + 1) * CHUNK)], code, slope)
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


def activation_forward(op, xs, p, ctx):
    code, slope = activation_code(op.kind, op.attrs)
    return activation_forward_kernel(np.ascontiguousarray(xs[0]), code, slope)


def activation_grad(name: str, attrs: dict, x, y, gy):
    """gy * f'(x) for activation ``name`` (also the backward of fused epilogues)."""
    code, slope = activation_code(name, attrs)
    return activation_backward_kernel(np.ascontiguousarray(x), np.ascontiguousarray(y),
                                      np.ascontiguousarray(gy), code, slope)


def activation_backward(op, xs, y, gy, p, ctx):
    return [activation_grad(op.kind, op.attrs, xs[0], y, gy)], {}


# Activations whose NumPy forward beats the Numba loop (bench/bench_activations.py: NumPy's
# SIMD tanh against scalar libm calls, 4-36x): a fused layer applies these with NumPy in
# place right after its kernel instead of in the kernel's rows.
NUMPY_FORWARD = ("sigmoid", "tanh", "silu")


def numpy_activation_inplace(y: np.ndarray, name: str) -> np.ndarray:
    if name == "tanh":
        return np.tanh(y, out=y)
    sigmoid = np.tanh(0.5 * y)
    sigmoid += 1.0
    sigmoid *= 0.5
    if name == "sigmoid":
        y[...] = sigmoid
    else:  # silu
        y *= sigmoid
    return y


def fused_forward(core):
    """The forward kernel of a conv or linear op with a fused epilogue, from ``core(op, xs,
    p, code, slope)``, which applies the residual and activation ``code`` in its own loops
    (NUMPY_FORWARD activations right after it, with NumPy). When the pass keeps a tape for
    backward, the value before the activation is kept too (the activation then runs as a
    pass of its own; the fused path is for inference)."""

    def forward(op, xs, p, ctx):
        act = activation_of(op)
        if act is None:
            return core(op, xs, p, NO_ACTIVATION, 0.0)
        code, slope = activation_code(*act)
        if ctx.get("keep"):
            pre = core(op, xs, p, NO_ACTIVATION, 0.0)
            keep_pre_activation(op, pre, ctx)
            if act[0] in NUMPY_FORWARD:
                return numpy_activation_inplace(pre.copy(), act[0])
            return activation_forward_kernel(pre, code, slope)
        if act[0] in NUMPY_FORWARD:
            return numpy_activation_inplace(core(op, xs, p, NO_ACTIVATION, 0.0), act[0])
        return core(op, xs, p, code, slope)

    return forward
