"""archc's inference against the engines a deployment engineer would pick instead, in one
run: archc -O0 and -O2 (CPU backend), PyTorch eager, and ONNX Runtime and OpenVINO on
archc's own ONNX export of the same network and weights (the -O0 graph). Every engine on
the same number of threads; the timings of one row are interleaved (a round of each
engine, repeated) and the median taken, so a slow spell of the machine hits all alike.
Prints milliseconds, archc -O2's ratio to each engine (above 1: archc is slower),
archc's GFLOP/s and its share of the sgemm rate measured in the same run, and which BLAS
kernel ran. Engines that are not installed are left out (``pip install -e .[bench]``).
Every engine computes in float32 (OpenVINO is told so: its default on CPUs with bfloat16
instructions is bfloat16).

A second table times a training step (forward, cross-entropy, backward, SGD update with
momentum) of archc's CPU backend against PyTorch eager on the same graph, batch and
labels: the steps of one row are interleaved too.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python bench/bench_engines.py \
        [--repeat N] [--threads T] [--only resnet18 ...] [--quick] [--no-train]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "oracles"))  # the PyTorch twins
sys.path.insert(0, str(ROOT / "bench"))

import archc  # noqa: E402
from archc.analysis import analyse  # noqa: E402
from bench_runtime import blas_kernel, sgemm_rate  # noqa: E402

# (spec, variables, batch): the rows of issue 24's table
ROWS = [("resnet18", {}, 1), ("resnet18", {}, 8), ("mobilenet_v2", {}, 1),
        ("mobilenet_v2", {}, 8), ("efficientnet", {}, 1), ("resnet20", {}, 128)]
QUICK = [("lenet5", {}, 8)]
# (spec, variables, batch): the training rows
TRAIN_ROWS = [("resnet18", {}, 8), ("mobilenet_v2", {}, 8), ("resnet20", {}, 128),
              ("lenet5", {}, 256)]


def archc_engine(graph, level: int):
    """archc's forward pass (inference, memory-planned) at -O``level``."""
    from archc.optimize import optimize
    from archc.passes import preset

    model = archc.compile(graph, backend="cpu", seed=0)
    if level:
        result = optimize(graph, preset(level), model.params)
        model = archc.compile(result.graph, backend="cpu", params=result.params)
    model.eval()
    return lambda x: model.predict(x)


def torch_engine(graph, threads: int):
    import torch
    import torch_twins

    torch.set_num_threads(threads)
    twin = torch_twins.TorchGraph(graph).eval()
    (name,) = graph.outputs.values()

    def run(x):
        with torch.no_grad():
            return twin(torch.from_numpy(x))[name]

    return run


def onnx_file(graph, folder: str) -> str:
    from archc.export import to_onnx

    model = archc.compile(graph, backend="reference", seed=0)
    path = f"{folder}/{graph.name}.onnx"
    Path(path).write_bytes(to_onnx(graph, model.params).SerializeToString())
    return path


def ort_engine(path: str, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})


def openvino_engine(path: str, threads: int):
    import openvino as ov

    core = ov.Core()
    # float32 like the others: on a CPU with AVX512-BF16 (this one) OpenVINO's default is
    # bfloat16 arithmetic, 2-3x faster and not the same numbers
    compiled = core.compile_model(core.read_model(path), "CPU",
                                  {"INFERENCE_NUM_THREADS": threads,
                                   "PERFORMANCE_HINT": "LATENCY",
                                   "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    return lambda x: request.infer({0: x})


def archc_train_step(graph, labels: np.ndarray):
    """One SGD step of archc's CPU backend: forward, loss and its gradient, backward,
    update (momentum 0.9), as ``archc train`` takes it."""
    from archc.passes import for_training
    from runtime.train import optim

    model = archc.compile(for_training(graph), backend="cpu", seed=0).train()
    learnable = [k for k, spec in model.program.params.items() if spec.trainable
                 and not spec.buffer]
    params = model.device_params()
    opt = optim.SGD({k: params[k] for k in learnable}, 0.01, momentum=0.9)

    def step(x):
        logits = model(x)
        _, grad, _ = model.backend.classify(logits, labels)
        opt.step(model.backward(grad, inputs=False).params)

    return step


def torch_train_step(graph, labels: np.ndarray, threads: int):
    import torch
    import torch_twins

    torch.set_num_threads(threads)
    twin = torch_twins.TorchGraph(graph).train()
    (name,) = graph.outputs.values()
    opt = torch.optim.SGD(twin.parameters(), lr=0.01, momentum=0.9)
    target = torch.as_tensor(labels)

    def step(x):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(twin(torch.from_numpy(x))[name], target)
        loss.backward()
        opt.step()

    return step


def train_table(rows, threads: int, repeat: int) -> None:
    print("\ntraining step (forward, loss, backward, SGD update), ms")
    print("| network | batch | archc | PyTorch | archc / PyTorch | archc GFLOP/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for spec, variables, batch in rows:
        graph = archc.load(ROOT / "specs" / f"{spec}.yaml", **variables)
        flops = 3 * analyse(graph, batch=batch).totals["flops"]  # forward + two backward
        rng = np.random.default_rng(0)
        x = rng.standard_normal((batch,) + tuple(graph[graph.inputs[0]].shape)).astype(
            np.float32)
        (out,) = graph.outputs.values()
        labels = rng.integers(0, graph[out].shape[0], batch)
        runs = {"archc": archc_train_step(graph, labels)}
        try:
            runs["PyTorch"] = torch_train_step(graph, labels, threads)
        except ImportError as exc:
            print(f"  (PyTorch left out: {exc})", file=sys.stderr)
        times = interleaved(runs, x, repeat)
        theirs = times.get("PyTorch")
        print(f"| {spec} | {batch} | {times['archc'] * 1e3:.1f} | "
              + (f"{theirs * 1e3:.1f} | {times['archc'] / theirs:.2f}x" if theirs else "- | -")
              + f" | {_rate(flops / times['archc'] / 1e9)} |", flush=True)


def engines(graph, threads: int, folder: str) -> dict:
    """Name -> a function of the input batch; those that cannot load are skipped."""
    made = {"archc -O0": lambda: archc_engine(graph, 0),
            "archc -O2": lambda: archc_engine(graph, 2),
            "PyTorch": lambda: torch_engine(graph, threads)}
    path = onnx_file(graph, folder)
    made["ONNX Runtime"] = lambda: ort_engine(path, threads)
    made["OpenVINO"] = lambda: openvino_engine(path, threads)
    out = {}
    for name, make in made.items():
        try:
            out[name] = make()
        except ImportError as exc:
            print(f"  ({name} left out: {exc})", file=sys.stderr)
    return out


# ONNX Runtime's and OpenVINO's worker threads spin for a while after a call; the engine
# timed next would share the cores with them (archc -O0 at resnet18 batch 1 measured 2x
# slower right after OpenVINO). A pause before each call lets them go idle.
PAUSE = 0.05


def _rate(gflops: float) -> str:
    """GFLOP/s to print: whole numbers, two digits below 10 (a tiny network on a loaded
    machine runs under one GFLOP/s, which would print as 0)."""
    return f"{gflops:.0f}" if gflops >= 10 else f"{gflops:.2g}"


def interleaved(runs: dict, x: np.ndarray, repeat: int) -> dict[str, float]:
    """Median seconds of each engine over ``repeat`` rounds, one call of each per round
    (after a pause), after a warm-up call of each."""
    for run in runs.values():
        run(x)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeat):
        for name, run in runs.items():
            time.sleep(PAUSE)
            start = time.perf_counter()
            run(x)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="one tiny row (a smoke test)")
    parser.add_argument("--only", nargs="+", metavar="NETWORK", help="run these networks only")
    parser.add_argument("--no-train", action="store_true", help="leave out the training table")
    args = parser.parse_args()
    import numba

    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    import runtime.backends.cpu  # noqa: F401  (loads the BLAS its kernels call, to report it)

    sgemm = sgemm_rate()
    versions = []
    for module in ("torch", "onnxruntime", "openvino"):
        try:
            versions.append(f"{module} {__import__(module).__version__.split('-')[0]}")
        except ImportError:
            versions.append(f"{module} absent")
    print(f"archc {archc.__version__}; {', '.join(versions)}; {args.threads} threads each; "
          f"BLAS: {blas_kernel()}; sgemm {sgemm:.0f} GFLOP/s; median of {args.repeat} "
          f"interleaved rounds; ms")
    rows = QUICK if args.quick else ROWS
    if args.only:
        rows = [row for row in rows if row[0] in args.only]
    header = None
    with tempfile.TemporaryDirectory() as folder:
        for spec, variables, batch in rows:
            graph = archc.load(ROOT / "specs" / f"{spec}.yaml", **variables)
            flops = analyse(graph, batch=batch).totals["flops"]
            x = np.random.default_rng(0).standard_normal(
                (batch,) + tuple(graph[graph.inputs[0]].shape)).astype(np.float32)
            runs = engines(graph, args.threads, folder)
            times = interleaved(runs, x, args.repeat)
            if header is None:
                header = list(runs)
                print("| network | batch | " + " | ".join(header) + " | -O2 / "
                      + " | -O2 / ".join(h for h in header if not h.startswith("archc"))
                      + " | -O2 GFLOP/s | of sgemm |")
                print("|---|---:|" + "---:|" * (len(header) * 2 - 1) + "---:|")
            ours = times["archc -O2"]
            cells = [f"{times[h] * 1e3:.1f}" if h in times else "-" for h in header]
            ratios = [f"{ours / times[h]:.2f}x" if h in times else "-" for h in header
                      if not h.startswith("archc")]
            rate = flops / ours / 1e9
            print(f"| {spec} | {batch} | " + " | ".join(cells + ratios)
                  + f" | {_rate(rate)} | {rate / sgemm:.0%} |", flush=True)
    if not args.no_train:
        rows = QUICK if args.quick else TRAIN_ROWS
        train_table([row for row in rows if not args.only or row[0] in args.only],
                    args.threads, args.repeat)


if __name__ == "__main__":
    main()
