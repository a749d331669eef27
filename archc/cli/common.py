"""What every group of commands shares: the parser that exits 2 with one line, the spec and
pass arguments, loading a spec, the command table, the data arguments and the settings of
a training run."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable


from archc.errors import UsageError

from runtime.train.data import SOURCES


EXIT_OK, EXIT_INTERNAL, EXIT_USER = 0, 1, 2


# commands that take another command's flags after "--" (archc sweep ... -- --data digits):
# the attribute of their arguments that gets them
TRAILING: dict[str, str] = {}


class Parser(argparse.ArgumentParser):
    """argparse that exits 2 with a one-line reason (plus usage) on bad flags."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"archc: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USER)


def add_spec_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="path of the network's YAML spec")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE",
        help="override a variable of the spec (repeatable), e.g. --set width=32",
    )
    add_memory_argument(parser)


def add_memory_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-memory", metavar="SIZE",
                        help="refuse work that would need more memory than this, e.g. 8G "
                        "(default: what the machine has available; also ARCHC_MAX_MEMORY)")


def add_weights_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allow-nonfinite", action="store_true",
                        help="load weights that hold NaN or infinite values (refused by "
                        "default; for debugging)")


def load_weights(model, path, args, matching: bool = False):
    """Weights from a file or a run folder (its best intact checkpoint) into ``model``;
    ``matching``: only those that fit by name and shape (returns the names left out)."""
    from runtime.train.checkpoint import best_weights

    allow = getattr(args, "allow_nonfinite", False)
    if matching:
        return model.load_matching(best_weights(path), allow_nonfinite=allow)
    return model.load(best_weights(path), allow_nonfinite=allow)


def load_graph(args: argparse.Namespace):
    """The spec's graph; for commands with --passes/-O, its optimised view (structure
    only: no weights are needed to see what the passes do to the graph)."""
    from archc import build
    from archc.spec import parse_overrides

    graph = build(args.spec, parse_overrides(args.overrides))
    pipeline = pipeline_of(args) if getattr(args, "view_passes", False) else None
    if pipeline:
        from archc.passes import run_passes

        graph, _, _ = run_passes(graph, None, pipeline)
    return graph


def add_pass_arguments(p: argparse.ArgumentParser, default: str) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("-O", dest="opt_level", type=int, choices=[0, 1, 2], metavar="LEVEL",
                       help="-O0: no passes; -O1: clean-ups and batch-norm folding; -O2: "
                       f"also fusions ({default})")
    group.add_argument("--passes", metavar="LIST",
                       help="the passes to run, in order, comma-separated, each with "
                       ":key=value options, e.g. fold_bn,fuse_activation or "
                       "separable:match='conv*'")


def pipeline_of(args: argparse.Namespace) -> list | None:
    from archc.passes import parse_pipeline, preset

    if args.passes:
        return parse_pipeline(args.passes)
    level = args.opt_level if args.opt_level is not None else getattr(args, "default_level", None)
    return preset(level) if level else None


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable]] = {}


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def write_atomically(path: str, data: bytes) -> None:
    """A reader never sees half a file."""
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def add_precision_argument(p: argparse.ArgumentParser) -> None:
    from runtime.backends.cuda import PRECISIONS

    p.add_argument("--precision", choices=list(PRECISIONS), default="float32",
                   help="; ".join(f"{name}: {meaning}" for name, meaning in PRECISIONS.items())
                   + " (the tensor-core formats need --backend cuda and cuBLAS)")


def apply_precision(args: argparse.Namespace) -> None:
    """Set the GEMMs' arithmetic that ``--precision`` asks for (nothing for float32)."""
    precision = getattr(args, "precision", "float32")
    if precision == "float32":
        return
    if args.backend != "cuda":
        raise UsageError(f"--precision {precision} is the GPU's tensor-core format: it needs "
                         f"--backend cuda (this run is on {args.backend})")
    from runtime.backends.cuda import kernels

    kernels.set_precision(precision)


def compile_for_data(graph, args, seed: int, every_node: bool = False):
    """The model a data command runs: fused for training (exact passes), or with
    ``every_node`` as the spec wrote it, each layer an op of its own that the command may
    name (visualize, stylize)."""
    from archc import compile as compile_graph
    from archc.passes import for_training

    two_stage = "proposals" in graph.inputs  # the task computes the boxes (runtime.train.rcnn)
    pyramid = len(graph.inputs) == 1 and any(  # a RetinaNet: outputs per level
        str(name).startswith("class_logits_") for name in graph.outputs)
    if not (two_stage or pyramid) and (len(graph.inputs) != 1 or len(graph.outputs) != 1):
        raise UsageError(f"training needs a network with one input and one output, a "
                         f"two-stage detector (an input 'proposals' [R, 4]) or a RetinaNet "
                         f"(outputs class_logits_<level>, box_regression_<level>); {graph.name} "
                         f"has {len(graph.inputs)} and {len(graph.outputs)}")
    model = compile_graph(graph if every_node else for_training(graph), backend=args.backend,
                          seed=seed)
    apply_precision(args)
    return model


def settings_of(args, graph):
    """The spec's training: section with the flags given over it, as a Python caller of
    ``fit`` gets them (:func:`runtime.train.config.settings`)."""
    from runtime.train.config import KEYS, settings

    merged = settings(graph.training, {key: getattr(args, key, None) for key in KEYS})
    if merged.data is None:
        raise UsageError("no data to train on: give --data (digits, mnist:DIR, ...) or "
                         "'data:' in the spec's training section")
    return merged


def task_for(settings, split, model, weights=None):
    """The task a run trains or was trained for: a run directory's task.json where the
    weights come from one, else the settings and the data's kind."""
    from runtime.train import tasks

    if weights is not None:
        described = tasks.find_description(weights)
        if described is not None:
            return tasks.restore(described, split, model.program)
    return tasks.make(settings.task, split, model.program, settings.options,
                      seed=settings.config.seed)


def add_data_arguments(p: argparse.ArgumentParser, spec: bool = True) -> None:
    """The spec (unless ``spec`` is False: the caller adds it), the data set, the backend
    and the seed: shared by train, eval and report."""
    if spec:
        add_spec_arguments(p)
    p.add_argument("--data", metavar="SOURCE",
                   help=f"{SOURCES} (default: the spec's training section)")
    p.add_argument("--backend", choices=["cpu", "reference", "cuda"], default="cpu",
                   help="cpu: Numba kernels (default); reference: plain NumPy; cuda: an NVIDIA "
                   "GPU (parameters, activations, gradients and optimiser state stay on it; "
                   "checkpoints are the same on every backend)")
    p.add_argument("--seed", type=int,
                   help="seed for weights, the held-out split and batches (default 0; eval: "
                   "the one the run was trained with)")
