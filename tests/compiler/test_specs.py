"""The specs in specs/: each checks, and matches its PyTorch twin shape for shape and
parameter for parameter (names and layouts as torchvision's state_dict)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import archc
import torch_models
from archc.layers import get_layer
from conftest import SPECS


def registry_state(graph) -> dict[str, tuple]:
    """name -> shape of every parameter and buffer, as a state_dict would name them."""
    out = {}
    for node in graph:
        layer = get_layer(node.op)
        in_shapes = [graph[i].shape for i in node.inputs]
        for kind in (layer.parameters, layer.buffers):
            for key, shape in kind(node.attrs, in_shapes).items():
                out[f"{node.name}.{key}"] = tuple(shape)
    return out


def parameter_count(graph) -> int:
    total = 0
    for node in graph:
        layer = get_layer(node.op)
        shapes = layer.parameters(node.attrs, [graph[i].shape for i in node.inputs])
        total += sum(math.prod(s) for s in shapes.values())
    return total


def module_output_shapes(model: torch.nn.Module, x: torch.Tensor) -> dict[str, tuple]:
    shapes = {}

    def record(name):
        def hook(module, inputs, output):
            shapes.setdefault(name, tuple(output.shape[1:]))  # first call (relu is reused)

        return hook

    leaves = [(name, m) for name, m in model.named_modules() if name and not list(m.children())]
    hooks = [m.register_forward_hook(record(name)) for name, m in leaves]
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    return shapes


@pytest.mark.parametrize("path", sorted(SPECS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_spec_checks(path):
    graph = archc.load(path)
    assert all(node.shape for node in graph)


@pytest.mark.parametrize("spec, twin, size, params, variables", [
    ("lenet5", torch_models.LeNet5, 32, 61_706, {}),
    ("resnet18", lambda: torch_models.ResNet((2, 2, 2, 2)), 224, 11_689_512, {}),
    ("resnet18", lambda: torch_models.ResNet((3, 4, 6, 3)), 224, 21_797_672,
     {"blocks": [3, 4, 6, 3]}),
    ("resnet50", torch_models.ResNet50, 224, 25_557_032, {}),
    ("resnet20", torch_models.CifarResNet, 32, 272_474, {}),
    ("resnet20", lambda: torch_models.CifarResNet(n=18), 32, 1_730_714, {"depth": 110}),
    ("alexnet", torch_models.AlexNet, 224, 61_100_840, {}),
    ("vgg16", torch_models.VGG16, 224, 138_357_544, {}),
    ("googlenet", torch_models.GoogLeNet, 224, 6_624_904, {}),
    ("unet", torch_models.UNet, 64, 31_030_658, {"resolution": 64, "padding": 1}),
    # pytorchcv's fractalnet_cifar10 counts the same 33,724,618 (conv without bias, BN)
    ("fractalnet", torch_models.FractalNet, 32, 33_724_618, {}),
    ("unet_plus_plus", torch_models.UNetPlusPlus, 96, 9_042_177, {}),  # the paper's 9.04M
    ("unet_plus_plus", lambda: torch_models.UNetPlusPlus(deep_supervision=True), 96,
     9_042_276, {"deep_supervision": True}),
    ("attention_unet", torch_models.AttentionUNet, 64, 32_433_030, {"resolution": 64}),
], ids=lambda v: v if isinstance(v, str) else None)
def test_spec_equals_its_pytorch_twin(spec, twin, size, params, variables):
    graph = archc.load(SPECS / f"{spec}.yaml", **variables)
    model = twin()
    # Parameters: the published count, and every name and layout of the state_dict.
    assert parameter_count(graph) == params == sum(p.numel() for p in model.parameters())
    assert registry_state(graph) == {k: tuple(v.shape) for k, v in model.state_dict().items()}
    # Shapes: every module PyTorch runs has a node of the same name and output shape.
    channels = graph[graph.inputs[0]].shape[0]
    torch_shapes = module_output_shapes(model, torch.zeros(1, channels, size, size))
    compared = 0
    for name, shape in torch_shapes.items():
        if name in graph:
            assert graph[name].shape == shape, name
            compared += 1
    assert compared >= len(torch_shapes) * 0.6


def _twin_weights(model, folder, shift: float):
    """A twin's state_dict as an .npz, its batch norms given statistics and affine
    parameters that are not 0 or 1 first (means and shifts within +-shift)."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-shift, shift)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-shift, shift)
    path = folder / "w.npz"
    np.savez(path, **{k: v.double().numpy() for k, v in model.state_dict().items()})
    return path


@pytest.mark.parametrize("spec, variables, twin", [
    # the hand-expanded fractal against the authors' generator loop
    ("fractalnet", {"num_blocks": 2, "width": 0.125, "resolution": 8, "channels": 1},
     lambda: torch_models.FractalNet(filters=(8, 16), dropouts=(0.0, 0.1), channels=1)),
    # the nested grid written node by node against the authors' loop over it
    ("unet_plus_plus", {"base": 4, "resolution": 32, "deep_supervision": True},
     lambda: torch_models.UNetPlusPlus(base=4, deep_supervision=True)),
    ("unet_plus_plus", {"base": 4, "resolution": 16, "in_channels": 1, "num_classes": 3},
     lambda: torch_models.UNetPlusPlus(cin=1, classes=3, base=4)),
    ("attention_unet", {"base": 4, "resolution": 32},
     lambda: torch_models.AttentionUNet(base=4)),
], ids=["fractalnet", "unet_plus_plus-deep", "unet_plus_plus", "attention_unet"])
def test_spec_computes_what_its_twin_computes(spec, variables, twin, tmp_path):
    """Inference with the twin's weights, shared by name (joins are means, dropout off,
    batch norms with statistics and affine parameters that are not 0 or 1)."""
    graph = archc.load(SPECS / f"{spec}.yaml", **variables)
    torch.manual_seed(0)
    model = twin().eval()
    ours = archc.compile(graph, dtype="float64")
    ours.load(_twin_weights(model, tmp_path, 0.5))
    x = np.random.default_rng(0).standard_normal((2,) + graph[graph.inputs[0]].shape)
    with torch.no_grad():
        want = model.double()(torch.as_tensor(x)).numpy()
    np.testing.assert_allclose(ours.predict(x), want, rtol=1e-9, atol=1e-10)


def test_resnet18_check_and_set_on_the_command_line():
    graph = archc.load(SPECS / "resnet18.yaml")
    assert graph.output_shapes() == {"fc": (1000,)}
    small = archc.load(SPECS / "resnet18.yaml", num_classes=10, resolution=64)
    assert small.output_shapes() == {"fc": (10,)}
    assert small["layer4.1.relu_1"].shape == (512, 2, 2)


def test_faster_rcnn_mobilenet_is_torchvisions_layer_for_layer(tmp_path):
    """specs/faster_rcnn_mobilenet.yaml against a torch build of torchvision's
    fasterrcnn_mobilenet_v3_large_fpn (tests/oracles/torch_models.py): every parameter and
    buffer by torchvision's name and shape, and the same RPN outputs on every level
    (MobileNetV3's blocks, squeeze-excitation and hard swish included) in inference."""
    from archc.lower import lower

    graph = archc.load(SPECS / "faster_rcnn_mobilenet.yaml", resolution=64, proposals=3)
    program = lower(graph)
    torch.manual_seed(0)
    twin = torch_models.MobileNetV3LargeFPN().eval()
    state = {k: v for k, v in twin.state_dict().items() if "num_batches_tracked" not in k}
    ours = {program.torch_names.get(k, k): tuple(v.shape) for k, v in program.params.items()
            if "num_batches_tracked" not in k}
    assert ours == {k: tuple(v.shape) for k, v in state.items()}
    model = archc.compile(graph, dtype="float64")
    model.load(_twin_weights(twin, tmp_path, 0.2))
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64))
    boxes = np.tile(np.array([[0, 0, 32, 32], [8, 8, 60, 40], [1, 2, 3, 4]], float), (2, 1, 1))
    got = model.predict({"image": x, "proposals": boxes})
    with torch.no_grad():
        levels = twin.double()(torch.as_tensor(x))
        head = twin.rpn.head
        for name, level in zip(("p0", "p1", "pool"), levels):
            features = torch.relu(head.conv(level))
            np.testing.assert_allclose(got[f"objectness_{name}"],
                                       head.cls_logits(features).numpy(), rtol=1e-9, atol=1e-9)
            np.testing.assert_allclose(got[f"deltas_{name}"],
                                       head.bbox_pred(features).numpy(), rtol=1e-9, atol=1e-9)
