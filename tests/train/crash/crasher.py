"""What the crash-and-resume tests run (from tests/train/test_crash_resume.py), in a fresh
process that forks one child per trial: a process that has run Numba's parallel kernels
(GNU OpenMP) must not fork, so this one never trains itself.

    python tests/train/crash/crasher.py MODE OUT_DIR

MODE: ``after-write`` (killed right after each kind of write a checkpoint makes),
``half-write`` (killed with half of a file on disk), ``random`` (killed on a timer),
``damaged`` (the newest checkpoint truncated, then resumed). Prints one JSON line per
trial: what was done, how the child ended, and whether the resumed run's weights equal
the uninterrupted run's bit for bit (``equal``).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
import warnings
from pathlib import Path

import numpy as np

import archc
from runtime.errors import ArchcWarning, RunFolderError
from runtime.train import checkpoint, data
from runtime.train.data import Dataset, Split
from runtime.train.loop import TrainConfig, fit

SPEC = """name: tiny
input: {channels: 1, height: 8, width: 8}
layers:
  - conv2d: {out_channels: 4, kernel_size: 3, padding: 1}
  - batchnorm2d
  - relu
  - flatten
  - dropout: 0.2
  - linear: {out_features: 10}
"""
# 8 steps per epoch, a checkpoint every 3 steps: checkpoints within and at the end of
# epochs, and a best.json that moves
CONFIG = TrainConfig(epochs=2, batch_size=48, optimizer="adam", lr=3e-3, augment="flip",
                     checkpoint_every=3)
KINDS = {"write weights.npz", "write optimizer.npz", "write state.json",
         "write manifest.json", "rename ckpt", "write .last.json.tmp",
         "write .best.json.tmp", "write .log.jsonl.tmp", "rename file"}


def digits() -> Split:
    split = data.load("digits", (1, 8, 8), seed=0)
    return Split(Dataset(split.train.x[:384], split.train.y[:384], split.train.classes),
                 Dataset(split.test.x[:96], split.test.y[:96], split.test.classes),
                 split.mean, split.std)


def train(run: Path, split: Split, resume: bool = False, config: TrainConfig = CONFIG):
    model = archc.compile(archc.load("tiny.yaml", text=SPEC), backend="reference", seed=0)
    fit(model, split, config, run, resume=resume, report=lambda line: None)
    return model.parameters()


class Counting:
    """Report each write a checkpoint makes to ``on_event`` right after it happened;
    ``half(path, data)`` is called before a file is written (it may write part of it
    and kill the process)."""

    def __init__(self, on_event, half=None):
        self.on_event, self.half = on_event, half

    def __enter__(self):
        self.saved = checkpoint.write_file, checkpoint._rename
        write, rename = self.saved

        def write_file(path, data):
            if self.half is not None:
                self.half(path, data)
            write(path, data)
            self.on_event(f"write {Path(path).name}")

        def renamed(source, target):
            rename(source, target)
            self.on_event("rename ckpt" if Path(target).name.startswith("ckpt")
                          else "rename file")

        checkpoint.write_file, checkpoint._rename = write_file, renamed
        return self

    def __exit__(self, *exc):
        checkpoint.write_file, checkpoint._rename = self.saved


def in_child(work) -> int:
    """``work()`` in a forked child; its exit status (negative: the signal that killed it)."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            work()
        except BaseException:  # noqa: BLE001 (reported by the exit code)
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def finish(run: Path, split: Split, out: Path) -> tuple[bool, str]:
    """In a child: go on from whatever the kill left (resume if a checkpoint is intact,
    else start again, as a user does when --resume finds nothing) and save the weights;
    whether they equal the uninterrupted run's, and the warnings the resume gave."""
    def work():
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always", ArchcWarning)
            try:
                params = train(run, split, resume=True)
            except RunFolderError:
                params = train(run, split)
        np.savez(out / "resumed.npz", **params)
        (out / "warnings.txt").write_text("\n".join(str(w.message) for w in seen))

    status = in_child(work)
    if status != 0:
        return False, f"the resume ended with status {status}"
    with np.load(out / "resumed.npz") as resumed, np.load(out / "straight.npz") as straight:
        equal = set(resumed.files) == set(straight.files) and all(
            np.array_equal(resumed[k], straight[k]) for k in straight.files)
    return equal, (out / "warnings.txt").read_text()


def kill_at(index: int):
    count = [0]

    def on_event(_name):
        count[0] += 1
        if count[0] == index:
            os.kill(os.getpid(), signal.SIGKILL)

    return on_event


def uninterrupted(split: Split, out: Path, config: TrainConfig = CONFIG,
                  name: str = "straight") -> list[str]:
    """The run never interrupted, in a child: its weights (OUT/NAME.npz) and the writes it
    made, in order."""
    def work():
        events: list[str] = []
        with Counting(events.append):
            params = train(out / name, split, config=config)
        np.savez(out / f"{name}.npz", **params)
        (out / f"{name}.events.json").write_text(json.dumps(events))

    assert in_child(work) == 0
    return json.loads((out / f"{name}.events.json").read_text())


def report(**row) -> None:
    print(json.dumps(row), flush=True)


def after_write(split: Split, out: Path) -> None:
    events = uninterrupted(split, out)
    kinds: dict[str, list[int]] = {}
    for k, name in enumerate(events, 1):
        kinds.setdefault(name, []).append(k)
    report(kinds=sorted(kinds), expected=sorted(KINDS))
    rng = random.Random(0)
    # the first and a random later occurrence of every kind, and the first events
    chosen = sorted({k for ks in kinds.values() for k in (ks[0], rng.choice(ks))} | {1, 2})
    for index in chosen:
        run = out / f"kill-{index}"
        status = in_child(lambda: _with(Counting(kill_at(index)), lambda: train(run, split)))
        equal, notes = finish(run, split, out)
        report(trial=f"killed right after event {index} ({events[index - 1]})",
               status=status, equal=equal, notes=notes)


def half_write(split: Split, out: Path) -> None:
    events = uninterrupted(split, out)
    writes = [name for name in events if name.startswith("write ")]
    for n in random.Random(1).sample(range(1, len(writes) + 1), 6):
        run = out / f"half-{n}"
        seen = [0]

        def half(path, data, n=n):
            seen[0] += 1
            if seen[0] == n:  # half of the n-th file on disk, then killed
                with open(path, "wb") as f:
                    f.write(data[: len(data) // 2])
                os.kill(os.getpid(), signal.SIGKILL)

        status = in_child(lambda: _with(Counting(lambda name: None, half),
                                        lambda: train(run, split)))
        equal, notes = finish(run, split, out)
        report(trial=f"killed while writing {writes[n - 1]} (write {n})", status=status,
               equal=equal, notes=notes)


def random_times(split: Split, out: Path) -> None:
    start = time.perf_counter()
    uninterrupted(split, out)
    length = time.perf_counter() - start
    rng = random.Random(2)
    for trial in range(6):
        run = out / f"random-{trial}"
        pid = os.fork()
        if pid == 0:
            try:
                train(run, split)
            finally:
                os._exit(0)
        after = rng.uniform(0.05, 1.0) * length
        time.sleep(after)
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        equal, notes = finish(run, split, out)
        report(trial=f"killed after {after:.2f} s of {length:.2f}",
               status=-os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0,
               equal=equal, notes=notes)


def damaged(split: Split, out: Path) -> None:
    """The finished run's newest checkpoint truncated, then resumed: it goes on from the
    checkpoint before (within the last epoch) and ends equal to the run itself."""
    import shutil

    uninterrupted(split, out)
    shutil.copytree(out / "straight", out / "damaged")
    pointer = json.loads((out / "damaged" / "last.json").read_text())
    newest = out / "damaged" / pointer["checkpoint"] / "weights.npz"
    newest.write_bytes(newest.read_bytes()[:100])
    equal, notes = finish(out / "damaged", split, out)
    report(trial=f"{pointer['checkpoint']} truncated", status=0, equal=equal, notes=notes,
           previous=pointer["previous"])


def _with(context, work):
    with context:
        return work()


if __name__ == "__main__":
    mode, folder = sys.argv[1], Path(sys.argv[2])
    os.chdir(folder)
    {"after-write": after_write, "half-write": half_write, "random": random_times,
     "damaged": damaged}[mode](digits(), folder)
