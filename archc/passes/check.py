"""Checking what a pipeline did to the function a network computes: run the original and
the optimised network on the same inputs and compare their outputs."""

from __future__ import annotations

import numpy as np

from archc.ir import Graph
from archc.passes.manager import Params


def randomize_batchnorm(graph: Graph, params: Params, seed: int = 0) -> Params:
    """A copy of ``params`` whose batch norms have non-trivial running statistics and
    affine parameters (freshly initialised ones are the identity, which would let a wrong
    fold go unnoticed)."""
    rng = np.random.default_rng(seed)
    out = dict(params)
    for node in graph:
        if not node.op.startswith("batchnorm"):
            continue
        for role, draw in (("running_mean", lambda n: rng.normal(0.0, 0.5, n)),
                           ("running_var", lambda n: rng.uniform(0.5, 2.0, n)),
                           ("weight", lambda n: rng.uniform(0.5, 1.5, n)),
                           ("bias", lambda n: rng.normal(0.0, 0.2, n))):
            key = f"{node.name}.{role}"
            if key in out:
                out[key] = draw(out[key].shape).astype(out[key].dtype)
    return out


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |a|: the largest difference relative to the output's scale (an
    element-wise ratio is meaningless where an output is near zero)."""
    scale = float(np.abs(a).max())
    return float(np.abs(a - b).max()) / scale if scale > 0 else float(np.abs(b).max())


def compare(graph: Graph, params: Params, optimised: Graph, optimised_params: Params,
            x, evaluate) -> float:
    """The largest relative difference between the two networks' outputs on ``x`` (an
    array, or a dict by input name), both run in inference mode by ``evaluate``
    (``archc.lower.evaluator``)."""
    outputs = []
    for g, p in ((graph, params), (optimised, optimised_params)):
        y = evaluate(g, p, x)
        outputs.append(y if isinstance(y, dict) else {"": y})
    return max(relative_difference(outputs[0][k], outputs[1][k]) for k in outputs[0])


EXACT_TOLERANCE = 1e-5  # the largest relative difference an exact pipeline may show


def verify_pipeline(graph: Graph, params: Params, optimised: Graph, optimised_params: Params,
                    batches: dict[str, np.ndarray], evaluate) -> dict[str, float]:
    """The largest relative output difference per named batch of inputs (``random``, the
    name of a data set, ...), the networks run by ``evaluate``."""
    return {name: compare(graph, params, optimised, optimised_params, x, evaluate)
            for name, x in batches.items()}
