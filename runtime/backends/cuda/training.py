"""CUDA kernels that training needs, with their launches: batch-norm batch statistics
and their backward pass, dropout masks drawn on the device, the softmax cross-entropy of
a training step, and the optimisers' updates (``UPDATE``, the backend's
``runtime.train.optim.UpdateKernels``).

- batch statistics: two sweeps (the mean, then the mean squared deviation from it: no
  cancellation), each a shared-memory tree reduction in float64 split among several
  blocks per channel where channels are few and large (``kernels.channel_partials``),
  then one thread per channel adds its blocks' partial sums and updates the running
  statistics in place (PyTorch's momentum rule, the unbiased variance) and counts the
  batch in ``num_batches_tracked``.
- batch-norm backward with batch statistics: the channel sums of ``gy`` and
  ``gy * x_hat`` the same way, then ``gx = w / std / m * (m gy - sum gy - x_hat sum gy
  x_hat)`` element by element.
- dropout masks: a counter-based hash of (seed, element index) gives each element its
  uniform number (Wellons' ``lowbias32``), so a mask needs no generator state on the
  device; the seed comes from the model's NumPy generator, so runs are reproducible and
  a checkpoint resumes the same stream.
- cross-entropy: one block per sample (row of logits): the row's maximum, the sum of
  exponentials and the target-weighted sums by tree reductions; it writes the row's
  loss, its gradient ``(softmax * sum(t) - t) / N`` and whether its top class is the
  label. Targets are class indices (with label smoothing) or class probabilities (mixup,
  cutmix); per-pixel logits take one thread per pixel. The losses and hits are summed on
  the device and come back together, when the loop first reads one, after it has queued
  the backward pass and the update (:class:`DeviceSums`): a training step waits for the
  device once. The labels go up before the forward pass (:func:`stage`), so their copy
  does not wait for it either.
- SGD (momentum, dampening, Nesterov, weight decay) and Adam/AdamW: one thread per
  element, running the same per-element functions as the CPU kernels
  (``runtime.train.optim.sgd_update``, ``adam_update``), compiled for the device.
"""

from __future__ import annotations

import math

import numpy as np
from numba import float32, float64

from runtime.backends.cuda.kernels import (
    ELEMENTWISE_BLOCK,
    _blocks,
    _launch,
    _launch_planes,
    absent,
    axis_view,
    block_sum,
    channel_partials,
    channel_sums,
    cuda,
    empty,
    is_device,
    plane_range,
    row_sum,
    zeros,
)
from runtime.backends.cuda.layers import batchnorm_grad_sums
from runtime.train.losses import classification_step
from runtime.train import optim
from runtime.train.optim import UpdateKernels

_MASK32 = 0xFFFFFFFF


# --------------------------------------------------------------------------- batch norm
@cuda.jit(cache=True)
def finish_stats_kernel(partial, centre, mean, var, running_mean, running_var, tracked,
                        momentum, update, count):
    """Per channel: the biased variance from the partial sums of squared distances to the
    mean ``centre`` (float64); with ``update``, the running statistics move towards them
    (unbiased variance) and the batch is counted."""
    for ch in range(cuda.grid(1), mean.size, cuda.gridsize(1)):
        mu, v = centre[ch], row_sum(partial, ch) / count
        mean[ch], var[ch] = mu, v
        if update:
            running_mean[ch] = (1.0 - momentum) * running_mean[ch] + momentum * mu
            running_var[ch] = ((1.0 - momentum) * running_var[ch]
                               + momentum * v * count / max(count - 1, 1))
            if ch == 0:
                tracked[0] += 1


@cuda.jit(cache=True)
def batchnorm_train_gx_kernel(x, gy, gx, s0, s1, mean, var, weight, eps):
    """gx = k (count gy - s0 - x_hat s1), k = weight / std / count, over (N, C, M) views,
    from the channel sums s0 (of gy) and s1 (of gy * x_hat): a plane kernel, each
    channel's constants worked out once per plane. The sums stay float64: the difference
    cancels, and a float32 s0 would shift every gx of the channel by the same error,
    which the layers before amplify (ResNet-18's first stage at 224x224: 1e-2 off in
    training where float64 sums give 1e-5)."""
    n, c, m = x.shape
    count = n * m
    first, step, plane0, planes = plane_range()
    for plane in range(plane0, n * c, planes):
        b, ch = plane // c, plane % c
        inv, mu, g0, g1 = 1.0 / math.sqrt(var[ch] + eps), mean[ch], s0[ch], s1[ch]
        k = (weight[ch] if weight.size else 1.0) * inv / count
        for p in range(first, m, step):
            xhat = (x[b, ch, p] - mu) * inv
            gx[b, ch, p] = k * (count * gy[b, ch, p] - g0 - xhat * g1)


def batch_stats(x, running_mean=None, running_var=None, tracked=None, momentum: float = 0.1):
    """(mean, biased var) per channel on the device; given the running buffers, they are
    updated in place (and ``tracked``, the 0-d batch count, incremented). Two sweeps (the
    mean, then the mean squared distance from it: no cancellation), each split among
    blocks per channel (``kernels.channel_partials``), float64 throughout."""
    view = axis_view(x)
    n, c, m = view.shape
    centre = channel_sums(view, 1.0 / (n * m), np.float64)
    partial = channel_partials(view, centre)
    mean, var = empty(c), empty(c)
    update = running_mean is not None
    _launch(finish_stats_kernel, c, partial, centre, mean, var,
            running_mean if update else absent(), running_var if update else absent(),
            tracked.reshape(1) if update else cuda.device_array(1, dtype=np.int64),
            momentum, update, n * m)
    return mean, var


def batchnorm_train_backward(x, gy, mean, var, weight, eps: float):
    """(gx, g_weight, g_bias) of batch norm with batch statistics: the channel sums of gy
    and gy * x_hat split among blocks per channel (``layers.batchnorm_grad_sums``), then
    gx element by element."""
    view, gy_view = axis_view(x), axis_view(gy)
    g_weight, g_bias, s0, s1 = batchnorm_grad_sums(view, gy_view, mean, var, weight, eps,
                                                   keep=True)
    gx = empty(view.shape)
    n, c, m = view.shape
    _launch_planes(batchnorm_train_gx_kernel, n * c, m, view, gy_view, gx, s0, s1, mean,
                   var, absent() if weight is None else weight, eps)
    return gx.reshape(x.shape), g_weight, g_bias


# --------------------------------------------------------------------------- dropout
@cuda.jit(device=True, inline=True)
def uniform(seed, i):
    """A uniform number in [0, 1) for element ``i`` of the stream ``seed``: Wellons'
    lowbias32 hash of the two, kept to 32 bits after every step (a 64-bit product wraps
    on the device and is exact in the simulator: the low 32 bits agree)."""
    v = (i * 0x9E3779B9 + seed) & _MASK32
    v ^= v >> 16
    v = (v * 0x7FEB352D) & _MASK32
    v ^= v >> 15
    v = (v * 0x846CA68B) & _MASK32
    v ^= v >> 16
    return (v >> 8) * (1.0 / 16777216.0)


@cuda.jit(cache=True)
def dropout_mask_kernel(scale, seed, rate, keep_scale):
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, scale.size, stride):
        scale[i] = keep_scale if uniform(seed, i) >= rate else 0.0


def dropout_scale(shape, rate: float, rng: np.random.Generator):
    """The dropout multiplier (0 or 1 / (1 - rate) per element) of ``shape``, drawn on the
    device; ``rng`` (the model's generator) gives the seed."""
    size = math.prod(shape)
    scale = empty(size)
    seed = int(rng.integers(0, 2**32))
    _launch(dropout_mask_kernel, size, scale, seed, rate, 1.0 / (1.0 - rate))
    return scale.reshape(shape)


# --------------------------------------------------------------------------- cross-entropy
@cuda.jit(device=True, inline=True)
def _block_max(partial, t, value):
    partial[t] = value
    cuda.syncthreads()
    step = ELEMENTWISE_BLOCK // 2
    while step > 0:
        if t < step:
            partial[t] = max(partial[t], partial[t + step])
        cuda.syncthreads()
        step //= 2
    return partial[0]


@cuda.jit(device=True, inline=True)
def _target(labels, soft, r, q, smoothing, c):
    hot = soft[r, q] if soft.size else (1.0 if labels[r] == q else 0.0)
    return hot * (1.0 - smoothing) + smoothing / c


@cuda.jit(cache=True)
def cross_entropy_kernel(z, labels, soft, smoothing, losses, hits, grad):
    """One block per row of logits ``z`` (N, C): loss_r = lse * sum(t) - sum(t z),
    grad = (softmax * sum(t) - t) / N, hit_r = 1 when the row's first maximum is its
    label (for class probabilities ``soft``: their most likely class, given as label)."""
    n, c = z.shape
    r, t = cuda.blockIdx.x, cuda.threadIdx.x
    maxima = cuda.shared.array(ELEMENTWISE_BLOCK, float32)
    exps = cuda.shared.array(ELEMENTWISE_BLOCK, float64)
    masses = cuda.shared.array(ELEMENTWISE_BLOCK, float64)
    dots = cuda.shared.array(ELEMENTWISE_BLOCK, float64)
    best = -math.inf
    for q in range(t, c, ELEMENTWISE_BLOCK):
        best = max(best, z[r, q])
    best = _block_max(maxima, t, best)
    s, mass, dot = float64(0.0), float64(0.0), float64(0.0)
    for q in range(t, c, ELEMENTWISE_BLOCK):
        s += math.exp(z[r, q] - best)
        w = _target(labels, soft, r, q, smoothing, c)
        mass += w
        dot += w * z[r, q]
    s = block_sum(exps, t, s)
    mass = block_sum(masses, t, mass)
    dot = block_sum(dots, t, dot)
    lse = best + math.log(s)
    for q in range(t, c, ELEMENTWISE_BLOCK):
        p = math.exp(z[r, q] - lse)
        grad[r, q] = (p * mass - _target(labels, soft, r, q, smoothing, c)) / n
    if t == 0:
        losses[r] = lse * mass - dot
        top = 0
        for q in range(c):  # the first maximum, as NumPy's argmax
            if z[r, q] == best:
                top = q
                break
        hits[r] = 1.0 if top == labels[r] else 0.0


@cuda.jit(cache=True)
def pixel_cross_entropy_kernel(z, labels, smoothing, losses, hits, grad):
    """Per-pixel logits (N, C, HW) with class indices (N * HW): one thread per pixel walks
    its C classes; the mean over all pixels."""
    n, c, hw = z.shape
    scale = 1.0 / (n * hw)
    for e in range(cuda.grid(1), n * hw, cuda.gridsize(1)):
        b, p = e // hw, e % hw
        label = labels[e]
        best, top, total = z[b, 0, p], 0, 0.0
        for q in range(c):
            total += z[b, q, p]
            if z[b, q, p] > best:
                best, top = z[b, q, p], q
        s = 0.0
        for q in range(c):
            s += math.exp(z[b, q, p] - best)
        lse = best + math.log(s)
        losses[e] = lse - (1.0 - smoothing) * z[b, label, p] - smoothing / c * total
        hits[e] = 1.0 if top == label else 0.0
        for q in range(c):
            t = (1.0 - smoothing if q == label else 0.0) + smoothing / c
            grad[b, q, p] = (math.exp(z[b, q, p] - lse) - t) * scale


class DeviceSums:
    """Sums reduced on the device, read back together the first time one is asked for:
    one copy to the host (and so one wait for the device) for all of them."""

    def __init__(self, partials, count: int):
        self._partials, self._count, self._values = partials, count, None

    def value(self, index: int) -> float:
        if self._values is None:
            host = self._partials.copy_to_host().astype(np.float64)
            self._values = host.reshape(self._count, -1).sum(axis=1)
        return float(self._values[index])


class DeviceNumber:
    """One of :class:`DeviceSums`' sums times ``scale``, still on the device: ``float()``
    (or ``int()``, rounded) reads it, waiting for the work queued before."""

    __slots__ = ("_sums", "_index", "_scale")

    def __init__(self, sums: DeviceSums, index: int, scale: float = 1.0):
        self._sums, self._index, self._scale = sums, index, scale

    def __float__(self) -> float:
        return self._sums.value(self._index) * self._scale

    def __int__(self) -> int:
        return int(round(float(self)))

    def __repr__(self) -> str:
        return f"DeviceNumber({float(self)!r})"


def device_sums(*arrays, square: bool = False) -> DeviceSums:
    """The sums (of squares) of device arrays, reduced on the device, each into its own
    row of partial sums (float64) of one buffer, read back together."""
    blocks = max(_blocks(a.size) for a in arrays)
    partials = cuda.device_array((len(arrays), blocks), dtype=np.float64)
    for row, a in enumerate(arrays):
        sum_kernel[blocks, ELEMENTWISE_BLOCK](a.reshape(a.size), partials[row], square)
    return DeviceSums(partials, len(arrays))


def _labels(target: np.ndarray, soft: bool) -> np.ndarray:
    """The class index per row or pixel that the loss kernels take (a soft target's most
    likely class, for the hits)."""
    return (target.argmax(axis=1) if soft else target).astype(np.int64).reshape(-1)


_STAGED: list = []  # [(target, soft, labels, probabilities)] on the device: the last batch


def _upload(target: np.ndarray, soft: bool) -> tuple:
    """A batch's targets as the loss kernels take them on the device: the class index
    per row or pixel, and a soft target's probabilities (None for class indices)."""
    return (cuda.to_device(_labels(target, soft)),
            cuda.to_device(target.astype(np.float32)) if soft else None)


def stage(target) -> None:
    """Send a batch's targets to the device now, before its forward pass is queued: a
    copy from the host waits for the work queued before it, so made after the forward
    pass it would wait for that pass. :func:`classify` takes them when it is given the
    same target array (class probabilities: one row per image)."""
    target = np.asarray(target)
    soft = target.ndim == 2 and np.issubdtype(target.dtype, np.floating)
    _STAGED[:] = [(target, soft, *_upload(target, soft))]


def _targets(target: np.ndarray, soft: bool) -> tuple:
    for staged, staged_soft, labels, probs in _STAGED:
        if staged is target and staged_soft == soft:
            return labels, probs
    return _upload(target, soft)


def classify(logits, target, *, label_smoothing: float = 0.0):
    """``runtime.train.losses.classification_step`` on the device, for (N, C) logits with class
    indices or probabilities and per-pixel (N, C, H, W) logits with class indices: the
    gradient stays on the device; the mean loss and the number of hits are two sums
    reduced on the device (:class:`DeviceNumber`), read back together when first asked
    for. Anything else (an ignore index, per-pixel probabilities) goes through the
    host's, whose numbers are plain."""
    target = np.asarray(target)
    shape = tuple(logits.shape)
    n, c = shape[:2]
    soft = target.shape == shape and np.issubdtype(target.dtype, np.floating)
    per_pixel = len(shape) > 2
    if not soft and target.shape != (n,) + shape[2:]:
        raise ValueError(f"targets of shape {target.shape} do not fit logits of shape "
                         f"{shape}: expected {(n,) + shape[2:]}")
    if (soft and per_pixel) or (not soft and target.size and target.min() < 0):
        # per-pixel probabilities, or ignored labels: the host's loss (which also says
        # what is wrong with a label that is neither a class nor the ignore index)
        loss, grad, hits = classification_step(logits.copy_to_host(), target,
                                               label_smoothing=label_smoothing)
        return loss, cuda.to_device(grad), hits
    if not soft and target.size and target.max() >= c:
        raise ValueError(f"class labels must lie in 0..{c - 1}; got "
                         f"{target.min()}..{target.max()}")
    labels, probs = _targets(target, soft)
    rows = labels.size
    losses, hits = empty(rows), empty(rows)
    grad = empty(shape)
    if per_pixel:
        view = (n, c, rows // n)
        _launch(pixel_cross_entropy_kernel, rows, logits.reshape(view), labels,
                label_smoothing, losses, hits, grad.reshape(view))
    else:
        probs = probs if soft else absent().reshape(0, 1)
        cross_entropy_kernel[n, ELEMENTWISE_BLOCK](logits, labels, probs, label_smoothing,
                                                   losses, hits, grad)
    totals = device_sums(losses, hits)
    return DeviceNumber(totals, 0, 1.0 / rows), grad, DeviceNumber(totals, 1)


# --------------------------------------------------------------------------- optimisers
_sgd_update = cuda.jit(device=True, inline=True)(optim.sgd_update)
_adam_update = cuda.jit(device=True, inline=True)(optim.adam_update)


@cuda.jit(cache=True)
def sgd_kernel(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first):
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        b = buf[i] if momentum != 0.0 else 0.0
        p[i], b = _sgd_update(p[i], g[i], b, lr, momentum, dampening, weight_decay, nesterov,
                              first)
        if momentum != 0.0:
            buf[i] = b


@cuda.jit(cache=True)
def adam_kernel(p, g, m, v, lr, beta1, beta2, eps, weight_decay, decoupled, c1, c2):
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        p[i], m[i], v[i] = _adam_update(p[i], g[i], m[i], v[i], lr, beta1, beta2, eps,
                                        weight_decay, decoupled, c1, c2)


@cuda.jit(cache=True)
def sum_kernel(a, partial, square):
    """partial[block] = the sum (of squares, with ``square``) of the block's grid-stride
    share of ``a``; the host adds the few partial sums."""
    sums = cuda.shared.array(ELEMENTWISE_BLOCK, float64)
    t = cuda.threadIdx.x
    total = float64(0.0)
    for i in range(cuda.grid(1), a.size, cuda.gridsize(1)):
        total += a[i] * a[i] if square else a[i]
    total = block_sum(sums, t, total)
    if t == 0:
        partial[cuda.blockIdx.x] = total


@cuda.jit(cache=True)
def scale_inplace_kernel(a, coef):
    for i in range(cuda.grid(1), a.size, cuda.gridsize(1)):
        a[i] *= coef


def _sgd(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first):
    _launch(sgd_kernel, p.size, p, g, buf if buf.size else absent(), lr, momentum, dampening,
            weight_decay, nesterov, first)


def _adam(p, g, m, v, lr, beta1, beta2, eps, weight_decay, decoupled, step):
    c1, c2 = 1.0 - beta1 ** step, math.sqrt(1.0 - beta2 ** step)
    _launch(adam_kernel, p.size, p, g, m, v, lr, beta1, beta2, eps, weight_decay, decoupled,
            c1, c2)


def _zeros_like(a):
    return zeros(a.shape, a.dtype)


def _flat(a, dtype):
    if not is_device(a):
        a = cuda.to_device(np.require(a, dtype=dtype, requirements="C"))
    return a.reshape(a.size)


def _sum_squares(g) -> float:
    return device_sums(g, square=True).value(0)


def _scale(g, coef: float) -> None:
    _launch(scale_inplace_kernel, g.size, g.reshape(g.size), coef)


UPDATE = UpdateKernels(_sgd, _adam, _zeros_like, _flat, lambda a: a.copy_to_host(),
                       lambda a: cuda.to_device(np.require(a, requirements="C")), _sum_squares,
                       _scale)
