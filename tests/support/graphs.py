"""Comparing graphs in tests."""

from __future__ import annotations


def assert_same_graph(a, b) -> None:
    assert [n.name for n in a] == [n.name for n in b]
    for x, y in zip(a, b):
        assert (x.op, x.attrs, x.inputs, x.shape, x.trainable) == \
            (y.op, y.attrs, y.inputs, y.shape, y.trainable), x.name
    assert a.inputs == b.inputs and a.outputs == b.outputs and a.name == b.name
    assert a.training == b.training
    assert (a.train_outputs, a.loss_weights) == (b.train_outputs, b.loss_weights)
