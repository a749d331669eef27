"""How long it takes to know a network's shapes: ``archc check`` (parse, expand, infer,
verify) against the PyTorch way (build the model from torch.nn primitives, then run a
forward pass on the 'meta' device, which computes shapes without data).

Same process, median of repeated runs, ratios printed. Run:
    .venv/bin/python bench/bench_check.py [--repeat N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "oracles"))  # the PyTorch twins
sys.path.insert(0, str(ROOT / "tests" / "support"))
sys.path.insert(0, str(ROOT / "bench"))

import archc  # noqa: E402
from timing import median_time  # noqa: E402
import torch_models  # noqa: E402

CASES = [
    ("lenet5", ROOT / "specs/lenet5.yaml", {}, torch_models.LeNet5, (1, 32, 32)),
    ("resnet18", ROOT / "specs/resnet18.yaml", {}, lambda: torch_models.ResNet((2, 2, 2, 2)),
     (3, 224, 224)),
    ("resnet34", ROOT / "specs/resnet18.yaml", {"blocks": [3, 4, 6, 3]},
     lambda: torch_models.ResNet((3, 4, 6, 3)), (3, 224, 224)),
]


def torch_shapes(make, shape):
    with torch.device("meta"):
        model = make()
        model.eval()(torch.empty((1,) + shape))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, archc {archc.__version__}, median of {args.repeat} runs")
    print(f"{'network':<10} {'nodes':>6} {'archc check ms':>15} {'torch build+meta ms':>20} "
          f"{'ratio':>7}")
    for name, path, variables, make, shape in CASES:
        nodes = len(archc.load(path, **variables))
        ours = median_time(lambda: archc.load(path, **variables), args.repeat)
        theirs = median_time(lambda: torch_shapes(make, shape), args.repeat)
        print(f"{name:<10} {nodes:>6} {ours * 1e3:>15.2f} {theirs * 1e3:>20.2f} "
              f"{ours / theirs:>6.2f}x")


if __name__ == "__main__":
    main()
