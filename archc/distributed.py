"""Data-parallel training over MPI: every process (rank) holds the whole network, reads
its shard of each global batch, and the gradients are averaged across ranks with
``Allreduce`` before every optimiser step, so all ranks keep the same weights.

- Sharding (:func:`shard`): the global batches are those of a single-process run (a
  permutation drawn from (seed, epoch)); rank r takes the r-th contiguous slice of each,
  so the data order follows the global step and not the number of ranks.
- Gradients (:class:`GradientReducer`): each rank's gradient of its shard's mean loss is
  weighted by its share of the global batch, copied into contiguous buckets in the order
  the backward pass finishes them, and each bucket's ``Iallreduce`` (a sum) starts as soon
  as its last gradient is final, so communication overlaps the rest of the backward pass.
- Batch norm: per-rank statistics by default (the running statistics are averaged over
  the ranks before every evaluation and checkpoint: their update is linear, so this
  equals averaging at every step), or synchronised (:class:`SyncBatchNorm`): the moments
  of every rank's batch are combined in the forward pass and the gradient sums in the
  backward pass.
- :func:`cost_model`: the alpha-beta model of a ring all-reduce, to predict the scaling
  efficiency of more ranks and hosts from one machine's measurements.

mpi4py and an MPI library are optional (``pip install 'archc[distributed]'``: mpi4py and
Open MPI's wheel); a single process (:data:`ALONE`) needs neither.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
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


@dataclass
class _Bucket:
    names: list[str]
    offsets: list[int]
    sizes: list[int]
    flat: np.ndarray
    waiting: set = field(default_factory=set)
    request: object = None


class GradientReducer:
    """Average the gradients of the parameters ``shapes`` (name -> shape, in the order the
    backward pass finishes them) over the ranks, in buckets of about ``bucket_bytes``.

    Per step: :meth:`begin` with this rank's share of the global batch, :meth:`ready` as
    each gradient is final (``Model.backward(on_grad=...)``), :meth:`finish` for the
    averaged gradients. ``to_host`` moves a gradient off a device (a GPU backend's);
    ``comm_s`` / ``wait_s`` add up the seconds spent in MPI calls / waiting at the end of
    the backward pass (the communication the backward pass did not hide)."""

    def __init__(self, world: World, shapes: dict[str, tuple], *, dtype=np.float32,
                 bucket_bytes: int = 1 << 20, to_host=np.asarray):
        from mpi4py import MPI

        self._mpi, self.world, self.to_host = MPI, world, to_host
        self.shapes = dict(shapes)
        self.buckets: list[_Bucket] = []
        itemsize = np.dtype(dtype).itemsize
        names: list[str] = []
        filled = 0
        for name in self.shapes:  # a bucket closes once it holds bucket_bytes or more
            names.append(name)
            filled += int(np.prod(self.shapes[name])) * itemsize
            if filled >= bucket_bytes:
                self._add(names, dtype)
                names, filled = [], 0
        if names:
            self._add(names, dtype)
        self._where = {n: (b, i) for b in self.buckets for i, n in enumerate(b.names)}
        self.comm_s = self.wait_s = 0.0

    def _add(self, names: list[str], dtype) -> None:
        sizes = [int(np.prod(self.shapes[n])) for n in names]
        offsets = [0, *np.cumsum(sizes)[:-1].tolist()]
        self.buckets.append(_Bucket(list(names), offsets, sizes, np.zeros(sum(sizes), dtype)))

    def begin(self, weight: float) -> None:
        self.weight, self._seen, self._started = weight, set(), 0
        for bucket in self.buckets:
            bucket.waiting = set(bucket.names)

    def ready(self, name: str, grad) -> None:
        where = self._where.get(name)
        if where is None:  # a parameter that does not train now (frozen)
            return
        bucket, i = where
        start = bucket.offsets[i]
        np.multiply(self.to_host(grad).reshape(-1), self.weight,
                    out=bucket.flat[start:start + bucket.sizes[i]])
        self._seen.add(name)
        bucket.waiting.discard(name)
        began = time.perf_counter()
        # buckets start in order (every rank starts the same collectives in the same order)
        while self._started < len(self.buckets) and not self.buckets[self._started].waiting:
            self._start(self.buckets[self._started])
            self._started += 1
        active = [b.request for b in self.buckets[:self._started] if b.request is not None]
        if active:
            self._mpi.Request.Testall(active)  # lets the library move the data on
        self.comm_s += time.perf_counter() - began

    def _start(self, bucket: _Bucket) -> None:
        bucket.request = self.world.comm.Iallreduce(self._mpi.IN_PLACE, bucket.flat)

    def finish(self) -> dict[str, np.ndarray]:
        """The averaged gradients (of the parameters that had one on this rank: the same
        on every rank), as views into the buckets, valid until the next :meth:`begin`."""
        began = time.perf_counter()
        for bucket in self.buckets[self._started:]:  # gradients no op produced stay 0
            for name in bucket.waiting:
                i = bucket.names.index(name)
                bucket.flat[bucket.offsets[i]:bucket.offsets[i] + bucket.sizes[i]] = 0
            self._start(bucket)
        self._started = len(self.buckets)
        self._mpi.Request.Waitall([b.request for b in self.buckets])
        for bucket in self.buckets:
            bucket.request = None
        spent = time.perf_counter() - began
        self.comm_s += spent
        self.wait_s += spent
        out = {}
        for bucket in self.buckets:
            for name, offset, size in zip(bucket.names, bucket.offsets, bucket.sizes):
                if name in self._seen:
                    out[name] = bucket.flat[offset:offset + size].reshape(self.shapes[name])
        return out


def readiness_order(model, names) -> list[str]:
    """``names`` in the order the backward pass finishes their gradients."""
    wanted, order = set(names), []
    for step in sorted(model._final_grads, reverse=True):
        order += [n for n in model._final_grads[step] if n in wanted]
    return order


def average_buffers(world: World, model) -> None:
    """Average the floating-point buffers (batch norm's running statistics) over the
    ranks, in place."""
    if world.size == 1:
        return
    params = model.params
    names = [k for k, spec in model.program.params.items()
             if spec.buffer and params[k].dtype.kind == "f"]
    if not names:
        return
    flat = world.sum(np.concatenate([params[k].ravel().astype(np.float64) for k in names]))
    offset = 0
    for k in names:
        size = params[k].size
        params[k][...] = (flat[offset:offset + size] / world.size).reshape(params[k].shape)
        offset += size
    model.sync()


def broadcast_state(world: World, model, optimizer=None, state=None):
    """Make every rank start from rank 0's weights (and optimiser state and training
    state, when resuming): returns rank 0's ``state``."""
    if world.size == 1:
        return state
    payload = world.broadcast((model.parameters(), optimizer.state_dict()
                               if optimizer is not None and state is not None else None,
                               state) if world.lead else None)
    params, opt_state, state = payload
    if not world.lead:
        for k, v in params.items():
            model.params[k][...] = v
        model.sync()
        if opt_state is not None:
            optimizer.load_state_dict(opt_state)
    return state


# ----------------------------------------------------------------------- launching


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


# ----------------------------------------------------------------------- benchmark and model


@dataclass(frozen=True)
class Link:
    """An all-reduce's cost per message (alpha, seconds) and per byte (beta, s/B)."""
    alpha: float
    beta: float
    name: str

    def ring(self, ranks: int, nbytes: float) -> float:
        """Seconds for a ring all-reduce of ``nbytes`` over ``ranks``: a reduce-scatter and
        an all-gather, each P - 1 steps that send nbytes / P to the next rank."""
        if ranks == 1:
            return 0.0
        return 2 * (ranks - 1) * self.alpha + 2 * (ranks - 1) / ranks * nbytes * self.beta


def fit_link(sizes, seconds, ranks: int, name: str) -> Link:
    """alpha and beta from all-reduce times of several sizes on ``ranks`` (least squares
    on t = 2(P-1) alpha + 2(P-1)/P n beta)."""
    a = np.stack([np.full(len(sizes), 2.0 * (ranks - 1)),
                  2.0 * (ranks - 1) / ranks * np.asarray(sizes, float)], axis=1)
    (alpha, beta), *_ = np.linalg.lstsq(a, np.asarray(seconds, float), rcond=None)
    return Link(max(float(alpha), 0.0), max(float(beta), 0.0), name)


def cost_model(compute_s: float, backward_s: float, bucket_bytes: list[int], ranks: int,
               link: Link) -> dict:
    """Predicted step of one rank: its compute (forward and backward of a fixed per-rank
    batch) and the communication the backward pass does not hide. Buckets leave during
    the backward pass, so all but the last can overlap it: exposed = max(all buckets -
    the backward pass, the last bucket). Efficiency: compute / step."""
    each = [link.ring(ranks, b) for b in bucket_bytes]
    comm = sum(each)
    exposed = max(comm - backward_s, each[-1] if each else 0.0)
    step = compute_s + exposed
    return {"ranks": ranks, "link": link.name, "comm_s": comm, "exposed_s": exposed,
            "step_s": step, "efficiency": compute_s / step}


def measure(spec: str, overrides: list[str], ranks: list[int], *, batch: int, steps: int,
            warmup: int = 2, backend: str = "cpu", bucket_mb: float = BUCKET_MB,
            threads: int = 1, trials: int = 1, timeout: float = 600) -> list[dict]:
    """Timed training steps of ``spec`` on each number of ``ranks`` of this host (one
    mpirun each, ``threads`` Numba threads per rank, ``batch`` images per rank, random
    data shaped as the input): one dict per rank count (see :func:`_bench_worker`). With
    ``trials`` > 1 the rank counts take turns, and each keeps its median run by images/s
    (a shared machine's noise)."""
    runs: dict[int, list[dict]] = {count: [] for count in ranks}
    for _ in range(trials):
        for count in ranks:
            argv = ["-m", "archc.distributed", "bench", spec, "--batch-size", str(batch),
                    "--steps", str(steps), "--warmup", str(warmup), "--backend", backend,
                    "--bucket-mb", str(bucket_mb)]
            for item in overrides:
                argv += ["--set", item]
            done = launch(count, argv, threads=threads, timeout=timeout)
            lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
            if done.returncode != 0 or not lines:
                tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
                raise DistributedError(f"the benchmark on {count} ranks failed (exit code "
                                       f"{done.returncode}):\n{tail}")
            runs[count].append(json.loads(lines[-1]))
    return [sorted(found, key=lambda r: r["images_per_s"])[len(found) // 2]
            for found in runs.values()]


PREDICT_RANKS = (2, 4, 8, 16, 32, 64)


def scaling_report(results: list[dict], *, network: Link, compute_s: float | None = None,
                   compute_label: str = "") -> dict:
    """Measured throughput, communication and efficiency per rank count, and the cost
    model's prediction next to each measurement and for more ranks: on links like this
    host's (alpha and beta fitted to all-reduce times measured here) and across hosts
    (``network``, assumed). ``compute_s``: a rank's compute per step to predict with
    (default: the one-rank run's, measured)."""
    base = next((r for r in results if r["ranks"] == 1), None)
    timed = [r for r in results if r.get("link")]
    local = (fit_link(timed[-1]["link"]["sizes"], timed[-1]["link"]["seconds"],
                      timed[-1]["ranks"], "this host (measured)") if timed else None)
    ref = base or results[0]
    buckets = (timed[-1] if timed else ref)["bucket_bytes"]
    steps = ref["steps"]
    measured_compute = ref["work_s"] / steps
    measured_backward = (ref["backward_s"] - ref["comm_s"]) / steps
    compute = measured_compute if compute_s is None else compute_s
    # on another device, the backward pass takes about two thirds of a step
    backward = measured_backward if compute_s is None else compute_s * 2 / 3
    rows = []
    for r in results:
        row = {"ranks": r["ranks"], "images_per_s": r["images_per_s"],
               "step_s": r["seconds"] / r["steps"],
               "comm_share": r["comm_s"] / r["seconds"],
               "exposed_share": r["wait_s"] / r["seconds"],
               "imbalance_share": r["imbalance_s"] / r["seconds"]}
        if base is not None:
            row["efficiency"] = r["images_per_s"] / (r["ranks"] * base["images_per_s"])
        if local is not None and r["ranks"] > 1:
            row["predicted_efficiency"] = cost_model(
                measured_compute, measured_backward, buckets, r["ranks"], local)["efficiency"]
        rows.append(row)
    links = [x for x in (local, network) if x is not None]
    predictions = [cost_model(compute, backward, buckets, p, link)
                   for link in links for p in PREDICT_RANKS]
    return {"measured": rows, "predicted": predictions, "buckets": buckets,
            "compute_s": compute, "compute_label": compute_label or "measured here, 1 rank",
            "backward_s": backward, "per_rank_batch": ref["per_rank_batch"],
            "threads": ref["threads"],
            "links": [{"name": x.name, "alpha_s": x.alpha, "beta_s_per_byte": x.beta}
                      for x in links]}


def format_scaling(report: dict) -> str:
    from archc.analysis.table import human, seconds

    lines = [f"data-parallel training, {report['per_rank_batch']} images per rank per step, "
             f"{report['threads']} Numba thread(s) per rank; gradients: "
             f"{human(sum(report['buckets']), 'B', ' ')} per step in "
             f"{len(report['buckets'])} bucket(s)", "",
             f"{'ranks':>5} {'img/s':>9} {'step':>9} {'comm':>6} {'exposed':>8} "
             f"{'imbalance':>9} {'efficiency':>10} {'model':>6}"]
    for row in report["measured"]:
        eff = f"{row['efficiency']:.1%}" if "efficiency" in row else "-"
        model = f"{row['predicted_efficiency']:.1%}" if "predicted_efficiency" in row else "-"
        lines.append(f"{row['ranks']:>5} {row['images_per_s']:>9.1f} "
                     f"{seconds(row['step_s']):>9} {row['comm_share']:>6.1%} "
                     f"{row['exposed_share']:>8.1%} {row['imbalance_share']:>9.1%} "
                     f"{eff:>10} {model:>6}")
    notes = ("comm: share of the step in MPI calls; exposed: the part spent waiting at the "
             "end of the backward pass (communication not hidden, and waiting for slower "
             "ranks); imbalance: of the step, the mean wait for the slowest rank's compute "
             "(in 'exposed', not a cost of the network); efficiency: images/s over ranks x "
             "one rank's; model: the cost model's prediction for the same run (no "
             "imbalance).",
             "Cost model (ring all-reduce, alpha-beta): a bucket of n bytes over P ranks takes "
             "2(P-1) alpha + 2(P-1)/P n beta; buckets leave during the backward pass, so all "
             "but the last can hide behind it: step = compute + max(all buckets - backward, "
             "last bucket). Per-rank batch fixed (weak scaling); across hosts, one rank per "
             "host (the network link is the ring's slowest).")
    lines += [""] + [textwrap.fill(note, 92) + "\n" for note in notes]
    lines += [f"compute per step and rank: {seconds(report['compute_s'])} "
              f"({report['compute_label']}), of which backward "
              f"{seconds(report['backward_s'])}"]
    for link in report["links"]:
        bandwidth = 1 / link["beta_s_per_byte"] if link["beta_s_per_byte"] else float("inf")
        lines.append(f"  {link['name']}: alpha {seconds(link['alpha_s'])}, "
                     f"1/beta {human(bandwidth, 'B/s', ' ')}")
    lines += ["", "predicted efficiency (all-reduce time per step):",
              f"{'ranks':>5}  " + "  ".join(f"{x['name'][:28]:>28}" for x in report["links"])]
    per_link: dict[int, list] = {}
    for p in report["predicted"]:
        per_link.setdefault(p["ranks"], []).append(p)
    for ranks, preds in per_link.items():
        lines.append(f"{ranks:>5}  " + "  ".join(
            f"{p['efficiency']:>13.1%} ({seconds(p['comm_s']):>9}) " for p in preds))
    return "\n".join(lines)


def _bench_worker(args) -> None:
    """One rank of ``archc bench --distributed``: timed training steps on random
    CIFAR-shaped data; rank 0 prints one JSON line."""
    import numba
    from mpi4py import MPI

    from archc import build, compile as compile_graph
    from archc.spec import parse_overrides
    from runtime import losses, optim

    world = World.mpi(threads=False)
    if args.backend == "cuda" and world.size > 1:
        world.pick_gpu()
    graph = build(args.spec, parse_overrides(args.set))
    model = compile_graph(graph, backend=args.backend, seed=0).train()
    shape = next(iter(model.program.inputs.values()))
    classes = next(iter(model.program.output_shapes().values()))[-1]
    per_rank = args.batch_size
    rng = np.random.default_rng(world.rank)
    x = rng.standard_normal((per_rank,) + shape).astype(np.float32)
    y = rng.integers(0, classes, per_rank)
    learnable = [k for k, s in model.program.params.items() if s.trainable and not s.buffer]
    params = model.device_params()
    opt = optim.SGD({k: params[k] for k in learnable}, 0.01, momentum=0.9,
                    kernels=model.backend.optim)
    reducer = None
    if world.size > 1:
        order = readiness_order(model, learnable)
        reducer = GradientReducer(world, {k: model.program.params[k].shape for k in order},
                                  bucket_bytes=int(args.bucket_mb * (1 << 20)),
                                  to_host=model.backend.to_host)
    forward_s = backward_s = 0.0
    work = []  # per timed step: seconds outside MPI calls
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            world.sum(np.zeros(1))  # start the clock together
            began, forward_s, backward_s = time.perf_counter(), 0.0, 0.0
            if reducer is not None:
                reducer.comm_s = reducer.wait_s = 0.0
        t0, before = time.perf_counter(), reducer.comm_s if reducer else 0.0
        out = model(x)
        _, grad = losses.cross_entropy(out, y)
        t1 = time.perf_counter()
        if reducer is None:
            grads = model.backward(grad).params
        else:
            reducer.begin(1.0 / world.size)
            model.backward(grad, on_grad=reducer.ready)
            grads = reducer.finish()
        t2 = time.perf_counter()
        opt.step(grads)
        if step >= args.warmup:
            forward_s += t1 - t0
            backward_s += t2 - t1
            work.append(time.perf_counter() - t0 - ((reducer.comm_s if reducer else 0.0)
                                                    - before))
    elapsed = time.perf_counter() - began
    comm = reducer.comm_s if reducer else 0.0
    wait = reducer.wait_s if reducer else 0.0
    every = world.gather(np.array([elapsed, forward_s, backward_s, comm, wait]))
    # how long the fastest ranks wait for the slowest each step (counted as waiting)
    steps_work = world.gather(np.array(work))
    imbalance = float((steps_work.max(axis=0) - steps_work.mean(axis=0)).sum())
    link = None
    if world.size > 1:  # all-reduce times of several sizes, for the cost model
        sizes, times = [], []
        for nbytes in (8, 1 << 10, 1 << 14, 1 << 17, 1 << 20, 1 << 22):
            buf = np.zeros(nbytes // 4, np.float32)
            spent = []
            for _ in range(15):  # the median of single all-reduces, each after a barrier
                world.comm.Barrier()
                t = time.perf_counter()
                world.comm.Allreduce(MPI.IN_PLACE, buf)
                spent.append(time.perf_counter() - t)
            sizes.append(nbytes)
            times.append(float(world.sum(np.array([np.median(spent)]))[0] / world.size))
        link = {"sizes": sizes, "seconds": times}
    if world.lead:
        slowest = every[np.argmax(every[:, 0])]
        print(json.dumps({
            "ranks": world.size, "per_rank_batch": per_rank, "steps": args.steps,
            "seconds": float(slowest[0]), "forward_s": float(every[:, 1].mean()),
            "backward_s": float(every[:, 2].mean()), "comm_s": float(every[:, 3].mean()),
            "wait_s": float(every[:, 4].mean()), "imbalance_s": imbalance,
            "work_s": float(steps_work.mean(axis=0).sum()),
            "images_per_s": per_rank * world.size * args.steps / float(slowest[0]),
            "threads": numba.get_num_threads(),
            "bucket_bytes": [b.flat.nbytes for b in reducer.buckets] if reducer else
            [sum(int(np.prod(model.program.params[k].shape)) * 4 for k in learnable)],
            "link": link}), flush=True)


def _worker_parser():
    import argparse

    p = argparse.ArgumentParser(prog="python -m archc.distributed",
                                description="one rank of archc bench --distributed")
    p.add_argument("command", choices=["bench"])
    p.add_argument("spec")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--backend", default="cpu")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--bucket-mb", type=float, default=BUCKET_MB)
    return p


if __name__ == "__main__":
    _bench_worker(_worker_parser().parse_args())
