"""Activations on the CPU: each formula of ``runtime/backends/activations.py`` (a scalar
function and its derivative) compiled by Numba and inlined into a loop over a chunk of
the flattened tensor, chunks in parallel. The kernel picks the activation by a small
integer code outside the loop (``activation_dispatch.py``, one branch per code, generated
from ``activation_scalars.py``), so every loop is branch-free and vectorises (an earlier
kernel that branched on the code inside the loop lost to NumPy everywhere).
runtime/backends/cpu/__init__.py uses these or NumPy's ufuncs per activation and
direction, whichever bench/bench_activations.py measured faster."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from runtime.backends.activations import (
    NO_ACTIVATION,
    activation_code,
    reference_derivative,
    reference_forward,
)
from runtime.backends.cpu.activation_dispatch import activate, derivative
from runtime.backends.cpu.activation_scalars import FAST32
from runtime.backends.cpu.lowlevel import unit_stride
from runtime.backends.epilogue import activation_of, keep_pre_activation, needs_pre_activation
from runtime.config import PARALLEL


@njit(cache=True)
def activate_inplace(v, code, a):
    """Activation ``code`` over a 1-D array of unit stride, in place (NO_ACTIVATION does
    nothing). Conv and linear kernels call it on their output rows while they are in
    cache: the fused epilogue. The row is retyped as contiguous first: a row of a 2-D
    view has a run-time stride to Numba, and the loop over it did not vectorise."""
    if code != NO_ACTIVATION:
        activate(unit_stride(v), code, a)


derivative_into = derivative
"""``derivative_into(x, y, gy, gx, code, a)``: ``gx = gy * f'(x)`` over 1-D arrays."""


CHUNK = 16384  # elements per thread job of the element-wise kernels


@njit(cache=True, **PARALLEL)
def activation_forward_kernel(x, code, a):
    """y = activation ``code`` of x (contiguous): each job copies its chunk and activates
    it while it is in cache, one pass over memory in parallel (a serial copy first, then
    the activation in place, took 0.95 ms for 8 MB where this takes 0.4)."""
    fx = x.ravel()
    n = fx.size
    y = np.empty_like(fx)
    for job in prange((n + CHUNK - 1) // CHUNK):
        lo, hi = job * CHUNK, min(n, (job + 1) * CHUNK)
        chunk = y[lo:hi]
        chunk[:] = fx[lo:hi]
        activate_inplace(chunk, code, a)
    return y.reshape(x.shape)


@njit(cache=True, **PARALLEL)
def activation_backward_kernel(x, y, gy, code, a):
    """gx = gy * f'(x), using the forward output y where it gives f' directly."""
    fx, fy, fg = x.ravel(), y.ravel(), gy.ravel()
    gx = np.empty_like(fg)
    n = fg.size
    for job in prange((n + CHUNK - 1) // CHUNK):
        lo, hi = job * CHUNK, min(n, (job + 1) * CHUNK)
        derivative_into(fx[lo:hi], fy[lo:hi], fg[lo:hi], gx[lo:hi], code, a)
    return gx.reshape(gy.shape)


def _fast32(name: str, dtype) -> bool:
    """Whether arrays of ``dtype`` get the activation's float32 form (FAST32)."""
    return dtype == np.float32 and name in FAST32


def cpu_activation_code(name: str, attrs: dict, dtype) -> tuple[int, float]:
    """The code of an activation in the CPU's dispatch for arrays of ``dtype`` (a float32
    form of its own where FAST32 has one), and its number."""
    code, slope = activation_code(name, attrs)
    return (FAST32[name], slope) if _fast32(name, dtype) else (code, slope)


def numpy_forward(name: str, dtype) -> bool:
    """Whether the CPU computes this activation's forward pass with NumPy's formula for
    arrays of ``dtype`` (a pass of its own, not in a conv's epilogue)."""
    return name in NUMPY_FORWARD and not _fast32(name, dtype)


def activation_forward(op, xs, p, ctx):
    x = xs[0]
    if numpy_forward(op.kind, x.dtype):
        return reference_forward(op.kind, op.attrs, x)
    code, slope = cpu_activation_code(op.kind, op.attrs, x.dtype)
    return activation_forward_kernel(np.ascontiguousarray(x), code, slope)


def activation_grad(name: str, attrs: dict, x, y, gy):
    """gy * f'(x) for activation ``name`` (also the backward of fused epilogues)."""
    if name in NUMPY_BACKWARD:
        return gy * reference_derivative(name, attrs, x, y).astype(gy.dtype, copy=False)
    code, slope = cpu_activation_code(name, attrs, gy.dtype)
    return activation_backward_kernel(np.ascontiguousarray(x), np.ascontiguousarray(y),
                                      np.ascontiguousarray(gy), code, slope)


def activation_backward(op, xs, y, gy, p, ctx):
    return [activation_grad(op.kind, op.attrs, xs[0], y, gy)], {}


# Activations whose NumPy formula beats the Numba loop (bench/bench_activations.py: NumPy's
# SIMD exp, tanh and log1p against scalar libm calls): forward 2-45x for these (in float32,
# sigmoid, tanh and SiLU run their FAST32 forms in the Numba loops instead); backward
# 1.0-3.6x for softplus and mish over several runs (silu's backward is a wash, 0.9-2.5x,
# and keeps the kernel). Their reference formula runs instead of the kernel (for a fused
# layer, right after the kernel instead of in its rows).
NUMPY_FORWARD = ("sigmoid", "tanh", "silu", "softplus", "mish")
NUMPY_BACKWARD = ("softplus", "mish")


def numpy_activation(y: np.ndarray, act: tuple[str, dict]) -> np.ndarray:
    return reference_forward(act[0], act[1], y)


def fused_forward(core):
    """The forward kernel of a conv or linear op with a fused epilogue, from ``core(op, xs,
    p, code, slope)``, which applies the residual and activation ``code`` in its own loops
    (NUMPY_FORWARD activations right after it, with NumPy). When the pass keeps a tape for
    backward and the activation's derivative needs its input, that value is kept too (the
    activation then runs as a pass of its own); relu's derivative comes from the output,
    so it stays in the kernel's loops in training too."""

    def forward(op, xs, p, ctx):
        act = activation_of(op)
        if act is None:
            return core(op, xs, p, ctx, NO_ACTIVATION, 0.0)
        dtype = xs[0].dtype
        code, slope = ctx.planned(op, ("activation", id(op), dtype),
                                  lambda: cpu_activation_code(*act, dtype))
        if needs_pre_activation(act, ctx):
            pre = core(op, xs, p, ctx, NO_ACTIVATION, 0.0)
            keep_pre_activation(op, pre, ctx)
            if numpy_forward(act[0], dtype):
                return numpy_activation(pre, act)
            return activation_forward_kernel(pre, code, slope)
        if numpy_forward(act[0], dtype):
            return numpy_activation(core(op, xs, p, ctx, NO_ACTIVATION, 0.0), act)
        return core(op, xs, p, ctx, code, slope)

    return forward
