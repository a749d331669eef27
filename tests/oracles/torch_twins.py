"""PyTorch twins of archc layers, built from torch.nn primitives: the test oracle.

``build(op, attrs, in_shapes)`` returns a callable taking input tensors (with batch) and a
torch module (or None) whose parameters/buffers should match archc's registry.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm2d(nn.LayerNorm):
    """ConvNeXt's LayerNorm over channels of an NCHW map (torchvision's definition)."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class LayerScale(nn.Module):
    def __init__(self, channels: int, init_value: float):
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels, 1, 1), init_value))

    def forward(self, x):
        return x * self.weight


class SameConv2d(nn.Conv2d):
    """TensorFlow-style 'same' padding for strided convolutions (PyTorch allows 'same' only
    with stride 1): pad asymmetrically as archc does, then convolve."""

    def forward(self, x):
        from archc.layers.conv import resolve_padding

        (top, bottom), (left, right) = resolve_padding(
            "same", self.kernel_size, self.stride, self.dilation, tuple(x.shape[2:]))
        return super().forward(F.pad(x, (left, right, top, bottom)))


def _conv_padding(attrs):
    p = attrs["padding"]
    if p == "full":
        d, k = attrs["dilation"], attrs["kernel_size"]
        return (d[0] * (k[0] - 1), d[1] * (k[1] - 1))
    return p


ACTIVATIONS = {
    "relu": lambda a: nn.ReLU(),
    "relu6": lambda a: nn.ReLU6(),
    "leaky_relu": lambda a: nn.LeakyReLU(a["negative_slope"]),
    "gelu": lambda a: nn.GELU(approximate=a["approximate"]),
    "silu": lambda a: nn.SiLU(),
    "hardswish": lambda a: nn.Hardswish(),
    "hardsigmoid": lambda a: nn.Hardsigmoid(),
    "sigmoid": lambda a: nn.Sigmoid(),
    "tanh": lambda a: nn.Tanh(),
    "softplus": lambda a: nn.Softplus(beta=a["beta"]),
    "mish": lambda a: nn.Mish(),
    "softmax": lambda a: nn.Softmax(dim=a["dim"]),
    "identity": lambda a: nn.Identity(),
    "dropout": lambda a: nn.Dropout(a["p"]),
    "stochastic_depth": lambda a: nn.Identity(),
}


def module(op: str, attrs: dict, in_shapes: list) -> nn.Module | None:
    """The torch.nn module equivalent to one archc layer (None for plain tensor ops)."""
    c = in_shapes[0][0] if in_shapes else None
    if op in ACTIVATIONS:
        return ACTIVATIONS[op](attrs)
    if op == "conv2d" and attrs["padding"] == "same" and attrs["stride"] != (1, 1):
        return SameConv2d(c, attrs["out_channels"], attrs["kernel_size"], attrs["stride"], 0,
                          attrs["dilation"], attrs["groups"], attrs["bias"])
    if op == "conv2d":
        return nn.Conv2d(c, attrs["out_channels"], attrs["kernel_size"], attrs["stride"],
                         _conv_padding(attrs), attrs["dilation"], attrs["groups"], attrs["bias"])
    if op == "conv_transpose2d":
        return nn.ConvTranspose2d(c, attrs["out_channels"], attrs["kernel_size"], attrs["stride"],
                                  attrs["padding"], attrs["output_padding"], attrs["groups"],
                                  attrs["bias"], attrs["dilation"])
    if op == "max_pool2d":
        return nn.MaxPool2d(attrs["kernel_size"], attrs["stride"], attrs["padding"],
                            attrs["dilation"], ceil_mode=attrs["ceil_mode"])
    if op == "avg_pool2d":
        return nn.AvgPool2d(attrs["kernel_size"], attrs["stride"], attrs["padding"],
                            attrs["ceil_mode"], attrs["count_include_pad"])
    if op == "global_avg_pool2d":
        return nn.AdaptiveAvgPool2d(1)
    if op == "global_max_pool2d":
        return nn.AdaptiveMaxPool2d(1)
    if op == "adaptive_avg_pool2d":
        return nn.AdaptiveAvgPool2d(attrs["output_size"])
    if op == "adaptive_max_pool2d":
        return nn.AdaptiveMaxPool2d(attrs["output_size"])
    if op == "unpool2d":
        return nn.Upsample(scale_factor=attrs["kernel_size"], mode="nearest")
    if op == "upsample" and len(in_shapes) == 2:
        return None  # size from the second input: see apply()
    if op == "upsample":
        kw = {"align_corners": attrs["align_corners"]} if attrs["mode"] == "bilinear" else {}
        size = attrs["size"]
        return nn.Upsample(size=size, scale_factor=None if size else attrs["scale_factor"],
                           mode=attrs["mode"], **kw)
    if op in ("batchnorm2d", "batchnorm1d"):
        cls = nn.BatchNorm2d if op == "batchnorm2d" else nn.BatchNorm1d
        return cls(c, attrs["eps"], attrs["momentum"], attrs["affine"],
                   attrs["track_running_stats"])
    if op == "layernorm2d":
        return LayerNorm2d(c, attrs["eps"], attrs["elementwise_affine"])
    if op == "layernorm":  # over the last axis
        return nn.LayerNorm(in_shapes[0][-1], attrs["eps"], attrs["elementwise_affine"])
    if op == "local_response_norm":
        return nn.LocalResponseNorm(attrs["size"], attrs["alpha"], attrs["beta"], attrs["k"])
    if op == "layer_scale":
        return LayerScale(c, attrs["init_value"])
    if op == "linear":  # over the last axis
        return nn.Linear(in_shapes[0][-1], attrs["out_features"], attrs["bias"])
    if op == "flatten":
        return nn.Flatten(attrs["start_dim"])
    if op == "channel_shuffle":
        return nn.ChannelShuffle(attrs["groups"])
    return None


def apply(op: str, attrs: dict, mod, xs: list):
    """Run one layer on torch tensors (``mod`` from :func:`module`, or None)."""
    if mod is not None:
        return mod(*xs)
    if op == "add":
        y = xs[0]
        for x in xs[1:]:
            if x.shape != y.shape:
                raise ValueError("add needs equal shapes")
            y = y + x
        return y
    if op == "join":  # the mean in inference (drop-path: tests/runtime/test_join.py)
        if any(x.shape != xs[0].shape for x in xs):
            raise ValueError("join needs equal shapes")
        return torch.stack(xs).mean(dim=0)
    if op == "multiply":
        y = xs[0]
        for x in xs[1:]:
            y = y * x
        return y
    if op == "concat":
        return torch.cat(xs, dim=attrs["dim"])
    if op == "reshape":
        return xs[0].reshape((xs[0].shape[0],) + tuple(attrs["shape"]))
    if op == "permute":
        return xs[0].permute(*attrs["dims"])
    if op == "slice":
        index = [slice(None)] * xs[0].dim()
        index[attrs["dim"]] = slice(attrs["start"], attrs["end"])
        y = xs[0][tuple(index)]
        if 0 in y.shape:
            raise ValueError("empty slice")
        return y
    if op == "center_crop":
        x, like = xs
        (h, w), (th, tw) = x.shape[2:], like.shape[2:]
        if th > h or tw > w:
            raise ValueError("crop larger than input")
        top, left = (h - th) // 2, (w - tw) // 2
        return x[:, :, top:top + th, left:left + tw]
    if op == "upsample":
        kw = {"align_corners": attrs["align_corners"]} if attrs["mode"] == "bilinear" else {}
        return F.interpolate(xs[0], size=tuple(xs[1].shape[2:]), mode=attrs["mode"], **kw)
    if op in ("roi_align", "roi_pool"):
        return _regions(op, attrs, *xs)
    raise KeyError(op)


def _regions(op: str, attrs: dict, x, boxes):
    """torchvision's roi_align / roi_pool (not installable beside torch here), as its
    definition written out point by point (tests/support/roi_naive.py) on torch tensors:
    autograd gives its gradients. The boxes (N, R, 4) join the batch, as in archc."""
    import roi_naive

    n, r = boxes.shape[:2]
    flat = boxes.detach().reshape(n * r, 4).tolist()
    batch = [i // r for i in range(n * r)]
    scale, pooled = attrs["spatial_scale"][0], tuple(attrs["output_size"])
    if op == "roi_pool":
        rows = roi_naive.roi_pool(x, flat, batch, scale, pooled)
    else:
        rows = roi_naive.roi_align(x, flat, batch, scale, pooled, attrs["sampling_ratio"],
                                   attrs["aligned"])
    y = roi_naive.stack(rows, torch).to(x.dtype)
    return y if y.requires_grad or not x.requires_grad else y + 0 * x.sum()


def run(op: str, attrs: dict, in_shapes: list, batch: int = 2) -> tuple[int, ...]:
    """Output shape (without batch) PyTorch gives; raises what PyTorch raises."""
    xs = [torch.zeros((batch,) + tuple(s)) for s in in_shapes]
    with torch.no_grad():
        if op == "max_unpool2d":
            k, s, p = attrs["kernel_size"], attrs["stride"], attrs["padding"]
            pool = nn.MaxPool2d(k, s, p, return_indices=True)
            _, idx = pool(torch.zeros((batch,) + tuple(attrs["_pool_input"])))
            out_size = attrs["output_size"]
            if len(xs) == 3:
                out_size = tuple(xs[2].shape[2:])
            y = F.max_unpool2d(xs[0], idx, k, s, p,
                               output_size=None if out_size is None else list(out_size))
        else:
            mod = module(op, attrs, in_shapes)
            if mod is not None:
                mod.eval()
            y = apply(op, attrs, mod, xs)
    return tuple(y.shape[1:])


class TorchGraph(nn.Module):
    """A PyTorch twin of a whole archc graph: one torch module or op per node, run in
    the graph's order (max_unpool2d aside)."""

    def __init__(self, graph):
        super().__init__()
        self.graph = graph
        self.layers = nn.ModuleDict()
        for node in graph:
            if node.op == "input":
                continue
            mod = module(node.op, node.attrs, [graph[i].shape for i in node.inputs])
            if mod is not None:
                self.layers[node.name.replace(".", "/")] = mod

    def forward(self, *inputs):
        values = dict(zip(self.graph.inputs, inputs))
        for node in self.graph:
            if node.op == "input":
                continue
            mod = self.layers[node.name.replace(".", "/")] if node.name.replace(".", "/") in self.layers else None
            values[node.name] = apply(node.op, node.attrs, mod, [values[i] for i in node.inputs])
        return values


def parameter_shapes(op: str, attrs: dict, in_shapes: list) -> tuple[dict, dict]:
    mod = module(op, attrs, in_shapes)
    if mod is None:
        return {}, {}
    params = {n: tuple(p.shape) for n, p in mod.named_parameters()}
    buffers = {n: tuple(b.shape) for n, b in mod.named_buffers()}
    return params, buffers
