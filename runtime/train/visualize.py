"""Seeing inside a network: what its outputs respond to and what its layers hold.

Everything here runs a compiled model forward and backward (any backend), in inference
mode, on images shaped like its input (C, H, W):

- :func:`saliency`: the gradient of a class score with respect to the input pixels
  (Simonyan, Vedaldi and Zisserman 2014), the largest absolute value over the channels;
  with ``samples`` > 0, SmoothGrad (Smilkov et al. 2017): the mean gradient over copies
  of the image with Gaussian noise added.
- :func:`class_model`: an image that maximises a class score, by gradient ascent on the
  input with L2 decay, random jitter and an occasional blur (Simonyan et al.; Yosinski et
  al. 2015's regularisers).
- :func:`feature_maps`: the activations of any named node; :func:`first_filters`: the
  weights of the first convolution.
- :func:`invert`: an image whose activations at a node match those of a given image
  (Mahendran and Vedaldi 2015), from noise, with a total-variation prior.
- :func:`stylize`: neural style transfer (Gatys, Ecker and Bethge 2016): an image with
  the activations of a content image at one node and the Gram matrices (channel
  correlations) of a style image at others.

The optimisations use Adam on the pixels (runtime.train.optim) and a gradient at any node
(``Model.backward`` takes gradients keyed by node name).
"""

from __future__ import annotations

import numpy as np

from runtime.train import optim
from runtime.errors import UsageError, did_you_mean


class VisualizeError(UsageError):
    """A request that does not fit the network (an unknown node, a missing class)."""


def _node_names(model) -> list[str]:
    return [op.output for op in model.program.ops]


def _check_node(model, node: str) -> None:
    names = _node_names(model)
    if node not in names:
        hint = did_you_mean(node, names)
        raise VisualizeError(f"{model.program.name} has no node '{node}'" +
                             (f" ({hint})" if hint else f"; its nodes: {', '.join(names[:12])}"
                              + (", ..." if len(names) > 12 else "")))


def _scores(model, out) -> np.ndarray:
    out = np.asarray(out)
    if out.ndim != 2:
        raise VisualizeError(f"class scores must be one vector per image; "
                             f"{model.program.name} gives {out.shape[1:]} (pick a classifier)")
    return out


def _class_gradient(model, x: np.ndarray, target: int | None):
    """The input gradient of the target class's score for each image of a batch."""
    model.eval()
    out = _scores(model, model(x))
    if target is None:
        target = int(out[0].argmax())
    if not 0 <= target < out.shape[1]:
        raise VisualizeError(f"class {target} does not exist: the network scores "
                             f"{out.shape[1]} classes (0..{out.shape[1] - 1})")
    grad = np.zeros_like(out)
    grad[:, target] = 1.0
    return model.backward(grad).input, target, out


def saliency(model, image: np.ndarray, target: int | None = None, *, samples: int = 0,
             noise: float = 0.15, seed: int = 0):
    """(H, W) saliency map of ``image`` (C, H, W) for class ``target`` (default: the
    predicted class), and that class. SmoothGrad with ``samples`` noisy copies, the noise's
    standard deviation ``noise`` times the image's value range."""
    x = np.asarray(image, np.float32)[None]
    if samples > 0:
        rng = np.random.default_rng(seed)
        sigma = noise * float(x.max() - x.min() or 1.0)
        x = (x + rng.normal(0, sigma, (samples,) + x.shape[1:])).astype(np.float32)
        if target is None:  # the clean image's prediction
            model.eval()
            target = int(_scores(model, model.predict(np.asarray(image, np.float32)[None]))[0]
                         .argmax())
    grad, target, _ = _class_gradient(model, x, target)
    return np.abs(grad.mean(axis=0)).max(axis=0), target


def _blur(x: np.ndarray) -> np.ndarray:
    """A 3x3 binomial blur of (N, C, H, W), edges repeated."""
    p = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
    k = np.array([1.0, 2.0, 1.0]) / 4
    rows = k[0] * p[:, :, :-2] + k[1] * p[:, :, 1:-1] + k[2] * p[:, :, 2:]
    return (k[0] * rows[..., :-2] + k[1] * rows[..., 1:-1] + k[2] * rows[..., 2:]).astype(
        x.dtype)


def class_model(model, target: int, *, steps: int = 200, lr: float = 0.05,
                l2: float = 1e-2, jitter: int = 2, blur_every: int = 10, seed: int = 0):
    """An input (C, H, W) that maximises the score of class ``target`` minus
    ``l2`` x its squared norm, and the score reached."""
    shape = next(iter(model.program.inputs.values()))
    rng = np.random.default_rng(seed)
    x = (rng.normal(0, 0.01, (1,) + shape)).astype(np.float32)
    opt = optim.Adam({"x": x}, lr)
    score = float("nan")
    for step in range(steps):
        dy, dx = (rng.integers(-jitter, jitter + 1, 2) if jitter else (0, 0))
        moved = np.roll(x, (dy, dx), axis=(2, 3))
        grad, _, out = _class_gradient(model, moved, target)
        score = float(out[0, target])
        grad = np.roll(grad, (-dy, -dx), axis=(2, 3))
        # ascent: minimise -(score - l2 |x|^2)
        opt.step({"x": (-grad + 2 * l2 * x).astype(np.float32)})
        if blur_every and (step + 1) % blur_every == 0 and step + 1 < steps:
            x[...] = _blur(x)
    return x[0], score


def feature_maps(model, image: np.ndarray, node: str) -> np.ndarray:
    """The activations (C, H, W) (or whatever shape the node has) of ``node`` for one
    image."""
    _check_node(model, node)
    model.eval()
    return model.intermediates(np.asarray(image, np.float32)[None])[node][0]


def first_filters(model) -> np.ndarray:
    """The first convolution's weights (out, in, kh, kw)."""
    for op in model.program.ops:
        if op.kind == "conv2d" and "weight" in op.params:
            return np.asarray(model.params[op.params["weight"]])
    raise VisualizeError(f"{model.program.name} has no convolution")


def _tv(x: np.ndarray):
    """Squared total variation of (N, C, H, W) and its gradient."""
    dh = x[:, :, 1:] - x[:, :, :-1]
    dw = x[:, :, :, 1:] - x[:, :, :, :-1]
    g = np.zeros_like(x)
    g[:, :, 1:] += 2 * dh
    g[:, :, :-1] -= 2 * dh
    g[:, :, :, 1:] += 2 * dw
    g[:, :, :, :-1] -= 2 * dw
    return float((dh ** 2).sum() + (dw ** 2).sum()), g


def _forward_at(model, x: np.ndarray, nodes) -> dict:
    model.eval()
    model(x)
    values = model._tape[0]
    return {n: model.backend.to_host(values[n]) for n in nodes}


def gram(features: np.ndarray) -> np.ndarray:
    """Gram matrices (N, C, C) of activations (N, C, H, W): channel correlations divided
    by C x H x W (Gatys et al.'s style representation)."""
    n, c = features.shape[:2]
    f = features.reshape(n, c, -1).astype(np.float64)
    return f @ f.transpose(0, 2, 1) / f.shape[1] / f.shape[2]


def style_loss(features: np.ndarray, target_gram: np.ndarray):
    """Sum of squared differences between the Gram matrices of ``features`` (N, C, H, W)
    and ``target_gram`` (C, C), and its gradient with respect to the features."""
    n, c = features.shape[:2]
    f = features.reshape(n, c, -1).astype(np.float64)
    m = c * f.shape[2]
    diff = gram(features) - target_gram
    grad = 2 * (diff + diff.transpose(0, 2, 1)) @ f / m
    return float((diff ** 2).sum()), grad.reshape(features.shape)


def invert(model, image: np.ndarray, node: str, *, steps: int = 200, lr: float = 0.05,
           tv: float = 1e-2, seed: int = 0):
    """An input (C, H, W) whose activations at ``node`` match those of ``image``: from
    noise, minimising the relative squared error of the activations plus ``tv`` x the
    total variation; and the relative error reached."""
    _check_node(model, node)
    x0 = np.asarray(image, np.float32)[None]
    target = _forward_at(model, x0, [node])[node].astype(np.float64)
    norm = float((target ** 2).sum()) or 1.0
    rng = np.random.default_rng(seed)
    x = (rng.normal(0, 0.1, x0.shape)).astype(np.float32)
    opt = optim.Adam({"x": x}, lr)
    error = float("nan")
    for _ in range(steps):
        got = _forward_at(model, x, [node])[node]
        diff = got - target
        error = float((diff ** 2).sum() / norm)
        g = model.backward({node: (2 * diff / norm).astype(np.float32)}).input
        _, g_tv = _tv(x)
        opt.step({"x": (g + tv * g_tv).astype(np.float32)})
    return x[0], error


def stylize(model, content: np.ndarray, style: np.ndarray, *, content_node: str,
            style_nodes: list[str], steps: int = 200, lr: float = 0.03,
            content_weight: float = 1.0, style_weight: float = 10.0, tv: float = 1e-4,
            value_range: tuple[float, float] | None = (0.0, 1.0)):
    """Neural style transfer from the content image: Adam on the pixels against
    ``content_weight`` x the squared error of the activations at ``content_node`` +
    ``style_weight`` x the squared error of the Gram matrices summed over ``style_nodes``
    (each relative to the target's own size, so every node counts alike) + ``tv`` x
    total variation; pixels kept within ``value_range``. Returns the image (C, H, W) and
    the last losses."""
    for node in [content_node, *style_nodes]:
        _check_node(model, node)
    c0 = np.asarray(content, np.float32)[None]
    s0 = np.asarray(style, np.float32)[None]
    content_target = _forward_at(model, c0, [content_node])[content_node].astype(np.float64)
    style_targets = {n: gram(v)[0] for n, v in _forward_at(model, s0, style_nodes).items()}
    style_norms = {n: float((g ** 2).sum()) or 1.0 for n, g in style_targets.items()}
    x = c0.copy()
    opt = optim.Adam({"x": x}, lr)
    norm = float((content_target ** 2).sum()) or 1.0
    parts = {}
    for _ in range(steps):
        got = _forward_at(model, x, {content_node, *style_nodes})
        grads: dict = {}
        diff = got[content_node] - content_target
        parts["content"] = content_weight * float((diff ** 2).sum()) / norm
        grads[content_node] = content_weight * 2 * diff / norm
        parts["style"] = 0.0
        for n in style_nodes:
            value, g = style_loss(got[n], style_targets[n])
            parts["style"] += style_weight * value / style_norms[n]
            grads[n] = grads.get(n, 0) + style_weight * g / style_norms[n]
        g_x = model.backward({k: v.astype(np.float32) for k, v in grads.items()}).input
        value, g_tv = _tv(x)
        parts["tv"] = tv * value
        opt.step({"x": (g_x + tv * g_tv).astype(np.float32)})
        if value_range is not None:
            np.clip(x, *value_range, out=x)
    return x[0], parts
