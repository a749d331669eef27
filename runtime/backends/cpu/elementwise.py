"""Activations on the CPU: each formula of ``runtime/backends/activations.py`` (a scalar
function and its derivative) compiled by Numba and inlined into a loop over a chunk of
the flattened tensor, chunks in parallel. The kernel picks the activation by a small
integer code outside the loop (a chain of compiled links, one per formula), so every
loop is branch-free and vectorises (an earlier kernel that branched on the code inside
the loop lost to NumPy everywhere).
runtime/backends/cpu/__init__.py uses these or NumPy's ufuncs per activation and
direction, whichever bench/bench_activations.py measured faster."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from runtime.backends.activations import (
    FORMULAS,
    NO_ACTIVATION,
    activation_code,
    dispatch_chain,
    reference_derivative,
    reference_forward,
)
from runtime.backends.cpu.lowlevel import unit_stride
from runtime.backends.epilogue import activation_of, keep_pre_activation
from runtime.config import PARALLEL


def _scalar(fn):
    return njit(cache=True, inline="always")(fn)


def _cached_as(fn, name: str):
    """``fn`` compiled with a cache of its own. Numba names cache files after a function's
    qualified name, so the links of one factory would share one index, and two processes
    compiling different links at once would overwrite each other's entries (a test run saw
    a chain lose its hardswish that way); each link is named after its code instead."""
    fn.__qualname__ = name
    # NumPy's error model: a float division by zero gives inf or nan as in NumPy, where
    # Python's raises; the test for it before every division kept the loops scalar
    return njit(cache=True, error_model="numpy")(fn)


def _forward_link(code, f, rest):
    def apply(v, c, a):
        if c == code:
            for i in range(v.size):
                v[i] = f(v[i], a)
        else:
            rest(v, c, a)
    return _cached_as(apply, f"activate_link_{code}")


@njit(cache=True)
def _identity(v, c, a):
    pass


def _backward_link(code, df, rest):
    def apply(x, y, gy, gx, c, a):
        if c == code:
            for i in range(gx.size):
                gx[i] = gy[i] * df(x[i], y[i], a)
        else:
            rest(x, y, gy, gx, c, a)
    return _cached_as(apply, f"derivative_link_{code}")


@njit(cache=True)
def _no_derivative(x, y, gy, gx, c, a):
    gx[:] = gy


# ---- float32 forms without libm calls, for the activations whose exact forms call exp or
# tanh: a libm call per element keeps a loop scalar (llvmlite's wheel has no vector math
# library), so sigmoid, tanh and SiLU ran through NumPy, a pass of their own after the
# conv instead of in its epilogue. tanh as Eigen's rational approximation (odd degree-13
# numerator over even degree-6 denominator on [-7.9, 7.9], where float32 tanh is +-1
# beyond): measured against float64 over [-12, 12], at most 2.6e-7 off (NumPy's float32
# tanh: 6e-8); the sigmoid as 0.5 + 0.5 tanh(x / 2), the reference's own form. Only
# arithmetic, so the loops vectorise; the constants are float32 so they stay float32.
_F = np.float32
_A1, _A3, _A5, _A7 = _F(4.89352455891786e-03), _F(6.37261928875436e-04), \
    _F(1.48572235717979e-05), _F(5.12229709037114e-08)
_A9, _A11, _A13 = _F(-8.60467152213735e-11), _F(2.00018790482477e-13), \
    _F(-2.76076847742355e-16)
_B0, _B2, _B4, _B6 = _F(4.89352518554385e-03), _F(2.26843463243900e-03), \
    _F(1.18534705686654e-04), _F(1.19825839466702e-06)
_CLAMP, _HALF = _F(7.90531110763549805), _F(0.5)


@njit(cache=True, inline="always")
def _tanh32(x):
    x = min(max(x, -_CLAMP), _CLAMP)
    x2 = x * x
    p = x * (_A1 + x2 * (_A3 + x2 * (_A5 + x2 * (_A7 + x2 * (_A9 + x2 * (_A11 + x2 * _A13))))))
    return p / (_B0 + x2 * (_B2 + x2 * (_B4 + x2 * _B6)))


def _fast_tanh(x, a):
    return _tanh32(x)


def _fast_sigmoid(x, a):
    return _HALF + _HALF * _tanh32(_HALF * x)


def _fast_silu(x, a):
    return x * (_HALF + _HALF * _tanh32(_HALF * x))


def _fast_tanh_grad(x, y, a):
    return 1.0 - y * y


def _fast_sigmoid_grad(x, y, a):
    return y * (1.0 - y)


def _fast_silu_grad(x, y, a):
    s = _HALF + _HALF * _tanh32(_HALF * x)
    return s * (1.0 + x * (1.0 - s))


_FAST_FORMS = {"tanh": (_fast_tanh, _fast_tanh_grad),
               "sigmoid": (_fast_sigmoid, _fast_sigmoid_grad),
               "silu": (_fast_silu, _fast_silu_grad)}

FAST32 = {name: len(FORMULAS) + i for i, name in enumerate(_FAST_FORMS)}
"""Activations with a float32 form of their own on the CPU -> its code (past every
formula's code), in both chains."""


def _fast_chain(link, last, which: int):
    chain = last
    for name in reversed(list(_FAST_FORMS)):
        chain = link(FAST32[name], _scalar(_FAST_FORMS[name][which]), chain)
    return chain


_activate_chain = dispatch_chain(_forward_link, _fast_chain(_forward_link, _identity, 0),
                                 lambda f: _scalar(f.forward))


@njit(cache=True)
def activate_inplace(v, code, a):
    """Activation ``code`` over a 1-D array of unit stride, in place (NO_ACTIVATION does
    nothing). Conv and linear kernels call it on their output rows while they are in
    cache: the fused epilogue. The row is retyped as contiguous first: a row of a 2-D
    view has a run-time stride to Numba, and the loop over it did not vectorise."""
    if code != NO_ACTIVATION:
        _activate_chain(unit_stride(v), code, a)

derivative_into = dispatch_chain(_backward_link, _fast_chain(_backward_link, _no_derivative, 1),
                                 lambda f: _scalar(f.derivative))
"""``derivative_into(x, y, gy, gx, code, a)``: ``gx = gy * f'(x)`` over 1-D arrays."""


CHUNK = 16384  # elements per thread job of the element-wise kernels


@njit(cache=True, **PARALLEL)
def activation_forward_kernel(x, code, a):
    y = x.copy().ravel()
    n = y.size
    for job in prange((n + CHUNK - 1) // CHUNK):
        activate_inplace(y[job * CHUNK:min(n, (job + 1) * CHUNK)], code, a)
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


def cpu_activation_code(name: str, attrs: dict, dtype) -> tuple[int, float]:
    """The code of an activation in the CPU's chain for arrays of ``dtype`` (a float32
    form of its own where FAST32 has one), and its number."""
    code, slope = activation_code(name, attrs)
    return (FAST32[name], slope) if dtype == np.float32 and name in FAST32 else (code, slope)


def numpy_forward(name: str, dtype) -> bool:
    """Whether the CPU computes this activation's forward pass with NumPy's formula for
    arrays of ``dtype`` (a pass of its own, not in a conv's epilogue)."""
    return name in NUMPY_FORWARD and not (dtype == np.float32 and name in FAST32)


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
    backward, the value before the activation is kept too (the activation then runs as a
    pass of its own; the fused path is for inference)."""

    def forward(op, xs, p, ctx):
        act = activation_of(op)
        if act is None:
            return core(op, xs, p, ctx, NO_ACTIVATION, 0.0)
        dtype = xs[0].dtype
        code, slope = cpu_activation_code(*act, dtype)
        if ctx.keep:
            pre = core(op, xs, p, ctx, NO_ACTIVATION, 0.0)
            keep_pre_activation(op, pre, ctx)
            if numpy_forward(act[0], dtype):
                return numpy_activation(pre, act)
            return activation_forward_kernel(pre, code, slope)
        if numpy_forward(act[0], dtype):
            return numpy_activation(core(op, xs, p, ctx, NO_ACTIVATION, 0.0), act)
        return core(op, xs, p, ctx, code, slope)

    return forward
