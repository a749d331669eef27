"""Fully connected layers on the CPU: BLAS GEMMs shared among Numba's threads by column
blocks (y = x @ W.T + b; the gradients gy @ W and gy.T @ x)."""

from __future__ import annotations

from runtime.backends.cpu.blas import matmul


def linear_forward(op, xs, p, ctx):
    y = matmul(xs[0], p["weight"], trans_b=True)
    if "bias" in p:
        y += p["bias"]
    return y


def linear_backward(op, xs, y, gy, p, ctx):
    (x,) = xs
    grads = {"weight": matmul(gy, x, trans_a=True)}
    if "bias" in p:
        grads["bias"] = gy.sum(axis=0)
    return [matmul(gy, p["weight"])], grads
