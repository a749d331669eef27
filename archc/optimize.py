"""``archc optimize`` as a library call: weights in, passes run, the result checked.

The CLI formats what :func:`optimize` returns; notebooks call it directly. Like the CLI it
composes the compiler with the runtime (weights files, data sets, a backend to run the
networks on); the passes themselves only get an evaluator (``archc.lower.evaluator``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from archc.ir import Graph
from archc.lower import Evaluate, compile as compile_graph, evaluator
from archc.passes import PASSES, PassReport, run_passes
from archc.passes.check import EXACT_TOLERANCE, randomize_batchnorm, verify_pipeline


@dataclass
class Optimised:
    """An optimised network: graph, parameters, what each pass did, what verify measured."""

    original: Graph
    graph: Graph
    params: dict[str, np.ndarray]
    reports: list[PassReport]
    exact: bool
    differences: dict[str, float] = field(default_factory=dict)

    @property
    def verified(self) -> bool | None:
        """Whether an exact pipeline kept the function (None: not verified, or approximate)."""
        if not self.differences or not self.exact:
            return None
        return max(self.differences.values()) < EXACT_TOLERANCE

    def to_dict(self) -> dict:
        return {
            "name": self.graph.name, "exact": self.exact,
            "nodes_before": len(self.original), "nodes_after": len(self.graph),
            "passes": [r.to_dict() for r in self.reports],
            "verify": ({"max_relative_difference": self.differences,
                        "tolerance": EXACT_TOLERANCE if self.exact else None,
                        "ok": self.verified} if self.differences else None),
        }


def initial_params(graph: Graph, weights: str | Path | None, seed: int = 0) -> dict:
    """The parameters to optimise: a weights file (or run directory), else a seeded
    initialisation with random batch-norm statistics (fresh ones are the identity, which
    would let a wrong fold pass verification)."""
    from runtime.train.checkpoint import best_weights

    model = compile_graph(graph, backend="reference", seed=seed)
    if weights is not None:
        model.load(best_weights(weights))
        return dict(model.params)
    return randomize_batchnorm(graph, model.params, seed)


def sample_inputs(graph: Graph, batch: int, seed: int, data: str | None) -> dict[str, object]:
    """Inputs to verify on: a random normal batch, and ``batch`` held-out images of a data
    set fitted to the input (single-image-input networks only)."""
    from runtime.train import data as datasets

    rng = np.random.default_rng(seed)
    shapes = {name: tuple(graph[name].shape) for name in graph.inputs}
    x = {name: rng.standard_normal((batch,) + shape).astype(np.float32)
         for name, shape in shapes.items()}
    batches: dict[str, object] = {"random": x if len(x) > 1 else next(iter(x.values()))}
    (shape,) = shapes.values() if len(shapes) == 1 else (None,)
    if data and shape is not None and len(shape) == 3:
        split = datasets.load(data, shape, seed=seed)
        batches[data] = split.test.x[:batch].astype(np.float32)
    return batches


def optimize(graph: Graph, pipeline: list[tuple[str, dict]], params: dict | None = None, *,
             verify: bool = False, data: str | None = "digits", batch: int = 4,
             seed: int = 0, evaluate: Evaluate | None = None) -> Optimised:
    """Run ``pipeline`` on ``graph`` and its parameters (default: :func:`initial_params`);
    with ``verify``, compare the two networks' outputs on random and real inputs.
    Approximate passes that measure their error get the real batch to measure on.
    ``evaluate`` runs the networks for both (default: the CPU backend's,
    ``archc.lower.evaluator("cpu")``).

    Examples
    --------
    >>> import archc
    >>> from archc.passes import preset
    >>> result = optimize(archc.load("specs/lenet5.yaml"), preset(2), verify=True, data=None)
    >>> len(result.original), len(result.graph), result.verified
    (13, 9, True)
    """
    params = initial_params(graph, None, seed) if params is None else params
    evaluate = evaluate or evaluator("cpu")
    exact = all(PASSES[name].exact for name, _ in pipeline)
    # inputs: to verify on, and for approximate passes to measure their error on
    batches = sample_inputs(graph, batch, seed, data) if verify or not exact else {}
    calibration = next((x for name, x in batches.items() if name != "random"),
                       batches.get("random"))
    optimised, new_params, reports = run_passes(graph, params, pipeline,
                                                {"data": calibration, "seed": seed,
                                                 "evaluate": evaluate})
    result = Optimised(graph, optimised, new_params, reports, exact)
    if verify:
        result.differences = verify_pipeline(graph, params, optimised, new_params, batches,
                                             evaluate)
    return result
