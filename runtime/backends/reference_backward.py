"""Backward passes of the reference backend: for each op, the gradients of its inputs and
parameters given the gradient of its output. Plain NumPy, written for clarity; checked
against finite differences and PyTorch's autograd.

A backward kernel is ``(op, xs, y, gy, params, ctx) -> (input grads, param grads)``;
an input that takes no gradient (positions, a size reference) gets ``None``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from runtime.backends import roi, rows
from runtime.backends.activations import ACTIVATIONS, reference_derivative
from runtime.backends.epilogue import fused_backward
from runtime.backends.reference import (
    _bins,
    _pad,
    _taps,
    _window_pads,
    resize_matrices,
)

BACKWARD: dict[str, Callable] = {}


def backward(*kinds: str):
    def register(fn):
        for kind in kinds:
            BACKWARD[kind] = fn
        return fn
    return register


def _scatter_taps(grad_p: np.ndarray, contrib: np.ndarray, k, s, d) -> None:
    """Add tap contributions (N, C, kh, kw, Ho, Wo) into the padded-map gradient."""
    (kh, kw), (sh, sw), (dh, dw) = k, s, d
    ho, wo = contrib.shape[-2:]
    for i in range(kh):
        for j in range(kw):
            grad_p[:, :, i * dh: i * dh + sh * (ho - 1) + 1: sh,
                   j * dw: j * dw + sw * (wo - 1) + 1: sw] += contrib[:, :, i, j]


def _crop(grad_p: np.ndarray, top: int, left: int, h: int, w: int) -> np.ndarray:
    return grad_p[:, :, top: top + h, left: left + w]


@backward("conv2d")
def conv2d(op, xs, y, gy, p, ctx):
    (x,), a, w = xs, op.attrs, p["weight"]
    n, c, h, wd = x.shape
    (pt, pb), (pl, pr) = a["pads"]
    g, k = a["groups"], a["kernel_size"]
    ho, wo = gy.shape[2:]
    xp = _pad(x, pt, pb, pl, pr)
    cols = _taps(xp, k, a["stride"], a["dilation"], (ho, wo)).reshape(n, g, c // g, *k, ho, wo)
    gyg = gy.reshape(n, g, w.shape[0] // g, ho, wo)
    wg = w.reshape(g, w.shape[0] // g, *w.shape[1:])
    grads = {"weight": np.einsum("ngcijyx,ngoyx->gocij", cols, gyg).reshape(w.shape)}
    if "bias" in p:
        grads["bias"] = gy.sum(axis=(0, 2, 3))
    gcols = np.einsum("ngoyx,gocij->ngcijyx", gyg, wg).reshape(n, c, *k, ho, wo)
    gxp = np.zeros_like(xp)
    _scatter_taps(gxp, gcols, k, a["stride"], a["dilation"])
    return [_crop(gxp, pt, pl, h, wd)], grads


@backward("conv_transpose2d")
def conv_transpose2d(op, xs, y, gy, p, ctx):
    (x,), a, w = xs, op.attrs, p["weight"]
    n, c, h, wd = x.shape
    g = a["groups"]
    (kh, kw), (sh, sw), (dh, dw) = a["kernel_size"], a["stride"], a["dilation"]
    (ph, pw), (oph, opw) = a["padding"], a["output_padding"]
    og = w.shape[1]
    full = np.zeros((n, g * og, (h - 1) * sh + dh * (kh - 1) + 1 + oph,
                     (wd - 1) * sw + dw * (kw - 1) + 1 + opw), dtype=gy.dtype)
    full[:, :, ph: ph + gy.shape[2], pw: pw + gy.shape[3]] = gy
    taps = _taps(full, (kh, kw), (sh, sw), (dh, dw), (h, wd)).reshape(n, g, og, kh, kw, h, wd)
    xg = x.reshape(n, g, c // g, h, wd)
    wg = w.reshape(g, c // g, og, kh, kw)
    gx = np.einsum("ngoijyx,gcoij->ngcyx", taps, wg).reshape(x.shape)
    grads = {"weight": np.einsum("ngcyx,ngoijyx->gcoij", xg, taps).reshape(w.shape)}
    if "bias" in p:
        grads["bias"] = gy.sum(axis=(0, 2, 3))
    return [gx], grads


@backward("max_pool2d")
def max_pool2d(op, xs, y, gy, p, ctx):
    (x,) = xs
    n, c, h, w = x.shape
    gx = np.zeros((n, c, h * w + 1), dtype=gy.dtype)  # the last slot takes position -1
    idx = ctx.indices[op.output].reshape(n, c, -1)
    idx = np.where(idx < 0, h * w, idx)
    for i in range(n):  # np.add.at: windows may overlap
        for j in range(c):
            np.add.at(gx[i, j], idx[i, j], gy[i, j].ravel())
    return [gx[:, :, :-1].reshape(x.shape)], {}


@backward("avg_pool2d")
def avg_pool2d(op, xs, y, gy, p, ctx):
    (x,), a = xs, op.attrs
    h, w = x.shape[2:]
    top, bottom, left, right = _window_pads(a, (h, w), gy.shape[2:])
    k, s = a["kernel_size"], a["stride"]
    ones = np.ones((1, 1, h, w), dtype=x.dtype)
    pt, pl = a["padding"]
    if a["count_include_pad"]:
        ones = _pad(_pad(ones, pt, pt, pl, pl, 1.0), 0, bottom - pt, 0, right - pl)
    else:
        ones = _pad(ones, top, bottom, left, right)
    divisor = _taps(ones, k, s, (1, 1), gy.shape[2:]).sum(axis=(2, 3))
    share = (gy / divisor)[:, :, None, None].repeat(k[0], 2).repeat(k[1], 3)
    gxp = np.zeros((x.shape[0], x.shape[1], h + top + bottom, w + left + right), dtype=gy.dtype)
    _scatter_taps(gxp, share, k, s, (1, 1))
    return [_crop(gxp, top, left, h, w)], {}


@backward("adaptive_avg_pool2d", "adaptive_max_pool2d", "global_avg_pool2d", "global_max_pool2d")
def adaptive_pool(op, xs, y, gy, p, ctx):
    (x,) = xs
    gx = np.zeros_like(x)
    ho, wo = gy.shape[2:]
    for i, (r0, r1) in enumerate(_bins(x.shape[2], ho)):
        for j, (c0, c1) in enumerate(_bins(x.shape[3], wo)):
            region = x[:, :, r0:r1, c0:c1]
            if "avg" in op.kind:
                gx[:, :, r0:r1, c0:c1] += gy[:, :, i:i + 1, j:j + 1] / region[0, 0].size
            else:
                flat = region.reshape(*region.shape[:2], -1)
                best = flat.argmax(axis=2)
                local = np.zeros_like(flat)
                np.put_along_axis(local, best[:, :, None], gy[:, :, i, j][:, :, None], axis=2)
                gx[:, :, r0:r1, c0:c1] += local.reshape(region.shape)
    return [gx], {}


@backward("max_unpool2d")
def max_unpool2d(op, xs, y, gy, p, ctx):
    x = xs[0]
    n, c = x.shape[:2]
    idx = ctx.indices[op.inputs[1]].reshape(n, c, -1)
    flat = np.concatenate([gy.reshape(n, c, -1), np.zeros((n, c, 1), gy.dtype)], axis=2)
    gx = np.take_along_axis(flat, np.where(idx < 0, flat.shape[2] - 1, idx), axis=2)
    gx = gx.reshape(x.shape)
    return [gx] + [None] * (len(xs) - 1), {}


@backward("unpool2d")
def unpool2d(op, xs, y, gy, p, ctx):
    (x,), (kh, kw) = xs, op.attrs["kernel_size"]
    if op.attrs["mode"] == "nearest":
        n, c, h, w = x.shape
        return [gy.reshape(n, c, h, kh, w, kw).sum(axis=(3, 5))], {}
    return [np.ascontiguousarray(gy[:, :, ::kh, ::kw])], {}


@backward("upsample")
def upsample(op, xs, y, gy, p, ctx):
    rmat, cmat = resize_matrices(op, xs[0].shape[2:], gy.dtype)
    gx = rmat @ (gy @ cmat.T)
    return [gx] + [None] * (len(xs) - 1), {}


@backward("center_crop")
def center_crop(op, xs, y, gy, p, ctx):
    x = xs[0]
    ho, wo = gy.shape[2:]
    top, left = (x.shape[2] - ho) // 2, (x.shape[3] - wo) // 2
    gx = np.zeros_like(x)
    gx[:, :, top: top + ho, left: left + wo] = gy
    return [gx, None], {}


def _per_channel(v, ndim):
    return v.reshape((1, -1) + (1,) * (ndim - 2))


@backward("batchnorm2d", "batchnorm1d")
def batchnorm(op, xs, y, gy, p, ctx):
    (x,), a = xs, op.attrs
    axes = (0,) + tuple(range(2, x.ndim))
    batch = ctx.saved.get(op.output) == "batch"
    if batch:
        mean, var, count = ctx.batch_stats[op.output]
    else:
        mean, var = p["running_mean"], p["running_var"]
    invstd = 1.0 / np.sqrt(var + a["eps"])
    xhat = (x - _per_channel(mean, x.ndim)) * _per_channel(invstd, x.ndim)
    grads = {}
    gxhat = gy
    if a["affine"]:
        grads = {"weight": (gy * xhat).sum(axis=axes), "bias": gy.sum(axis=axes)}
        gxhat = gy * _per_channel(p["weight"], x.ndim)
    if not batch:
        return [gxhat * _per_channel(invstd, x.ndim)], grads
    sg, sgx = gxhat.sum(axis=axes), (gxhat * xhat).sum(axis=axes)
    if ctx.sync_bn is not None:  # sums over every process's batch
        sg, sgx = ctx.sync_bn.grad_sums(sg, sgx)
    gx = (_per_channel(invstd, x.ndim) / count) * (
        count * gxhat - _per_channel(sg, x.ndim) - xhat * _per_channel(sgx, x.ndim))
    return [gx.astype(x.dtype)], grads


@backward("layernorm2d", "layernorm")
def layernorm(op, xs, y, gy, p, ctx):
    (x,), a = xs, op.attrs
    c = x.shape[1]
    mean = x.mean(axis=1, keepdims=True)
    invstd = 1.0 / np.sqrt(x.var(axis=1, keepdims=True) + a["eps"])
    xhat = (x - mean) * invstd
    grads, gxhat = {}, gy
    if a["elementwise_affine"]:
        others = (0,) + tuple(range(2, x.ndim))
        grads = {"weight": (gy * xhat).sum(axis=others), "bias": gy.sum(axis=others)}
        gxhat = gy * _per_channel(p["weight"], x.ndim)
    gx = (invstd / c) * (c * gxhat - gxhat.sum(axis=1, keepdims=True)
                         - xhat * (gxhat * xhat).sum(axis=1, keepdims=True))
    return [gx], grads


@backward("local_response_norm")
def local_response_norm(op, xs, y, gy, p, ctx):
    (x,), a = xs, op.attrs
    size, alpha, beta, k = a["size"], a["alpha"], a["beta"], a["k"]
    c = x.shape[1]
    sq = np.pad(x * x, ((0, 0), (size // 2, (size - 1) // 2), (0, 0), (0, 0)))
    d = sum(sq[:, i: i + c] for i in range(size)) * (alpha / size) + k
    # y_c = x_c d_c^-beta, d_j depends on x_c for the j whose window holds c
    t = gy * x * d ** (-beta - 1)
    tp = np.pad(t, ((0, 0), ((size - 1) // 2, size // 2), (0, 0), (0, 0)))
    back = sum(tp[:, i: i + c] for i in range(size))
    return [gy * d ** (-beta) - 2 * alpha * beta / size * x * back], {}


@backward("layer_scale")
def layer_scale(op, xs, y, gy, p, ctx):
    (x,) = xs
    return [gy * p["weight"][None]], {"weight": (gy * x).sum(axis=(0, 2, 3)).reshape(-1, 1, 1)}


@backward(*ACTIVATIONS)
def activation(op, xs, y, gy, p, ctx):
    return [gy * reference_derivative(op.kind, op.attrs, xs[0], y).astype(gy.dtype)], {}


@backward("softmax")
def softmax(op, xs, y, gy, p, ctx):
    return [y * (gy - (gy * y).sum(axis=op.attrs["dim"], keepdims=True))], {}


@backward("dropout", "stochastic_depth")
def dropout(op, xs, y, gy, p, ctx):
    scale = ctx.saved.get(op.output)
    return [gy if scale is None else gy * scale], {}


@backward("linear")
def linear(op, xs, y, gy, p, ctx):
    (x,) = xs
    grads = {"weight": gy.T @ x}
    if "bias" in p:
        grads["bias"] = gy.sum(axis=0)
    return [gy @ p["weight"]], grads


@backward("flatten", "reshape")
def reshape(op, xs, y, gy, p, ctx):
    return [gy.reshape(xs[0].shape)], {}


@backward("permute")
def permute(op, xs, y, gy, p, ctx):
    return [gy.transpose(np.argsort(op.attrs["dims"]))], {}


@backward("channel_shuffle")
def channel_shuffle(op, xs, y, gy, p, ctx):
    g = op.attrs["groups"]
    n, c = gy.shape[:2]
    return [gy.reshape(n, c // g, g, *gy.shape[2:]).swapaxes(1, 2).reshape(gy.shape)], {}


@backward("slice")
def slice_(op, xs, y, gy, p, ctx):
    gx = np.zeros_like(xs[0])
    index = [slice(None)] * gx.ndim
    index[op.attrs["dim"]] = slice(op.attrs["start"], op.attrs["end"])
    gx[tuple(index)] = gy
    return [gx], {}


@backward("identity")
def identity(op, xs, y, gy, p, ctx):
    return [gy], {}


def _unbroadcast(g: np.ndarray, shape: tuple) -> np.ndarray:
    axes = tuple(i for i, (a, b) in enumerate(zip(g.shape, shape)) if b == 1 and a != 1)
    return g.sum(axis=axes, keepdims=True) if axes else g


@backward("add")
def add(op, xs, y, gy, p, ctx):
    return [gy for _ in xs], {}


@backward("join")
def join(op, xs, y, gy, p, ctx):
    w = ctx.saved[op.output]
    return [gy * w[:, i].reshape((-1,) + (1,) * (gy.ndim - 1)) for i in range(len(xs))], {}


@backward("multiply")
def multiply(op, xs, y, gy, p, ctx):
    grads = []
    for i, x in enumerate(xs):
        others = gy
        for j, other in enumerate(xs):
            if j != i:
                others = others * other
        grads.append(_unbroadcast(others, x.shape))
    return grads, {}


@backward("concat")
def concat(op, xs, y, gy, p, ctx):
    dim = op.attrs["dim"]
    edges = np.cumsum([x.shape[dim] for x in xs])[:-1]
    return list(np.split(gy, edges, axis=dim)), {}


def activation_grad(name: str, attrs: dict, pre, y, gy):
    """The gradient before a fused activation (conv, linear and batch-norm epilogues)."""
    return gy * reference_derivative(name, attrs, pre, y).astype(gy.dtype)


for _kind in ("conv2d", "linear", "batchnorm2d", "batchnorm1d"):
    BACKWARD[_kind] = fused_backward(BACKWARD[_kind], activation_grad)


for _kind, (_, _backward) in roi.layer_kernels(roi.NUMPY).items():
    BACKWARD[_kind] = _backward  # RoI Align and Pool: runtime/backends/roi.py

for _kind in ("linear", "layernorm"):  # over the last axis of any rank: runtime/backends/rows.py
    BACKWARD[_kind] = rows.backward(BACKWARD[_kind])
