"""The spec writer: every library spec, as written and after -O2, reads back to the same
graph (names, ops, attributes, inputs, shapes, outputs)."""

from __future__ import annotations

from pathlib import Path

import pytest

import archc
from graphs import assert_same_graph
from archc.passes import preset, run_passes
from archc.spec.writer import write_spec

SPECS = sorted(Path("specs").glob("*.yaml"))


@pytest.mark.parametrize("spec", SPECS, ids=lambda p: p.stem)
@pytest.mark.parametrize("level", [0, 2])
def test_round_trip(spec, level):
    graph, _, _ = run_passes(archc.load(spec), None, preset(level))
    text = write_spec(graph, f"{spec.stem} at -O{level}")
    assert_same_graph(graph, archc.load(f"{spec.stem}-O{level}.yaml", text=text))


def test_training_outputs_are_written_with_their_loss_weights():
    graph = archc.load("specs/googlenet.yaml", aux_logits=True, resolution=64)
    text = write_spec(graph, "googlenet with its auxiliary classifiers")
    assert "training_outputs: {aux2: {output: aux2.fc2, loss_weight: 0.3}, " in text
    assert_same_graph(graph, archc.load("g.yaml", text=text))


def test_written_spec_is_readable():
    graph, _, _ = run_passes(archc.load("specs/resnet18.yaml"), None, preset(2))
    text = write_spec(graph, "resnet18 at -O2")
    assert text.startswith("# resnet18 at -O2\nname: resnet18\ninput: {channels: 3, height: 224")
    # the fused layers are listed, defaults left out, a residual named as a second input
    assert "  # fused: layer1.0.bn2 (batchnorm2d), layer1.0.add (add), layer1.0.relu_1 (relu)\n" \
           "  - name: layer1.0.conv2\n" \
           "    conv2d: {out_channels: 64, kernel_size: [3, 3], padding: [1, 1], activation: relu}\n" \
           "    inputs: [layer1.0.conv1, maxpool]\n" in text


def test_named_outputs_and_several_inputs():
    text = """
inputs: {image: {channels: 1, height: 8, width: 8}, extra: {features: 4}}
layers:
  - conv2d: {out_channels: 2, kernel_size: 3}
    input: image
    trainable: false
  - name: feat
    flatten:
  - linear: 3
    input: extra
outputs: {map: feat, vec: linear}
"""
    graph = archc.load("two.yaml", text=text)
    assert graph.outputs == {"map": "feat", "vec": "linear"}
    assert_same_graph(graph, archc.load("again.yaml", text=write_spec(graph)))
