"""Compiling a network's kernels on several cores the first time it runs.

Numba compiles a kernel on first use, one at a time on one core, and keeps it in its
on-disk cache; a network's first pass with a cold cache is therefore mostly compilation
(ResNet-18: about 15 kernels, 25-30 s on one core). The first time a pass of a model
actually compiles (Numba's ``numba:compile`` event fires only on a cache miss; a warm
cache never starts anything here), helper processes start and run the network's ops
one by one on random inputs of the right shapes (forward and, for a training pass,
backward), taking them from the other end of the program than the model's pass, one op
of each kind and algorithm. They share the cache with the model's process, so every
kernel a helper finishes is a cache hit when the pass reaches its op; the pass waits
only for an op a helper is compiling at that moment, and stops the helpers when it ends
(a cache write is atomic: an interrupted one leaves nothing).

``ARCHC_COMPILE_JOBS`` is how many processes compile at once, the model's included:
1 turns the helpers off; the default is the usable cores, at most 4.
"""

from __future__ import annotations

import atexit
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from runtime.errors import UsageError

MAX_DEFAULT_JOBS = 4  # more helpers compile more kernels twice than they save
_ROOT = str(Path(__file__).resolve().parent.parent)  # the folder holding `runtime`
_running: list["Helpers"] = []  # stopped at exit, whatever happened to the model


def compile_jobs() -> int:
    """Processes that may compile at once (``ARCHC_COMPILE_JOBS``, else the cores)."""
    text = os.environ.get("ARCHC_COMPILE_JOBS", "").strip()
    if text:
        try:
            return max(1, int(text))
        except ValueError:
            raise UsageError(f"ARCHC_COMPILE_JOBS must be a whole number, got '{text[:40]}'",
                             hint="e.g. ARCHC_COMPILE_JOBS=1 to compile in one process only"
                             ) from None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, MAX_DEFAULT_JOBS))


def firsts(program, algorithm, batch: int, training: bool) -> tuple[list[int], list[int]]:
    """The steps of the ops that may need kernels no other op needs before them: the
    first op of each kind and algorithm in forward order (others of the same kind and
    algorithm reuse its kernels), and the last in backward order (and whether the op
    computes its input's gradient: a training step skips it at the network's input)."""
    groups: dict[tuple, list[int]] = {}
    for step, op in enumerate(program.ops):
        chosen = algorithm(op, batch, training) if algorithm else None
        fed = all(i in program.inputs for i in op.inputs)
        groups.setdefault((op.kind, chosen[0] if chosen else None, fed), []).append(step)
    return sorted(s[0] for s in groups.values()), sorted(s[-1] for s in groups.values())


def claim(folder: str, item: str) -> bool:
    """Take a work item (``f12``: op 12 forward, ``b12``: backward): True for the one
    process whose claim file creates it."""
    try:
        os.close(os.open(os.path.join(folder, f"claim-{item}"),
                         os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


class Helpers:
    """Helper processes compiling one model's kernels for its first passes (see the
    module's doc).

    The work is the ops of :func:`firsts`, forward (``f`` items) and, in training,
    backward (``b`` items), shared out by *claims*: a file per item in a folder of this
    run's own, created with ``O_EXCL`` by whichever process takes the item (one wins),
    and a second file once its kernels are in the cache. The model's process claims each
    item as its pass reaches it, or waits for the helper that claimed it; the helpers take
    the items from the other end (forward items from the last op back, then backward
    items from the first op on), so that they meet the pass instead of following it."""

    POLL = 0.005  # seconds between looks at a helper's item
    WAIT = 600.0  # the longest wait for a helper's item (a helper that hangs)

    def __init__(self, program, dtype, batch: int, training: bool, jobs: int,
                 steps: tuple[list[int], list[int]], at: int, backward: bool):
        forward, back = steps
        self.items, self.mine = {f"f{s}" for s in forward} | {f"b{s}" for s in back}, set()
        self.folder = tempfile.mkdtemp(prefix="archc-warmup-")
        for step in back if backward else forward:  # what the pass has done or is doing
            if (step >= at) if backward else (step <= at):
                self.before(step, backward)
        order = ([] if backward else [f"f{s}" for s in reversed(forward)]) + (
            [f"b{s}" for s in back] if training else [])
        # this user's alone, whatever the umask: compile_helper.read_job loads no other
        job = os.open(os.path.join(self.folder, "job.pkl"), os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                      0o600)
        with open(job, "wb") as f:
            pickle.dump({"program": program, "dtype": np.dtype(dtype).str, "batch": batch,
                         "training": training, "order": order}, f)
        env = dict(os.environ, NUMBA_NUM_THREADS="1", ARCHC_COMPILE_JOBS="1",
                   PYTHONPATH=os.pathsep.join([_ROOT] + [p for p in sys.path if p]))
        self.procs = [subprocess.Popen(
            [sys.executable, "-m", "runtime.compile_helper", self.folder],
            env=env, cwd=_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL) for _ in range(jobs - 1)]
        _running.append(self)

    def before(self, step: int, backward: bool) -> None:
        """Before the model's pass runs ``step`` (forward or backward): claim its item, or
        wait until the helper that claimed it has its kernels in the cache (or stopped)."""
        item = f"{'b' if backward else 'f'}{step}"
        if item not in self.items or item in self.mine:
            return
        if claim(self.folder, item):
            self.mine.add(item)
            return
        done = os.path.join(self.folder, f"done-{item}")
        deadline = time.monotonic() + self.WAIT
        while not os.path.exists(done) and time.monotonic() < deadline:
            if all(proc.poll() is not None for proc in self.procs):
                return
            time.sleep(self.POLL)

    def stop(self) -> None:
        """End the helpers (done or not) and remove their folder."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = []
        shutil.rmtree(self.folder, ignore_errors=True)
        if self in _running:
            _running.remove(self)


def start_helpers(*args, **kwargs) -> Helpers | None:
    """:class:`Helpers`, or None where they cannot start (no process or temporary file
    to be had here, a program that does not pickle): the pass then compiles alone."""
    try:
        return Helpers(*args, **kwargs)
    except (OSError, pickle.PicklingError, TypeError, AttributeError):
        return None


@atexit.register
def _stop_all() -> None:
    for helpers in list(_running):
        helpers.stop()


class Watch:
    """What a first pass tells the helpers: :meth:`before` each op it runs."""

    def __init__(self, helpers: Helpers | None, backward: bool):
        self.helpers, self.backward, self.step = helpers, backward, 0

    def before(self, step: int) -> None:
        self.step = step
        if self.helpers is not None:
            self.helpers.before(step, self.backward)


@contextmanager
def on_first_compile(start):
    """Call ``start()`` (once) if Numba compiles anything inside the block."""
    from numba.core import event

    started = []

    class Listener(event.Listener):
        def on_start(self, ev):
            if not started:
                started.append(True)
                start()

        def on_end(self, ev):
            pass

    with event.install_listener("numba:compile", Listener()):
        yield
