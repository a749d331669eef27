"""Expand a parsed spec into a :class:`archc.ir.Graph`: blocks, repeats, variables, names.

Entries in a ``layers`` list are expanded in order and every reference points at an
entry above it, so the graph is built in topological order and cannot contain a cycle.
See docs/spec-language.md for the language itself.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from archc.errors import Loc, SpecError, did_you_mean
from archc.ir import BlockInstance, Graph, Node
from archc.layers import AttrError, LayerType, get_layer, is_layer, user_layer_names
from archc.spec import document
from archc.spec.entry import NAME_PATTERN, Entry, call_values, check_keys, expect, parse_entry, type_name
from archc.spec.loader import SpecMap, load_yaml, load_yaml_file, make_map
from archc.spec.scope import Env, Frame, evaluate_value

MAX_NODES = 100_000
COMMA_HINT = ("inside { }, a comma ends a value: quote an expression that contains one "
              "(\"make_divisible(c * 1.5, 8)\") or write the mapping one key per line")
MAX_BLOCK_DEPTH = 32
# the names of the received shape a block sees only for some inputs (archc.spec.expand
# _received), with what they need
SHAPE_NAMES = {"in_height": "an image (channels x height x width)",
               "in_width": "an image (channels x height x width)",
               "in_features": "a vector"}


class _Expander:
    def __init__(self, doc: SpecMap, file: str, overrides: dict[str, Any]):
        self.doc = doc
        self.graph = Graph(source=file)
        self.blocks: dict[str, SpecMap] = {}
        self.file = file
        self.overrides = overrides
        self._unshaped: list[Node] = []  # nodes added since shapes were last inferred

    def run(self) -> Graph:
        doc = self.doc
        self.graph.name = document.read_name(doc, self.file)
        env = document.read_variables(doc, self.overrides, self.file)
        self.graph.variables = dict(env.values)
        self.graph.training = document.read_training(doc, env)
        self.graph.name_rules = document.read_name_rules(doc)
        self.blocks = document.read_blocks(doc)
        top = Frame(prefix="", env=env, scope=(), trace=(), block_stack=(), trainable=True,
                    items=[])
        for name, attrs, loc in document.read_inputs(doc, env):
            node = self._make_node(top, name, "input", attrs, [], loc)
            top.names[name] = node.name
            self.graph.inputs.append(node.name)
        top.items.append(self.graph.inputs[0])
        self._expand_list(document.read_layers(doc), top, sequential=False)
        outputs = document.read_outputs(doc)
        if outputs is None:
            self.graph.outputs = {top.items[-1]: top.items[-1]}
        self._outputs(outputs or (), top, env, self.graph.outputs)
        self._outputs(document.read_outputs(doc, "training_outputs") or (), top, env,
                      self.graph.train_outputs)
        clash = set(self.graph.outputs) & set(self.graph.train_outputs)
        if clash:
            name = sorted(clash)[0]
            raise SpecError(f"'{name}' is both an output and a training output",
                            doc.value_loc("training_outputs"), "give them different names")
        if self.graph.train_outputs and not self.graph.outputs:
            raise SpecError("every output is left out by its 'when'", doc.loc)
        return self.graph

    def _outputs(self, outputs, top: Frame, env: Env, into: dict) -> None:
        """Resolve the outputs read by document.read_outputs into ``into`` (key -> node),
        leaving out those whose ``when`` is false; a training output's loss weight goes
        to the graph's loss_weights."""
        for key, ref, loc, options in outputs:
            if "when" in options:
                keep = evaluate_value(options["when"][0], env, options["when"][1], "when")
                if not isinstance(keep, bool):
                    raise SpecError(f"'when' must be true or false, got {keep!r}",
                                    options["when"][1], "e.g. when: aux_logits")
                if not keep:
                    continue
            target = self._resolve_ref(ref, top, loc, None)
            key = key or (ref if isinstance(ref, str) else target)
            into[key] = target
            if into is self.graph.train_outputs:
                weight, where = options.get("loss_weight", (1.0, loc))
                weight = evaluate_value(weight, env, where, "loss_weight")
                if isinstance(weight, bool) or not isinstance(weight, (int, float)) \
                        or not weight >= 0 or weight == float("inf"):
                    raise SpecError(f"loss_weight must be a number of 0 or more, got {weight!r}",
                                    where, "e.g. loss_weight: 0.3")
                self.graph.loss_weights[key] = float(weight)

    # ------------------------------------------------------------------ lists of entries
    def _is_op(self, key: str) -> bool:
        return is_layer(key) or key in self.blocks or key == "sequential"

    def _expand_list(self, items: list, frame: Frame, sequential: bool) -> None:
        entries = [parse_entry(item, items.item_loc(i), self._is_op) for i, item in enumerate(items)]
        # Explicit names first, so automatic names never collide with them and a reference
        # to an entry further down gets a clear message.
        for entry in entries:
            if entry.name is not None:
                if entry.name in frame.pending or entry.name in frame.names or entry.name in frame.ports:
                    first = frame.pending.get(entry.name)
                    raise SpecError(
                        f"the name '{entry.name}' is used twice"
                        + (f" (first at line {first.line})" if first else ""),
                        entry.name_loc,
                        "names must be unique within one list of layers",
                    )
                frame.pending[entry.name] = entry.name_loc
        counters: dict[str, int] = {}
        kept = 0  # entries left out by 'when' take no number, as in a conditionally built nn.Sequential
        for entry in entries:
            kind, what = self._resolve_op(entry, frame)
            inputs = self._entry_inputs(entry, kind, what, frame)
            if not self._kept(entry, frame):
                output = inputs[0]  # a left-out entry passes its input through
            else:
                if entry.name is None:
                    entry.name = self._auto_name(kind, what, kept, frame, counters, sequential)
                kept += 1
                output = self._expand_entry(entry, kind, what, frame, inputs)
            if entry.name is not None:
                frame.pending.pop(entry.name, None)
                frame.names[entry.name] = output
            frame.items.append(output)

    @staticmethod
    def _auto_name(kind: str, what: Any, index: int, frame: Frame, counters: dict[str, int],
                   sequential: bool) -> str:
        taken = lambda n: n in frame.pending or n in frame.names or n in frame.ports  # noqa: E731
        if sequential and not taken(str(index)):
            return str(index)  # nn.Sequential numbering
        base = _label(kind, what)
        while True:
            count = counters.get(base, 0)
            counters[base] = count + 1
            candidate = base if count == 0 else f"{base}_{count}"
            if not taken(candidate):
                return candidate

    def _resolve_op(self, entry: Entry, frame: Frame) -> tuple[str, Any]:
        """('layer', LayerType) | ('block', name) | ('sequential', None)."""
        op = entry.op
        for _ in range(2):
            if op == "sequential":
                return "sequential", None
            if op in self.blocks:
                return "block", op
            if is_layer(op):
                layer = get_layer(op)
                if layer.internal:
                    raise SpecError(f"'{op}' cannot be used as a layer", entry.op_loc,
                                    "graph inputs are declared at the top with 'input:' or 'inputs:'")
                return "layer", layer
            # A variable or block argument may name the layer type (e.g. 'act: relu').
            if op in frame.env and isinstance(frame.env[op], str):
                op = frame.env[op]
                continue
            break
        via = f" (from '{entry.op}' = '{op}')" if op != entry.op else ""
        raise SpecError(
            f"unknown layer type '{entry.op}'{via}",
            entry.op_loc,
            did_you_mean(op, user_layer_names() + list(self.blocks) + ["sequential"])
            or "see docs/layers.md for the layer types",
        )

    @staticmethod
    def _kept(entry: Entry, frame: Frame) -> bool:
        if not entry.has_when:
            return True
        keep = evaluate_value(entry.when, frame.env, entry.when_loc, "when")
        if not isinstance(keep, bool):
            raise SpecError(f"'when' must be true or false, got {keep!r}", entry.when_loc,
                            "e.g. when: stride != 1")
        return keep

    def _expand_entry(self, entry: Entry, kind: str, what: Any, frame: Frame,
                      inputs: list[str]) -> str:
        if entry.shares is None:
            return self._expand_entry_body(entry, kind, what, frame, inputs)
        first = len(self.graph)
        output = self._expand_entry_body(entry, kind, what, frame, inputs)
        self._share(entry, frame, list(self.graph)[first:])
        return output

    def _share(self, entry: Entry, frame: Frame, made: list) -> None:
        """Point each node an entry made at its counterpart (same place in the block, or
        the layer itself) under the entry ``shares`` names; archc.shapes checks that the
        two hold parameters of the same shapes."""
        here = frame.full(entry.name)
        there = frame.full(entry.shares)
        known = there in self.graph or there in self.graph.blocks
        if not known or there == here:
            raise SpecError(f"'shares: {entry.shares}' names no earlier layer or block", entry.shares_loc,
                            did_you_mean(entry.shares, frame.visible_names())
                            or "name an entry above this one, in the same list")
        for node in made:
            rest = node.name[len(here):]
            partner = there + rest
            if partner not in self.graph or partner == node.name:
                raise SpecError(f"'{node.name}' has no counterpart '{partner}' in "
                                f"'{entry.shares}' to share weights with", entry.shares_loc,
                                "the two entries must be the same layer or block, built alike")
            owner = self.graph[partner]
            node.shares = owner.shares or owner.name

    def _expand_entry_body(self, entry: Entry, kind: str, what: Any, frame: Frame,
                           inputs: list[str]) -> str:
        trainable = frame.trainable if entry.trainable is None else entry.trainable
        repeat = self._repeat(entry, frame)
        if repeat is None:
            return self._expand_one(entry, kind, what, frame, entry.name, inputs, frame.env,
                                    trainable)
        count, var = repeat
        if len(inputs) != 1 and count > 1:
            raise SpecError("'repeat' works on entries with a single input", entry.repeat_loc,
                            "wrap multi-input layers in a block with one input")
        group = frame.full(entry.name)
        inner = dataclasses.replace(frame, scope=frame.scope + (group,))
        output = ""
        for index in range(count):
            output = self._expand_one(entry, kind, what, inner, f"{entry.name}.{index}", inputs,
                                      frame.env.child({var: index}), trainable)
            inputs = [output]
        self.graph.blocks[group] = BlockInstance(group, _label(kind, what), entry.loc, (),
                                                 output, count)
        return output

    def _repeat(self, entry: Entry, frame: Frame) -> tuple[int, str] | None:
        raw, loc, var = entry.repeat, entry.repeat_loc, "i"
        if raw is None:
            return None
        if isinstance(raw, dict):
            check_keys(raw, ("count", "index"), "'repeat'")
            if "count" not in raw:
                raise SpecError("'repeat' needs a 'count'", loc, "e.g. repeat: {count: 3, index: j}")
            var = raw.get("index", "i")
            if not isinstance(var, str) or not NAME_PATTERN.match(var):
                raise SpecError("'repeat' index must be a variable name", raw.value_loc("index"))
            raw, loc = raw["count"], raw.value_loc("count")
        count = evaluate_value(raw, frame.env, loc, "repeat")
        if isinstance(count, float) and count.is_integer():
            count = int(count)
        if isinstance(count, bool) or not isinstance(count, int):
            raise SpecError(f"repeat must be a whole number, got {count!r}", loc)
        if count < 1:
            raise SpecError(f"repeat must be at least 1, got {count}", loc,
                            "remove the entry to leave it out")
        if len(self.graph) + count > MAX_NODES:
            raise SpecError(f"repeat {count:,} would build more than {MAX_NODES:,} layers", loc,
                            "archc refuses networks this large before building them")
        return count, var

    # ------------------------------------------------------------------ inputs
    def _entry_inputs(self, entry: Entry, kind: str, what: Any, frame: Frame) -> list[str]:
        refs, locs = entry.inputs, entry.inputs_locs
        several = kind == "layer" and (what.arity[1] is None or what.arity[1] > 1)
        if several and not what.positional and entry.form == "list":
            # 'add: [a, b]': for a layer without attributes to list, the value lists its inputs
            if refs is not None:
                raise SpecError(f"'{entry.op}' is given its inputs twice: as its value and in "
                                "'inputs'", entry.inputs_loc)
            refs, locs = list(entry.value), entry.value.item_locs
            entry.form, entry.value = "none", None
        if refs is None:
            if kind == "layer" and what.arity[0] >= 2:
                what_it_does = ("merges several inputs" if what.arity[1] is None
                                else f"takes {what.arity[0]} inputs")
                raise SpecError(f"'{entry.op}' {what_it_does}: list them", entry.op_loc,
                                f"e.g. '- {entry.op}: [-1, {'shortcut' if what.arity[1] is None else 'other'}]'")
            return [frame.items[-1]]
        if not refs:
            raise SpecError("'inputs' is empty", entry.inputs_loc)
        return [self._resolve_ref(r, frame, loc, entry.name) for r, loc in zip(refs, locs)]

    def _resolve_ref(self, ref: Any, frame: Frame, loc: Loc, own: str | None) -> str:
        if isinstance(ref, bool) or not isinstance(ref, (int, str)):
            raise SpecError(f"an input is a layer name or a negative index, got {ref!r}", loc,
                            "e.g. inputs: [-1, shortcut]")
        if isinstance(ref, int):
            if ref >= 0:
                raise SpecError(f"input index {ref} must be negative: -1 is the entry just "
                                "above, -2 the one before it", loc)
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
                    "move this entry below it (graphs are written in order, so no cycle can arise)",
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

    # ------------------------------------------------------------------ one layer or block
    def _expand_one(self, entry: Entry, kind: str, what: Any, frame: Frame, local: str,
                    inputs: list[str], env: Env, trainable: bool) -> str:
        if kind == "layer":
            attrs = self._layer_attrs(entry, what, env)
            return self._make_node(frame, local, what.op, attrs, inputs, entry.loc, trainable,
                                   what, entry).name
        path = frame.full(local)
        if kind == "block":
            return self._expand_block(entry, what, frame, path, inputs, env, trainable)
        expect(entry.value, list, entry.value_loc, "'sequential'",
               "sequential: [{conv2d: [16, 3]}, relu]")
        if not entry.value:
            raise SpecError("'sequential' is empty", entry.value_loc)
        child = Frame(prefix=path + ".", env=env, scope=frame.scope + (path,), trace=frame.trace,
                      block_stack=frame.block_stack, trainable=trainable, items=list(inputs[:1]),
                      parent=frame)
        self._expand_list(entry.value, child, sequential=True)
        output = child.items[-1]
        self.graph.blocks[path] = BlockInstance(path, "sequential", entry.loc, (), output)
        return output

    def _expand_block(self, entry: Entry, block: str, frame: Frame, path: str,
                      inputs: list[str], env: Env, trainable: bool) -> str:
        body = self.blocks[block]
        if block in frame.block_stack:
            chain = " -> ".join(frame.block_stack + (block,))
            raise SpecError(f"block '{block}' uses itself ({chain})", entry.loc,
                            "a block cannot contain itself, directly or through other blocks")
        if len(frame.block_stack) >= MAX_BLOCK_DEPTH:
            raise SpecError(f"blocks are nested more than {MAX_BLOCK_DEPTH} deep", entry.loc)
        args, received = self._block_args(entry, block, body, env, inputs)
        ports = body.get("inputs", ["input"])
        ports = [ports] if isinstance(ports, str) else ports
        expect(ports, list, body.value_loc("inputs"), f"block '{block}' inputs", "inputs: [x, skip]")
        if len(ports) != len(inputs):
            raise SpecError(
                f"block '{block}' takes {len(ports)} input(s) ({', '.join(map(str, ports))}) "
                f"but is given {len(inputs)}",
                entry.inputs_loc,
            )
        layers = body["layers"]
        expect(layers, list, body.value_loc("layers"), f"block '{block}' layers", "layers: [relu]")
        if not layers:
            raise SpecError(f"block '{block}' has an empty 'layers' list", body.value_loc("layers"))
        note = f"in block '{block}' used as '{path}' at {entry.loc}"
        child = Frame(prefix=path + ".", env=Env(args, received),
                      scope=frame.scope + (path,),
                      trace=(note,) + frame.trace, block_stack=frame.block_stack + (block,),
                      trainable=trainable, items=[inputs[0]],
                      ports=dict(zip(map(str, ports), inputs)))
        try:
            self._expand_list(layers, child, sequential=False)
            output = child.items[-1]
            if "output" in body:
                output = self._resolve_ref(body["output"], child, body.value_loc("output"), None)
        except SpecError as exc:
            if note not in exc.notes:
                exc.notes.append(note)
            raise
        self.graph.blocks[path] = BlockInstance(path, block, entry.loc, tuple(args.items()), output)
        return output

    def _received(self, inputs: list[str], env: Env) -> Env:
        """What a block's body and argument defaults see besides its arguments: the global
        variables and the shapes of what it receives (``in_shape``, ``in_shapes``,
        ``in_channels``, and ``in_height``/``in_width`` of an image or ``in_features``
        of a vector), the shapes inferred now, as far as the graph is built."""
        from archc.shapes import infer_node

        for node in self._unshaped:  # in the order added: inputs first
            infer_node(self.graph, node)
        self._unshaped.clear()
        shapes = [list(self.graph[name].shape) for name in inputs]
        first = shapes[0]
        values: dict[str, Any] = {"in_shape": first, "in_shapes": shapes, "in_channels": first[0]}
        if len(first) == 3:
            values.update(in_height=first[1], in_width=first[2])
        if len(first) == 1:
            values["in_features"] = first[0]
        return Env(values, _globals(env))

    def _block_args(self, entry: Entry, block: str, body: SpecMap, env: Env,
                    inputs: list[str]) -> tuple[dict[str, Any], Env]:
        """The block's arguments, and what its body sees besides them (:meth:`_received`)."""
        declared = body.get("args", {}) or {}
        if isinstance(declared, list):
            declared = make_map({k: None for k in declared}, body.value_loc("args"))
        expect(declared, dict, body.value_loc("args"), f"block '{block}' args",
               "args: {out: ~, stride: 1}")
        for key in declared:
            if not NAME_PATTERN.match(key) or key[0].isdigit():
                raise SpecError(f"block '{block}' argument '{key}' is not a name",
                                declared.key_loc(key), COMMA_HINT)
        names = list(declared)
        if len(names) == 1 and entry.form == "list" and len(entry.value) == 1:
            # `my_block: [32]` passes 32, as `max_pool2d: [2]` does for a layer (a list of
            # one item for a list argument: `my_block: {widths: [32]}`)
            where = entry.value.item_locs[0]
            given, locs, key_locs = {names[0]: entry.value[0]}, {names[0]: where}, {}
        else:
            given, locs, key_locs = call_values(entry, names, f"block '{block}'")
        for key in given:
            if key not in declared:
                raise SpecError(
                    f"block '{block}' has no argument '{key}' (its arguments: "
                    f"{', '.join(names) or 'none'})",
                    key_locs.get(key, entry.loc),
                    # `{out: max(a, b)}`: YAML split the value at its comma
                    COMMA_HINT if not NAME_PATTERN.match(str(key)) else did_you_mean(key, names),
                )
        values: dict[str, Any] = {}
        # defaults see globals, the input's shape and earlier arguments
        received = self._received(inputs, env)
        defaults_env = Env(values, received)
        for key in names:
            if key in given:
                values[key] = evaluate_value(given[key], env, locs.get(key, entry.loc),
                                             f"argument '{key}' of block '{block}'")
            elif declared[key] is None:
                raise SpecError(f"block '{block}' needs argument '{key}'", entry.loc,
                                f"pass it as '{entry.op}: {{{key}: ...}}'")
            else:
                values[key] = evaluate_value(declared[key], defaults_env, declared.value_loc(key),
                                             f"default of argument '{key}' of block '{block}'")
        return values, received

    def _layer_attrs(self, entry: Entry, layer: LayerType, env: Env) -> dict[str, Any]:
        given, locs, key_locs = call_values(entry, list(layer.positional), f"'{layer.op}'")
        raw = {key: evaluate_value(value, env, locs.get(key, entry.loc),
                                   f"'{layer.op}' attribute '{key}'")
               for key, value in given.items()}
        try:
            return layer.normalize(raw)
        except AttrError as exc:
            if exc.attr in given and exc.attr not in layer.attr_names:
                where = key_locs[exc.attr]  # an unknown attribute: point at its name
            else:
                where = locs.get(exc.attr, entry.loc) if exc.attr else entry.loc
            hint = exc.hint
            if exc.attr in given and not NAME_PATTERN.match(str(exc.attr)):
                hint = COMMA_HINT
            if hint is None and isinstance(given.get(exc.attr), str):
                text = given[exc.attr]
                if text in env:  # the variable was found: its value is what is wrong
                    shown = repr(env[text])
                    shown = shown if len(shown) <= 60 else shown[:57] + "..."
                    hint = (f"'{text}' is {shown} here"
                            + (": a block called with a list passes it whole to a block of "
                               "one argument; give one value" if isinstance(env[text], list)
                               else ""))
                elif text in SHAPE_NAMES and "in_shape" in env:
                    received = "x".join(map(str, env["in_shape"]))
                    hint = (f"{text} is known in a block that receives {SHAPE_NAMES[text]}; "
                            f"this one receives {received}: use in_shape (a list)")
                else:
                    near = did_you_mean(text, list(env))
                    hint = near and near.replace("did you mean", "did you mean the variable")
            raise SpecError(exc.message, where, hint) from None

    def _make_node(self, frame: Frame, local: str, op: str, attrs: dict, inputs: list[str],
                   loc: Loc, trainable: bool = True, layer: LayerType | None = None,
                   entry: Entry | None = None) -> Node:
        if len(self.graph) >= MAX_NODES:
            raise SpecError(f"the network has more than {MAX_NODES:,} layers", loc,
                            "archc refuses networks this large; check repeat counts")
        if layer is not None:
            where = entry.inputs_loc if entry else loc
            low, high = layer.arity
            if len(inputs) < low or (high is not None and len(inputs) > high):
                want = (f"{low}" if low == high else f"at least {low}" if high is None
                        else f"{low} to {high}")
                raise SpecError(f"'{op}' takes {want} input(s), got {len(inputs)}", where)
            for position, allowed in layer.input_ops:
                source = self.graph[inputs[position]] if position < len(inputs) else None
                if source is not None and source.op not in allowed:
                    raise SpecError(
                        f"'{op}' input {position + 1} must be a {' or '.join(allowed)} layer, "
                        f"but '{source.name}' is {source.op}",
                        where,
                    )
        node = Node(name=frame.full(local), op=op, attrs=attrs, inputs=list(inputs), loc=loc,
                    scope=frame.scope, trainable=trainable, trace=frame.trace)
        if node.name in self.graph:
            raise SpecError(f"two layers are both named '{node.name}'", loc, "rename one of them")
        self.graph.add(node)
        self._unshaped.append(node)
        return node


def _label(kind: str, what: Any) -> str:
    return what.op if kind == "layer" else what if kind == "block" else "sequential"


def _globals(env: Env) -> Env:
    while env.parent is not None:
        env = env.parent
    return env


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Parse ``NAME=VALUE`` strings from ``--set``; values are read as YAML scalars.

    Examples
    --------
    >>> parse_overrides(["width=1.5", "variant=b3", "depth=2 * 3", "blocks=[3, 4]"])
    {'width': 1.5, 'variant': 'b3', 'depth': '2 * 3', 'blocks': [3, 4]}
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        name = name.strip()
        if not sep or not name:
            raise SpecError(f"--set expects NAME=VALUE, got '{pair}'", None,
                            "e.g. --set width_mult=0.5")
        if not text.strip():
            raise SpecError(f"--set {name}: no value given", None, f"e.g. --set {name}=2")
        try:
            value = load_yaml(text, "--set")
        except SpecError as exc:
            if re.fullmatch(r"\s*[-+]?[0-9_]+\s*", text):  # a number YAML could not take
                raise SpecError(f"--set {name}: {exc.message}", None) from None
            value = text  # not YAML: an expression or a word, resolved like any spec value
        out[name] = list(value) if isinstance(value, list) else dict(value) if isinstance(value, dict) else value
    return out


def build_graph(doc: Any, file: str = "<spec>", overrides: dict[str, Any] | None = None) -> Graph:
    """Expand parsed spec data (from :func:`archc.spec.loader.load_yaml`) into a Graph."""
    if doc is None:
        raise SpecError("the spec is empty", Loc(file),
                        "start with 'input: {channels: 1, height: 28, width: 28}' and 'layers:'")
    if not isinstance(doc, dict):
        raise SpecError(f"a spec is a mapping of keys (input, layers, ...), got {type_name(doc)}",
                        getattr(doc, "loc", Loc(file, 1, 1)))
    document.check_keys(doc, document.TOP_KEYS, "the spec (top level)")
    doc = document.resolve_extends(doc, file)
    return _Expander(doc, file, overrides or {}).run()


def load_spec(source: str | Path, overrides: dict[str, Any] | None = None, *,
              text: str | None = None) -> Graph:
    """Load a spec file (or ``text``, named ``source``) into a Graph, shapes not yet inferred.

    Examples
    --------
    >>> g = load_spec("demo.yaml", text="input: {features: 4}\\nlayers: [{linear: 2}]")
    >>> [n.name for n in g], g["linear"].attrs["out_features"]
    (['input', 'linear'], 2)
    """
    doc = load_yaml(text, str(source)) if text is not None else load_yaml_file(source)
    return build_graph(doc, str(source), overrides)
