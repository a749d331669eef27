"""The spec language front end: YAML text -> layer graph.

``load_spec`` reads a file (or text), expands blocks, repeats and variables, and returns an
:class:`archc.ir.Graph` whose nodes remember the YAML line they came from.
"""

from archc.spec.expand import build_graph, load_spec, parse_overrides

__all__ = ["build_graph", "load_spec", "parse_overrides"]
