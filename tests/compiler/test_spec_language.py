"""Every feature of the spec language, each on a small real spec."""

from __future__ import annotations

import pytest

import archc
from archc.errors import SpecError


def load(text: str, **variables):
    return archc.load("net.yaml", text=text, **variables)


def shapes(graph):
    return {n.name: n.shape for n in graph}


def test_sequential_chaining_and_automatic_names():
    g = load("""
input: {channels: 3, height: 8, width: 8}
layers:
  - conv2d: [4, 3]    # out_channels, kernel_size
  - relu
  - conv2d: {out_channels: 6, kernel_size: 3, padding: same}
  - relu
""")
    assert [n.name for n in g] == ["input", "conv2d", "relu", "conv2d_1", "relu_1"]
    assert g["conv2d_1"].inputs == ["relu"]
    assert g.output_shapes() == {"relu_1": (6, 6, 6)}


def test_names_relative_indices_and_merges():
    g = load("""
input: {channels: 8, height: 8, width: 8}
layers:
  - conv2d: {out_channels: 8, kernel_size: 3, padding: 1}
    name: a
  - relu
  - conv2d: {out_channels: 8, kernel_size: 1}
  - add: [-1, a, input]          # by index, by name, the input
  - concat: [-1, -2, a]
""")
    assert g["add"].inputs == ["conv2d", "a", "input"]
    assert g["concat"].inputs == ["add", "conv2d", "a"]
    assert g["concat"].shape == (24, 8, 8)


def test_squeeze_excitation_from_primitives_broadcasts():
    g = load("""
input: {channels: 16, height: 7, width: 7}
layers:
  - identity:
    name: features
  - global_avg_pool2d
  - conv2d: [4, 1]
  - relu
  - conv2d: [16, 1]
  - sigmoid:
    name: gate
  - multiply: [features, gate]
""")
    assert g["gate"].shape == (16, 1, 1)
    assert g["multiply"].shape == (16, 7, 7)


def test_repeat_names_index_and_groups():
    g = load("""
input: {channels: 4, height: 16, width: 16}
layers:
  - conv2d: {out_channels: 4 * (i + 1), kernel_size: 3, padding: 1}
    name: stage
    repeat: 3
  - sequential:
      - conv2d: {out_channels: 8, kernel_size: 3, stride: 2 if j == 0 else 1, padding: 1}
      - relu
    name: down
    repeat: {count: 2, index: j}
""")
    assert [g[f"stage.{k}"].shape[0] for k in range(3)] == [4, 8, 12]
    assert g["down.0.0"].shape == (8, 8, 8) and g["down.1.0"].shape == (8, 8, 8)
    assert g.blocks["stage"].count == 3 and g.blocks["down"].count == 2
    assert g["down.1.1"].scope == ("down", "down.1")


def test_blocks_with_arguments_defaults_nesting_and_positional_call():
    g = load("""
variables: {width: 8}
input: {channels: 3, height: 16, width: 16}
blocks:
  conv_bn:
    args: {out: ~, k: 3, stride: 1}
    layers:
      - conv2d: {out_channels: out, kernel_size: k, stride: stride, padding: k // 2, bias: false}
        name: conv
      - batchnorm2d:
        name: bn
  double:
    args: [out]
    layers:
      - conv_bn: {out: out, stride: 2}
        name: first
      - conv_bn: [out, 1]
        name: second
layers:
  - double: width * 2
    name: d
""")
    assert g["d.first.conv"].attrs["stride"] == (2, 2)
    assert g["d.second.conv"].attrs["kernel_size"] == (1, 1)
    assert g["d.second.bn"].shape == (16, 8, 8)
    assert g["d.first.bn"].scope == ("d", "d.first")
    assert g.blocks["d"].block == "double" and dict(g.blocks["d"].args) == {"out": 16}


def test_multi_input_block_and_block_output():
    g = load("""
input: {channels: 4, height: 16, width: 16}
blocks:
  up:
    inputs: [x, skip]
    args: {out: ~}
    output: fused
    layers:
      - conv_transpose2d: {out_channels: out, kernel_size: 2, stride: 2}
      - concat: [-1, skip]
        name: fused
      - relu:
        name: unused_tail
layers:
  - conv2d: [8, 3, 1, 1]
    name: enc
  - max_pool2d: 2
  - up: {out: 8}
    inputs: [-1, enc]
""")
    assert g["up.fused"].shape == (16, 16, 16)
    assert g.output_shapes() == {"up.fused": (16, 16, 16)}


def test_variables_expressions_tables_and_overrides():
    text = """
variables:
  variant: b0
  table: {b0: [1.0, 224], b2: [1.1, 260]}
  width_mult: table[variant][0]
  resolution: table[variant][1]
  stem: make_divisible(32 * width_mult)
input: {channels: 3, height: resolution, width: resolution}
layers:
  - conv2d: {out_channels: stem, kernel_size: 3, stride: 2, padding: 1}
"""
    assert load(text).output_shapes() == {"conv2d": (32, 112, 112)}
    assert load(text, variant="b2").output_shapes() == {"conv2d": (32, 130, 130)}
    assert load(text, stem=48).output_shapes() == {"conv2d": (48, 112, 112)}
    assert load(text, variant="b2").variables["width_mult"] == 1.1


def test_several_outputs():
    g = load("""
input: {channels: 3, height: 32, width: 32}
layers:
  - conv2d: [8, 3, 2, 1]
    name: p3
  - conv2d: [8, 3, 2, 1]
    name: p4
  - conv2d: [8, 3, 2, 1]
    name: p5
outputs: [p3, p4, p5]
""")
    assert g.output_shapes() == {"p3": (8, 16, 16), "p4": (8, 8, 8), "p5": (8, 4, 4)}


def test_several_inputs():
    g = load("""
inputs:
  image: {channels: 3, height: 8, width: 8}
  mask: {channels: 1, height: 8, width: 8}
  meta: {features: 5}
layers:
  - concat: [image, mask]
  - conv2d: [4, 1]
""")
    assert g.inputs == ["image", "mask", "meta"]
    assert g["concat"].shape == (4, 8, 8)


def test_when_leaves_an_entry_out_as_identity():
    text = """
variables: {project: false}
input: {channels: 4, height: 8, width: 8}
layers:
  - conv2d: [4, 3, 1, 1]
    name: body
  - conv2d: [4, 1]
    name: shortcut
    input: input
    when: project
  - add: [body, shortcut]
"""
    g = load(text)
    assert "shortcut" not in g and g["add"].inputs == ["body", "input"]
    g = load(text, project=True)
    assert g["add"].inputs == ["body", "shortcut"]


def test_dotted_reference_into_a_block_instance():
    g = load("""
input: {channels: 3, height: 16, width: 16}
blocks:
  enc:
    layers:
      - conv2d: [8, 3, 1, 1]
        name: conv
      - max_pool2d: 2
layers:
  - enc:
    name: e1
  - upsample: 2
  - concat: [-1, e1.conv]
""")
    assert g["concat"].inputs == ["upsample", "e1.conv"]


def test_variable_names_the_layer_type_and_trainable_flag():
    g = load("""
variables: {act: relu6}
input: {channels: 3, height: 8, width: 8}
blocks:
  unit:
    args: {act: relu}
    layers: [{conv2d: [4, 3]}, act]
layers:
  - unit: {act: act}
    trainable: false
  - act
""")
    assert g["unit.relu6"].op == "relu6" and g["relu6"].op == "relu6"
    assert not g["unit.conv2d"].trainable and g["relu6"].trainable


def test_aliases_and_sequential_numeric_names():
    g = load("""
input: {channels: 3, height: 8, width: 8}
layers:
  - sequential: [{conv2d: [4, 3]}, swish, {dropout: 0.2}]
    name: features
""")
    assert [n.name for n in g][1:] == ["features.0", "features.1", "features.2"]
    assert g["features.1"].op == "silu"


def test_max_unpool_takes_positions_from_a_max_pool():
    g = load("""
input: {channels: 2, height: 8, width: 8}
layers:
  - max_pool2d: 2
    name: pool
  - relu
  - max_unpool2d: 2
    inputs: [-1, pool]
""")
    assert g["max_unpool2d"].shape == (2, 8, 8)
    with pytest.raises(SpecError, match="must be a max_pool2d"):
        load("""
input: {channels: 2, height: 8, width: 8}
layers:
  - avg_pool2d: 2
  - max_unpool2d: 2
    inputs: [-1, -1]
""")


def test_nodes_remember_their_source_location():
    g = load("""input: {channels: 1, height: 4, width: 4}
layers:
  - relu
  - sigmoid:
    name: s
""")
    assert (g["relu"].loc.line, g["relu"].loc.column) == (3, 5)
    assert (g["s"].loc.line, g["s"].loc.column) == (4, 5)


def test_computed_widths_and_their_bounds():
    """A design space's widths computed in the spec (list comprehensions, range, sum); a
    list too long to build is refused where it is written."""
    g = load("""
variables:
  w0: 8
  widths: "[w0 * 2 ** k for k in range(3)]"
  act: relu
input: {channels: 3, height: 8, width: 8}
layers:
  - conv2d: ["widths[0]", 3]
  - conv2d: ["widths[-1]", 3]
  - conv2d:
      out_channels: "sum([w for w in widths if w > 8])"
      kernel_size: 1
      activation: "act if act != 'identity' else null"
""")
    assert [g[n].shape[0] for n in ("conv2d", "conv2d_1", "conv2d_2")] == [8, 32, 48]
    assert g["conv2d_2"].attrs["activation"][0] == "relu"
    with pytest.raises(SpecError) as info:
        load("""
variables:
  widths: "[k for k in range(20000)]"
input: {channels: 3, height: 8, width: 8}
layers:
  - conv2d: ["widths[0]", 3]
""")
    assert "more than 10,000 list items" in info.value.message and info.value.loc.line == 3


def test_an_unquoted_word_in_a_comparison_is_blamed_with_the_fix():
    with pytest.raises(SpecError) as info:
        load("""
variables:
  act: relu
input: {channels: 3, height: 8, width: 8}
layers:
  - conv2d: {out_channels: 4, kernel_size: 1, activation: "act if act != identity else null"}
""")
    assert "undefined name 'identity'" in info.value.message and info.value.loc.line == 6
    assert "quote it inside the expression: 'identity'" in info.value.hint


# a block of one argument, and a caller's entry (%s)
WIDEN = """
variables: {a: 8, b: 16}
blocks:
  widen:
    args: [out]
    layers:
      - conv2d: [out, 3, 1, 1]
input: {channels: 3, height: 8, width: 8}
layers:
%s
"""


def test_a_one_item_list_calls_a_one_argument_block():
    text = WIDEN % "  - widen: [32]\n  - widen: %s"
    g = load(text % "16")
    assert [n.shape for n in g][-2:] == [(32, 8, 8), (16, 8, 8)]
    with pytest.raises(SpecError) as info:
        load(text % "[16, 24]")
    assert "expected an integer, got list [16, 24]" in info.value.message
    assert info.value.hint.startswith("'out' is [16, 24] here: a block called with a list")
    assert "did you mean" not in info.value.hint


def test_a_comma_inside_braces_in_a_blocks_arguments_gets_the_quoting_hint():
    text = WIDEN % "  - widen: {out: %s}"
    with pytest.raises(SpecError) as info:
        load(text % "max(a, b)")
    assert "block 'widen' has no argument 'b)'" in info.value.message
    assert info.value.hint.startswith("inside { }, a comma ends a value: quote")
    assert load(text % '"max(a, b)"')["widen.conv2d"].shape == (16, 8, 8)


def test_a_block_reads_the_shape_of_what_it_receives():
    g = load("""
input: {channels: 3, height: 32, width: 24}
blocks:
  expand:                      # MBConv's expansion, without in_channels passed by hand
    args: {out: ~, t: 4, hidden: in_channels * t}
    layers:
      - conv2d: [hidden, 1]
      - conv2d: [out, 1]
        name: project
      - add: [project, input]
        when: in_channels == out
  probe:
    inputs: [x, skip]
    layers:
      - conv2d: ["in_height + in_width + in_shapes[1][0] + in_shape[0]", 1]
  own:
    args: [in_channels]        # an argument of that name wins
    layers:
      - conv2d: [in_channels, 1]
layers:
  - conv2d: [8, 1]
    name: c
  - expand: {out: 8}
    name: e1
  - expand: {out: 16, t: 2}
    name: e2
  - probe:
    inputs: [e2, c]
  - own: 5
""")
    assert g["e1.conv2d"].shape == (32, 32, 24) and "e1.add" in g
    assert g["e2.conv2d"].shape == (16, 32, 24) and "e2.add" not in g
    assert g["probe.conv2d"].shape == (32 + 24 + 8 + 16, 32, 24)
    assert g["own.conv2d"].shape == (5, 32, 24)
    vector = """
input: {features: 12}
blocks:
  wide:
    layers:
      - linear: %s
layers:
  - wide:
"""
    assert load(vector % "in_features * 2")["wide.linear"].shape == (24,)
    with pytest.raises(SpecError) as info:  # a vector has no height: said where it is used
        load(vector % "in_height")
    assert "got the text 'in_height'" in info.value.message and info.value.loc.line == 6
    assert info.value.hint == ("in_height is known in a block that receives an image (channels "
                               "x height x width); this one receives 12: use in_shape (a list)")
    with pytest.raises(SpecError) as info:  # in an expression, the name is undefined
        load(vector % "in_height * 2")
    assert "undefined name 'in_height'" in info.value.message and info.value.loc.line == 6


AUX = """
variables: {aux: true, w: 0.3}
input: {channels: 3, height: 8, width: 8}
layers:
  - conv2d: [4, 3, 1, 1]
    name: trunk
  - sequential: [global_avg_pool2d, flatten, {linear: 5}]
    name: side
    when: aux
  - global_avg_pool2d:
    %s
  - flatten
  - linear: 5
    name: fc
output: fc
training_outputs:
  side: %s
"""


def test_training_outputs_are_conditional_weighted_and_located():
    g = load(AUX % ("input: trunk", "{output: side, loss_weight: w, when: aux}"))
    assert g.outputs == {"fc": "fc"} and g.train_outputs == {"side": "side.2"}
    assert g.loss_weights == {"side": 0.3}
    assert g.training_only() == {"side.0", "side.1", "side.2"}
    without = load(AUX % ("input: trunk", "{output: side, loss_weight: w, when: aux}"), aux=False)
    assert without.train_outputs == {} and "side.0" not in without
    assert load(AUX % ("input: trunk", "side")).loss_weights == {"side": 1.0}
    for value, message, line in [
        ("{output: side, loss_weight: -1}", "loss_weight must be a number of 0 or more", 17),
        ("{output: side, when: 3}", "'when' must be true or false, got 3", 17),
        ("{loss_weight: 0.5}", "output 'side' needs 'output:'", 17),
        ("{output: side, weight: 0.5}", "unknown key 'weight'", 17),
        ("{output: nowhere}", "input 'nowhere' is not defined", 17),
    ]:
        with pytest.raises(SpecError) as info:
            load(AUX % ("input: trunk", value))
        assert message in info.value.message, value
        assert info.value.loc.line == line, value
    with pytest.raises(SpecError) as info:
        load((AUX % ("input: trunk", "side")).replace("  side: side", "  fc: side"))
    assert "'fc' is both an output and a training output" in info.value.message
