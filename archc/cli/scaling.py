"""``archc bench --distributed``: runs the benchmark worker on each rank count, and
prints the measured scaling beside the cost model's prediction."""

from __future__ import annotations

import json
import textwrap

from archc.analysis.table import human, seconds
from runtime.errors import DistributedError
from runtime.train.distributed import BUCKET_MB, launch

def measure(spec: str, overrides: list[str], ranks: list[int], *, batch: int, steps: int,
            warmup: int = 2, backend: str = "cpu", bucket_mb: float = BUCKET_MB,
            threads: int = 1, trials: int = 1, timeout: float = 600) -> list[dict]:
    """Timed training steps of ``spec`` on each number of ``ranks`` of this host (one
    mpirun each, ``threads`` Numba threads per rank, ``batch`` images per rank, random
    data shaped as the input): one dict per rank count (see ``archc/cli/bench_worker.py``). With
    ``trials`` > 1 the rank counts take turns, and each keeps its median run by images/s
    (a shared machine's noise)."""
    runs: dict[int, list[dict]] = {count: [] for count in ranks}
    for _ in range(trials):
        for count in ranks:
            argv = ["-m", "archc.cli.bench_worker", "bench", spec, "--batch-size", str(batch),
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



def format_scaling(report: dict) -> str:
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
