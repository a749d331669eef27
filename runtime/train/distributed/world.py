"""The ranks of a data-parallel job: who this process is, the collective operations it
uses (through mpi4py), how a global batch is sharded, synchronised batch norm, and
starting ranks with mpirun. :data:`ALONE` is a single process, which needs no MPI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from runtime.errors import DistributedError

# Open MPI refuses to start as root without both
ROOT_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
# gradients are all-reduced in buckets of this many MiB unless told otherwise
BUCKET_MB = 0.25
INSTALL_HINT = ("pip install 'archc[distributed]' (mpi4py and Open MPI's wheel), or mpi4py "
                "built against a system Open MPI or MPICH")


def shard(count: int, rank: int, size: int) -> tuple[int, int]:
    """The [start, stop) slice of a batch of ``count`` samples that ``rank`` of ``size``
    takes: contiguous, disjoint, covering, sizes differing by at most one.

    >>> [shard(10, r, 3) for r in range(3)]
    [(0, 4), (4, 7), (7, 10)]
    """
    base, extra = divmod(count, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


class World:
    """The ranks of a job and the collectives training needs; ``World()`` is a single
    process alone (no MPI), :meth:`mpi` the processes an MPI launcher started."""

    def __init__(self, comm=None):
        self.comm = comm
        self.rank = comm.Get_rank() if comm is not None else 0
        self.size = comm.Get_size() if comm is not None else 1

    @classmethod
    def mpi(cls, threads: bool = True) -> "World":
        """``MPI.COMM_WORLD``; with ``threads``, each rank's Numba kernels use their share
        of the host's cores (cores / ranks on the host) unless NUMBA_NUM_THREADS is set."""
        try:
            from mpi4py import MPI
        except ImportError as exc:
            raise DistributedError(f"--distributed needs mpi4py and an MPI library "
                                   f"({exc}): {INSTALL_HINT}") from None
        global _CURRENT
        world = _CURRENT = cls(MPI.COMM_WORLD)
        if threads and "NUMBA_NUM_THREADS" not in os.environ:
            local = MPI.COMM_WORLD.Split_type(MPI.COMM_TYPE_SHARED).Get_size()
            import numba

            numba.set_num_threads(max(1, min(numba.config.NUMBA_NUM_THREADS,
                                              (os.cpu_count() or 1) // local)))
        return world

    def pick_gpu(self) -> None:
        """Give each rank of a host its own GPU (local rank modulo the GPUs it sees)."""
        from mpi4py import MPI
        from numba import cuda

        local = self.comm.Split_type(MPI.COMM_TYPE_SHARED).Get_rank()
        cuda.select_device(local % len(cuda.gpus))

    @property
    def label(self) -> str:
        return f"rank {self.rank} of {self.size}"

    @property
    def lead(self) -> bool:
        """The rank that logs, shows progress and writes checkpoints."""
        return self.rank == 0

    def sum(self, values: np.ndarray) -> np.ndarray:
        """The element-wise sum over the ranks (every rank gets it)."""
        values = np.ascontiguousarray(values)
        if self.comm is None:
            return values.copy()
        out = np.empty_like(values)
        self.comm.Allreduce(values, out)
        return out

    def barrier(self) -> None:
        """Wait until every rank reaches this point (nothing to wait for alone)."""
        if self.comm is not None:
            self.comm.Barrier()

    def gather(self, values: np.ndarray) -> np.ndarray:
        """Every rank's ``values`` stacked in rank order (every rank gets them)."""
        values = np.ascontiguousarray(values)
        if self.comm is None:
            return values[None].copy()
        out = np.empty((self.size,) + values.shape, values.dtype)
        self.comm.Allgather(values, out)
        return out

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank (pickled: for states, not gradients)."""
        if self.comm is None:
            return obj
        return self.comm.bcast(obj, root=0)

    def abort(self, code: int) -> None:
        """End every rank of the job (the launcher kills the others)."""
        if self.comm is not None and self.size > 1:
            sys.stdout.flush()
            sys.stderr.flush()
            self.comm.Abort(code)


ALONE = World()
_CURRENT: World | None = None  # the job's ranks, once World.mpi() found them


def current() -> World | None:
    """The job's ranks once :meth:`World.mpi` found them (None before, and alone)."""
    return _CURRENT


def where() -> str:
    """'[rank R of P] ' in a job of several ranks (for messages), else ''."""
    return f"[{_CURRENT.label}] " if _CURRENT is not None and _CURRENT.size > 1 else ""


def stop_job(code: int) -> None:
    """This rank failed: say so and end every rank of the job (otherwise the others wait
    for it in their next collective forever). Checkpoints already written stay: each one
    is complete before last.json points at it."""
    if _CURRENT is None or _CURRENT.size == 1:
        return
    print(f"archc: {_CURRENT.label} failed (exit code {code}); stopping all "
          f"{_CURRENT.size} ranks of the job (checkpoints already written are kept)",
          file=sys.stderr)
    _CURRENT.abort(code)


class SyncBatchNorm:
    """Batch statistics over every rank's batch, for the batch-norm kernels
    (``Model.sync_bn``). ``weight``: this rank's share of the global batch in the current
    step (its gradients are of its own shard's mean loss)."""

    def __init__(self, world: World):
        self.world, self.weight = world, 1.0

    def moments(self, count: int, mean: np.ndarray, var: np.ndarray):
        """(count, mean, biased variance) of the union of the ranks' batches from each
        one's own (Chan et al.'s pairwise combination; the same on every rank)."""
        c = len(mean)
        local = np.concatenate([[count], np.asarray(mean, np.float64),
                                np.asarray(var, np.float64)])
        every = self.world.gather(local)
        n, means, variances = every[:, :1], every[:, 1:1 + c], every[:, 1 + c:]
        total = n.sum()
        mu = (n * means).sum(axis=0) / total
        return int(total), mu, (n * (variances + (means - mu) ** 2)).sum(axis=0) / total

    def grad_sums(self, *sums: np.ndarray):
        """The backward pass's per-channel sums over every rank's batch, for the gradient
        of this rank's loss: sum over ranks q of weight_q * sums_q, over this rank's
        weight."""
        sizes = [len(s) for s in sums]
        local = np.concatenate([np.asarray(s, np.float64) for s in sums]) * self.weight
        total = self.world.sum(local) / self.weight
        return tuple(np.split(total, np.cumsum(sizes)[:-1]))


def mpirun() -> str:
    """The MPI launcher: on PATH, or beside this Python (Open MPI's wheel in a venv)."""
    beside = Path(sys.executable).parent / "mpirun"
    found = shutil.which("mpirun") or (str(beside) if beside.exists() else None)
    if found is None:
        raise DistributedError(f"no mpirun found: {INSTALL_HINT}")
    return found


def launch_env(threads: int | None = None) -> dict:
    """The environment for an mpirun this process starts (as root, Open MPI's consent)."""
    env = dict(os.environ)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        env.update(ROOT_ENV)
    if threads is not None:
        env["NUMBA_NUM_THREADS"] = str(threads)
    return env


def launch(ranks: int, argv: list[str], *, threads: int | None = None, timeout=None,
           capture: bool = True) -> subprocess.CompletedProcess:
    """Run ``argv`` (a Python module's arguments, after ``python``) on ``ranks`` ranks of
    this host with mpirun."""
    command = [mpirun(), "-n", str(ranks)]
    if ranks > (os.cpu_count() or 1):
        command.append("--oversubscribe")
    return subprocess.run(command + [sys.executable, *argv], env=launch_env(threads),
                          capture_output=capture, text=True, timeout=timeout)

