"""The lowered program: the only thing the runtime receives from the compiler.

Plain data (no networkx, no YAML): an ordered list of :class:`Op` over named values, and
the parameters and buffers the ops use, with PyTorch names and layouts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any


@dataclass(frozen=True)
class Op:
    """One kernel invocation.

    ``kind`` is the layer type (``conv2d``), ``attrs`` its attributes as plain values
    with everything resolved (e.g. ``pads = ((top, bottom), (left, right))``), ``inputs``
    the names of the values it reads, ``output`` the value it writes (its node's name),
    ``params`` maps a role (``weight``, ``running_mean``) to the full parameter name.
    Shapes leave out the batch dimension.
    """

    name: str
    kind: str
    attrs: dict[str, Any]
    inputs: tuple[str, ...]
    output: str
    params: dict[str, str]
    in_shapes: tuple[tuple[int, ...], ...]
    out_shape: tuple[int, ...]
    view: bool = False  # the output may share its input's memory (flatten, reshape, ...)
    items: int = 1  # outputs per image: a region layer's boxes join the batch (N * items rows)


@dataclass(frozen=True)
class ParamSpec:
    """A parameter or buffer: its shape, whether it is a buffer, whether it trains, and how
    it starts: ``init`` is ``("uniform", bound)`` (uniform in ``+-bound``) or ``("constant",
    value)``, as the layer's registry entry says (PyTorch's ``reset_parameters``)."""

    shape: tuple[int, ...]
    buffer: bool = False
    trainable: bool = True
    dtype: str = "float32"
    init: tuple[str, float] = ("constant", 0.0)


@dataclass(frozen=True)
class Program:
    """A network ready to run: inputs, ops in execution order, outputs, parameters."""

    name: str
    inputs: dict[str, tuple[int, ...]]
    ops: tuple[Op, ...]
    outputs: dict[str, str]
    params: dict[str, ParamSpec] = field(default_factory=dict)
    # parameter -> its name in PyTorch's state_dict, where the two differ (the spec's
    # torch_names: section); weights files may use either name
    torch_names: dict[str, str] = field(default_factory=dict)
    # the spec's training: section (archc train's settings), for runtime.train.config
    training: dict[str, Any] = field(default_factory=dict)
    # outputs a training pass also gives (key -> value), each loss times its weight added
    # to the training loss; the ops only they need are skipped in inference
    train_outputs: dict[str, str] = field(default_factory=dict)
    loss_weights: dict[str, float] = field(default_factory=dict)

    @cached_property
    def training_only(self) -> frozenset[int]:
        """The steps (op indices) only the training outputs need."""
        if not self.train_outputs:
            return frozenset()
        needed = set(self.outputs.values())
        skipped = set()
        for step in reversed(range(len(self.ops))):
            op = self.ops[step]
            if op.output in needed:
                needed.update(op.inputs)
            else:
                skipped.add(step)
        return frozenset(skipped)

    def outputs_of(self, training: bool) -> dict[str, str]:
        """The outputs a pass gives: in training, the training outputs too."""
        return {**self.outputs, **self.train_outputs} if training else self.outputs

    @cached_property
    def _items(self) -> dict[str, int]:
        return {op.output: op.items for op in self.ops if op.items > 1}

    def items(self, value: str) -> int:
        """Rows per image of a value: 1, or the boxes per image after a region layer (a
        table made once: every forward pass asks for each output)."""
        return self._items.get(value, 1)

    def output_shapes(self) -> dict[str, tuple[int, ...]]:
        """Output name -> its shape (without the batch dimension)."""
        made = {op.output: op.out_shape for op in self.ops}
        made.update(self.inputs)
        return {key: made[value] for key, value in self.outputs.items()}
