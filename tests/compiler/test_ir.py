"""The graph IR and its verifier."""

from __future__ import annotations

import pytest

import archc
from archc.ir import Graph, GraphInvalid, Node, verify
from conftest import SPECS


def small() -> Graph:
    g = Graph(name="small")
    g.add(Node("input", "input", {"shape": (2, 4, 4)}, []))
    g.add(Node("a", "relu", {}, ["input"]))
    g.add(Node("b", "add", {}, ["a", "a"]))
    g.inputs, g.outputs = ["input"], {"b": "b"}
    return g


def test_multi_edges_keep_input_order_and_users():
    g = small()
    verify(g)
    assert g["b"].inputs == ["a", "a"] and g.users("a") == ["b"]
    assert g.nx.number_of_edges("a", "b") == 2


def test_copy_is_independent():
    g = archc.load(SPECS / "lenet5.yaml")
    h = g.copy()
    h["c1"].attrs["out_channels"] = 99
    assert g["c1"].attrs["out_channels"] == 6


@pytest.mark.parametrize("breakage, message", [
    (lambda g: setattr(g["a"], "op", "frobnicate"), "unknown op"),
    (lambda g: g["b"].inputs.pop(), "disagree"),
    (lambda g: g.nx.add_edge("b", "a", key=1), "cycle"),
    (lambda g: g.outputs.update(c="c"), "missing node"),
    (lambda g: g.inputs.append("a"), "not an input node"),
])
def test_verify_reports_broken_invariants(breakage, message):
    g = small()
    breakage(g)
    with pytest.raises(GraphInvalid, match=message):
        verify(g)


def test_verify_requires_shapes_after_inference():
    g = small()
    with pytest.raises(GraphInvalid, match="shape not inferred"):
        verify(g, require_shapes=True)
    archc.infer_shapes(g)
    verify(g, require_shapes=True)
    assert g["b"].shape == (2, 4, 4)


def test_add_refuses_unknown_inputs_and_duplicates():
    g = small()
    with pytest.raises(ValueError):
        g.add(Node("c", "relu", {}, ["nope"]))
    with pytest.raises(ValueError):
        g.add(Node("a", "relu", {}, ["input"]))


def test_block_instances_are_recorded():
    g = archc.load(SPECS / "resnet18.yaml")
    assert g.blocks["layer2"].count == 2 and g.blocks["layer2"].block == "basic_block"
    assert g.blocks["layer2.0"].block == "basic_block"
    assert dict(g.blocks["layer2.0"].args) == {"out": 128, "stride": 2, "project": True}
    assert g.blocks["layer2.0.downsample"].block == "sequential"
    assert g["layer2.0.downsample.0"].scope == ("layer2", "layer2.0", "layer2.0.downsample")


def _networkx_order(graph) -> list[str]:
    import networkx as nx

    order = nx.get_node_attributes(graph.nx, "order")
    return list(nx.lexicographical_topological_sort(graph.nx, key=order.__getitem__))


@pytest.mark.parametrize("spec", ["googlenet", "densenet121", "unet_plus_plus", "mask_rcnn",
                                  "mobilenet_v2"])
def test_iteration_is_networkxs_lexicographic_topological_order(spec):
    """Graph iteration computes networkx's order itself (faster): the same order on
    library networks as written and after -O2, whose rewrites reuse and split orders."""
    from archc.passes import preset, run_passes

    graph = archc.load(SPECS / f"{spec}.yaml")
    assert [n.name for n in graph] == _networkx_order(graph)
    optimised = run_passes(graph, None, preset(2))[0]
    assert [n.name for n in optimised] == _networkx_order(optimised)


def test_iteration_breaks_ties_as_networkx_does_and_refuses_a_cycle():
    import networkx as nx
    from hypothesis import given, settings, strategies as st

    @settings(max_examples=60, deadline=None)
    @given(st.data())
    def check(data):
        count = data.draw(st.integers(1, 12))
        g = Graph(name="random")
        for i in range(count):
            inputs = data.draw(st.lists(st.sampled_from([f"n{j}" for j in range(i)]),
                                        max_size=3)) if i else []
            g.add(Node(f"n{i}", "add" if len(inputs) > 1 else "relu", {}, inputs))
            g.nx.nodes[f"n{i}"]["order"] = data.draw(st.integers(0, 3))  # ties on purpose
        assert [n.name for n in g] == _networkx_order(g)

    check()
    g = Graph(name="cycle")
    g.add(Node("a", "relu", {}, []))
    g.add(Node("b", "relu", {}, ["a"]))
    g.nx.add_edge("b", "a", key=0)
    with pytest.raises(nx.NetworkXUnfeasible):
        list(g)
