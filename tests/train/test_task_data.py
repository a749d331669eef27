"""Generated data (shapes, digit mosaics) and the segmentation/detection readers (a folder
of images and PNG masks, COCO JSON boxes) on small files the tests write."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from runtime.train import data
from runtime.train.data import synth


def test_shapes_are_seeded_and_masks_agree_with_boxes():
    a = synth.shapes(6, (3, 48, 48), seed=1)
    b = synth.shapes(6, (3, 48, 48), seed=1)
    c = synth.shapes(6, (3, 48, 48), seed=2)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])
    images, masks, boxes = a
    assert images.shape == (6, 3, 48, 48) and images.min() >= 0 and images.max() <= 1
    for mask, rows in zip(masks, boxes):
        assert 1 <= len(rows) <= 3
        for x1, y1, x2, y2, cls in rows:
            assert 0 <= x1 < x2 <= 48 and 0 <= y1 < y2 <= 48
        # every labelled pixel lies in a box of its class
        ys, xs = np.nonzero(mask)
        for y, x in zip(ys + 0.5, xs + 0.5):
            label = mask[int(y), int(x)] - 1
            assert any(r[4] == label and r[0] <= x <= r[2] and r[1] <= y <= r[3]
                       for r in rows)
    grey = synth.shapes(2, (1, 32, 40), seed=0)[0]
    assert grey.shape == (2, 1, 32, 40)


def test_generated_sources_by_name():
    seg = data.load("shapes-seg:40", (3, 32, 32))
    assert seg.task == "segment" and len(seg.train) == 40 and len(seg.test) == 16
    assert seg.train.classes == ["background", "circle", "square", "triangle"]
    assert seg.train.y.shape == (40, 32, 32) and abs(float(seg.train.x.mean())) < 1e-4
    det = data.load("mosaic-det:20", (1, 48, 48))
    assert det.task == "detect" and det.train.classes == [str(d) for d in range(10)]
    assert all(r.shape[1] == 5 and 2 <= len(r) <= 4 for r in det.train.y)
    mos = data.load("mosaic-seg:10", (1, 48, 48), seed=3)
    assert set(np.unique(mos.train.y)) - set(range(11)) == set() and mos.train.y.max() > 0
    back = mos.pixels(mos.train.x)
    assert back.min() >= -0.05 and back.max() <= 1.05  # standardization undone
    for bad, message in [("shapes-seg:x", "number of training images"),
                         ("shapes:5", "unknown data"), ("shapes-det:0", "positive")]:
        with pytest.raises(data.DataError, match=message):
            data.load(bad, (3, 32, 32))
    with pytest.raises(data.DataError, match="at least 16 x 16"):
        data.load("shapes-seg:4", (3, 8, 8))


def test_mask_folder(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for k in range(5):
        Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(
            tmp_path / "images" / f"im{k}.jpg")
        mask = np.zeros((20, 30), np.uint8)
        mask[5:15, 10:20] = 1 + k % 2
        mask[0:2, :] = 255  # ignored
        palette = Image.fromarray(mask, mode="P")
        palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
        palette.save(tmp_path / "masks" / f"im{k}.png")
    (tmp_path / "classes.txt").write_text("sky\ncat\ndog\n")
    split = data.load(f"masks:{tmp_path}", (3, 10, 15), seed=0)
    assert split.task == "segment" and split.train.classes == ["sky", "cat", "dog"]
    y = np.concatenate([split.train.y, split.test.y])
    assert y.shape == (5, 10, 15) and (y[:, 0] == data.IGNORE).all()
    assert set(np.unique(y)) == {data.IGNORE, 0, 1, 2}
    (tmp_path / "images" / "extra.png").write_bytes((tmp_path / "images" / "im0.jpg")
                                                    .read_bytes())
    with pytest.raises(data.DataError, match="extra.png has no mask"):
        data.load(f"masks:{tmp_path}", (3, 10, 15))
    with pytest.raises(data.DataError, match="images/ and masks/"):
        data.load(f"masks:{tmp_path / 'images'}", (3, 10, 15))


def test_coco_boxes(tmp_path):
    (tmp_path / "images").mkdir()
    for k in range(4):
        Image.new("RGB", (40, 20), (k * 40, 0, 0)).save(tmp_path / "images" / f"{k}.png")
    doc = {"images": [{"id": 10 + k, "file_name": f"{k}.png", "width": 40, "height": 20}
                      for k in range(4)],
           "annotations": [{"image_id": 10, "bbox": [4, 2, 8, 6], "category_id": 7},
                           {"image_id": 12, "bbox": [0, 0, 40, 20], "category_id": 3}],
           "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}]}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(doc))
    split = data.coco(path, (3, 10, 20), test_fraction=0.0)
    assert split.train.classes == ["cat", "dog"] and split.task == "detect"
    rows = {len(r): r for r in split.train.y}
    boxes = [r for r in split.train.y if len(r)]
    assert len(boxes) == 2 and len(rows[0]) == 0
    scaled = sorted(tuple(b[0]) for b in boxes)
    # 40x20 -> 20x10: everything halves; dog (id 7) is class 1, cat (id 3) class 0
    assert scaled == [(0, 0, 20, 10, 0), (2, 1, 6, 4, 1)]
    doc["annotations"].append({"image_id": 99, "bbox": [0, 0, 1, 1], "category_id": 7})
    path.write_text(json.dumps(doc))
    with pytest.raises(data.DataError, match=r"annotations\[2\] refers to image 99"):
        data.load(f"coco:{path}", (3, 10, 20))
    path.write_text("[1]")
    with pytest.raises(data.DataError, match="JSON object"):
        data.load(f"coco:{path}", (3, 10, 20))


def test_coco_rle_strings_decode_as_pycocotools_encodes_them():
    mask_utils = pytest.importorskip("pycocotools.mask")
    from runtime.train.data.readers import rle_counts, rle_decode

    rng = np.random.default_rng(0)
    for h, w in ((7, 5), (30, 41), (64, 64)):
        for density in (0.0, 0.1, 0.5, 1.0):
            m = rng.uniform(size=(h, w)) < density
            m[h // 3:h // 2, w // 4:] = density > 0.3  # long runs: multi-group counts
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            counts = rle_counts(rle["counts"].decode())
            np.testing.assert_array_equal(rle_decode(counts, h, w), m)
            np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), m)


def test_coco_instance_masks_from_polygons_and_rle(tmp_path):
    mask_utils = pytest.importorskip("pycocotools.mask")
    for k in range(2):
        Image.new("RGB", (40, 20)).save(tmp_path / f"{k}.png")
    square = np.zeros((20, 40), np.uint8)
    square[4:12, 20:36] = 1
    rle = mask_utils.encode(np.asfortranarray(square))
    doc = {"images": [{"id": k, "file_name": f"{k}.png"} for k in range(2)],
           "annotations": [
               {"image_id": 0, "bbox": [2, 2, 10, 10], "category_id": 1,
                "segmentation": [[2, 2, 12, 2, 12, 12, 2, 12]]},
               {"image_id": 0, "bbox": [20, 4, 16, 8], "category_id": 2,
                "segmentation": {"size": [20, 40], "counts": rle["counts"].decode()}},
               {"image_id": 1, "bbox": [0, 0, 4, 4], "category_id": 2,
                "segmentation": {"size": [20, 40],
                                 "counts": [int(c) for c in [0, 4, 16, 4, 16, 4, 16, 4, 736]]}}],
           "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(doc))
    split = data.coco(path, (3, 20, 40), test_fraction=0.0)
    assert split.task == "instance"
    rows = sorted(split.train.y, key=len)
    boxes, masks = synth.split_instances(rows[1], (20, 40))
    polygon = np.zeros((20, 40), bool)
    polygon[2:12, 2:12] = True  # pixel centres inside, as pycocotools rasterises
    np.testing.assert_array_equal(masks[0], polygon)
    np.testing.assert_array_equal(masks[1], square > 0)
    np.testing.assert_array_equal(synth.split_instances(rows[0], (20, 40))[1][0],
                                  np.pad(np.ones((4, 4), bool), ((0, 16), (0, 36))))
    # at another input size the masks are resampled with the image
    small = data.coco(path, (3, 10, 20), test_fraction=0.0)
    half = synth.split_instances(sorted(small.train.y, key=len)[1], (10, 20))[1]
    np.testing.assert_array_equal(half[1], square[::2, ::2] > 0)
    for bad, message in (
            ({"size": [20, 40], "counts": [5, 5]}, "cover 10 pixels"),
            ({"size": [21, 40], "counts": [800]}, "not the image's"),
            ({"size": [20, 40], "counts": "\x7f"}, "RLE alphabet"),
            ({"size": [20, 40], "counts": "P"}, "ends in the middle"),
            ([[1, 2, 3]], "even number"),
            ({"counts": [1]}, "list of polygons or an RLE")):
        doc["annotations"][0]["segmentation"] = bad
        path.write_text(json.dumps(doc))
        with pytest.raises(data.DataError, match=r"annotations\[0\]\.segmentation: .*"
                           + message):
            data.coco(path, (3, 20, 40))


def test_polygons_fill_as_pycocotools_rasterises_them():
    mask_utils = pytest.importorskip("pycocotools.mask")
    from runtime.train.data.readers import instance_mask

    rng = np.random.default_rng(0)
    for k in (3, 5, 8, 12, 30):
        poly = [list(rng.uniform(0, 40, 2 * k))]
        ours = instance_mask(poly, 30, 40, (30, 40))
        theirs = mask_utils.decode(mask_utils.frPyObjects(poly, 30, 40))[:, :, 0] > 0
        # the two rasterisers may differ on pixels the outline crosses
        assert (ours ^ theirs).sum() <= max(0.1 * theirs.sum(), 6), k
