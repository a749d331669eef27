"""The backend interface (tinygrad's pattern: a small core, backends as tables): a backend
is its forward and backward kernel tables, a context the kernels run in, and how arrays
move between the host and its device. The CPU backends' device is the host."""

from __future__ import annotations

import contextlib
import operator
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from runtime.train.losses import classification_step


def _same(array):
    return array


class HostClock:
    """Timestamps for profiling: ``mark()`` after the work to time was issued,
    ``seconds(a, b)`` between two marks once ``sync()`` has waited for the work. On the
    CPU the work is done when a kernel returns; a GPU backend's clock records events in
    its stream instead (the CUDA backend's)."""

    name = "host clock"

    def mark(self):
        return time.perf_counter()

    def sync(self) -> None:
        pass

    def seconds(self, start, end) -> float:
        return end - start


@dataclass(frozen=True)
class Backend:
    """``kernels[kind](op, xs, params, ctx) -> y``; ``backward[kind](op, xs, y, gy, params,
    ctx) -> (input grads, param grads)``; ``to_device``/``to_host`` move arrays (identity
    on the CPU); ``add`` sums two arrays on the device (gradients meeting where a value
    fans out); ``on_device(op)`` says whether an op runs on the device or falls back to
    the host (a layer type without device kernels yet); ``optim``: the optimiser kernels
    for its arrays (``runtime.train.optim.UpdateKernels``; None: the host's);
    ``classify(logits, labels, label_smoothing=)``: a training step's loss, gradient and
    count of correct predictions (``runtime.train.losses.classification_step`` on the host;
    a device backend's loss and count may be numbers still on the device, which ``float``
    and ``int`` read); ``stage_targets(labels)``: send a batch's labels to the device
    before its forward pass, for ``classify`` (nothing on the host);
    ``clock()``: a :class:`HostClock`-like timer for profiles; ``kernel_times(clock)``: a
    context manager timing each kernel the backend launches meanwhile (the CUDA
    backend's, ``cuda/timing.py``; None where kernels are not told apart);
    ``device_name()``: what runs the kernels; ``algorithm(op, batch, train)``: the
    algorithm the backend runs an op with at that batch size and mode, and why, as
    ``(name, reason)`` (None where an op has one way); ``chains(program, batch, dtype)``:
    groups of consecutive ops that an inference pass runs as one kernel, ``chain_kernel(chain, xs, params, ctx)``, at the
    step of the group's first op (each group has ``ops``, ``inputs``, ``output`` and
    ``name``: the CPU's inverted-residual chains, conv_chain.py);
    ``channels_last(program, batch, skip)``: the values an inference pass at that batch
    size keeps channels-last, (N, H, W, C), the ops named in ``skip`` (chained) aside
    (the CPU's layout plan, layout.py; the kernels find it in ``KernelContext``)."""

    name: str
    kernels: dict[str, Callable]
    backward: dict[str, Callable]
    scope: Callable[[], Any] = contextlib.nullcontext
    to_device: Callable[[np.ndarray], Any] = _same
    to_host: Callable[[Any], np.ndarray] = _same
    on_device: Callable[[Any], bool] = field(default=lambda op: True)
    add: Callable[[Any, Any], Any] = operator.add
    optim: Any = None
    classify: Callable = classification_step
    stage_targets: Callable[[np.ndarray], None] = field(default=lambda target: None)
    clock: Callable[[], Any] = HostClock
    kernel_times: Callable[[Any], Any] | None = None
    device_name: Callable[[], str] = field(default=lambda: "the CPU")
    algorithm: Callable[[Any, int, bool], tuple[str, str] | None] = field(
        default=lambda op, batch, train=False: None)
    chains: Callable[[Any, int, Any], list] = field(default=lambda program, batch, dtype: [])
    chain_kernel: Callable | None = None
    channels_last: Callable[[Any, int, frozenset], frozenset] = field(
        default=lambda program, batch, skip: frozenset())
