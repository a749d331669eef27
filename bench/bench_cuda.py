"""archc's CUDA backend against PyTorch on the same GPU, same process, float32 (TF32 off
for PyTorch, so both do full fp32 arithmetic), median of repeated runs after a warm-up:
one 3x3 conv's achieved TFLOP/s, and ResNet-18's inference and training throughput
(issue 25's targets: the conv at >= 60% of cuDNN, inference >= 60% and training >= 50% of
PyTorch). Both sides start from data already on the GPU; a training step reads its loss
back (PyTorch's ``loss.item()``, archc's one read per step). archc runs what its commands
run (bench/cuda_setup.py): inference on the graph as written and at -O2 (batch norms
folded into the convs, as ``archc optimize`` makes it; PyTorch eager stays as written),
training on ``archc train``'s graph. The first line says which
GEMM archc ran (cuBLAS or its own kernel: ``ARCHC_CUDA_GEMM``) and its allocator; the
last, how many device allocations the timed training steps asked of the driver, and the
strategy archc's benchmark mode kept for each conv shape (on here as PyTorch's
cudnn.benchmark is: each side times its choices on the first pass, in the warm-up).

    .venv/bin/python bench/bench_cuda.py [--repeat N] [--quick] [--precision tf32|bf16]

--precision tf32 runs both sides' matrix products on the tensor cores in TF32 (archc's
cuBLAS math mode, PyTorch's allow_tf32 for cuBLAS and cuDNN); --precision bf16 runs
archc's on them in bfloat16 (cuBLAS's bf16 compute type on float32 matrices) beside
PyTorch's mixed precision (torch.autocast with bfloat16, float32 master weights; it also
keeps activations in bfloat16). Both are reported apart from the float32 table the
targets are about.

--quick runs tiny shapes; it also runs under the CUDA simulator (NUMBA_ENABLE_CUDASIM=1),
where the times mean nothing (a smoke test of the script). Without a CUDA build of
PyTorch the reference columns stay empty.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "oracles"))  # the PyTorch twins
sys.path.insert(0, str(ROOT / "tests" / "support"))
sys.path.insert(0, str(ROOT / "bench"))

import archc  # noqa: E402
import torch_twins  # noqa: E402
from archc.analysis import analyse  # noqa: E402
from cuda_setup import inference_model, training_step  # noqa: E402
from runtime.backends.cuda import PRECISIONS  # noqa: E402
from timing import median_time  # noqa: E402

CONV = "input: {{channels: {c}, height: {hw}, width: {hw}}}\nlayers: [{{conv2d: " \
       "{{out_channels: {c}, kernel_size: 3, padding: 1, bias: false}}}}]"
TINY_NET = """
input: {channels: 3, height: 8, width: 8}
layers:
  - conv2d: {out_channels: 4, kernel_size: 3, padding: 1, bias: false}
  - batchnorm2d
  - relu
  - max_pool2d: 2
  - global_avg_pool2d: {}
  - flatten
  - linear: 10
"""


def fmt(value, spec: str, unit: str = "") -> str:
    return "-" if value is None else format(value, spec) + unit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="tiny shapes (a smoke test)")
    parser.add_argument("--precision", choices=list(PRECISIONS), default="float32")
    args = parser.parse_args()
    from runtime.backends.cuda import allocator, kernels, strategy
    from runtime.backends.cuda.backend import BACKEND

    sync = kernels.cuda.synchronize
    gpu = torch.cuda.is_available()
    device = BACKEND.device_name()
    print(f"archc on {device}; allocator: {kernels.ALLOCATOR}" + (
          f"\nPyTorch {torch.__version__} on "
                                  f"{torch.cuda.get_device_name()}" if gpu else
                                  f"; PyTorch {torch.__version__} has no CUDA here: its "
                                  "columns stay empty"))
    tf32, bf16 = args.precision == "tf32", args.precision == "bf16"
    print(f"precision: {args.precision}; GEMMs: {kernels.set_precision(args.precision)}"
          + ("; PyTorch: torch.autocast(bfloat16)" if bf16 else ""))
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = True

    strategy.benchmark(True)

    def autocast():  # PyTorch's mixed precision, for bf16
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16)

    def timed(fn) -> float:
        return median_time(lambda: (fn(), sync()), args.repeat)

    def torch_timed(fn) -> float:
        return median_time(lambda: (fn(), torch.cuda.synchronize()), args.repeat)

    # one conv: 3x3, 64 -> 64, batch 32, 56 x 56 (ResNet's first stage)
    c, hw, batch = (4, 6, 2) if args.quick else (64, 56, 32)
    graph = archc.load("conv.yaml", text=CONV.format(c=c, hw=hw))
    flops = 2 * analyse(graph, batch=batch).totals["macs"]
    model = archc.compile(graph, backend="cuda")
    x = np.random.default_rng(0).standard_normal((batch, c, hw, hw)).astype(np.float32)
    x_gpu = kernels.to_device(x)
    ours = timed(lambda: model.predict(x_gpu))
    ours_kernels = sum(t["forward"] for t in model.profile(x, repeat=args.repeat).values())
    theirs = None
    if gpu:
        twin = torch_twins.TorchGraph(graph).cuda().eval()
        tx = torch.as_tensor(x).cuda()
        with torch.no_grad(), autocast():
            theirs = torch_timed(lambda: twin(tx))
    print(f"\nconv 3x3 {c}->{c}, batch {batch}, {hw}x{hw}: {flops / 1e9:.2f} GFLOP")
    print(f"{'':<28} {'archc':>10} {'PyTorch':>10} {'archc/PyTorch':>14}")
    print(f"{'forward with copies (ms)':<28} {ours * 1e3:>10.3f} "
          f"{fmt(theirs and theirs * 1e3, '.3f'):>10}")
    rate = flops / ours_kernels / 1e12
    their_rate = theirs and flops / theirs / 1e12
    print(f"{'kernels only (TFLOP/s)':<28} {rate:>10.3f} {fmt(their_rate, '.3f'):>10} "
          f"{fmt(their_rate and rate / their_rate * 100, '.0f', '%'):>14}")

    # ResNet-18: inference and a training step (forward, loss, backward, SGD update)
    if args.quick:
        graph, batch = archc.load("tiny.yaml", text=TINY_NET), 2
    else:
        graph, batch = archc.load(ROOT / "specs" / "resnet18.yaml"), 64
    plain = inference_model(graph, 0)
    shape = next(iter(plain.program.inputs.values()))
    x = np.random.default_rng(0).standard_normal((batch,) + shape).astype(np.float32)
    classes = plain.program.ops[-1].out_shape[0]
    y = np.random.default_rng(1).integers(0, classes, batch)
    x_gpu = kernels.to_device(x)
    infer = {level: timed(lambda: model.predict(x_gpu))
             for level, model in ((0, plain), (2, inference_model(graph, 2)))}
    queue_step = training_step(graph, x_gpu, y)
    queued: list[float] = []  # the host's time to queue each step, before its one wait

    def archc_step():
        start = time.perf_counter()
        loss = queue_step()
        queued.append(time.perf_counter() - start)
        float(loss)

    archc_step()  # the optimiser's state, and the pool's blocks
    before = allocator.stats()
    step = timed(archc_step)
    after = allocator.stats()
    t_infer = t_step = None
    if gpu:
        twin = torch_twins.TorchGraph(graph).cuda()
        tx, ty = torch.as_tensor(x).cuda(), torch.as_tensor(y).cuda()
        topt = torch.optim.SGD(twin.parameters(), lr=0.01, momentum=0.9)
        (out_name,) = graph.outputs.values()
        twin.eval()
        with torch.no_grad(), autocast():
            t_infer = torch_timed(lambda: twin(tx))
        twin.train()

        def torch_step():
            topt.zero_grad()
            with autocast():
                loss = torch.nn.functional.cross_entropy(twin(tx)[out_name], ty)
            loss.backward()
            topt.step()
            loss.item()

        t_step = torch_timed(torch_step)
    name = "tiny net" if args.quick else "resnet18"
    print(f"\n{name}, batch {batch}, {shape[1]}x{shape[2]} (images/s)")
    print(f"{'':<28} {'archc':>10} {'PyTorch':>10} {'archc/PyTorch':>14}")
    rows = (("inference", infer[0], t_infer), ("inference, -O2 (folded BN)", infer[2], t_infer),
            ("training step", step, t_step))
    for label, a, b in rows:
        print(f"{label:<28} {batch / a:>10.1f} {fmt(b and batch / b, '.1f'):>10} "
              f"{fmt(b and b / a * 100, '.0f', '%'):>14}")
    host = float(np.median(queued[-args.repeat:]))
    print(f"\nhost time queuing a training step: {host * 1e3:.1f} ms of the step's "
          f"{step * 1e3:.1f} ms (Python and kernel launches; the step is host-bound where "
          f"the two are close)")
    if before is not None:
        print(f"\ndevice allocations from the driver in the timed training steps: "
              f"{after['driver_allocations'] - before['driver_allocations']} "
              f"({after['reused'] - before['reused']:,} from the pool; pool peak "
              f"{after['peak_bytes'] / 2 ** 30:.2f} GiB)")

    chosen = strategy.measured()
    if chosen:
        print("\nconv strategies archc's benchmark mode kept (each way's time, ms):")
        for direction, shapes, times, kept in chosen:
            ways = ", ".join(f"{way} {t * 1e3:.3f}" for way, t in times.items())
            print(f"  {direction:<8} {shapes}: {ways} -> {kept}")


if __name__ == "__main__":
    main()
