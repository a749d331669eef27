"""Weights repacked once into the layout a kernel reads, and kept while they stay valid.

A kernel that wants its weights in another layout than PyTorch's (a conv's filter taps as
contiguous matrices, Winograd's transformed filters) asks the pass's :class:`Packs` for
them: ``ctx.packs.get((op.name, "taps"), w, make)``. The first pass packs; later passes
reuse the packed array for as long as the parameters have not been written: an
optimiser's step (``written()``) invalidates every model's packs, and a model drops its
own when its parameters are replaced or handed out for writing (``Model.params = ...``,
``load``, ``sync()``, ``device_params()``). Weights files and checkpoints always hold
PyTorch's layouts; packs live only in memory.

A parameter changed in place by other means than an optimiser needs ``model.sync()``
afterwards, as on a GPU backend.
"""

from __future__ import annotations

from typing import Any, Callable, Hashable

_WRITES = [0]  # how many times parameters anywhere have been written (optimiser steps)


def written() -> None:
    """Parameters were updated in place: every pack made before is stale."""
    _WRITES[0] += 1


class Packs:
    """(key) -> (the source array, its packed form), made on first use."""

    def __init__(self) -> None:
        self._store: dict[Hashable, tuple[Any, Any]] = {}
        self._writes = _WRITES[0]

    def get(self, key: Hashable, source, make: Callable[[Any], Any]):
        """``make(source)``, or the array made from this very ``source`` before if no
        parameter has been written since."""
        if self._writes != _WRITES[0]:
            self.clear()
        hit = self._store.get(key)
        if hit is not None and hit[0] is source:
            return hit[1]
        packed = make(source)
        self._store[key] = (source, packed)
        return packed

    def clear(self) -> None:
        self._store.clear()
        self._writes = _WRITES[0]

    def __len__(self) -> int:
        return len(self._store)
