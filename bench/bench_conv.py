"""Convolution algorithms on the CPU, per layer shape: archc's choice (``conv.choose``: register
tiles for few channels, Winograd in inference, a GEMM per filter tap on the grid layout,
im2col + GEMM, a GEMM on the map as it lies for unpadded 1x1, a direct loop for depthwise),
each of the general algorithms that can run the layer forced (direct, grid, im2col), and
PyTorch; forward and forward+backward in training mode, same process, median of repeated
runs; the ratio is archc's choice over PyTorch. With ``--geometries``, the register tiles
sized for each machine's vector unit too (runtime/backends/cpu/vector.py: AVX2's 4 x 16
and AVX-512's 8 x 32 / 4 x 32; every one runs on any x86 machine with AVX, at its own
speed there).

    .venv/bin/python bench/bench_conv.py [--repeat N] [--geometries]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import archc  # noqa: E402
from runtime.backends.cpu import conv, vector  # noqa: E402
from timing import median_time  # noqa: E402

# (where it occurs, batch, in channels, out channels, size, kernel, stride, groups, padding)
SHAPES = [
    ("resnet18 layer1", 8, 64, 64, 56, 3, 1, 1, 1),
    ("resnet18 layer2", 8, 128, 128, 28, 3, 1, 1, 1),
    ("resnet18 layer3", 8, 256, 256, 14, 3, 1, 1, 1),
    ("resnet18 layer4", 8, 512, 512, 7, 3, 1, 1, 1),
    ("resnet18 layer2.0", 8, 64, 128, 56, 3, 2, 1, 1),
    ("resnet18 conv1", 8, 3, 64, 224, 7, 2, 1, 3),
    ("resnet20 layer1", 128, 16, 16, 32, 3, 1, 1, 1),
    ("resnet20 layer3", 128, 64, 64, 8, 3, 1, 1, 1),
    ("lenet5 c1", 256, 1, 6, 32, 5, 1, 1, 0),
    ("lenet5 c3", 256, 6, 16, 14, 5, 1, 1, 0),
    ("mobilenet_v2 1x1", 8, 32, 192, 56, 1, 1, 1, 0),
    ("mobilenet_v2 dw", 8, 144, 144, 56, 3, 1, 144, 1),
]


def one_conv(batch, cin, cout, size, k, stride, groups, pad):
    text = (f"input: {{channels: {cin}, height: {size}, width: {size}}}\nlayers:\n"
            f"  - conv2d: {{out_channels: {cout}, kernel_size: {k}, stride: {stride}, "
            f"padding: {pad}, groups: {groups}, bias: false}}\n")
    model = archc.compile(archc.load("conv.yaml", text=text), backend="cpu").train()
    x = np.random.default_rng(0).standard_normal((batch, cin, size, size)).astype(np.float32)
    return model, x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="the first shape only")
    parser.add_argument("--geometries", action="store_true",
                        help="also the register tiles of each vector width, forced")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads); this machine: "
          f"{vector.lanes()} float32 lanes per vector register; median of {args.repeat}; ms, "
          f"and the ratio archc / torch")
    forced = ("direct", "grid", "im2col")
    geometries = {"tiles/8": 8, "tiles/16": 16} if args.geometries else {}
    print(f"{'layer':<18} {'shape':<22} {'pass':<8} {'pick':<9} {'archc':>7} "
          + " ".join(f"{name:>7}" for name in forced + tuple(geometries))
          + f" {'torch':>7} {'ratio':>6} {'GFLOP/s':>8}")
    rules = conv.choose
    for name, batch, cin, cout, size, k, stride, groups, pad in (
            SHAPES[:1] if args.quick else SHAPES):
        model, x = one_conv(batch, cin, cout, size, k, stride, groups, pad)
        y = model(x)
        gy = np.ones_like(y)
        (op,) = [op for op in model.program.ops if op.kind == "conv2d"]
        pick = rules(op, batch, True)[0]
        weight = torch.randn(cout, cin // groups, k, k, requires_grad=True)
        tx = torch.from_numpy(x).requires_grad_(True)

        def torch_forward():
            with torch.no_grad():
                torch.nn.functional.conv2d(tx, weight, None, stride, pad, 1, groups)

        def torch_both():
            out = torch.nn.functional.conv2d(tx, weight, None, stride, pad, 1, groups)
            torch.autograd.grad(out, (tx, weight), torch.ones_like(out))

        flops = 2 * y.size * (cin // groups) * k * k
        shape = f"{batch}x{cin}x{size}x{size} k{k}s{stride}" + (f"g{groups}" if groups > 1 else "")
        for label, ours, theirs, work in (
                ("forward", lambda: model(x), torch_forward, flops),
                ("fwd+bwd", lambda: (model(x), model.backward(gy)), torch_both, 3 * flops)):
            a = median_time(ours, args.repeat)
            cells = []
            for algorithm in forced:
                if algorithm not in conv.candidates(op, train=True):
                    cells.append("-")
                    continue
                conv.choose = lambda op, batch=1, train=False, name=algorithm: (name, "forced")
                cells.append(f"{median_time(ours, args.repeat) * 1e3:.1f}")
                conv.choose = rules
            for lanes in geometries.values():
                if "direct" not in conv.candidates(op, train=True):
                    cells.append("-")
                    continue
                native = vector.lanes()
                vector.LANES = lanes
                model.sync()  # the filters packed for this geometry's tiles
                conv.choose = lambda op, batch=1, train=False: ("direct", "forced")
                cells.append(f"{median_time(ours, args.repeat) * 1e3:.1f}")
                conv.choose, vector.LANES = rules, native
                model.sync()
            b = median_time(theirs, args.repeat)
            print(f"{name:<18} {shape:<22} {label:<8} {pick:<9} {a * 1e3:>7.1f} "
                  + " ".join(f"{cell:>7}" for cell in cells)
                  + f" {b * 1e3:>7.1f} {a / b:>5.2f}x {work / a / 1e9:>8.1f}")


if __name__ == "__main__":
    main()
