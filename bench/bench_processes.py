"""Several archc processes on the same cores: one training run alone, then two started
together, for GNU OpenMP's default spin and shorter ones (GOMP_SPINCOUNT). Numba's
OpenMP threads spin after each parallel region before they sleep; beside another busy
process the spinning threads take the cores from those doing the work. Prints seconds
alone, seconds of the slower of the pair, and pair / alone.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python bench/bench_processes.py \
        [--epochs 3] [--spins default,10000,3000,1000] [--repeat 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# a small Mask R-CNN: convolutions, BLAS GEMMs and many short parallel regions per step
SMALL_MASK = ["--set=resolution=64", "--set=width=8", "--set=blocks=[1,1,1,1]",
              "--set=fpn_channels=16", "--set=representation=64", "--set=proposals=32",
              "--set=num_classes=4", "--set=mask_boxes=8", "--set=mask_layers=[16,16,16,16]",
              "--set=mask_dim=16"]


def command(epochs: int, out: Path) -> list[str]:
    return [sys.executable, "-m", "archc", "train", str(ROOT / "specs" / "mask_rcnn.yaml"),
            *SMALL_MASK, "--data", "shapes-inst:256", "--epochs", str(epochs),
            "--batch-size", "8", "--optimizer", "sgd", "--lr", "0.02", "--anchor-scale", "4",
            "--out", str(out)]


def run_together(count: int, epochs: int, spin: str, folder: Path) -> float:
    """Seconds until the last of ``count`` runs started together has finished."""
    env = dict(os.environ)
    env.pop("GOMP_SPINCOUNT", None)
    if spin != "default":
        env["GOMP_SPINCOUNT"] = spin
    began = time.perf_counter()
    procs = [subprocess.Popen(command(epochs, folder / f"run-{spin}-{count}-{i}"), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for i in range(count)]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode:
            sys.exit(f"archc train failed:\n{err.decode()[-2000:]}")
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--spins", default="default,10000,3000,1000")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    from threadpoolctl import threadpool_info
    import numba

    blas = [f"{i['internal_api']} {i.get('architecture', '?')}" for i in threadpool_info()]
    print(f"{os.cpu_count()} cores, numba {numba.__version__} "
          f"({numba.config.NUMBA_NUM_THREADS} threads), BLAS: {', '.join(blas)}")
    with tempfile.TemporaryDirectory(prefix="archc-bench-") as tmp:
        folder = Path(tmp)
        run_together(1, 1, "default", folder)  # compiles (fills Numba's cache)
        print(f"{'GOMP_SPINCOUNT':>15} {'alone s':>8} {'pair s':>8} {'pair/alone':>10}")
        for spin in args.spins.split(","):
            alone = statistics.median(run_together(1, args.epochs, spin, folder)
                                      for _ in range(args.repeat))
            pair = statistics.median(run_together(2, args.epochs, spin, folder)
                                     for _ in range(args.repeat))
            print(f"{spin:>15} {alone:8.1f} {pair:8.1f} {pair / alone:10.2f}", flush=True)


if __name__ == "__main__":
    main()
