"""Fused epilogues, shared by the backends: ``y = activation(core(x) + residual)``.

A conv or linear op may carry a residual (its second input) and an ``activation``
attribute, ``(name, ((attribute, value), ...))``, written by the compiler's fusion passes.
Backends apply them inside their kernels where they can; these helpers hold what every
backend does the same way: reading the attribute, keeping the value before the activation
for the backward pass, and the backward pass itself (activation, then the residual's
gradient, which is the same as the core's output gradient).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from runtime.context import KernelContext


def activation_of(op) -> tuple[str, dict] | None:
    """(name, attributes) of an op's fused activation, or None."""
    value = op.attrs.get("activation")
    return None if value is None else (value[0], dict(value[1]))


FROM_OUTPUT = ("relu",)
"""Fused activations whose derivative the backward pass reads off the output (relu's:
y > 0 exactly where x > 0), so that nothing before them is kept and the kernel applies
them in training too."""


def needs_pre_activation(act: tuple[str, dict] | None, ctx: KernelContext) -> bool:
    """Whether a kernel must keep the value before its fused activation ``act`` (and so
    apply the activation after it, not in its own loops): a tape is kept and the
    activation's derivative needs its input."""
    return act is not None and ctx.keep and act[0] not in FROM_OUTPUT


def keep_pre_activation(op, pre: np.ndarray, ctx: KernelContext) -> None:
    """Save the value before a fused activation when the forward pass keeps a tape (and
    the backward pass needs it: not for FROM_OUTPUT activations)."""
    act = activation_of(op)
    if ctx.keep and (act is None or act[0] not in FROM_OUTPUT):
        ctx.pre_activation[op.output] = pre


def pre_activation(op, ctx: KernelContext) -> np.ndarray:
    saved = ctx.pre_activation
    if op.output not in saved:
        raise RuntimeError(f"'{op.name}' has a fused activation and its forward pass kept no "
                           "tape: call model(x), not predict(x), before backward()")
    return saved[op.output]


def fused_backward(core: Callable, activation_grad: Callable) -> Callable:
    """The backward kernel of an op with an epilogue, from its core's backward kernel and
    ``activation_grad(name, attrs, pre, y, gy) -> g_pre``."""

    def backward(op, xs, y, gy, p, ctx):
        act = activation_of(op)
        if act is not None:
            pre = y if act[0] in FROM_OUTPUT else pre_activation(op, ctx)
            gy = activation_grad(act[0], act[1], pre, y, gy)
        gxs, grads = core(op, xs[:1], y, gy, p, ctx)
        return (list(gxs) + [gy] if len(xs) > 1 else gxs), grads

    return backward
