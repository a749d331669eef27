"""`archc sweep`: points of a design space analysed, constrained, and their Pareto front;
resumed after a stop without redoing finished points."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from archc import sweep
from archc.analysis import analyse
from archc.cli import main

SPACE = """
name: space
variables:
  width: 8
  depth: 1
  k: 3
input: {channels: 3, height: 16, width: 16}
layers:
  - conv2d: {out_channels: width, kernel_size: k, padding: k // 2}
    repeat: depth
  - global_avg_pool2d
  - flatten
  - linear: 10
"""


@pytest.fixture
def space(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(SPACE)
    return path


def test_points_are_the_grid_times_the_draws_and_repeat_for_a_seed():
    grid = [sweep.grid_values("width=[8, 16]"), sweep.grid_values("k=[1, 3]")]
    samples = [sweep.sampler("depth=randint(1, 4)"), sweep.sampler("lr=loguniform(1e-4, 1e-1)")]
    points = sweep.points(grid, samples, count=5, seed=3)
    assert len(points) == 4 * 5 and points == sweep.points(grid, samples, count=5, seed=3)
    assert {(p["width"], p["k"]) for p in points} == {(8, 1), (8, 3), (16, 1), (16, 3)}
    assert all(1 <= p["depth"] <= 4 and 1e-4 <= p["lr"] <= 1e-1 for p in points)
    assert sweep.points(grid, [], count=5, seed=0) == [
        {"width": 8, "k": 1}, {"width": 8, "k": 3}, {"width": 16, "k": 1}, {"width": 16, "k": 3}]
    choice = sweep.sampler("act=choice(['relu', 'silu'])")[1]
    assert {choice(random.Random(s)) for s in range(20)} == {"relu", "silu"}


def test_the_front_is_what_no_point_beats():
    rng = random.Random(0)
    records = [{"params": rng.randint(1, 30), "macs": rng.randint(1, 30), "i": i}
               for i in range(200)]
    front = sweep.pareto_front(records, ["params", "macs"])
    for r in records:  # on the front exactly when nothing is as good everywhere and better once
        beaten = any(o["params"] <= r["params"] and o["macs"] <= r["macs"]
                     and (o["params"], o["macs"]) != (r["params"], r["macs"]) for o in records)
        assert (r in front) == (not beaten)


def test_sweep_analyses_constrains_and_resumes(space, tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["sweep", str(space), "--grid", "width=[4, 8, 16, 32]", "--grid", "k=[1, 3, 5, 0]",
            "--sample", "depth=randint(1, 3)", "--count", "3", "--where", "params < 20000",
            "--out", str(out), "--jobs", "1"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    drawn = sweep.points([sweep.grid_values("width=[4, 8, 16, 32]"),
                          sweep.grid_values("k=[1, 3, 5, 0]")],
                         [sweep.sampler("depth=randint(1, 3)")], count=3, seed=0)
    distinct = len({sweep.key(p) for p in drawn})  # a repeated draw is analysed once
    assert printed.startswith(f"{distinct} points, 0 done before")
    records = [json.loads(line) for line in (out / "points.jsonl").read_text().splitlines()]
    assert len(records) == distinct
    bad = [r for r in records if "error" in r]
    assert bad and all(r["point"]["k"] == 0 for r in bad)  # a 0x0 kernel
    assert all("error" in r for r in records if r["point"]["k"] == 0)
    for r in records[:5]:  # each point's numbers are archc summary's for its variables
        if "error" not in r:
            import archc

            totals = analyse(archc.load(space, **r["point"])).totals
            assert (r["params"], r["macs"]) == (totals["params"], totals["macs"])
    ok = [r for r in records if "error" not in r and r["params"] < 20000]
    front = json.loads((out / "front.json").read_text())
    assert front == sweep.pareto_front(ok, ["params", "macs"]) and front
    assert f"{len(ok)} feasible (params < 20000), {len(bad)} no valid network" in printed
    assert (out / "front.png").read_bytes().startswith(b"\x89PNG")
    figure = sweep.front_figure(ok, front, ["params", "macs"])
    scatter, line = figure.axes[0].collections[0], figure.axes[0].get_lines()[0]
    assert len(scatter.get_offsets()) == len(ok) and len(line.get_xdata()) == len(front)
    # stopped half-way: the rerun analyses only what is missing, and finds the same front
    lines = (out / "points.jsonl").read_text().splitlines()
    (out / "points.jsonl").write_text("\n".join(lines[:20]) + "\n")
    assert main([*args[:-2], "--jobs", "2"]) == 0
    assert capsys.readouterr().out.startswith(
        f"{distinct} points, 20 done before; analysing {distinct - 20} on 2")
    assert json.loads((out / "front.json").read_text()) == front
    assert len((out / "points.jsonl").read_text().splitlines()) == distinct


@pytest.mark.parametrize("extra, message", [
    (["--grid", "width=8"], "--grid expects NAME=[v1, v2, ...]"),
    (["--sample", "width=normal(1, 2)"], "--sample expects NAME=DISTRIBUTION(...)"),
    (["--sample", "width=uniform(5, 1)"], "uniform takes two numbers, low <= high"),
    (["--grid", "width=[8]", "--where", "params <"], "--where: invalid expression"),
    (["--grid", "width=[8]", "--where", "parms < 5"], "--where: undefined name 'parms'"),
    (["--grid", "width=[8]", "--objectives", "params,speed"], "--objectives: unknown 'speed'"),
    (["--grid", "width=[8]", "--objectives", "latency_s"], "needs --device"),
    ([], "a sweep needs --grid or --sample"),
])
def test_mistakes_are_refused_before_any_work(space, tmp_path, capsys, extra, message):
    assert main(["sweep", str(space), *extra, "--out", str(tmp_path / "s")]) == 2
    assert message in capsys.readouterr().err


def test_damaged_results_are_refused_with_their_name(space, tmp_path, capsys):
    out = tmp_path / "s"
    out.mkdir()
    (out / "points.jsonl").write_text('{"point": {"width": 8}, "error": "x"}\n{oops\n')
    assert main(["sweep", str(space), "--grid", "width=[8]", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "points.jsonl, line 2, is not valid JSON" in err and len(err.strip().splitlines()) == 1
    (out / "points.jsonl").write_text('{"point": {"width": 8}, "params": "many", "macs": 1}\n')
    assert main(["sweep", str(space), "--grid", "width=[8]", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "points.jsonl, line 1, has neither the point's numbers" in err
    assert len(err.strip().splitlines()) == 1


def test_successive_halving_promotes_only_the_best_and_replays_to_the_same_state():
    rungs = sweep.rungs(1, 9, 3)
    assert rungs == [1, 3, 9] and sweep.rungs(1, 10, 3) == [1, 3, 9, 10]
    assert sweep.rungs(2, 2, 3) == [2]
    score = {f"t{i}": (i * 7) % 10 / 10 for i in range(9)}  # a trial's quality, by rung too
    for slots in (1, 3):
        asha = sweep.Asha(list(score), rungs, eta=3)
        running, finished = [], []
        while not asha.finished():
            while len(running) < slots and (job := asha.next()) is not None:
                trial, rung = job
                if rung:  # promoted: among the best third of those that finished the rung
                    below = asha.scores[rung - 1]
                    ranked = sorted(below, key=lambda t: -below[t])
                    assert trial in ranked[:max(1, len(below) // 3)]
                running.append(job)
            trial, rung = running.pop(0)
            asha.done(trial, rung, score[trial] + rung / 100)
            finished.append((trial, rung, score[trial] + rung / 100))
        reached = {t: asha.reached(t) for t in score}
        best = max(score, key=score.get)
        assert reached[best] == 2  # the best trial trains to the end
        assert sum(r >= 1 for r in reached.values()) < 9  # and the bad ones stop early
        again = sweep.Asha(list(score), rungs, eta=3)  # an interrupted sweep, rerun
        for trial, rung, value in finished:
            again.done(trial, rung, value)
        assert again.finished() and again.scores == asha.scores
    picked = sweep.spread([{"macs": m} for m in (5, 1, 4, 2, 3)], 3, "macs")
    assert [r["macs"] for r in picked] == [1, 3, 5]


DIGITS = """
name: tiny
variables:
  width: 8
input: {channels: 1, height: 8, width: 8}
layers:
  - conv2d: {out_channels: width, kernel_size: 3, padding: 1}
  - relu
  - max_pool2d: 2
  - flatten
  - linear: 10
"""
TRAIN = ["--", "--data", "digits", "--epochs", "3", "--batch-size", "64", "--lr", "0.1"]


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_sweep_trains_the_points_stops_bad_ones_and_a_rerun_goes_on(tmp_path, capsys):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(DIGITS)
    out = tmp_path / "s"
    args = ["sweep", str(spec), "--grid", "width=[1, 2, 4, 8, 16]", "--objectives", "macs",
            "--out", str(out), "--jobs", "1", "--train", "4", *TRAIN]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "training 4 points (rungs at 1, 3 epochs, the best 1/3 go on)" in printed
    rows = _rows(out / "trials.jsonl")
    trained = {r["point"]["width"] for r in rows}
    assert trained == {1, 2, 8, 16}  # spread from the smallest network to the largest
    final = [r for r in rows if r["rung"] == 1]
    assert final and all(r["epochs"] == 3 for r in final) and len(final) < 4
    for r in rows:  # each row is the trial's own log's best
        log = _rows(out / "trials" / r["trial"] / "log.jsonl")
        assert r["score"] == max(row["test_accuracy"] for row in log[:r["epochs"]])
    best = max(rows, key=lambda r: r["score"])
    assert best["rung"] == 1  # the best trial trained to the last epoch
    front = json.loads((out / "trained.json").read_text())
    assert front and all(r["metric"] == "accuracy" for r in front)
    assert (out / "trained.png").read_bytes().startswith(b"\x89PNG")
    # a rerun trains nothing again; other training flags are refused for the same folder
    attempts = {t.name: (t / "attempts.jsonl").read_text() for t in (out / "trials").iterdir()}
    assert main(args) == 0
    assert f"{len(rows)} rung results from before" in capsys.readouterr().out
    assert {t.name: (t / "attempts.jsonl").read_text()
            for t in (out / "trials").iterdir()} == attempts
    assert main([*args[:-1], "4"]) == 2
    assert "were trained with other settings" in capsys.readouterr().err
    lines = (out / "trials.jsonl").read_text().splitlines()
    damaged = json.loads(lines[1])
    damaged["score"] = "high"
    (out / "trials.jsonl").write_text("\n".join([lines[0], json.dumps(damaged)]) + "\n")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "trials.jsonl, line 2, is not a trial's result" in err and len(err.splitlines()) == 1


def test_a_set_among_the_training_flags_changes_a_variable_for_training_only(tmp_path):
    """The point is analysed as swept (width 4) and trained with width 8."""
    spec = tmp_path / "tiny.yaml"
    spec.write_text(DIGITS)
    out = tmp_path / "s"
    assert main(["sweep", str(spec), "--grid", "width=[4]", "--out", str(out), "--jobs", "1",
                 "--train", "1", "--min-epochs", "1", "--", "--data", "digits", "--epochs",
                 "1", "--set", "width=8"]) == 0
    assert _rows(out / "points.jsonl")[0]["params"] == 4 * 9 + 4 + 4 * 16 * 10 + 10
    (trial,) = (out / "trials").iterdir()
    weights = np.load(next(trial.glob("ckpt-*/weights.npz")))
    assert weights["conv2d.weight"].shape == (8, 1, 3, 3)


@pytest.mark.parametrize("extra, message", [
    (["--train", "3", "--", "--out", "x"], "training flag --out: the sweep sets it"),
    (["--train", "some"], "--train takes a number of points or 'front'"),
    (["--", "--epochs", "2"], "need --train K"),
    (["--train", "2", "--", "--epochs", "two"], "argument --epochs"),
    (["--address", "h:1"], "--address is a Ray cluster's"),
])
def test_training_mistakes_are_refused_before_any_work(space, tmp_path, capsys, extra, message):
    assert main(["sweep", str(space), "--grid", "width=[8]", "--out", str(tmp_path / "s"),
                 *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "s" / "points.jsonl").exists()


def _kill_a_trial_worker_halfway(command, trial_folder, cwd):
    """Run a sweep that trains one trial; SIGKILL the process training it once two of its
    epochs are checkpointed; the sweep's output, the attempts and the log."""
    sweep_run = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
    deadline, killed = time.monotonic() + 240, False
    try:
        while sweep_run.poll() is None and time.monotonic() < deadline and not killed:
            log, attempts = trial_folder / "log.jsonl", trial_folder / "attempts.jsonl"
            if log.exists() and len(log.read_text().splitlines()) >= 2:
                os.kill(_rows(attempts)[0]["pid"], signal.SIGKILL)
                killed = True
            time.sleep(0.02)
        output = sweep_run.communicate(timeout=max(1, deadline - time.monotonic()))[0]
    finally:
        sweep_run.kill()
    assert killed and sweep_run.returncode == 0, output
    return output, _rows(trial_folder / "attempts.jsonl"), _rows(trial_folder / "log.jsonl")


def _trial_folder(out, point):
    import hashlib

    return out / "trials" / hashlib.sha1(sweep.key(point).encode()).hexdigest()[:10]


LONG = ["--min-epochs", "12", "--", "--data", "digits", "--epochs", "12", "--batch-size", "32"]


def test_a_trial_whose_worker_dies_goes_on_from_its_checkpoint_locally(tmp_path):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(DIGITS)
    out = tmp_path / "s"
    output, attempts, log = _kill_a_trial_worker_halfway(
        [sys.executable, "-m", "archc", "sweep", str(spec), "--grid", "width=[16]",
         "--out", str(out), "--jobs", "1", "--train", "1", *LONG],
        _trial_folder(out, {"width": 16}), tmp_path)
    assert len(attempts) == 2 and attempts[1]["pid"] != attempts[0]["pid"]
    assert 2 <= attempts[1]["from_epoch"] < 12  # not from the start
    assert [row["epoch"] for row in log] == list(range(1, 13))  # every epoch once
    assert "12 epochs, accuracy" in output


@pytest.fixture
def ray_cluster(tmp_path):
    """A Ray cluster of this machine with 2 CPUs, as 'ray start --head' makes one; its
    address. Killed, with every process it started, at the end."""
    pytest.importorskip("ray", reason="Ray is archc[sweep]'s (pip install 'archc[sweep]')")
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # its socket paths must stay short
    head = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--port",
         str(port), "--num-cpus", "2", "--include-dashboard=false", "--disable-usage-stats",
         "--temp-dir", temp], start_new_session=True, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()
        shutil.rmtree(temp, ignore_errors=True)


def test_ray_gives_the_local_front_and_resumes_a_trial_whose_worker_dies(ray_cluster, space,
                                                                          tmp_path, capsys):
    """One test for both, so that one Ray cluster runs at a time under xdist."""
    base = ["sweep", str(space), "--grid", "width=[4, 8, 16, 32]", "--sample",
            "depth=randint(1, 3)", "--sample", "k=choice([1, 3])", "--count", "4"]
    assert main([*base, "--out", str(tmp_path / "local"), "--jobs", "2"]) == 0
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "ray"), "--engine", "ray", "--address",
                 ray_cluster]) == 0
    assert "on Ray, 2 CPUs on 1 machine" in capsys.readouterr().out
    for name in ("front.json", "points.jsonl"):
        local, ray = (sorted(_rows(tmp_path / engine / name) if name.endswith("l")
                             else json.loads((tmp_path / engine / name).read_text()),
                             key=lambda r: sweep.key(r["point"])) for engine in ("local", "ray"))
        assert ray == local and ray, name
    # a trial's Ray worker killed: Ray runs the task again, and it goes on from the checkpoint
    spec = tmp_path / "tiny.yaml"
    spec.write_text(DIGITS)
    out = tmp_path / "trained"
    output, attempts, log = _kill_a_trial_worker_halfway(
        [sys.executable, "-m", "archc", "sweep", str(spec), "--grid", "width=[16]",
         "--out", str(out), "--engine", "ray", "--address", ray_cluster, "--train", "1",
         "--trial-cpus", "2", *LONG], _trial_folder(out, {"width": 16}), tmp_path)
    assert len(attempts) == 2 and attempts[1]["pid"] != attempts[0]["pid"]
    assert 2 <= attempts[1]["from_epoch"] < 12
    assert [row["epoch"] for row in log] == list(range(1, 13))
    assert "12 epochs, accuracy" in output


def test_an_optuna_search_trains_feasible_proposals_and_a_rerun_goes_on(tmp_path, capsys):
    """Optuna proposes, archc analyses: proposals that break --where are told to Optuna as
    infeasible and never trained; K feasible points are trained; the same seed proposes
    the same points; a rerun with a larger K trains only the new ones."""
    spec = tmp_path / "tiny.yaml"
    spec.write_text(DIGITS)

    def run(out, k):
        return main(["sweep", str(spec), "--search", "optuna", "--sample",
                     "width=randint(1, 40)", "--where", "params < 3000", "--out", str(out),
                     "--jobs", "1", "--train", str(k), "--seed", "3", "--", "--data",
                     "digits", "--epochs", "1", "--batch-size", "128"])

    assert run(tmp_path / "a", 4) == 0
    assert "Optuna's TPE sampler (seed 3) proposes points under params < 3000" in \
        capsys.readouterr().out
    analysed = _rows(tmp_path / "a" / "points.jsonl")
    trained = {r["trial"]: r["point"]["width"] for r in _rows(tmp_path / "a" / "trials.jsonl")}
    assert len(trained) == 4
    params = {r["point"]["width"]: r["params"] for r in analysed}
    assert all(params[w] < 3000 for w in trained.values())  # width 17 at most
    assert len({sweep.key(r["point"]) for r in analysed}) == len(analysed)  # none twice
    assert run(tmp_path / "b", 4) == 0  # the same seed, the same proposals
    capsys.readouterr()
    assert {r["trial"] for r in _rows(tmp_path / "b" / "trials.jsonl")} == set(trained)
    attempts = {t: (tmp_path / "a" / "trials" / t / "attempts.jsonl").read_text() for t in trained}
    assert run(tmp_path / "a", 6) == 0
    more = {r["trial"] for r in _rows(tmp_path / "a" / "trials.jsonl")}
    assert len(more) == 6 and set(trained) < more
    assert {t: (tmp_path / "a" / "trials" / t / "attempts.jsonl").read_text()
            for t in trained} == attempts  # the first four not trained again
    assert main(["sweep", str(spec), "--search", "optuna", "--sample", "width=randint(1, 9)",
                 "--out", str(tmp_path / "c")]) == 2
    assert "--search optuna proposes points to train: give --train K" in capsys.readouterr().err


def test_a_search_that_finds_no_feasible_point_stops_with_the_reason(tmp_path, capsys):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(DIGITS)
    assert main(["sweep", str(spec), "--search", "optuna", "--sample", "width=randint(1, 3)",
                 "--where", "params < 10", "--out", str(tmp_path / "s"), "--jobs", "1",
                 "--train", "2", "--", "--data", "digits", "--epochs", "1"]) == 0
    printed = capsys.readouterr().out
    assert f"no feasible point in {sweep.MAX_TRIES} proposals: the search stops" in printed
    assert len(_rows(tmp_path / "s" / "points.jsonl")) == 3  # each width analysed once
    assert not (tmp_path / "s" / "trials.jsonl").exists()
