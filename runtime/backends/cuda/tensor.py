"""CUDA kernels that move or combine whole tensors, with their launches: broadcasting
multiply (squeeze-excitation's gate, stochastic depth's per-sample scale) and the
reduction of a broadcast gradient back to an operand's shape, channel concatenation and
its split, channel shuffle, and the softmax over channels.

Shapes are NumPy's broadcasting: operands are aligned at their last axes and padded to
four axes with leading ones; an operand's stride along an axis it broadcasts is 0.
"""

from __future__ import annotations

import math

import numpy as np
from numba import float32

from runtime.backends.cuda.kernels import ELEMENTWISE_BLOCK, _launch, block_sum, cuda, empty

RANK = 4


def _padded(shape) -> tuple[int, ...]:
    if len(shape) > RANK:
        raise ValueError(f"the CUDA tensor kernels take up to {RANK} axes, got {shape}")
    return (1,) * (RANK - len(shape)) + tuple(shape)


def _strides(shape, out_shape) -> tuple[int, ...]:
    """Element strides of a contiguous array of ``shape`` read at ``out_shape``'s
    indices (0 along the axes it broadcasts)."""
    shape, strides, step = _padded(shape), [0] * RANK, 1
    for axis in reversed(range(RANK)):
        strides[axis] = step if shape[axis] == out_shape[axis] else 0
        step *= shape[axis]
    return tuple(strides)


def broadcast_shape(a_shape, b_shape) -> tuple[int, ...]:
    return tuple(np.broadcast_shapes(tuple(a_shape), tuple(b_shape)))


@cuda.jit(device=True, inline=True)
def _offset(e, dims, strides):
    """The element offset, with ``strides``, of the e-th element of a C-ordered array of
    ``dims`` (4 axes)."""
    i3 = e % dims[3]
    r = e // dims[3]
    i2 = r % dims[2]
    r //= dims[2]
    i1 = r % dims[1]
    i0 = r // dims[1]
    return i0 * strides[0] + i1 * strides[1] + i2 * strides[2] + i3 * strides[3]


@cuda.jit(cache=True)
def multiply_kernel(a, b, out, dims, a_strides, b_strides):
    for e in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        out[e] = a[_offset(e, dims, a_strides)] * b[_offset(e, dims, b_strides)]


@cuda.jit(cache=True)
def reduce_kernel(src, dst, kept_dims, reduced_dims, kept_strides, reduced_strides):
    """dst[k] = the sum of src over the broadcast axes: one block per element k of dst;
    ``kept_*``/``reduced_*`` split src's axes (dims 1 where an axis is in the other)."""
    k, t = cuda.blockIdx.x, cuda.threadIdx.x
    partial = cuda.shared.array(ELEMENTWISE_BLOCK, float32)
    base = _offset(k, kept_dims, kept_strides)
    count = reduced_dims[0] * reduced_dims[1] * reduced_dims[2] * reduced_dims[3]
    total = 0.0
    for j in range(t, count, ELEMENTWISE_BLOCK):
        total += src[base + _offset(j, reduced_dims, reduced_strides)]
    total = block_sum(partial, t, total)
    if t == 0:
        dst[k] = total


def multiply(a, b):
    """a * b with broadcasting, on the device."""
    shape = broadcast_shape(a.shape, b.shape)
    dims = _padded(shape)
    out = empty(math.prod(shape))
    _launch(multiply_kernel, out.size, a.reshape(a.size), b.reshape(b.size), out, dims,
            _strides(a.shape, dims), _strides(b.shape, dims))
    return out.reshape(shape)


def reduce_to(src, shape):
    """Sum ``src`` over the axes along which ``shape`` was broadcast to src's shape (the
    gradient of a broadcast operand)."""
    shape = tuple(shape)
    if tuple(src.shape) == shape:
        return src
    dims = _padded(src.shape)
    target = _padded(shape)
    full = _strides(src.shape, dims)
    kept = tuple(d if t == d else 1 for d, t in zip(dims, target))
    reduced = tuple(1 if t == d else d for d, t in zip(dims, target))
    kept_strides = tuple(s if t == d else 0 for s, d, t in zip(full, dims, target))
    reduced_strides = tuple(0 if t == d else s for s, d, t in zip(full, dims, target))
    dst = empty(math.prod(shape))
    reduce_kernel[dst.size, ELEMENTWISE_BLOCK](src.reshape(src.size), dst, kept, reduced,
                                               kept_strides, reduced_strides)
    return dst.reshape(shape)


# --------------------------------------------------------------------------- channels
@cuda.jit(cache=True)
def copy_channels_kernel(src, dst, offset, forward):
    """Between src (N, Cs, HW) and channels offset..offset+Cs of dst (N, C, HW): into dst
    (``forward``: concatenation) or out of it (its backward)."""
    n, cs, hw = src.shape
    for e in range(cuda.grid(1), src.size, cuda.gridsize(1)):
        b, ch, p = e // (cs * hw), (e // hw) % cs, e % hw
        if forward:
            dst[b, offset + ch, p] = src[b, ch, p]
        else:
            src[b, ch, p] = dst[b, offset + ch, p]


def _channel_view(x):
    n, c = x.shape[:2]
    return x.reshape(n, c, x.size // (n * c))


def concat(xs):
    """Concatenation along the channel axis (1)."""
    n, rest = xs[0].shape[0], tuple(xs[0].shape[2:])
    c = sum(x.shape[1] for x in xs)
    out = empty((n, c) + rest)
    view, offset = _channel_view(out), 0
    for x in xs:
        _launch(copy_channels_kernel, x.size, _channel_view(x), view, offset, True)
        offset += x.shape[1]
    return out


def split_channels(gy, widths):
    """The gradients of concat's inputs: gy's channel ranges, contiguous."""
    parts, offset, view = [], 0, _channel_view(gy)
    for width in widths:
        part = empty((gy.shape[0], width) + tuple(gy.shape[2:]))
        _launch(copy_channels_kernel, part.size, _channel_view(part), view, offset, False)
        parts.append(part)
        offset += width
    return parts


@cuda.jit(cache=True)
def shuffle_kernel(x, y, groups, inverse):
    """Channel shuffle of (N, C, HW): output channel g' * G + g reads input channel
    g * (C / G) + g' (``inverse``: the other way, its backward)."""
    n, c, hw = x.shape
    per = c // groups
    for e in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        b, ch, p = e // (c * hw), (e // hw) % c, e % hw
        source = (ch % groups) * per + ch // groups
        if inverse:
            y[b, source, p] = x[b, ch, p]
        else:
            y[b, ch, p] = x[b, source, p]


def channel_shuffle(x, groups: int, inverse: bool = False):
    y = empty(x.shape)
    _launch(shuffle_kernel, x.size, _channel_view(x), _channel_view(y), groups, inverse)
    return y


# --------------------------------------------------------------------------- softmax
@cuda.jit(cache=True)
def softmax_kernel(x, y):
    """Softmax over axis 1 of (N, C, HW): one thread per (sample, position) walks C."""
    n, c, hw = x.shape
    for e in range(cuda.grid(1), n * hw, cuda.gridsize(1)):
        b, p = e // hw, e % hw
        best = x[b, 0, p]
        for ch in range(1, c):
            best = max(best, x[b, ch, p])
        total = 0.0
        for ch in range(c):
            v = math.exp(x[b, ch, p] - best)
            y[b, ch, p] = v
            total += v
        for ch in range(c):
            y[b, ch, p] /= total


@cuda.jit(cache=True)
def softmax_backward_kernel(y, gy, gx):
    """gx = y * (gy - sum_c gy * y)."""
    n, c, hw = y.shape
    for e in range(cuda.grid(1), n * hw, cuda.gridsize(1)):
        b, p = e // hw, e % hw
        dot = 0.0
        for ch in range(c):
            dot += gy[b, ch, p] * y[b, ch, p]
        for ch in range(c):
            gx[b, ch, p] = y[b, ch, p] * (gy[b, ch, p] - dot)


def softmax(x):
    y = empty(x.shape)
    view = _channel_view(x)
    _launch(softmax_kernel, view.shape[0] * view.shape[2], view, _channel_view(y))
    return y


def softmax_backward(y, gy):
    gx = empty(y.shape)
    view = _channel_view(y)
    _launch(softmax_backward_kernel, view.shape[0] * view.shape[2], view, _channel_view(gy),
            _channel_view(gx))
    return gx


def slice_channels(x, start: int, stop: int):
    """x[:, start:stop] along the channels, contiguous."""
    y = empty((x.shape[0], stop - start) + tuple(x.shape[2:]))
    _launch(copy_channels_kernel, y.size, _channel_view(y), _channel_view(x), start, False)
    return y


def slice_channels_backward(gy, x_shape, start: int):
    """The slice's gradient: gy in its channels, zeros elsewhere."""
    gx = cuda.to_device(np.zeros(x_shape, np.float32))
    _launch(copy_channels_kernel, gy.size, _channel_view(gy), _channel_view(gx), start, True)
    return gx
