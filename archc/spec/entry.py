"""One entry of a ``layers`` list, parsed: the layer (or block) it names, its value and
the entry keys beside it (name, inputs, repeat, when, trainable), each with its location."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from archc.errors import Loc, SpecError, did_you_mean
from archc.spec.loader import SpecList, SpecMap

ENTRY_KEYS = ("name", "input", "inputs", "repeat", "trainable", "when", "shares")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-]*$")
# A layer's name may be a dotted path (``layer1.0.conv1``): specs archc writes keep each
# layer's full name, so that its parameters keep theirs.
LAYER_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-]*(\.[A-Za-z0-9_][A-Za-z0-9_\-]*)*$")
_UNSET = object()


def type_name(value: Any) -> str:
    """How to call a YAML value's type in a message."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "text"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    return "nothing (null)" if value is None else type(value).__name__


def expect(value: Any, kind: type, loc: Loc, what: str, example: str) -> None:
    """Raise a located SpecError unless ``value`` is a ``kind`` (dict, list, ...)."""
    if not isinstance(value, kind):
        raise SpecError(f"{what} must be {type_name(kind())}, got {type_name(value)}", loc,
                        f"e.g. {example}")


def check_keys(mapping: SpecMap, allowed: tuple[str, ...], what: str) -> None:
    """Raise a located SpecError for the first key of ``mapping`` not in ``allowed``."""
    for key in mapping:
        if key not in allowed:
            raise SpecError(
                f"unknown key '{key}' in {what}",
                mapping.key_loc(key),
                did_you_mean(key, allowed) or f"valid keys: {', '.join(allowed)}",
            )


@dataclass
class Entry:
    """A parsed layer entry. ``form`` says how its value is written: mapping, list,
    scalar or none (``- relu``)."""

    op: str
    op_loc: Loc
    loc: Loc
    value: Any = None
    value_loc: Loc | None = None
    form: str = "none"
    name: str | None = None
    name_loc: Loc | None = None
    inputs: list | None = None
    inputs_loc: Loc | None = None
    inputs_locs: list[Loc] = field(default_factory=list)
    repeat: Any = None
    repeat_loc: Loc | None = None
    when: Any = _UNSET
    when_loc: Loc | None = None
    trainable: bool | None = None
    shares: str | None = None
    shares_loc: Loc | None = None

    @property
    def has_when(self) -> bool:
        return self.when is not _UNSET


def _attribute_hint(key: str, known: list[str]) -> str | None:
    """When a stray entry key is an attribute of the entry's layer: where it goes."""
    from archc.layers import get_layer, is_layer

    if len(known) != 1 or not is_layer(known[0]):
        return None
    op = known[0]
    if key not in {attr.name for attr in get_layer(op).attrs}:
        return None
    return (f"'{key}' is an attribute of {op}: put it in {op}'s mapping, with the inputs "
            f"under 'inputs:', e.g. '- {op}: {{{key}: ...}}' and '  inputs: [...]'")


def parse_entry(item: Any, loc: Loc, is_op: Callable[[str], bool]) -> Entry:
    """Parse one item of a ``layers`` list; ``is_op`` tells layer and block names apart
    from misspelt entry keys."""
    if isinstance(item, str):
        return Entry(op=item, op_loc=loc, loc=loc, name_loc=loc, inputs_loc=loc)
    if not isinstance(item, dict):
        raise SpecError(
            f"a layer entry must be a layer name or a mapping, got {type_name(item)}",
            loc,
            "write e.g. '- relu' or '- conv2d: {out_channels: 16, kernel_size: 3}'",
        )
    ops = [k for k in item if k not in ENTRY_KEYS]
    if not ops:
        raise SpecError("this entry names no layer type", loc,
                        f"an entry needs a layer key such as conv2d, next to {', '.join(item)}")
    if len(ops) > 1:
        known = [k for k in ops if is_op(k)]
        if len(known) >= 2:
            raise SpecError(f"one entry holds two layers, '{known[0]}' and '{known[1]}'",
                            item.key_loc(known[1]), "start each layer on its own '- ' line")
        bad = next(k for k in ops if k not in known)
        raise SpecError(f"unknown key '{bad}' in a layer entry", item.key_loc(bad),
                        _attribute_hint(bad, known)
                        or did_you_mean(bad, ENTRY_KEYS + tuple(k for k in ops if k != bad))
                        or f"entry keys are {', '.join(ENTRY_KEYS)}, plus one layer type")
    op = ops[0]
    value = item[op]
    form = ("mapping" if isinstance(value, dict) else "list" if isinstance(value, list)
            else "none" if value is None else "scalar")
    entry = Entry(op=op, op_loc=item.key_loc(op), loc=item.key_loc(op), value=value,
                  value_loc=item.value_loc(op), form=form, name_loc=loc, inputs_loc=loc)
    if "input" in item and "inputs" in item:
        raise SpecError("give either 'input' or 'inputs', not both", item.key_loc("inputs"))
    for key in ("input", "inputs"):
        if key in item:
            refs = item[key]
            entry.inputs = list(refs) if isinstance(refs, list) else [refs]
            entry.inputs_loc = item.value_loc(key)
            entry.inputs_locs = (refs.item_locs if isinstance(refs, SpecList)
                                 else [item.value_loc(key)])
    if "name" in item:
        name = item["name"]
        if isinstance(name, int) and not isinstance(name, bool):
            name = str(name)
        if not isinstance(name, str) or not LAYER_NAME_PATTERN.match(name):
            raise SpecError(f"invalid layer name {name!r}", item.value_loc("name"),
                            "names use letters, digits, _ and -, in parts joined by dots")
        entry.name, entry.name_loc = name, item.value_loc("name")
    if "repeat" in item:
        entry.repeat, entry.repeat_loc = item["repeat"], item.value_loc("repeat")
    if "when" in item:
        entry.when, entry.when_loc = item["when"], item.value_loc("when")
    if "trainable" in item:
        if not isinstance(item["trainable"], bool):
            raise SpecError("'trainable' must be true or false", item.value_loc("trainable"))
        entry.trainable = item["trainable"]
    if "shares" in item:
        if not isinstance(item["shares"], str) or not LAYER_NAME_PATTERN.match(item["shares"]):
            raise SpecError("'shares' names an earlier layer or block whose weights this entry "
                            f"uses, got {item['shares']!r}", item.value_loc("shares"),
                            "e.g. shares: rpn_p2")
        entry.shares, entry.shares_loc = item["shares"], item.value_loc("shares")
    return entry


def call_values(entry: Entry, positional: list[str], what: str
                ) -> tuple[dict[str, Any], dict[str, Loc], dict[str, Loc]]:
    """The attributes (or block arguments) an entry gives, by name: (values, value
    locations, key locations). A list fills ``positional`` in order, a scalar the first;
    with a single positional attribute a list is that attribute's value."""
    value, form, loc = entry.value, entry.form, entry.value_loc
    if form == "mapping":
        return (dict(value), {k: value.value_loc(k) for k in value},
                {k: value.key_loc(k) for k in value})
    if form == "none":
        return {}, {}, {}
    if form == "list" and len(positional) == 1:
        return {positional[0]: value}, {positional[0]: loc}, {positional[0]: loc}
    items = list(value) if form == "list" else [value]
    item_locs = value.item_locs if form == "list" else [loc]
    if len(items) > len(positional):
        raise SpecError(
            f"{what} takes at most {len(positional)} values in a list "
            f"({', '.join(positional) or 'none'}), got {len(items)}",
            loc,
            "use a mapping to name the attributes",
        )
    locs = dict(zip(positional, item_locs))
    return dict(zip(positional, items)), locs, locs
