"""Data-parallel training on this host: archc (MPI, `archc bench --distributed`'s
measurement) against PyTorch's DistributedDataParallel (gloo) on the same network,
per-rank batch, step count and one thread per rank, for 1 and 2 ranks. Prints images/s,
the ratio archc / PyTorch, each one's scaling efficiency, archc's time in communication
and the cost model's prediction, then the cost model's table for more ranks and hosts.

    .venv/bin/python bench/bench_distributed.py [--spec resnet20] [--batch 32] [--steps 10]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "oracles"))  # the PyTorch twins
sys.path.insert(0, str(ROOT / "tests" / "support"))

from archc.cli import scaling  # noqa: E402
from runtime.train import distributed  # noqa: E402


def _torch_rank(rank: int, size: int, batch: int, steps: int, warmup: int, port: int, out):
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    import torch_models

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=size)
    torch.manual_seed(0)
    model = torch_models.CifarResNet(3, 10)
    net = DistributedDataParallel(model) if size > 1 else model
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(rank)
    x = torch.randn(batch, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    loss_fn = torch.nn.CrossEntropyLoss()
    for step in range(warmup + steps):
        if step == warmup:
            dist.barrier()
            began = time.perf_counter()
        opt.zero_grad()
        loss_fn(net(x), y).backward()
        opt.step()
    dist.barrier()
    elapsed = time.perf_counter() - began
    if rank == 0:
        out.put(batch * size * steps / elapsed)
    dist.destroy_process_group()


def torch_images_per_s(size: int, batch: int, steps: int, warmup: int, port: int) -> float:
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_torch_rank, args=(r, size, batch, steps, warmup, port, queue))
             for r in range(size)]
    for p in procs:
        p.start()
    value = queue.get(timeout=600)
    for p in procs:
        p.join()
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="resnet20")
    parser.add_argument("--batch", type=int, default=32, help="images per rank per step")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--ranks", default="1,2")
    parser.add_argument("--trials", type=int, default=3,
                        help="runs per rank count, taking turns; the median is kept")
    args = parser.parse_args()
    ranks = [int(r) for r in args.ranks.split(",")]

    from threadpoolctl import threadpool_info

    blas = {(i["internal_api"], i.get("architecture")) for i in threadpool_info()
            if i["user_api"] == "blas"}
    print(f"BLAS: {', '.join(f'{api} ({arch})' for api, arch in blas)}; "
          f"{os.cpu_count()} cores; one thread per rank")
    spec = str(ROOT / "specs" / f"{args.spec}.yaml")
    runs = scaling.measure(spec, [], ranks, batch=args.batch, steps=args.steps,
                               warmup=args.warmup, trials=args.trials)
    network = distributed.Link(10e-6, 8 / 25e9, "hosts, 25 Gb/s (assumed)")
    report = distributed.scaling_report(runs, network=network)
    torch_ips = {}
    if args.spec == "resnet20":  # its PyTorch twin, the same number of trials
        found: dict[int, list] = {size: [] for size in ranks}
        for trial in range(args.trials):
            for size in ranks:
                found[size].append(torch_images_per_s(size, args.batch, args.steps,
                                                      args.warmup, 29500 + 10 * trial + size))
        torch_ips = {size: sorted(v)[len(v) // 2] for size, v in found.items()}
    print(f"\n{args.spec}, {args.batch} images per rank per step (3x32x32), SGD, "
          f"{args.steps} timed steps after {args.warmup}; median of {args.trials} runs\n")
    print(f"{'ranks':>5} {'archc img/s':>12} {'torch img/s':>12} {'ratio':>6} "
          f"{'archc eff.':>10} {'torch eff.':>10} {'comm':>6} {'exposed':>8} "
          f"{'imbalance':>9} {'model':>6}")
    for row in report["measured"]:
        p = row["ranks"]
        t = torch_ips.get(p)
        t_eff = t / (p * torch_ips[1]) if t and 1 in torch_ips else None
        print(f"{p:>5} {row['images_per_s']:>12.1f} {t or float('nan'):>12.1f} "
              f"{row['images_per_s'] / t if t else float('nan'):>6.2f} "
              f"{row.get('efficiency', float('nan')):>10.1%} "
              f"{t_eff if t_eff is not None else float('nan'):>10.1%} "
              f"{row['comm_share']:>6.1%} {row['exposed_share']:>8.1%} "
              f"{row['imbalance_share']:>9.1%} "
              + (f"{row['predicted_efficiency']:>6.1%}" if "predicted_efficiency" in row
                 else f"{'-':>6}"))
    print()
    print(scaling.format_scaling(report))


if __name__ == "__main__":
    main()
