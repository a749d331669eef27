"""What one rank runs in the data-parallel tests (under mpirun, from tests/train/test_distributed.py).

    python tests/train/mpi/worker.py record OUT.json -- TRAIN_ARGS...   archc train --distributed,
        and write the sample indices this rank read (one list per step) to OUT.json.RANK
        and its final weights to OUT.json.weights.RANK.npz
    python tests/train/mpi/worker.py fail STEP -- TRAIN_ARGS...          archc train --distributed,
        with rank 1's training step raising at global step STEP (a rank that fails) and
        rank 0's checkpoints written slowly (a failure while one is being written)
"""

import json
import sys
import time

import numpy as np

from archc import cli
from runtime.train import checkpoint, tasks, loop as train

read: list[list[int]] = []


class Recording(np.ndarray):
    """The training images, noting which ones are read by an index array."""

    def __getitem__(self, index):
        if isinstance(index, np.ndarray) and index.dtype.kind == "i":
            read.append(index.tolist())
        return np.asarray(self)[index]


def main(mode: str, arg: str, args: list[str]) -> int:
    if mode == "record":
        fit = train.fit

        def recording_fit(model, split, *a, **k):
            split.train.x = split.train.x.view(Recording)
            history = fit(model, split, *a, **k)
            rank = k["world"].rank
            np.savez(f"{arg}.weights.{rank}.npz", **model.parameters())
            return history

        train.fit = recording_fit  # what archc train calls
        code = cli.main(args)
        from runtime.train import distributed

        rank = distributed.current().rank
        with open(f"{arg}.{rank}", "w") as f:
            json.dump(read, f)
        return code

    if mode == "fail":
        step, calls = int(arg), [0]
        original = tasks.Classification.step

        def failing(self, *a, **k):
            from runtime.train import distributed

            calls[0] += 1
            if distributed.current().rank == 1 and calls[0] == step:
                raise RuntimeError(f"injected failure at step {step}")
            return original(self, *a, **k)

        save = checkpoint.save

        def slow_save(*a, **k):  # rank 1 fails on while rank 0 still writes, unless it waits
            time.sleep(0.5)
            return save(*a, **k)

        tasks.Classification.step = failing
        checkpoint.save = slow_save
        return cli.main(args)
    raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], sys.argv[sys.argv.index("--") + 1:]))
