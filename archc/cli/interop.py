"""``archc export`` and ``archc import``: ONNX, PyTorch state_dicts, specs."""

from __future__ import annotations

import argparse
import os

from archc.cli.common import (COMMANDS, EXIT_OK, add_memory_argument, add_pass_arguments,
                              add_spec_arguments, add_weights_options, load_graph, load_weights,
                              pipeline_of, write_atomically)
from archc.errors import UsageError


def _cmd_export(args: argparse.Namespace) -> int:
    from archc import compile as compile_graph
    from archc.optimize import optimize
    from runtime.params import save_params

    graph = load_graph(args)
    model = compile_graph(graph, backend="reference", seed=args.seed)
    if args.weights:
        load_weights(model, args.weights, args)
    pipeline = pipeline_of(args) or []
    graph, params = graph, dict(model.params)
    if pipeline:
        result = optimize(graph, pipeline, params)
        graph, params = result.graph, result.params
    if args.format == "yaml":
        from archc.spec.writer import write_spec

        names = ", ".join(name for name, _ in pipeline) or "none"
        header = (f"{graph.name}: {args.spec} (passes: {names}).\n"
                  "Written by archc export; archc reads it back to the same graph.")
        with open(args.output, "w") as f:
            f.write(write_spec(graph, header))
        print(f"wrote {args.output}: {graph.name} as a spec, {len(graph)} layers")
    elif args.format == "onnx":
        from archc.export import OPSET, to_onnx

        model = to_onnx(graph, params, doc=f"{graph.name} from {args.spec}")
        write_atomically(args.output, model.SerializeToString())
        print(f"wrote {args.output}: {graph.name} as ONNX (opset {OPSET}, batch dimension "
              f"'batch'), {len(model.graph.node)} operators, {len(model.graph.initializer)} "
              f"initializers ({'trained' if args.weights else 'initialised'} weights)")
    else:
        from archc.naming import torch_names

        names = torch_names(graph)
        save_params(args.output, {names.get(k, k): v for k, v in params.items()})
        print(f"wrote {args.output}: {len(params)} arrays named and laid out as in PyTorch's "
              f"state_dict ({'trained' if args.weights else 'initialised'} weights)")
    return EXIT_OK


def _setup_export(p: argparse.ArgumentParser) -> None:
    add_spec_arguments(p)
    add_pass_arguments(p, "default: -O0, the network as written")
    p.add_argument("--format", choices=["onnx", "yaml", "state-dict"], required=True,
                   help="onnx: the network and its weights as an ONNX model (opset 17, "
                   "symbolic batch; run it with onnxruntime, read it back with archc import); "
                   "yaml: the graph as a spec archc reads back to the same graph; "
                   "state-dict: the weights as an .npz whose keys and layouts are PyTorch's "
                   "state_dict (load it with torch: {k: torch.from_numpy(v) ...})")
    p.add_argument("--weights", metavar="W",
                   help="weights to export or to optimise with (.npz, a PyTorch .pt state_dict "
                   "or a run directory of archc train; default: initialised)")
    add_weights_options(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the initial weights")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="where to write")


COMMANDS["export"] = (
    "write a network (optionally optimised) as ONNX or YAML, or its weights as a PyTorch "
    "state_dict",
    _setup_export,
    _cmd_export,
)


def _cmd_import(args: argparse.Namespace) -> int:
    from archc.errors import OnnxError, SpecError
    from archc.export import from_onnx
    from archc.spec.loader import load_yaml
    from archc.spec.writer import write_spec
    from runtime.files import writable
    from runtime.params import save_params

    if not os.path.exists(args.model):
        raise UsageError(f"{args.model}: no such file")
    graph, params = from_onnx(args.model)
    weights = args.weights_out or os.path.splitext(args.output)[0] + ".npz"
    writable(weights, "weights file")
    header = (f"{graph.name}: imported from {args.model} by archc import.\n"
              f"Its weights: {weights} (archc run {args.output} --weights {weights}).")
    text = write_spec(graph, header)
    try:  # a spec archc would refuse to read back is not written
        load_yaml(text, args.output)
    except SpecError as exc:
        raise OnnxError(f"the model is too large for an archc spec: {exc.message}",
                        path=args.model) from None
    write_atomically(args.output, text.encode())
    save_params(weights, params)
    print(f"wrote {args.output}: {graph.name}, {len(graph) - len(graph.inputs)} layers; "
          f"{weights}: {len(params)} arrays")
    return EXIT_OK


def _setup_import(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="an ONNX model (.onnx), e.g. from torch.onnx.export")
    p.add_argument("-o", "--output", required=True, metavar="SPEC", help="the spec to write")
    p.add_argument("--weights-out", metavar="W", help="where to write the weights "
                   "(.npz; default: the spec's name with .npz)")
    add_memory_argument(p)


COMMANDS["import"] = (
    "turn an ONNX model into an archc spec and its weights",
    _setup_import,
    _cmd_import,
)
