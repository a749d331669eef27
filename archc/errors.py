"""User-facing errors: one root, :class:`ArchcError`, and the compiler's own under it.

Every mistake a user can make raises a subclass of :class:`ArchcError` at the point where
it is detected (the root and the runtime's errors are defined in ``runtime/errors.py`` and
re-exported here): :class:`SpecError` for a spec or a variable override, carrying where in
the spec the mistake is; :class:`OnnxError` for an ONNX file; ``UsageError`` for an option
that does not fit; ``WeightsError``, ``InputError``, ``DataError``, ``TrainingError``,
``DistributedError``, ``DeviceError``, ``ResourceError`` (work that needs more memory
than the machine has) and ``RunFolderError`` from the runtime. The CLI catches the root once
and prints its :meth:`~ArchcError.format`, compiler style::

    specs/net.yaml:12:7: error: unknown layer type 'conv2'
    hint: did you mean 'conv2d'?

Internal bugs are *not* ArchcErrors; they propagate as ordinary exceptions (``GraphInvalid``
is one: a graph that breaks the IR's invariants).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from runtime.errors import (  # noqa: F401 (re-exported: one hierarchy for every error)
    ArchcError,
    ArchcWarning,
    clip_words,
    did_you_mean,
    nearest,
    DataError,
    DeviceError,
    DistributedError,
    InputError,
    ResourceError,
    RunFolderError,
    TrainingError,
    UsageError,
    WeightsError,
)


@dataclass(frozen=True)
class Loc:
    """A position in a source file; ``line`` and ``column`` are 1-based."""

    file: str
    line: int = 0
    column: int = 0

    def __str__(self) -> str:
        if self.line <= 0:
            return self.file
        return f"{self.file}:{self.line}:{self.column}"


@dataclass
class SpecError(ArchcError):
    """A mistake in a spec, a variable override or another user input.

    Parameters
    ----------
    message : str
        What is wrong, in words for someone who has never seen archc's code.
    loc : Loc, optional
        Where it is.
    hint : str, optional
        How to fix it, e.g. the nearest valid name.
    notes : list of str
        Further context, e.g. the block instantiation that led here.
    """

    message: str
    loc: Loc | None = None
    hint: str | None = None
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        Exception.__init__(self, self.message)
        self.path = self.loc.file if self.loc else None

    def __str__(self) -> str:
        return self.format()

    def format(self) -> str:
        """Render as ``FILE:LINE:COL: error: MESSAGE`` plus ``hint:``/``note:`` lines."""
        head = f"{self.loc}: error: {self.message}" if self.loc else f"error: {self.message}"
        lines = [head]
        lines += [f"note: {n}" for n in self.notes]
        if self.hint:
            lines.append(f"hint: {self.hint}")
        return clip_words("\n".join(lines))


class OnnxError(ArchcError):
    """An ONNX model archc cannot read or write (not ONNX, an operator archc has no layer
    for, a shape it would compute differently)."""
