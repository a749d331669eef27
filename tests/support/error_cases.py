"""Every kind of user error archc reports, with the spec that triggers it.

One table feeds two consumers: ``tests/cli/test_errors.py`` checks each message, line and
column; ``scripts/gen_docs.py`` runs them through ``archc check`` and writes
``docs/errors.md`` with the exact text archc prints (a test keeps that file current).
"""

from __future__ import annotations

from dataclasses import dataclass

HEAD = "input: {channels: 3, height: 32, width: 32}\nlayers:\n"


@dataclass(frozen=True)
class ErrorCase:
    kind: str
    title: str
    spec: str | bytes
    line: int | None  # expected 1-based line (None: no location)
    column: int | None
    message: str  # a substring of the error line
    args: tuple[str, ...] = ()
    hint: str | None = None  # a substring of the hint line


CASES = [
    ErrorCase("attribute-beside-layer", "A layer's attribute written beside it",
              HEAD + "  - relu\n  - concat: [-1, -2]\n    dim: 1\n",
              5, 5, "unknown key 'dim' in a layer entry",
              hint="'dim' is an attribute of concat: put it in concat's mapping"),
    ErrorCase("yaml-syntax", "YAML syntax error",
              HEAD + "  - conv2d: {out_channels: 8, kernel_size: 3\n  - relu\n",
              5, 1, "expected ',' or '}'"),
    ErrorCase("yaml-colon", "A layer with a name but no colon after its type",
              HEAD + "  - relu\n    name: act\n", 4, 9, "mapping values are not allowed",
              hint="'- relu:'"),
    ErrorCase("yaml-tab", "A tab in the indentation",
              HEAD + "\t- relu\n", 3, 1, "YAML syntax error", hint="spaces, not tabs"),
    ErrorCase("empty-file", "An empty file", "", None, None, "the spec is empty"),
    ErrorCase("not-utf8", "A file that is not UTF-8 text",
              (HEAD + "  - relu  # caf\xe9\n").encode("latin-1"), 3, 16, "not valid UTF-8"),
    ErrorCase("alias-bomb", "YAML aliases that expand to an enormous document",
              "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
              + "".join(f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
                        for p, c in zip("abcdef", "bcdefg")),
              6, 4, "expands to more than 200,000 values"),
    ErrorCase("unsafe-tag", "A Python object tag",
              HEAD + "  - !!python/object/apply:os.system ['echo hi']\n", 3, 5,
              "cannot read value: the tag 'tag:yaml.org,2002:python/object/apply:os.system'"),
    ErrorCase("duplicate-key", "The same key twice in a mapping",
              HEAD + "  - conv2d: {out_channels: 8, kernel_size: 3, out_channels: 4}\n", 3, 47,
              "duplicate key 'out_channels'"),
    ErrorCase("top-level-key", "An unknown top-level key",
              "input: {channels: 3, height: 32, width: 32}\nlayer:\n  - relu\n", 2, 1,
              "unknown key 'layer'", hint="did you mean 'layers'?"),
    ErrorCase("no-input", "No input declared", "layers:\n  - relu\n", 1, 1,
              "does not declare its input"),
    ErrorCase("unknown-layer", "An unknown layer type",
              HEAD + "  - conv2: {out_channels: 8, kernel_size: 3}\n", 3, 5,
              "unknown layer type 'conv2'", hint="did you mean 'conv2d'?"),
    ErrorCase("unknown-attribute", "An unknown attribute",
              HEAD + "  - conv2d: {out_channels: 8, kernel: 3}\n", 3, 31,
              "'conv2d' has no attribute 'kernel'", hint="did you mean 'kernel_size'?"),
    ErrorCase("missing-attribute", "A required attribute left out",
              HEAD + "  - conv2d: {out_channels: 8}\n", 3, 5,
              "'conv2d' needs attribute 'kernel_size'"),
    ErrorCase("wrong-type", "A value of the wrong type",
              HEAD + "  - conv2d: {out_channels: 8, kernel_size: three}\n", 3, 44,
              "attribute 'kernel_size': expected an integer, got the text 'three'"),
    ErrorCase("bad-choice", "A value outside the allowed choices",
              HEAD + "  - upsample: {scale_factor: 2, mode: bilinaer}\n", 3, 39,
              "expected one of nearest, bilinear", hint="did you mean 'bilinear'?"),
    ErrorCase("fractional-channels", "An expression giving a fraction where a count is needed",
              "variables: {width: 0.75}\n" + HEAD + "  - conv2d: {out_channels: 10 * width, kernel_size: 3}\n",
              4, 28, "expected an integer, got 7.5", hint="make_divisible"),
    ErrorCase("undefined-variable", "An undefined variable in an expression",
              "variables: {width: 16}\n" + HEAD + "  - conv2d: {out_channels: widht * 2, kernel_size: 3}\n",
              4, 28, "undefined name 'widht'", hint="did you mean 'width'?"),
    ErrorCase("bad-expression", "A construct the expression language does not allow",
              "variables: {n: \"().__class__\"}\n" + HEAD + "  - relu\n", 1, 16,
              "is not allowed in a spec expression"),
    ErrorCase("division-by-zero", "Division by zero in an expression",
              "variables: {a: 0, b: 8 // a}\n" + HEAD + "  - relu\n", 1, 22, "division by zero"),
    ErrorCase("huge-number", "A number too large to be a spec value",
              "variables: {a: 10 ** 10 ** 10}\n" + HEAD + "  - relu\n", 1, 16, "too large"),
    ErrorCase("unknown-set", "--set names a variable the spec does not have",
              "variables: {width: 16}\n" + HEAD + "  - relu\n", None, None,
              "the spec has no variable 'widht'", args=("--set", "widht=8"),
              hint="did you mean 'width'?"),
    ErrorCase("bad-set", "--set without NAME=VALUE",
              HEAD + "  - relu\n", None, None, "--set expects NAME=VALUE", args=("--set", "width")),
    ErrorCase("undefined-input", "An input that does not exist",
              HEAD + "  - conv2d: [8, 3]\n    name: conv\n  - add: [-1, cnov]\n", 5, 15,
              "input 'cnov' is not defined", hint="did you mean 'conv'?"),
    ErrorCase("index-out-of-range", "A relative index reaching before the first layer",
              HEAD + "  - relu:\n    input: -3\n", 4, 12, "reaches 3 entries back"),
    ErrorCase("positive-index", "A positive relative index",
              HEAD + "  - relu:\n    input: 1\n", 4, 12, "must be negative"),
    ErrorCase("self-cycle", "A layer that feeds itself (a cycle)",
              HEAD + "  - relu:\n    name: act\n    input: act\n", 5, 12,
              "'act' uses itself as its input"),
    ErrorCase("forward-reference", "An input defined further down (a cycle or a typo in order)",
              HEAD + "  - add: [-1, later]\n  - relu:\n    name: later\n", 3, 15,
              "'later' is defined below this entry"),
    ErrorCase("recursive-block", "A block that uses itself",
              "blocks:\n  a: {layers: [b]}\n  b: {layers: [relu, a]}\n" + HEAD + "  - a\n",
              3, 22, "block 'a' uses itself (a -> b -> a)"),
    ErrorCase("duplicate-name", "Two layers with the same name",
              HEAD + "  - relu:\n    name: act\n  - relu:\n    name: act\n", 6, 11,
              "the name 'act' is used twice"),
    ErrorCase("missing-block-arg", "A block used without a required argument",
              "blocks:\n  unit:\n    args: {out: ~}\n    layers: [{conv2d: [out, 3]}]\n"
              + HEAD + "  - unit\n", 7, 5, "block 'unit' needs argument 'out'"),
    ErrorCase("unknown-block-arg", "A block given an argument it does not have",
              "blocks:\n  unit:\n    args: {out: ~}\n    layers: [{conv2d: [out, 3]}]\n"
              + HEAD + "  - unit: {out: 8, stirde: 2}\n", 7, 20,
              "block 'unit' has no argument 'stirde'"),
    ErrorCase("channel-mismatch-add", "Adding tensors with different channels",
              HEAD + "  - conv2d: [8, 3, 1, 1]\n  - conv2d: [16, 3, 1, 1]\n  - add: [-1, -2]\n",
              5, 5, "input 2 of 2 'conv2d' (8x32x32): expected 16x32x32 (the shape of input 1), got 8x32x32"),
    ErrorCase("channel-mismatch-concat", "Concatenating maps of different sizes",
              HEAD + "  - conv2d: [8, 3, 1, 1]\n    name: a\n  - max_pool2d: 2\n"
              "  - concat: [a, -1]\n", 6, 5, "cannot be concatenated along dim 1"),
    ErrorCase("in-channels", "A declared in_channels that disagrees with the input",
              HEAD + "  - conv2d: {in_channels: 4, out_channels: 8, kernel_size: 3}\n", 3, 5,
              "in_channels is 4 but the input has 3 channels"),
    ErrorCase("shrinks-to-zero", "A feature map that shrinks to nothing",
              HEAD + "  - max_pool2d: 2\n    repeat: 6\n", 3, 5,
              "the 2x2 window does not fit in the 1x1 input"),
    ErrorCase("linear-on-map", "A linear layer on a feature map (missing flatten)",
              HEAD + "  - linear: 10\n", 3, 5, "'linear' expects a flat vector",
              hint="add a 'flatten'"),
    ErrorCase("merge-without-inputs", "A merge layer with no inputs listed",
              HEAD + "  - add\n", 3, 5, "'add' merges several inputs: list them"),
    ErrorCase("comma-in-flow-mapping", "An unquoted comma inside { } splitting an expression",
              "blocks:\n  unit:\n    args: {c: ~, width: max(c, 8)}\n    layers: [{conv2d: [width, 1]}]\n"
              + HEAD + "  - unit: {c: 4}\n", 3, 32, "block 'unit' argument '8)' is not a name",
              hint="quote an expression"),
    ErrorCase("absurd-repeat", "A repeat count far beyond any real network",
              HEAD + "  - relu:\n    repeat: 1000000000\n", 4, 13,
              "repeat 1,000,000,000 would build more than 100,000 layers"),
    ErrorCase("shape-in-block", "A shape error inside a block names the block instance",
              "blocks:\n  unit:\n    layers: [{conv2d: {in_channels: 4, out_channels: 8, kernel_size: 3}}]\n"
              + HEAD + "  - unit:\n    name: stem\n", 3, 15,
              "layer 'stem.conv2d' (conv2d), input 'input' (3x32x32): in_channels is 4"),
    ErrorCase("torch-names-collide", "Two parameters given one PyTorch name by torch_names",
              HEAD + "  - conv2d: [8, 3]\n    name: a\n    repeat: 2\ntorch_names:\n"
              '  "a.{i}": features.0\n', 7, 3,
              "torch_names: 'a.0.weight' and 'a.1.weight' would both be named "
              "'features.0.weight'", hint="each parameter needs a name of its own"),
    ErrorCase("torch-names-expression", "An expression in a torch_names rule that fails",
              HEAD + "  - conv2d: [8, 3]\n    name: a\n    repeat: 2\ntorch_names:\n"
              '  "a.{i}": "features.{i + offset}"\n', 7, 3,
              "undefined name 'offset'", hint="the pattern's parts: i; or the spec's variables"),
]
