"""Expand a parsed spec into a :class:`archc.ir.Graph`: blocks, repeats, variables, names.

The spec's top level has these keys (see docs/spec-language.md)::

    name, description, variables, input | inputs, blocks, layers, output | outputs

Entries in a ``layers`` list are expanded in order; every reference points at an
entry above it, so the graph is built in topological order and cannot have a cycle.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from archc.errors import Loc, SpecError, did_you_mean
from archc.ir import BlockInstance, Graph, Node
from archc.layers import AttrError, LayerType, get_layer, is_layer, user_layer_names
from archc.spec.loader import SpecList, SpecMap, load_yaml, load_yaml_file, make_map
from archc.spec.scope import Env, Frame, evaluate_value

MAX_NODES = 100_000
MAX_BLOCK_DEPTH = 32

TOP_KEYS = ("name", "description", "variables", "input", "inputs", "blocks", "layers",
            "output", "outputs")
ENTRY_KEYS = ("name", "input", "inputs", "repeat", "trainable", "when")
BLOCK_KEYS = ("args", "inputs", "layers", "output", "description")
INPUT_KEYS = ("channels", "height", "width", "features", "shape")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-]*$")


def _type_name(value: Any) -> str:
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


def _expect(value: Any, kind: type, loc: Loc, what: str, example: str) -> None:
    if not isinstance(value, kind):
        raise SpecError(f"{what} must be {_type_name(kind())}, got {_type_name(value)}", loc,
                        f"e.g. {example}")


def _check_keys(mapping: SpecMap, allowed: tuple[str, ...], what: str) -> None:
    for key in mapping:
        if key not in allowed:
            raise SpecError(
                f"unknown key '{key}' in {what}",
                mapping.key_loc(key),
                did_you_mean(key, allowed) or f"valid keys: {', '.join(allowed)}",
            )


class _Expander:
    def __init__(self, doc: SpecMap, file: str, overrides: dict[str, Any]):
        self.doc = doc
        self.file = file
        self.graph = Graph(source=file)
        self.blocks: dict[str, SpecMap] = {}
        self.overrides = overrides

    # ------------------------------------------------------------------ top level
    def run(self) -> Graph:
        doc = self.doc
        _check_keys(doc, TOP_KEYS, "the spec (top level)")
        name = doc.get("name", Path(self.file).stem)
        if not isinstance(name, str):
            raise SpecError("'name' must be text", doc.value_loc("name"))
        self.graph.name = name
        env = self._variables()
        self.graph.variables = dict(env.values)
        self._read_blocks()
        top = Frame(prefix="", env=env, scope=(), trace=(), block_stack=(), trainable=True,
                    items=[])
        self._inputs(top)
        if "layers" not in doc:
            raise SpecError("the spec has no 'layers' list", doc.loc,
                            "add 'layers:' with one entry per layer, e.g. '- conv2d: [16, 3]'")
        layers = doc["layers"]
        _expect(layers, list, doc.value_loc("layers"), "'layers'", "layers: [relu]")
        if not layers:
            raise SpecError("'layers' is empty", doc.value_loc("layers"))
        self._expand_list(layers, top, sequential=False)
        self._outputs(top)
        return self.graph

    def _variables(self) -> Env:
        raw = self.doc.get("variables", None)
        if raw is None:
            raw = make_map({}, self.doc.loc)
        _expect(raw, dict, self.doc.value_loc("variables"), "'variables'", "variables: {width: 64}")
        for key in self.overrides:
            if key not in raw:
                known = ", ".join(raw) or "none: this spec declares no variables"
                raise SpecError(
                    f"--set {key}: the spec has no variable '{key}'",
                    Loc(self.file),
                    did_you_mean(key, raw) or f"variables you can set: {known}",
                )
        env = Env({})
        for key, value in raw.items():
            if not _NAME.match(key) or key[0].isdigit():
                raise SpecError(f"'{key}' is not a valid variable name", raw.key_loc(key),
                                "use letters, digits and _, starting with a letter")
            if key in self.overrides:
                value = self.overrides[key]
                where = f"variable '{key}' (set with --set)"
            else:
                where = f"variable '{key}'"
            env.values[key] = evaluate_value(value, env, raw.value_loc(key), where)
        return env

    def _read_blocks(self) -> None:
        raw = self.doc.get("blocks", None)
        if raw is None:
            return
        _expect(raw, dict, self.doc.value_loc("blocks"), "'blocks'", "blocks: {my_block: {...}}")
        for name, body in raw.items():
            loc = raw.key_loc(name)
            if is_layer(name) or name == "sequential":
                raise SpecError(f"block name '{name}' is already a layer type", loc,
                                "choose another name for the block")
            if not _NAME.match(name):
                raise SpecError(f"'{name}' is not a valid block name", loc)
            _expect(body, dict, raw.value_loc(name), f"block '{name}'",
                    "{args: {out: ~}, layers: [...]}")
            _check_keys(body, BLOCK_KEYS, f"block '{name}'")
            if "layers" not in body:
                raise SpecError(f"block '{name}' has no 'layers' list", body.loc)
            self.blocks[name] = body

    def _inputs(self, top: Frame) -> None:
        doc = self.doc
        if "input" in doc and "inputs" in doc:
            raise SpecError("give either 'input' or 'inputs', not both", doc.key_loc("inputs"))
        if "input" in doc:
            declared = make_map({"input": doc["input"]}, doc.loc)
            declared.value_locs["input"] = doc.value_loc("input")
        elif "inputs" in doc:
            declared = doc["inputs"]
            _expect(declared, dict, doc.value_loc("inputs"), "'inputs'",
                    "inputs: {image: {channels: 3, height: 64, width: 64}}")
            if not declared:
                raise SpecError("'inputs' is empty", doc.value_loc("inputs"))
        else:
            raise SpecError("the spec does not declare its input", doc.loc,
                            "add e.g. 'input: {channels: 3, height: 224, width: 224}'")
        for name, spec in declared.items():
            loc = declared.value_loc(name)
            _expect(spec, dict, loc, f"input '{name}'", "{channels: 3, height: 32, width: 32}")
            _check_keys(spec, INPUT_KEYS, f"input '{name}'")
            values = {k: evaluate_value(v, top.env, spec.value_loc(k), f"input '{name}' {k}")
                      for k, v in spec.items()}
            if "shape" in values:
                if len(values) > 1:
                    raise SpecError("give 'shape' alone, or channels/height/width", loc)
                shape = values["shape"]
            elif "features" in values:
                if len(values) > 1:
                    raise SpecError("give 'features' alone, or channels/height/width", loc)
                shape = [values["features"]]
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
            node = self._make_node(top, name, "input", attrs, [], loc)
            top.names[name] = node.name
            self.graph.inputs.append(node.name)
        top.items.append(self.graph.inputs[0])

    def _outputs(self, top: Frame) -> None:
        doc = self.doc
        if "output" in doc and "outputs" in doc:
            raise SpecError("give either 'output' or 'outputs', not both", doc.key_loc("outputs"))
        key = "outputs" if "outputs" in doc else "output" if "output" in doc else None
        if key is None:
            last = top.items[-1]
            self.graph.outputs = {last: last}
            return
        raw = doc[key]
        refs = raw if isinstance(raw, list) else [raw]
        locs = raw.item_locs if isinstance(raw, SpecList) else [doc.value_loc(key)]
        for ref, loc in zip(refs, locs):
            target = self._resolve_ref(ref, top, loc, None)
            label = ref if isinstance(ref, str) else target
            self.graph.outputs[label] = target

    # ------------------------------------------------------------------ entries
    def _expand_list(self, entries: list, frame: Frame, sequential: bool) -> None:
        parsed = [self._parse_entry(item, entries.item_loc(i)) for i, item in enumerate(entries)]
        # Explicit names first, so automatic names never collide and forward references
        # get a clear message.
        for entry in parsed:
            if entry["name"] is not None:
                name, loc = entry["name"], entry["name_loc"]
                if name in frame.pending or name in frame.names or name in frame.ports:
                    first = frame.pending.get(name)
                    raise SpecError(
                        f"the name '{name}' is used twice"
                        + (f" (first at line {first.line})" if first else ""),
                        loc,
                        "names must be unique within one list of layers",
                    )
                frame.pending[name] = loc
        counters: dict[str, int] = {}
        for index, entry in enumerate(parsed):
            if entry["name"] is None:
                entry["name"] = self._auto_name(entry, index, frame, counters, sequential)
            frame.pending.pop(entry["name"], None)
            output = self._expand_entry(entry, frame)
            frame.names[entry["name"]] = output
            frame.items.append(output)

    def _auto_name(self, entry: dict, index: int, frame: Frame, counters: dict[str, int],
                   sequential: bool) -> str:
        if sequential:
            base = str(index)
            if base not in frame.pending and base not in frame.names:
                return base
        kind, what = self._resolve_op(entry, frame)
        base = what.op if kind == "layer" else what if kind == "block" else "sequential"
        while True:
            count = counters.get(base, 0)
            counters[base] = count + 1
            candidate = base if count == 0 else f"{base}_{count}"
            if (candidate not in frame.pending and candidate not in frame.names
                    and candidate not in frame.ports):
                return candidate

    def _parse_entry(self, item: Any, loc: Loc) -> dict:
        entry = {"name": None, "name_loc": loc, "inputs": None, "inputs_loc": loc,
                 "repeat": None, "repeat_loc": loc, "trainable": None, "loc": loc,
                 "value": None, "value_loc": loc, "form": "none"}
        if isinstance(item, str):
            entry.update(op=item, op_loc=loc)
            return entry
        if not isinstance(item, dict):
            raise SpecError(
                f"a layer entry must be a layer name or a mapping, got {_type_name(item)}",
                loc,
                "write e.g. '- relu' or '- conv2d: {out_channels: 16, kernel_size: 3}'",
            )
        ops = [k for k in item if k not in ENTRY_KEYS]
        if not ops:
            raise SpecError("this entry names no layer type", loc,
                            f"an entry needs a layer key such as conv2d, next to {', '.join(item)}")
        if len(ops) > 1:
            keys = [k for k in ops if is_layer(k) or k in self.blocks]
            if len(keys) >= 2:
                raise SpecError(
                    f"one entry holds two layers, '{keys[0]}' and '{keys[1]}'",
                    item.key_loc(keys[1]),
                    "start each layer on its own '- ' line",
                )
            bad = next(k for k in ops if k not in keys)
            raise SpecError(f"unknown key '{bad}' in a layer entry", item.key_loc(bad),
                            did_you_mean(bad, ENTRY_KEYS + tuple(ops))
                            or f"entry keys are {', '.join(ENTRY_KEYS)}, plus one layer type")
        op = ops[0]
        value = item[op]
        form = ("mapping" if isinstance(value, dict) else "list" if isinstance(value, list)
                else "none" if value is None else "scalar")
        entry.update(op=op, op_loc=item.key_loc(op), value=value, value_loc=item.value_loc(op),
                     form=form, loc=item.key_loc(op))
        if "input" in item and "inputs" in item:
            raise SpecError("give either 'input' or 'inputs', not both", item.key_loc("inputs"))
        for key in ("input", "inputs"):
            if key in item:
                refs = item[key]
                entry["inputs"] = refs if isinstance(refs, list) else [refs]
                entry["inputs_loc"] = item.value_loc(key)
                entry["inputs_locs"] = (refs.item_locs if isinstance(refs, SpecList)
                                        else [item.value_loc(key)])
        if "name" in item:
            name = item["name"]
            if isinstance(name, int) and not isinstance(name, bool):
                name = str(name)
            if not isinstance(name, str) or not _NAME.match(name):
                raise SpecError(
                    f"invalid layer name {name!r}", item.value_loc("name"),
                    "names use letters, digits, _ and -; dots are reserved for block paths",
                )
            entry["name"], entry["name_loc"] = name, item.value_loc("name")
        if "repeat" in item:
            entry["repeat"], entry["repeat_loc"] = item["repeat"], item.value_loc("repeat")
        if "when" in item:
            entry["when"], entry["when_loc"] = item["when"], item.value_loc("when")
        if "trainable" in item:
            if not isinstance(item["trainable"], bool):
                raise SpecError("'trainable' must be true or false", item.value_loc("trainable"))
            entry["trainable"] = item["trainable"]
        return entry

    def _resolve_op(self, entry: dict, frame: Frame) -> tuple[str, Any]:
        """('layer', LayerType) | ('block', name) | ('sequential', None)."""
        op = entry["op"]
        for _ in range(2):
            if op == "sequential":
                return "sequential", None
            if op in self.blocks:
                return "block", op
            if is_layer(op):
                layer = get_layer(op)
                if layer.internal:
                    raise SpecError(
                        f"'{op}' cannot be used as a layer",
                        entry["op_loc"],
                        "graph inputs are declared at the top with 'input:' or 'inputs:'",
                    )
                return "layer", layer
            # A variable or block argument may name the layer type (e.g. 'act: relu').
            if op in frame.env and isinstance(frame.env[op], str):
                op = frame.env[op]
                continue
            break
        candidates = user_layer_names() + list(self.blocks) + ["sequential"]
        raise SpecError(
            f"unknown layer type '{entry['op']}'" + (f" (from '{entry['op']}' = '{op}')"
                                                     if op != entry["op"] else ""),
            entry["op_loc"],
            did_you_mean(op, candidates) or "see docs/layers.md for the layer types",
        )

    def _repeat(self, entry: dict, frame: Frame) -> tuple[int, str] | None:
        raw = entry["repeat"]
        if raw is None:
            return None
        loc = entry["repeat_loc"]
        var = "i"
        if isinstance(raw, dict):
            _check_keys(raw, ("count", "index"), "'repeat'")
            if "count" not in raw:
                raise SpecError("'repeat' needs a 'count'", loc, "e.g. repeat: {count: 3, index: j}")
            var = raw.get("index", "i")
            if not isinstance(var, str) or not _NAME.match(var):
                raise SpecError("'repeat' index must be a variable name", raw.value_loc("index"))
            loc = raw.value_loc("count")
            raw = raw["count"]
        count = evaluate_value(raw, frame.env, loc, "repeat")
        if isinstance(count, float) and count.is_integer():
            count = int(count)
        if isinstance(count, bool) or not isinstance(count, int):
            raise SpecError(f"repeat must be a whole number, got {count!r}", loc)
        if count < 1:
            raise SpecError(f"repeat must be at least 1, got {count}", loc,
                            "remove the entry to leave it out")
        if count > MAX_NODES or len(self.graph) + count > MAX_NODES:
            raise SpecError(
                f"repeat {count:,} would build more than {MAX_NODES:,} layers", loc,
                "archc refuses networks this large before building them",
            )
        return count, var

    def _expand_entry(self, entry: dict, frame: Frame) -> str:
        kind, what = self._resolve_op(entry, frame)
        inputs = self._entry_inputs(entry, kind, what, frame)
        if "when" in entry:
            keep = evaluate_value(entry["when"], frame.env, entry["when_loc"], "when")
            if not isinstance(keep, bool):
                raise SpecError(f"'when' must be true or false, got {keep!r}", entry["when_loc"],
                                "e.g. when: stride != 1")
            if not keep:
                return inputs[0]  # a left-out entry passes its input through
        repeat = self._repeat(entry, frame)
        trainable = frame.trainable if entry["trainable"] is None else entry["trainable"]
        if repeat is None:
            return self._expand_one(entry, kind, what, frame, entry["name"], inputs, frame.env,
                                    trainable)
        count, var = repeat
        if len(inputs) != 1 and count > 1:
            raise SpecError("'repeat' works on entries with a single input", entry["repeat_loc"],
                            "wrap multi-input layers in a block with one input")
        group = frame.full(entry["name"])
        inner = dataclasses.replace(frame, scope=frame.scope + (group,))
        output = ""
        for index in range(count):
            env = frame.env.child({var: index})
            output = self._expand_one(entry, kind, what, inner, f"{entry['name']}.{index}",
                                      inputs, env, trainable)
            inputs = [output]
        label = what.op if kind == "layer" else what if kind == "block" else "sequential"
        self.graph.blocks[group] = BlockInstance(group, label, entry["loc"], (), output, count)
        return output

    def _entry_inputs(self, entry: dict, kind: str, what: Any, frame: Frame) -> list[str]:
        refs, locs = entry["inputs"], entry.get("inputs_locs")
        variadic = kind == "layer" and (what.arity[1] is None or what.arity[1] > 1)
        if kind == "layer" and what.arity[1] is None and entry["form"] == "list":
            if refs is not None:
                raise SpecError(
                    f"'{entry['op']}' is given its inputs twice: as its value and in 'inputs'",
                    entry["inputs_loc"],
                )
            refs, locs = entry["value"], entry["value"].item_locs
            entry["form"], entry["value"] = "none", None
        if refs is None:
            if variadic:
                raise SpecError(
                    f"'{entry['op']}' merges several inputs: list them",
                    entry["op_loc"],
                    f"e.g. '- {entry['op']}: [-1, shortcut]'",
                )
            return [frame.items[-1]]
        if not refs:
            raise SpecError("'inputs' is empty", entry["inputs_loc"])
        return [self._resolve_ref(r, frame, loc, entry["name"]) for r, loc in zip(refs, locs)]

    def _resolve_ref(self, ref: Any, frame: Frame, loc: Loc, own: str | None) -> str:
        if isinstance(ref, bool) or not isinstance(ref, (int, str)):
            raise SpecError(f"an input is a layer name or a negative index, got {ref!r}", loc,
                            "e.g. inputs: [-1, shortcut]")
        if isinstance(ref, int):
            if ref >= 0:
                raise SpecError(
                    f"input index {ref} must be negative: -1 is the entry just above, "
                    "-2 the one before it",
                    loc,
                )
            available = len(frame.items)
            if -ref > available:
                raise SpecError(
                    f"input {ref} reaches {-ref} entries back, but only {available} "
                    f"{'is' if available == 1 else 'are'} above (the list's input counts as one)",
                    loc,
                )
            return frame.items[ref]
        if ref == own:
            raise SpecError(f"layer '{ref}' uses itself as its input (a cycle)", loc,
                            "an input must be a layer above this one")
        f: Frame | None = frame
        while f is not None:
            if ref in f.names:
                return f.names[ref]
            if ref in f.ports:
                return f.ports[ref]
            if ref in f.pending:
                raise SpecError(
                    f"'{ref}' is defined below this entry (line {f.pending[ref].line}); "
                    "inputs must come from layers above",
                    loc,
                    "move this entry below it (graphs are written in order, so no cycle "
                    "can arise)",
                )
            head = ref.split(".", 1)[0]
            if "." in ref and head in f.names:
                full = f.full(ref)
                if full in self.graph:
                    return full
                if full in self.graph.blocks:
                    return self.graph.blocks[full].output
                inner = [n[len(f.prefix):] for n in self.graph.nx if n.startswith(f.full(head) + ".")]
                raise SpecError(f"'{head}' has no layer '{ref[len(head) + 1:]}'", loc,
                                did_you_mean(ref, inner))
            f = f.parent
        raise SpecError(f"input '{ref}' is not defined", loc,
                        did_you_mean(ref, frame.visible_names())
                        or "an input is a layer name from this list or a negative index")

    # ------------------------------------------------------------------ one layer/block
    def _expand_one(self, entry: dict, kind: str, what: Any, frame: Frame, local: str,
                    inputs: list[str], env: Env, trainable: bool) -> str:
        if kind == "layer":
            attrs = self._layer_attrs(entry, what, env)
            node = self._make_node(frame, local, what.op, attrs, inputs, entry["loc"],
                                   trainable=trainable, layer=what, entry=entry)
            return node.name
        path = frame.full(local)
        if kind == "sequential":
            body = entry["value"]
            _expect(body, list, entry["value_loc"], "'sequential'", "sequential: [conv2d: [16, 3], relu]")
            if not body:
                raise SpecError("'sequential' is empty", entry["value_loc"])
            child = Frame(prefix=path + ".", env=env, scope=frame.scope + (path,),
                          trace=frame.trace, block_stack=frame.block_stack, trainable=trainable,
                          items=list(inputs[:1]), parent=frame)
            self._expand_list(body, child, sequential=True)
            output = child.items[-1]
            self.graph.blocks[path] = BlockInstance(path, "sequential", entry["loc"], (), output)
            return output
        return self._expand_block(entry, what, frame, path, inputs, env, trainable)

    def _expand_block(self, entry: dict, block: str, frame: Frame, path: str,
                      inputs: list[str], env: Env, trainable: bool) -> str:
        body = self.blocks[block]
        loc = entry["loc"]
        if block in frame.block_stack:
            chain = " -> ".join(frame.block_stack + (block,))
            raise SpecError(f"block '{block}' uses itself ({chain})", loc,
                            "a block cannot contain itself, directly or through other blocks")
        if len(frame.block_stack) >= MAX_BLOCK_DEPTH:
            raise SpecError(f"blocks are nested more than {MAX_BLOCK_DEPTH} deep", loc)
        args = self._block_args(entry, block, body, env)
        ports = body.get("inputs", ["input"])
        if isinstance(ports, str):
            ports = [ports]
        _expect(ports, list, body.value_loc("inputs"), f"block '{block}' inputs", "inputs: [x, skip]")
        if len(ports) != len(inputs):
            raise SpecError(
                f"block '{block}' takes {len(ports)} input(s) ({', '.join(map(str, ports))}) "
                f"but is given {len(inputs)}",
                entry["inputs_loc"],
            )
        note = f"in block '{block}' used as '{path}' at {loc}"
        child = Frame(prefix=path + ".", env=Env(args, self._globals(env)),
                      scope=frame.scope + (path,), trace=(note,) + frame.trace,
                      block_stack=frame.block_stack + (block,), trainable=trainable,
                      items=[inputs[0]], ports=dict(zip(map(str, ports), inputs)))
        layers = body["layers"]
        _expect(layers, list, body.value_loc("layers"), f"block '{block}' layers", "layers: [relu]")
        if not layers:
            raise SpecError(f"block '{block}' has an empty 'layers' list", body.value_loc("layers"))
        try:
            self._expand_list(layers, child, sequential=False)
            output = child.items[-1]
            if "output" in body:
                output = self._resolve_ref(body["output"], child, body.value_loc("output"), None)
        except SpecError as exc:
            if note not in exc.notes:
                exc.notes.append(note)
            raise
        self.graph.blocks[path] = BlockInstance(path, block, loc, tuple(args.items()), output)
        return output

    def _globals(self, env: Env) -> Env:
        while env.parent is not None:
            env = env.parent
        return env

    def _block_args(self, entry: dict, block: str, body: SpecMap, env: Env) -> dict[str, Any]:
        declared = body.get("args", {}) or {}
        if isinstance(declared, list):
            declared = make_map({k: None for k in declared}, body.value_loc("args"))
        _expect(declared, dict, body.value_loc("args"), f"block '{block}' args", "args: {out: ~, stride: 1}")
        names = list(declared)
        given, locs = self._call_values(entry, names, f"block '{block}'")
        for key in given:
            if key not in declared:
                where = (entry["value"].key_loc(key) if entry["form"] == "mapping"
                         else locs.get(key, entry["loc"]))
                raise SpecError(
                    f"block '{block}' has no argument '{key}' (its arguments: "
                    f"{', '.join(names) or 'none'})",
                    where,
                    did_you_mean(key, names),
                )
        values: dict[str, Any] = {}
        genv = Env(values, self._globals(env))
        for key in names:
            if key in given:
                values[key] = evaluate_value(given[key], env, locs.get(key, entry["loc"]),
                                             f"argument '{key}' of block '{block}'")
            elif declared[key] is None:
                raise SpecError(
                    f"block '{block}' needs argument '{key}'",
                    entry["loc"],
                    f"pass it as '{entry['op']}: {{{key}: ...}}'",
                )
            else:
                values[key] = evaluate_value(declared[key], genv, declared.value_loc(key),
                                             f"default of argument '{key}' of block '{block}'")
        return values

    def _call_values(self, entry: dict, positional: list[str], what: str
                     ) -> tuple[dict[str, Any], dict[str, Loc]]:
        value, form, loc = entry["value"], entry["form"], entry["value_loc"]
        if form == "mapping":
            return dict(value), {k: value.value_loc(k) for k in value}
        if form == "none":
            return {}, {}
        items = list(value) if form == "list" else [value]
        item_locs = value.item_locs if form == "list" else [loc]
        if form == "list" and len(positional) == 1:
            return {positional[0]: value}, {positional[0]: loc}
        if len(items) > len(positional):
            raise SpecError(
                f"{what} takes at most {len(positional)} values in a list "
                f"({', '.join(positional) or 'none'}), got {len(items)}",
                loc,
                "use a mapping to name the attributes",
            )
        return dict(zip(positional, items)), dict(zip(positional, item_locs))

    def _layer_attrs(self, entry: dict, layer: LayerType, env: Env) -> dict[str, Any]:
        given, locs = self._call_values(entry, list(layer.positional), f"'{layer.op}'")
        raw = {}
        for key, value in given.items():
            raw[key] = evaluate_value(value, env, locs.get(key, entry["loc"]),
                                      f"'{layer.op}' attribute '{key}'")
        try:
            return layer.normalize(raw)
        except AttrError as exc:
            where = locs.get(exc.attr) if exc.attr else None
            if entry["form"] == "mapping" and exc.attr in given and exc.attr not in layer.attr_names:
                where = entry["value"].key_loc(exc.attr)
            hint = exc.hint
            if hint is None and exc.attr in given and isinstance(given[exc.attr], str):
                hint = did_you_mean(given[exc.attr], list(env))
                hint = hint and hint.replace("did you mean", "did you mean the variable")
            raise SpecError(exc.message, where or entry["loc"], hint) from None

    def _make_node(self, frame: Frame, local: str, op: str, attrs: dict, inputs: list[str],
                   loc: Loc, trainable: bool = True,
                   layer: LayerType | None = None, entry: dict | None = None) -> Node:
        if len(self.graph) >= MAX_NODES:
            raise SpecError(f"the network has more than {MAX_NODES:,} layers", loc,
                            "archc refuses networks this large; check repeat counts")
        if layer is not None:
            low, high = layer.arity
            if len(inputs) < low or (high is not None and len(inputs) > high):
                want = (f"{low}" if low == high else f"at least {low}" if high is None
                        else f"{low} to {high}")
                raise SpecError(
                    f"'{op}' takes {want} input(s), got {len(inputs)}",
                    entry["inputs_loc"] if entry else loc,
                )
            for position, allowed in layer.input_ops:
                if position < len(inputs) and self.graph[inputs[position]].op not in allowed:
                    source = self.graph[inputs[position]]
                    raise SpecError(
                        f"'{op}' input {position + 1} must be a {' or '.join(allowed)} layer, "
                        f"but '{source.name}' is {source.op}",
                        entry["inputs_loc"] if entry else loc,
                    )
        node = Node(name=frame.full(local), op=op, attrs=attrs, inputs=list(inputs), loc=loc,
                    scope=frame.scope, trainable=trainable, trace=frame.trace)
        if node.name in self.graph:
            raise SpecError(f"two layers are both named '{node.name}'", loc,
                            "rename one of them")
        self.graph.add(node)
        return node


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Parse ``NAME=VALUE`` strings from ``--set``; values are read as YAML scalars.

    Examples
    --------
    >>> parse_overrides(["width=1.5", "variant=b3", "depth=2 * 3"])
    {'width': 1.5, 'variant': 'b3', 'depth': '2 * 3'}
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise SpecError(f"--set expects NAME=VALUE, got '{pair}'", None,
                            "e.g. --set width_mult=0.5")
        try:
            value = load_yaml(text, "--set") if text.strip() else None
        except SpecError:
            value = text
        if isinstance(value, (dict, list)):
            value = text
        if value is None:
            raise SpecError(f"--set {name}: no value given", None, f"e.g. --set {name}=2")
        out[name] = value
    return out


def build_graph(doc: Any, file: str = "<spec>", overrides: dict[str, Any] | None = None) -> Graph:
    """Expand parsed spec data (from :func:`archc.spec.loader.load_yaml`) into a Graph."""
    if doc is None:
        raise SpecError("the spec is empty", Loc(file),
                        "start with 'input: {channels: 1, height: 28, width: 28}' and 'layers:'")
    if not isinstance(doc, dict):
        raise SpecError(f"a spec is a mapping of keys (input, layers, ...), got {_type_name(doc)}",
                        getattr(doc, "loc", Loc(file, 1, 1)))
    return _Expander(doc, file, overrides or {}).run()


def load_spec(source: str | Path, overrides: dict[str, Any] | None = None, *,
              text: str | None = None) -> Graph:
    """Load a spec file (or ``text``, named ``source``) into a Graph, shapes not yet inferred."""
    if text is not None:
        doc = load_yaml(text, str(source))
    else:
        doc = load_yaml_file(source)
    return build_graph(doc, str(source), overrides)
