"""User-facing errors: one exception type, carrying where in the spec the mistake is.

Every mistake a user can make in a spec or on the command line raises :class:`SpecError`
at the point where it is detected. The CLI formats it once, compiler style::

    specs/net.yaml:12:7: error: unknown layer type 'conv2'
    hint: did you mean 'conv2d'?

Internal bugs are *not* SpecErrors; they propagate as ordinary exceptions.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Iterable


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
class SpecError(Exception):
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
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.format()

    def format(self) -> str:
        """Render as ``FILE:LINE:COL: error: MESSAGE`` plus ``hint:``/``note:`` lines."""
        head = f"{self.loc}: error: {self.message}" if self.loc else f"error: {self.message}"
        lines = [head]
        lines += [f"note: {n}" for n in self.notes]
        if self.hint:
            lines.append(f"hint: {self.hint}")
        return "\n".join(lines)


def nearest(word: str, candidates: Iterable[str]) -> str | None:
    """Return the candidate closest to ``word`` (for 'did you mean' hints), if any is close.

    Examples
    --------
    >>> nearest("conv2", ["conv2d", "linear", "relu"])
    'conv2d'
    >>> nearest("zzz", ["conv2d"]) is None
    True
    """
    pool = [c for c in candidates if isinstance(c, str)]
    lowered = {c.lower(): c for c in pool}
    if word.lower() in lowered and lowered[word.lower()] != word:
        return lowered[word.lower()]
    match = difflib.get_close_matches(word, pool, n=1, cutoff=0.6)
    return match[0] if match else None


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """A ``hint`` string naming the nearest candidate, or ``None``."""
    best = nearest(word, candidates)
    return f"did you mean '{best}'?" if best else None
