"""archc's errors: one root, :class:`ArchcError`, for everything a user can get wrong.

networkx's ``NetworkXException`` is the model: a caller catches ``ArchcError`` to catch
every mistake archc reports (a bad spec, weights that do not fit, unreadable data, a
training run that cannot go on, a missing GPU), while a bug in archc stays an ordinary
exception. Each error holds a message written for someone who has never seen the code,
an optional hint, and optionally the file it is about; :meth:`ArchcError.format` gives
the one line (plus a hint line) that the CLI prints.

The root lives on the runtime side, which knows nothing of the compiler, so that both
sides raise its subclasses; ``archc.errors`` re-exports it beside the compiler's own
(``SpecError`` for specs, ``OnnxError`` for ONNX files).

Examples
--------
>>> print(WeightsError("net.npz does not fit lenet5: missing: c1.bias").format())
error: net.npz does not fit lenet5: missing: c1.bias
>>> print(DataError("holds no images", path="photos/").format())
photos/: error: holds no images
>>> issubclass(DataError, ArchcError)
True
"""

from __future__ import annotations

import difflib
import re
from typing import Iterable


class ArchcError(Exception):
    """Something a user can fix: ``message`` says what, ``hint`` how, ``path`` where."""

    def __init__(self, message: str, hint: str | None = None, path: str | None = None):
        super().__init__(message)
        self.message, self.hint, self.path = message, hint, path

    def format(self) -> str:
        """``[PATH: ]error: MESSAGE`` and, when there is one, a ``hint:`` line."""
        head = f"{self.path}: error: {self.message}" if self.path else f"error: {self.message}"
        return clip_words(head + (f"\nhint: {self.hint}" if self.hint else ""))


WORD_LIMIT = 200


def clip_words(text: str, limit: int = WORD_LIMIT) -> str:
    """``text`` with every run of more than ``limit`` characters without a space cut short
    (saying how long it was): a 100,000-character value given by a user is named, not
    echoed whole into the error line.

    >>> clip_words("got the text '" + "x" * 200 + "'", 20)
    "got the text 'xxxxxxxxxxxxxxxxxxx... (202 characters)"
    """
    return re.sub(r"\S{%d,}" % (limit + 1),
                  lambda m: f"{m.group()[:limit]}... ({len(m.group()):,} characters)", text)


class UsageError(ArchcError):
    """An option or argument that does not fit (an unknown pass, device, node or format)."""


class WeightsError(ArchcError):
    """A weights file does not fit the program (missing, extra or mis-shaped arrays)."""


class InputError(ArchcError):
    """Data given to a model does not fit its inputs."""


class DataError(ArchcError):
    """A data set that cannot be read or does not fit the network."""


class TrainingError(ArchcError):
    """Training cannot go on (a diverged loss, an unusable checkpoint)."""


class DistributedError(TrainingError):
    """A data-parallel job cannot start or go on."""


class DeviceError(ArchcError):
    """The device asked for cannot run here (no GPU, no numba-cuda)."""


class ResourceError(ArchcError):
    """Work that would need more memory than the machine has (or ``--max-memory``
    allows), refused before allocating."""


class RunFolderError(TrainingError):
    """A run folder that cannot be used: in use by another training, or with no
    checkpoint that is intact."""


class ArchcWarning(UserWarning):
    """Something a user should know that does not stop the work (a damaged checkpoint
    passed over for the previous one); the CLI prints it as one ``warning:`` line."""


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
