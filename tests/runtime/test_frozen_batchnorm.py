"""Frozen batch norm (torchvision's FrozenBatchNorm2d, which its detection backbones use):
scale, shift and statistics are all buffers, training normalises with the running
statistics and leaves them alone, and the input gradient is the fixed affine map's."""

from __future__ import annotations

import numpy as np
import pytest

import archc

SPEC = """
input: {channels: 3, height: 8, width: 8}
layers:
  - conv2d: {out_channels: 4, kernel_size: 3, padding: 1, bias: false}
  - batchnorm2d: {frozen: FROZEN}
  - relu
  - global_avg_pool2d
  - flatten
  - linear: 2
"""


def _graph(frozen: bool):
    return archc.load("f.yaml", text=SPEC.replace("FROZEN", str(frozen).lower()))


def test_frozen_scale_and_shift_are_buffers_named_as_torchvision():
    trainable, frozen = _graph(False).summary(), _graph(True).summary()
    assert trainable.totals["params"] - frozen.totals["params"] == 2 * 4
    model = archc.compile(_graph(True))
    spec = model.program.params
    assert {k for k in spec if k.startswith("batchnorm2d.")} == {
        "batchnorm2d.weight", "batchnorm2d.bias", "batchnorm2d.running_mean",
        "batchnorm2d.running_var"}  # FrozenBatchNorm2d's state_dict: no counter
    assert all(spec[k].buffer and not spec[k].trainable for k in spec
               if k.startswith("batchnorm2d."))


def test_a_frozen_batch_norm_needs_running_statistics():
    text = SPEC.replace("{frozen: FROZEN}", "{frozen: true, track_running_stats: false}")
    with pytest.raises(archc.SpecError, match="needs track_running_stats"):
        archc.load("f.yaml", text=text)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_training_with_a_frozen_batch_norm_uses_and_keeps_its_statistics(backend):
    rng = np.random.default_rng(0)
    model = archc.compile(_graph(True), backend=backend, seed=3)
    params = model.params
    for name, value in (("running_mean", rng.standard_normal(4)),
                        ("running_var", rng.uniform(0.5, 2.0, 4)),
                        ("weight", rng.standard_normal(4)), ("bias", rng.standard_normal(4))):
        params[f"batchnorm2d.{name}"] = value.astype(np.float32)
    model.params = params
    x = rng.standard_normal((5, 3, 8, 8)).astype(np.float32)
    expected = model.eval().predict(x)
    y = model.train()(x)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    grads = model.backward(np.ones_like(y))
    assert not any(k.startswith("batchnorm2d.") for k in grads.params)
    after = model.params
    for name in ("running_mean", "running_var", "weight", "bias"):
        np.testing.assert_array_equal(after[f"batchnorm2d.{name}"], params[f"batchnorm2d.{name}"])
    # the gradient through a fixed affine map, against torch's FrozenBatchNorm2d formula
    torch = pytest.importorskip("torch")
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    w = {k: torch.tensor(v, dtype=torch.float64) for k, v in params.items()}
    z = torch.nn.functional.conv2d(xt, w["conv2d.weight"], padding=1)
    scale = w["batchnorm2d.weight"] * (w["batchnorm2d.running_var"] + 1e-5).rsqrt()
    shift = w["batchnorm2d.bias"] - w["batchnorm2d.running_mean"] * scale
    z = torch.relu(z * scale[:, None, None] + shift[:, None, None]).mean(dim=(2, 3))
    out = z @ w["linear.weight"].T + w["linear.bias"]
    np.testing.assert_allclose(y, out.detach().numpy(), rtol=1e-4, atol=1e-5)
    out.sum().backward()
    np.testing.assert_allclose(grads.input, xt.grad.numpy(), rtol=1e-4, atol=1e-6)
