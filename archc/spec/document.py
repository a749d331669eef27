"""The top level of a spec: its name, variables (with ``--set`` overrides), blocks,
inputs and outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from archc.errors import Loc, SpecError, did_you_mean
from archc.layers import AttrError, get_layer, is_layer
from archc.spec.entry import NAME_PATTERN, check_keys, expect
from archc.spec.loader import SpecList, SpecMap, load_yaml_file, make_map
from archc.spec.scope import Env, evaluate_value

TOP_KEYS = ("name", "description", "extends", "variables", "input", "inputs", "blocks",
            "layers", "output", "outputs", "training_outputs", "training", "torch_names")
# the settings a spec's ``training:`` section may give (archc train's flags) and their types
TRAINING_KEYS = {"data": str, "epochs": int, "batch_size": int, "optimizer": str, "lr": float,
                 "momentum": float, "nesterov": bool, "weight_decay": float, "schedule": str,
                 "warmup": int, "label_smoothing": float, "clip": float, "augment": str,
                 "freeze": list, "unfreeze": list, "patience": int, "seed": int,
                 # data-parallel runs (runtime/train/distributed/)
                 "sync_bn": bool, "bucket_mb": float, "checkpoint_every": int,
                 # what is trained (runtime/train/tasks.py); runtime/train/config.py has the same keys
                 "task": str, "loss": str, "margin": float, "box_loss": str,
                 "objectness": str, "class_weights": list, "anchor_scale": float}
MAX_EXTENDS = 8
BLOCK_KEYS = ("args", "inputs", "layers", "output", "description")
INPUT_KEYS = ("channels", "height", "width", "features", "shape")


def resolve_extends(doc: SpecMap, file: str, chain: tuple[str, ...] = ()) -> SpecMap:
    """Apply ``extends: base.yaml``: the base spec's keys, with this spec's keys replacing
    them, except ``variables`` and ``blocks``, which are merged name by name (so a variant
    spec only states what differs). Paths are relative to the extending spec's folder."""
    if "extends" not in doc:
        return doc
    raw, loc = doc["extends"], doc.value_loc("extends")
    if not isinstance(raw, str) or not raw.strip():
        raise SpecError("'extends' must name a spec file", loc, "e.g. extends: resnet18.yaml")
    base_path = (Path(file).parent / raw).resolve()
    here = str(Path(file).resolve())
    if str(base_path) in chain + (here,):
        names = " -> ".join(Path(p).name for p in chain + (here, str(base_path)))
        raise SpecError(f"specs extend each other in a circle ({names})", loc)
    if len(chain) >= MAX_EXTENDS:
        raise SpecError(f"'extends' is chained more than {MAX_EXTENDS} deep", loc)
    try:
        base = load_yaml_file(base_path)
    except SpecError as exc:
        if exc.loc is None:
            raise SpecError(f"extends: {exc.message}", loc, exc.hint) from None
        raise
    if not isinstance(base, dict):
        raise SpecError(f"{raw} is not a spec (a mapping of keys)", loc)
    check_keys(base, TOP_KEYS, f"the spec {raw}")
    base = resolve_extends(base, str(base_path), chain + (here,))
    merged = make_map(dict(base), base.loc)
    merged.key_locs, merged.value_locs = dict(base.key_locs), dict(base.value_locs)
    for key, value in doc.items():
        if key == "extends":
            continue
        if key in ("variables", "blocks") and isinstance(value, dict) and isinstance(base.get(key), dict):
            value = _merge_maps(base[key], value)
        if key in ("input", "inputs"):
            for other in ("input", "inputs"):
                merged.pop(other, None)
        if key in ("output", "outputs"):
            for other in ("output", "outputs"):
                merged.pop(other, None)
        merged[key] = value
        merged.key_locs[key], merged.value_locs[key] = doc.key_loc(key), doc.value_loc(key)
    return merged


def _merge_maps(base: SpecMap, over: SpecMap) -> SpecMap:
    out = make_map(dict(base), base.loc)
    out.key_locs, out.value_locs = dict(base.key_locs), dict(base.value_locs)
    for key, value in over.items():
        out[key] = value
        out.key_locs[key], out.value_locs[key] = over.key_loc(key), over.value_loc(key)
    return out


def read_training(doc: SpecMap, env: Env) -> dict[str, Any]:
    """The ``training:`` section: archc train's settings, numbers as expressions of the
    variables (so ``--set`` reaches them), each checked against the type the flag takes."""
    raw = doc.get("training")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SpecError("'training' must be a mapping of settings", doc.value_loc("training"),
                        "e.g. training: {epochs: 12, lr: 0.05, data: digits}")
    check_keys(raw, tuple(TRAINING_KEYS), "the training section")
    out = {}
    for key, value in raw.items():
        loc = raw.value_loc(key)
        want = TRAINING_KEYS[key]
        if want in (int, float, bool):  # numbers may be expressions; names stay text
            value = evaluate_value(value, env, loc, f"training setting '{key}'")
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if want is list and isinstance(value, str):
            value = [value]
        if not isinstance(value, want) or (want is int and isinstance(value, bool)):
            raise SpecError(f"training setting '{key}' must be {want.__name__}, got "
                            f"{type(value).__name__} {value!r}", loc)
        out[key] = value
    return out


def read_name_rules(doc: SpecMap) -> list:
    """The ``torch_names:`` section (archc.naming): PyTorch's parameter names, where the
    spec's differ."""
    from archc.naming import read_rules

    raw = doc.get("torch_names")
    if raw is None:
        return []
    return read_rules(raw, lambda key: doc.value_loc("torch_names") if key is None
                      else raw.key_loc(key))


def read_name(doc: SpecMap, file: str) -> str:
    check_keys(doc, TOP_KEYS, "the spec (top level)")
    name = doc.get("name", Path(file).stem)
    if not isinstance(name, str):
        raise SpecError("'name' must be text", doc.value_loc("name"))
    return name


def read_variables(doc: SpecMap, overrides: dict[str, Any], file: str) -> Env:
    """Evaluate the variables in order, each seeing the ones before it; an override from
    ``--set`` replaces a variable's written value before it is evaluated."""
    raw = doc.get("variables", None)
    if raw is None:
        raw = make_map({}, doc.loc)
    expect(raw, dict, doc.value_loc("variables"), "'variables'", "variables: {width: 64}")
    for key in overrides:
        if key not in raw:
            known = ", ".join(raw) or "none: this spec declares no variables"
            raise SpecError(
                f"--set {key}: the spec has no variable '{key}'",
                Loc(file),
                did_you_mean(key, raw) or f"variables you can set: {known}",
            )
    env = Env({})
    for key, value in raw.items():
        if not NAME_PATTERN.match(key) or key[0].isdigit() or "-" in key:
            raise SpecError(f"'{key}' is not a valid variable name", raw.key_loc(key),
                            "use letters, digits and _, starting with a letter")
        where = f"variable '{key}'"
        if key in overrides:
            value, where = overrides[key], f"variable '{key}' (set with --set)"
        env.values[key] = evaluate_value(value, env, raw.value_loc(key), where)
    return env


def read_blocks(doc: SpecMap) -> dict[str, SpecMap]:
    raw = doc.get("blocks", None)
    if raw is None:
        return {}
    expect(raw, dict, doc.value_loc("blocks"), "'blocks'", "blocks: {my_block: {...}}")
    blocks = {}
    for name, body in raw.items():
        loc = raw.key_loc(name)
        if is_layer(name) or name == "sequential":
            raise SpecError(f"block name '{name}' is already a layer type", loc,
                            "choose another name for the block")
        if not NAME_PATTERN.match(name):
            raise SpecError(f"'{name}' is not a valid block name", loc)
        expect(body, dict, raw.value_loc(name), f"block '{name}'", "{args: {out: ~}, layers: [...]}")
        check_keys(body, BLOCK_KEYS, f"block '{name}'")
        if "layers" not in body:
            raise SpecError(f"block '{name}' has no 'layers' list", body.loc)
        blocks[name] = body
    return blocks


def read_inputs(doc: SpecMap, env: Env) -> list[tuple[str, dict, Loc]]:
    """(name, normalised input attributes, location) of each declared input."""
    if "input" in doc and "inputs" in doc:
        raise SpecError("give either 'input' or 'inputs', not both", doc.key_loc("inputs"))
    if "input" in doc:
        declared = make_map({"input": doc["input"]}, doc.loc)
        declared.value_locs["input"] = doc.value_loc("input")
    elif "inputs" in doc:
        declared = doc["inputs"]
        expect(declared, dict, doc.value_loc("inputs"), "'inputs'",
               "inputs: {image: {channels: 3, height: 64, width: 64}}")
        if not declared:
            raise SpecError("'inputs' is empty", doc.value_loc("inputs"))
    else:
        raise SpecError("the spec does not declare its input", doc.loc,
                        "add e.g. 'input: {channels: 3, height: 224, width: 224}'")
    out = []
    for name, spec in declared.items():
        loc = declared.value_loc(name)
        if not NAME_PATTERN.match(name):
            raise SpecError(f"'{name}' is not a valid input name", declared.key_loc(name))
        expect(spec, dict, loc, f"input '{name}'", "{channels: 3, height: 32, width: 32}")
        check_keys(spec, INPUT_KEYS, f"input '{name}'")
        values = {k: evaluate_value(v, env, spec.value_loc(k), f"input '{name}' {k}")
                  for k, v in spec.items()}
        if "shape" in values or "features" in values:
            key = "shape" if "shape" in values else "features"
            if len(values) > 1:
                raise SpecError(f"give '{key}' alone, or channels/height/width", loc)
            shape = values["shape"] if key == "shape" else [values["features"]]
        else:
            missing = [k for k in ("channels", "height", "width") if k not in values]
            if missing:
                raise SpecError(f"input '{name}' is missing {', '.join(missing)}", loc,
                                "e.g. {channels: 3, height: 224, width: 224}")
            shape = [values["channels"], values["height"], values["width"]]
        try:
            attrs = get_layer("input").normalize({"shape": shape})
        except AttrError as exc:
            raise SpecError(f"input '{name}': {exc.message}", loc, exc.hint) from None
        out.append((name, attrs, loc))
    return out


def read_outputs(doc: SpecMap, key: str | None = None
                 ) -> list[tuple[str | None, Any, Loc, dict]] | None:
    """(key, reference, location, options) of each output, or None for 'the last
    entry'. A list names outputs by their references; a mapping gives each a key of its
    own (``outputs: {boxes: head.box, classes: head.cls}``) and may give one as
    ``{output: REF, when: CONDITION}`` (and, among ``training_outputs``, ``loss_weight``):
    options a caller evaluates. ``key``: read that section (``training_outputs``)."""
    if key is None:
        if "output" in doc and "outputs" in doc:
            raise SpecError("give either 'output' or 'outputs', not both", doc.key_loc("outputs"))
        key = "outputs" if "outputs" in doc else "output" if "output" in doc else None
    if key is None or key not in doc:
        return None
    allowed = ("output", "when", "loss_weight") if key == "training_outputs" else ("output", "when")
    raw = doc[key]
    if isinstance(raw, SpecMap):
        if not raw:
            raise SpecError(f"'{key}' is empty", doc.value_loc(key))
        found = []
        for name in raw:
            if not NAME_PATTERN.match(str(name)):
                raise SpecError(f"'{name}' is not a valid output name", raw.key_loc(name),
                                "output names use letters, digits, _ and -")
            value, options = raw[name], {}
            if isinstance(value, SpecMap):
                check_keys(value, allowed, f"output '{name}'")
                if "output" not in value:
                    raise SpecError(f"output '{name}' needs 'output:', the layer it is",
                                    raw.value_loc(name), f"e.g. {name}: {{output: aux.fc, "
                                    "when: aux_logits}")
                options = {k: (value[k], value.value_loc(k)) for k in value if k != "output"}
                found.append((str(name), value["output"], value.value_loc("output"), options))
            else:
                found.append((str(name), value, raw.value_loc(name), options))
        return found
    if isinstance(raw, SpecList):
        if not raw:
            raise SpecError(f"'{key}' is empty", doc.value_loc(key))
        return [(None, ref, loc, {}) for ref, loc in zip(raw, raw.item_locs)]
    return [(None, raw, doc.value_loc(key), {})]


def read_layers(doc: SpecMap) -> SpecList:
    if "layers" not in doc:
        raise SpecError("the spec has no 'layers' list", doc.loc,
                        "add 'layers:' with one entry per layer, e.g. '- conv2d: [16, 3]'")
    layers = doc["layers"]
    expect(layers, list, doc.value_loc("layers"), "'layers'", "layers: [relu]")
    if not layers:
        raise SpecError("'layers' is empty", doc.value_loc("layers"))
    return layers
