"""Ops over the last axis (linear, layernorm) on inputs of any rank: the kernels work on
(rows, features) arrays, and a channels-last map (N, H, W, C) is N*H*W rows of C
features. These wrappers fold the leading axes into rows and unfold the results, for
every backend (a reshape of a contiguous array, host or device, copies nothing)."""

from __future__ import annotations

from typing import Callable


def _rows(array):
    """(..., F) as (rows, F)."""
    features = tuple(array.shape)[-1]  # (the CUDA simulator's shape takes no negative index)
    return array.reshape(array.size // features, features)


def forward(kernel: Callable) -> Callable:
    def over_rows(op, xs, p, ctx):
        x = xs[0]
        if x.ndim == 2:
            return kernel(op, xs, p, ctx)
        y = kernel(op, [_rows(x)], p, ctx)
        return y.reshape(tuple(x.shape)[:-1] + tuple(y.shape)[-1:])

    over_rows.__doc__ = kernel.__doc__
    return over_rows


def backward(kernel: Callable) -> Callable:
    def over_rows(op, xs, y, gy, p, ctx):
        x = xs[0]
        if x.ndim == 2:
            return kernel(op, xs, y, gy, p, ctx)
        gxs, grads = kernel(op, [_rows(x)], None if y is None else _rows(y), _rows(gy), p, ctx)
        return [g if g is None else g.reshape(tuple(x.shape)) for g in gxs], grads

    over_rows.__doc__ = kernel.__doc__
    return over_rows
