"""Where a sweep's work runs: processes on this machine (``--engine local``) or Ray tasks
on a Ray cluster (``--engine ray``), behind one interface; and the two kinds of work, the
analysis of a chunk of points and the training of one trial up to a rung.

A trial trains in its own run folder with ``archc train``'s code (checkpoints, resume),
so a trial whose worker dies is trained again from its last checkpoint: Ray retries the
task on another worker, the local engine restarts its processes. Trials' folders (and
the spec) must therefore be at the same path on every machine of a Ray cluster: a shared
file system.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import socket
from concurrent import futures
from pathlib import Path
from typing import Any, Callable, Iterator

from archc import sweep
from archc.errors import UsageError

CHUNK = 32  # points per Ray task: a task costs about a millisecond, a point about ten
RETRIES = 3  # a trial's worker may die this many times before the sweep gives up on it
# several trials on the same cores: OpenMP threads that spin after each parallel region
# take the cores from the other trials' work (docs/performance.md, "Several processes on
# the same cores"); a user's own setting is kept
SHARING = {"GOMP_SPINCOUNT": os.environ.get("GOMP_SPINCOUNT", "1000")}


def analyse_chunk(spec: str, text: bytes, fixed: dict, chunk: list[dict],
                  device_name: str | None) -> list[dict]:
    """The records of some points (:func:`archc.sweep.analyse_point`), the spec given by
    its text so that a worker on another machine needs no copy of the file."""
    return [sweep.analyse_point(spec, fixed, p, device_name, text) for p in chunk]


def train_trial(spec: str, fixed: dict, point: dict, flags: list[str], run: str,
                until: int, threads: int) -> dict:
    """Train one point of a sweep up to epoch ``until`` in its run folder ``run``, going on
    from the folder's last checkpoint where an earlier rung (or an attempt whose worker
    died) left one; ``threads``: the Numba threads it may use. Returns the epochs done
    and the score (the best held-out value of the task's primary metric), or the error
    that stopped it. The command's output goes to ``run``/train.out."""
    import numba

    from archc.cli import training  # noqa: F401 (registers archc train)
    from archc.cli.dispatch import run as run_command
    from runtime.errors import RunFolderError
    from runtime.files import json_lines, read_json
    from runtime.train.tasks import primary_metric

    numba.set_num_threads(max(1, min(threads, numba.config.NUMBA_NUM_THREADS)))
    folder = Path(run)
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "log.jsonl"
    started = len(json_lines(log, "training log", RunFolderError)) if log.exists() else 0
    resume = any(folder.glob("ckpt-*"))
    with open(folder / "attempts.jsonl", "a", encoding="utf-8") as f:  # who trains it, from where
        f.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                            "from_epoch": started, "until": until}) + "\n")
    # the flags after the point's variables: a --set among them wins (training at another
    # resolution than the one analysed)
    argv = [spec, *[f"--set={k}={json.dumps(v)}" for k, v in {**fixed, **point}.items()],
            *flags, "--until", str(until), "--resume" if resume else "--out", str(folder)]
    with open(folder / "train.out", "a", encoding="utf-8") as out, \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = run_command("train", argv)
    if code != 0:
        lines = (folder / "train.out").read_text(encoding="utf-8").strip().splitlines()
        return {"error": lines[-1] if lines else f"archc train exited with {code}"}
    rows = json_lines(log, "training log", RunFolderError)
    key, name = primary_metric(read_json(folder / "task.json", "run task",
                                         RunFolderError).get("task", "classify"))
    return {"epochs": len(rows), "score": max(r[key] for r in rows), "metric": name}


class LocalEngine:
    """Processes on this machine: ``jobs`` analysing points (none: in this process), and
    trials ``threads`` cores each (None: every core, one trial at a time), as many at a
    time as the cores allow."""

    name = "local"

    def __init__(self, jobs: int, threads: int | None):
        self.cores = os.cpu_count() or 1
        self.jobs, self.threads = jobs, threads or self.cores
        self._pool: futures.ProcessPoolExecutor | None = None
        self._work: dict[int, tuple] = {}  # trial handle: (future, fn, args, restarts)
        self._handles = itertools.count()

    def describe(self) -> str:
        return f"{self.jobs} process{'es' if self.jobs > 1 else ''} on this machine"

    def analyse(self, spec: str, text: bytes, fixed: dict, device: str | None,
                points: list[dict]) -> Iterator[dict]:
        job = functools.partial(sweep.analyse_point, spec, fixed, device_name=device, text=text)
        if self.jobs == 1:
            yield from map(job, points)
            return
        with futures.ProcessPoolExecutor(self.jobs) as pool:
            yield from pool.map(job, points, chunksize=16)

    def trial_slots(self) -> int:
        return max(1, self.cores // self.threads)

    def _trials(self) -> futures.ProcessPoolExecutor:
        if self._pool is None:
            import multiprocessing

            # a fresh interpreter per worker: no Numba threads inherited from a fork, and
            # the environment read when OpenMP starts
            if self.trial_slots() > 1:
                os.environ.update(SHARING)
            self._pool = futures.ProcessPoolExecutor(
                self.trial_slots(), mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    def submit(self, fn: Callable, *args: Any) -> int:
        handle = next(self._handles)
        self._work[handle] = (self._trials().submit(fn, *args), fn, args, 0)
        return handle

    def wait_one(self) -> tuple[int, Any]:
        """The first finished trial and its result. A worker that died breaks its pool:
        the pool is made again and its unfinished trials go on from their checkpoints."""
        while True:
            by_future = {work[0]: handle for handle, work in self._work.items()}
            done, _ = futures.wait(by_future, return_when=futures.FIRST_COMPLETED)
            future = next(iter(done))
            try:
                result = future.result()
            except futures.process.BrokenProcessPool:
                self._restart()
                continue
            handle = by_future[future]
            del self._work[handle]
            return handle, result

    def _restart(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = None
        for handle, (_, fn, args, restarts) in list(self._work.items()):
            if restarts >= RETRIES:
                raise UsageError(f"the worker training {args[4]} died {RETRIES + 1} times; "
                                 "the sweep stops (run it again to go on)")
            self._work[handle] = (self._trials().submit(fn, *args), fn, args, restarts + 1)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)


class RayEngine:
    """Ray tasks on the cluster at ``address`` (or on a Ray instance of this machine's
    cores when there is none): analyses in chunks of points, trials ``threads`` CPUs
    each (None: 1), retried on another worker when theirs dies."""

    name = "ray"

    def __init__(self, address: str | None, threads: int | None, jobs: int):
        try:
            import ray
        except ImportError:
            raise UsageError("--engine ray needs Ray", "pip install 'archc[sweep]' (on every "
                             "machine of the cluster), or use --engine local") from None
        self.ray, self.threads = ray, threads or 1
        self._work: dict[int, Any] = {}
        self._handles = itertools.count()
        quiet: dict = {"include_dashboard": False, "log_to_driver": False,
                       "logging_level": "ERROR", "configure_logging": False}
        try:
            if address:
                ray.init(address=address, **quiet)
            else:
                ray.init(num_cpus=jobs, **quiet)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UsageError(f"--engine ray: no Ray cluster at {address or 'this machine'} "
                             f"({first})", "start one with 'ray start --head' and give the "
                             "address it prints (HOST:6379) to --address") from None
        self.cpus = int(ray.cluster_resources().get("CPU", 1))
        self._analyse = ray.remote(num_cpus=1)(analyse_chunk)

    def describe(self) -> str:
        nodes = sum(1 for n in self.ray.nodes() if n.get("Alive"))
        return f"Ray, {self.cpus} CPUs on {nodes} machine{'s' if nodes > 1 else ''}"

    def analyse(self, spec: str, text: bytes, fixed: dict, device: str | None,
                points: list[dict]) -> Iterator[dict]:
        chunks = (points[i:i + CHUNK] for i in range(0, len(points), CHUNK))

        def submit(count: int) -> list:
            return [self._analyse.remote(spec, text, fixed, chunk, device)
                    for chunk in itertools.islice(chunks, count)]

        waiting = submit(4 * self.cpus)  # tasks in flight: bounded memory for a million points
        while waiting:
            done, waiting = self.ray.wait(waiting, num_returns=1)
            waiting += submit(1)
            yield from self.ray.get(done[0])

    def trial_slots(self) -> int:
        return max(1, self.cpus // self.threads)

    def submit(self, fn: Callable, *args: Any) -> int:
        handle = next(self._handles)
        options: dict = {"num_cpus": self.threads, "max_retries": RETRIES}
        if self.trial_slots() > 1:
            options["runtime_env"] = {"env_vars": SHARING}
        self._work[handle] = self.ray.remote(**options)(fn).remote(*args)
        return handle

    def wait_one(self) -> tuple[int, Any]:
        by_ref = {ref: handle for handle, ref in self._work.items()}
        done, _ = self.ray.wait(list(by_ref), num_returns=1)
        handle = by_ref[done[0]]
        del self._work[handle]
        try:
            return handle, self.ray.get(done[0])
        except self.ray.exceptions.WorkerCrashedError:
            raise UsageError(f"a trial's worker died {RETRIES + 1} times; the sweep stops "
                             "(run it again to go on)") from None

    def close(self) -> None:
        self.ray.shutdown()


def make(name: str, address: str | None, jobs: int, threads: int | None):
    """The engine ``--engine NAME [--address A]`` names."""
    if address and name != "ray":
        raise UsageError("--address is a Ray cluster's: give it with --engine ray")
    return RayEngine(address, threads, jobs) if name == "ray" else LocalEngine(jobs, threads)
