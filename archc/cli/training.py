"""``archc train`` and ``archc eval``: a spec trained on a data set, and trained weights
scored."""

from __future__ import annotations

import argparse
import sys

from archc.cli.common import (COMMANDS, EXIT_OK, add_data_arguments, add_precision_argument,
                              add_weights_options, compile_for_data, load_graph, load_weights,
                              positive, settings_of, task_for)
from archc.errors import UsageError
from runtime.train import distributed


def _cmd_train(args: argparse.Namespace) -> int:
    import contextlib
    from pathlib import Path

    from runtime.train.checkpoint import RunLock

    graph = load_graph(args)
    settings = settings_of(args, graph)
    world = distributed.World.mpi() if args.distributed else distributed.ALONE
    run = Path(args.resume or args.out)
    if args.resume and not run.is_dir():
        raise UsageError(f"--resume {run}: no such run folder",
                         hint="give the --out folder of an earlier archc train")
    # rank 0 writes the run folder: it holds the lock from before the data is read
    with RunLock(run) if world.lead else contextlib.nullcontext():
        return _train(args, graph, settings, world, run)


def _train(args, graph, settings, world, run) -> int:
    from runtime.train import data
    from runtime.train.checkpoint import best_weights
    from runtime.train.loop import fit

    config, seed = settings.config, settings.config.seed
    say = print if world.lead else (lambda *a, **k: None)
    if world.size > 1 and args.backend == "cuda":
        world.pick_gpu()
    model = compile_for_data(graph, args, seed)
    model.check_batch(-(-config.batch_size // world.size), keep=True)  # before the data
    if args.init:
        kept = load_weights(model, args.init, args, matching=True)
        say(f"started from {args.init}" + (f"; initialised afresh: {', '.join(kept)}"
                                           if kept else ""))
    shape = next(iter(model.program.inputs.values()))
    split = data.load(settings.data, shape, seed=seed)
    task = task_for(settings, split, model)
    say(f"training {model.program.name} on {settings.data} ({task.kind}): "
        f"{len(split.train)} images, {len(split.test)} held out; run directory {run}")
    if world.size > 1:
        lo, hi = distributed.shard(config.batch_size, 0, world.size)
        say(f"data parallel on {world.size} ranks: global batch {config.batch_size}, "
            f"{hi - lo}{'' if config.batch_size % world.size == 0 else ' or fewer'} per "
            f"rank; batch norm {'synchronised' if config.sync_bn else 'per rank'}")
    if task.kind == "detect" and hasattr(task, "rcnn"):
        rcnn = task.rcnn
        sizes = (f"{rcnn.anchor_scale:g} x the stride" if rcnn.octaves == 1 else
                 "/".join(f"{s:g}" for s in rcnn.sizes((1, 1))) + " px")
        say(f"two-stage detector: anchors of {sizes} over "
            f"{len(rcnn.levels)} levels ({', '.join(n for n, _, _ in rcnn.levels)}), "
            f"{rcnn.proposals} boxes per image for the box head"
            + (f", {rcnn.mask_boxes} for the mask branch" if rcnn.mask_boxes else ""))
    elif task.kind == "detect" and hasattr(task, "retina"):
        retina = task.retina
        say(f"RetinaNet: {retina.per_position} anchors per position over {len(retina.levels)} "
            f"levels ({', '.join(n for n, _, _ in retina.levels)}), sizes from "
            f"{'/'.join(f'{v:g}' for v in retina.sizes(0))} px doubling by level; "
            f"focal loss (alpha {retina.alpha:g}, gamma {retina.gamma:g})")
    elif task.kind == "detect":
        head = task.head
        say(f"grid {head.grid}x{head.grid}, {head.boxes} anchors per cell (k-means on the "
              f"training boxes, width x height in pixels): " + ", ".join(
                  f"{w * head.size[1]:.1f}x{h * head.size[0]:.1f}" for w, h in head.anchors))
    observers = []
    if args.tensorboard and world.lead:
        from runtime.train.curves import TensorBoard

        observers.append(TensorBoard(args.tensorboard, model.program))
        say(f"TensorBoard events in {args.tensorboard} (tensorboard --logdir "
            f"{args.tensorboard})")
    try:
        history = fit(model, split, config, run, task=task, resume=bool(args.resume),
                      progress=sys.stderr.isatty(), world=world, observers=tuple(observers),
                      until=args.until)
    finally:
        for observer in observers:
            observer.close()
    if history and world.lead:  # the run directory is rank 0's
        best = max(h[f"test_{task.primary}"] for h in history)
        print(f"done: best test {task.name} {best:.4f}; weights: {best_weights(run)} "
              f"(log: {run / 'log.jsonl'})")
        if len(history) < settings.config.epochs and args.until == len(history):
            print(f"stopped after epoch {len(history)} of {settings.config.epochs} (--until); "
                  f"go on with: archc train ... --resume {run}")
    return EXIT_OK


def _weights_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of numbers "
                                         f"(e.g. 0.2,1,1,1)") from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"class weights cannot be negative: '{text}'")
    return values


def _epoch_pattern(text: str) -> tuple[int, str]:
    from runtime.train.config import epoch_pattern

    try:
        return epoch_pattern(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def _setup_train(p: argparse.ArgumentParser) -> None:
    add_data_arguments(p)
    add_precision_argument(p)
    p.add_argument("--epochs", type=positive, help="default 10")
    p.add_argument("--batch-size", type=positive, help="default 32")
    p.add_argument("--optimizer", choices=["sgd", "adam", "adamw"], help="default sgd")
    p.add_argument("--lr", type=float, help="base learning rate (default 0.05)")
    p.add_argument("--momentum", type=float, help="SGD momentum (default 0.9)")
    p.add_argument("--nesterov", action="store_true", default=None,
                   help="Nesterov momentum (SGD)")
    p.add_argument("--weight-decay", type=float, help="default 5e-4")
    p.add_argument("--schedule", choices=["cosine", "step", "multistep", "constant"],
                   help="learning-rate schedule over the epochs (default cosine)")
    p.add_argument("--warmup", type=int, metavar="EPOCHS",
                   help="linear learning-rate warm-up epochs")
    p.add_argument("--label-smoothing", type=float, help="default 0")
    p.add_argument("--clip", type=float, metavar="NORM", help="clip gradients to this L2 norm")
    p.add_argument("--augment", metavar="LIST",
                   help="augmentations per batch, in order: crop, flip, jitter, rotate, "
                   "cutout, mixup, cutmix, randaugment (e.g. crop,flip)")
    p.add_argument("--init", metavar="W.npz|RUN_DIR",
                   help="start from these weights where names and shapes fit (transfer "
                   "learning: a head with another number of classes starts afresh)")
    add_weights_options(p)
    p.add_argument("--freeze", action="append", default=[], metavar="PATTERN",
                   help="parameters whose names match do not train (repeatable), e.g. "
                   "'layer1.*'")
    p.add_argument("--unfreeze", action="append", default=[], type=_epoch_pattern,
                   metavar="EPOCH:PATTERN",
                   help="progressive unfreezing: frozen parameters matching PATTERN train "
                   "from epoch EPOCH (1-based) on (repeatable), e.g. 3:'c3.*'")
    p.add_argument("--task", choices=["classify", "segment", "detect", "embed"],
                   help="what to train for (default: what the data is for; embed with an "
                   "embedding loss)")
    p.add_argument("--loss", help="segment: ce (default), dice, ce+dice; embed: "
                   "triplet-hard (default), triplet-all, contrastive; detect: yolo (rcnn for a "
                   "network with a proposals input, focal for a RetinaNet)")
    p.add_argument("--margin", type=float, help="embedding losses' margin (default 1.0)")
    p.add_argument("--class-weights", type=_weights_list, metavar="W0,W1,...",
                   help="segment: the cross-entropy's weight of each class, e.g. 0.2,1,1,1 "
                   "to count the background less")
    p.add_argument("--box-loss", choices=["mse", "giou"],
                   help="detect: the box coordinates' loss (default mse)")
    p.add_argument("--objectness", choices=["bce", "focal"],
                   help="detect: the objectness loss (default bce)")
    p.add_argument("--anchor-scale", type=float, metavar="K",
                   help="two-stage detectors and RetinaNet: each pyramid level's anchors are "
                   "K times its stride on a side (default 8 for two-stage, torchvision's 32 px "
                   "on P2; 4 for RetinaNet, 32 px on P3; smaller for objects that are small "
                   "next to the image)")
    p.add_argument("--patience", type=positive, metavar="EPOCHS",
                   help="stop early after this many epochs without a better test accuracy")
    p.add_argument("--out", default="runs/latest", metavar="RUN_DIR",
                   help="run directory: log and checkpoints (default runs/latest)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    p.add_argument("--until", type=positive, metavar="EPOCH",
                   help="stop after this epoch, the schedule still spanning --epochs; "
                   "--resume goes on from there (train in pieces)")
    p.add_argument("--tensorboard", metavar="DIR",
                   help="also write TensorBoard events to DIR: the log's numbers, histograms "
                   "of the weights and gradients, and the graph (needs archc[plots])")
    p.add_argument("--checkpoint-every", type=positive, metavar="STEPS",
                   help="also checkpoint every STEPS optimiser steps, within epochs (a "
                   "resumed run goes on from the next step; default: at the end of each "
                   "epoch only)")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel training on the ranks an MPI launcher started "
                   "(mpirun -n 4 archc train ... --distributed): each rank trains on its "
                   "slice of every global batch and the gradients are averaged (see "
                   "docs/distributed.md)")
    p.add_argument("--sync-bn", action="store_true", default=None,
                   help="--distributed: batch norm's statistics over every rank's batch "
                   "(default: each rank's own)")
    p.add_argument("--bucket-mb", type=float, metavar="MB",
                   help="--distributed: all-reduce the gradients in buckets of this many "
                   "MiB, each sent while the backward pass goes on "
                   f"(default {distributed.BUCKET_MB:g})")


def _cmd_eval(args: argparse.Namespace) -> int:
    from runtime.train import data

    graph = load_graph(args)
    settings = settings_of(args, graph)
    model = compile_for_data(graph, args, settings.config.seed)
    load_weights(model, args.weights, args)
    shape = next(iter(model.program.inputs.values()))
    split = data.load(settings.data, shape, seed=settings.config.seed)
    task = task_for(settings, split, model, args.weights)
    result = task.evaluate(model, split.test)
    shown = {"accuracy": "test accuracy", "top5": "top-5", "miou": "mean IoU",
             "pixel_accuracy": "pixel accuracy", "map50": "mAP@0.5", "map": "mAP@[.5:.95]",
             "mask_map50": "mask mAP@0.5", "mask_map": "mask mAP@[.5:.95]",
             "retrieval": "retrieval accuracy", "roc_auc": "ROC-AUC",
             "verification": "verification accuracy", "loss": "loss"}
    print(f"{model.program.name} on {settings.data} ({len(split.test)} held-out images): "
          + "  ".join(f"{label} {result[key]:.4f}" for key, label in shown.items()
                      if key in result))
    return EXIT_OK


def _setup_eval(p: argparse.ArgumentParser) -> None:
    add_data_arguments(p)
    p.add_argument("--task", choices=["classify", "segment", "detect", "embed"],
                   help="what the weights were trained for (default: the run's task.json, "
                   "else what the data is for)")
    p.add_argument("--weights", required=True, metavar="W.npz|RUN_DIR",
                   help="trained parameters, or a run directory (its best checkpoint)")
    add_weights_options(p)


COMMANDS["train"] = ("train a spec on a data set, with a log and checkpoints",
                     _setup_train, _cmd_train)


COMMANDS["eval"] = ("evaluate trained weights on a data set's held-out images",
                    _setup_eval, _cmd_eval)
