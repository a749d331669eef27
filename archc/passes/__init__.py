"""Optimisation passes: pure ``(graph, params) -> (graph, params, report)`` rewrites,
composed by :mod:`archc.passes.manager` (named pipelines, ``-O0/-O1/-O2``).

Importing this package registers every pass, in the order presets run them.
"""

from __future__ import annotations

from archc.passes import cleanup, fold_bn, fuse, separable  # noqa: F401 (registration order matters)
from archc.passes.manager import (
    OPT_LEVELS,
    PASSES,
    Pass,
    PassReport,
    PassResult,
    for_training,
    parse_pipeline,
    preset,
    run_pass,
    run_passes,
    training_preset,
)

__all__ = ["OPT_LEVELS", "PASSES", "Pass", "PassReport", "PassResult", "for_training",
           "parse_pipeline",
           "preset", "run_pass", "run_passes", "training_preset"]
