"""Seeing inside: saliency, SmoothGrad, gradients at inner nodes, Gram-matrix style loss,
total variation, inversion and style transfer, against torch autograd on a LeNet-5
twin; and the PNG pictures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import archc
from runtime.train import pictures, visualize
from conftest import SPECS
from torch_models import LeNet5


@pytest.fixture(scope="module")
def twins():
    model = archc.compile(archc.load(SPECS / "lenet5.yaml"), backend="cpu", seed=3)
    net = LeNet5().double()
    net.load_state_dict({k: torch.tensor(v, dtype=torch.float64)
                         for k, v in model.params.items()})
    return model, net


def image(seed=0):
    return np.random.default_rng(seed).standard_normal((1, 32, 32)).astype(np.float32)


def test_saliency_is_the_input_gradient_of_the_class_score(twins):
    model, net = twins
    x = image()
    heat, k = visualize.saliency(model, x)
    t = torch.tensor(x[None], dtype=torch.float64, requires_grad=True)
    scores = net(t)
    assert k == int(scores.argmax())
    scores[0, k].backward()
    np.testing.assert_allclose(heat, t.grad[0].abs().amax(0).numpy(), rtol=1e-4, atol=1e-7)
    heat3, _ = visualize.saliency(model, x, target=3)
    assert not np.allclose(heat3, heat)


def test_smoothgrad_averages_gradients_of_noisy_copies(twins):
    model, net = twins
    x = image(1)
    heat, k = visualize.saliency(model, x, target=2, samples=8, noise=0.2, seed=5)
    rng = np.random.default_rng(5)
    sigma = 0.2 * float(x.max() - x.min())
    noisy = x[None] + rng.normal(0, sigma, (8,) + x.shape)
    t = torch.tensor(noisy.astype(np.float32), dtype=torch.float64, requires_grad=True)
    net(t)[:, 2].sum().backward()
    np.testing.assert_allclose(heat, t.grad.mean(0).abs().amax(0).numpy(), rtol=1e-4,
                               atol=1e-7)


def test_backward_from_an_inner_node_and_gram_style_loss_match_torch(twins):
    model, net = twins
    x = image(2)
    maps = visualize.feature_maps(model, x, "c3")
    target = visualize.gram(np.random.default_rng(0).standard_normal((1,) + maps.shape))[0]
    value, g_maps = visualize.style_loss(maps[None], target)
    model.eval()
    model(x[None])
    g_x = model.backward({"c3": g_maps.astype(np.float32)}).input

    t = torch.tensor(x[None], dtype=torch.float64, requires_grad=True)
    f = net.c3(net.s2(net.c1(t).tanh()))
    flat = f.reshape(1, f.shape[1], -1)
    gram = flat @ flat.transpose(1, 2) / flat.shape[1] / flat.shape[2]
    loss = ((gram - torch.tensor(target)) ** 2).sum()
    loss.backward()
    np.testing.assert_allclose(maps, f[0].detach().numpy(), rtol=1e-4, atol=1e-5)
    assert value == pytest.approx(float(loss.detach()), rel=1e-4)
    np.testing.assert_allclose(g_x, t.grad.numpy(), rtol=1e-3, atol=1e-6)
    with pytest.raises(visualize.VisualizeError, match="no node 'c4'.*c3"):
        visualize.feature_maps(model, x, "c4")


def test_total_variation_gradient_matches_torch():
    x = np.random.default_rng(0).standard_normal((1, 2, 5, 6))
    value, grad = visualize._tv(x)
    t = torch.tensor(x, requires_grad=True)
    tv = ((t[:, :, 1:] - t[:, :, :-1]) ** 2).sum() + ((t[:, :, :, 1:] - t[:, :, :, :-1]) ** 2).sum()
    tv.backward()
    assert value == pytest.approx(float(tv.detach()))
    np.testing.assert_allclose(grad, t.grad.numpy())


def test_class_model_raises_the_class_score(twins):
    model, _ = twins
    x, score = visualize.class_model(model, 7, steps=40, seed=0)
    model.eval()
    # better than any of 200 random images of the same spread
    rng = np.random.default_rng(1)
    noise = (rng.standard_normal((200, 1, 32, 32)) * x.std()).astype(np.float32)
    assert x.shape == (1, 32, 32) and score > model.predict(noise)[:, 7].max()
    with pytest.raises(visualize.VisualizeError, match="class 12 does not exist"):
        visualize.class_model(model, 12, steps=1)


def test_inversion_and_style_transfer_lower_their_losses(twins):
    model, _ = twins
    x = image(3)
    _, early = visualize.invert(model, x, "c3", steps=3)
    y, late = visualize.invert(model, x, "c3", steps=80)
    assert late < 0.75 * early and y.shape == x.shape
    rng = np.random.default_rng(4)
    content, style = (rng.random((1, 32, 32)).astype(np.float32) for _ in range(2))
    _, first = visualize.stylize(model, content, style, content_node="c3",
                                 style_nodes=["c1"], steps=1)
    out, last = visualize.stylize(model, content, style, content_node="c3",
                                  style_nodes=["c1"], steps=40)
    assert last["style"] < first["style"] / 2 and out.shape == content.shape
    assert out.min() >= 0 and out.max() <= 1  # kept in the images' range


def test_pictures(tmp_path):
    from PIL import Image

    pal = pictures.palette(14)
    assert pal.shape == (14, 3) and (pal[0] == 0).all() and len({tuple(c) for c in pal}) == 14
    pixels = pictures.to_uint8(np.random.default_rng(0).random((3, 8, 8)))
    assert pixels.shape == (8, 8, 3) and pixels.dtype == np.uint8
    mask = np.zeros((8, 8), int)
    mask[2:4, 2:4] = 2
    over = pictures.overlay(pixels, mask, pal)
    assert (over[0, 0] == pixels[0, 0]).all() and not (over[2, 2] == pixels[2, 2]).all()
    big = pictures.enlarge(pixels)
    assert big.shape == (256, 256, 3)
    boxed = pictures.draw_boxes(big, np.array([[1, 1, 6, 6]]), ["circle 0.9"], pal[1:], 32)
    assert (boxed[44:193, 32] == pal[1]).all()  # the box's left edge, scaled
    path = pictures.save(pictures.grid([big, big, big]), tmp_path / "a" / "grid.png")
    assert Image.open(path).size == (2 * 256 + 2, 2 * 256 + 2)
