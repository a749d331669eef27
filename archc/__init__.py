"""archc: a graph-based compiler and simulator for convolutional neural networks.

>>> import archc
>>> g = archc.load("specs/lenet5.yaml")
>>> g.output_shapes()
{'fc3': (10,)}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from archc.errors import ArchcError, Loc, SpecError
from archc.ir import Graph, Node, verify
from archc.lower import compile
from archc.shapes import infer_shapes
from archc.spec import load_spec

__version__ = "0.1.0"


def diagram(graph: Graph, **options: Any):
    """The graph as a ``graphviz.Digraph`` (see :func:`archc.render.diagram` for options);
    notebooks display it inline, ``archc.render.write_diagram`` writes it to a file."""
    from archc.render import diagram as draw

    return draw(graph, **options)


def load(spec: str | Path, *, text: str | None = None, **variables: Any) -> Graph:
    """Load a spec, override variables, infer and check every shape.

    Parameters
    ----------
    spec : path of a YAML spec (or a name for ``text``).
    text : the spec's text, when it does not come from a file.
    **variables : overrides for the spec's variables, as ``--set`` does.

    Returns
    -------
    Graph
        Shapes inferred and the IR verified.

    Raises
    ------
    SpecError
        For any mistake in the spec, located at file:line:column.
    """
    return build(spec, variables, text)


def build(spec: str | Path, variables: dict[str, Any], text: str | None = None) -> Graph:
    """:func:`load` with the variable overrides as a dict (``--set`` may name any
    variable, ``text`` and ``spec`` too)."""
    from archc.naming import torch_names

    graph = infer_shapes(load_spec(spec, variables, text=text))
    verify(graph, require_shapes=True)
    torch_names(graph)  # its rules give every parameter a name of its own
    return graph


def _notebook_views() -> None:
    """What a notebook shows for a graph and its analysis (archc.page.notebook), attached
    here, above the IR, the analysis and the diagrams it draws with, so that none of them
    imports the page."""
    from archc.analysis.report import Report
    from archc.page.notebook import graph_html, report_html

    Graph._repr_html_ = graph_html
    Report._repr_html_ = report_html


_notebook_views()

__all__ = ["ArchcError", "Graph", "Loc", "Node", "SpecError", "build", "compile", "diagram",
           "infer_shapes", "load", "load_spec", "verify"]
