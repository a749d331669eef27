"""Training and evaluation: epochs of seeded batches through a compiled model, an
optimiser and a schedule, a JSON-lines log, and checkpoints that a crash cannot corrupt
(``runtime/train/checkpoint.py``).

:func:`fit` reads as its loop: resume (:func:`_resume`), then for each epoch the freeze
schedule (:class:`FreezeSchedule`), the steps (:func:`_train_epoch`, each one
:func:`_step`, whose gradients are averaged over the ranks by :func:`_gradients` in a
data-parallel job), the evaluation (:func:`_epoch_row`), the checkpoint
(:func:`_checkpoint_epoch`) and early stopping (:func:`_early_stop`). Since the batch
order depends only on (seed, epoch), a resumed run ends with the same weights as an
uninterrupted one.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from runtime.errors import TrainingError
from runtime.train import checkpoint, curves, distributed, optim
from runtime.train.augment import pipeline
from runtime.train.checkpoint import best_weights  # noqa: F401 (archc.train.best_weights)
from runtime.train.config import TrainConfig, settings  # noqa: F401 (the loop's interface)
from runtime.train.data import Dataset, Split, batch_order


def evaluate(model, dataset: Dataset, batch_size: int = 256, task=None) -> dict:
    """The task's metrics over a data set, in inference mode (classification: mean
    cross-entropy, accuracy and top-5 accuracy)."""
    from runtime.train.tasks import Classification

    task = task or Classification(dataset.classes)
    return task.evaluate(model, dataset, batch_size)


class FreezeSchedule:
    """Which parameters train in each epoch: all trainable ones but those ``freeze``
    patterns name, each thawing at the epoch its ``unfreeze`` entry gives (progressive
    unfreezing)."""

    def __init__(self, model, config: TrainConfig):
        self.model = model
        self.frozen = set().union(*(self._matching(p, "--freeze") for p in config.freeze))
        self.thaws = [(int(at), self._matching(pattern, "--unfreeze"))
                      for at, pattern in config.unfreeze]
        self.learnable = [k for k, spec in model.program.params.items()
                          if spec.trainable and not spec.buffer]

    def _matching(self, pattern: str, flag: str) -> set[str]:
        params = self.model.program.params
        names = {k for k in params if fnmatch.fnmatchcase(k, pattern)}
        if not names:
            raise TrainingError(f"{flag} {pattern} matches no parameter of "
                                f"{self.model.program.name} (names as in its state_dict, "
                                f"e.g. {next(iter(params))})")
        return names

    def trainable_at(self, epoch: int) -> dict:
        """The parameters that train in ``epoch`` (0-based): the arrays the passes read
        (on the GPU for the cuda backend), updated in place."""
        thawed = set().union(*(names for at, names in self.thaws if epoch + 1 >= at))
        params = self.model.device_params()
        return {k: params[k] for k in self.learnable if k not in self.frozen - thawed}


@dataclass
class _Progress:
    """Where a run stands: the first epoch to train, the best primary metric so far, the
    epochs' metrics, and a checkpoint within an epoch to go on from (empty: none)."""

    start: int = 0
    best: float = -math.inf
    history: list = field(default_factory=list)
    partial: dict = field(default_factory=dict)


def _check_parallel(model, config: TrainConfig, world, count: int) -> None:
    if config.sync_bn and model.backend.name == "cuda":
        raise TrainingError("--sync-bn runs on the cpu and reference backends; on cuda, "
                            "train with per-rank batch statistics (leave --sync-bn out)")
    if config.batch_size < world.size:
        raise TrainingError(f"a global batch of {config.batch_size} cannot be shared by "
                            f"{world.size} ranks: give --batch-size {world.size} or more")
    if count < world.size:
        raise TrainingError(f"{count} training images cannot be shared by {world.size} ranks")


def _score(value) -> float:
    return value if isinstance(value, float) and math.isfinite(value) else -math.inf


def _resume(run: Path | None, model, opt, world, resume: bool) -> _Progress:
    """Rank 0's last checkpoint and log, given to every rank; a fresh run gives every rank
    rank 0's initial weights."""
    if run is None or not resume:
        distributed.broadcast_state(world, model)  # the same initial weights everywhere
        return _Progress()
    state = history = None
    if world.lead:
        state = checkpoint.load(run, model, opt)
        history = state["history"]
    state, history = distributed.broadcast_state(world, model, opt, (state, history))
    start = state["epoch"] + ("step" not in state)
    model.rng.bit_generator.state = state["rng"]
    return _Progress(start, state["best"], history[:start], state if "step" in state else {})


def _describe_run(run: Path, config: TrainConfig, task, split: Split) -> None:
    """config.json, and task.json: the task and the statistics the images were
    standardized with (for new images)."""
    run.mkdir(parents=True, exist_ok=True)
    checkpoint.write_file(run / "config.json", json.dumps(asdict(config), indent=1).encode())
    described = {**task.describe(), **({"mean": split.mean.ravel().tolist(),
                                        "std": split.std.ravel().tolist()}
                                       if split.mean is not None else {})}
    checkpoint.write_file(run / "task.json", json.dumps(described, indent=1).encode())


def _gradients(model, grad, reducer, weight: float) -> dict:
    """The parameters' gradients of this step: this process's, or in a data-parallel job
    this rank's share (``weight`` of the global batch) of the global batch's mean
    gradient, summed over the ranks while the backward pass goes on."""
    if reducer is None:
        return model.backward(grad, host=False, inputs=False).params
    if model.sync_bn is not None:
        model.sync_bn.weight = weight
    reducer.begin(weight)
    model.backward(grad, host=False, on_grad=reducer.ready, inputs=False)
    return {k: model.backend.to_device(g) for k, g in reducer.finish().items()}


def _step(model, task, opt, config: TrainConfig, trainable: dict, x, y, reducer,
          weight: float, where: str, run: Path | None) -> tuple[float, float, float, dict]:
    """One optimiser step on the batch (x, y): (loss, correct predictions, judged, the
    parameters' gradients). The output, loss gradient and parameter gradients stay on the
    backend's device; on a GPU the whole step is queued before the loss and hits are read
    back, the step's one wait for the device (with --clip, the gradient norm is another)."""
    task.stage(model, y)
    out = model(task.feed(x, y), host=False)
    out, auxiliary = _auxiliary(model, out)
    loss, grad, hits, count = task.step(model, out, y)
    if auxiliary:
        loss, grad = _with_auxiliary(model, task, auxiliary, y, loss, grad)
    # a step that overflows shows as a loss that is not finite (below): NumPy's warnings
    # about it on the way would only print before that error
    with np.errstate(over="ignore", invalid="ignore"):
        grads = _gradients(model, grad, reducer, weight)
        if config.clip:
            optim.clip_grad_norm(grads, config.clip, opt.kernels)
        opt.step({k: g for k, g in grads.items() if k in trainable})
    loss, hits = float(loss), int(hits)  # a device backend's numbers come back here
    if not math.isfinite(loss):  # this step's update is spoilt too: nothing is saved
        raise TrainingError(f"the loss became {loss} at {where}: training stopped; the last "
                            f"good checkpoint is kept" + (f" in {run}" if run else ""))
    return loss, hits, count, grads


def _auxiliary(model, out) -> tuple:
    """A training pass's outputs split into the network's own (one array, or a dict of
    several) and its training outputs (GoogLeNet's auxiliary classifiers), by key."""
    keys = model.program.train_outputs
    if not keys:
        return out, {}
    out = dict(out)
    auxiliary = {key: out.pop(key) for key in keys}
    return (next(iter(out.values())) if len(out) == 1 else out), auxiliary


class WeightedLoss:
    """A step's loss made of weighted parts (the network's, then each training output's),
    summed when ``float()`` reads it: a device backend's parts are numbers still on the
    device, read once the whole step is queued (the step's one wait), not one by one
    before its backward pass."""

    __slots__ = ("parts",)

    def __init__(self, parts: list[tuple[float, object]]):
        self.parts = parts

    def __float__(self) -> float:
        return float(sum(weight * float(part) for weight, part in self.parts))


def _with_auxiliary(model, task, auxiliary: dict, y, loss, grad) -> tuple:
    """The loss with each training output's loss (the task's, on the same targets) times
    its weight added (a :class:`WeightedLoss`), and the gradients of every output, keyed
    by output."""
    grads = dict(grad) if isinstance(grad, dict) else {next(iter(model.program.outputs)): grad}
    backend = model.backend
    parts = [(1.0, loss)]
    for key, value in auxiliary.items():
        weight = model.program.loss_weights.get(key, 1.0)
        extra, extra_grad, _, _ = task.step(model, value, y)
        parts.append((weight, extra))
        extra_grad = backend.to_device(extra_grad)  # a loss the host ran: sent over
        (backend.optim or optim.HOST).scale(extra_grad, weight)  # its own array: in place
        grads[key] = extra_grad
    return WeightedLoss(parts), grads


def _checkpoint_within(run: Path, model, opt, world, config: TrainConfig, writes,
                       state: dict, sums: np.ndarray, history: list) -> None:
    """A checkpoint in the middle of an epoch (--checkpoint-every): where in the epoch, the
    epoch's sums so far (over every rank) and the augmentation stream, so that a resumed
    run (on any number of ranks) goes on from the next global step."""
    state["sums"] = world.sum(sums).tolist()  # every rank takes part in these two
    if world.size > 1 and not config.sync_bn:
        distributed.average_buffers(world, model)
    if writes is not None:
        state["rng"] = model.rng.bit_generator.state
        state["history"] = history
        checkpoint.point(run, "last.json", checkpoint.save(run, model, opt, state))
        checkpoint.prune(run)
    world.barrier()  # no rank fails on, and stops the job, before the checkpoint is whole


def _train_epoch(model, split: Split, task, opt, config: TrainConfig, epoch: int,
                 trainable: dict, progress: _Progress, world, run, writes,
                 show: bool, augment) -> tuple[np.ndarray, float, object, list, dict]:
    """One epoch's steps: (this process's sums of images, loss, correct and judged,
    images seen since it began here, seconds, the gradient reducer or None, the per-step
    losses, the last step's gradients)."""
    data = split.train
    # augmentation draws from its own stream, fixed by (seed, epoch) like the batches
    aug_rng = np.random.default_rng([config.seed, epoch, 1])
    skip, sums = 0, np.zeros(4)  # images, loss, correct, judged
    curve: list[list[float]] = []  # [optimizer step, this process's batch loss]
    grads: dict = {}  # the last step's gradients, for --tensorboard
    partial = progress.partial
    if partial.get("epoch") == epoch:  # resuming within this epoch
        skip, aug_rng.bit_generator.state = partial["step"], partial["aug_rng"]
        sums = np.array(partial["sums"]) if world.lead else sums
        curve = [list(point) for point in partial.get("curve", [])]
    reducer = None
    if world.size > 1:
        order = distributed.readiness_order(model, trainable)
        reducer = distributed.GradientReducer(
            world, {k: model.program.params[k].shape for k in order}, dtype=model.dtype,
            bucket_bytes=int(config.bucket_mb * (1 << 20)), to_host=model.backend.to_host)
    model.train()
    began, before = time.perf_counter(), sums[0]
    bar = tqdm(total=len(data), unit="img", leave=False, disable=not show,
               desc=f"epoch {epoch + 1}/{config.epochs}")
    for step, index in enumerate(batch_order(len(data), config.batch_size,
                                             seed=config.seed, epoch=epoch)):
        if len(index) < world.size or step < skip:  # too small to share; or done
            continue
        if world.size > 1:  # dropout masks differ from rank to rank, reproducibly
            model.rng = np.random.default_rng([config.seed, epoch, step, 2, world.rank])
        lo, hi = distributed.shard(len(index), world.rank, world.size)
        if augment is not None:  # the global batch's augmentation, then this rank's part
            x, y = augment(data.x[index], data.y[index], aug_rng)
            x, y = x[lo:hi], y[lo:hi]
        else:
            x, y = data.x[index[lo:hi]], data.y[index[lo:hi]]
        loss, hits, count, grads = _step(model, task, opt, config, trainable, x, y, reducer,
                                  (hi - lo) / len(index), f"epoch {epoch + 1}, step {step + 1}",
                                  run)
        # soft targets (mixup, cutmix) count their top class; segmentation, pixels
        sums += (len(y), loss * len(y), hits, count)
        curve.append([opt.steps, float(loss)])
        bar.update(len(index))
        bar.set_postfix(refresh=False, loss=f"{sums[1] / sums[0]:.4f}",
                        **({"acc": f"{sums[2] / sums[3]:.3f}"} if sums[3] else {}))
        if run is not None and config.checkpoint_every \
                and opt.steps % config.checkpoint_every == 0:
            _checkpoint_within(run, model, opt, world, config, writes, {
                "epoch": epoch, "step": step + 1, "best": progress.best,
                "aug_rng": aug_rng.bit_generator.state, "curve": curve}, sums,
                progress.history)
    bar.refresh()  # the epoch's final loss and rate, drawn even if it took under tqdm's interval
    bar.close()
    return np.append(sums, sums[0] - before), time.perf_counter() - began, reducer, curve, grads


# the most points of the loss curve an epoch's line of the log keeps
CURVE_POINTS = 64


def loss_curve(points: list[list[float]], most: int = CURVE_POINTS) -> list[list[float]]:
    """The per-step losses of an epoch as at most ``most`` points: consecutive steps
    averaged, each point at its last step (a bounded log however long the epoch).

    Examples
    --------
    >>> loss_curve([[1, 4.0], [2, 2.0], [3, 1.0], [4, 1.0]], most=2)
    [[2, 3.0], [4, 1.0]]
    """
    if len(points) <= most:
        return [[int(s), round(v, 6)] for s, v in points]
    edges = np.linspace(0, len(points), most + 1).round().astype(int)
    return [[int(points[b - 1][0]), round(float(np.mean([v for _, v in points[a:b]])), 6)]
            for a, b in zip(edges[:-1], edges[1:])]


def _epoch_row(model, split: Split, task, opt, config: TrainConfig, epoch: int, world,
               sums: np.ndarray, elapsed: float, reducer, curve: list) -> dict:
    """The epoch's line of the log: its sums over every rank and rank 0's evaluation."""
    seen, total, correct, judged, images = world.sum(sums)
    if world.size > 1 and not config.sync_bn:
        distributed.average_buffers(world, model)
    test = task.evaluate(model, split.test, max(config.batch_size, 256)) \
        if world.lead else None
    row = {"epoch": epoch + 1, "steps": opt.steps, "lr": opt.lr, "train_loss": total / seen,
           **({"train_accuracy": correct / judged} if judged else {}),
           **{f"test_{k}": v for k, v in (test or {}).items()},
           "images_per_s": images / elapsed, "seconds": elapsed,
           "loss_steps": loss_curve(curve)}  # rank 0's batches in a data-parallel run
    if world.size > 1:
        row = world.broadcast(row)  # rank 0's evaluation, for early stopping everywhere
        row.update(ranks=world.size, **({"communication_s": reducer.comm_s,
                                         "waiting_s": reducer.wait_s} if world.lead else {}))
    return row


def _checkpoint_epoch(run: Path, model, opt, progress: _Progress, epoch: int,
                      key: str) -> None:
    """The log, then the epoch's checkpoint; last.json names it, and best.json too when
    the primary metric improved."""
    checkpoint.write_log(run, progress.history)
    row = progress.history[-1]
    improved = _score(row[key]) > progress.best
    progress.best = max(progress.best, _score(row[key]))
    folder = checkpoint.save(run, model, opt, {
        "epoch": epoch, "best": progress.best, "rng": model.rng.bit_generator.state,
        "history": progress.history})
    checkpoint.point(run, "last.json", folder)
    if improved:
        checkpoint.point(run, "best.json", folder)
    checkpoint.prune(run)


def _early_stop(history: list[dict], key: str, patience: int | None, task) -> str | None:
    """Why to stop now (``patience`` epochs without a better primary metric), or None."""
    if patience is None:
        return None
    best_at = max(range(len(history)), key=lambda i: _score(history[i][key]))
    if len(history) - 1 - best_at < patience:
        return None
    return (f"early stop: no better test {task.name} for {patience} epochs "
            f"(best {history[best_at][key]:.4f} at epoch {best_at + 1})")


def fit(model, split: Split, config: TrainConfig | None = None, run: Path | None = None, *,
        task=None, resume: bool = False, report=print, progress: bool = False,
        world: distributed.World = distributed.ALONE, observers: tuple = (),
        until: int | None = None, **given) -> list[dict]:
    """Train ``model`` (a compiled archc model) on ``split.train`` for ``task`` (a
    :mod:`runtime.train.tasks` task; default: classification); after every epoch, evaluate
    on ``split.test``, log, and checkpoint into ``run`` (if given); the best checkpoint is
    the one with the highest value of the task's primary metric (test accuracy, mIoU,
    mAP@0.5, retrieval accuracy). With ``progress``, a tqdm bar per epoch shows the loss,
    the training accuracy, images/s and the time left. Returns the epochs' metrics.

    ``config``: the settings; without one, the spec's ``training:`` section (which the
    compiled program carries) with the keyword settings ``given`` over it, as ``archc
    train`` merges it with its flags (:func:`runtime.train.config.settings`).

    ``world``: the ranks of a data-parallel job (:mod:`runtime.train.distributed`); each
    trains on its slice of every global batch of ``config.batch_size``, the gradients are
    averaged over the ranks, and rank 0 alone reports, evaluates and writes ``run``.

    ``observers``: objects whose ``epoch(row, model, grads)`` rank 0 calls after each
    epoch with its log row, the model and the last step's gradients
    (:class:`runtime.train.curves.TensorBoard`).

    ``until``: stop after this many epochs (counted from the first, resumed ones included)
    although the schedule spans ``config.epochs``; a later call with ``resume`` goes on
    from there as if the run had not stopped (a sweep trains its trials so, rung by rung)."""
    from runtime.train.tasks import Classification

    if config is None:
        config = settings(model.program.training, given).config
    elif given:
        raise TrainingError(f"give the settings in config or as keywords, not both "
                            f"({', '.join(given)})")
    task = task or Classification(split.train.classes, config.label_smoothing)
    if config.augment and task.kind != "classify":
        raise TrainingError(f"--augment works on classification data; this run is for the "
                            f"{task.kind} task (its targets would not move with the pixels)")
    key = f"test_{task.primary}"
    schedule = FreezeSchedule(model, config)
    opt = config.make_optimizer(schedule.trainable_at(0), model.backend.optim)
    if world.size > 1:
        _check_parallel(model, config, world, len(split.train))
        model.sync_bn = distributed.SyncBatchNorm(world) if config.sync_bn else None
    writes = run = Path(run) if run is not None else None
    if not world.lead:  # rank 0 alone reports and writes the run directory
        report, progress, writes = (lambda *a, **k: None), False, None
    model.check_batch(-(-config.batch_size // world.size), keep=True)  # before any work
    with checkpoint.RunLock(run) if writes is not None else contextlib.nullcontext():
        return _epochs(model, split, config, run, task, resume, report, progress, world,
                       schedule, opt, writes, key, observers, until)


def _epochs(model, split: Split, config: TrainConfig, run, task, resume: bool, report,
            progress: bool, world, schedule: FreezeSchedule, opt, writes, key: str,
            observers: tuple = (), until: int | None = None) -> list[dict]:
    """:func:`fit`'s loop, run folder locked: resume, then train epoch by epoch."""
    done = _resume(run, model, opt, world, resume)
    if writes is not None:
        _describe_run(run, config, task, split)
        plotter = curves.Plotter(run, model.program.name)
    augment = pipeline(config.augment, len(split.train.classes))
    end = config.epochs if until is None else min(until, config.epochs)
    for epoch in range(done.start, end):
        opt.lr = config.lr * optim.schedule_factor(
            config.schedule, epoch, total=config.epochs, warmup=config.warmup)
        trainable = opt.params = schedule.trainable_at(epoch)
        sums, elapsed, reducer, curve, grads = _train_epoch(
            model, split, task, opt, config, epoch, trainable, done, world, run, writes,
            progress, augment)
        row = _epoch_row(model, split, task, opt, config, epoch, world, sums, elapsed,
                         reducer, curve)
        done.history.append(row)
        if writes is not None:
            _checkpoint_epoch(run, model, opt, done, epoch, key)
            plotter.epoch(done.history, last=epoch + 1 == end)
        if world.lead:
            for observer in observers:
                observer.epoch(row, model, grads)
        world.barrier()  # the epoch's checkpoint is whole before any rank goes on
        train_acc = f"train acc {row['train_accuracy']:.3f}  " if "train_accuracy" in row \
            else ""
        report(f"epoch {epoch + 1}/{config.epochs}  loss {row['train_loss']:.4f}  "
               f"{train_acc}{task.label} {row[key]:.3f}  {row['images_per_s']:.0f} img/s")
        stop = _early_stop(done.history, key, config.patience, task)
        if stop:
            report(stop)
            if writes is not None:
                plotter.epoch(done.history, last=True)
            break
    return History(done.history)


class History(list):
    """:func:`fit`'s result: the log's rows, one dict per epoch; in a notebook, its curves."""

    def _repr_html_(self) -> str:
        from runtime.notebook import history_html

        return history_html(self)

    def plot(self, title: str = ""):
        """The curves as a matplotlib figure (loss, metrics, learning rate, speed)."""
        return curves.figure(list(self), title)
