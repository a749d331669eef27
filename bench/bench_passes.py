"""What the optimisation passes buy, measured in one process next to PyTorch eager.

1. Inference time of networks at -O0 (as written) and -O2 (batch norm folded, activations
   and residual adds fused into the conv epilogues) on archc's CPU runtime, and PyTorch's
   eager inference of the same network (torch.no_grad, eval mode); ratios printed.
2. Factorisation of a trained LeNet-5 on the bundled digits: test accuracy, parameters,
   MACs and inference time of the original, of the depthwise-separable rewrite and of the
   low-rank (SVD) approximations, each without and with a short fine-tuning.

    .venv/bin/python bench/bench_passes.py [--repeat N] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "oracles"))  # the PyTorch twins
sys.path.insert(0, str(ROOT / "tests" / "support"))
sys.path.insert(0, str(ROOT / "bench"))

import archc  # noqa: E402
import torch_twins  # noqa: E402
from runtime.train import data  # noqa: E402
from archc.analysis import analyse  # noqa: E402
from archc.optimize import initial_params  # noqa: E402
from archc.passes import parse_pipeline, preset, run_passes  # noqa: E402
from runtime.train.loop import TrainConfig, evaluate, fit  # noqa: E402
from bench_runtime import blas_kernel, sgemm_rate  # noqa: E402
from timing import median_time  # noqa: E402

NETWORKS = [("resnet18", {}, 8), ("mobilenet_v2", {}, 8), ("efficientnet", {"variant": "b0"}, 8)]
QUICK_NETWORKS = [("lenet5", {}, 8)]
FACTORISATIONS = [
    ("original", None),
    ("separable (every conv)", "separable"),
    ("low_rank channel, budget 0.1", "low_rank:mode=channel:budget=0.1"),
    ("low_rank spatial, budget 0.05", "low_rank:mode=spatial:budget=0.05"),
]


def model_with(graph, params):
    return archc.compile(graph, backend="cpu", params=params).eval()


def inference_table(rows, repeat: int) -> None:
    print(f"{'network':<13} {'batch':>5} {'layers':>9} {'-O0 ms':>8} {'-O2 ms':>8} "
          f"{'-O0/-O2':>8} {'torch ms':>9} {'-O2/torch':>10}")
    for spec, variables, batch in rows:
        graph = archc.load(ROOT / "specs" / f"{spec}.yaml", **variables)
        params = initial_params(graph, None)
        optimised, new_params, _ = run_passes(graph, params, preset(2))
        plain, fused = model_with(graph, params), model_with(optimised, new_params)
        shape = next(iter(plain.program.inputs.values()))
        x = np.random.default_rng(0).standard_normal((batch,) + shape).astype(np.float32)
        twin = torch_twins.TorchGraph(graph).eval()
        tx = torch.as_tensor(x)

        def torch_forward():
            with torch.no_grad():
                twin(tx)

        a = median_time(lambda: plain.predict(x), repeat)
        b = median_time(lambda: fused.predict(x), repeat)
        t = median_time(torch_forward, repeat)
        print(f"{spec:<13} {batch:>5} {len(graph):>4}->{len(optimised):<4} {a * 1e3:>8.1f} "
              f"{b * 1e3:>8.1f} {a / b:>7.2f}x {t * 1e3:>9.1f} {b / t:>9.2f}x")


def factorisation_table(repeat: int, epochs: int, tune_epochs: int) -> None:
    graph = archc.load(ROOT / "specs" / "lenet5.yaml")
    split = data.load("digits", next(iter(graph[n].shape for n in graph.inputs)), seed=0)
    model = archc.compile(graph, backend="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        fit(model, split, TrainConfig(epochs=epochs), Path(tmp) / "base", report=lambda *a: None)
    trained = dict(model.params)
    x = split.test.x.astype(np.float32)
    calibration = split.train.x[:64].astype(np.float32)
    print(f"LeNet-5 trained {epochs} epochs on digits ({len(split.train)} images); "
          f"test set {len(x)} images; fine-tuning: {tune_epochs} epochs, lr 0.01")
    print(f"{'variant':<30} {'params':>7} {'MACs':>8} {'ms':>6} {'speedup':>8} "
          f"{'accuracy':>9} {'fine-tuned':>11}")
    base_ms = None
    for label, passes in FACTORISATIONS:
        g, p = graph, trained
        if passes:
            g, p, _ = run_passes(graph, trained, parse_pipeline(passes),
                                 {"data": calibration, "seed": 0})
        m = model_with(g, p)
        totals = analyse(g, 1).totals
        ms = median_time(lambda: m.predict(x), repeat) * 1e3
        base_ms = base_ms or ms
        accuracy = evaluate(m, split.test)["accuracy"]
        tuned = "-"
        if passes:
            m.train()
            with tempfile.TemporaryDirectory() as tmp:
                fit(m, split, TrainConfig(epochs=tune_epochs, lr=0.01), Path(tmp) / "tune",
                    report=lambda *a: None)
            tuned = f"{evaluate(m, split.test)['accuracy']:.4f}"
        print(f"{label:<30} {totals['params']:>7,} {totals['macs']:>8,} {ms:>6.2f} "
              f"{base_ms / ms:>7.2f}x {accuracy:>9.4f} {tuned:>11}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true",
                        help="LeNet-5 only, one training epoch (a smoke test)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    import runtime.backends.cpu  # noqa: F401  (loads the BLAS its kernels call, to report it)

    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), archc "
          f"{archc.__version__} backend cpu; BLAS: {blas_kernel()}; sgemm {sgemm_rate():.0f} "
          f"GFLOP/s; median of {args.repeat}")
    inference_table(QUICK_NETWORKS if args.quick else NETWORKS, args.repeat)
    print()
    factorisation_table(args.repeat, 1 if args.quick else 12, 1 if args.quick else 3)


if __name__ == "__main__":
    main()
