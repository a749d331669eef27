"""Design-space sweeps: the cost of many variants of a spec, before any training.

A sweep is a set of points (values for some of the spec's variables): a grid (every
combination of listed values) times random samples of ranges. Each point is built and
analysed (parameters, MACs, FLOPs, activation memory, and a roofline latency for a
device); a point whose variables make no valid network is kept with its error. A
constraint (``macs < 600e6 and params < 5e6``, archc's expression language over those
numbers) marks the feasible points, and the Pareto front of the feasible ones is the set
that no other point beats on every objective.

``archc sweep`` appends the records to ``points.jsonl`` as points finish, so a sweep
stopped part-way and run again analyses only the points it has not done.

With ``--train``, points of the front are trained, as trials, under asynchronous
successive halving (:class:`Asha`): every trial first trains to the lowest rung of
epochs, and only the best ``1/eta`` of those that reached a rung go on to the next, so
bad trials stop early; each trial's score is its best held-out value of the task's
primary metric, a further objective of the trained front (maximised).
"""

from __future__ import annotations

import itertools
import json
import math
import random
from typing import Any, Callable, Iterable

from archc.errors import ArchcError, UsageError
from archc.spec.expr import ExprError, evaluate

# the numbers of a point that --where and --objectives may name
METRICS = ("params", "macs", "flops", "peak_bytes", "latency_s", "layers")
# what training adds: the best held-out value of the task's primary metric, maximised
MAXIMISED = ("score",)
DISTRIBUTIONS = ("uniform", "loguniform", "randint", "choice")
MAX_POINTS = 1_000_000


def grid_values(text: str) -> tuple[str, list]:
    """``--grid NAME=[v1, v2, ...]``: the name and its values."""
    import yaml

    name, sep, values = text.partition("=")
    name = name.strip()
    try:
        parsed = yaml.safe_load(values) if sep else None
    except yaml.YAMLError:
        parsed = None
    if not name or not isinstance(parsed, list) or not parsed:
        raise UsageError(f"--grid expects NAME=[v1, v2, ...], got '{text}'",
                         "e.g. --grid \"width_mult=[0.5, 0.75, 1.0]\"")
    return name, parsed


class Draw:
    """One sampled variable's distribution: ``draw(rng)`` a value; ``distribution()`` the
    same as an Optuna distribution (for ``--search optuna``)."""

    def __init__(self, kind: str, low=None, high=None, values: list | None = None):
        self.kind, self.low, self.high, self.values = kind, low, high, values

    def __call__(self, rng: random.Random) -> Any:
        if self.kind == "choice":
            return rng.choice(self.values)
        if self.kind == "randint":
            return rng.randint(int(self.low), int(self.high))
        if self.kind == "loguniform":
            return math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        return rng.uniform(self.low, self.high)

    def distribution(self):
        from optuna.distributions import (CategoricalDistribution, FloatDistribution,
                                          IntDistribution)

        if self.kind == "choice":
            return CategoricalDistribution(self.values)
        if self.kind == "randint":
            return IntDistribution(int(self.low), int(self.high))
        return FloatDistribution(self.low, self.high, log=self.kind == "loguniform")


def sampler(text: str) -> tuple[str, Draw]:
    """``--sample NAME=uniform(a, b)`` (or loguniform, randint, choice([...])): the name
    and its :class:`Draw`."""
    name, sep, call = text.partition("=")
    name, call = name.strip(), call.strip()
    kind, _, rest = call.partition("(")
    if not (name and sep and kind in DISTRIBUTIONS and rest.endswith(")")):
        raise UsageError(f"--sample expects NAME=DISTRIBUTION(...), got '{text}'",
                         "distributions: uniform(a, b), loguniform(a, b), randint(a, b), "
                         "choice([v1, v2, ...])")
    try:
        args = evaluate(f"[{rest[:-1]}]", {})
    except ExprError as exc:
        raise UsageError(f"--sample {name}: {exc.message}") from None
    if kind == "choice":
        if len(args) != 1 or not isinstance(args[0], list) or not args[0]:
            raise UsageError(f"--sample {name}: choice takes one non-empty list")
        return name, Draw("choice", values=args[0])
    if len(args) != 2 or not all(isinstance(a, (int, float)) for a in args) or args[0] > args[1]:
        raise UsageError(f"--sample {name}: {kind} takes two numbers, low <= high")
    low, high = args
    if kind == "loguniform" and low <= 0:
        raise UsageError(f"--sample {name}: loguniform needs a low end above 0")
    return name, Draw(kind, low, high)


def points(grid: list[tuple[str, list]], samples: list[tuple[str, Callable]],
           count: int, seed: int) -> list[dict]:
    """Every grid combination, each with ``count`` random draws of the sampled names
    (one point per combination without samples); the same list for the same seed."""
    combos = list(itertools.product(*[values for _, values in grid])) if grid else [()]
    draws = count if samples else 1
    if len(combos) * draws > MAX_POINTS:
        raise UsageError(f"the sweep has {len(combos) * draws:,} points; at most "
                         f"{MAX_POINTS:,}", "fewer grid values or a smaller --count")
    rng = random.Random(seed)
    out = []
    for combo in combos:
        for _ in range(draws):
            point = {name: value for (name, _), value in zip(grid, combo)}
            point.update({name: draw(rng) for name, draw in samples})
            out.append(point)
    return out


def key(point: dict) -> str:
    """A point's identity in points.jsonl."""
    return json.dumps(point, sort_keys=True)


def analyse_point(spec: str, fixed: dict, point: dict, device_name: str | None,
                  text: str | bytes | None = None) -> dict:
    """One point's record: its numbers, or the error that makes it no network (the spec
    read from ``spec``, or given as ``text`` with ``spec`` its name)."""
    from archc import build
    from archc.analysis import analyse, get_device

    try:
        graph = build(spec, {**fixed, **point}, text)
        totals = analyse(graph, device=get_device(device_name) if device_name else None).totals
    except ArchcError as exc:
        return {"point": point, "error": exc.message}
    record = {"point": point, "params": totals["params"], "macs": totals["macs"],
              "flops": totals["flops"], "peak_bytes": totals["inference_peak_bytes"],
              "layers": len(graph)}
    if "latency_s" in totals:
        record["latency_s"] = totals["latency_s"]
    return record


def check_where(where: str | None) -> None:
    """Refuse a constraint that does not parse, before any point is analysed."""
    if where:
        try:
            evaluate(where, {m: 1.0 for m in METRICS})
        except ExprError as exc:
            raise UsageError(f"--where: {exc.message}",
                             f"a condition over {', '.join(METRICS)}, e.g. "
                             "\"macs < 600e6 and params < 5e6\"") from None


def feasible(record: dict, where: str | None) -> bool:
    if "error" in record:
        return False
    if not where:
        return True
    return bool(evaluate(where, {m: record.get(m, math.nan) for m in METRICS}))


def pareto_front(records: list[dict], objectives: Iterable[str]) -> list[dict]:
    """The records no other record beats: at least as good on every objective and
    better on one (each objective minimised, but those of ``MAXIMISED``), in the order
    given."""
    objectives = list(objectives)
    values = [tuple(-r[o] if o in MAXIMISED else r[o] for o in objectives) for r in records]
    front = []
    for i, mine in enumerate(values):
        beaten = any(all(t <= m for t, m in zip(theirs, mine)) and theirs != mine
                     for theirs in values)
        if not beaten:
            front.append(records[i])
    return front


def spread(records: list[dict], k: int, objective: str) -> list[dict]:
    """``k`` of the records, evenly spaced along ``objective`` (all of them when there are
    at most ``k``): the trials of ``--train K``, from the smallest network to the largest."""
    ordered = sorted(records, key=lambda r: r[objective])
    if len(ordered) <= k:
        return ordered
    if k == 1:
        return [ordered[-1]]
    return [ordered[round(i * (len(ordered) - 1) / (k - 1))] for i in range(k)]


def rungs(min_epochs: int, max_epochs: int, eta: int) -> list[int]:
    """The epochs at which successive halving compares trials: min_epochs * eta^k below
    max_epochs, then max_epochs."""
    out, epochs = [], min_epochs
    while epochs < max_epochs:
        out.append(epochs)
        epochs *= eta
    return out + [max_epochs]


class Asha:
    """Asynchronous successive halving (Li et al., "A System for Massively Parallel
    Hyperparameter Tuning", 2020) over a fixed list of trials.

    Whenever a worker is free, :meth:`next` gives it work: the best trial of the highest
    rung that may be promoted (a trial among the best ``1/eta`` of those that finished
    the rung, not promoted before; the best one once no other trial can reach the rung)
    goes on to the next rung; otherwise a new trial starts at the lowest. A trial never promoted is stopped early. :meth:`done` records a result;
    results replayed from an earlier run rebuild the same state."""

    def __init__(self, trials: list[str], rungs: list[int], eta: int):
        self.rungs, self.eta = list(rungs), eta
        self.pending = list(trials)
        self.scores: list[dict[str, float]] = [{} for _ in self.rungs]
        self.promoted: list[set[str]] = [set() for _ in self.rungs]
        self.running: dict[str, int] = {}

    def _choose(self, more_coming: bool) -> tuple[str, int] | None:
        for k in range(len(self.rungs) - 2, -1, -1):
            scores = self.scores[k]
            count = len(scores) // self.eta
            if not count and scores and not self.pending and not more_coming and \
                    all(r > k for r in self.running.values()):
                count = 1  # every trial that will reach the rung has: its best goes on
            top = sorted(scores, key=lambda t: -scores[t])[:count]
            for trial in top:
                if trial not in self.promoted[k] and trial not in self.running:
                    return trial, k + 1
        return (self.pending[0], 0) if self.pending else None

    def next(self, more_coming: bool = False) -> tuple[str, int] | None:
        """(trial, rung) to train next, or None until a result comes in (or at the end).
        ``more_coming``: a search will still add trials (:meth:`add`), so no rung is
        complete yet."""
        chosen = self._choose(more_coming)
        if chosen is not None:
            trial, rung = chosen
            if rung == 0:
                self.pending.remove(trial)
            else:
                self.promoted[rung - 1].add(trial)
            self.running[trial] = rung
        return chosen

    def add(self, trial: str) -> None:
        """A new trial (proposed by a search while the others train), started last."""
        self.pending.append(trial)

    def done(self, trial: str, rung: int, score: float) -> None:
        """``trial`` trained to ``rungs[rung]`` epochs with ``score``."""
        self.running.pop(trial, None)
        if trial in self.pending:  # replayed from an earlier run
            self.pending.remove(trial)
        for k in range(rung):
            self.promoted[k].add(trial)
        self.scores[rung][trial] = score

    def finished(self) -> bool:
        return not self.running and self._choose(False) is None

    def reached(self, trial: str) -> int:
        """The highest rung ``trial`` finished (-1: none)."""
        return max((k for k, s in enumerate(self.scores) if trial in s), default=-1)


MAX_TRIES = 200  # proposals in a row that make no feasible network before a search gives up


class OptunaSearch:
    """Points to train proposed by Optuna's TPE sampler (seeded), seeking the best score
    under the constraint. Each proposal is analysed first: one that makes no network or
    fails ``where`` is told to Optuna as infeasible (a constraint above 0) and never
    trained. A trained trial is told its score at the first rung (successive halving's
    premise: the early score ranks the trials), so that later proposals learn from it.
    ``analyse(point)`` gives a point's record, and every analysed proposal goes to
    ``on_record``; ``space`` maps each variable to its :class:`Draw` (a grid's values as
    a choice)."""

    def __init__(self, space: dict[str, Draw], seed: int, where: str | None,
                 analyse: Callable[[dict], dict], on_record: Callable[[dict], None]):
        try:
            import optuna
        except ImportError:
            raise UsageError("--search optuna needs Optuna",
                             "pip install 'archc[sweep]', or leave --search out") from None
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.optuna, self.where = optuna, where
        self.analyse, self.on_record = analyse, on_record
        self.space = {name: draw.distribution() for name, draw in space.items()}
        self.study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(
            seed=seed, constraints_func=lambda trial: trial.user_attrs.get("constraint", (0.0,))))
        self.open: dict[str, Any] = {}  # point's key -> the Optuna trial awaiting its score
        self.seen: set[str] = set()  # the points proposed (trained or analysed infeasible)

    def propose(self) -> dict | None:
        """The next feasible point's record (its key in ``open``), or None after
        ``MAX_TRIES`` proposals in a row that were not (or had been proposed before)."""
        for _ in range(MAX_TRIES):
            trial = self.study.ask(self.space)
            if key(trial.params) in self.seen:  # proposed before: nothing new to learn
                self.study.tell(trial, state=self.optuna.trial.TrialState.FAIL)
                continue
            self.seen.add(key(trial.params))
            record = self.analyse(dict(trial.params))
            self.on_record(record)
            if feasible(record, self.where):
                self.open[key(record["point"])] = trial
                return record
            trial.set_user_attr("constraint", (1.0,))
            self.study.tell(trial, 0.0)
        return None

    def tell(self, point: dict, score: float | None) -> None:
        """A trial's score at its first rung (None: its training failed)."""
        trial = self.open.pop(key(point), None)
        if trial is None:
            return
        if score is None:
            self.study.tell(trial, state=self.optuna.trial.TrialState.FAIL)
        else:
            self.study.tell(trial, score)

    def _inside(self, point: dict) -> bool:
        if set(point) != set(self.space):
            return False
        try:
            return all(self.space[k]._contains(self.space[k].to_internal_repr(v))
                       for k, v in point.items())
        except (ValueError, TypeError):
            return False

    def known(self, record: dict, score: float | None) -> None:
        """A point of an earlier run of the sweep: trained to ``score``, or analysed and
        infeasible (None), told to the study so that it goes on from there."""
        point = record["point"]
        if not self._inside(point) or key(point) in self.seen:
            return  # a point of another search space, or told already
        self.seen.add(key(point))
        self.study.add_trial(self.optuna.trial.create_trial(
            params=point, distributions=self.space, value=0.0 if score is None else score,
            user_attrs={"constraint": (1.0,) if score is None else (0.0,)}))


def front_figure(records: list[dict], front: list[dict], objectives: list[str], title: str = "",
                 points: str = "feasible points"):
    """The feasible points and their Pareto front on the first two objectives (a
    matplotlib figure; None without matplotlib, with one objective or no point)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    if len(objectives) < 2 or not records:
        return None
    x, y = objectives[:2]
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.subplots()
    ax.scatter([r[x] for r in records], [r[y] for r in records], s=10, alpha=0.4,
               label=f"{points} ({len(records)})")
    ordered = sorted(front, key=lambda r: (r[x], r[y]))
    ax.plot([r[x] for r in ordered], [r[y] for r in ordered], "o-", color="#d62728",
            label=f"Pareto front ({len(front)})")
    ylabel = f"best held-out {records[0]['metric']}" if y in MAXIMISED else y
    ax.set(xlabel=x, ylabel=ylabel, xscale="log",
           yscale="linear" if y in MAXIMISED else "log", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig
