"""The architecture library: every spec checks, analyses and draws, and matches the
published numbers of the network it describes."""

from __future__ import annotations

import re
import shutil

import pytest

import archc
from archc.analysis import analyse, format_summary
from archc.render import diagram, write_diagram
from conftest import ROOT, SPECS

ALL_SPECS = sorted(p.stem for p in SPECS.glob("*.yaml"))

# torchvision's model documentation: parameters exact, GFLOPS (= GMACs) within 1%.
TORCHVISION = [
    ("alexnet", {}, 61_100_840, 0.71),
    ("vgg16", {}, 138_357_544, 15.47),
    ("vgg16_bn", {}, 138_365_992, 15.47),
    ("googlenet", {}, 6_624_904, 1.50),
    # with its auxiliary classifiers (training outputs): torchvision's aux_logits=True
    ("googlenet", {"aux_logits": True}, 13_004_888, 1.50),
    # Inception v3: its documented count holds the auxiliary classifier (a training output)
    ("inception_v3", {}, 27_161_264, 5.71),
    ("inception_v3", {"aux_logits": False}, 23_834_568, 5.71),
    ("resnet18", {}, 11_689_512, 1.81),
    ("resnet34", {}, 21_797_672, 3.66),
    ("resnet50", {}, 25_557_032, 4.09),
    ("densenet121", {}, 7_978_856, 2.83),
    ("squeezenet1_0", {}, 1_248_424, 0.82),
    ("squeezenet1_1", {}, 1_235_496, 0.35),
    ("mobilenet_v2", {}, 3_504_872, 0.30),
    ("efficientnet", {"variant": "b0"}, 5_288_548, 0.39),
    ("efficientnet", {"variant": "b1"}, 7_794_184, 0.69),
    ("efficientnet", {"variant": "b2"}, 9_109_994, None),
    ("efficientnet", {"variant": "b3"}, 12_233_232, 1.83),
    ("efficientnet", {"variant": "b4"}, 19_341_616, 4.39),
    ("efficientnet", {"variant": "b5"}, 30_389_784, 10.27),
    ("efficientnet", {"variant": "b6"}, 43_040_704, 19.07),
    ("efficientnet", {"variant": "b7"}, 66_347_960, 37.75),
    ("convnext_tiny", {}, 28_589_128, 4.46),
    ("shufflenet_v2", {}, 2_278_604, 0.14),
    # RegNet: the design space computed in the spec, the named models as presets
    ("regnet", {"model": "x_400mf"}, 5_495_976, 0.414),
    ("regnet", {"model": "x_800mf"}, 7_259_656, 0.80),
    ("regnet", {"model": "x_1_6gf"}, 9_190_136, 1.603),
    ("regnet", {"model": "y_400mf"}, 4_344_144, 0.40),
    ("regnet", {"model": "y_800mf"}, 6_432_512, 0.834),
    ("regnet", {"model": "y_1_6gf"}, 11_202_430, 1.612),
    ("regnet", {"model": "y_8gf"}, 39_381_472, 8.473),
    ("fcn", {}, 32_957_013, None),
    ("deeplab", {}, 39_638_869, None),
    # with the auxiliary FCN head (a training output): torchvision's documented counts
    ("fcn", {"aux_loss": True}, 35_322_218, None),
    ("deeplab", {"aux_loss": True}, 42_004_074, None),
    # detectors: torchvision's documented counts hold its frozen batch norms as buffers;
    # built with batch norms that train (its norm_layer=BatchNorm2d) they count 53,120 more
    ("faster_rcnn", {"frozen_bn": True}, 41_755_286, None),
    ("faster_rcnn", {}, 41_808_406, None),
    ("mask_rcnn", {"frozen_bn": True}, 44_401_393, None),
    ("mask_rcnn", {}, 44_454_513, None),
    ("faster_rcnn_mobilenet", {"frozen_bn": True}, 19_386_354, None),
    ("faster_rcnn_mobilenet", {}, 19_410_754, None),
    ("retinanet", {"frozen_bn": True}, 34_014_999, None),
    ("retinanet", {}, 34_068_119, None),
]


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_every_spec_checks_analyses_and_draws(spec, tmp_path):
    graph = archc.load(SPECS / f"{spec}.yaml")
    report = analyse(graph)
    text = format_summary(report, depth=1)
    assert report.totals["params"] > 0 and "Parameters:" in text
    assert max(len(line) for line in text.splitlines()) <= 100
    dot = diagram(graph, collapse=1)
    assert "->" in dot.source and graph.name in dot.source
    if shutil.which("dot"):
        svg = write_diagram(diagram(graph), tmp_path / f"{spec}.svg").read_text()
        assert svg.count('class="node"') == len(graph)
    assert (ROOT / "docs" / "images" / "library" / f"{spec}.svg").is_file(), "run make images"


@pytest.mark.parametrize("spec, variables, params, gmacs", TORCHVISION,
                         ids=[s + "".join(f"-{k}={v}" for k, v in v.items())
                              for s, v, _, _ in TORCHVISION])
def test_torchvision_numbers(spec, variables, params, gmacs):
    totals = analyse(archc.load(SPECS / f"{spec}.yaml", **variables)).totals
    assert totals["params"] == params
    if gmacs is not None:  # published to two decimals
        ours = totals["macs"] / 1e9
        assert round(ours, 2) == gmacs or abs(ours - gmacs) / gmacs < 0.01


@pytest.mark.parametrize("depth, millions", [(20, 0.27), (32, 0.46), (44, 0.66), (56, 0.85),
                                             (110, 1.7)])
def test_cifar_resnets_match_the_paper(depth, millions):
    # He et al. 2016, table 6 (option A shortcuts; option B's projections add 2,752)
    graph = archc.load(SPECS / "resnet20.yaml", depth=depth)
    params = analyse(graph).totals["params"]
    assert abs(params / 1e6 - millions) / millions < 0.02
    assert sum(1 for node in graph if node.op in ("conv2d", "linear")
               and "downsample" not in node.name) == depth


def test_mobilenet_v1_matches_the_paper():
    """Howard et al. 2017, Table 8: 1.0 MobileNet-224 has 4.2 M parameters, 569 M mult-adds."""
    totals = analyse(archc.load(SPECS / "mobilenet_v1.yaml")).totals
    assert round(totals["params"] / 1e6, 1) == 4.2
    assert abs(totals["macs"] / 569e6 - 1) < 0.01
    half = analyse(archc.load(SPECS / "mobilenet_v1.yaml", alpha=0.5)).totals
    assert round(half["params"] / 1e6, 1) == 1.3  # Table 6: 0.50 MobileNet-224, 1.3 M
    assert abs(half["macs"] / 149e6 - 1) < 0.01  # and 149 M mult-adds


def test_siamese_matches_the_paper_arithmetic():
    """Koch et al. 2015, Figure 4, layer by layer (without the L1 distance layer)."""
    convs = [(1, 64, 10), (64, 128, 7), (128, 128, 4), (128, 256, 4)]
    expected = sum(o * (i * k * k + 1) for i, o, k in convs) + 6 * 6 * 256 * 4096 + 4096
    graph = archc.load(SPECS / "siamese.yaml")
    assert analyse(graph).totals["params"] == expected == 38_947_648
    assert graph.output_shapes() == {"embedding": (4096,)}


def test_nin_is_four_mlpconv_blocks():
    blocks = [(3, 96, 11), (96, 256, 5), (256, 384, 3), (384, 1000, 3)]
    expected = sum(o * (i * k * k + 1) + 2 * o * (o + 1) for i, o, k in blocks)
    graph = archc.load(SPECS / "nin.yaml")
    assert analyse(graph).totals["params"] == expected
    assert not any(n.op == "linear" for n in graph)


def test_yolo_grid_and_layers():
    graph = archc.load(SPECS / "yolo.yaml")
    assert graph.output_shapes() == {"detections": (7, 7, 30)}
    assert sum(n.op == "conv2d" for n in graph) == 24
    assert sum(n.op == "linear" for n in graph) == 2
    coco = archc.load(SPECS / "yolo.yaml", S=13, B=3, C=80)
    assert coco.output_shapes() == {"detections": (13, 13, 95)}
    # YOLOv2's head (a 1x1 conv per cell) and batch norms: the same output layout
    v2 = archc.load(SPECS / "yolo.yaml", head="conv", batch_norm=True)
    assert v2.output_shapes() == {"detections": (7, 7, 30)}
    assert sum(n.op == "linear" for n in v2) == 0 and sum(n.op == "batchnorm2d" for n in v2) == 24


def test_unet_paper_tile_and_same_variant():
    """Ronneberger et al. 2015, Figure 1: a 572x572 tile gives a 388x388 segmentation map."""
    assert archc.load(SPECS / "unet.yaml").output_shapes() == {"head": (2, 388, 388)}
    same = archc.load(SPECS / "unet.yaml", padding=1, resolution=256)
    assert same.output_shapes() == {"head": (2, 256, 256)}


def test_unet_plus_plus_matches_the_paper():
    """Zhou et al. 2018, Table 2: U-Net 7.76M and UNet++ 9.04M parameters (32 base
    channels; with or without deep supervision, whose heads add 99)."""
    nested = archc.load(SPECS / "unet_plus_plus.yaml")
    plain = archc.load(SPECS / "unet.yaml", base=32, in_channels=3, num_classes=1, padding=1,
                       resolution=96)
    assert round(analyse(nested).totals["params"] / 1e6, 2) == 9.04
    assert round(analyse(plain).totals["params"] / 1e6, 2) == 7.76
    deep = archc.load(SPECS / "unet_plus_plus.yaml", deep_supervision=True)
    assert analyse(deep).totals["params"] - analyse(nested).totals["params"] == 99
    assert nested.output_shapes() == {"final4": (1, 96, 96)}  # X(0,4)'s head
    assert deep.output_shapes() == {"final": (1, 96, 96)}  # the mean of four


def test_fractalnet_is_twenty_layers_deep_with_drop_path_at_every_join():
    """Larsson et al. 2017: B = 5 blocks of C = 3 columns, 5 x 2^(C-1) = 20 convs on the
    deepest path, 7 convs and 2 joins per block; drop-path 15% local, half the batch
    global."""
    graph = archc.load(SPECS / "fractalnet.yaml")
    assert sum(n.op == "conv2d" for n in graph) == 35
    joins = [n for n in graph if n.op == "join"]
    assert len(joins) == 10 and {n.attrs["drop_path"] for n in joins} == {0.15}
    assert {n.attrs["global_drop"] for n in joins} == {0.5}
    deepest = sum(n.op == "conv2d" and ".col2_" in n.name for n in graph)
    assert deepest == 20


def test_segmentation_outputs_have_the_input_size():
    for spec in ("fcn", "deeplab"):
        graph = archc.load(SPECS / f"{spec}.yaml", resolution=224)
        (shape,) = graph.output_shapes().values()
        assert shape == (21, 224, 224)
    transposed = archc.load(SPECS / "fcn.yaml", upsampling="transposed", resolution=224)
    assert transposed.output_shapes() == {"upscore": (21, 224, 224)}


def test_every_spec_has_a_header_with_its_source():
    for spec in ALL_SPECS:
        header = (SPECS / f"{spec}.yaml").read_text().split("\nname:")[0]
        assert header.startswith("#") and len(header) > 120, spec
        assert re.search(r"\b(19|20)\d\d\b", header), f"{spec}: cite the source and year"


def test_variants_are_not_copies():
    """Variants extend the spec they vary instead of repeating it."""
    for variant, base in (("resnet34", "resnet18"), ("vgg16_bn", "vgg16"),
                          ("squeezenet1_1", "squeezenet1_0"), ("fcn", "resnet50"),
                          ("deeplab", "fcn"), ("mask_rcnn", "faster_rcnn"),
                          ("retinanet", "faster_rcnn"), ("attention_unet", "unet"),
                          ("faster_rcnn_mobilenet", "faster_rcnn")):
        assert f"extends: {base}.yaml" in (SPECS / f"{variant}.yaml").read_text()


def test_detectors_use_torchvisions_state_dict_names():
    from archc.lower import lower

    def names(spec, **variables):
        program = lower(archc.load(SPECS / f"{spec}.yaml", **variables))
        return {program.torch_names.get(k, k) for k in program.params}

    faster = names("faster_rcnn", frozen_bn=True)
    assert {"backbone.body.conv1.weight", "backbone.body.bn1.running_var",
            "backbone.body.layer4.2.conv3.weight", "backbone.body.layer1.0.downsample.1.weight",
            "backbone.fpn.inner_blocks.0.0.weight", "backbone.fpn.layer_blocks.3.0.bias",
            "rpn.head.conv.0.0.weight", "rpn.head.cls_logits.weight", "rpn.head.bbox_pred.bias",
            "roi_heads.box_head.fc6.weight", "roi_heads.box_head.fc7.bias",
            "roi_heads.box_predictor.cls_score.weight",
            "roi_heads.box_predictor.bbox_pred.bias"} <= faster
    assert not any("num_batches_tracked" in k or k.startswith("rpn_p") for k in faster)
    masks = names("mask_rcnn") - names("faster_rcnn")
    assert masks == {f"roi_heads.mask_head.{i}.0.{r}" for i in range(4) for r in ("weight", "bias")} | {
        f"roi_heads.mask_predictor.{m}.{r}" for m in ("conv5_mask", "mask_fcn_logits")
        for r in ("weight", "bias")}
    retina = names("retinanet", frozen_bn=True)
    assert {"backbone.fpn.extra_blocks.p6.weight", "backbone.fpn.extra_blocks.p7.bias",
            "head.classification_head.conv.3.0.weight", "head.classification_head.cls_logits.bias",
            "head.regression_head.conv.0.0.bias", "head.regression_head.bbox_reg.weight"} <= retina
    assert not any(k.startswith("head_p") for k in retina)
