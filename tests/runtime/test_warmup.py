"""Compiling a network's kernels in helper processes on its first pass (runtime.warmup).

The suite runs with ``ARCHC_COMPILE_JOBS=1`` (conftest); these tests turn the helpers on
where they need them."""

from __future__ import annotations

import contextlib
import glob
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

import archc
from runtime import warmup
from runtime.errors import UsageError

NET = """name: warm
input: {channels: 3, height: 12, width: 12}
layers:
  - conv2d: {out_channels: 8, kernel_size: 3, padding: 1}
  - relu
  - conv2d: {out_channels: 8, kernel_size: 3, padding: 1}
  - relu
  - max_pool2d: 2
  - flatten
  - linear: {out_features: 5}
"""


def _model(write_spec, **kwargs):
    return archc.compile(archc.load(write_spec(NET)), backend="cpu", **kwargs)


def test_one_op_of_each_kind_and_algorithm_each_way(write_spec):
    program = _model(write_spec).program
    kinds = [op.kind for op in program.ops]
    assert kinds == ["conv2d", "relu", "conv2d", "relu", "max_pool2d", "flatten", "linear"]

    def algorithm(op, batch, train):
        return ("direct", "") if op.kind == "conv2d" else None

    forward, backward = warmup.firsts(program, algorithm, 2, True)
    # the first conv reads the network's input (no input gradient in a training step):
    # its kernels may differ from the second's
    assert forward == [0, 1, 2, 4, 5, 6]
    assert backward == [0, 2, 3, 4, 5, 6]  # the last of each, the first backward reaches
    same = warmup.firsts(program, lambda op, b, t: ("one", ""), 2, False)
    assert same[0] == [0, 1, 2, 4, 5, 6]


def test_a_work_item_goes_to_one_claimant(tmp_path):
    assert warmup.claim(str(tmp_path), "f3")
    assert not warmup.claim(str(tmp_path), "f3")
    assert warmup.claim(str(tmp_path), "b3")


def test_the_number_of_compiling_processes(monkeypatch):
    monkeypatch.setenv("ARCHC_COMPILE_JOBS", "3")
    assert warmup.compile_jobs() == 3
    monkeypatch.setenv("ARCHC_COMPILE_JOBS", "0")
    assert warmup.compile_jobs() == 1
    monkeypatch.setenv("ARCHC_COMPILE_JOBS", "many")
    with pytest.raises(UsageError, match="ARCHC_COMPILE_JOBS must be a whole number"):
        warmup.compile_jobs()
    monkeypatch.delenv("ARCHC_COMPILE_JOBS")
    assert 1 <= warmup.compile_jobs() <= warmup.MAX_DEFAULT_JOBS


def _step(model, x):
    model.train()
    y = model(x)
    grads = model.backward(np.ones_like(y), inputs=False)
    return y, grads.params


def test_helpers_change_nothing_and_leave_nothing(write_spec, monkeypatch):
    """Helpers started on the first passes (here at once: the cache is warm, so no
    compile would start them): the results are bit for bit those of a model without
    them, and the helpers and their folder are gone once the passes end."""
    x = np.random.default_rng(1).standard_normal((2, 3, 12, 12)).astype(np.float32)
    want_y, want_g = _step(_model(write_spec), x)
    started = []

    class Recorded(warmup.Helpers):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            started.append(self)

    monkeypatch.setattr(warmup, "Helpers", Recorded)

    def at_once(start):
        start()
        return contextlib.nullcontext()

    monkeypatch.setattr(warmup, "on_first_compile", at_once)
    monkeypatch.setenv("ARCHC_COMPILE_JOBS", "3")
    model = _model(write_spec)
    y, grads = _step(model, x)
    np.testing.assert_array_equal(y, want_y)
    assert grads.keys() == want_g.keys()
    for name in grads:
        np.testing.assert_array_equal(grads[name], want_g[name])
    (helpers,) = started  # one set, started by the training forward pass, kept for backward
    assert len(helpers.procs) == 0 and not os.path.exists(helpers.folder)
    assert model._helpers is None and helpers not in warmup._running
    _step(model, x)  # later passes start none
    assert len(started) == 1


def test_a_helpers_kernels_are_the_passes_cache_hits(write_spec, tmp_path):
    """A helper run alone over every op (forward and backward) with a cold cache leaves
    the cache so that a model's training step in a fresh process compiles nothing."""
    model = _model(write_spec)
    forward, backward = warmup.firsts(model.program, model.algorithm, 2, True)
    folder = tmp_path / "job"
    folder.mkdir()
    with open(folder / "job.pkl", "wb") as f:
        pickle.dump({"program": model.program, "dtype": "<f4", "batch": 2, "training": True,
                     "order": [f"f{s}" for s in forward] + [f"b{s}" for s in backward]}, f)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    subprocess.run([sys.executable, "-m", "runtime.compile_helper", str(folder)], env=env,
                   check=True, timeout=600)
    assert sorted(os.listdir(folder)) == sorted(
        ["job.pkl"] + [f"{kind}-{item}" for kind in ("claim", "done")
                       for item in [f"f{s}" for s in forward] + [f"b{s}" for s in backward]])
    code = f"""
import numpy as np, archc
from numba.core import event
model = archc.compile(archc.load({str(write_spec(NET))!r}), backend="cpu").train()
with event.install_recorder("numba:compile") as compiled:
    y = model(np.ones((2, 3, 12, 12), np.float32))
    model.backward(np.ones_like(y), inputs=False)
print(len(compiled.buffer))
"""
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True, timeout=600)
    assert run.stdout.split()[-1] == "0", run.stdout


def test_a_cold_first_pass_starts_helpers_that_finish(write_spec, tmp_path):
    """In a fresh process with a cold cache and two compiling processes, the first pass
    starts a helper (a real compile fires Numba's event), and every helper is gone when
    the pass returns."""
    code = f"""
import numpy as np, archc
from runtime import warmup
from runtime.errors import UsageError
seen = []
class Seen(warmup.Helpers):
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        seen.append(self)
warmup.Helpers = Seen
model = archc.compile(archc.load({str(write_spec(NET))!r}), backend="cpu")
y = model.predict(np.ones((1, 3, 12, 12), np.float32))
print(len(seen), [p.poll() is not None for h in seen for p in h.procs], warmup._running,
      y.shape)
"""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), ARCHC_COMPILE_JOBS="2",
               TMPDIR=str(tmp_path))
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True, timeout=600)
    assert run.stdout.split("\n")[0] == "1 [] [] (1, 5)", run.stdout
    assert not glob.glob(os.path.join(tmp_path, "archc-warmup-*"))


CHAINED = """name: chained
input: {channels: 4, height: 10, width: 10}
layers:
  - conv2d: {out_channels: 12, kernel_size: 1, activation: relu6}
  - conv2d: {out_channels: 12, kernel_size: 3, padding: 1, groups: 12, activation: relu6}
  - conv2d: {out_channels: 4, kernel_size: 1}
"""


def test_a_helper_compiles_a_chain_as_the_pass_runs_it(write_spec, tmp_path, monkeypatch):
    """An inference pass runs an inverted-residual chain as one kernel (conv_chain.py): the
    helper that takes the chain's first op runs that kernel, not the op's own."""
    from runtime.backends import cpu
    from runtime.backends.cpu import conv_chain
    from runtime.compile_helper import run_ops

    monkeypatch.setattr(conv_chain, "worth", lambda *args: True)  # a small map
    model = archc.compile(archc.load(write_spec(CHAINED)), backend="cpu")
    heads, inside = model.chains(2)
    assert list(heads) == [0] and inside == {1, 2}
    ran, kernels = [], []
    monkeypatch.setattr(cpu, "chain_forward", lambda chain, xs, params, ctx: ran.append(
        (chain.describe(), [x.shape for x in xs])))
    monkeypatch.setitem(cpu.KERNELS, "conv2d", lambda op, *args: kernels.append(op.name))
    folder = tmp_path / "job"
    folder.mkdir()
    with open(folder / "job.pkl", "wb") as f:
        pickle.dump({"program": model.program, "dtype": "<f4", "batch": 2, "training": False,
                     "order": ["f0", "f2"]}, f)
    run_ops(str(folder))
    (chain,) = heads.values()
    assert ran == [(chain.describe(), [(2, 4, 10, 10)])]
    assert kernels == [model.program.ops[2].name]  # an op inside a chain: its own kernel


def test_a_helper_runs_channels_last_ops_as_the_pass_does(write_spec, tmp_path, monkeypatch):
    """Where the layout plan keeps a depthwise conv's input and output channels-last
    (runtime/backends/cpu/layout.py), a helper gives those ops (N, H, W, C) arrays and the
    plan, so that it compiles the kernels the pass will run."""
    from runtime.backends import cpu
    from runtime.compile_helper import run_ops

    monkeypatch.setattr(cpu, "CHAINS", False)
    model = archc.compile(archc.load(write_spec(CHAINED)), backend="cpu")
    expand, depthwise, project = (op.output for op in model.program.ops)
    assert model.channels_last(2) == {expand, depthwise}
    seen = []
    kernel = cpu.KERNELS["conv2d"]
    monkeypatch.setitem(cpu.KERNELS, "conv2d", lambda op, xs, p, ctx: seen.append(
        (op.name, xs[0].shape, kernel(op, xs, p, ctx).shape)))
    folder = tmp_path / "job"
    folder.mkdir()
    with open(folder / "job.pkl", "wb") as f:
        pickle.dump({"program": model.program, "dtype": "<f4", "batch": 2, "training": False,
                     "order": ["f0", "f1", "f2"]}, f)
    run_ops(str(folder))
    assert [shapes for _, *shapes in seen] == [
        [(2, 4, 10, 10), (2, 10, 10, 12)],  # the expansion writes channels-last
        [(2, 10, 10, 12), (2, 10, 10, 12)],  # the depthwise conv reads and writes it
        [(2, 10, 10, 12), (2, 4, 10, 10)]]  # the projection reads it, writes planes


class _Marker:
    """Unpickling this writes a file: whether a job was loaded at all."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


@pytest.mark.parametrize("loose", ["folder", "file"])
def test_a_helper_loads_no_job_that_another_user_could_write(tmp_path, loose):
    """A pickle runs code as it loads: a job whose folder or file others may write is
    refused before it is read, with a one-line reason; a private one loads."""
    from runtime.compile_helper import read_job

    folder = tmp_path / "job"
    folder.mkdir(mode=0o700)
    marker = tmp_path / "loaded"
    (folder / "job.pkl").write_bytes(pickle.dumps({"x": _Marker(marker)}))
    (folder / "job.pkl").chmod(0o600)
    os.chmod(folder if loose == "folder" else folder / "job.pkl", 0o777 if loose == "folder"
             else 0o666)
    with pytest.raises(PermissionError, match=f"the {loose} is not this user's alone"):
        read_job(str(folder))
    assert not marker.exists()
    os.chmod(folder, 0o700)
    (folder / "job.pkl").chmod(0o600)
    read_job(str(folder))
    assert marker.exists()


def test_a_helper_refuses_a_job_that_is_a_link(tmp_path):
    from runtime.compile_helper import read_job

    folder = tmp_path / "job"
    folder.mkdir(mode=0o700)
    (tmp_path / "elsewhere.pkl").write_bytes(pickle.dumps({}))
    (folder / "job.pkl").symlink_to(tmp_path / "elsewhere.pkl")
    with pytest.raises(OSError):
        read_job(str(folder))
