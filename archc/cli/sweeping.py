"""``archc sweep``: the cost of every point of a design space, its constraint and its
Pareto front (:mod:`archc.sweep`); points trained under successive halving, or proposed
by Optuna; on this machine's cores or a Ray cluster (:mod:`archc.cli.sweep_engines`)."""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

from archc.cli.common import (COMMANDS, EXIT_OK, TRAILING, Parser, add_spec_arguments,
                              positive)
from archc.errors import UsageError


def _read_done(path: Path) -> dict[str, dict]:
    """The records an earlier run of the sweep wrote, by point; a damaged file is refused
    with its name."""
    from archc.sweep import METRICS, key
    from runtime.errors import RunFolderError
    from runtime.files import finite_number, json_lines

    if not path.exists():
        return {}
    done = {}
    for number, row in enumerate(json_lines(path, "sweep results", RunFolderError), 1):
        if not isinstance(row.get("point"), dict):
            raise RunFolderError(f"sweep results {path}, line {number}, has no point")
        numbers = [m for m in METRICS if m != "latency_s"] + (
            ["latency_s"] if "latency_s" in row else [])
        if not (isinstance(row.get("error"), str)
                or all(finite_number(row.get(m)) for m in numbers)):
            raise RunFolderError(f"sweep results {path}, line {number}, has neither the "
                                 f"point's numbers ({', '.join(numbers)}) nor its error")
        done[key(row["point"])] = row
    return done


def _append(path: Path, records: list[dict]) -> None:
    """Whole lines in one write, flushed to disk: a kill loses at most the last batch."""
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))
        f.flush()
        os.fsync(f.fileno())


def _cmd_sweep(args: argparse.Namespace) -> int:
    from archc import sweep
    from archc.cli import sweep_engines
    from archc.spec import parse_overrides
    from archc.spec.loader import read_spec

    objectives = [o.strip() for o in args.objectives.split(",") if o.strip()]
    for name in objectives:
        if name not in sweep.METRICS:
            raise UsageError(f"--objectives: unknown '{name}'",
                             f"choose from {', '.join(sweep.METRICS)} (score, the trained "
                             "accuracy, is added by --train)")
    if "latency_s" in objectives and not args.device:
        raise UsageError("--objectives latency_s needs --device (cpu, h100 or h200)")
    sweep.check_where(args.where)
    grid = [sweep.grid_values(g) for g in args.grid]
    samples = [sweep.sampler(s) for s in args.sample]
    if not grid and not samples:
        raise UsageError("a sweep needs --grid or --sample",
                         "e.g. --grid \"width_mult=[0.5, 1.0]\" --sample \"w_a=uniform(8, 64)\"")
    if args.train_flags and not args.train:
        raise UsageError("training flags after '--' need --train K (or --train front)")
    if args.search == "optuna" and not (args.train or "").isdigit():
        raise UsageError("--search optuna proposes points to train: give --train K, the "
                         "number of points to train", "e.g. --search optuna --train 20 -- "
                         "--data digits --epochs 9")
    fixed = parse_overrides(args.overrides)
    training = _training(args, fixed) if args.train else None
    spec = str(Path(args.spec).resolve())
    text = read_spec(spec)  # sent to the workers: no copy of the file needed there
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "points.jsonl"
    done = _read_done(results)
    engine = sweep_engines.make(args.engine, args.address, args.jobs, args.trial_cpus)
    try:
        if args.search == "optuna":
            _search(args, engine, training, grid, samples, objectives, fixed, spec, text, done)
            _front(args, list(done.values()), objectives, out)
            return EXIT_OK
        # a discrete draw may repeat a point: each is analysed once
        todo = list({sweep.key(p): p for p in sweep.points(grid, samples, args.count,
                                                              args.seed)}.values())
        missing = [p for p in todo if sweep.key(p) not in done]
        print(f"{len(todo)} points, {len(todo) - len(missing)} done before; analysing "
              f"{len(missing)} on {engine.describe()}")
        batch: list[dict] = []
        for record in engine.analyse(spec, text, fixed, args.device, missing):
            done[sweep.key(record["point"])] = record
            batch.append(record)
            if len(batch) >= 64:
                _append(results, batch)
                batch = []
        if batch:
            _append(results, batch)
        records = [done[sweep.key(p)] for p in todo]
        feasible, front = _front(args, records, objectives, out)
        if training is not None:
            chosen = front if args.train == "front" else sweep.spread(
                feasible, int(args.train), objectives[0])
            _train(args, engine, training, chosen, objectives, fixed, out)
    finally:
        engine.close()
    return EXIT_OK


def _search(args, engine, training: dict, grid, samples, objectives: list[str], fixed: dict,
            spec: str, text: bytes, done: dict) -> None:
    """--search optuna: Optuna proposes the points (analysed here, each appended to
    points.jsonl), successive halving trains the feasible ones; a rerun tells Optuna what
    the earlier run found and goes on to --train K trained points."""
    import functools

    from archc import sweep

    results = Path(args.out) / "points.jsonl"

    def analysed(record: dict) -> None:
        done[sweep.key(record["point"])] = record
        _append(results, [record])

    search = sweep.OptunaSearch(
        {**{name: sweep.Draw("choice", values=values) for name, values in grid}, **dict(samples)},
        args.seed, args.where,
        functools.partial(sweep.analyse_point, spec, fixed, device_name=args.device, text=text),
        analysed)
    for record in done.values():
        if not sweep.feasible(record, args.where):
            search.known(record, None)
    print(f"Optuna's TPE sampler (seed {args.seed}) proposes points under "
          f"{args.where or 'no constraint'}; {len(done)} analysed before")
    _train(args, engine, training, [], objectives, fixed, Path(args.out), search, done)


def _front(args, records: list[dict], objectives: list[str],
           out: Path) -> tuple[list[dict], list[dict]]:
    """The feasible points and their Pareto front, printed and written (front.json,
    front.png)."""
    from archc import sweep

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
    _show(front, objectives, args.show, out / "front.json")
    print(f"wrote {out / 'points.jsonl'}, {out / 'front.json'}"
          + (f" and {out / 'front.png'}" if figure is not None else ""))
    return ok, front


def _shown(point: dict) -> str:
    """A point as printed: floats to 4 significant digits (the files keep every digit)."""
    return json.dumps({k: float(f"{v:.4g}") if isinstance(v, float) else v
                       for k, v in point.items()})


def _show(front: list[dict], objectives: list[str], limit: int, path: Path) -> None:
    from archc.analysis.table import human

    def number(record: dict, name: str) -> str:
        if name == "latency_s":
            return f"{record[name] * 1e3:.3f} ms"
        if name == "score":
            return f"{record['metric']} {record[name]:.4f} ({record['epochs']} epochs)"
        return human(record[name])

    shown = sorted(front, key=lambda r: tuple(r[o] for o in objectives))
    for r in shown[:limit]:
        numbers = "  ".join(f"{o} {number(r, o)}" if o != "score" else number(r, o)
                            for o in objectives)
        print(f"  {numbers}  {_shown(r['point'])}")
    if len(shown) > limit:
        print(f"  ... {len(shown) - limit} more in {path}")


class _FlagsParser(Parser):
    """archc train's flags, refused with one line that says where they came from."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"training flags after '--': {message}")


# flags of archc train that the sweep sets for each trial itself
# (a --set among them changes a variable for training only: a smaller resolution)
_SWEEP_OWNS = ("--out", "--resume", "--until", "--distributed", "--tensorboard")


def _training(args, fixed: dict) -> dict:
    """The trials' settings, checked before any work: the training flags (as archc train
    reads them), the epochs of each rung, and the sweep's earlier settings if it trained
    before (a rerun must train its trials the same way to go on with them)."""
    from archc import build, sweep
    from archc.cli.common import settings_of
    from archc.spec import parse_overrides

    flags = list(args.train_flags)
    for flag in flags:
        if flag.split("=")[0] in _SWEEP_OWNS:
            raise UsageError(f"training flag {flag.split('=')[0]}: the sweep sets it for "
                             "each trial itself", "leave it out after '--'")
    if args.train != "front" and not (args.train.isdigit() and int(args.train) > 0):
        raise UsageError(f"--train takes a number of points or 'front', got '{args.train}'")
    parser = _FlagsParser(prog="archc train")
    COMMANDS["train"][1](parser)
    train_args = parser.parse_args([args.spec, *flags])
    variables = {**fixed, **parse_overrides(train_args.overrides)}
    epochs = settings_of(train_args, build(args.spec, variables)).config.epochs
    plan = {"flags": flags, "rungs": sweep.rungs(min(args.min_epochs, epochs), epochs, args.eta),
            "eta": args.eta}
    saved = Path(args.out) / "trials.json"
    if saved.exists():
        from runtime.errors import RunFolderError
        from runtime.files import read_json

        before = read_json(saved, "sweep training settings", RunFolderError)
        if before != plan:
            raise UsageError(f"the trials in {args.out} were trained with other settings "
                             f"({before.get('flags')}, rungs {before.get('rungs')})",
                             "give the same training flags, --eta and --min-epochs, or "
                             "another --out")
    return plan


def _train(args, engine, plan: dict, chosen: list[dict], objectives: list[str],
           fixed: dict, out: Path, search=None, analysed: dict | None = None) -> None:
    """Train the chosen points as trials under successive halving
    (:class:`archc.sweep.Asha`), each in its own run folder, results appended to
    trials.jsonl as they come (a rerun goes on from them); then the Pareto front of the
    trained points on the objectives and their score. With ``search`` (an
    :class:`archc.sweep.OptunaSearch`), the trials are its proposals, up to --train K;
    ``analysed``: every point's record by key, those of earlier runs included."""
    import hashlib

    from archc import sweep
    from archc.cli.sweep_engines import train_trial

    def trial_id(point: dict) -> str:
        return hashlib.sha1(sweep.key(point).encode()).hexdigest()[:10]

    trials = {trial_id(r["point"]): r for r in chosen}
    earlier = _read_trials(out / "trials.jsonl") if (out / "trials.jsonl").exists() else []
    if search is not None:  # the points trained before are this search's trials
        for row in earlier:
            if sweep.key(row["point"]) in analysed:
                trials.setdefault(row["trial"], analysed[sweep.key(row["point"])])
                if row["rung"] == 0:
                    search.known(row, row.get("score"))
    folders = out / "trials"
    folders.mkdir(exist_ok=True)
    (out / "trials.json").write_text(json.dumps(plan, indent=1))
    rungs = plan["rungs"]
    asha = sweep.Asha(list(trials), rungs, plan["eta"])
    log = out / "trials.jsonl"
    results, replayed = {}, 0
    for row in earlier:
        if row["trial"] in trials and row["rung"] in range(len(rungs)):
            asha.done(row["trial"], row["rung"], row.get("score", -math.inf))
            results[row["trial"]] = row
            replayed += 1
    threads = engine.threads
    wanted = int(args.train) if search is not None else len(trials)
    print(f"training {wanted} point{'s' if wanted > 1 else ''} (rungs at {', '.join(map(str, rungs))} "
          f"epochs, the best 1/{plan['eta']} go on), {engine.trial_slots()} at a time, "
          f"{threads} core{'s' if threads > 1 else ''} each; {replayed} rung results "
          "from before")
    running: dict[int, tuple[str, int]] = {}
    while True:
        while len(running) < engine.trial_slots():
            more = search is not None and len(trials) < wanted
            job = asha.next(more)
            if job is None and more:
                record = search.propose()
                if record is None:
                    print(f"  no feasible point in {sweep.MAX_TRIES} proposals: the search "
                          "stops")
                    wanted = len(trials)
                else:
                    trials[trial_id(record["point"])] = record
                    asha.add(trial_id(record["point"]))
                    job = asha.next(more)
            if job is None:
                break
            trial, rung = job
            folder = str((folders / trial).resolve())
            handle = engine.submit(train_trial, str(Path(args.spec).resolve()), fixed,
                                   trials[trial]["point"], plan["flags"], folder, rungs[rung],
                                   threads)
            running[handle] = job
        if not running:
            break
        handle, result = engine.wait_one()
        trial, rung = running.pop(handle)
        row = {"trial": trial, "rung": rung, "point": trials[trial]["point"], **result}
        asha.done(trial, rung, result.get("score", -math.inf))
        if search is not None and rung == 0:
            search.tell(trials[trial]["point"], result.get("score"))
        _append(log, [row])
        results[trial] = row
        what = (f"error: {result['error']}" if "error" in result else
                f"{result['epochs']} epochs, {result['metric']} {result['score']:.4f}")
        print(f"  trial {trial} {_shown(trials[trial]['point'])}: {what}")
    trained = [{**trials[t], "score": r["score"], "metric": r["metric"], "epochs": r["epochs"],
                "stopped_early": r["rung"] < len(rungs) - 1, "run": str(folders / t)}
               for t, r in results.items() if "error" not in r]
    failed = len(results) - len(trained)
    goals = objectives + ["score"]
    best = sweep.pareto_front(trained, goals)
    (out / "trained.json").write_text(json.dumps(best, indent=1))
    figure = sweep.front_figure(trained, best, [objectives[0], "score"],
                                f"{Path(args.spec).stem}: trained", "trained points")
    if figure is not None:
        figure.savefig(out / "trained.png", dpi=90)
    stopped = sum(1 for r in trained if r["stopped_early"])
    print(f"trained {len(trained)}" + (f" ({stopped} stopped early)" if stopped else "")
          + (f", {failed} failed" if failed else "")
          + f"; Pareto front on {', '.join(goals)}: {len(best)} points")
    _show(best, goals, args.show, out / "trained.json")
    print(f"wrote {log}, {out / 'trained.json'}"
          + (f" and {out / 'trained.png'}" if figure is not None else "")
          + f"; each trial's run folder is in {folders}")


def _read_trials(path: Path) -> list[dict]:
    """The rung results an earlier run of the sweep wrote, each checked: a damaged file is
    refused with its name and line."""
    from runtime.errors import RunFolderError
    from runtime.files import finite_number, json_lines

    rows = json_lines(path, "sweep trials", RunFolderError)
    for number, row in enumerate(rows, 1):
        whole = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
        fine = (isinstance(row.get("trial"), str) and whole(row.get("rung"))
                and isinstance(row.get("point"), dict))
        if fine and "error" not in row:
            fine = (finite_number(row.get("score")) and whole(row.get("epochs"))
                    and isinstance(row.get("metric"), str))
        if not fine:
            raise RunFolderError(f"sweep trials {path}, line {number}, is not a trial's "
                                 "result (trial, rung, point, and epochs, score, metric)")
    return rows


def _setup_sweep(p: argparse.ArgumentParser) -> None:
    add_spec_arguments(p)
    p.add_argument("--grid", action="append", default=[], metavar="NAME=[V,...]",
                   help="every listed value of a variable (repeatable: every combination)")
    p.add_argument("--sample", action="append", default=[], metavar="NAME=DIST(...)",
                   help="random values of a variable: uniform(a, b), loguniform(a, b), "
                   "randint(a, b), choice([v, ...]) (repeatable)")
    p.add_argument("--search", choices=["grid", "optuna"], default="grid",
                   help="grid: every grid combination times --count random samples (default); "
                   "optuna: Optuna's TPE sampler proposes points to --train, learning from the "
                   "scores (needs archc[sweep])")
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
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: processes on this machine (default); ray: Ray tasks on a "
                   "Ray cluster (needs archc[sweep])")
    p.add_argument("--address", metavar="HOST:PORT",
                   help="--engine ray: the cluster's head ('ray start --head' prints it; "
                   "default: a Ray instance on this machine's cores)")
    p.add_argument("--train", metavar="K|front",
                   help="train K feasible points spread from the smallest to the largest "
                   "(by the first objective), or the points of the front, with the training "
                   "flags given after '--' (archc train's); bad ones stop early")
    p.add_argument("--eta", type=_above_one, default=3,
                   help="--train: the best 1/ETA of the trials at a rung go on (default 3)")
    p.add_argument("--min-epochs", type=positive, default=1, metavar="EPOCHS",
                   help="--train: the first rung; the next ones ETA times as many epochs, "
                   "the last --epochs (default 1)")
    p.add_argument("--trial-cpus", type=positive, metavar="N",
                   help="--train: cores per trial (default: every core of this machine "
                   "locally, one trial at a time; 1 on Ray)")
    p.set_defaults(train_flags=[])
    p.epilog = ("Training flags for --train go after '--', as archc train takes them: "
                "archc sweep SPEC --grid ... --train 4 -- --data digits --epochs 9")


def _above_one(text: str) -> int:
    value = positive(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be 2 or more, got {text}")
    return value


TRAILING["sweep"] = "train_flags"
COMMANDS["sweep"] = (
    "analyse every point of a design space (grid, random samples) and print its Pareto "
    "front; train points of it, bad ones stopped early, here or on a Ray cluster",
    _setup_sweep,
    _cmd_sweep,
)
