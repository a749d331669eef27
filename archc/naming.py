"""The names PyTorch gives a network's parameters, where a spec's own names differ.

archc names a parameter ``LAYER.ROLE`` (``layer2.1.conv1.weight``), and a spec written the
way PyTorch code builds the network gets PyTorch's ``state_dict`` names for free. Where the
two cannot agree (torchvision numbers MobileNetV2's blocks across all stages in one
``features`` list, a spec repeats each stage), the spec's ``torch_names:`` section maps
them, one rule per line, first match wins::

    torch_names:
      stem.conv2d: features.0.0                       # a layer: every parameter of it
      "stage{s}.{j}.project": "features.{first[s] + j}.conv.2"
      "stage{s}.{j}.scale.weight": "features.{s}.{j}.layer_scale"   # one parameter

A pattern matches a whole parameter name, or a whole layer name (the parameter's role,
``weight``, ``running_mean``..., is then appended to the result). ``{x}`` in a pattern
matches one part of a dotted name (a number becomes an integer), ``{x...}`` one or more
parts (``{rest...}`` in ``"trunk.{s}.{rest...}"`` takes ``0.conv.a`` whole); ``{...}`` in
the result is an expression of those parts and the spec's variables.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from archc.errors import Loc, SpecError
from archc.ir import Graph
from archc.layers import get_layer

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass(frozen=True)
class NameRule:
    """One line of a spec's ``torch_names:`` section."""

    pattern: str
    template: str
    loc: Loc | None = None

    def regex(self) -> re.Pattern:
        parts, last, seen = [], 0, set()
        for m in _PLACEHOLDER.finditer(self.pattern):
            name = m.group(1)
            several = name.endswith("...")  # {rest...}: one or more dotted parts
            name = name[:-3] if several else name
            if not _IDENTIFIER.match(name) or name in seen:
                raise SpecError(f"torch_names: '{m.group(0)}' in '{self.pattern}' must be a new "
                                "name, as {s}, {block} or {rest...}", self.loc,
                                "a pattern's {x} matches one part of a dotted layer name, "
                                "{x...} one or more")
            seen.add(name)
            part = r"[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*" if several else r"[A-Za-z0-9_]+"
            parts += [re.escape(self.pattern[last:m.start()]), f"(?P<{name}>{part})"]
            last = m.end()
        if "{" in self.pattern[last:] or "}" in self.pattern[last:]:
            raise SpecError(f"torch_names: unbalanced braces in '{self.pattern}'", self.loc)
        return re.compile("".join(parts) + re.escape(self.pattern[last:]) + r"\Z")

    def apply(self, match: re.Match, variables: dict[str, Any]) -> str:
        from archc.spec.expr import ExprError, evaluate

        scope = dict(variables)
        scope.update({k: int(v) if v.isdigit() else v for k, v in match.groupdict().items()})

        def value(m: re.Match) -> str:
            try:
                result = evaluate(m.group(1), scope)
            except ExprError as exc:
                parts = ", ".join(match.groupdict()) or "none"
                hint = exc.hint or f"the pattern's parts: {parts}; or the spec's variables"
                raise SpecError(f"torch_names: '{self.template}' for '{match.string}': "
                                f"{exc.message}", self.loc, hint) from None
            if isinstance(result, float) and result.is_integer():
                result = int(result)
            return str(result)

        return _PLACEHOLDER.sub(value, self.template)


def read_rules(raw: Any, loc_of) -> list[NameRule]:
    """The rules of a ``torch_names:`` mapping (``loc_of(key)`` locates a line)."""
    if not isinstance(raw, dict):
        raise SpecError("'torch_names' must be a mapping of archc names to PyTorch names",
                        loc_of(None), 'e.g. torch_names: {"stage{s}.{j}.conv": '
                        '"features.{s}.{j}.0"}')
    rules = []
    for pattern, template in raw.items():
        loc = loc_of(pattern)
        if not isinstance(pattern, str) or not isinstance(template, str) or not template:
            raise SpecError(f"torch_names: '{pattern}' must map to a name (text)", loc)
        rule = NameRule(pattern, template, loc)
        rule.regex()  # refuses a malformed pattern now, where it is written
        rules.append(rule)
    return rules


def parameter_roles(graph: Graph):
    """(layer, role, shape, is_buffer) of every parameter and buffer, in graph order (a
    layer that shares another's weights has none)."""
    for node in graph:
        if node.op == "input" or node.shares is not None:  # a sharer holds none of its own
            continue
        layer = get_layer(node.op)
        in_shapes = [graph[i].shape for i in node.inputs]
        for buffer, table in ((False, layer.parameters), (True, layer.buffers)):
            for role, shape in table(node.attrs, in_shapes).items():
                yield node, role, tuple(shape), buffer


def torch_names(graph: Graph) -> dict[str, str]:
    """archc parameter name -> PyTorch ``state_dict`` name, for the parameters whose names
    the graph's rules change; SpecError, located at the rule, for a result that collides.

    Examples
    --------
    >>> import archc
    >>> names = torch_names(archc.load("specs/mobilenet_v2.yaml"))
    >>> names["stage2.1.project.weight"], "classifier.1.bias" in names  # kept as it is
    ('features.3.conv.2.weight', False)
    """
    rules = [(rule, rule.regex()) for rule in graph.name_rules]
    out: dict[str, str] = {}
    by_target: dict[str, str] = {}
    for node, role, _, _ in parameter_roles(graph):
        name = f"{node.name}.{role}"
        target, used = name, None
        for rule, regex in rules:
            if m := regex.match(name):
                target, used = rule.apply(m, graph.variables), rule
                break
            if m := regex.match(node.name):
                target, used = f"{rule.apply(m, graph.variables)}.{role}", rule
                break
        if target in by_target:
            raise SpecError(f"torch_names: '{by_target[target]}' and '{name}' would both be "
                            f"named '{target}'", used and used.loc,
                            "each parameter needs a name of its own")
        by_target[target] = name
        if target != name:
            out[name] = target
    return out
