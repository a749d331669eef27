"""Optimisers, learning-rate schedules and gradient clipping, with PyTorch's update rules
(torch.optim.SGD, Adam, AdamW; torch.optim.lr_scheduler; torch.nn.utils.clip_grad_norm_).

Parameters and gradients are name -> array mappings (a model's ``parameters()`` and a
``Gradients.params``); the update happens in place, one fused Numba pass per tensor.
Optimiser state is a flat name -> array mapping too (``state_dict()``), so that it goes
into a checkpoint as ``.npz`` next to the weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from numba import njit, prange

from runtime.config import PARALLEL
from runtime.packing import written


def sgd_update(p, g, b, lr, momentum, dampening, weight_decay, nesterov, first):
    """One element of torch.optim.SGD's step: (new parameter, new momentum buffer; on the
    first step the buffer starts as the gradient). Plain Python, compiled into the CPU
    kernel below and into the CUDA backend's, so both do the same arithmetic."""
    d = g + weight_decay * p
    if momentum != 0.0:
        b = d if first else momentum * b + (1.0 - dampening) * d
        d = d + momentum * b if nesterov else b
    return p - lr * d, b


def adam_update(p, g, m, v, lr, beta1, beta2, eps, weight_decay, decoupled, c1, c2):
    """One element of torch.optim.Adam's (decoupled: AdamW's) step, with the bias
    corrections c1 = 1 - beta1^t and c2 = sqrt(1 - beta2^t): (parameter, m, v)."""
    d = g
    if decoupled:
        p = p * (1.0 - lr * weight_decay)
    elif weight_decay != 0.0:
        d = d + weight_decay * p
    m = m + (1.0 - beta1) * (d - m)
    v = beta2 * v + (1.0 - beta2) * d * d
    return p - lr / c1 * m / (math.sqrt(v) / c2 + eps), m, v


_sgd_update = njit(cache=True)(sgd_update)
_adam_update = njit(cache=True)(adam_update)


@njit(cache=True, **PARALLEL)
def sgd_kernel(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first):
    """torch.optim.SGD's single-tensor step on flattened arrays (buf unused without
    momentum)."""
    for i in prange(p.size):
        b = buf[i] if momentum != 0.0 else 0.0
        p[i], b = _sgd_update(p[i], g[i], b, lr, momentum, dampening, weight_decay, nesterov,
                              first)
        if momentum != 0.0:
            buf[i] = b


@njit(cache=True, **PARALLEL)
def adam_kernel(p, g, m, v, lr, beta1, beta2, eps, weight_decay, decoupled, step):
    """torch.optim.Adam's (decoupled: AdamW's) single-tensor step on flattened arrays."""
    c1 = 1.0 - beta1 ** step
    c2 = math.sqrt(1.0 - beta2 ** step)
    for i in prange(p.size):
        p[i], m[i], v[i] = _adam_update(p[i], g[i], m[i], v[i], lr, beta1, beta2, eps,
                                        weight_decay, decoupled, c1, c2)


def _flat_host(array, dtype) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=dtype).reshape(-1)


def _sum_squares_host(g: np.ndarray) -> float:
    flat = g.ravel()
    return float(np.dot(flat.astype(np.float64), flat))


def _scale_host(g: np.ndarray, coef: float) -> None:
    g *= g.dtype.type(coef)


@dataclass(frozen=True)
class UpdateKernels:
    """Where an optimiser's arithmetic runs: ``sgd`` and ``adam`` have the signatures of
    :func:`sgd_kernel` and :func:`adam_kernel` (flat arrays, updated in place);
    ``zeros_like`` makes state, ``flat(array, dtype)`` a flat contiguous view,
    ``to_host``/``to_device`` move state for checkpoints; ``sum_squares(g)`` (a float)
    and ``scale(g, coef)`` (in place) serve gradient clipping. ``HOST`` runs on the CPU;
    a device backend brings its own (the CUDA backend's keep everything on the GPU)."""

    sgd: Callable
    adam: Callable
    zeros_like: Callable
    flat: Callable
    to_host: Callable
    to_device: Callable
    sum_squares: Callable
    scale: Callable


HOST = UpdateKernels(sgd_kernel, adam_kernel, np.zeros_like, _flat_host, np.asarray,
                     np.array, _sum_squares_host, _scale_host)


class Optimizer:
    """Shared by the optimisers: the learning rate (set by a schedule), the step count,
    and state arrays per parameter, created on the first step, where the parameters are
    (``kernels``: the host's by default, a device backend's ``optim`` for its arrays)."""

    slots: tuple[str, ...] = ()

    def __init__(self, params: dict[str, Any], lr: float, kernels: UpdateKernels | None = None):
        if lr < 0:
            raise ValueError(f"the learning rate must be positive, got {lr}")
        self.params, self.lr, self.steps = params, float(lr), 0
        self.kernels = kernels or HOST
        self.state: dict[str, Any] = {}

    def _slot(self, name: str, slot: str):
        key = f"{name}.{slot}"
        if key not in self.state:
            self.state[key] = self.kernels.zeros_like(self.params[name])
        return self.state[key]

    def step(self, grads: dict[str, Any]) -> None:
        """One update of every parameter that has a gradient, in place."""
        self.steps += 1
        written()  # weights packed for the kernels are stale from here on
        for name, grad in grads.items():
            param = self.params[name]
            if isinstance(param, np.ndarray) and not param.flags.c_contiguous:
                raise ValueError(f"parameter '{name}' must be a contiguous array")
            self._update(name, param.reshape(-1), self.kernels.flat(grad, param.dtype))

    def state_dict(self) -> dict[str, np.ndarray]:
        """Name -> host array: the per-parameter state plus ``step`` and ``lr``."""
        return {**{k: self.kernels.to_host(v) for k, v in self.state.items()},
                "step": np.array(self.steps), "lr": np.array(self.lr)}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Take a ``state_dict()`` (from this backend or another: a checkpoint written on the
        CPU resumes on the GPU and the other way round)."""
        self.steps, self.lr = int(state["step"]), float(state["lr"])
        self.state = {k: self.kernels.to_device(np.array(v)) for k, v in state.items()
                      if k not in ("step", "lr")}


class SGD(Optimizer):
    slots = ("momentum_buffer",)

    def __init__(self, params, lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, kernels=None):
        super().__init__(params, lr, kernels)
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum needs a momentum and no dampening")
        self.momentum, self.dampening = momentum, dampening
        self.weight_decay, self.nesterov = weight_decay, nesterov

    def _update(self, name, p, g):
        first = f"{name}.momentum_buffer" not in self.state
        buf = self._slot(name, "momentum_buffer").reshape(-1) if self.momentum else p[:0]
        self.kernels.sgd(p, g, buf, self.lr, self.momentum, self.dampening, self.weight_decay,
                   self.nesterov, first)


class Adam(Optimizer):
    slots = ("exp_avg", "exp_avg_sq")

    decoupled = False

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, kernels=None):
        super().__init__(params, lr, kernels)
        self.beta1, self.beta2 = betas
        self.eps, self.weight_decay = eps, weight_decay

    def _update(self, name, p, g):
        m = self._slot(name, "exp_avg").reshape(-1)
        v = self._slot(name, "exp_avg_sq").reshape(-1)
        self.kernels.adam(p, g, m, v, self.lr, self.beta1, self.beta2, self.eps, self.weight_decay,
                    self.decoupled, self.steps)


class AdamW(Adam):
    """Adam with decoupled weight decay (PyTorch's default decay 0.01)."""

    decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01, kernels=None):
        super().__init__(params, lr, betas, eps, weight_decay, kernels)


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}


# ------------------------------------------------------------------------- schedules
def schedule_factor(kind: str, epoch: int, *, step_size: int = 30, gamma: float = 0.1,
                    milestones=(), total: int = 1, eta_min_factor: float = 0.0,
                    warmup: int = 0, warmup_start: float = 1 / 3) -> float:
    """The multiplier of the base learning rate at ``epoch`` (0-based), in closed form:
    ``step`` (StepLR), ``multistep`` (MultiStepLR), ``cosine`` (CosineAnnealingLR over
    ``total`` epochs down to ``eta_min_factor``, held there afterwards where PyTorch's
    would rise again), ``constant``; a linear warm-up (LinearLR from ``warmup_start``)
    over the first ``warmup`` epochs multiplies any of them."""
    if kind == "step":
        factor = gamma ** (epoch // step_size)
    elif kind == "multistep":
        factor = gamma ** sum(1 for m in milestones if epoch >= m)
    elif kind == "cosine":
        t = min(epoch, total)
        factor = eta_min_factor + (1 - eta_min_factor) * (1 + math.cos(math.pi * t / total)) / 2
    elif kind == "constant":
        factor = 1.0
    else:
        raise ValueError(f"unknown schedule '{kind}' (step, multistep, cosine, constant)")
    if warmup and epoch < warmup:
        factor *= warmup_start + (1 - warmup_start) * epoch / warmup
    return factor


def clip_grad_norm(grads: dict[str, Any], max_norm: float,
                   kernels: UpdateKernels | None = None) -> float:
    """Scale every gradient in place so that their joint L2 norm is at most ``max_norm``
    (as torch.nn.utils.clip_grad_norm_: coefficient max_norm / (norm + 1e-6), capped at
    1); returns the norm before clipping. ``kernels``: where the gradients are."""
    kernels = kernels or HOST
    total = math.sqrt(sum(kernels.sum_squares(g) for g in grads.values()))
    coef = min(max_norm / (total + 1e-6), 1.0)
    if coef < 1.0:
        for g in grads.values():
            kernels.scale(g, coef)
    return total
