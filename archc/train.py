"""Training and evaluation: epochs of seeded batches through a compiled model, an
optimiser and a schedule from runtime/, a JSON-lines log, and checkpoints that a crash
cannot corrupt.

A run directory holds ``log.jsonl`` (one line of metrics per epoch), checkpoint folders
``ckpt-EPOCH/`` (``weights.npz`` with PyTorch names, ``optimizer.npz``, ``state.json``:
epoch, RNG state, best metric) and ``last.json`` / ``best.json`` naming the newest and the
best checkpoint. A checkpoint folder is complete (every file written and fsynced) before
the pointer file is replaced atomically, so a process killed at any moment leaves the
previous checkpoint in force; ``resume`` continues from it, and since the batch order
depends only on (seed, epoch), a resumed run ends with the same weights as an
uninterrupted one.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from archc import distributed
from archc.augment import pipeline
from archc.data import Dataset, Split, batch_order
from runtime import optim
from runtime.errors import TrainingError


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup: int = 0
    label_smoothing: float = 0.0
    clip: float | None = None
    augment: str | None = None  # e.g. "crop,flip,mixup" (archc/augment.py)
    freeze: tuple[str, ...] = ()  # parameter name patterns that do not train ("layer1.*")
    unfreeze: tuple[tuple[int, str], ...] = ()  # (epoch, pattern): frozen ones thaw then
    patience: int | None = None  # stop after this many epochs without a better test accuracy
    seed: int = 0
    sync_bn: bool = False  # data-parallel: batch statistics over every rank's batch
    # data-parallel: gradients all-reduced in buckets of this many MiB
    bucket_mb: float = distributed.BUCKET_MB
    checkpoint_every: int | None = None  # also checkpoint every this many steps (in epochs)

    def make_optimizer(self, params, kernels=None):
        """The optimiser over ``params``; ``kernels``: where they live (a backend's
        ``optim``; None: the host)."""
        if self.optimizer == "sgd":
            return optim.SGD(params, self.lr, momentum=self.momentum, nesterov=self.nesterov,
                             weight_decay=self.weight_decay, kernels=kernels)
        if self.optimizer in ("adam", "adamw"):
            return optim.OPTIMIZERS[self.optimizer](params, self.lr,
                                                    weight_decay=self.weight_decay,
                                                    kernels=kernels)
        raise TrainingError(f"unknown optimizer '{self.optimizer}' (sgd, adam, adamw)")


def evaluate(model, dataset: Dataset, batch_size: int = 256, task=None) -> dict:
    """The task's metrics over a data set, in inference mode (classification: mean
    cross-entropy, accuracy and top-5 accuracy)."""
    from archc.tasks import Classification

    task = task or Classification(dataset.classes)
    return task.evaluate(model, dataset, batch_size)


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _save_npz(path: Path, arrays: dict) -> None:
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _point(run: Path, name: str, folder: str) -> None:
    """Make ``name`` (last.json, best.json) point at a checkpoint folder, atomically."""
    tmp = run / f".{name}.tmp"
    _fsync_write(tmp, json.dumps({"checkpoint": folder}).encode())
    os.replace(tmp, run / name)
    fd = os.open(run, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(run: Path, model, optimizer, state: dict) -> str:
    # within an epoch (--checkpoint-every): ckpt-EPOCH-STEP, STEP batches into it
    folder = f"ckpt-{state['epoch']:04d}" + (f"-{state['step']:06d}" if "step" in state else "")
    path = run / folder
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    _save_npz(path / "weights.npz", model.parameters())
    _save_npz(path / "optimizer.npz", optimizer.state_dict())
    _fsync_write(path / "state.json", json.dumps(state).encode())
    return folder


def best_weights(path: str | Path) -> Path:
    """A weights file as given, or a run directory's best (else last) checkpoint's."""
    path = Path(path)
    if path.is_dir():
        for pointer in ("best.json", "last.json"):
            if (path / pointer).is_file():
                return path / json.loads((path / pointer).read_text())["checkpoint"] / \
                    "weights.npz"
        raise TrainingError(f"{path} is not a run directory with a checkpoint (no best.json)")
    return path


def load_checkpoint(run: Path, model, optimizer, which: str = "last.json") -> dict:
    pointer = run / which
    if not pointer.is_file():
        raise TrainingError(f"{run} has no checkpoint to resume from ({which} is missing)")
    path = run / json.loads(pointer.read_text())["checkpoint"]
    model.load(path / "weights.npz")
    with np.load(path / "optimizer.npz", allow_pickle=False) as saved:
        optimizer.load_state_dict(dict(saved))
    return json.loads((path / "state.json").read_text())


def _prune(run: Path) -> None:
    """Remove the checkpoints that neither last.json nor best.json names."""
    keep = {json.loads((run / n).read_text())["checkpoint"]
            for n in ("last.json", "best.json") if (run / n).is_file()}
    for path in run.glob("ckpt-*"):
        if path.name not in keep:
            shutil.rmtree(path, ignore_errors=True)


def _checkpoint_within(run: Path, model, opt, world, config: TrainConfig, writes,
                       state: dict, sums: np.ndarray) -> None:
    """A checkpoint in the middle of an epoch (--checkpoint-every): where in the epoch, the
    epoch's sums so far (over every rank) and the augmentation stream, so that a resumed
    run (on any number of ranks) goes on from the next global step."""
    state["sums"] = world.sum(sums).tolist()  # every rank takes part in these two
    if world.size > 1 and not config.sync_bn:
        distributed.average_buffers(world, model)
    if writes is None:
        return
    state["rng"] = model.rng.bit_generator.state
    _point(run, "last.json", save_checkpoint(run, model, opt, state))
    _prune(run)


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


def fit(model, split: Split, config: TrainConfig, run: Path | None = None, *,
        task=None, resume: bool = False, report=print, progress: bool = False,
        world: distributed.World = distributed.ALONE) -> list[dict]:
    """Train ``model`` (a compiled archc model) on ``split.train`` for ``task`` (an
    :mod:`archc.tasks` task; default: classification); after every epoch, evaluate on
    ``split.test``, log, and checkpoint into ``run`` (if given); the best checkpoint is
    the one with the highest value of the task's primary metric (test accuracy, mIoU,
    mAP@0.5, retrieval accuracy). With ``progress``, a tqdm bar per epoch shows the loss,
    the training accuracy, images/s and the time left. Returns the epochs' metrics.

    ``world``: the ranks of a data-parallel job (:mod:`archc.distributed`); each trains on
    its slice of every global batch of ``config.batch_size``, the gradients are averaged
    over the ranks, and rank 0 alone reports, evaluates and writes ``run``."""
    from archc.tasks import Classification

    task = task or Classification(split.train.classes, config.label_smoothing)
    if config.augment and task.kind != "classify":
        raise TrainingError(f"--augment works on classification data; this run is for the "
                            f"{task.kind} task (its targets would not move with the pixels)")
    key = f"test_{task.primary}"

    def matching(pattern: str, flag: str) -> set[str]:
        names = {k for k in model.program.params if fnmatch.fnmatchcase(k, pattern)}
        if not names:
            raise TrainingError(f"{flag} {pattern} matches no parameter of "
                                f"{model.program.name} (names as in its state_dict, e.g. "
                                f"{next(iter(model.program.params))})")
        return names

    frozen = set().union(*(matching(p, "--freeze") for p in config.freeze))
    thaws = [(int(at), matching(pattern, "--unfreeze")) for at, pattern in config.unfreeze]
    learnable = [k for k, spec in model.program.params.items()
                 if spec.trainable and not spec.buffer]

    def trainable_at(epoch: int) -> dict:
        """The parameters that train in ``epoch`` (0-based): all but the frozen ones not
        yet thawed (progressive unfreezing)."""
        thawed = set().union(*(names for at, names in thaws if epoch + 1 >= at))
        # the arrays the passes read (on the GPU for the cuda backend), updated in place
        params = model.device_params()
        return {k: params[k] for k in learnable if k not in frozen - thawed}

    trainable = trainable_at(0)
    opt = config.make_optimizer(trainable, model.backend.optim)
    start, best, history = 0, -math.inf, []
    parallel = world.size > 1
    if parallel:
        _check_parallel(model, config, world, len(split.train))
        model.sync_bn = distributed.SyncBatchNorm(world) if config.sync_bn else None
    if not world.lead:  # rank 0 alone reports and writes the run directory
        report, progress, writes = (lambda *a, **k: None), False, None
    else:
        writes = run
    partial: dict = {}  # a checkpoint within an epoch: where in it, and its sums so far
    if run is not None:
        run = Path(run)
        state = None
        if resume and world.lead:
            state = load_checkpoint(run, model, opt)
            history = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()
                       if line.strip()]
        if resume:  # every rank continues from rank 0's checkpoint
            state, history = distributed.broadcast_state(world, model, opt, (state, history))
            start, best = state["epoch"] + ("step" not in state), state["best"]
            history = history[:start]
            model.rng.bit_generator.state = state["rng"]
            if "step" in state:
                partial = state
    if not resume:
        distributed.broadcast_state(world, model)  # the same initial weights everywhere
    if writes is not None:
        run.mkdir(parents=True, exist_ok=True)
        _fsync_write(run / "config.json", json.dumps(asdict(config), indent=1).encode())
        # the task, and the statistics the images were standardized with (for new images)
        described = {**task.describe(), **({"mean": split.mean.ravel().tolist(),
                                            "std": split.std.ravel().tolist()}
                                           if split.mean is not None else {})}
        _fsync_write(run / "task.json", json.dumps(described, indent=1).encode())
    base_lr = config.lr
    augment = pipeline(config.augment, len(split.train.classes))
    data = split.train
    for epoch in range(start, config.epochs):
        # augmentation draws from its own stream, fixed by (seed, epoch) like the batches
        aug_rng = np.random.default_rng([config.seed, epoch, 1])
        opt.lr = base_lr * optim.schedule_factor(
            config.schedule, epoch, total=config.epochs, warmup=config.warmup)
        trainable = opt.params = trainable_at(epoch)
        reducer = None
        skip, sums = 0, np.zeros(4)  # images, loss, correct, judged
        if partial.get("epoch") == epoch:  # resuming within this epoch
            skip, aug_rng.bit_generator.state = partial["step"], partial["aug_rng"]
            sums = np.array(partial["sums"]) if world.lead else sums
        if parallel:
            order = distributed.readiness_order(model, trainable)
            reducer = distributed.GradientReducer(
                world, {k: model.program.params[k].shape for k in order}, dtype=model.dtype,
                bucket_bytes=int(config.bucket_mb * (1 << 20)), to_host=model.backend.to_host)
        model.train()
        began, before = time.perf_counter(), sums[0]
        bar = tqdm(total=len(data), unit="img", leave=False, disable=not progress,
                   desc=f"epoch {epoch + 1}/{config.epochs}")
        for step, index in enumerate(batch_order(len(data), config.batch_size,
                                                 seed=config.seed, epoch=epoch)):
            if len(index) < world.size or step < skip:  # too small to share; or done
                continue
            if parallel:  # dropout masks differ from rank to rank, reproducibly
                model.rng = np.random.default_rng([config.seed, epoch, step, 2, world.rank])
            lo, hi = distributed.shard(len(index), world.rank, world.size)
            if augment is not None:  # the global batch's augmentation, then this rank's part
                x, y = augment(data.x[index], data.y[index], aug_rng)
                x, y = x[lo:hi], y[lo:hi]
            else:
                x, y = data.x[index[lo:hi]], data.y[index[lo:hi]]
            # the output, loss gradient and parameter gradients stay on the backend's
            # device; the loss and the number of correct predictions come back
            out = model(x, host=False)
            loss, grad, hits, count = task.step(model, out, y)
            if not math.isfinite(loss):
                raise TrainingError(f"the loss became {loss} at epoch {epoch + 1}, step "
                                    f"{step + 1}: training stopped; the last good checkpoint "
                                    f"is kept" + (f" in {run}" if run else ""))
            if reducer is None:
                grads = model.backward(grad, host=False).params
            else:  # this rank's share of the global batch's mean gradient, then the sum
                weight = (hi - lo) / len(index)
                if model.sync_bn is not None:
                    model.sync_bn.weight = weight
                reducer.begin(weight)
                model.backward(grad, host=False, on_grad=reducer.ready)
                grads = {k: model.backend.to_device(g) for k, g in reducer.finish().items()}
            if config.clip:
                optim.clip_grad_norm(grads, config.clip, opt.kernels)
            opt.step({k: g for k, g in grads.items() if k in trainable})
            # soft targets (mixup, cutmix) count their top class; segmentation, pixels
            sums += (len(y), loss * len(y), hits, count)
            bar.update(len(index))
            bar.set_postfix(refresh=False, loss=f"{sums[1] / sums[0]:.4f}",
                            **({"acc": f"{sums[2] / sums[3]:.3f}"} if sums[3] else {}))
            if (run is not None and config.checkpoint_every
                    and opt.steps % config.checkpoint_every == 0):
                _checkpoint_within(run, model, opt, world, config, writes, {
                    "epoch": epoch, "step": step + 1, "best": best,
                    "aug_rng": aug_rng.bit_generator.state}, sums)
        bar.close()
        elapsed = time.perf_counter() - began
        # the epoch's sums over every rank, and the images since this process began it
        seen, total, correct, judged, images = world.sum(np.append(sums, sums[0] - before))
        if parallel and not config.sync_bn:
            distributed.average_buffers(world, model)
        test = task.evaluate(model, split.test, max(config.batch_size, 256)) \
            if world.lead else None
        row = {"epoch": epoch + 1, "steps": opt.steps, "lr": opt.lr, "train_loss": total / seen,
               **({"train_accuracy": correct / judged} if judged else {}),
               **{f"test_{k}": v for k, v in (test or {}).items()},
               "images_per_s": images / elapsed, "seconds": elapsed}
        if parallel:
            row = world.broadcast(row)  # rank 0's evaluation, for early stopping everywhere
            row.update(ranks=world.size, **({"communication_s": reducer.comm_s,
                                             "waiting_s": reducer.wait_s} if world.lead else {}))
        history.append(row)
        if writes is not None:
            tmp = run / ".log.jsonl.tmp"
            _fsync_write(tmp, "".join(json.dumps(h) + "\n" for h in history).encode())
            os.replace(tmp, run / "log.jsonl")
            improved = _score(row[key]) > best
            best = max(best, _score(row[key]))
            folder = save_checkpoint(run, model, opt, {
                "epoch": epoch, "best": best, "rng": model.rng.bit_generator.state})
            _point(run, "last.json", folder)
            if improved:
                _point(run, "best.json", folder)
            _prune(run)
        train_acc = f"train acc {row['train_accuracy']:.3f}  " if judged else ""
        report(f"epoch {epoch + 1}/{config.epochs}  loss {row['train_loss']:.4f}  "
               f"{train_acc}{task.label} {row[key]:.3f}  {row['images_per_s']:.0f} img/s")
        if config.patience is not None:
            best_at = max(range(len(history)), key=lambda i: _score(history[i][key]))
            if len(history) - 1 - best_at >= config.patience:
                report(f"early stop: no better test {task.name} for {config.patience} epochs "
                       f"(best {history[best_at][key]:.4f} at epoch {best_at + 1})")
                break
    return history
