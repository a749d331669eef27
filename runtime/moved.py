"""Old import paths of modules that moved to the runtime side, kept working.

Training, tasks, data, augmentation, distributed training and visualisation read no spec,
so they live in ``runtime/train/``; the optimisers, losses, metrics and the detection
head moved there from ``runtime/``. A program written against the old paths
(``from archc.train import fit``, ``import archc.data``) gets the same module objects:
this finder answers those names with the modules' new homes, without a file per name.

Examples
--------
>>> import archc.train, runtime.train.loop
>>> archc.train is runtime.train.loop
True
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

MOVED = {
    "archc.train": "runtime.train.loop",
    "archc.tasks": "runtime.train.tasks",
    "archc.data": "runtime.train.data",
    "archc.synth": "runtime.train.data.synth",
    "archc.augment": "runtime.train.augment",
    "archc.visualize": "runtime.train.visualize",
    "archc.pictures": "runtime.train.pictures",
    "archc.distributed": "runtime.train.distributed",
    "runtime.losses": "runtime.train.losses",
    "runtime.metrics": "runtime.train.metrics",
    "runtime.optim": "runtime.train.optim",
    "runtime.detection": "runtime.train.detection",
    "runtime.boxes": "runtime.train.boxes",
}
"""Old module name -> where it lives now."""


class _Moved(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def create_module(self, spec):
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module) -> None:
        pass  # the module ran when it was imported under its own name


def install() -> None:
    """Answer the old names from now on (idempotent)."""
    if not any(isinstance(finder, _Moved) for finder in sys.meta_path):
        sys.meta_path.append(_Moved())
