"""Check the library specs against torchvision itself, where torchvision is installed (it
does not install beside the test suite's torch here, so this is not part of `make test`).

For each network: torchvision's state_dict (random weights, random batch-norm statistics)
loads into the spec by `Model.load` without renaming, and archc's forward pass in eval mode
equals torchvision's; then archc's `state_dict()` loads back into the torchvision model with
`strict=True` (shapes included) where the layouts agree.

    python scripts/check_torchvision.py [--resolution 64] [--backend cpu]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torchvision

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import archc  # noqa: E402

# spec -> (torchvision constructor, its keyword arguments, spec variables)
NETWORKS = {
    "alexnet": ("alexnet", {}, {}),
    "vgg16": ("vgg16", {}, {}),
    "vgg16_bn": ("vgg16_bn", {}, {}),
    "googlenet": ("googlenet", {"aux_logits": False, "init_weights": True}, {}),
    # the auxiliary classifiers are training outputs: their weights load and come back,
    # eval mode computes the main output alone, as torchvision's
    "googlenet+aux": ("googlenet", {"aux_logits": True, "init_weights": True},
                      {"aux_logits": True}),
    "inception_v3": ("inception_v3", {"aux_logits": True, "init_weights": True},
                     {"resolution": 299}),
    "resnet18": ("resnet18", {}, {}),
    "resnet34": ("resnet34", {}, {}),
    "resnet50": ("resnet50", {}, {}),
    "densenet121": ("densenet121", {}, {}),
    "squeezenet1_0": ("squeezenet1_0", {}, {}),
    "squeezenet1_1": ("squeezenet1_1", {}, {}),
    "mobilenet_v2": ("mobilenet_v2", {}, {}),
    "efficientnet": ("efficientnet_b0", {}, {}),
    "convnext_tiny": ("convnext_tiny", {}, {}),
    "shufflenet_v2": ("shufflenet_v2_x1_0", {}, {}),
    "regnet+x_400mf": ("regnet_x_400mf", {}, {"model": "x_400mf"}),
    "regnet+y_800mf": ("regnet_y_800mf", {}, {"model": "y_800mf"}),
    "regnet+y_1_6gf": ("regnet_y_1_6gf", {}, {"model": "y_1_6gf"}),
    "fcn": ("segmentation.fcn_resnet50", {"num_classes": 21, "aux_loss": False,
                                          "weights_backbone": None}, {}),
    "deeplab": ("segmentation.deeplabv3_resnet50", {"num_classes": 21, "aux_loss": False,
                                                    "weights_backbone": None}, {}),
    "fcn+aux": ("segmentation.fcn_resnet50", {"num_classes": 21, "aux_loss": True,
                                              "weights_backbone": None}, {"aux_loss": True}),
    "deeplab+aux": ("segmentation.deeplabv3_resnet50", {"num_classes": 21, "aux_loss": True,
                                                        "weights_backbone": None},
                    {"aux_loss": True}),
}


def build(name: str, kwargs: dict) -> torch.nn.Module:
    module = torchvision.models
    for part in name.split("."):
        module = getattr(module, part)
    torch.manual_seed(0)
    model = module(weights=None, **kwargs)
    for m in model.modules():  # statistics that are not the identity
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return model.eval()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--backend", default="cpu")
    parser.add_argument("--only", nargs="*")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}")
    failures = 0
    for spec, (name, kwargs, variables) in NETWORKS.items():
        if args.only and spec not in args.only:
            continue
        twin = build(name, kwargs)
        res = variables.get("resolution", max(args.resolution, 64 if spec == "alexnet" else 0))
        variables = {k: v for k, v in variables.items() if k != "resolution"}
        graph = archc.load(ROOT / "specs" / f"{spec.split('+')[0]}.yaml", resolution=res,
                           **variables)
        model = archc.compile(graph, backend=args.backend)
        state = {k: v.detach().numpy() for k, v in twin.state_dict().items()}
        with tempfile.TemporaryDirectory() as tmp:
            np.savez(Path(tmp) / "w.npz", **state)
            try:
                model.load(Path(tmp) / "w.npz")
            except Exception as exc:  # report and go on with the next network
                print(f"{spec:14s} LOAD FAILED: {exc}")
                failures += 1
                continue
        x = np.random.default_rng(0).standard_normal((2, 3, res, res)).astype(np.float32)
        with torch.no_grad():
            want = twin(torch.from_numpy(x))
        want = (want["out"] if isinstance(want, dict) else want).numpy()
        got = model.eval().predict(x)
        got = got[next(iter(got))] if isinstance(got, dict) else got
        error = float(np.abs(got - want).max() / np.abs(want).max())
        try:
            twin.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v))
                                  for k, v in model.state_dict().items()}, strict=True)
            back = "strict load back: ok"
        except RuntimeError as exc:
            back = f"strict load back: FAILED ({str(exc).splitlines()[1].strip()[:90]})"
        ok = error < 1e-4
        failures += not ok
        print(f"{spec:14s} {len(state):4d} keys loaded, max relative error {error:.1e} "
              f"{'ok' if ok else 'MISMATCH'}; {back}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
