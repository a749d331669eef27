"""Readers of the data sets a user has on disk (and the bundled digits): IDX (MNIST),
CIFAR-10 binary batches, class folders, mask folders, COCO JSON and ``.npz`` files. Each
returns a :class:`~runtime.train.data.sets.Split` fitted to the network's input; every
problem with the files is a DataError that says what was expected."""

from __future__ import annotations

import gzip
import json
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from runtime.errors import DataError
from runtime.files import (finite_number, json_type, read_arrays, read_bytes, read_json,
                           regular_file, shorten)
from runtime.limits import check_bytes
from runtime.train.data.sets import IGNORE, Dataset, Split, holdout, fit



def digits(shape, test_fraction: float = 0.2, seed: int = 0) -> Split:
    """scikit-learn's handwritten digits, a seeded held-out split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = fit(bunch.images[:, None].astype(np.float32) / 16.0, shape, "digits")
    return holdout(x, bunch.target.astype(np.int64), [str(d) for d in range(10)],
                    test_fraction, seed)


def _open(path: Path):
    regular_file(path, "data file", DataError)
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: Path, per_item: int = 0) -> np.ndarray:
    """An IDX file (MNIST's format): magic 0x0000 08 D, then D big-endian sizes, then
    unsigned bytes. The sizes are checked before the data is read (``per_item``: the
    bytes each item will take once fitted to the network, counted in the memory it
    needs), and no more than they declare is decompressed (a gzip bomb stops there)."""
    try:
        with _open(path) as f:
            head = f.read(4)
            if len(head) < 4 or head[:3] != b"\x00\x00\x08" or not 1 <= head[3] <= 4:
                raise DataError(f"{path} is not an IDX file of unsigned bytes (it should "
                                f"start with 00 00 08 and the number of dimensions, 1 to 4)")
            raw = f.read(4 * head[3])
            if len(raw) < 4 * head[3]:
                raise DataError(f"{path} is cut short in its header")
            dims = struct.unpack(f">{head[3]}I", raw)
            count = math.prod(dims)
            check_bytes(count + dims[0] * per_item, f"reading {path}",
                        hint="is the file what it claims? (its header declares "
                        f"{'x'.join(map(str, dims))} values)")
            data = f.read(count + 1)
    except (OSError, EOFError, zlib.error) as exc:  # a damaged gzip stream
        raise DataError(f"{path} is damaged: {shorten(exc)}") from None
    if len(data) > count:
        raise DataError(f"{path} holds more than the {count} values it declares "
                        f"({'x'.join(map(str, dims))}): the file is padded or not IDX")
    if len(data) < count:
        raise DataError(f"{path} declares {'x'.join(map(str, dims))} values but holds "
                        f"{len(data)}: the file is cut short")
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def _find(directory: Path, names: list[str], what: str) -> Path:
    for name in names:
        for candidate in (directory / name, directory / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise DataError(f"no {what} in {directory}: expected one of "
                    f"{', '.join(names)} (optionally .gz)")


def mnist(directory: str | Path, shape, kind: str = "mnist") -> Split:
    """MNIST or Fashion-MNIST from the four standard IDX files."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{kind} directory {directory} does not exist")
    parts = {}
    for part, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(_find(directory, [f"{prefix}-images-idx3-ubyte",
                                            f"{prefix}-images.idx3-ubyte"], f"{part} images"),
                          per_item=3 * 4 * math.prod(shape))
        labels_path = _find(directory, [f"{prefix}-labels-idx1-ubyte",
                                        f"{prefix}-labels.idx1-ubyte"], f"{part} labels")
        labels = read_idx(labels_path)
        if images.ndim != 3 or labels.ndim != 1:
            raise DataError(f"{kind} {part}: images must be N x H x W and labels N, got "
                            f"{images.shape} and {labels.shape}")
        if len(images) != len(labels):
            raise DataError(f"{kind} {part}: {len(images)} images but {len(labels)} labels")
        if labels.max(initial=0) > 9:
            raise DataError(f"{labels_path}: labels must be 0..9, found {labels.max()}")
        x = fit(images[:, None].astype(np.float32) / 255.0, shape, kind)
        parts[part] = Dataset(x, labels.astype(np.int64), [str(d) for d in range(10)])
    return Split(parts["train"], parts["test"])


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck"]


def _cifar_file(path: Path, shape):
    size = regular_file(path, "CIFAR-10 batch", DataError)
    check_bytes(size + size // 3073 * 3 * 4 * math.prod(shape), f"reading {path}")
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size % 3073:
        raise DataError(f"{path} is not a CIFAR-10 binary batch: its size ({raw.size} bytes) "
                        f"is not a multiple of 3073 (1 label byte + 3x32x32 pixels)")
    records = raw.reshape(-1, 3073)
    if records[:, 0].max(initial=0) > 9:
        raise DataError(f"{path}: labels must be 0..9, found {records[:, 0].max()}")
    return records[:, 1:].reshape(-1, 3, 32, 32), records[:, 0].astype(np.int64)


def cifar10(directory: str | Path, shape) -> Split:
    directory = Path(directory)
    train_files = sorted(directory.glob("data_batch_*.bin"))
    test_file = directory / "test_batch.bin"
    if not train_files or not test_file.is_file():
        raise DataError(f"no CIFAR-10 binary batches in {directory}: expected "
                        f"data_batch_1.bin ... and test_batch.bin")
    xs, ys = zip(*(_cifar_file(f, shape) for f in train_files))
    tx, ty = _cifar_file(test_file, shape)
    return Split(Dataset(fit(np.concatenate(xs) / 255.0, shape, "cifar10"), np.concatenate(ys),
                         CIFAR10_CLASSES),
                 Dataset(fit(tx / 255.0, shape, "cifar10"), ty, CIFAR10_CLASSES))


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def folder(directory: str | Path, shape, test_fraction: float = 0.2, seed: int = 0) -> Split:
    """One sub-folder per class (sorted names are the labels), images of any size."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"image folder {directory} does not exist")
    classes = sorted(p.name for p in directory.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{directory} has no sub-folders: put each class's images in a "
                        f"folder named after the class")
    _image_mode(shape)  # before reading a file
    images, labels = [], []
    found = {}
    for name in classes:
        found[name] = sorted(p for p in (directory / name).iterdir()
                             if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found[name]:
            raise DataError(f"class folder {directory / name} holds no images "
                            f"({', '.join(sorted(IMAGE_SUFFIXES))})")
    check_bytes(sum(map(len, found.values())) * 4 * 4 * math.prod(shape),
                f"reading the images of {directory}")
    for label, name in enumerate(classes):
        for path in found[name]:
            images.append(read_image(path, shape))
            labels.append(label)
    x = np.stack(images).astype(np.float32) / 255.0
    return holdout(x, np.array(labels, dtype=np.int64), classes, test_fraction, seed)


def npz(path: str | Path, shape, test_fraction: float = 0.2, seed: int = 0) -> Split:
    """Arrays ``x`` (N, C, H, W) or (N, H, W) and ``y`` (N,) of class numbers;
    ``x_test``/``y_test`` if given, else a seeded held-out split."""
    path = Path(path)
    arrays = read_arrays(path, "data file", DataError)
    missing = {"x", "y"} - set(arrays)
    if missing:
        raise DataError(f"{path} lacks the array(s) {', '.join(sorted(missing))}: it needs "
                        f"x (N, C, H, W) and y (N,)")

    def images(a, name):
        if a.ndim == 3:
            a = a[:, None]
        if a.ndim != 4:
            raise DataError(f"{path}: {name} must be N x C x H x W (or N x H x W), got {a.shape}")
        check_bytes(len(a) * 3 * 4 * math.prod(shape), f"fitting {path}'s {name} to the "
                    f"network's input")
        return fit(a.astype(np.float32), shape, str(path))

    def labels(y, name, count):
        if y.ndim != 1 or len(y) != count:
            raise DataError(f"{path}: {count} images in x{name[1:]} but "
                            f"{len(y) if y.ndim == 1 else y.shape} labels in {name}")
        bad = y[(y < 0) | (y != np.round(y))] if y.dtype.kind == "f" else y[y < 0]
        if bad.size:
            raise DataError(f"{path}: labels {name} must be class numbers 0, 1, 2, ...; "
                            f"found {bad[0]:.3g}")
        return y.astype(np.int64)

    x = images(arrays["x"], "x")
    y = labels(arrays["y"], "y", len(x))
    if not len(x):
        raise DataError(f"{path} holds no images (x is empty)")
    classes = [str(k) for k in range(int(y.max(initial=-1)) + 1)]
    if "x_test" in arrays and "y_test" in arrays:
        x_test = images(arrays["x_test"], "x_test")
        y_test = labels(arrays["y_test"], "y_test", len(x_test))
        if y_test.max(initial=0) >= len(classes):
            raise DataError(f"{path}: y_test uses class {y_test.max()}, which y never does")
        return Split(Dataset(x, y, classes), Dataset(x_test, y_test, classes))
    return holdout(x, y, classes, test_fraction, seed)


def _open_image(path, read):
    """``read(image)`` of an image file, any damage or a decompression bomb (over
    Pillow's limit of pixels) a DataError naming the file."""
    import warnings

    from PIL import Image

    regular_file(path, "image file", DataError)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return read(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DataError(f"cannot read image {path}: {_pixels(path):,} pixels, over the limit "
                        f"of {Image.MAX_IMAGE_PIXELS:,} (a decompression bomb?)") from None
    except MemoryError:
        raise DataError(f"cannot read image {path}: too large to decode") from None
    except Exception as exc:  # Pillow raises many kinds for damaged files
        raise DataError(f"cannot read image {path}: {shorten(exc) or type(exc).__name__}"
                        ) from None


def _pixels(path) -> int:
    """The pixel count an image file declares (its header only)."""
    from PIL import Image

    saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with Image.open(path) as im:
            return im.size[0] * im.size[1]
    except Exception:  # noqa: BLE001 (only for the message)
        return 0
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def read_image(path: str | Path, shape) -> np.ndarray:
    """An image file fitted to a network input (C, H, W): converted to grey or RGB and
    resized bilinearly; uint8 (C, H, W)."""
    from PIL import Image

    c, h, w = shape
    mode = _image_mode(shape)
    pixels = _open_image(path, lambda im: np.asarray(im.convert(mode).resize((w, h),
                                                                              Image.BILINEAR)))
    return pixels.reshape(h, w, c).transpose(2, 0, 1)


def read_mask(path: str | Path, size: tuple[int, int]) -> np.ndarray:
    """A mask PNG of class indices resized (nearest) to (height, width): int64. Palette
    PNGs (PASCAL VOC) keep their indices; other images are read as grey."""
    from PIL import Image

    h, w = size

    def read(im):
        im = im if im.mode in ("P", "L", "I", "I;16") else im.convert("L")
        return np.asarray(im.resize((w, h), Image.NEAREST)).astype(np.int64)

    return _open_image(path, read)


def _image_mode(shape) -> str:
    mode = {1: "L", 3: "RGB"}.get(shape[0])
    if mode is None:
        raise DataError(f"image files give 1- or 3-channel images; the network takes "
                        f"{shape[0]}")
    return mode


def mask_folder(directory: str | Path, shape, test_fraction: float = 0.2,
                seed: int = 0) -> Split:
    """Segmentation data: ``DIR/images/NAME.png|jpg...`` and ``DIR/masks/NAME.png`` whose
    pixel values are class indices (a palette PNG's indices, as PASCAL VOC's); 255 marks
    pixels to ignore (VOC's object borders). An optional ``DIR/classes.txt`` names the
    classes, one per line."""
    directory = Path(directory)
    images_dir, masks_dir = directory / "images", directory / "masks"
    if not images_dir.is_dir() or not masks_dir.is_dir():
        raise DataError(f"{directory} must hold two folders, images/ and masks/ (a mask "
                        f"PNG of class indices for each image, with the same name)")
    _, h, w = shape
    _image_mode(shape)  # before reading a file
    files = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{images_dir} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    xs, ys = [], []
    for path in files:
        mask_path = masks_dir / f"{path.stem}.png"
        if not mask_path.is_file():
            raise DataError(f"image {path.name} has no mask: expected {mask_path}")
        xs.append(read_image(path, shape))
        ys.append(read_mask(mask_path, (h, w)))
    y = np.stack(ys)
    y[y == 255] = IGNORE
    names_file = directory / "classes.txt"
    count = int(y.max(initial=0)) + 1
    classes = (read_bytes(names_file, "class names file", DataError, 1 << 20)
               .decode("utf-8", "replace").split("\n") if names_file.exists() else
               [str(k) for k in range(count)])
    classes = [n.strip() for n in classes if n.strip()]
    if len(classes) < count:
        raise DataError(f"the masks use class {count - 1} but {names_file} names only "
                        f"{len(classes)} classes")
    return holdout(np.stack(xs).astype(np.float32) / 255.0, y, classes, test_fraction,
                    seed, "segment")


MAX_COCO_BYTES = 1 << 30
MAX_POLYGON_NUMBERS = 1 << 16  # coordinates in one annotation's polygons


def rle_counts(text: str) -> list[int]:
    """The run lengths of COCO's compressed RLE string (pycocotools' rleFrString): each
    count in 5-bit groups (character - 48, bit 5: more groups follow, bit 4 of the last
    group: negative), and from the third count on, the difference from the count two
    before."""
    counts: list[int] = []
    p = 0
    while p < len(text):
        x = k = 0
        more = True
        while more:
            if p >= len(text):
                raise ValueError("the string ends in the middle of a count")
            c = ord(text[p]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"character {text[p]!r} is not part of COCO's RLE alphabet")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def rle_decode(counts, height: int, width: int) -> np.ndarray:
    """A (height, width) bool mask from run lengths of 0s and 1s alternately, starting with
    0s, down the columns (COCO's RLE)."""
    counts = np.asarray(counts, dtype=np.int64)
    if (counts < 0).any():
        raise ValueError("a run length is negative")
    if int(counts.sum()) != height * width:
        raise ValueError(f"the runs cover {int(counts.sum())} pixels, not {height} x {width}")
    values = np.arange(len(counts)) % 2 == 1
    return np.repeat(values, counts).reshape(width, height).T


def fill_polygon(xy: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The pixels (h, w) whose centres lie inside a polygon (k, 2) of x, y in pixels
    (even-odd rule), row by row: pixel (i, j) spans [j, j + 1) x [i, i + 1), so a
    rectangle from 2 to 12 covers pixels 2 to 11, as pycocotools rasterises it."""
    h, w = shape
    x0, y0 = xy[:, 0], xy[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    out = np.zeros((h, w), bool)
    lo, hi = max(int(np.floor(y0.min())), 0), min(int(np.ceil(y0.max())), h)
    for i in range(lo, hi):
        yc = i + 0.5
        crossing = (y0 <= yc) != (y1 <= yc)
        if not crossing.any():
            continue
        a, b, c, d = x0[crossing], y0[crossing], x1[crossing], y1[crossing]
        xs = np.sort(a + (yc - b) * (c - a) / (d - b))
        for left, right in zip(xs[0::2], xs[1::2]):
            start = min(max(int(np.ceil(left - 0.5)), 0), w)
            stop = min(max(int(np.ceil(right - 0.5)), 0), w)
            out[i, start:stop] = True
    return out


def instance_mask(segmentation, height: int, width: int, shape: tuple[int, int]) -> np.ndarray:
    """An annotation's ``segmentation`` (polygons [[x1, y1, x2, y2, ...], ...] in image
    pixels, their union; or RLE {"size": [height, width], "counts": [...] or "..."}) as a
    bool mask of ``shape`` (h, w), the network's input. ValueError says what is wrong."""
    from PIL import Image

    h, w = shape
    if isinstance(segmentation, list):
        numbers = sum(len(poly) if isinstance(poly, list) else 0 for poly in segmentation)
        if not segmentation or numbers > MAX_POLYGON_NUMBERS:
            raise ValueError(f"polygons must be 1 to {MAX_POLYGON_NUMBERS} coordinates in "
                             f"lists")
        mask = np.zeros((h, w), bool)
        for poly in segmentation:
            if not (isinstance(poly, list) and len(poly) >= 6 and len(poly) % 2 == 0
                    and all(finite_number(v) for v in poly)):
                raise ValueError("a polygon must be an even number (at least 6) of finite "
                                 "coordinates x1, y1, x2, y2, ...")
            xy = np.asarray(poly, np.float64).reshape(-1, 2) * [w / width, h / height]
            mask |= fill_polygon(xy, (h, w))
        return mask
    if not isinstance(segmentation, dict) or not {"size", "counts"} <= set(segmentation):
        raise ValueError("must be a list of polygons or an RLE object {size, counts}")
    size, counts = segmentation["size"], segmentation["counts"]
    if size != [height, width]:
        raise ValueError(f"RLE size {shorten(json.dumps(size), 40)} is not the image's "
                         f"[{height}, {width}]")
    if isinstance(counts, str):
        if len(counts) > 8 * height * width + 64:
            raise ValueError("the RLE string is longer than any mask of the image needs")
        counts = rle_counts(counts)
    elif not (isinstance(counts, list) and all(isinstance(c, int) and not isinstance(c, bool)
                                               for c in counts)):
        raise ValueError("RLE counts must be a string or a list of whole numbers")
    mask = rle_decode(counts, height, width)
    if (height, width) == (h, w):
        return mask
    return np.asarray(Image.fromarray(mask.astype(np.uint8)).resize((w, h), Image.NEAREST)) > 0


def coco(path: str | Path, shape, test_fraction: float = 0.2, seed: int = 0) -> Split:
    """Detection data in COCO's JSON layout: ``images`` (id, file_name), ``annotations``
    (image_id, bbox [x, y, width, height] in pixels, category_id) and ``categories`` (id,
    name). Image files are found next to the JSON file or in its ``images/`` folder (never
    outside that folder); boxes are scaled with the images to the network's input;
    category ids, in increasing order, become classes 0, 1, ... Where every annotation
    has a ``segmentation`` (polygons or RLE, :func:`instance_mask`), the data is for
    instance segmentation: each row carries its mask at the network's input size (task
    ``instance``, rows (k, 5 + H * W)). Every field is checked, and errors name it
    (``annotations[3].bbox``)."""
    path = Path(path)
    doc = read_json(path, "COCO annotation file", DataError, dict, MAX_COCO_BYTES)
    missing = [k for k in ("images", "annotations", "categories") if k not in doc]
    if missing:
        raise DataError(f"{path} lacks {', '.join(missing)}: a COCO file has images, "
                        f"annotations and categories")
    images = _records(doc, "images", ("id", "file_name"), path)
    annotations = _records(doc, "annotations", ("image_id", "category_id", "bbox"), path)
    categories = sorted(_records(doc, "categories", ("id",), path),  # numbers, then text
                        key=lambda cat: (0, cat["id"], "") if isinstance(_key(cat["id"]), (
                            int, float)) else (1, 0, str(cat["id"])))
    index = {_key(cat["id"]): k for k, cat in enumerate(categories)}
    _, h, w = shape
    _image_mode(shape)  # before reading a file
    instances = bool(annotations) and all("segmentation" in a for a in annotations)
    check_bytes(len(images) * 4 * 4 * math.prod(shape)
                + (len(annotations) * 4 * h * w if instances else 0),
                f"reading the images of {path}")
    boxes_of: dict = {}
    for k, image in enumerate(images):
        if not isinstance(image["file_name"], str) or not image["file_name"]:
            raise DataError(f"{path}: images[{k}].file_name must be a file name")
        boxes_of.setdefault(_key(image["id"]), [])
    for k, ann in enumerate(annotations):
        if _key(ann["image_id"]) not in boxes_of or _key(ann["category_id"]) not in index:
            raise DataError(f"{path}: annotations[{k}] refers to image "
                            f"{shorten(ann['image_id'], 40)} or category "
                            f"{shorten(ann['category_id'], 40)}, which the file does not list")
        box = ann["bbox"]
        if not (isinstance(box, list) and len(box) == 4 and all(map(finite_number, box))):
            raise DataError(f"{path}: annotations[{k}].bbox must be 4 finite numbers [x, y, "
                            f"width, height], got {shorten(json.dumps(box), 60)}")
        if box[2] < 0 or box[3] < 0:
            raise DataError(f"{path}: annotations[{k}].bbox has a negative width or height: "
                            f"{box}")
        boxes_of[_key(ann["image_id"])].append((k, box, index[_key(ann["category_id"])]))
    root = path.parent.resolve()
    xs, ys = [], []
    for k, image in enumerate(images):
        found = _image_file(path, root, image["file_name"], f"images[{k}].file_name")
        width, height = _open_image(found, lambda im: im.size)
        xs.append(read_image(found, shape))
        rows = []
        for a, (bx, by, bw, bh), cls in boxes_of[_key(image["id"])]:
            if bx < -1 or by < -1 or bx + bw > width + 1 or by + bh > height + 1:
                raise DataError(f"{path}: annotations[{a}].bbox {[bx, by, bw, bh]} lies "
                                f"outside image {image['file_name']} ({width}x{height})")
            row = [bx, by, bx + bw, by + bh, cls]
            if instances:
                try:
                    mask = instance_mask(annotations[a]["segmentation"], height, width, (h, w))
                except ValueError as exc:
                    raise DataError(f"{path}: annotations[{a}].segmentation: {exc}") from None
                row = np.r_[row, mask.ravel()]
            rows.append(np.asarray(row, np.float32))
        rows = (np.stack(rows) if rows else np.zeros((0, 5))).astype(np.float32).reshape(
            -1, 5 + h * w if instances else 5)
        rows[:, [0, 2]] *= w / width
        rows[:, [1, 3]] *= h / height
        ys.append(rows)
    if not xs:
        raise DataError(f"{path} lists no images")
    y = np.empty(len(ys), dtype=object)
    y[:] = ys
    return holdout(np.stack(xs).astype(np.float32) / 255.0, y,
                   [shorten(cat.get("name", cat["id"]), 60) for cat in categories],
                   test_fraction, seed, "instance" if instances else "detect")


def _key(value):
    """An id as a dictionary key (ids are numbers or text; anything else is refused)."""
    return value if isinstance(value, (int, float, str)) and not isinstance(value, bool) \
        else ("unusable", repr(value)[:40])


def _records(doc: dict, key: str, needed: tuple, path: Path) -> list[dict]:
    items = doc[key]
    if not isinstance(items, list):
        raise DataError(f"{path}: '{key}' must be a list, got a JSON {json_type(items)}")
    for k, item in enumerate(items):
        if not isinstance(item, dict):
            raise DataError(f"{path}: {key}[{k}] must be a JSON object, got a JSON "
                            f"{json_type(item)}")
        lacking = [n for n in needed if n not in item]
        if lacking:
            raise DataError(f"{path}: {key}[{k}] lacks " + ", ".join(f"'{n}'" for n in lacking))
    return items


def _image_file(path: Path, root: Path, name: str, field: str) -> Path:
    """An image a COCO file names, next to it or in its images/ folder, never outside
    that folder (``../../etc/passwd`` is refused)."""
    for candidate in (root / name, root / "images" / name):
        try:
            resolved = candidate.resolve()
        except (OSError, RuntimeError):  # a symlink loop
            continue
        if not resolved.is_relative_to(root):
            raise DataError(f"{path}: {field} '{shorten(name, 60)}' leads outside the data "
                            f"set's folder (image files must be beside {path.name} or in "
                            f"its images/ folder)")
        if resolved.is_file():
            return resolved
    raise DataError(f"{path}: image {shorten(name, 60)} is not in {path.parent} nor in "
                    f"{path.parent / 'images'}")
