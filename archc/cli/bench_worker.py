"""One rank of ``archc bench --distributed`` (run by mpirun as ``python -m
archc.cli.bench_worker bench SPEC ...``): timed training steps on random data; rank 0
prints one JSON line."""

from __future__ import annotations

import json
import time

import numpy as np

from runtime.train.distributed import BUCKET_MB, GradientReducer, World, readiness_order

def _bench_worker(args) -> None:
    """One rank of ``archc bench --distributed``: timed training steps on random
    CIFAR-shaped data; rank 0 prints one JSON line."""
    import numba
    from mpi4py import MPI

    from archc import build, compile as compile_graph
    from archc.spec import parse_overrides
    from runtime.train import losses, optim

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
            grads = model.backward(grad, inputs=False).params
        else:
            reducer.begin(1.0 / world.size)
            model.backward(grad, on_grad=reducer.ready, inputs=False)
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

    p = argparse.ArgumentParser(prog="python -m archc.cli.bench_worker",
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

