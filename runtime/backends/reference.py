"""The reference backend: every op's forward pass in plain NumPy, written for clarity.

The living definition of what each op computes (tinygrad's ``ops_python``; ONNX's
reference ops): fast CPU and CUDA kernels are tested against it, and it is tested
against PyTorch. NCHW throughout; works in the dtype of its inputs (float32, or float64
for gradient checks).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from runtime.backends import roi, rows
from runtime.backends.activations import ACTIVATIONS, reference_forward
from runtime.backends.epilogue import activation_of, keep_pre_activation
from runtime.context import KernelContext
from runtime.program import Op

Kernel = Callable[[Op, list, dict, KernelContext], np.ndarray]
KERNELS: dict[str, Kernel] = {}

def kernel(*kinds: str):
    def register(fn: Kernel) -> Kernel:
        for kind in kinds:
            KERNELS[kind] = fn
        return fn
    return register


def _taps(xp: np.ndarray, k, s, d, out_hw) -> np.ndarray:
    """Stack the kh x kw strided views of a padded map: (N, C, kh, kw, Ho, Wo)."""
    (kh, kw), (sh, sw), (dh, dw), (ho, wo) = k, s, d, out_hw
    rows = []
    for i in range(kh):
        cols = [xp[:, :, i * dh: i * dh + sh * (ho - 1) + 1: sh,
                   j * dw: j * dw + sw * (wo - 1) + 1: sw] for j in range(kw)]
        rows.append(np.stack(cols, axis=2))
    return np.stack(rows, axis=2)


def _pad(x: np.ndarray, top: int, bottom: int, left: int, right: int, value: float = 0.0):
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=value)


def _epilogue(op, y: np.ndarray, xs: list, ctx: KernelContext) -> np.ndarray:
    """A fused residual (second input) and activation (see runtime/backends/epilogue.py)."""
    if len(xs) > 1:
        y = y + xs[1]
    act = activation_of(op)
    if act is None:
        return y
    keep_pre_activation(op, y, ctx)
    return reference_forward(act[0], act[1], y)


@kernel("conv2d")
def conv2d(op, xs, p, ctx):
    x, a = xs[0], op.attrs
    w = p["weight"]
    n, c = x.shape[:2]
    (pt, pb), (pl, pr) = a["pads"]
    ho, wo = op.out_shape[1:]
    g = a["groups"]
    cols = _taps(_pad(x, pt, pb, pl, pr), a["kernel_size"], a["stride"], a["dilation"], (ho, wo))
    cols = cols.reshape(n, g, c // g, *a["kernel_size"], ho, wo)
    wg = w.reshape(g, w.shape[0] // g, *w.shape[1:])
    y = np.einsum("ngcijyx,gocij->ngoyx", cols, wg).reshape(n, w.shape[0], ho, wo)
    return _epilogue(op, y + p["bias"].reshape(1, -1, 1, 1) if "bias" in p else y, xs, ctx)


@kernel("conv_transpose2d")
def conv_transpose2d(op, xs, p, ctx):
    (x,), a = xs, op.attrs
    w = p["weight"]  # (in, out / groups, kh, kw)
    n, c, h, wd = x.shape
    g = a["groups"]
    (kh, kw), (sh, sw), (dh, dw) = a["kernel_size"], a["stride"], a["dilation"]
    (ph, pw), (oph, opw) = a["padding"], a["output_padding"]
    og = w.shape[1]
    full = np.zeros((n, g, og, (h - 1) * sh + dh * (kh - 1) + 1 + oph,
                     (wd - 1) * sw + dw * (kw - 1) + 1 + opw), dtype=x.dtype)
    xg = x.reshape(n, g, c // g, h, wd)
    wg = w.reshape(g, c // g, og, kh, kw)
    for i in range(kh):
        for j in range(kw):
            full[:, :, :, i * dh: i * dh + sh * (h - 1) + 1: sh,
                 j * dw: j * dw + sw * (wd - 1) + 1: sw] += np.einsum(
                "ngchw,gco->ngohw", xg, wg[:, :, :, i, j])
    ho, wo = op.out_shape[1:]
    y = full.reshape(n, g * og, *full.shape[3:])[:, :, ph: ph + ho, pw: pw + wo]
    return y + p["bias"].reshape(1, -1, 1, 1) if "bias" in p else y


def _window_pads(a, in_hw, out_hw):
    """(top, bottom, left, right): the declared padding, plus what ceil_mode needs."""
    k, s, d, pad = a["kernel_size"], a["stride"], a.get("dilation", (1, 1)), a["padding"]
    extra = [max((o - 1) * st + dl * (kk - 1) + 1 - n - 2 * pp, 0)
             for o, st, dl, kk, n, pp in zip(out_hw, s, d, k, in_hw, pad)]
    return pad[0], pad[0] + extra[0], pad[1], pad[1] + extra[1]


@kernel("max_pool2d")
def max_pool2d(op, xs, p, ctx):
    (x,), a = xs, op.attrs
    h, w = x.shape[2:]
    out_hw = op.out_shape[1:]
    top, bottom, left, right = _window_pads(a, (h, w), out_hw)
    taps = _taps(_pad(x, top, bottom, left, right, -np.inf), a["kernel_size"], a["stride"],
                 a["dilation"], out_hw)
    n, c, kh, kw, ho, wo = taps.shape
    flat = taps.reshape(n, c, kh * kw, ho, wo)
    best = flat.argmax(axis=2)
    # positions as PyTorch returns them: row * W + column in the unpadded input
    ti, tj = best // kw, best % kw
    rows = np.arange(ho).reshape(-1, 1) * a["stride"][0] - top + ti * a["dilation"][0]
    cols = np.arange(wo).reshape(1, -1) * a["stride"][1] - left + tj * a["dilation"][1]
    y = np.take_along_axis(flat, best[:, :, None], axis=2)[:, :, 0]
    # a window lying wholly in the padding gives -inf (as PyTorch) and position -1: nothing
    # flows back through it
    ctx.indices[op.output] = np.where(np.isneginf(y), -1, rows * w + cols)
    return y


@kernel("avg_pool2d")
def avg_pool2d(op, xs, p, ctx):
    (x,), a = xs, op.attrs
    h, w = x.shape[2:]
    out_hw = op.out_shape[1:]
    top, bottom, left, right = _window_pads(a, (h, w), out_hw)
    k, s = a["kernel_size"], a["stride"]
    total = _taps(_pad(x, top, bottom, left, right), k, s, (1, 1), out_hw).sum(axis=(2, 3))
    # divisor: window cells inside the input, plus the declared padding if counted
    ones = np.ones((1, 1, h, w), dtype=x.dtype)
    pt, pl = a["padding"]
    if a["count_include_pad"]:
        ones = _pad(ones, pt, pt, pl, pl, 1.0)
        ones = _pad(ones, 0, bottom - pt, 0, right - pl)
    else:
        ones = _pad(ones, top, bottom, left, right)
    divisor = _taps(ones, k, s, (1, 1), out_hw).sum(axis=(2, 3))
    return total / divisor


def _bins(size: int, out: int):
    return [((i * size) // out, -((-(i + 1) * size) // out)) for i in range(out)]


@kernel("adaptive_avg_pool2d", "adaptive_max_pool2d", "global_avg_pool2d", "global_max_pool2d")
def adaptive_pool(op, xs, p, ctx):
    (x,) = xs
    reduce = np.mean if "avg" in op.kind else np.max
    ho, wo = op.out_shape[1:]
    y = np.empty(x.shape[:2] + (ho, wo), dtype=x.dtype)
    for i, (r0, r1) in enumerate(_bins(x.shape[2], ho)):
        for j, (c0, c1) in enumerate(_bins(x.shape[3], wo)):
            y[:, :, i, j] = reduce(x[:, :, r0:r1, c0:c1], axis=(2, 3))
    return y


@kernel("max_unpool2d")
def max_unpool2d(op, xs, p, ctx):
    x = xs[0]
    n, c = x.shape[:2]
    ho, wo = op.attrs["out_size"]
    y = np.zeros((n, c, ho * wo + 1), dtype=x.dtype)  # a last slot for position -1
    idx = ctx.indices[op.inputs[1]].reshape(n, c, -1)
    np.put_along_axis(y, np.where(idx < 0, ho * wo, idx), x.reshape(n, c, -1), axis=2)
    return y[:, :, :-1].reshape(n, c, ho, wo)


@kernel("unpool2d")
def unpool2d(op, xs, p, ctx):
    (x,), (kh, kw) = xs, op.attrs["kernel_size"]
    if op.attrs["mode"] == "nearest":
        return x.repeat(kh, axis=2).repeat(kw, axis=3)
    y = np.zeros(x.shape[:2] + (x.shape[2] * kh, x.shape[3] * kw), dtype=x.dtype)
    y[:, :, ::kh, ::kw] = x
    return y


def _source(out: int, size: int, scale_factor, align: bool, nearest: bool) -> np.ndarray:
    """Input coordinates of each output row (PyTorch's area_pixel_compute_source_index)."""
    dst = np.arange(out, dtype=np.float64)
    if align:
        return dst * ((size - 1) / (out - 1) if out > 1 else 0.0)
    scale = 1.0 / scale_factor if scale_factor else size / out
    if nearest:
        return np.minimum(np.floor(dst * scale), size - 1)
    return np.maximum((dst + 0.5) * scale - 0.5, 0.0)


def _interp_matrix(src: np.ndarray, size: int, nearest: bool, dtype) -> np.ndarray:
    """(input, output) weights along one axis: a one-hot column for nearest, the two
    linear-interpolation weights otherwise."""
    m = np.zeros((size, len(src)), dtype=dtype)
    cols = np.arange(len(src))
    i0 = np.floor(src).astype(int)
    if nearest:
        m[i0, cols] = 1
        return m
    lam = src - i0
    np.add.at(m, (i0, cols), 1 - lam)
    np.add.at(m, (np.minimum(i0 + 1, size - 1), cols), lam)
    return m


def resize_matrices(op: Op, in_hw, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Row and column weights of an upsample: y = R^T x C, so its gradient is R gy C^T."""
    a = op.attrs
    (ho, wo), (h, w) = a["out_size"], in_hw
    sf = a["scale_factor"] or (None, None)
    nearest = a["mode"] == "nearest"
    rows = _source(ho, h, sf[0], a["align_corners"], nearest)
    cols = _source(wo, w, sf[1], a["align_corners"], nearest)
    return (_interp_matrix(rows, h, nearest, dtype), _interp_matrix(cols, w, nearest, dtype))


@kernel("upsample")
def upsample(op, xs, p, ctx):
    x = xs[0]
    rmat, cmat = resize_matrices(op, x.shape[2:], x.dtype)
    return rmat.T @ (x @ cmat)  # two matrix products, one per axis


@kernel("center_crop")
def center_crop(op, xs, p, ctx):
    x = xs[0]
    ho, wo = op.attrs["out_size"]
    top, left = (x.shape[2] - ho) // 2, (x.shape[3] - wo) // 2
    return x[:, :, top: top + ho, left: left + wo]


def _per_channel(v: np.ndarray, ndim: int) -> np.ndarray:
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def batch_statistics(attrs: dict, train: bool) -> bool:
    """Whether a batch norm normalises with the batch's statistics (training, unless frozen;
    always without running statistics) rather than its running ones."""
    return (train and not attrs.get("frozen", False)) or not attrs["track_running_stats"]


@kernel("batchnorm2d", "batchnorm1d")
def batchnorm(op, xs, p, ctx):
    x, a = xs[0], op.attrs
    axes = (0,) + tuple(range(2, x.ndim))
    if batch_statistics(a, ctx.train):
        mean, var = x.mean(axis=axes), x.var(axis=axes)
        count = x.size // x.shape[1]
        if ctx.sync_bn is not None:  # the statistics of every process's batch
            count, mean, var = ctx.sync_bn.moments(count, mean, var)
        ctx.saved[op.output] = "batch"  # backward through the statistics
        ctx.batch_stats[op.output] = (mean, var, count)
        if ctx.train and a["track_running_stats"]:
            m = a["momentum"]
            p["running_mean"][...] = (1 - m) * p["running_mean"] + m * mean
            p["running_var"][...] = (1 - m) * p["running_var"] + m * var * count / max(count - 1, 1)
            p["num_batches_tracked"][...] += 1
    else:
        mean, var = p["running_mean"], p["running_var"]
    y = (x - _per_channel(mean, x.ndim)) / np.sqrt(_per_channel(var, x.ndim) + a["eps"])
    if a["affine"]:
        y = y * _per_channel(p["weight"], x.ndim) + _per_channel(p["bias"], x.ndim)
    return _epilogue(op, y.astype(x.dtype), xs, ctx)


@kernel("layernorm2d", "layernorm")
def layernorm(op, xs, p, ctx):
    (x,), a = xs, op.attrs
    mean = x.mean(axis=1, keepdims=True)
    var = x.var(axis=1, keepdims=True)
    y = (x - mean) / np.sqrt(var + a["eps"])
    if a["elementwise_affine"]:
        y = y * _per_channel(p["weight"], x.ndim) + _per_channel(p["bias"], x.ndim)
    return y


@kernel("local_response_norm")
def local_response_norm(op, xs, p, ctx):
    (x,), a = xs, op.attrs
    size = a["size"]
    sq = np.pad(x * x, ((0, 0), (size // 2, (size - 1) // 2), (0, 0), (0, 0)))
    window = sum(sq[:, i: i + x.shape[1]] for i in range(size)) / size
    return x / (window * a["alpha"] + a["k"]) ** a["beta"]


@kernel("layer_scale")
def layer_scale(op, xs, p, ctx):
    return xs[0] * p["weight"][None]


@kernel(*ACTIVATIONS)
def activation(op, xs, p, ctx):
    return reference_forward(op.kind, op.attrs, xs[0])


@kernel("softmax")
def softmax(op, xs, p, ctx):
    x, dim = xs[0], op.attrs["dim"]
    e = np.exp(x - x.max(axis=dim, keepdims=True))
    return e / e.sum(axis=dim, keepdims=True)


@kernel("dropout")
def dropout(op, xs, p, ctx):
    x, rate = xs[0], op.attrs["p"]
    if not ctx.train or rate == 0:
        return x
    keep = ctx.rng.random(x.shape) >= rate
    ctx.saved[op.output] = keep / (1 - rate)
    return x * keep / (1 - rate)


@kernel("stochastic_depth")
def stochastic_depth(op, xs, p, ctx):
    x, rate = xs[0], op.attrs["p"]
    if not ctx.train or rate == 0:
        return x
    shape = (x.shape[0],) + (1,) * (x.ndim - 1) if op.attrs["mode"] == "row" else (1,) * x.ndim
    keep = ctx.rng.random(shape) >= rate
    ctx.saved[op.output] = keep / (1 - rate)
    return x * keep / (1 - rate)


@kernel("linear")
def linear(op, xs, p, ctx):
    y = xs[0] @ p["weight"].T
    return _epilogue(op, y + p["bias"] if "bias" in p else y, xs, ctx)


@kernel("flatten", "reshape")
def reshape(op, xs, p, ctx):
    return xs[0].reshape((xs[0].shape[0],) + tuple(op.out_shape))


@kernel("permute")
def permute(op, xs, p, ctx):
    return xs[0].transpose(op.attrs["dims"])


@kernel("channel_shuffle")
def channel_shuffle(op, xs, p, ctx):
    x, g = xs[0], op.attrs["groups"]
    n, c = x.shape[:2]
    return x.reshape(n, g, c // g, *x.shape[2:]).swapaxes(1, 2).reshape(x.shape)


@kernel("slice")
def slice_(op, xs, p, ctx):
    index = [slice(None)] * xs[0].ndim
    index[op.attrs["dim"]] = slice(op.attrs["start"], op.attrs["end"])
    return xs[0][tuple(index)]


@kernel("identity")
def identity(op, xs, p, ctx):
    return xs[0]


@kernel("add")
def add(op, xs, p, ctx):
    return sum(xs[1:], xs[0])


@kernel("multiply")
def multiply(op, xs, p, ctx):
    y = xs[0]
    for x in xs[1:]:
        y = y * x
    return y


GLOBAL_DROP_PATH = ("join", "global drop-path")
"""ctx.saved's key for a pass's global drop-path draw (which samples keep one column, and
which): made by the first join that needs it, read by the others."""


def join_weights(op, n: int, ctx) -> np.ndarray:
    """A join's weight of each input for each sample (n, inputs), float64, rows summing to
    one: the mean in inference; in training the mean of the inputs drop-path keeps. One
    rule for every backend (the same draws from the same generator)."""
    k, a = len(op.inputs), op.attrs
    if not ctx.train or (a["drop_path"] == 0 and a["global_drop"] == 0):
        return np.full((n, k), 1.0 / k)
    keep = ctx.rng.random((n, k)) >= a["drop_path"]
    lost = np.nonzero(~keep.any(axis=1))[0]
    keep[lost, ctx.rng.integers(0, k, len(lost))] = True  # one input always survives
    if a["global_drop"] > 0:
        columns = np.array(a["columns"] if a["columns"] is not None else range(k))
        count = a["column_count"] or int(columns.max()) + 1
        draw = ctx.saved.get(GLOBAL_DROP_PATH)
        if draw is None or len(draw[0]) != n:
            draw = (ctx.rng.random(n) < a["global_drop"], ctx.rng.integers(0, count, n))
            ctx.saved[GLOBAL_DROP_PATH] = draw
        chosen, column = draw
        mine = columns[None, :] == column[:, None]
        # a sample on one column keeps this join's input from it (a join without that
        # column feeds nothing the sample's path reads: its local draw stands)
        single = chosen & mine.any(axis=1)
        keep[single] = mine[single]
    return keep / keep.sum(axis=1, keepdims=True)


def _per_sample(w: np.ndarray, ndim: int) -> np.ndarray:
    return w.reshape((-1,) + (1,) * (ndim - 1))


@kernel("join")
def join(op, xs, p, ctx):
    w = join_weights(op, len(xs[0]), ctx).astype(xs[0].dtype)
    ctx.saved[op.output] = w
    return sum((x * _per_sample(w[:, i], x.ndim) for i, x in enumerate(xs[1:], 1)),
               xs[0] * _per_sample(w[:, 0], xs[0].ndim))


@kernel("concat")
def concat(op, xs, p, ctx):
    return np.concatenate(xs, axis=op.attrs["dim"])


for _kind, (_forward, _) in roi.layer_kernels(roi.NUMPY).items():
    KERNELS[_kind] = _forward  # RoI Align and Pool: runtime/backends/roi.py

for _kind in ("linear", "layernorm"):  # over the last axis of any rank: runtime/backends/rows.py
    KERNELS[_kind] = rows.forward(KERNELS[_kind])
