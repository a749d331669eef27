"""`archc sweep`: points of a design space analysed, constrained, and their Pareto front;
resumed after a stop without redoing finished points."""

from __future__ import annotations

import json
import random

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
    (out / "points.jsonl").write_text('{"point": {"width": 8}, "params": 1}\n{oops\n')
    assert main(["sweep", str(space), "--grid", "width=[8]", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "points.jsonl, line 2, is not valid JSON" in err and len(err.strip().splitlines()) == 1
