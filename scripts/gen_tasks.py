"""Run the commands docs/tasks.md shows and write the page with what they printed and the
pictures they drew (docs/images/tasks/). Run ``make tasks`` (about 15 minutes on 2 cores;
the training runs go to out/tasks/).

Every number on the page comes from this run: the page is rewritten from the template
below each time, never edited by hand.
"""

from __future__ import annotations

import contextlib
import io
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "docs" / "images" / "tasks"
RUNS = ROOT / "out" / "tasks"

UNET = ("--set in_channels=3 --set num_classes=4 --set padding=1 --set resolution=64 "
        "--set base=8 --set batch_norm=true")
YOLO = "--set S=4 --set C=3 --set width=0.125 --set head=conv --set batch_norm=true"
SIAMESE = "--set resolution=65 --set width=0.25 --set embedding=32"
RCNN = ("--set resolution=64 --set width=8 --set blocks=[1,1,1,1] --set fpn_channels=16 "
        "--set representation=64 --set proposals=32 --set num_classes=4")
MASK = RCNN + " --set mask_boxes=8 --set mask_layers=[16,16,16,16] --set mask_dim=16"

STEPS = {
    "seg-train": f"archc train specs/unet.yaml {UNET} --data shapes-seg:768 --epochs 12 "
                 f"--optimizer adam --lr 0.003 --batch-size 16 --out out/tasks/unet",
    "seg-predict": f"archc predict specs/unet.yaml {UNET} --data shapes-seg:768 "
                   f"--weights out/tasks/unet --count 3 -o docs/images/tasks/unet",
    "det-train": f"archc train specs/yolo.yaml {YOLO} --data shapes-det:768 --epochs 20 "
                 f"--optimizer adam --lr 0.002 --batch-size 16 --out out/tasks/yolo",
    "det-predict": f"archc predict specs/yolo.yaml {YOLO} --data shapes-det:768 "
                   f"--weights out/tasks/yolo --count 3 -o docs/images/tasks/yolo",
    "rcnn-train": f"archc train specs/faster_rcnn.yaml {RCNN} --data shapes-det:768 "
                  f"--epochs 12 --optimizer sgd --lr 0.02 --batch-size 8 --anchor-scale 4 "
                  f"--out out/tasks/faster_rcnn",
    "rcnn-predict": f"archc predict specs/faster_rcnn.yaml {RCNN} --data shapes-det:768 "
                    f"--weights out/tasks/faster_rcnn --count 3 "
                    f"-o docs/images/tasks/faster_rcnn",
    "mask-train": f"archc train specs/mask_rcnn.yaml {MASK} --data shapes-inst:768 "
                  f"--epochs 12 --optimizer sgd --lr 0.02 --batch-size 8 --anchor-scale 4 "
                  f"--out out/tasks/mask_rcnn",
    "mask-eval": f"archc eval specs/mask_rcnn.yaml {MASK} --data shapes-inst:768 "
                 f"--weights out/tasks/mask_rcnn",
    "mask-predict": f"archc predict specs/mask_rcnn.yaml {MASK} --data shapes-inst:768 "
                    f"--weights out/tasks/mask_rcnn --count 3 -o docs/images/tasks/mask_rcnn",
    "embed-train": f"archc train specs/siamese.yaml {SIAMESE} --data digits --loss "
                   f"triplet-hard --margin 0.5 --epochs 5 --optimizer adam --lr 0.0002 "
                   f"--batch-size 64 --out out/tasks/siamese",
    "embed-eval": f"archc eval specs/siamese.yaml {SIAMESE} --data digits "
                  f"--weights out/tasks/siamese",
    "lenet-train": "archc train specs/lenet5.yaml --data digits --epochs 12 "
                   "--out out/tasks/lenet5",
    "saliency": "archc visualize specs/lenet5.yaml --weights out/tasks/lenet5 --data digits "
                "--index 3 --what saliency -o docs/images/tasks/saliency.png",
    "smoothgrad": "archc visualize specs/lenet5.yaml --weights out/tasks/lenet5 --data digits "
                  "--index 3 --what smoothgrad --samples 50 -o docs/images/tasks/smoothgrad.png",
    "features": "archc visualize specs/lenet5.yaml --weights out/tasks/lenet5 --data digits "
                "--index 3 --what features --node c1 -o docs/images/tasks/features_c1.png",
    "filters": "archc visualize specs/lenet5.yaml --weights out/tasks/lenet5 --what filters "
               "-o docs/images/tasks/filters.png",
    "class-model": "archc visualize specs/lenet5.yaml --weights out/tasks/lenet5 "
                   "--what class-model --steps 300 -o docs/images/tasks/class_models.png",
    "invert": "archc visualize specs/lenet5.yaml --weights out/tasks/lenet5 --data digits "
              "--index 3 --what invert --node c3 --steps 300 -o docs/images/tasks/invert_c3.png",
    "stylize": "archc stylize specs/vgg16.yaml --set resolution=96 --content "
               "out/tasks/content.png --style out/tasks/style.png --content-node features.13 "
               "--style-nodes features.1,features.6,features.11,features.18 --steps 200 "
               "-o docs/images/tasks/stylized.png",
}


def run(key: str) -> tuple[str, float]:
    """Run one documented command in this process; its printed lines and seconds."""
    from archc.cli import main

    args = shlex.split(STEPS[key])
    buffer = io.StringIO()
    began = time.perf_counter()
    with contextlib.redirect_stdout(buffer):
        code = main(args[1:])
    if code != 0:
        sys.exit(f"{STEPS[key]} failed with exit code {code}")
    text = buffer.getvalue().rstrip()
    print(f"$ {STEPS[key]}\n{text}\n", file=sys.stderr)
    return text, time.perf_counter() - began


def style_images() -> None:
    """The stylize example's inputs: a shapes image (content) and a colourful wave
    pattern (style)."""
    from runtime.train import pictures
    from runtime.train.data import synth

    images, _, _ = synth.shapes(1, (3, 96, 96), seed=5)
    pictures.save(pictures.to_uint8(images[0], (0.0, 1.0)), RUNS / "content.png")
    y, x = np.mgrid[0:96, 0:96] / 96
    waves = np.stack([0.5 + 0.5 * np.sin(20 * x + 6 * np.sin(8 * y)),
                      0.5 + 0.5 * np.sin(14 * y + 5 * np.cos(9 * x)),
                      0.5 + 0.5 * np.sin(18 * (x + y))])
    pictures.save(pictures.to_uint8(waves, (0.0, 1.0)), RUNS / "style.png")


def block(key: str, shown: str, keep: int | None = None) -> str:
    lines = shown.splitlines()
    if keep is not None and len(lines) > keep + 2:
        lines = lines[:2] + ["..."] + lines[-keep:]
    return "```console\n$ " + STEPS[key] + "\n" + "\n".join(lines) + "\n```"


def relative(path: str) -> str:
    return str(Path(path).relative_to("docs"))


def main() -> None:
    if IMAGES.exists():
        shutil.rmtree(IMAGES)
    IMAGES.mkdir(parents=True)
    RUNS.mkdir(parents=True, exist_ok=True)
    style_images()
    out = {}
    for key in STEPS:
        out[key], seconds = run(key)
        print(f"({seconds:.0f} s)", file=sys.stderr)
    seg_pictures = sorted(p.name for p in (IMAGES / "unet").glob("*.png"))
    det_pictures = sorted(p.name for p in (IMAGES / "yolo").glob("*.png"))

    def pictures_of(folder: str, what: str) -> str:
        return "\n".join(f"![{what}](images/tasks/{folder}/{p.name})"
                         for p in sorted((IMAGES / folder).glob("*.png")))

    page = TEMPLATE.format(
        seg_train=block("seg-train", out["seg-train"], 3),
        seg_predict=block("seg-predict", out["seg-predict"]),
        seg_images="\n".join(f"![segmentation](images/tasks/unet/{p})" for p in seg_pictures),
        det_train=block("det-train", out["det-train"], 3),
        det_predict=block("det-predict", out["det-predict"]),
        det_images="\n".join(f"![detection](images/tasks/yolo/{p})" for p in det_pictures),
        rcnn_train=block("rcnn-train", out["rcnn-train"], 3),
        rcnn_predict=block("rcnn-predict", out["rcnn-predict"]),
        rcnn_images=pictures_of("faster_rcnn", "two-stage detection"),
        mask_train=block("mask-train", out["mask-train"], 3),
        mask_eval=block("mask-eval", out["mask-eval"]),
        mask_predict=block("mask-predict", out["mask-predict"]),
        mask_images=pictures_of("mask_rcnn", "instance segmentation"),
        embed_train=block("embed-train", out["embed-train"], 3),
        embed_eval=block("embed-eval", out["embed-eval"]),
        lenet_train=block("lenet-train", out["lenet-train"], 1),
        saliency=block("saliency", out["saliency"]),
        smoothgrad=block("smoothgrad", out["smoothgrad"]),
        features=block("features", out["features"]),
        filters=block("filters", out["filters"]),
        class_model=block("class-model", out["class-model"]),
        invert=block("invert", out["invert"]),
        stylize=block("stylize", out["stylize"]),
    )
    (ROOT / "docs" / "tasks.md").write_text(page)
    print("wrote docs/tasks.md and docs/images/tasks/", file=sys.stderr)


TEMPLATE = """# Segmentation, detection, embeddings, and seeing inside a network

<!-- Generated by scripts/gen_tasks.py (make tasks): the commands below ran on a 2-core
machine and printed what is shown; the pictures are theirs. Do not edit by hand. -->

One training loop serves four tasks. `archc train` picks the task from the data (`--task`
overrides it): class labels train a classifier, masks a segmenter, boxes a detector (a
single-stage one, or a two-stage one where the network has a `proposals` input; with
instance masks a Mask R-CNN), and an
embedding loss (`--loss triplet-hard`, `triplet-all`, `contrastive`) an embedding network.
The best checkpoint is the one with the best held-out value of the task's main metric
(accuracy, mean IoU, mAP@0.5, retrieval accuracy); the run directory's `task.json` keeps
what `archc eval` and `archc predict` need to read the outputs again (classes, a
detector's grid and anchors, the image statistics).

## Data that ships with archc

Generated on the fly, seeded, at the size of the network's input, any number of images
(`NAME:N` trains on N and holds out a quarter as many more):

| `--data` | images | targets |
|---|---|---|
| `shapes-seg[:N]` | circles, squares and triangles of random size, colour and position on a noisy tinted background | a class per pixel: background, circle, square, triangle |
| `shapes-det[:N]` | the same | a box and a class per shape (boxes overlap by IoU 0.2 at most) |
| `shapes-inst[:N]` | the same, up to four shapes overlapping (box IoU up to 0.5), later ones in front | per shape its visible pixels (an instance mask), their tight box and the class |
| `mosaic-seg[:N]` | 2 to 4 of scikit-learn's handwritten digits, scaled and pasted apart | digit + 1 on the ink, 0 elsewhere |
| `mosaic-det[:N]` | the same | a tight box around each digit's ink, class = the digit |

Your own data: `masks:DIR` reads `DIR/images/*.png|jpg` with `DIR/masks/NAME.png` of class
indices (palette PNGs as PASCAL VOC's; 255 = ignore; optional `DIR/classes.txt`), and
`coco:FILE.json` reads COCO's `images` / `annotations` (`bbox` as x, y, width, height;
with `segmentation`, polygons or RLE, instance masks) / `categories`, images beside the
JSON file or in its `images/` folder.

## Segmentation: U-Net on shapes

Per-pixel cross-entropy (`--loss ce`, with the ignore index; class weights from the Python
API), soft Dice (`--loss dice`) or both (`--loss ce+dice`); mean IoU and pixel accuracy
from the confusion matrix. An unpadded U-Net's smaller output is scored against the
centre of the mask, as in the paper. `batch_norm=true` puts a batch norm after every
3x3 conv: without it this U-Net learns to find the shapes but, in a few epochs, not to
tell them apart (mean IoU about 0.4).

{seg_train}

`archc predict` draws each held-out image beside its predicted mask (blue circles, orange
squares, green triangles):

{seg_predict}

{seg_images}

## Detection: YOLO on shapes

`specs/yolo.yaml` thinned for 256 x 256 images and a 4 x 4 grid: `width` scales every
conv, `batch_norm=true` adds YOLOv2's batch norms and `head=conv` YOLOv2's 1x1-conv head in
place of YOLO v1's two fully connected layers. (As written, v1's network barely learns
from scratch on a few hundred images: YOLO v1 was pretrained on ImageNet first.) The two
anchor sizes per cell come from k-means on the training boxes with 1 - IoU as the distance (YOLOv2); the loss adds squared errors of
the encoded box (or `--box-loss giou`), binary cross-entropy of objectness (or
`--objectness focal`) and the cells' class cross-entropy. Held-out images are scored with
mAP@0.5 (COCO's 101-point interpolation; `archc eval` also prints mAP@[.5:.95]) after
per-class non-maximum suppression.

{det_train}

{det_predict}

{det_images}

## Two-stage detection: Faster R-CNN on shapes

`specs/faster_rcnn.yaml` (torchvision's `fasterrcnn_resnet50_fpn`) thinned to 64 x 64
images: a ResNet body of one bottleneck per stage and width 8, an FPN of 16 channels, a box
head of 64 and 32 proposals per image. The network computes the region proposal network's
objectness and box deltas on P2-P6 and, for the boxes of its `proposals` input, class
scores and per-class box deltas; the rest is archc's runtime
(`runtime/train/rcnn.py`), in the middle of the pass: anchors over the levels (three aspect
ratios; `--anchor-scale 4` makes them 4 strides on a side, 16 px on P2, for objects this
small next to the image: torchvision's 8 strides are 32 px), the RPN's targets (IoU 0.7 /
0.3, 256 anchors drawn per image, half positive), its proposals (the best per level, NMS at
0.7 within each level), and for the box head the proposals with the ground truth matched at
IoU 0.5 and drawn a quarter positive. The loss adds the RPN's objectness BCE and smooth L1
(beta 1/9) to the box head's cross-entropy and smooth L1; detections are decoded per
class, kept above 0.05 after NMS at 0.5 within each class.

{rcnn_train}

{rcnn_predict}

{rcnn_images}

## Instance segmentation: Mask R-CNN on shapes-inst

`specs/mask_rcnn.yaml` thinned the same way, with a mask branch of four 16-channel convs
over 8 boxes per image. In training it sees the positive proposals and learns each one's
ground-truth mask, cut to the box and resampled to 28 x 28 (binary cross-entropy on the
mask of the box's class); at inference the best detections are its boxes and their masks
are pasted back into the image. `archc eval` scores boxes and masks by COCO's matching
(mask IoU for masks):

{mask_train}

{mask_eval}

{mask_predict}

{mask_images}

## Embeddings: a siamese network on digits

The siamese branch (here with 32-d embeddings, a quarter of the channels and 65 x 65
inputs) trained with batch-hard triplet mining: each image of a batch is an anchor, with
the farthest image of its class and the nearest of another. The loss stays near the
margin (the hardest triplets of a batch stay hard) while the embedding improves; with a
large learning rate batch-hard mining can collapse every embedding to one point from the
start (Hermans et al. saw the same): keep it small, or begin with `--loss triplet-all`.
Untrained, the random convolutions already find a same-class nearest neighbour for most
digits; training shows in the verification scores. Retrieval accuracy: the
nearest training image's class is the held-out image's class; verification: same or
different for every pair of the first 400 held-out images, by a distance threshold
(ROC-AUC, and the accuracy of the best threshold).

{embed_train}

{embed_eval}

## Seeing inside a network

A LeNet-5 trained on the digits:

{lenet_train}

**Saliency** (the gradient of the class score with respect to the pixels, largest over the
channels) and **SmoothGrad** (the mean over noisy copies):

{saliency}

![saliency](images/tasks/saliency.png)

{smoothgrad}

![smoothgrad](images/tasks/smoothgrad.png)

**Feature maps** of any node, and the **first layer's filters**:

{features}

![feature maps](images/tasks/features_c1.png)

{filters}

![filters](images/tasks/filters.png)

**Class models**: for each class, an input that maximises its score (gradient ascent with
L2 decay, jitter and blur):

{class_model}

![class models](images/tasks/class_models.png)

**Feature inversion**: an input rebuilt from noise so that its activations at `c3` match
the image's (left: the image, right: the reconstruction):

{invert}

![inversion](images/tasks/invert_c3.png)

## Style transfer

`archc stylize` keeps one image's activations at a content node and takes another's Gram
matrices (channel correlations) at style nodes (Gatys et al.). With `--weights` the
network's trained features carry the style; without them, as here, VGG-16's random
convolutions (seeded) already capture colour and texture statistics:

{stylize}

![style transfer: content, style, result](images/tasks/stylized.png)
"""

if __name__ == "__main__":
    main()
