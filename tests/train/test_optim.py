"""Optimisers, schedules and clipping against torch.optim (float32 tolerance)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import archc
from conftest import SPECS
from runtime.train import optim

CASES = [
    ("sgd", {"lr": 0.1}),
    ("sgd", {"lr": 0.1, "momentum": 0.9}),
    ("sgd", {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "nesterov": True}),
    ("sgd", {"lr": 0.05, "momentum": 0.8, "dampening": 0.1, "weight_decay": 1e-3}),
    ("adam", {"lr": 1e-3}),
    ("adam", {"lr": 1e-2, "betas": (0.8, 0.99), "weight_decay": 1e-2}),
    ("adamw", {"lr": 1e-3}),
    ("adamw", {"lr": 3e-3, "weight_decay": 0.05, "eps": 1e-6}),
]
TORCH = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


@pytest.mark.parametrize("kind, options", CASES)
def test_steps_match_torch_optim(kind, options):
    rng = np.random.default_rng(0)
    start = {"w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
             "b": rng.standard_normal(4).astype(np.float32)}
    ours = {k: v.copy() for k, v in start.items()}
    theirs = {k: torch.tensor(v, requires_grad=True) for k, v in start.items()}
    opt = optim.OPTIMIZERS[kind](ours, **options)
    topt = TORCH[kind](list(theirs.values()), **options)
    for _ in range(5):
        grads = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in start.items()}
        opt.step(grads)
        for k, t in theirs.items():
            t.grad = torch.tensor(grads[k])
        topt.step()
        for k in ours:
            np.testing.assert_allclose(ours[k], theirs[k].detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["sgd", "adam", "adamw"])
def test_one_step_on_resnet18_matches_torch(kind):
    graph = archc.load(SPECS / "resnet18.yaml", resolution=32, num_classes=10)
    model = archc.compile(graph, backend="cpu", seed=0).train()
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    y = model(x)
    grads = model.backward(np.ones_like(y) / y.size).params
    trainable = {k: v for k, v in model.parameters().items() if k in grads}
    before = {k: torch.tensor(v) for k, v in trainable.items()}
    options = {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4} if kind == "sgd" else \
        {"lr": 1e-3, "weight_decay": 1e-4}
    optim.OPTIMIZERS[kind](trainable, **options).step(grads)
    tensors = [before[k].requires_grad_(True) for k in trainable]
    for t, k in zip(tensors, trainable):
        t.grad = torch.tensor(grads[k])
    TORCH[kind](tensors, **options).step()
    for t, k in zip(tensors, trainable):
        np.testing.assert_allclose(trainable[k], t.detach().numpy(), rtol=1e-5, atol=1e-6,
                                   err_msg=k)


def test_state_round_trips_and_resumes_identically():
    rng = np.random.default_rng(2)
    start = {"w": rng.standard_normal(10).astype(np.float32)}
    grads = [{"w": rng.standard_normal(10).astype(np.float32)} for _ in range(6)]
    straight = {"w": start["w"].copy()}
    a = optim.Adam(straight, lr=0.01)
    for g in grads:
        a.step(g)
    resumed = {"w": start["w"].copy()}
    b = optim.Adam(resumed, lr=0.01)
    for g in grads[:3]:
        b.step(g)
    saved = {k: v.copy() for k, v in b.state_dict().items()}
    c = optim.Adam(resumed, lr=0.5)
    c.load_state_dict(saved)
    for g in grads[3:]:
        c.step(g)
    np.testing.assert_array_equal(resumed["w"], straight["w"])


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="positive"):
        optim.SGD({}, lr=-1)
    with pytest.raises(ValueError, match="Nesterov"):
        optim.SGD({}, lr=0.1, nesterov=True)


@pytest.mark.parametrize("kind, options, torch_schedule", [
    ("step", {"step_size": 3, "gamma": 0.5},
     lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5)),
    ("multistep", {"milestones": (2, 5), "gamma": 0.1},
     lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones=[2, 5], gamma=0.1)),
    ("cosine", {"total": 8, "eta_min_factor": 0.01},
     lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=8, eta_min=0.001)),
])
def test_schedules_match_torch(kind, options, torch_schedule):
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    schedule = torch_schedule(opt)
    for epoch in range(9):  # cosine: over its 8 epochs (PyTorch's then rises again)
        assert math.isclose(0.1 * optim.schedule_factor(kind, epoch, **options),
                            opt.param_groups[0]["lr"], rel_tol=1e-9, abs_tol=1e-12), epoch
        opt.step()
        schedule.step()


def test_cosine_holds_its_minimum_after_the_last_epoch():
    assert optim.schedule_factor("cosine", 12, total=8, eta_min_factor=0.01) == 0.01


def test_warmup_matches_torch_linear_lr():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    schedule = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.25, total_iters=4)
    for epoch in range(7):
        ours = 0.1 * optim.schedule_factor("constant", epoch, warmup=4, warmup_start=0.25)
        assert math.isclose(ours, opt.param_groups[0]["lr"], rel_tol=1e-9)
        opt.step()
        schedule.step()
    with pytest.raises(ValueError, match="unknown schedule"):
        optim.schedule_factor("exponential", 0)


@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_clip_grad_norm_matches_torch(max_norm):
    rng = np.random.default_rng(3)
    grads = {"a": rng.standard_normal((3, 4)).astype(np.float32),
             "b": rng.standard_normal(5).astype(np.float32)}
    tensors = [torch.zeros(g.shape, requires_grad=True) for g in grads.values()]
    for t, g in zip(tensors, grads.values()):
        t.grad = torch.tensor(g)
    expected = torch.nn.utils.clip_grad_norm_(tensors, max_norm)
    norm = optim.clip_grad_norm(grads, max_norm)
    assert math.isclose(norm, float(expected), rel_tol=1e-6)
    for t, g in zip(tensors, grads.values()):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-6)
