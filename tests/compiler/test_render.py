"""Diagrams: the DOT structure mirrors the graph, and real renders through Graphviz work."""

from __future__ import annotations

import re
import shutil
import xml.etree.ElementTree as ET

import pytest

import archc
from archc.errors import UsageError
from archc.render import diagram, write_diagram
from conftest import SPECS

needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is missing")


def nodes_and_edges(dot):
    nodes, edges = {}, []
    for line in dot.body:
        edge = re.match(r'\s*"?([\w.\-]+)"?\s*->\s*"?([\w.\-]+)"?\s*\[label="?([^"\]]*)"?', line)
        if edge:
            edges.append(edge.groups())
            continue
        node = re.match(r'\s*"?((?:n|b)_[\w.\-]+)"?\s*\[', line)
        if node:
            nodes[node.group(1)] = line
    return nodes, edges


@pytest.mark.parametrize("spec", ["lenet5", "resnet18", "googlenet", "unet"])
def test_expanded_diagram_mirrors_the_graph(spec):
    graph = archc.load(SPECS / f"{spec}.yaml")
    dot = diagram(graph)
    nodes, edges = nodes_and_edges(dot)
    assert set(nodes) == {"n_" + n.name for n in graph}
    assert len(edges) == graph.nx.number_of_edges()
    for source, target, label in edges:
        assert label == "x".join(map(str, graph[source[2:]].shape))
    clusters = re.findall(r"subgraph \"?cluster_([\w.\-]+)", dot.source)
    assert sorted(clusters) == sorted(graph.blocks)
    for name in graph.outputs.values():
        assert "peripheries=2" in nodes["n_" + name]


def test_merge_nodes_and_inputs_are_distinct():
    dot = diagram(archc.load(SPECS / "resnet18.yaml"))
    nodes, _ = nodes_and_edges(dot)
    assert "shape=circle" in nodes["n_layer1.0.add"] and "+" in nodes["n_layer1.0.add"]
    assert "shape=invhouse" in nodes["n_input"]
    concat = diagram(archc.load(SPECS / "googlenet.yaml")).source
    assert re.search(r"n_inception3a.concat.*shape=invtrapezium", concat)


def test_training_only_layers_are_drawn_dashed():
    graph = archc.load(SPECS / "googlenet.yaml", aux_logits=True)
    nodes, _ = nodes_and_edges(diagram(graph))
    dashed = {name[2:] for name, line in nodes.items() if "dashed" in line}
    assert dashed == graph.training_only()
    assert "training output" in nodes["n_aux1.fc2"]
    collapsed, _ = nodes_and_edges(diagram(graph, collapse=1))
    assert "dashed" in collapsed["b_aux1"] and "dashed" not in collapsed["b_inception4a"]


def test_collapse_counts():
    graph = archc.load(SPECS / "resnet18.yaml")
    nodes, edges = nodes_and_edges(diagram(graph, collapse=1))
    top = [n for n in graph if not n.scope]
    assert set(nodes) == {"n_" + n.name for n in top} | {f"b_layer{i}" for i in range(1, 5)}
    assert "basic_block x2" in nodes["b_layer1"] and "147,968 params" in nodes["b_layer1"]
    assert len(edges) == len(nodes) - 1  # a chain once the blocks are closed
    nodes, _ = nodes_and_edges(diagram(graph, collapse=2))
    # layer1.0 and layer1.1 are identical and consecutive: one node "x 2"; layer2.0 has a
    # stride and a projection, so layer2.0 and layer2.1 stay apart.
    assert "b_layer1.0" in nodes and "b_layer1.1" not in nodes and "x2" in nodes["b_layer1.0"]
    assert "b_layer2.0" in nodes and "b_layer2.1" in nodes
    assert "cluster_layer1" in diagram(graph, collapse=2).source


def test_detail_levels_and_annotations():
    graph = archc.load(SPECS / "lenet5.yaml")
    low, _ = nodes_and_edges(diagram(graph, detail="low"))
    high, _ = nodes_and_edges(diagram(graph, detail="high", annotate=["params", "macs", "rf"]))
    assert "c1" not in low["n_c1"].split("label=")[1].split("conv")[0]
    assert "conv 5x5, 6" in low["n_c1"] and "conv 5x5, 6" in high["n_c1"]
    assert "156 params" in high["n_c1"] and "118K MACs" in high["n_c1"] and "RF 5" in high["n_c1"]
    lr = diagram(graph, rankdir="LR")
    assert "rankdir=LR" in lr.source


@pytest.mark.parametrize("kwargs, message", [
    ({"rankdir": "BT"}, "rankdir"),
    ({"detail": "hgih"}, "unknown detail level"),
    ({"annotate": ["flops"]}, "unknown annotation"),
    ({"collapse": 0}, "collapse depth"),
])
def test_bad_options_are_user_errors(kwargs, message):
    with pytest.raises(UsageError, match=message):
        diagram(archc.load(SPECS / "lenet5.yaml"), **kwargs)


@needs_dot
def test_real_renders(tmp_path):
    graph = archc.load(SPECS / "resnet18.yaml")
    dot = diagram(graph)
    svg = ET.parse(write_diagram(dot, tmp_path / "r.svg"))
    groups = [g for g in svg.iter("{http://www.w3.org/2000/svg}g") if g.get("class") == "node"]
    assert len(groups) == len(graph)
    png = write_diagram(dot, tmp_path / "r.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 50_000
    pdf = write_diagram(dot, tmp_path / "r.pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and len(pdf) > 10_000
    text = write_diagram(dot, tmp_path / "r.gv").read_text()
    assert text == dot.source


def test_write_errors(tmp_path):
    dot = diagram(archc.load(SPECS / "lenet5.yaml"))
    with pytest.raises(UsageError, match="unknown diagram format 'jpeg'"):
        write_diagram(dot, tmp_path / "x.jpeg")
    with pytest.raises(UsageError, match="does not exist"):
        write_diagram(dot, tmp_path / "missing" / "x.svg")


def test_missing_dot_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(UsageError, match="Graphviz's 'dot' program is not installed"):
        write_diagram(diagram(archc.load(SPECS / "lenet5.yaml")), tmp_path / "x.png")


def test_collapse_by_block_name():
    graph = archc.load(SPECS / "googlenet.yaml")
    nodes, edges = nodes_and_edges(diagram(graph, collapse=["basic_conv"]))
    convs = [p for p, b in graph.blocks.items() if b.block == "basic_conv"]
    assert {f"b_{p}" for p in convs} <= set(nodes)
    assert not any(n.startswith("n_") and n.endswith(".conv") for n in nodes)
    with pytest.raises(UsageError, match="no block 'basic_cnv'"):
        diagram(graph, collapse="basic_cnv")
    # A cluster per open block, in the order the spec wrote them.
    source = diagram(graph, collapse=["basic_conv"]).source
    assert source.index("cluster_inception3a.branch2") < source.index("cluster_inception3a.branch4")
