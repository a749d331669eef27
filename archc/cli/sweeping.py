"""``archc sweep``: the cost of every point of a design space, its constraint and its
Pareto front (:mod:`archc.sweep`), on this machine's cores."""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
from pathlib import Path

from archc.cli.common import COMMANDS, EXIT_OK, add_spec_arguments, positive
from archc.errors import UsageError


def _read_done(path: Path) -> dict[str, dict]:
    """The records an earlier run of the sweep wrote, by point; a damaged file is refused
    with its name."""
    from archc.sweep import key
    from runtime.errors import RunFolderError
    from runtime.files import json_lines

    if not path.exists():
        return {}
    done = {}
    for number, row in enumerate(json_lines(path, "sweep results", RunFolderError), 1):
        if not isinstance(row.get("point"), dict):
            raise RunFolderError(f"sweep results {path}, line {number}, has no point")
        done[key(row["point"])] = row
    return done


def _append(path: Path, records: list[dict]) -> None:
    """Whole lines in one write, flushed to disk: a kill loses at most the last batch."""
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))
        f.flush()
        os.fsync(f.fileno())


def _cmd_sweep(args: argparse.Namespace) -> int:
    from concurrent.futures import ProcessPoolExecutor

    from archc import sweep
    from archc.analysis.table import human
    from archc.spec import parse_overrides

    objectives = [o.strip() for o in args.objectives.split(",") if o.strip()]
    for name in objectives:
        if name not in sweep.METRICS:
            raise UsageError(f"--objectives: unknown '{name}'",
                             f"choose from {', '.join(sweep.METRICS)}")
    if "latency_s" in objectives and not args.device:
        raise UsageError("--objectives latency_s needs --device (cpu, h100 or h200)")
    sweep.check_where(args.where)
    grid = [sweep.grid_values(g) for g in args.grid]
    samples = [sweep.sampler(s) for s in args.sample]
    if not grid and not samples:
        raise UsageError("a sweep needs --grid or --sample",
                         "e.g. --grid \"width_mult=[0.5, 1.0]\" --sample \"w_a=uniform(8, 64)\"")
    fixed = parse_overrides(args.overrides)
    # a discrete draw may repeat a point: each is analysed once
    todo = list({sweep.key(p): p for p in sweep.points(grid, samples, args.count,
                                                          args.seed)}.values())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "points.jsonl"
    done = _read_done(results)
    missing = [p for p in todo if sweep.key(p) not in done]
    print(f"{len(todo)} points, {len(todo) - len(missing)} done before; analysing "
          f"{len(missing)} on {args.jobs} process{'es' if args.jobs > 1 else ''}")
    batch: list[dict] = []
    job = functools.partial(sweep.analyse_point, args.spec, fixed, device_name=args.device)
    with ProcessPoolExecutor(args.jobs) if args.jobs > 1 else contextlib.nullcontext() as pool:
        work = pool.map(job, missing, chunksize=16) if pool else map(job, missing)
        for record in work:
            done[sweep.key(record["point"])] = record
            batch.append(record)
            if len(batch) >= 64:
                _append(results, batch)
                batch = []
    if batch:
        _append(results, batch)
    records = [done[sweep.key(p)] for p in todo]
    invalid = sum(1 for r in records if "error" in r)
    ok = [r for r in records if sweep.feasible(r, args.where)]
    front = sweep.pareto_front(ok, objectives)
    (out / "front.json").write_text(json.dumps(front, indent=1))
    figure = sweep.front_figure(ok, front, objectives, Path(args.spec).stem)
    if figure is not None:
        figure.savefig(out / "front.png", dpi=90)
    print(f"{len(ok)} feasible" + (f" ({args.where})" if args.where else "")
          + (f", {invalid} no valid network" if invalid else "")
          + f"; Pareto front on {', '.join(objectives)}: {len(front)} points")
    shown = sorted(front, key=lambda r: tuple(r[o] for o in objectives))
    for r in shown[:args.show]:
        numbers = "  ".join(f"{o} {human(r[o]) if o != 'latency_s' else f'{r[o] * 1e3:.3f} ms'}"
                            for o in objectives)
        print(f"  {numbers}  {json.dumps(r['point'])}")
    if len(shown) > args.show:
        print(f"  ... {len(shown) - args.show} more in {out / 'front.json'}")
    print(f"wrote {results}, {out / 'front.json'}"
          + (f" and {out / 'front.png'}" if figure is not None else ""))
    return EXIT_OK


def _setup_sweep(p: argparse.ArgumentParser) -> None:
    add_spec_arguments(p)
    p.add_argument("--grid", action="append", default=[], metavar="NAME=[V,...]",
                   help="every listed value of a variable (repeatable: every combination)")
    p.add_argument("--sample", action="append", default=[], metavar="NAME=DIST(...)",
                   help="random values of a variable: uniform(a, b), loguniform(a, b), "
                   "randint(a, b), choice([v, ...]) (repeatable)")
    p.add_argument("--count", type=positive, default=100,
                   help="random points per grid combination with --sample (default 100)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random points (default 0)")
    p.add_argument("--where", metavar="CONDITION",
                   help="keep points that meet it, e.g. \"macs < 600e6 and params < 5e6\" "
                   "(names: params, macs, flops, peak_bytes, latency_s, layers)")
    p.add_argument("--objectives", default="params,macs", metavar="LIST",
                   help="what the Pareto front minimises (default params,macs)")
    p.add_argument("--device", metavar="NAME",
                   help="add a roofline latency (latency_s): cpu, h100 or h200")
    p.add_argument("--jobs", type=positive, default=os.cpu_count() or 1,
                   help="processes analysing points (default: this machine's cores)")
    p.add_argument("--out", default="runs/sweep", metavar="DIR",
                   help="where points.jsonl (every point, appended as they finish) and "
                   "front.json go; a rerun skips the points already there")
    p.add_argument("--show", type=positive, default=20, help="front points printed (20)")


COMMANDS["sweep"] = (
    "analyse every point of a design space (grid, random samples) and print its Pareto front",
    _setup_sweep,
    _cmd_sweep,
)
