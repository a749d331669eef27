"""Gradient averaging across ranks, overlapped with the backward pass, and the state
every rank must share (buffers, weights, optimiser state)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from runtime.train.distributed.world import World

@dataclass
class _Bucket:
    names: list[str]
    offsets: list[int]
    sizes: list[int]
    flat: np.ndarray
    waiting: set = field(default_factory=set)
    request: object = None


class GradientReducer:
    """Average the gradients of the parameters ``shapes`` (name -> shape, in the order the
    backward pass finishes them) over the ranks, in buckets of about ``bucket_bytes``.

    Per step: :meth:`begin` with this rank's share of the global batch, :meth:`ready` as
    each gradient is final (``Model.backward(on_grad=...)``), :meth:`finish` for the
    averaged gradients. ``to_host`` moves a gradient off a device (a GPU backend's);
    ``comm_s`` / ``wait_s`` add up the seconds spent in MPI calls / waiting at the end of
    the backward pass (the communication the backward pass did not hide)."""

    def __init__(self, world: World, shapes: dict[str, tuple], *, dtype=np.float32,
                 bucket_bytes: int = 1 << 20, to_host=np.asarray):
        from mpi4py import MPI

        self._mpi, self.world, self.to_host = MPI, world, to_host
        self.shapes = dict(shapes)
        self.buckets: list[_Bucket] = []
        itemsize = np.dtype(dtype).itemsize
        names: list[str] = []
        filled = 0
        for name in self.shapes:  # a bucket closes once it holds bucket_bytes or more
            names.append(name)
            filled += int(np.prod(self.shapes[name])) * itemsize
            if filled >= bucket_bytes:
                self._add(names, dtype)
                names, filled = [], 0
        if names:
            self._add(names, dtype)
        self._where = {n: (b, i) for b in self.buckets for i, n in enumerate(b.names)}
        self.comm_s = self.wait_s = 0.0

    def _add(self, names: list[str], dtype) -> None:
        sizes = [int(np.prod(self.shapes[n])) for n in names]
        offsets = [0, *np.cumsum(sizes)[:-1].tolist()]
        self.buckets.append(_Bucket(list(names), offsets, sizes, np.zeros(sum(sizes), dtype)))

    def begin(self, weight: float) -> None:
        self.weight, self._seen, self._started = weight, set(), 0
        for bucket in self.buckets:
            bucket.waiting = set(bucket.names)

    def ready(self, name: str, grad) -> None:
        where = self._where.get(name)
        if where is None:  # a parameter that does not train now (frozen)
            return
        bucket, i = where
        start = bucket.offsets[i]
        np.multiply(self.to_host(grad).reshape(-1), self.weight,
                    out=bucket.flat[start:start + bucket.sizes[i]])
        self._seen.add(name)
        bucket.waiting.discard(name)
        began = time.perf_counter()
        # buckets start in order (every rank starts the same collectives in the same order)
        while self._started < len(self.buckets) and not self.buckets[self._started].waiting:
            self._start(self.buckets[self._started])
            self._started += 1
        active = [b.request for b in self.buckets[:self._started] if b.request is not None]
        if active:
            self._mpi.Request.Testall(active)  # lets the library move the data on
        self.comm_s += time.perf_counter() - began

    def _start(self, bucket: _Bucket) -> None:
        bucket.request = self.world.comm.Iallreduce(self._mpi.IN_PLACE, bucket.flat)

    def finish(self) -> dict[str, np.ndarray]:
        """The averaged gradients (of the parameters that had one on this rank: the same
        on every rank), as views into the buckets, valid until the next :meth:`begin`."""
        began = time.perf_counter()
        for bucket in self.buckets[self._started:]:  # gradients no op produced stay 0
            for name in bucket.waiting:
                i = bucket.names.index(name)
                bucket.flat[bucket.offsets[i]:bucket.offsets[i] + bucket.sizes[i]] = 0
            self._start(bucket)
        self._started = len(self.buckets)
        self._mpi.Request.Waitall([b.request for b in self.buckets])
        for bucket in self.buckets:
            bucket.request = None
        spent = time.perf_counter() - began
        self.comm_s += spent
        self.wait_s += spent
        out = {}
        for bucket in self.buckets:
            for name, offset, size in zip(bucket.names, bucket.offsets, bucket.sizes):
                if name in self._seen:
                    out[name] = bucket.flat[offset:offset + size].reshape(self.shapes[name])
        return out


def readiness_order(model, names) -> list[str]:
    """``names`` in the order the backward pass finishes their gradients."""
    wanted, order = set(names), []
    for step in sorted(model._final_grads, reverse=True):
        order += [n for n in model._final_grads[step] if n in wanted]
    return order


def average_buffers(world: World, model) -> None:
    """Average the floating-point buffers (batch norm's running statistics) over the
    ranks, in place."""
    if world.size == 1:
        return
    params = model.params
    names = [k for k, spec in model.program.params.items()
             if spec.buffer and params[k].dtype.kind == "f"]
    if not names:
        return
    flat = world.sum(np.concatenate([params[k].ravel().astype(np.float64) for k in names]))
    offset = 0
    for k in names:
        size = params[k].size
        params[k][...] = (flat[offset:offset + size] / world.size).reshape(params[k].shape)
        offset += size
    model.sync()


def broadcast_state(world: World, model, optimizer=None, state=None):
    """Make every rank start from rank 0's weights (and optimiser state and training
    state, when resuming): returns rank 0's ``state``."""
    if world.size == 1:
        return state
    payload = world.broadcast((model.parameters(), optimizer.state_dict()
                               if optimizer is not None and state is not None else None,
                               state) if world.lead else None)
    params, opt_state, state = payload
    if not world.lead:
        for k, v in params.items():
            model.params[k][...] = v
        model.sync()
        if opt_state is not None:
            optimizer.load_state_dict(opt_state)
    return state


