"""archc tune: every algorithm timed per convolution, the fastest kept per machine and
layer shape, and used by later runs; a damaged cache is a warning, never a crash."""

from __future__ import annotations

import json

import numpy as np
import pytest

import archc
from archc.cli import main
from conftest import SPECS
from runtime import tuning
from runtime.backends.cpu import conv


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "tune.json"
    monkeypatch.setenv("ARCHC_TUNE_CACHE", str(path))
    conv.forget_choices()
    yield path
    conv.forget_choices()


def _convs(spec="lenet5", **variables):
    model = archc.compile(archc.load(SPECS / f"{spec}.yaml", **variables), backend="cpu")
    return model, [op for op in model.program.ops if op.kind == "conv2d"]


def test_tune_times_each_algorithm_and_later_runs_use_the_fastest(cache, capsys):
    assert main(["tune", f"{SPECS}/lenet5.yaml", "--batch", "2", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert all(name in out.splitlines()[1] for name in ("direct", "grid", "im2col"))
    assert f"wrote {cache}: 2 layer shapes" in out
    saved = json.loads(cache.read_text())
    (entries,) = saved["machines"].values()
    assert len(entries) == 2
    _, ops = _convs()
    for op in ops:
        entry = entries[tuning.layer_key(op, 2, False)]
        assert set(entry["times"]) == {"direct", "grid", "im2col"}
        assert entry["algorithm"] == min(entry["times"], key=entry["times"].get)
        name, why = conv.choose(op, 2)
        assert name == entry["algorithm"] and why.startswith("measured by archc tune: ")
        assert conv.choose(op, 3)[1] == conv.rule(op, 3)[1]  # another batch: the rules
    assert main(["bench", f"{SPECS}/lenet5.yaml", "--batch", "2", "--repeat", "1"]) == 0
    assert "measured by archc tune" in capsys.readouterr().out


def test_a_recorded_choice_is_what_runs(cache):
    model, ops = _convs()
    x = np.random.default_rng(0).standard_normal((2, 1, 32, 32)).astype(np.float32)
    expected = model.predict(x)
    store = tuning.Tuning(cache)
    for op in ops:
        assert conv.rule(op, 2)[0] == "direct"
        store.record(op, 2, False, {"im2col": 1e-3, "direct": 2e-3})
    store.save()
    conv.forget_choices()
    ran = []
    # the im2col algorithm builds the whole batch's matrix (im2col_kernel) or goes panel by
    # panel (im2col_conv_kernel); the direct one calls neither
    originals = {name: getattr(conv, name) for name in ("im2col_kernel", "im2col_conv_kernel")}

    def spy(original):
        def run(*args):
            ran.append(args[0].shape)
            return original(*args)
        return run

    for name, original in originals.items():
        setattr(conv, name, spy(original))
    try:
        got = model.predict(x)
    finally:
        for name, original in originals.items():
            setattr(conv, name, original)
    assert len(ran) == len(ops)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_a_damaged_cache_warns_and_the_rules_choose(cache, capsys):
    cache.write_bytes(b'{"version": 1, "machines": {')
    assert main(["bench", f"{SPECS}/lenet5.yaml", "--repeat", "1"]) == 0
    captured = capsys.readouterr()
    (line,) = [ln for ln in captured.err.splitlines() if "tune" in ln]
    assert line.startswith("warning: ") and str(cache) in line and "rules" in line
    _, ops = _convs()
    assert all(conv.choose(op, 1) == conv.rule(op, 1) for op in ops)
    # a cache of other machines only: nothing for this one
    cache.write_text(json.dumps({"version": 1, "machines": {"another CPU, 64 threads": {}}}))
    conv.forget_choices()
    assert all(conv.choose(op, 1) == conv.rule(op, 1) for op in ops)
