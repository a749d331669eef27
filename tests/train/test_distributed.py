"""Data-parallel training (runtime/train/distributed/): sharding, and real jobs of 2 ranks under
mpirun (each rank single-threaded) against single-process runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, strategies as st

from runtime.train import distributed
from runtime.train.data import batch_order
from conftest import ROOT, SPECS

HERE = Path(__file__).parent / "mpi"
TINY_BN = str(HERE / "tiny_bn.yaml")
LENET = str(SPECS / "lenet5.yaml")

try:
    MPIRUN = distributed.mpirun()
    import mpi4py  # noqa: F401
except (distributed.DistributedError, ImportError):
    MPIRUN = None
needs_mpi = pytest.mark.skipif(MPIRUN is None, reason="no mpirun / mpi4py (archc[distributed])")


@given(st.integers(0, 300), st.integers(1, 9))
def test_shards_are_contiguous_disjoint_and_cover(count, size):
    slices = [distributed.shard(count, r, size) for r in range(size)]
    assert slices[0][0] == 0 and slices[-1][1] == count
    assert all(a[1] == b[0] for a, b in zip(slices, slices[1:]))
    sizes = [hi - lo for lo, hi in slices]
    assert max(sizes) - min(sizes) <= 1


def test_an_epochs_shards_follow_the_global_batches():
    """Whatever the number of ranks, the global batches are the single process's."""
    for size in (1, 2, 3):
        seen = []
        for index in batch_order(100, 32, seed=5, epoch=1):
            parts = [index[slice(*distributed.shard(len(index), r, size))] for r in range(size)]
            assert np.array_equal(np.concatenate(parts), index)
            seen += [i for part in parts for i in part]
        assert sorted(seen) == list(range(100))


def test_ring_cost_model():
    link = distributed.Link(alpha=1e-5, beta=1e-9, name="test")
    assert link.ring(1, 1e6) == 0
    # P = 4: 6 latencies and 1.5 times the message over the slowest link
    assert link.ring(4, 1e6) == pytest.approx(6e-5 + 1.5e-3)
    fitted = distributed.fit_link([8, 1 << 20, 1 << 22],
                                  [link.ring(2, n) for n in (8, 1 << 20, 1 << 22)], 2, "fit")
    assert fitted.alpha == pytest.approx(1e-5, rel=1e-6)
    assert fitted.beta == pytest.approx(1e-9, rel=1e-6)
    # buckets hide behind the backward pass except the last one
    hidden = distributed.cost_model(1.0, 0.5, [1 << 20] * 4, 4, link)
    assert hidden["exposed_s"] == pytest.approx(link.ring(4, 1 << 20))
    exposed = distributed.cost_model(1.0, 0.0, [1 << 20] * 4, 4, link)
    assert exposed["exposed_s"] == pytest.approx(4 * link.ring(4, 1 << 20))
    assert exposed["efficiency"] < hidden["efficiency"] < 1


def _env() -> dict:
    env = distributed.launch_env(threads=1)
    env.update(distributed.ROOT_ENV, PYTHONPATH=str(HERE.parent))
    return env


def mpi(ranks: int, *argv: str, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run([MPIRUN, "-n", str(ranks), sys.executable, *argv], env=_env(),
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def single(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "archc", *argv], env=_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=240)


def weights(run: Path, pointer: str = "last.json") -> dict:
    folder = json.loads((run / pointer).read_text())["checkpoint"]
    with np.load(run / folder / "weights.npz") as saved:
        return dict(saved)


def assert_close(a: dict, b: dict, tol: float = 2e-5) -> None:
    assert a.keys() == b.keys()
    for k in a:
        scale = max(1.0, float(np.abs(b[k]).max()))
        assert np.abs(a[k] - b[k]).max() <= tol * scale, k


TRAIN = ["--data", "digits", "--batch-size", "64", "--schedule", "constant", "--lr", "0.05"]


@needs_mpi
@pytest.mark.parametrize("spec,extra", [(LENET, ["--batch-size", "63"]), (TINY_BN, ["--sync-bn"]),
                                         (TINY_BN, ["--sync-bn", "--backend", "reference"])],
                         ids=["no-batch-norm", "sync-bn", "sync-bn-reference"])
def test_two_ranks_train_as_one_process(tmp_path, spec, extra):
    """The same global batches and seed: 2 ranks end at a single process's weights (to
    float32 reduction order; with shards of unequal size too), and read disjoint shards
    covering the epoch."""
    two, one = tmp_path / "two", tmp_path / "one"
    args = ["train", spec, *TRAIN, "--epochs", "1", *extra]
    done = mpi(2, str(HERE / "worker.py"), "record", str(tmp_path / "read"), "--",
               *args, "--out", str(two), "--distributed")
    assert done.returncode == 0, done.stderr
    assert ("data parallel on 2 ranks: global batch 63, 32 or fewer per rank" if extra[0] ==
            "--batch-size" else "data parallel on 2 ranks: global batch 64, 32 per rank") \
        in done.stdout
    assert done.stdout.count("epoch 1/1") == 1  # one rank reports
    solo = single(*args, "--out", str(one))
    assert solo.returncode == 0, solo.stderr
    assert_close(weights(two), weights(one))
    log = [json.loads(line) for line in (two / "log.jsonl").read_text().splitlines()]
    assert [row["ranks"] for row in log] == [2] and log[0]["communication_s"] > 0
    assert log[-1]["train_loss"] == pytest.approx(
        json.loads((one / "log.jsonl").read_text().splitlines()[-1])["train_loss"], rel=1e-4)
    # the shards: each step, the two ranks' slices of one global batch, disjoint; over
    # the epoch (1,438 images, 23 steps), every image once
    read = [json.loads((tmp_path / f"read.{r}").read_text()) for r in (0, 1)]
    assert len(read[0]) == len(read[1]) == 23
    assert sorted(i for r in (0, 1) for step in read[r] for i in step) == list(range(1438))
    for mine, theirs in zip(*read):
        assert not set(mine) & set(theirs) and abs(len(mine) - len(theirs)) <= 1


@needs_mpi
def test_per_rank_batch_norm_keeps_the_ranks_equal(tmp_path):
    """Without --sync-bn each rank normalises with its own batch's statistics; the
    weights and the (averaged) running statistics stay the same on every rank, and
    training still learns."""
    run, record = tmp_path / "run", tmp_path / "record"
    done = mpi(2, str(HERE / "worker.py"), "record", str(record), "--", "train", TINY_BN,
               *TRAIN, "--epochs", "2", "--out", str(run), "--distributed")
    assert done.returncode == 0, done.stderr
    assert "batch norm per rank" in done.stdout
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert log[-1]["test_accuracy"] > 0.5
    ranks = [dict(np.load(f"{record}.weights.{r}.npz")) for r in (0, 1)]
    for k in ranks[0]:
        assert np.array_equal(ranks[0][k], ranks[1][k]), k
    saved = weights(run)
    assert_close(saved, ranks[0], 0)
    assert saved["batchnorm2d.num_batches_tracked"] == 2 * 23


@needs_mpi
def test_resume_a_two_rank_checkpoint_on_one_rank(tmp_path):
    """Epoch 1 on 2 ranks, epoch 2 resumed by a single process: the weights of an
    uninterrupted single-process run (the data order follows the global step)."""
    run, straight = tmp_path / "run", tmp_path / "straight"
    common = ["train", TINY_BN, *TRAIN, "--sync-bn"]
    done = mpi(2, "-m", "archc", *common, "--epochs", "1", "--out", str(run), "--distributed")
    assert done.returncode == 0, done.stderr
    resumed = single(*common, "--epochs", "2", "--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr
    assert "epoch 2/2" in resumed.stdout and "epoch 1/2" not in resumed.stdout
    assert single(*common, "--epochs", "2", "--out", str(straight)).returncode == 0
    assert_close(weights(run), weights(straight))


def _rank_pids(mpirun_pid: int, rank: int) -> list[int]:
    """The processes under an mpirun that run the given rank."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            if f"OMPI_COMM_WORLD_RANK={rank}".encode() not in environ:
                continue
            pid = int(entry.name)
            while pid > 1:  # under our mpirun?
                stat = Path(f"/proc/{pid}/stat").read_text()
                pid = int(stat.rsplit(")", 1)[1].split()[1])
                if pid == mpirun_pid:
                    found.append(int(entry.name))
                    break
        except (OSError, ValueError):
            continue
    return found


@needs_mpi
def test_a_killed_rank_stops_the_job_and_keeps_the_checkpoint(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([MPIRUN, "-n", "2", sys.executable, "-m", "archc", "train", LENET,
                             *TRAIN, "--epochs", "100", "--out", str(run), "--distributed"],
                            env=_env(), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while not (run / "last.json").is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (run / "last.json").is_file(), "no checkpoint appeared"
        victims = _rank_pids(proc.pid, 1)
        assert victims, "rank 1's process was not found"
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "rank 1" in out and "epoch 100/100" not in out
    saved = weights(run)  # the checkpoint last.json names is whole
    assert set(saved) >= {"c1.weight", "fc3.bias"}
    done = json.loads((run / "last.json").read_text())["checkpoint"]
    resumed = single("train", LENET, *TRAIN, "--epochs", str(int(done[-4:]) + 2),
                     "--resume", str(run))  # one more epoch, on one process
    assert resumed.returncode == 0, resumed.stderr
    assert f"epoch {int(done[-4:]) + 2}/" in resumed.stdout


@needs_mpi
def test_a_rank_that_raises_stops_the_job_and_the_run_resumes_from_the_last_step(tmp_path):
    """Rank 1 fails at global step 30 of a run checkpointing every 5 steps: the job stops
    with the rank's name, the checkpoint of step 30 (epoch 2, step 7) is whole, and one
    process resumes it from step 31 to a straight single-process run's weights."""
    run, straight = tmp_path / "run", tmp_path / "straight"
    common = ["train", LENET, *TRAIN, "--epochs", "2", "--checkpoint-every", "5"]
    done = mpi(2, str(HERE / "worker.py"), "fail", "31", "--", *common, "--out", str(run),
               "--distributed")
    assert done.returncode != 0
    err = done.stderr
    assert "[rank 1 of 2] archc: internal error: RuntimeError: injected failure at step 31" in err
    assert "archc: rank 1 of 2 failed (exit code 1); stopping all 2 ranks" in err
    assert json.loads((run / "last.json").read_text())["checkpoint"] == "ckpt-0001-000007"
    assert len((run / "log.jsonl").read_text().splitlines()) == 1
    resumed = single(*common, "--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr
    assert "epoch 2/2" in resumed.stdout and "epoch 1/2" not in resumed.stdout
    assert single(*common, "--out", str(straight)).returncode == 0
    assert_close(weights(run), weights(straight))
    rows = [[json.loads(line) for line in (path / "log.jsonl").read_text().splitlines()]
            for path in (run, straight)]
    assert rows[0][1]["train_loss"] == pytest.approx(rows[1][1]["train_loss"], rel=1e-4)


@pytest.mark.parametrize("spec", [LENET, TINY_BN, str(SPECS / "resnet20.yaml")])
def test_backward_reports_each_gradient_once_when_final(spec):
    """Model.backward(on_grad=): every trainable parameter once, in the order the
    reducer's buckets expect, with the gradient backward() returns."""
    from archc import compile, load

    model = compile(load(spec), backend="cpu").train()
    shape = next(iter(model.program.inputs.values()))
    x = np.random.default_rng(0).standard_normal((2,) + shape).astype(np.float32)
    out = model(x)
    calls = []
    grads = model.backward(np.ones_like(out),
                           on_grad=lambda name, g: calls.append((name, g.copy()))).params
    names = [name for name, _ in calls]
    assert sorted(names) == sorted(grads)
    assert names == distributed.readiness_order(model, grads)
    for name, g in calls:
        assert np.array_equal(g, grads[name]), name


class Ranks:
    """A stand-in for the ranks of a job, for SyncBatchNorm's arithmetic: every rank's
    contribution is given up front."""

    def __init__(self, contributions):
        self.contributions = contributions

    def gather(self, values):
        return np.stack(self.contributions)

    def sum(self, values):
        return np.sum(self.contributions, axis=0)


def test_sync_batch_norm_combines_moments_and_weights_sums():
    rng = np.random.default_rng(1)
    parts = [rng.standard_normal((n, 3)) * 5 + 100 for n in (7, 5, 1)]
    every = np.concatenate(parts)
    local = [np.concatenate([[len(p)], p.mean(0), p.var(0)]) for p in parts]
    count, mean, var = distributed.SyncBatchNorm(Ranks(local)).moments(7, parts[0].mean(0),
                                                                       parts[0].var(0))
    assert count == 13
    np.testing.assert_allclose(mean, every.mean(0), rtol=1e-12)
    np.testing.assert_allclose(var, every.var(0), rtol=1e-10)
    # the backward sums: weighted by each rank's share, over this rank's share
    weights, sums = [0.5, 0.25, 0.25], [np.array([1.0, 2.0]), np.array([3.0, 4.0]),
                                        np.array([5.0, 6.0])]
    sync = distributed.SyncBatchNorm(Ranks([w * s for w, s in zip(weights, sums)]))
    sync.weight = 0.5
    (got,) = sync.grad_sums(sums[0])
    np.testing.assert_allclose(got, (0.5 * sums[0] + 0.25 * sums[1] + 0.25 * sums[2]) / 0.5)


@needs_mpi
def test_two_ranks_on_the_cuda_backend(tmp_path):
    """Each rank trains on the device (the simulator in CI), gradients staged through the
    host for MPI: the weights of a single process on the CPU."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 20)
    x = rng.standard_normal((20, 1, 4, 4)).astype(np.float32) + y[:, None, None, None]
    np.savez(tmp_path / "d.npz", x=x, y=y)
    spec = tmp_path / "small.yaml"
    spec.write_text("input: {channels: 1, height: 4, width: 4}\nlayers:\n"
                    "  - conv2d: {out_channels: 4, kernel_size: 3, padding: 1}\n"
                    "  - relu\n  - flatten\n  - linear: 3\n")
    common = ["train", str(spec), "--data", f"npz:{tmp_path / 'd.npz'}", "--batch-size", "8",
              "--epochs", "2", "--optimizer", "adam", "--lr", "0.01"]
    done = mpi(2, "-m", "archc", *common, "--backend", "cuda", "--out", str(tmp_path / "gpu"),
               "--distributed")
    assert done.returncode == 0, done.stderr
    assert single(*common, "--out", str(tmp_path / "cpu")).returncode == 0
    assert_close(weights(tmp_path / "gpu"), weights(tmp_path / "cpu"), 1e-4)
    refused = mpi(2, "-m", "archc", *common, "--backend", "cuda", "--sync-bn",
                  "--out", str(tmp_path / "x"), "--distributed")
    assert refused.returncode == 2
    assert "--sync-bn runs on the cpu and reference backends" in refused.stderr


@needs_mpi
def test_archc_bench_distributed(tmp_path):
    done = single("bench", LENET, "--distributed", "--batch", "8", "--repeat", "3", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    one, two = report["measured"]
    assert (one["ranks"], two["ranks"]) == (1, 2)
    assert one["comm_share"] == 0 and 0 < two["comm_share"] < 1
    assert 0 < two["efficiency"] < 2 and 0 < two["predicted_efficiency"] <= 1
    assert [r["ranks"] for r in report["runs"]] == [1, 2]
    assert report["links"][0]["alpha_s"] >= 0 and report["links"][0]["beta_s_per_byte"] > 0
    predicted = {(p["link"], p["ranks"]): p["efficiency"] for p in report["predicted"]}
    network = report["links"][1]["name"]
    assert predicted[network, 64] < predicted[network, 2]  # more ranks, more communication
    text = single("bench", LENET, "--distributed", "--batch", "8", "--repeat", "2",
                  "--ranks", "2", "--device", "h100")
    assert text.returncode == 0, text.stderr
    assert "the roofline estimate on h100" in text.stdout
    assert "Cost model (ring all-reduce, alpha-beta)" in text.stdout


def test_without_mpi4py_distributed_says_what_to_install(monkeypatch, capsys):
    from archc.cli import main

    monkeypatch.setitem(sys.modules, "mpi4py", None)  # as if it were not installed
    assert main(["train", LENET, "--data", "digits", "--distributed"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --distributed needs mpi4py and an MPI library")
    assert "pip install 'archc[distributed]'" in err


def test_a_batch_too_small_for_the_ranks_is_refused():
    from archc import compile, load
    from runtime.train.loop import TrainConfig, TrainingError, _check_parallel

    model = compile(load(LENET), backend="cpu")
    two = distributed.World()
    two.size = 2
    with pytest.raises(TrainingError, match="a global batch of 1 cannot be shared by 2 "
                                            "ranks: give --batch-size 2 or more"):
        _check_parallel(model, TrainConfig(batch_size=1), two, 100)
