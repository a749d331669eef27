"""CUDA kernels that move or combine whole tensors, with their launches: broadcasting
multiply (squeeze-excitation's gate, stochastic depth's per-sample scale) and the
reduction of a broadcast gradient back to an operand's shape, permutations,
concatenation, slices and the softmax along any axis (through an (outer, axis, inner)
view), and channel shuffle.

Shapes are NumPy's broadcasting: operands are aligned at their last axes and padded to
four axes with leading ones; an operand's stride along an axis it broadcasts is 0.
"""

from __future__ import annotations

import math

import numpy as np
from numba import float64

from runtime.backends import lines
from runtime.backends.cuda.kernels import (
    ELEMENTWISE_BLOCK,
    _launch,
    axis_view,
    block_sum,
    cuda,
    empty,
    result,
    zeros,
)

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
    partial = cuda.shared.array(ELEMENTWISE_BLOCK, float64)  # sums that cancel: float64
    base = _offset(k, kept_dims, kept_strides)
    count = reduced_dims[0] * reduced_dims[1] * reduced_dims[2] * reduced_dims[3]
    total = float64(0.0)
    for j in range(t, count, ELEMENTWISE_BLOCK):
        total += src[base + _offset(j, reduced_dims, reduced_strides)]
    total = block_sum(partial, t, total)
    if t == 0:
        dst[k] = total


@cuda.jit(cache=True)
def gather_kernel(x, out, dims, strides):
    """out[e] = x[the offset of out's e-th index with ``strides``]: a transposition."""
    for e in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        out[e] = x[_offset(e, dims, strides)]


def permute(x, dims):
    """x.transpose(dims) (dims over the batched axes, up to four), contiguous."""
    shape = tuple(x.shape)
    step, strides = 1, [0] * len(shape)
    for axis in reversed(range(len(shape))):
        strides[axis] = step
        step *= shape[axis]
    out_shape = tuple(shape[d] for d in dims)
    pad = RANK - len(shape)
    out = result(out_shape)
    _launch(gather_kernel, out.size, x.reshape(x.size), out.reshape(out.size),
            _padded(out_shape), (0,) * pad + tuple(strides[d] for d in dims))
    return out


def multiply(a, b, out=None):
    """a * b with broadcasting, on the device (into ``out``, which may be a when it has
    the product's shape)."""
    shape = broadcast_shape(a.shape, b.shape)
    dims = _padded(shape)
    out = result(math.prod(shape)) if out is None else out.reshape(math.prod(shape))
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


# --------------------------------------------------------------------------- axes
@cuda.jit(cache=True)
def copy_range_kernel(src, dst, offset, forward):
    """Between src (A, Ns, B) and the range offset..offset+Ns of dst's middle axis (A, N,
    B): into dst (``forward``: concatenation, a slice's gradient) or out of it (a slice,
    concatenation's gradient)."""
    a, ns, inner = src.shape
    for e in range(cuda.grid(1), src.size, cuda.gridsize(1)):
        i, j, k = e // (ns * inner), (e // inner) % ns, e % inner
        if forward:
            dst[i, offset + j, k] = src[i, j, k]
        else:
            src[i, j, k] = dst[i, offset + j, k]


def _with(shape, axis: int, size: int) -> tuple[int, ...]:
    return tuple(shape[:axis]) + (size,) + tuple(shape[axis + 1:])


def concat(xs, axis: int = 1):
    """Concatenation along ``axis``."""
    out = result(_with(xs[0].shape, axis, sum(x.shape[axis] for x in xs)))
    view, offset = axis_view(out, axis), 0
    for x in xs:
        _launch(copy_range_kernel, x.size, axis_view(x, axis), view, offset, True)
        offset += x.shape[axis]
    return out


def split(gy, widths, axis: int = 1):
    """The gradients of concat's inputs: gy's ranges along ``axis``, contiguous."""
    parts, offset, view = [], 0, axis_view(gy, axis)
    for width in widths:
        part = empty(_with(gy.shape, axis, width))
        _launch(copy_range_kernel, part.size, axis_view(part, axis), view, offset, False)
        parts.append(part)
        offset += width
    return parts


def slice_axis(x, start: int, stop: int, axis: int = 1):
    """x[..., start:stop, ...] along ``axis``, contiguous."""
    y = result(_with(x.shape, axis, stop - start))
    _launch(copy_range_kernel, y.size, axis_view(y, axis), axis_view(x, axis), start, False)
    return y


def slice_backward(gy, x_shape, start: int, axis: int = 1):
    """A slice's gradient: gy in its range, zeros elsewhere."""
    gx = zeros(x_shape)
    _launch(copy_range_kernel, gy.size, axis_view(gy, axis), axis_view(gx, axis), start,
            True)
    return gx


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
    y = result(x.shape)
    _launch(shuffle_kernel, x.size, axis_view(x), axis_view(y), groups, inverse)
    return y


# --------------------------------------------------------------------------- softmax
_softmax_line = cuda.jit(device=True, inline=True)(lines.softmax_line)
_softmax_grad_line = cuda.jit(device=True, inline=True)(lines.softmax_grad_line)


@cuda.jit(cache=True)
def softmax_kernel(x, y):
    """Softmax over the middle axis of (A, N, B): one thread per (a, b) walks its N."""
    a, c, inner = x.shape
    for e in range(cuda.grid(1), a * inner, cuda.gridsize(1)):
        _softmax_line(x, y, e // inner, e % inner)


@cuda.jit(cache=True)
def softmax_backward_kernel(y, gy, gx):
    """gx = y * (gy - sum_j gy * y) along the middle axis."""
    a, c, inner = y.shape
    for e in range(cuda.grid(1), a * inner, cuda.gridsize(1)):
        _softmax_grad_line(y, gy, gx, e // inner, e % inner)


def softmax(x, axis: int = 1):
    y = result(x.shape)
    view = axis_view(x, axis)
    _launch(softmax_kernel, view.shape[0] * view.shape[2], view, axis_view(y, axis))
    return y


def softmax_backward(y, gy, axis: int = 1):
    gx = empty(y.shape)
    view = axis_view(y, axis)
    _launch(softmax_backward_kernel, view.shape[0] * view.shape[2], view,
            axis_view(gy, axis), axis_view(gx, axis))
    return gx
