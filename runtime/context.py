"""What a kernel may read and write besides its inputs and parameters: one
:class:`KernelContext` per pass over the program (a forward pass and the backward pass
that follows it share one).

Kernels are ``forward(op, xs, params, ctx)`` and ``backward(op, xs, y, gy, params, ctx)``;
``ctx`` tells them the mode (training or inference), gives them random numbers, and
carries what a forward pass keeps for its backward pass (keyed by the op's output name).
A device backend also finds there where the memory plan puts each result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runtime.packing import Packs


@dataclass
class KernelContext:
    """The state of one pass.

    Attributes
    ----------
    train : training mode: batch norm uses and updates batch statistics, dropout drops.
    rng : the generator dropout and stochastic depth draw their masks from.
    keep : the pass keeps what backward needs (a forward pass for training or gradients;
        ``predict`` keeps nothing).
    sync_bn : in a data-parallel job with synchronised batch norm, the
        ``runtime.train.distributed.SyncBatchNorm`` that combines the ranks' statistics.
    saved : output name -> what the op's backward needs (dropout's scaled mask).
    indices : output name -> where a max pool found each maximum (for its backward and
        for max unpooling).
    channels_last : the values an inference pass keeps channels-last, (N, H, W, C): the
        CPU's layout plan (runtime/backends/cpu/layout.py); the kernels that read or write
        one know it by name.
    positions : the max pools' outputs whose positions an op of the pass reads (max
        unpooling); a pass that keeps nothing for backward records no others.
    batch_stats : output name -> a batch norm's batch statistics in training.
    pre_activation : output name -> a fused conv or linear's value before its activation.
    plan : a device backend's memory plan (``runtime.memory.MemoryPlan``) for this pass,
        None on the host (NumPy allocates).
    batch : the batch size the plan was made for.
    arena : ``(buffers, kind)``: where the plan's device buffer for this kind of pass is
        kept (one per model and kind).
    unplanned : outputs that must not live in the plan's buffer (a forward pass's results,
        handed to the caller).
    unplaced : planned outputs that a device kernel left outside the plan's buffer (each
        is correct, in memory of its own; the tests hold this list empty).
    packs : weights repacked for the kernels (``runtime.packing.Packs``): the model's own,
        kept from pass to pass while the parameters do not change.
    plans : decisions a kernel made once for an op and keeps for the passes after it (the
        CPU's depthwise and 1x1 convs: ``conv._plan``), keyed by the kernel: the model's
        own, as ``packs``.
    input_grads : whether the backward kernel now running must compute its inputs'
        gradients: False for an op fed only by the network's inputs when the caller
        asked for no input gradients (a training step), so that it may return None for
        them (a stem conv's input gradient is most of its backward pass).
    """

    train: bool = False
    rng: np.random.Generator | None = None
    keep: bool = False
    sync_bn: Any = None
    saved: dict[str, Any] = field(default_factory=dict)
    indices: dict[str, Any] = field(default_factory=dict)
    positions: frozenset[str] = frozenset()
    channels_last: frozenset[str] = frozenset()
    batch_stats: dict[str, Any] = field(default_factory=dict)
    pre_activation: dict[str, Any] = field(default_factory=dict)
    plan: Any = None
    batch: int = 0
    arena: tuple | None = None
    unplanned: set[str] = field(default_factory=set)
    unplaced: list[str] = field(default_factory=list)
    packs: Packs = field(default_factory=Packs)
    plans: dict = field(default_factory=dict)

    def planned(self, op, key, make):
        """``make()``, made for ``op`` the first time this ``key`` (which holds ``id(op)``)
        is asked for and kept in ``plans`` for the passes after."""
        hit = self.plans.get(key)
        if hit is None or hit[0] is not op:
            if len(self.plans) > 10000:  # many batch sizes: start again
                self.plans.clear()
            hit = self.plans[key] = (op, make())
        return hit[1]
    input_grads: bool = True
