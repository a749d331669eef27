"""Memory planning: give every intermediate value a place in one arena, reusing the room
of values that are dead (liveness), and report what that saves.

A value lives from the op that writes it to the last op that reads it (graph outputs to
the end); views (ops the compiler marks ``view``: flatten, reshape, identity, dropout and
stochastic depth at inference) share their input's room. Offsets are assigned greedily, largest first, at the lowest
offset that does not overlap a value alive at the same time (the "greedy by size"
heuristic of Pisarchyk and Lee, "Efficient Memory Management for Deep Neural Net
Inference", 2020). ``peak_bytes`` (the most bytes alive at once) is a lower bound of any
plan and equals the analysis' inference peak; ``arena_bytes`` is this plan's size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from runtime.program import Program

FLOAT_BYTES = 4


@dataclass(frozen=True)
class MemoryPlan:
    """Where each value lives: ``offsets[name]`` in an arena of ``arena_bytes`` (per
    sample of the batch; multiply by the batch size)."""

    offsets: dict[str, int]
    sizes: dict[str, int]
    owner: dict[str, str]
    arena_bytes: int
    peak_bytes: int
    naive_bytes: int


def plan_memory(program: Program, batch: int = 1, keep_all: bool = False) -> MemoryPlan:
    """Plan the inference buffers of ``program`` for a batch of ``batch``; ``keep_all``:
    every value lives to the end (a training forward pass keeps them for backward), so
    nothing shares room but views.

    Examples
    --------
    A chain reuses the room of values it no longer needs, so the arena holds two of them:

    >>> from runtime.program import Op, Program
    >>> ops = tuple(Op(f"r{i}", "relu", {}, (f"r{i - 1}" if i else "x",), f"r{i}", {},
    ...                ((10,),), (10,)) for i in range(4))
    >>> chain = Program("chain", {"x": (10,)}, ops, {"out": "r3"})
    >>> plan = plan_memory(chain)
    >>> plan.naive_bytes, plan.peak_bytes, plan.arena_bytes
    (200, 80, 80)

    Kept for backward, every value has its own room:

    >>> plan_memory(chain, keep_all=True).arena_bytes
    200
    """
    order = list(program.inputs) + [op.output for op in program.ops]
    step = {name: i for i, name in enumerate(order)}
    owner = {name: name for name in program.inputs}
    shapes = dict(program.inputs)
    items = dict.fromkeys(program.inputs, 1)
    for op in program.ops:
        shapes[op.output], items[op.output] = op.out_shape, op.items
        owner[op.output] = owner[op.inputs[0]] if op.view and op.inputs else op.output
    sizes = {n: FLOAT_BYTES * batch * items[n] * math.prod(shapes[n]) for n in order
             if owner[n] == n}
    first = {n: step[n] for n in sizes}
    last = dict(first)
    for op in program.ops:
        for source in op.inputs:
            buf = owner[source]
            last[buf] = max(last[buf], step[op.output])
    for name in program.outputs.values():
        last[owner[name]] = len(order)
    if keep_all:
        last = {buf: len(order) for buf in last}
    # most bytes alive at once (inputs and output of a step overlap)
    peak = max(sum(sizes[b] for b in sizes if first[b] <= t <= last[b]) for t in range(len(order)))
    offsets: dict[str, int] = {}
    placed: list[str] = []
    for buf in sorted(sizes, key=lambda b: (-sizes[b], first[b])):
        busy = sorted((offsets[o], offsets[o] + sizes[o]) for o in placed
                      if first[o] <= last[buf] and first[buf] <= last[o])
        offset = 0
        for start, end in busy:
            if offset + sizes[buf] <= start:
                break
            offset = max(offset, end)
        offsets[buf] = offset
        placed.append(buf)
    arena = max((offsets[b] + sizes[b] for b in sizes), default=0)
    return MemoryPlan({n: offsets[owner[n]] for n in order}, sizes, owner, arena, peak,
                      sum(FLOAT_BYTES * batch * items[n] * math.prod(shapes[n]) for n in order))
