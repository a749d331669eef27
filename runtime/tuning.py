"""The algorithms ``archc tune`` measured fastest, per machine and layer shape.

Where the backend's cost model picks a convolution algorithm from rules (``conv.choose``),
a measurement is surer: ``archc tune SPEC`` times every algorithm that can run each layer,
on this machine, at a batch size and mode, and keeps the fastest here (like cuDNN's
benchmark mode or TVM's tuning log). Later passes of any network with a layer of the
same shape look it up first.

The cache is one JSON file: ``$ARCHC_TUNE_CACHE``, or ``archc/tune.json`` under
``$XDG_CACHE_HOME`` (``~/.cache``). Its entries are keyed by the machine (the CPU's
model name and the number of threads) and by the layer's shape, attributes, batch and
mode. A damaged cache is hostile input like any other file: one warning line, and the
rules decide until ``archc tune`` writes it again.
"""

from __future__ import annotations

import json
import os
import platform
import warnings
from pathlib import Path
from typing import Any

from runtime.errors import ArchcWarning, InputError

VERSION = 1
MAX_BYTES = 16 << 20  # a cache of this size would hold some 50,000 layer shapes


def cache_path() -> Path:
    given = os.environ.get("ARCHC_TUNE_CACHE")
    if given:
        return Path(given)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "archc" / "tune.json"


def machine() -> str:
    """What the measurements hold for: the CPU's model name and the kernels' threads."""
    import numba

    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {numba.get_num_threads()} threads"


def layer_key(op, batch: int, train: bool) -> str:
    """A layer's shape, attributes, batch and mode, as one string."""
    attrs = {k: op.attrs[k] for k in sorted(op.attrs)
             if k in ("kernel_size", "stride", "pads", "dilation", "groups")}
    return json.dumps([op.kind, list(op.in_shapes[0]), list(op.out_shape), attrs, batch,
                       bool(train)], sort_keys=True, default=list)


class Tuning:
    """The measured choices of one cache file: ``choice(op, batch, train)`` and
    ``record(...)``; ``save()`` writes the file whole (atomically)."""

    def __init__(self, path: Path | None = None):
        self.path = path or cache_path()
        self.entries: dict[str, dict[str, Any]] = {}
        self.machines: dict[str, Any] = {}  # every machine's entries, as read
        self._read()

    def _read(self) -> None:
        from runtime.files import read_json

        if not self.path.exists():
            return
        try:
            data = read_json(self.path, "archc tune's cache", InputError, dict, MAX_BYTES)
            if data.get("version") != VERSION or not isinstance(data.get("machines"), dict):
                raise InputError(f"archc tune's cache {self.path} is not a cache of version "
                                 f"{VERSION}")
            entries = data["machines"].get(machine(), {})
            if not isinstance(entries, dict) or not all(
                    isinstance(v, dict) and isinstance(v.get("algorithm"), str)
                    and isinstance(v.get("times"), dict) for v in entries.values()):
                raise InputError(f"archc tune's cache {self.path} has damaged entries")
            self.entries, self.machines = entries, data["machines"]
        except InputError as exc:
            warnings.warn(f"{exc}; the rules choose the algorithms (archc tune rewrites it)",
                          ArchcWarning, stacklevel=2)

    def choice(self, op, batch: int, train: bool) -> dict | None:
        """``{"algorithm": name, "times": {name: seconds}}`` measured for this layer, or
        None."""
        return self.entries.get(layer_key(op, batch, train))

    def record(self, op, batch: int, train: bool, times: dict[str, float]) -> str:
        """Keep the fastest of ``times`` (algorithm -> seconds) for this layer; returns it."""
        best = min(times, key=times.get)
        self.entries[layer_key(op, batch, train)] = {"algorithm": best, "times": dict(times)}
        return best

    def save(self) -> Path:
        machines = {**self.machines, machine(): self.entries}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        part = self.path.with_name(self.path.name + ".part")
        part.write_text(json.dumps({"version": VERSION, "machines": machines}, indent=1))
        os.replace(part, self.path)
        return self.path


_loaded: dict[str, Tuning] = {}


def tuned(op, batch: int, train: bool) -> dict | None:
    """The measured choice for a layer from the cache file (read once per process and
    path), or None."""
    path = str(cache_path())
    if path not in _loaded:
        _loaded[path] = Tuning(Path(path))
    return _loaded[path].choice(op, batch, train)


def forget() -> None:
    """Read the cache file again at the next lookup (after ``archc tune`` wrote it)."""
    _loaded.clear()
