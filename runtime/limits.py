"""How much memory a run may take, and refusing work that needs more before allocating.

A spec of ``out_channels: 1000000000`` is valid to check and analyse, but compiling it
would allocate terabytes. The runtime knows every shape before it allocates a byte: the
parameters' (compile), the activations' per image (a forward pass keeps them for
backward when training) and the data set's. :func:`check_bytes` compares what a step
needs with :func:`memory_limit` (what the machine has available, or the ``--max-memory``
limit, also ``ARCHC_MAX_MEMORY``) and raises :class:`ResourceError`, naming the largest
part, instead of a MemoryError or an out-of-memory kill hours later.

Examples
--------
>>> fmt_bytes(3 * 2**30)
'3.0 GiB'
>>> parse_bytes("512M"), parse_bytes("2.5G"), parse_bytes("1000")
(536870912, 2684354560, 1000)
"""

from __future__ import annotations

import math
import os
import re

from runtime.errors import ResourceError, UsageError
from runtime.program import Program

FLOAT_BYTES = 4
ENV = "ARCHC_MAX_MEMORY"
_limit: int | None = None  # set_memory_limit (--max-memory)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} EiB"  # pragma: no cover


def parse_bytes(text: str) -> int:
    """``"512M"``, ``"2G"``, ``"1.5T"`` or a number of bytes."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([kmgt]?)(?:i?b)?\s*", str(text), re.I)
    if not match or float(match[1]) <= 0:
        raise UsageError(f"'{str(text)[:40]}' is not an amount of memory",
                         hint="e.g. --max-memory 8G (K, M, G, T: powers of 1024)")
    return int(float(match[1]) * _UNITS[match[2].lower()])


def set_memory_limit(limit: int | str | None) -> None:
    """The most bytes a run may take (``None``: what the machine has available)."""
    global _limit
    _limit = None if limit is None else parse_bytes(str(limit))


def available_bytes() -> int:
    """The memory this machine has available now (Linux's MemAvailable; else physical)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover (not POSIX)
        return 1 << 40


def memory_limit() -> tuple[int, str]:
    """(bytes, where the number comes from)."""
    if _limit is not None:
        return _limit, "--max-memory"
    if os.environ.get(ENV):
        return parse_bytes(os.environ[ENV]), ENV
    return available_bytes(), "available on this machine"


def check_bytes(needed: int, doing: str, parts: list[tuple[str, int]] = (),
                hint: str | None = None) -> None:
    """Refuse ``doing`` (e.g. "reading mnist") if it needs more than the limit; ``parts``
    (name, bytes) name the largest contributions."""
    limit, source = memory_limit()
    if needed <= limit:
        return
    shown = sorted(parts, key=lambda p: -p[1])[:2]
    detail = f" ({'; '.join(f'{name}: {fmt_bytes(b)}' for name, b in shown)})" if shown else ""
    raise ResourceError(f"{doing} needs about {fmt_bytes(needed)} of memory{detail}, more "
                        f"than the {fmt_bytes(limit)} {source}",
                        hint=hint or f"make it smaller, or set the limit with --max-memory "
                        f"(or {ENV})")


def parameter_bytes(program: Program) -> tuple[int, str, int]:
    """(bytes of every parameter and buffer, the largest one's name, its bytes)."""
    sizes = {k: FLOAT_BYTES * math.prod(spec.shape) for k, spec in program.params.items()}
    largest = max(sizes, key=sizes.get, default="")
    return sum(sizes.values()), largest, sizes.get(largest, 0)


def activation_bytes(program: Program, training: bool) -> tuple[int, str, int]:
    """(bytes per image of the activations a pass holds, the largest layer output's name,
    its bytes per image). Inference: the most one op holds at once (its inputs and
    output), a lower bound of any memory plan; training: every output kept for backward
    plus the gradients of one op."""
    per_op = {op.name: FLOAT_BYTES * math.prod(op.out_shape) for op in program.ops}
    step = max((FLOAT_BYTES * (sum(math.prod(s) for s in op.in_shapes)
                               + math.prod(op.out_shape)) for op in program.ops), default=0)
    largest = max(per_op, key=per_op.get, default="")
    total = sum(per_op.values()) + 2 * step if training else step
    return total, largest, per_op.get(largest, 0)


def check_program(program: Program, batch: int = 0, training: bool = False) -> None:
    """Refuse a program whose weights (and, for a ``batch``, activations; training: with
    gradients and optimiser state) need more memory than the limit allows."""
    weights, big_param, big_param_bytes = parameter_bytes(program)
    weights *= 4 if training else 1  # parameters, gradients, two optimiser moments
    acts, big_op, big_op_bytes = activation_bytes(program, training) if batch else (0, "", 0)
    doing = (f"{'training' if training else 'running'} {program.name} at batch {batch:,}"
             if batch else f"compiling {program.name}")
    parts = [(f"parameter {big_param}", big_param_bytes)] if big_param else []
    if batch and big_op:
        parts.append((f"output of {big_op} at batch {batch:,}", big_op_bytes * batch))
    hint = ("give a smaller --batch-size/--batch" if batch and acts * batch > weights else
            "make the layers smaller") + f", or set the limit with --max-memory (or {ENV})"
    check_bytes(weights + acts * batch, doing, parts, hint)
