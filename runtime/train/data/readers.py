"""Readers of the data sets a user has on disk (and the bundled digits): IDX (MNIST),
CIFAR-10 binary batches, class folders, mask folders, COCO JSON and ``.npz`` files. Each
returns a :class:`~runtime.train.data.sets.Split` fitted to the network's input; every
problem with the files is a DataError that says what was expected."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from runtime.errors import DataError
from runtime.train.data.sets import IGNORE, Dataset, Split, holdout, fit



def digits(shape, test_fraction: float = 0.2, seed: int = 0) -> Split:
    """scikit-learn's handwritten digits, a seeded held-out split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = fit(bunch.images[:, None].astype(np.float32) / 16.0, shape, "digits")
    return holdout(x, bunch.target.astype(np.int64), [str(d) for d in range(10)],
                    test_fraction, seed)


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format): magic 0x0000 08 D, then D big-endian sizes, then
    unsigned bytes."""
    with _open(path) as f:
        head = f.read(4)
        if len(head) < 4 or head[:3] != b"\x00\x00\x08":
            raise DataError(f"{path} is not an IDX file of unsigned bytes (it should start "
                            f"with 00 00 08 and the number of dimensions)")
        dims = struct.unpack(f">{head[3]}I", f.read(4 * head[3]))
        data = np.frombuffer(f.read(), dtype=np.uint8)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path} declares {'x'.join(map(str, dims))} values but holds "
                        f"{data.size}: the file is cut short or padded")
    return data.reshape(dims)


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
                                            f"{prefix}-images.idx3-ubyte"], f"{part} images"))
        labels = read_idx(_find(directory, [f"{prefix}-labels-idx1-ubyte",
                                            f"{prefix}-labels.idx1-ubyte"], f"{part} labels"))
        if images.ndim != 3 or labels.ndim != 1:
            raise DataError(f"{kind} {part}: images must be N x H x W and labels N, got "
                            f"{images.shape} and {labels.shape}")
        x = fit(images[:, None].astype(np.float32) / 255.0, shape, kind)
        parts[part] = Dataset(x, labels.astype(np.int64), [str(d) for d in range(10)])
    return Split(parts["train"], parts["test"])


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck"]


def _cifar_file(path: Path):
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
    xs, ys = zip(*(_cifar_file(f) for f in train_files))
    tx, ty = _cifar_file(test_file)
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
    for label, name in enumerate(classes):
        files = sorted(p for p in (directory / name).iterdir()
                       if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"class folder {directory / name} holds no images "
                            f"({', '.join(sorted(IMAGE_SUFFIXES))})")
        for path in files:
            images.append(read_image(path, shape))
            labels.append(label)
    x = np.stack(images).astype(np.float32) / 255.0
    return holdout(x, np.array(labels, dtype=np.int64), classes, test_fraction, seed)


def npz(path: str | Path, shape, test_fraction: float = 0.2, seed: int = 0) -> Split:
    """Arrays ``x`` (N, C, H, W) or (N, H, W) and ``y`` (N,); ``x_test``/``y_test`` if
    given, else a seeded held-out split."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"npz file {path} does not exist")
    try:
        arrays = dict(np.load(path, allow_pickle=False))
    except (ValueError, OSError) as exc:
        raise DataError(f"{path} is not a readable .npz of plain arrays: {exc}") from None
    missing = {"x", "y"} - set(arrays)
    if missing:
        raise DataError(f"{path} lacks the array(s) {', '.join(sorted(missing))}: it needs "
                        f"x (N, C, H, W) and y (N,)")

    def images(a, name):
        if a.ndim == 3:
            a = a[:, None]
        if a.ndim != 4:
            raise DataError(f"{path}: {name} must be N x C x H x W (or N x H x W), got {a.shape}")
        return fit(a.astype(np.float32), shape, str(path))

    x, y = images(arrays["x"], "x"), arrays["y"].astype(np.int64)
    classes = [str(k) for k in range(int(y.max(initial=-1)) + 1)]
    if "x_test" in arrays and "y_test" in arrays:
        return Split(Dataset(x, y, classes),
                     Dataset(images(arrays["x_test"], "x_test"),
                             arrays["y_test"].astype(np.int64), classes))
    return holdout(x, y, classes, test_fraction, seed)


def _open_image(path, read):
    from PIL import Image

    try:
        with Image.open(path) as im:
            return read(im)
    except OSError as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None


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
    classes = (names_file.read_text().split("\n") if names_file.is_file() else
               [str(k) for k in range(count)])
    classes = [n.strip() for n in classes if n.strip()]
    if len(classes) < count:
        raise DataError(f"the masks use class {count - 1} but {names_file} names only "
                        f"{len(classes)} classes")
    return holdout(np.stack(xs).astype(np.float32) / 255.0, y, classes, test_fraction,
                    seed, "segment")


def coco(path: str | Path, shape, test_fraction: float = 0.2, seed: int = 0) -> Split:
    """Detection data in COCO's JSON layout: ``images`` (id, file_name), ``annotations``
    (image_id, bbox [x, y, width, height] in pixels, category_id) and ``categories`` (id,
    name). Image files are found next to the JSON file or in its ``images/`` folder;
    boxes are scaled with the images to the network's input; category ids, in increasing
    order, become classes 0, 1, ..."""
    import json

    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise DataError(f"COCO annotation file {path} does not exist")
    try:
        doc = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise DataError(f"{path} must hold a JSON object with images, annotations and "
                        f"categories")
    missing = [k for k in ("images", "annotations", "categories") if k not in doc]
    if missing:
        raise DataError(f"{path} lacks {', '.join(missing)}: a COCO file has images, "
                        f"annotations and categories")
    categories = sorted(doc["categories"], key=lambda cat: cat["id"])
    index = {cat["id"]: k for k, cat in enumerate(categories)}
    _, h, w = shape
    _image_mode(shape)  # before reading a file
    boxes_of: dict = {image["id"]: [] for image in doc["images"]}
    for k, ann in enumerate(doc["annotations"]):
        if ann.get("image_id") not in boxes_of or ann.get("category_id") not in index:
            raise DataError(f"{path}: annotation {k} refers to image {ann.get('image_id')} "
                            f"or category {ann.get('category_id')}, which the file does not "
                            f"list")
        bx, by, bw, bh = ann["bbox"]
        boxes_of[ann["image_id"]].append([bx, by, bx + bw, by + bh, index[ann["category_id"]]])
    xs, ys = [], []
    for image in doc["images"]:
        candidates = [path.parent / image["file_name"], path.parent / "images" /
                      image["file_name"]]
        found = next((p for p in candidates if p.is_file()), None)
        if found is None:
            raise DataError(f"{path}: image {image['file_name']} is not in {path.parent} "
                            f"nor in {path.parent / 'images'}")
        with Image.open(found) as im:
            width, height = im.size
        xs.append(read_image(found, shape))
        rows = np.array(boxes_of[image["id"]], np.float32).reshape(-1, 5)
        rows[:, [0, 2]] *= w / width
        rows[:, [1, 3]] *= h / height
        ys.append(rows)
    if not xs:
        raise DataError(f"{path} lists no images")
    y = np.empty(len(ys), dtype=object)
    y[:] = ys
    return holdout(np.stack(xs).astype(np.float32) / 255.0, y,
                    [str(cat.get("name", cat["id"])) for cat in categories], test_fraction,
                    seed, "detect")
