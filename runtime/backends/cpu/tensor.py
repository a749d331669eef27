"""Merges (FractalNet's join too), channel shuffles, softmax and dropout on the CPU, one
parallel pass each.

Element-wise merges broadcast as NumPy does (squeeze-excitation multiplies a map by a
(N, C, 1, 1) gate): operands are viewed as 4-d arrays broadcast to the output's shape
(stride 0 along the broadcast axes), so one kernel serves every case. Dropout draws its
mask from the model's NumPy generator, exactly as the reference backend does (the same
seed gives the same mask on both), and applies it with the multiply kernel.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange, uint64

from runtime.backends.reference import join_weights
from runtime.backends.reference_backward import _unbroadcast
from runtime.backends import lines
from runtime.config import PARALLEL


@njit(cache=True, **PARALLEL)
def combine_kernel(a, b, multiply):
    """a + b or a * b on 4-d arrays of one shape (either may be a broadcast view)."""
    n, c, h, w = a.shape
    y = np.empty((n, c, h, w), dtype=a.dtype)
    for job in prange(n * c):
        i = job // c
        j = job % c
        for r in range(h):
            if multiply:
                for q in range(w):
                    y[i, j, r, q] = a[i, j, r, q] * b[i, j, r, q]
            else:
                for q in range(w):
                    y[i, j, r, q] = a[i, j, r, q] + b[i, j, r, q]
    return y


@njit(cache=True, **PARALLEL)
def scale_planes_kernel(x, gate):
    """y[n, c, :] = x[n, c, :] * gate[n, c] for x (N, C, M) contiguous: a
    squeeze-excitation gate, one vectorised pass (combine_kernel's broadcast view of the
    gate has run-time strides, and its loop stayed scalar)."""
    n, c, m = x.shape
    y = np.empty_like(x)
    for job in prange(n * c):
        b = job // c
        ch = job % c
        g = gate[b, ch]
        src = x[b, ch]
        dest = y[b, ch]
        for i in range(uint64(m)):
            dest[i] = src[i] * g
    return y


@njit(cache=True, **PARALLEL)
def scale_rows_kernel(x, gate):
    """y[n, p, :] = x[n, p, :] * gate[n, :] for x (N, M, C) channels-last: a
    squeeze-excitation gate on a channels-last map; jobs of 8 positions, the arrays indexed
    whole (three views per position cost about as much as its products)."""
    n, m, c = x.shape
    y = np.empty_like(x)
    chunks = (m + 7) // 8
    for job in prange(n * chunks):
        b, p0 = job // chunks, (job % chunks) * 8
        for p in range(uint64(p0), uint64(min(m, p0 + 8))):
            for q in range(uint64(c)):
                y[b, p, q] = x[b, p, q] * gate[b, q]
    return y


def _gated(xs) -> tuple | None:
    """(map, gate) where ``xs`` is a 4-d map times a per-(sample, channel) gate (N, C, 1,
    1), in either order."""
    if len(xs) != 2 or xs[0].ndim != 4 or xs[1].ndim != 4:
        return None
    for x, gate in (xs, xs[::-1]):
        if gate.shape == x.shape[:2] + (1, 1) and x.shape[2] * x.shape[3] > 1:
            return x, gate
    return None


def _as4d(x: np.ndarray, shape: tuple) -> np.ndarray:
    """x broadcast to ``shape``, both padded to 4 axes with trailing ones."""
    pad = (1,) * (4 - len(shape))
    x = x.reshape(x.shape + (1,) * (len(shape) - x.ndim))
    return np.broadcast_to(x.reshape(x.shape + pad), shape + pad)


def _combine(xs, multiply: bool) -> np.ndarray:
    shape = np.broadcast_shapes(*(x.shape for x in xs))
    y = _as4d(xs[0], shape)
    for x in xs[1:]:
        y = combine_kernel(y, _as4d(x, shape), multiply)
    if len(xs) == 1:
        y = np.array(y)
    return y.reshape(shape)


def add_arrays(a, b):
    """a + b where gradients meet (a value read by several ops): two maps of one shape
    and dtype in parallel (NumPy's add runs on one core: 1.1 ms for ResNet-20's 8 MB
    gradients at batch 128), anything else with NumPy."""
    if a.ndim == 4 and a.shape == b.shape and a.dtype == b.dtype:
        return combine_kernel(a, b, False)
    return a + b


def add_forward(op, xs, p, ctx):
    return _combine(xs, multiply=False)


def multiply_forward(op, xs, p, ctx):
    if op.output in ctx.channels_last:  # a map (N, H, W, C) times a gate (N, C, 1, 1)
        x, gate = (xs[0], xs[1]) if op.inputs[0] in ctx.channels_last else (xs[1], xs[0])
        n, c = x.shape[0], x.shape[3]
        return scale_rows_kernel(np.ascontiguousarray(x).reshape(n, -1, c),
                                 np.ascontiguousarray(gate.reshape(n, c))).reshape(x.shape)
    gated = _gated(xs)
    if gated is not None and gated[0].dtype == gated[1].dtype:
        x, gate = gated
        n, c = x.shape[:2]
        return scale_planes_kernel(np.ascontiguousarray(x).reshape(n, c, -1),
                                   np.ascontiguousarray(gate.reshape(n, c))).reshape(x.shape)
    return _combine(xs, multiply=True)


def multiply_backward(op, xs, y, gy, p, ctx):
    grads = []
    for i, x in enumerate(xs):
        others = [gy] + [other for j, other in enumerate(xs) if j != i]
        grads.append(_unbroadcast(_combine(others, multiply=True), x.shape))
    return grads, {}


# ------------------------------------------------------------------------------ join
@njit(cache=True, **PARALLEL)
def weighted_rows_kernel(y, x, w, first):
    """y[n, :] (+)= x[n, :] * w[n] for 2-d (samples, elements) arrays: one input's share of
    a join (``first``: y is written, not added to)."""
    n, m = x.shape
    chunks = (m + 4095) // 4096
    for job in prange(n * chunks):
        b, start = job // chunks, (job % chunks) * 4096
        weight = w[b]
        if first:
            for i in range(uint64(start), uint64(min(m, start + 4096))):
                y[b, i] = x[b, i] * weight
        else:
            for i in range(uint64(start), uint64(min(m, start + 4096))):
                y[b, i] += x[b, i] * weight
    return y


def join_forward(op, xs, p, ctx):
    """The reference draws the weights (same generator, same stream); the sum runs here."""
    weights = join_weights(op, len(xs[0]), ctx).astype(xs[0].dtype)
    ctx.saved[op.output] = weights
    n = len(xs[0])
    y = np.empty((n, xs[0][0].size), dtype=xs[0].dtype)
    for i, x in enumerate(xs):
        weighted_rows_kernel(y, np.ascontiguousarray(x).reshape(n, -1),
                             np.ascontiguousarray(weights[:, i]), i == 0)
    return y.reshape(xs[0].shape)


def join_backward(op, xs, y, gy, p, ctx):
    weights, n = ctx.saved[op.output], len(gy)
    rows = np.ascontiguousarray(gy).reshape(n, -1)
    return [weighted_rows_kernel(np.empty_like(rows), rows,
                                 np.ascontiguousarray(weights[:, i]), True).reshape(gy.shape)
            for i in range(len(xs))], {}


# ---------------------------------------------------------------------- concat, shuffle
@njit(cache=True, **PARALLEL)
def copy_rows_kernel(y, x, offset):
    """y[a, offset + i, :] = x[a, i, :] for 3-d (outer, channels, inner) views."""
    outer, rows = x.shape[0], x.shape[1]
    for job in prange(outer * rows):
        a = job // rows
        i = job % rows
        for k in range(x.shape[2]):
            y[a, offset + i, k] = x[a, i, k]


def _three_axes(shape, dim):
    dim %= len(shape)
    return math.prod(shape[:dim]), shape[dim], math.prod(shape[dim + 1:])


def concat_forward(op, xs, p, ctx):
    dim = op.attrs["dim"] % xs[0].ndim
    shape = list(xs[0].shape)
    shape[dim] = sum(x.shape[dim] for x in xs)
    y = np.empty(shape, dtype=xs[0].dtype)
    y3 = y.reshape(_three_axes(y.shape, dim))
    offset = 0
    for x in xs:
        copy_rows_kernel(y3, np.ascontiguousarray(x).reshape(_three_axes(x.shape, dim)), offset)
        offset += x.shape[dim]
    return y


@njit(cache=True, **PARALLEL)
def shuffle_kernel(x, groups):
    """Channel k = j * groups + i of the output is channel i * (C / groups) + j of x."""
    n, c, s = x.shape
    per = c // groups
    y = np.empty_like(x)
    for job in prange(n * c):
        b = job // c
        k = job % c
        src = (k % groups) * per + k // groups
        for q in range(s):
            y[b, k, q] = x[b, src, q]
    return y


def _shuffle(x, groups):
    x3 = np.ascontiguousarray(x).reshape(x.shape[0], x.shape[1], -1)
    return shuffle_kernel(x3, groups).reshape(x.shape)


def channel_shuffle_forward(op, xs, p, ctx):
    return _shuffle(xs[0], op.attrs["groups"])


def channel_shuffle_backward(op, xs, y, gy, p, ctx):
    return [_shuffle(gy, gy.shape[1] // op.attrs["groups"])], {}


# ----------------------------------------------------------------------------- softmax
_softmax_line = njit(cache=True, inline="always")(lines.softmax_line)
_softmax_grad_line = njit(cache=True, inline="always")(lines.softmax_grad_line)


@njit(cache=True, **PARALLEL)
def softmax_kernel(x):
    """Softmax along the middle axis of (outer, C, inner), a line per job."""
    outer, c, inner = x.shape
    y = np.empty_like(x)
    for job in prange(outer * inner):
        _softmax_line(x, y, job // inner, job % inner)
    return y


@njit(cache=True, **PARALLEL)
def softmax_backward_kernel(y, gy):
    outer, c, inner = y.shape
    gx = np.empty_like(y)
    for job in prange(outer * inner):
        _softmax_grad_line(y, gy, gx, job // inner, job % inner)
    return gx


def softmax_forward(op, xs, p, ctx):
    x = np.ascontiguousarray(xs[0])
    return softmax_kernel(x.reshape(_three_axes(x.shape, op.attrs["dim"]))).reshape(x.shape)


def softmax_backward(op, xs, y, gy, p, ctx):
    axes = _three_axes(y.shape, op.attrs["dim"])
    gx = softmax_backward_kernel(np.ascontiguousarray(y).reshape(axes),
                                 np.ascontiguousarray(gy).reshape(axes))
    return [gx.reshape(y.shape)], {}


# ----------------------------------------------------------------------------- dropout
def dropout_forward(op, xs, p, ctx):
    """The reference draws the mask (same generator, same stream); the multiply runs here."""
    if not ctx.train or op.attrs["p"] == 0:
        return xs[0]
    return _combine([xs[0], _draw_scale(op, xs[0], ctx)], multiply=True)


def _draw_scale(op, x, ctx):
    rate = op.attrs["p"]
    if op.kind == "dropout":
        shape = x.shape
    else:  # stochastic depth: a whole sample (row) or the whole batch at once
        shape = (x.shape[0],) + (1,) * (x.ndim - 1) if op.attrs["mode"] == "row" else (1,) * x.ndim
    keep = ctx.rng.random(shape) >= rate
    scale = (keep / (1 - rate)).astype(x.dtype)
    ctx.saved[op.output] = scale
    return scale


def dropout_backward(op, xs, y, gy, p, ctx):
    scale = ctx.saved.get(op.output)
    return [gy if scale is None else _combine([gy, scale], multiply=True)], {}
