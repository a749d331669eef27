"""How fast archc explores a design space: analyses per second of a RegNet sweep (random
points of the paper's space) with ``archc sweep --engine local`` and ``--engine ray`` on the
same cores; and the time to analyse one very deep graph (a DenseNet-style network of
10,000 nodes: four dense blocks of 360 layers), against PyTorch building the same network
on the 'meta' device and counting its parameters and FLOPs (torch.utils.flop_counter).

Run (as a user's machine runs, the BLAS variables unset):
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python bench/bench_sweep.py \
        [--points 10000] [--jobs 2] [--layers 360]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SPACE = ["--set", "model=custom", "--sample", "w_0=randint(16, 96)",
         "--sample", "w_a=uniform(8, 64)", "--sample", "w_m=uniform(2.0, 3.0)",
         "--sample", "depth=randint(12, 28)", "--sample", "group_width=choice([8, 16, 24])",
         "--where", "macs < 600e6"]


def sweep_rate(engine: str, points: int, jobs: int) -> tuple[float, float, int]:
    """Seconds for the whole command, points per second, feasible points."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "archc", "sweep", str(ROOT / "specs/regnet.yaml"),
                   *SPACE, "--count", str(points), "--jobs", str(jobs), "--engine", engine,
                   "--out", out]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode:
            raise SystemExit(f"archc sweep --engine {engine} failed:\n{done.stderr}")
        rows = [json.loads(line) for line in Path(out, "points.jsonl").read_text().splitlines()]
        feasible = sum(1 for r in rows if "error" not in r and r["macs"] < 600e6)
    return seconds, len(rows) / seconds, feasible


def densenet_torch(layers: int, growth: int = 32, bn_size: int = 4, classes: int = 1000):
    """torchvision's DenseNet-121 layout with ``layers`` dense layers per block."""
    import torch
    from torch import nn

    class DenseLayer(nn.Module):
        def __init__(self, cin):
            super().__init__()
            self.f = nn.Sequential(
                nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, bn_size * growth, 1, bias=False),
                nn.BatchNorm2d(bn_size * growth), nn.ReLU(),
                nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False))

        def forward(self, x):
            return torch.cat([x, self.f(x)], 1)

    parts = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
             nn.MaxPool2d(3, 2, 1)]
    channels = 64
    for block in range(4):
        for _ in range(layers):
            parts.append(DenseLayer(channels))
            channels += growth
        if block < 3:
            parts += [nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, channels // 2, 1,
                                                                     bias=False),
                      nn.AvgPool2d(2, 2)]
            channels //= 2
    parts += [nn.BatchNorm2d(channels), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
              nn.Linear(channels, classes)]
    return nn.Sequential(*parts)


def deep_graph(layers: int) -> None:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import archc
    from archc.analysis import analyse

    start = time.perf_counter()
    graph = archc.load(ROOT / "specs/densenet121.yaml", block_config=[layers] * 4)
    built = time.perf_counter()
    totals = analyse(graph).totals
    analysed = time.perf_counter()
    with torch.device("meta"):
        model = densenet_torch(layers).eval()
        params = sum(p.numel() for p in model.parameters())
        with FlopCounterMode(display=False) as counter:
            model(torch.empty(1, 3, 224, 224))
    theirs = time.perf_counter() - analysed
    assert params == totals["params"], (params, totals["params"])
    ours = analysed - start
    print(f"\ndeep graph: DenseNet-style, 4 x {layers} dense layers, {len(graph):,} nodes, "
          f"{totals['params']:,} parameters (the same in PyTorch), "
          f"{totals['macs'] / 1e9:.1f} GMACs (PyTorch's counter: "
          f"{counter.get_total_flops() / 2e9:.1f})")
    print(f"  archc: load and check {built - start:.2f} s + analyse {analysed - built:.2f} s "
          f"= {ours:.2f} s (parameters, MACs, FLOPs, memory plan, receptive field)")
    print(f"  PyTorch: build on 'meta' + count parameters + FLOP counter {theirs:.2f} s; "
          f"PyTorch / archc {theirs / ours:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=10_000)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--layers", type=int, default=360)
    args = parser.parse_args()
    import numpy  # noqa: F401 (its BLAS loaded, for threadpoolctl to name)

    try:
        from threadpoolctl import threadpool_info

        blas = ", ".join(sorted({f"{i['internal_api']} {i.get('architecture', '')}".strip()
                                 for i in threadpool_info()})) or "none loaded"
    except ImportError:
        blas = "threadpoolctl not installed"
    import archc

    print(f"archc {archc.__version__}, {os.cpu_count()} cores, BLAS: {blas}")
    print(f"RegNet design space, {args.points:,} random points, --where 'macs < 600e6', "
          f"{args.jobs} processes / Ray CPUs")
    print(f"{'engine':<8} {'seconds':>8} {'points/s':>9} {'feasible':>9}")
    rates = {}
    for engine in ("local", "ray"):
        seconds, rate, feasible = sweep_rate(engine, args.points, args.jobs)
        rates[engine] = rate
        print(f"{engine:<8} {seconds:>8.1f} {rate:>9.1f} {feasible:>9,}")
    print(f"ray / local: {rates['ray'] / rates['local']:.2f}x")
    deep_graph(args.layers)


if __name__ == "__main__":
    main()
