"""Safe YAML loading with locations."""

from __future__ import annotations

import pytest

from archc.errors import SpecError
from archc.spec.loader import load_yaml


def test_locations_of_keys_values_and_items():
    doc = load_yaml("name: x\nlayers:\n  - relu\n  - conv2d: {out_channels: 8}\n", "f.yaml")
    assert str(doc.key_loc("layers")) == "f.yaml:2:1"
    layers = doc["layers"]
    assert str(layers.item_loc(1)) == "f.yaml:4:5"
    conv = layers[1]["conv2d"]
    assert str(conv.value_loc("out_channels")) == "f.yaml:4:28"


def test_merge_keys_and_small_aliases_work():
    doc = load_yaml("base: &b {k: 3, s: 1}\nconv: {<<: *b, s: 2}\n")
    assert doc["conv"] == {"k": 3, "s": 2}


def test_bom_is_accepted():
    assert load_yaml("\ufeffa: 1\n".encode("utf-8")) == {"a": 1}


@pytest.mark.parametrize("text, message", [
    ("a: 1\na: 2\n", "duplicate key 'a'"),
    ("b: &b {k: 1}\na: {<<: *b, k: 2, k: 3}\n", "duplicate key 'k'"),
    ("1: x\n", "keys must be names"),
    ("a: !!python/name:os.system x\n", "cannot read value"),
    ("a: &x [*x]\n", "anchor"),
    ("a: [\n", "YAML syntax error"),
])
def test_refused(text, message):
    with pytest.raises(SpecError) as info:
        load_yaml(text, "f.yaml")
    assert message in info.value.message


def test_nul_byte_refused():
    with pytest.raises(SpecError, match="NUL"):
        load_yaml(b"a: 1\x00\n", "f.yaml")


@pytest.mark.parametrize("text", ["a: \ud800\n", "a: b\x00\n", "a: \x07\n", "a: \x85b\n"])
def test_odd_characters_give_spec_errors(text):
    try:
        load_yaml(text, "f.yaml")
    except SpecError as exc:
        assert exc.loc is not None and exc.loc.line >= 1
