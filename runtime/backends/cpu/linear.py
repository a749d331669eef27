"""Fully connected layers on the CPU: BLAS GEMMs shared among Numba's threads by column
blocks (y = x @ W.T + b; the gradients gy @ W and gy.T @ x), then the epilogue (bias and
a fused activation) in one parallel pass over the rows."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from runtime.backends.cpu.blas import matmul
from runtime.backends.cpu.elementwise import activate_inplace, fused_forward
from runtime.config import PARALLEL


@njit(cache=True, **PARALLEL)
def linear_epilogue_kernel(y, bias, code, slope):
    """y (N, F) += bias (empty: none), then activation ``code`` (negative: none), in place."""
    for i in prange(y.shape[0]):
        row = y[i]
        if bias.size:
            for j in range(row.size):
                row[j] += bias[j]
        activate_inplace(row, code, slope)


def _linear(op, xs, p, ctx, code, slope):
    y = matmul(xs[0], p["weight"], trans_b=True)
    if "bias" in p or code >= 0:
        bias = p["bias"] if "bias" in p else np.empty(0, dtype=y.dtype)
        linear_epilogue_kernel(y, bias, code, slope)
    return y


linear_forward = fused_forward(_linear)


def linear_backward(op, xs, y, gy, p, ctx):
    (x,) = xs
    grads = {"weight": matmul(gy, x, trans_a=True)}
    if "bias" in p:
        grads["bias"] = gy.sum(axis=0)
    return [matmul(gy, p["weight"])], grads
