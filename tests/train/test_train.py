"""Training: LeNet-5 learns the digits, checkpoints resume bit for bit, a diverging loss
stops with a clear message, and the CLI trains and evaluates."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import archc
from runtime.train import checkpoint, data
from archc.cli import main
from runtime.train.loop import TrainConfig, TrainingError, evaluate, fit
from conftest import SPECS


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", (1, 32, 32), seed=0)


def lenet():
    return archc.compile(archc.load(SPECS / "lenet5.yaml"), backend="cpu", seed=0)


def test_lenet5_learns_the_digits(digits, tmp_path):
    model = lenet()
    history = fit(model, digits, TrainConfig(epochs=8, batch_size=32, lr=0.05), tmp_path,
                  report=lambda line: None)
    assert history[-1]["test_accuracy"] >= 0.97
    assert history[-1]["train_loss"] < history[0]["train_loss"] / 5
    logged = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in logged] == list(range(1, 9))
    # every step's loss (45 steps an epoch: under the 64 points a line keeps)
    for row in logged:
        steps = [step for step, _ in row["loss_steps"]]
        assert steps == list(range(row["steps"] - 44, row["steps"] + 1))
        mean = np.mean([loss for _, loss in row["loss_steps"]])
        assert mean == pytest.approx(row["train_loss"], rel=0.05)  # the last batch is smaller
    best = json.loads((tmp_path / "best.json").read_text())["checkpoint"]
    pointer = json.loads((tmp_path / "last.json").read_text())
    last = pointer["checkpoint"]
    # the newest, the one before it (to fall back on if the newest is damaged), the best
    assert last == "ckpt-0007" and pointer["previous"] == "ckpt-0006"
    assert sorted(p.name for p in tmp_path.glob("ckpt-*")) == sorted({best, last, "ckpt-0006"})
    again = lenet()
    again.load(tmp_path / last / "weights.npz")
    assert evaluate(again, digits.test)["accuracy"] == history[-1]["test_accuracy"]


def test_a_resumed_run_ends_with_the_same_weights(digits, tmp_path):
    config = TrainConfig(epochs=4, batch_size=64, optimizer="adam", lr=2e-3)
    straight = lenet()
    fit(straight, digits, config, tmp_path / "straight", report=lambda line: None)
    class Stop(Exception):
        pass

    def stop_after_two(line):
        if line.startswith("epoch 2/"):
            raise Stop  # as if the process were killed once epoch 2's checkpoint is in place

    with pytest.raises(Stop):
        fit(lenet(), digits, config, tmp_path / "resumed", report=stop_after_two)
    resumed = lenet()  # a fresh process: new model, state from the run directory only
    fit(resumed, digits, config, tmp_path / "resumed", resume=True, report=lambda line: None)
    for name, value in straight.parameters().items():
        np.testing.assert_array_equal(resumed.parameters()[name], value, err_msg=name)
    log = (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in log] == [1, 2, 3, 4]


def test_a_run_trained_in_pieces_with_until_ends_as_one_trained_at_once(tmp_path, capsys):
    """--until stops a run at an epoch with the schedule still spanning --epochs (the
    cosine's learning rates of a 4-epoch run), and --resume goes on: a sweep's rungs."""
    flags = [str(SPECS / "lenet5.yaml"), "--data", "digits", "--epochs", "4",
             "--batch-size", "64"]
    assert main(["train", *flags, "--out", str(tmp_path / "once")]) == 0
    assert main(["train", *flags, "--until", "1", "--out", str(tmp_path / "pieces")]) == 0
    assert "stopped after epoch 1 of 4 (--until)" in capsys.readouterr().out
    assert main(["train", *flags, "--until", "3", "--resume", str(tmp_path / "pieces")]) == 0
    assert main(["train", *flags, "--until", "3", "--resume", str(tmp_path / "pieces")]) == 0
    assert main(["train", *flags, "--resume", str(tmp_path / "pieces")]) == 0
    logs = {run: [json.loads(line) for line in (tmp_path / run / "log.jsonl").read_text()
                  .splitlines()] for run in ("once", "pieces")}
    assert [row["epoch"] for row in logs["pieces"]] == [1, 2, 3, 4]
    assert [row["lr"] for row in logs["pieces"]] == [row["lr"] for row in logs["once"]]
    assert [row["test_accuracy"] for row in logs["pieces"]] == \
        [row["test_accuracy"] for row in logs["once"]]
    once, pieces = (np.load(checkpoint.best_weights(tmp_path / run)) for run in ("once", "pieces"))
    for name in once.files:
        np.testing.assert_array_equal(pieces[name], once[name], err_msg=name)


def test_a_run_stopped_within_an_epoch_resumes_from_the_next_step(digits, tmp_path):
    """--checkpoint-every: a run stopped mid-epoch goes on from its last step checkpoint
    (augmentation stream and the epoch's sums included) to the weights and log of a run
    that never stopped."""
    from runtime.train.tasks import Classification

    config = TrainConfig(epochs=2, batch_size=64, optimizer="adam", lr=2e-3,
                         augment="crop,flip", checkpoint_every=5)
    straight = lenet()
    fit(straight, digits, config, tmp_path / "straight", report=lambda line: None)

    class Stop(Exception):
        pass

    class Stopping(Classification):
        calls = 0

        def step(self, *args):
            Stopping.calls += 1
            if Stopping.calls == 31:  # epoch 2 (23 steps each), step 8: checkpointed at 7
                raise Stop
            return super().step(*args)

    with pytest.raises(Stop):
        fit(lenet(), digits, config, tmp_path / "resumed", report=lambda line: None,
            task=Stopping(digits.train.classes))
    run = tmp_path / "resumed"
    assert json.loads((run / "last.json").read_text())["checkpoint"] == "ckpt-0001-000007"
    assert json.loads((run / "best.json").read_text())["checkpoint"] == "ckpt-0000"
    assert sorted(p.name for p in run.glob("ckpt-*")) == ["ckpt-0000", "ckpt-0001-000002",
                                                          "ckpt-0001-000007"]
    resumed = lenet()
    fit(resumed, digits, config, run, resume=True, report=lambda line: None)
    for name, value in straight.parameters().items():
        np.testing.assert_array_equal(resumed.parameters()[name], value, err_msg=name)
    rows = [[json.loads(line) for line in (path / "log.jsonl").read_text().splitlines()]
            for path in (run, tmp_path / "straight")]
    for mine, theirs in zip(*rows):
        # the loss curve too: the steps before the stop come back from the checkpoint
        for key in ("epoch", "steps", "train_loss", "train_accuracy", "test_accuracy",
                    "loss_steps"):
            assert mine[key] == theirs[key], key


def test_a_diverging_loss_stops_training_and_keeps_the_last_good_checkpoint(digits, tmp_path):
    fit(lenet(), digits, TrainConfig(epochs=1), tmp_path, report=lambda line: None)
    good = (tmp_path / "last.json").read_text()
    with pytest.raises(TrainingError, match=r"the loss became (nan|inf) at epoch 2, step \d+: "
                       r"training stopped; the last good checkpoint is kept"):
        fit(lenet(), digits, TrainConfig(epochs=3, lr=1e30, momentum=0.0), tmp_path,
            resume=True, report=lambda line: None)
    assert (tmp_path / "last.json").read_text() == good
    assert json.loads((tmp_path / "log.jsonl").read_text())["steps"] == 45  # 1438 / 32
    tmp_path = tmp_path / "fresh"
    with pytest.raises(TrainingError, match=r"the loss became (nan|inf) at epoch 1, step \d+"):
        fit(lenet(), digits, TrainConfig(epochs=2, lr=1e30, momentum=0.0), tmp_path,
            report=lambda line: None)
    with pytest.raises(TrainingError, match="no intact checkpoint to resume"):
        fit(lenet(), digits, TrainConfig(epochs=1), tmp_path, resume=True)


def test_cli_train_then_eval(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(SPECS / "lenet5.yaml"), "--data", "digits", "--epochs", "3",
                 "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "epoch 3/3" in out and str(run) in out
    weights = run / json.loads((run / "best.json").read_text())["checkpoint"] / "weights.npz"
    for given in (weights, run):  # a weights file, or the run directory (its best)
        assert main(["eval", str(SPECS / "lenet5.yaml"), "--weights", str(given),
                     "--data", "digits"]) == 0
        line = capsys.readouterr().out
        assert "test accuracy" in line and float(line.split("test accuracy")[1].split()[0]) > 0.9
    assert main(["eval", str(SPECS / "lenet5.yaml"), "--weights", str(tmp_path),
                 "--data", "digits"]) == 2
    assert "not a run folder of archc train" in capsys.readouterr().err
    assert main(["train", str(SPECS / "lenet5.yaml"), "--data", "imagenet"]) == 2
    assert "unknown data 'imagenet'" in capsys.readouterr().err


def test_sigkill_at_random_moments_then_resume_gives_the_same_weights(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    epochs = 20  # long enough that a kill lands while it runs (6 epochs took about 2 s)

    def command(run, resume):
        args = [sys.executable, "-m", "archc", "train", str(SPECS / "lenet5.yaml"), "--data",
                "digits", "--epochs", str(epochs), "--batch-size", "64"]
        return args + (["--resume", str(run)] if resume else ["--out", str(run)])

    straight = tmp_path / "straight"
    subprocess.run(command(straight, False), check=True, capture_output=True, timeout=300)
    run = tmp_path / "killed"
    rng = np.random.default_rng(0)
    kills = 0
    for _ in range(8):  # kill at random moments, including during checkpoint writes
        proc = subprocess.Popen(command(run, (run / "last.json").is_file()),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.5, 3.0))
        if proc.poll() is not None:
            break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
    subprocess.run(command(run, (run / "last.json").is_file()), check=True, capture_output=True,
                   timeout=300)
    assert kills >= 1
    last = json.loads((run / "last.json").read_text())["checkpoint"]
    assert last == f"ckpt-{epochs - 1:04d}"
    with np.load(run / last / "weights.npz") as ours, \
            np.load(straight / json.loads((straight / "last.json").read_text())["checkpoint"]
                    / "weights.npz") as theirs:
        assert set(ours) == set(theirs)
        for name in theirs:
            np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
    log = [json.loads(line)["epoch"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert log == list(range(1, epochs + 1))


def test_resnet20_trains_on_three_channel_digits_with_augmentation(tmp_path):
    split = data.load("digits", (3, 32, 32), seed=0)
    model = archc.compile(archc.load(SPECS / "resnet20.yaml"), backend="cpu", seed=0)
    history = fit(model, split, TrainConfig(epochs=3, batch_size=64, lr=0.05,
                                            augment="crop,flip,mixup"), tmp_path,
                  report=lambda line: None)
    losses_ = [h["train_loss"] for h in history]
    assert losses_[-1] < losses_[0] * 0.8, losses_
    assert history[-1]["test_accuracy"] > 0.5


def test_transfer_learning_replaces_the_head_and_freezes_the_rest(tmp_path, capsys):
    # train on digits 0-9, then start a 5-class network (the digits mod 5) from those
    # weights: the head (fc3) starts afresh, the frozen convolutions stay as trained
    first = tmp_path / "ten"
    assert main(["train", str(SPECS / "lenet5.yaml"), "--data", "digits", "--epochs", "3",
                 "--out", str(first)]) == 0
    digits = data.digits((1, 32, 32))
    x = np.concatenate([digits.train.x, digits.test.x])
    y = np.concatenate([digits.train.y, digits.test.y]) % 5
    np.savez(tmp_path / "five.npz", x=x, y=y)
    second = tmp_path / "five"
    assert main(["train", str(SPECS / "lenet5.yaml"), "--set", "num_classes=5", "--data",
                 f"npz:{tmp_path / 'five.npz'}", "--epochs", "3", "--init", str(first),
                 "--freeze", "c1.*", "--freeze", "c3.*", "--out", str(second)]) == 0
    out = capsys.readouterr().out
    assert "initialised afresh: fc3.bias, fc3.weight" in out
    trained = np.load(first / json.loads((first / "best.json").read_text())["checkpoint"]
                      / "weights.npz")
    retrained = np.load(second / json.loads((second / "last.json").read_text())["checkpoint"]
                        / "weights.npz")
    np.testing.assert_array_equal(retrained["c1.weight"], trained["c1.weight"])  # frozen
    assert not np.array_equal(retrained["fc1.weight"], trained["fc1.weight"])  # trained on
    assert retrained["fc3.weight"].shape == (5, 84)
    assert json.loads((second / "log.jsonl").read_text().splitlines()[-1])["test_accuracy"] > 0.8
    assert main(["train", str(SPECS / "lenet5.yaml"), "--data", "digits", "--freeze",
                 "conv9.*", "--out", str(tmp_path / "x")]) == 2
    assert "--freeze conv9.* matches no parameter" in capsys.readouterr().err


def test_early_stopping(digits, tmp_path):
    lines = []
    history = fit(lenet(), digits, TrainConfig(epochs=30, lr=0.05, patience=2), tmp_path,
                  report=lines.append)
    assert len(history) < 30 and lines[-1].startswith("early stop: no better test accuracy")
    best = max(h["test_accuracy"] for h in history)
    assert all(h["test_accuracy"] <= best for h in history[-2:])


def test_progress_bar_shows_loss_accuracy_and_throughput(digits, capsys):
    fit(lenet(), digits, TrainConfig(epochs=1), None, report=lambda line: None, progress=True)
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "img/s" in err and "loss=" in err and "acc=" in err


def test_progressive_unfreezing(digits, tmp_path):
    model = lenet()
    start = {k: v.copy() for k, v in model.parameters().items()}
    snapshots = []
    fit(model, digits, TrainConfig(epochs=3, freeze=("c1.*", "c3.*"), unfreeze=((3, "c3.*"),)),
        tmp_path, report=lambda line: snapshots.append(
            {k: v.copy() for k, v in model.parameters().items()}))
    # c3 stays frozen for epochs 1-2 and trains in epoch 3; c1 never trains
    np.testing.assert_array_equal(snapshots[1]["c3.weight"], start["c3.weight"])
    assert not np.array_equal(snapshots[2]["c3.weight"], start["c3.weight"])
    np.testing.assert_array_equal(snapshots[2]["c1.weight"], start["c1.weight"])
    with pytest.raises(TrainingError, match="--unfreeze fc9.* matches no parameter"):
        fit(lenet(), digits, TrainConfig(epochs=1, unfreeze=((2, "fc9.*"),)), None)


def test_cli_refuses_a_malformed_unfreeze(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["train", str(SPECS / "lenet5.yaml"), "--data", "digits", "--unfreeze", "c3.*"])
    assert stop.value.code == 2
    assert "is not EPOCH:PATTERN" in capsys.readouterr().err


def test_a_spec_training_section_sets_the_run_and_flags_override_it(tmp_path, capsys):
    spec = tmp_path / "net.yaml"
    spec.write_text((SPECS / "lenet5.yaml").read_text().replace(
        "variables:\n", "training:\n  data: digits\n  epochs: 2 * rounds\n"
        "  lr: 0.05\n  freeze: 'c1.*'\n  unfreeze: ['2:c1.*']\n"
        "variables:\n  rounds: 1\n", 1))
    run = tmp_path / "run"
    assert main(["train", str(spec), "--out", str(run)]) == 0
    assert "epoch 2/2" in capsys.readouterr().out
    config = json.loads((run / "config.json").read_text())
    assert config["epochs"] == 2 and config["freeze"] == ["c1.*"]
    assert config["unfreeze"] == [[2, "c1.*"]]
    assert main(["train", str(spec), "--set", "rounds=2", "--lr", "0.01", "--out",
                 str(run)]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["epochs"] == 4 and config["lr"] == 0.01
    assert main(["eval", str(spec), "--weights", str(run)]) == 0  # its data from the spec
    assert "test accuracy" in capsys.readouterr().out


@pytest.mark.parametrize("section, message", [
    ("training:\n  epoch: 3\n", "unknown key 'epoch' in the training section"),
    ("training:\n  epochs: fast\n", "training setting 'epochs'"),
    ("training:\n  lr: [1]\n", "training setting 'lr' must be float"),
    ("training: 5\n", "'training' must be a mapping"),
])
def test_training_section_errors_are_located(tmp_path, capsys, section, message):
    spec = tmp_path / "net.yaml"
    spec.write_text(section + "input: {channels: 1, height: 8, width: 8}\nlayers:\n"
                    "  - flatten:\n  - linear: 3\n")
    assert main(["train", str(spec), "--data", "digits", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert message in err and "net.yaml:" in err


def test_training_needs_data_from_somewhere(capsys):
    assert main(["train", str(SPECS / "lenet5.yaml")]) == 2
    assert "no data to train on" in capsys.readouterr().err


TRAINED_SPEC = """
input: {channels: 1, height: 32, width: 32}
training: {epochs: 2, lr: 0.02, batch_size: 64, optimizer: adam, data: digits, seed: 3}
layers:
  - conv2d: [6, 5]
  - relu
  - max_pool2d: 4
  - flatten
  - linear: 10
"""


def test_fit_takes_the_specs_training_section_as_archc_train_does(tmp_path):
    """fit without a config merges the spec's training: section (which the compiled
    program carries) with keyword settings over it, through the same function archc train
    uses: the two runs end with the same weights."""
    from runtime.train.config import settings

    graph = archc.load("net.yaml", text=TRAINED_SPEC)
    model = archc.compile(graph, backend="cpu", seed=3)  # as archc train: the run's seed
    assert model.program.training["optimizer"] == "adam"
    split = data.load("digits", (1, 32, 32), seed=3)
    history = fit(model, split, None, tmp_path / "py", report=lambda line: None, epochs=1)
    assert len(history) == 1  # the keyword over the spec's 2 epochs
    config = settings(graph.training, {"epochs": 1}).config
    assert (config.optimizer, config.lr, config.batch_size, config.seed) == ("adam", 0.02, 64, 3)
    spec = tmp_path / "net.yaml"
    spec.write_text(TRAINED_SPEC)
    assert main(["train", str(spec), "--epochs", "1", "--out", str(tmp_path / "cli")]) == 0
    saved = np.load(tmp_path / "cli" / "ckpt-0000" / "weights.npz")
    for name, value in model.parameters().items():
        np.testing.assert_array_equal(saved[name], value, err_msg=name)


def test_settings_refuse_what_no_run_takes():
    from runtime.errors import UsageError
    from runtime.train.config import settings

    with pytest.raises(UsageError, match="unknown training setting 'epoch'"):
        settings({}, {"epoch": 3})
    with pytest.raises(UsageError, match="training setting 'unfreeze': '3' is not EPOCH:PATTERN"):
        settings({"unfreeze": ["3"]})
    with pytest.raises(TrainingError, match="in config or as keywords, not both"):
        fit(None, None, TrainConfig(), epochs=2)


def test_the_spec_language_and_the_runtime_know_the_same_training_settings():
    from archc.spec.document import TRAINING_KEYS
    from runtime.train.config import KEYS

    assert sorted(TRAINING_KEYS) == sorted(KEYS)


def test_fractalnet_with_drop_path_learns_the_digits(tmp_path):
    """A small FractalNet (three blocks of three columns, 8x8 digits), local and global
    drop-path and the paper's dropout on: it learns, and the inference pass (joins as
    means) is what is evaluated."""
    graph = archc.load(SPECS / "fractalnet.yaml", num_blocks=3, width=0.25, resolution=8,
                       channels=1)
    joins = [n for n in graph if n.op == "join"]
    assert len(joins) == 6 and all(n.attrs["drop_path"] == 0.15 for n in joins)
    digits = data.load("digits", (1, 8, 8), seed=0)
    model = archc.compile(graph, backend="cpu", seed=0)
    untrained = evaluate(model, digits.test)["accuracy"]
    history = fit(model, digits, TrainConfig(epochs=8, batch_size=32, lr=0.05), tmp_path,
                  report=lambda line: None)
    assert untrained < 0.3 and history[-1]["test_accuracy"] > 0.85
    assert history[-1]["train_loss"] < history[0]["train_loss"] / 2


AUXILIARY = """
name: aux
input: {channels: 1, height: 8, width: 8}
layers:
  - conv2d: [6, 3, 1, 1]
    name: trunk
  - relu
  - sequential: [global_avg_pool2d, flatten, {linear: 10}]
    name: side
  - max_pool2d: 2
    input: relu
  - flatten
  - linear: 10
    name: fc
output: fc
training_outputs:
  side: {output: side, loss_weight: 0.3}
"""


def test_a_training_output_adds_its_weighted_loss_and_is_left_out_of_inference(digits,
                                                                               tmp_path):
    """GoogLeNet's scheme: the loss of each training output on the same targets, times
    its weight, added to the network's; PyTorch's autograd of that sum gives the same
    gradients. Evaluation and predictions see the network's output alone."""
    from runtime.train.loop import _auxiliary, _with_auxiliary
    from runtime.train.tasks import Classification

    model = archc.compile(archc.load("aux.yaml", text=AUXILIARY), backend="reference",
                          seed=3, dtype="float64")
    x = np.random.default_rng(0).standard_normal((4, 1, 8, 8))
    y = np.array([1, 7, 3, 3])
    assert model(x).shape == (4, 10)  # inference: one output
    model.train()
    out, aux = _auxiliary(model, model(x))
    assert out.shape == (4, 10) and set(aux) == {"side"}
    task = Classification([str(c) for c in range(10)])
    loss, grad, _, _ = task.step(model, out, y)
    loss, grads = _with_auxiliary(model, task, aux, y, loss, grad)
    ours = model.backward(grads)
    twin = torch.nn.ModuleDict({"trunk": torch.nn.Conv2d(1, 6, 3, 1, 1),
                                "side": torch.nn.Linear(6, 10), "fc": torch.nn.Linear(96, 10)})
    twin = twin.double()
    names = {"trunk": "trunk", "side": "side.2", "fc": "fc"}
    with torch.no_grad():
        for mod, name in names.items():
            twin[mod].weight.copy_(torch.as_tensor(model.params[f"{name}.weight"]))
            twin[mod].bias.copy_(torch.as_tensor(model.params[f"{name}.bias"]))
    h = torch.relu(twin["trunk"](torch.as_tensor(x)))
    main = twin["fc"](torch.nn.functional.max_pool2d(h, 2).flatten(1))
    side = twin["side"](h.mean(dim=(2, 3)))
    target = torch.as_tensor(y)
    total = torch.nn.functional.cross_entropy(main, target) + \
        0.3 * torch.nn.functional.cross_entropy(side, target)
    total.backward()
    assert float(loss) == pytest.approx(total.item(), rel=1e-12)  # read when asked for
    for mod, name in names.items():
        np.testing.assert_allclose(ours.params[f"{name}.weight"], twin[mod].weight.grad.numpy(),
                                   rtol=1e-9, atol=1e-12)
    # the whole loop: it trains, and evaluates on the network's output alone
    small = data.load("digits", (1, 8, 8), seed=0)
    history = fit(archc.compile(archc.load("aux.yaml", text=AUXILIARY), backend="cpu"), small,
                  TrainConfig(epochs=2, batch_size=64, lr=0.1), tmp_path,
                  report=lambda line: None)
    assert history[-1]["test_accuracy"] > 0.3
