"""The CUDA backend's kernel tables: a device kernel for every layer type, forward and
backward (``kernels.py``, ``layers.py``, ``tensor.py``, ``resample.py``, ``training.py``).
A layer type added to the CPU backend without CUDA kernels runs through the host fallback
(the inputs to the host, the CPU kernel, the result back; ``on_device`` says which).
Parameters are uploaded once and stay on the device, as do values between ops, gradients
and optimiser state; forward passes place their results in the model's memory-plan
buffers. Training runs on the device: batch statistics, dropout masks, the loss of a step
and the optimiser updates are kernels (``BACKEND.optim``, ``BACKEND.classify``).
"""

from __future__ import annotations

import math

from runtime.backends import cpu
from runtime.backends.base import Backend
from runtime.backends.cuda import blas
from runtime.backends.cuda import kernels as K
from runtime.backends.cuda import training
from runtime.backends.cuda.timing import EventClock, kernel_times
from runtime.backends.cuda.kernels import to_device, to_host  # noqa: F401 (the backend's)
from runtime.backends.cuda.ops import DEVICE_BACKWARD, DEVICE_KERNELS, algorithm

cuda = K.cuda


def _host_forward(kind: str):
    host = cpu.KERNELS[kind]

    def run(op, xs, p, ctx):
        y = host(op, [to_host(x) for x in xs], {k: to_host(v) for k, v in p.items()}, ctx)
        return to_device(y)

    return run


def _host_backward(kind: str):
    host = cpu.BACKWARD[kind]

    def run(op, xs, y, gy, p, ctx):
        gxs, gps = host(op, [to_host(x) for x in xs], to_host(y), to_host(gy),
                        {k: to_host(v) for k, v in p.items()}, ctx)
        return ([None if g is None else to_device(g) for g in gxs],
                {k: to_device(g) for k, g in gps.items()})

    return run


KERNELS = {kind: _host_forward(kind) for kind in cpu.KERNELS} | DEVICE_KERNELS
BACKWARD = {kind: _host_backward(kind) for kind in cpu.BACKWARD} | DEVICE_BACKWARD

DEVICE_OPS = frozenset(DEVICE_KERNELS)
"""The layer types with device kernels; the others run through the host fallback."""

HOST_FALLBACK: dict[str, str] = {}
"""Layer types that run through the host fallback on purpose, and why (none today)."""


def on_device(op) -> bool:
    """Whether an op runs on the device (else through the host fallback: a layer type
    added to the CPU backend runs on CUDA through the host until it has its kernels)."""
    return op.kind in DEVICE_OPS


def _planned(kernel):
    """Run an op's kernel with its result placed where the memory plan puts it
    (``ctx.plan``, from the model): one device buffer per model and kind of pass holds
    the activations, reused from pass to pass. The kernel's host function asks for its
    output with ``kernels.result``; an output that lands elsewhere is noted in
    ``ctx.unplaced``."""
    def run(op, xs, p, ctx):
        plan = ctx.plan
        if plan is None or op.view or op.output in ctx.unplanned:
            return kernel(op, xs, p, ctx)
        arena = K.reserve(*ctx.arena, plan.arena_bytes)
        shape = (ctx.batch * op.items,) + tuple(op.out_shape)
        start = plan.offsets[op.output] // 4
        room = arena[start:start + math.prod(shape)]
        with K.placing(shape, room):
            y = kernel(op, xs, p, ctx)
        if blas.address(y) != blas.address(room):
            ctx.unplaced.append(op.output)
        return y
    return run


KERNELS = {kind: _planned(kernel) for kind, kernel in KERNELS.items()}


def device_name() -> str:
    if K.SIMULATED:
        return "the CUDA simulator"
    name = cuda.get_current_device().name
    name = name.decode() if isinstance(name, bytes) else str(name)
    return f"{name}; GEMMs: {K.gemm_library()[1]}"


BACKEND = Backend("cuda", KERNELS, BACKWARD, cpu.scope, to_device, to_host, on_device, K.add,
                  optim=training.UPDATE, classify=training.classify,
                  stage_targets=training.stage,
                  clock=EventClock, kernel_times=kernel_times, device_name=device_name,
                  algorithm=algorithm)
