"""The backend interface (tinygrad's pattern: a small core, backends as tables): a backend
is its forward and backward kernel tables, a context the kernels run in, and how arrays
move between the host and its device. The CPU backends' device is the host."""

from __future__ import annotations

import contextlib
import operator
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from runtime.losses import classification_step


def _same(array):
    return array


@dataclass(frozen=True)
class Backend:
    """``kernels[kind](op, xs, params, ctx) -> y``; ``backward[kind](op, xs, y, gy, params,
    ctx) -> (input grads, param grads)``; ``to_device``/``to_host`` move arrays (identity
    on the CPU); ``add`` sums two arrays on the device (gradients meeting where a value
    fans out); ``trains``: whether its training mode is built (batch statistics, masks);
    ``on_device(op)`` says whether an op runs on the device or falls back to
    the host (the CUDA backend while kernels are being ported); ``optim``: the optimiser
    kernels for its arrays (``runtime.optim.UpdateKernels``; None: the host's);
    ``classify(logits, labels, label_smoothing=)``: a training step's loss, gradient and
    predicted classes (``runtime.losses.classification_step`` on the host)."""

    name: str
    kernels: dict[str, Callable]
    backward: dict[str, Callable]
    scope: Callable[[], Any] = contextlib.nullcontext
    to_device: Callable[[np.ndarray], Any] = _same
    to_host: Callable[[Any], np.ndarray] = _same
    on_device: Callable[[Any], bool] = field(default=lambda op: True)
    add: Callable[[Any, Any], Any] = operator.add
    trains: bool = True
    optim: Any = None
    classify: Callable = classification_step
