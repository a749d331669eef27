"""The networks the CUDA benchmarks run, set up as archc's commands run them: one place for
bench_cuda.py (timed on a GPU) and bench_cuda_launches.py (launches counted without one).

- inference at an optimisation level: ``-O0`` the graph as written, ``-O2`` what
  ``archc optimize -O2`` makes of it (batch norms folded into the convs, residual adds
  and activations fused into their epilogues), as a deployment engineer runs it;
- a training step as ``archc train`` takes it: the graph ``for_training`` makes (a batch
  norm's residual add and activation in its own pass), SGD with momentum 0.9, the
  targets staged with the batch, no input gradient.
"""

from __future__ import annotations

import archc
from archc.optimize import optimize
from archc.passes import for_training, preset
from runtime.train import optim


def inference_model(graph, level: int, seed: int = 0):
    """``graph`` on the CUDA backend at ``-O<level>``, in eval mode."""
    model = archc.compile(graph, backend="cuda", seed=seed)
    if level:
        result = optimize(graph, preset(level), model.params)
        model = archc.compile(result.graph, backend="cuda", params=result.params)
    return model.eval()


def training_step(graph, x, y, seed: int = 0):
    """step() for ``graph`` as ``archc train`` runs it on the CUDA backend: it queues one
    SGD step on the batch (x on the device, y the labels on the host) and returns its
    loss, still on the device (reading it is the step's one wait)."""
    model = archc.compile(for_training(graph), backend="cuda", seed=seed).train()
    params = model.device_params()
    opt = optim.SGD({k: params[k] for k, s in model.program.params.items()
                     if s.trainable and not s.buffer}, 0.01, momentum=0.9,
                    kernels=model.backend.optim)

    def step():
        model.backend.stage_targets(y)
        out = model(x, host=False)
        loss, grad, _ = model.backend.classify(out, y)
        opt.step(model.backward(grad, host=False, inputs=False).params)
        return loss

    return step
