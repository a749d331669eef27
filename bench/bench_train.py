"""Training LeNet-5 on the bundled digits (what `make demo` does): archc against a PyTorch
twin of the same graph, same process, 2 threads each, the same batches, optimiser
(SGD, momentum 0.9, weight decay 5e-4, cosine schedule), starting weights and epochs.
Prints the wall time of training (evaluation excluded) and the held-out accuracy.

    .venv/bin/python bench/bench_train.py [--epochs N] [--spec lenet5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "oracles"))  # the PyTorch twins
sys.path.insert(0, str(ROOT / "tests" / "support"))

import archc  # noqa: E402
import torch_twins  # noqa: E402
from runtime.train import data  # noqa: E402
from runtime.train.loop import TrainConfig, evaluate, fit  # noqa: E402
from runtime.train.optim import schedule_factor  # noqa: E402


def torch_train(graph, params, split, config):
    twin = torch_twins.TorchGraph(graph)
    with torch.no_grad():  # the twin's keys are layers.<node name with / for .>.<role>
        for key, value in twin.state_dict().items():
            value.copy_(torch.as_tensor(params[key.removeprefix("layers.").replace("/", ".")]))
    (out_name,) = graph.outputs.values()
    opt = torch.optim.SGD(twin.parameters(), lr=config.lr, momentum=config.momentum,
                          weight_decay=config.weight_decay)
    start = time.perf_counter()
    for epoch in range(config.epochs):
        for group in opt.param_groups:
            group["lr"] = config.lr * schedule_factor("cosine", epoch, total=config.epochs)
        twin.train()
        for x, y in data.batches(split.train, config.batch_size, seed=config.seed, epoch=epoch):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(twin(torch.as_tensor(x))[out_name],
                                                     torch.as_tensor(y))
            loss.backward()
            opt.step()
    elapsed = time.perf_counter() - start
    twin.eval()
    with torch.no_grad():
        scores = twin(torch.as_tensor(split.test.x))[out_name].numpy()
    return elapsed, float((scores.argmax(axis=1) == split.test.y).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--spec", default="lenet5")
    args = parser.parse_args()
    torch.set_num_threads(2)
    graph = archc.load(ROOT / "specs" / f"{args.spec}.yaml")
    model = archc.compile(graph, backend="cpu", seed=0)
    split = data.load("digits", next(iter(model.program.inputs.values())), seed=0)
    config = TrainConfig(epochs=args.epochs, batch_size=32, lr=0.05)
    params = {k: v.copy() for k, v in model.parameters().items()}
    fit(archc.compile(graph, backend="cpu", seed=0), split,
        TrainConfig(epochs=1, batch_size=32), None, report=lambda line: None)  # compile
    history = fit(model, split, config, None, report=lambda line: None)
    ours = sum(h["seconds"] for h in history)
    theirs, their_accuracy = torch_train(graph, params, split, config)
    print(f"torch {torch.__version__} (2 threads); {args.spec} on digits: "
          f"{len(split.train)} training images, {args.epochs} epochs, batch 32")
    print(f"{'':<8} {'train s':>8} {'img/s':>8} {'test accuracy':>14}")
    images = len(split.train) * args.epochs
    print(f"{'archc':<8} {ours:>8.2f} {images / ours:>8.0f} "
          f"{evaluate(model, split.test)['accuracy']:>14.4f}")
    print(f"{'torch':<8} {theirs:>8.2f} {images / theirs:>8.0f} {their_accuracy:>14.4f}")
    print(f"ratio archc / torch: {ours / theirs:.2f}x")


if __name__ == "__main__":
    main()
