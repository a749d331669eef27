"""Every kind of damaged, hostile or oversized file and value archc reads after the spec,
with the command that reads it and the error it must give.

One table feeds two consumers: ``tests/cli/test_hostile_inputs.py`` runs each case (exit
code 2, one error line naming the file, no traceback, no "internal error", in bounded
time) and ``scripts/gen_docs.py`` writes the exact text into ``docs/errors.md``.

A case's ``make(kit)`` writes its files into the current folder (``kit`` gives a tiny
spec and a trained run folder to damage) and returns the arguments of ``archc``.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

TINY = """name: tiny
variables:
  classes: 10
input: {channels: 1, height: 8, width: 8}
layers:
  - flatten
  - linear: {out_features: classes}
    name: fc
"""

TINY_RGB = TINY.replace("channels: 1", "channels: 3")

TINY_SEG = """name: tinyseg
input: {channels: 3, height: 16, width: 16}
layers:
  - conv2d: {out_channels: 3, kernel_size: 1}
"""


class Kit:
    """What the cases build on: ``trained`` is a run folder of ``archc train tiny.yaml
    --data digits --epochs 2 --checkpoint-every 20`` made once (by the caller)."""

    def __init__(self, trained: Path):
        self.trained = Path(trained)

    def spec(self, text: str = TINY, name: str = "tiny.yaml") -> str:
        Path(name).write_text(text)
        return name

    def run(self, name: str = "run") -> Path:
        shutil.copytree(self.trained, name)
        return Path(name)

    def weights(self, name: str = "w.npz", **changes) -> str:
        rng = np.random.default_rng(0)
        arrays = {"fc.weight": rng.standard_normal((10, 64)).astype(np.float32),
                  "fc.bias": np.zeros(10, np.float32)}
        arrays.update(changes)
        np.savez(name, **arrays)
        return name


def npy_bytes(shape, descr: str = "<f4", data: bytes = b"") -> bytes:
    """An .npy header declaring ``shape`` followed by ``data`` (not necessarily enough)."""
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": descr, "fortran_order": False,
                                               "shape": tuple(shape)})
    return out.getvalue() + data


def zip_bomb(path: str, name: str, elements: int) -> None:
    """An .npz whose array declares ``elements`` float32 zeros, compressed to almost
    nothing (400 MB in under 400 kB for 10**8), written without allocating them."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
            f.write(npy_bytes((elements,)))
            left, chunk = 4 * elements, bytes(1 << 24)
            while left:
                f.write(chunk[:min(left, len(chunk))])
                left -= min(left, len(chunk))


def idx_bytes(dims, data: bytes | None = None) -> bytes:
    data = bytes(int(np.prod(dims))) if data is None else data
    return b"\x00\x00\x08" + bytes([len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + data


def mnist_folder(folder: str = "mnist", labels: bytes | None = None,
                 images: bytes | None = None, gz: bool = False) -> str:
    os.makedirs(folder, exist_ok=True)
    parts = {"train-images-idx3-ubyte": images or idx_bytes((20, 8, 8)),
             "train-labels-idx1-ubyte": idx_bytes((20,), labels or bytes(range(10)) * 2),
             "t10k-images-idx3-ubyte": idx_bytes((10, 8, 8)),
             "t10k-labels-idx1-ubyte": idx_bytes((10,), bytes(range(10)))}
    for name, data in parts.items():
        if gz:
            with gzip.open(f"{folder}/{name}.gz", "wb", compresslevel=1) as f:
                f.write(data)
        else:
            Path(folder, name).write_bytes(data)
    return folder


def gzip_bomb_idx(folder: str = "mnist", count: int = 60_000_000) -> str:
    """MNIST whose training images (gzipped) declare ``count`` 8x8 images of zeros."""
    mnist_folder(folder)
    os.remove(f"{folder}/train-images-idx3-ubyte")
    with gzip.open(f"{folder}/train-images-idx3-ubyte.gz", "wb", compresslevel=9) as f:
        f.write(idx_bytes((count, 8, 8), b""))
        left, chunk = count * 64, bytes(1 << 24)
        while left:
            f.write(chunk[:min(left, len(chunk))])
            left -= min(left, len(chunk))
    return folder


def png(path: str, size=(8, 8), mode: str = "RGB") -> None:
    from PIL import Image

    Image.new(mode, size).save(path)


def coco_file(images=None, annotations=None, categories=None, name: str = "coco.json",
              raw: str | None = None) -> str:
    os.makedirs("images", exist_ok=True)
    for k in range(4):
        png(f"images/{k}.png", (16, 16))
    doc = {"images": [{"id": k, "file_name": f"{k}.png", "width": 16, "height": 16}
                      for k in range(4)] if images is None else images,
           "annotations": [{"id": k, "image_id": k, "category_id": 1,
                            "bbox": [2, 2, 6, 6]} for k in range(4)]
           if annotations is None else annotations,
           "categories": [{"id": 1, "name": "square"}] if categories is None else categories}
    Path(name).write_text(raw if raw is not None else json.dumps(doc))
    return name


def damaged_checkpoint(kit: Kit, which: str = "newest", file: str = "weights.npz",
                       how: str = "truncate") -> Path:
    """The trained run with a file of its newest (or every) checkpoint damaged."""
    run = kit.run()
    last = json.loads((run / "last.json").read_text())
    folders = [last["checkpoint"]] if which == "newest" else \
        [p.name for p in run.glob("ckpt-*")]
    for folder in folders:
        path = run / folder / file
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2] if how == "truncate" else b"")
    return run


@dataclass(frozen=True)
class FileCase:
    kind: str
    title: str
    make: Callable[[Kit], list[str]]
    message: str  # a substring of the error line
    hint: str | None = None


def _run_with(weights_maker) -> Callable[[Kit], list[str]]:
    def make(kit: Kit) -> list[str]:
        return ["run", kit.spec(), "--weights", weights_maker(kit)]
    return make


def _noise(count: int) -> bytes:
    """Random bytes, the same every time (the documented messages stay the same)."""
    import random

    return random.Random(count).randbytes(count)


def _write(name: str, data: bytes) -> str:
    Path(name).write_bytes(data)
    return name


def _npz_of(name: str, members: dict[str, bytes]) -> str:
    with zipfile.ZipFile(name, "w") as zf:
        for key, data in members.items():
            zf.writestr(key, data)
    return name


HELD: list[int] = []  # lock files held by this process for the run-in-use case


def _hold_lock(run: str) -> None:
    """Hold ``run/lock`` as another training would (a flock through its own file)."""
    import fcntl

    os.makedirs(run, exist_ok=True)
    fd = os.open(f"{run}/lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, b"pid 4242 on trainer, since 2026-12-03 10:00:00")
    HELD.append(fd)


def release_locks() -> None:
    while HELD:
        os.close(HELD.pop())


def _relu_chain(name: str, count: int) -> str:
    """An ONNX model of ``count`` Relu operators in a chain."""
    import onnx
    from onnx import TensorProto, helper

    names = ["x"] + [f"r{k}" for k in range(count)]
    nodes = [helper.make_node("Relu", [a], [b]) for a, b in zip(names, names[1:])]
    graph = helper.make_graph(nodes, "chain",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info(names[-1], TensorProto.FLOAT,
                                                             [1, 4])])
    onnx.save(helper.make_model(graph), name)
    return name


def _fifo(kit: Kit) -> list[str]:
    os.mkfifo("net.yaml")
    return ["check", "net.yaml"]


def _half(kit: Kit) -> str:
    data = Path(kit.weights()).read_bytes()
    return _write("w.npz", data[: len(data) // 2])


def _eval_run(run) -> list[str]:
    return ["eval", "tiny.yaml", "--data", "digits", "--weights", str(run)]


def _resume(run) -> list[str]:
    return ["train", "tiny.yaml", "--data", "digits", "--epochs", "3", "--resume", str(run)]


def _coco_train(name: str) -> list[str]:
    return ["train", "tiny_rgb.yaml", "--data", f"coco:{name}", "--task", "detect",
            "--epochs", "1"]


CASES: list[FileCase] = [
    # --- weights --------------------------------------------------------------------
    FileCase("weights-missing", "A weights file that does not exist",
             _run_with(lambda kit: "nope.npz"), "no such weights file: nope.npz"),
    FileCase("weights-empty", "An empty weights file",
             _run_with(lambda kit: _write("w.npz", b"")), "weights file w.npz is empty"),
    FileCase("weights-truncated", "A weights file cut short",
             _run_with(_half), "weights file w.npz is not a readable .npz file"),
    FileCase("weights-npy", "A plain .npy array instead of named arrays",
             _run_with(lambda kit: (np.save("w.npy", np.zeros(3, np.float32)), "w.npy")[1]),
             "holds one unnamed array (.npy)", hint="numpy.savez"),
    FileCase("weights-text", "Weights that are strings",
             _run_with(lambda kit: kit.weights(**{"fc.bias": np.array(["a"] * 10)})),
             "array 'fc.bias' holds text (<U1); archc reads real numbers only"),
    FileCase("weights-pickle", "An object array (a pickle) in the weights",
             _run_with(lambda kit: kit.weights(**{"fc.bias": np.array([None] * 10)})),
             "array 'fc.bias' holds Python objects (a pickle)"),
    FileCase("weights-complex", "Complex weights",
             _run_with(lambda kit: kit.weights(**{"fc.bias": np.zeros(10, np.complex64)})),
             "array 'fc.bias' holds complex numbers (complex64)"),
    FileCase("weights-nan", "Weights holding NaN",
             _run_with(lambda kit: kit.weights(**{"fc.bias": np.full(10, np.nan, np.float32)})),
             "array 'fc.bias' holds 10 NaN value(s)", hint="--allow-nonfinite"),
    FileCase("weights-inf", "Weights holding infinite values",
             _run_with(lambda kit: kit.weights(**{"fc.bias": np.array([np.inf] * 2 + [0] * 8,
                                                                       np.float32)})),
             "array 'fc.bias' holds 2 infinite value(s)"),
    FileCase("weights-huge-header", "An array header declaring 100 billion elements",
             _run_with(lambda kit: _npz_of("w.npz", {
                 "fc.weight.npy": npy_bytes((100_000_000_000,), data=bytes(64)),
                 "fc.bias.npy": npy_bytes((10,), data=bytes(40))})),
             "array 'fc.weight' declares 100000000000 float32 values (400,000,000,000 bytes)"),
    FileCase("weights-zip-bomb", "A zip bomb: 400 MB of zeros in 400 kB",
             _run_with(lambda kit: (zip_bomb("w.npz", "fc.weight", 100_000_000), "w.npz")[1]),
             "does not fit tiny: missing: fc.bias | wrong shape: fc.weight (100000000,)"),
    FileCase("weights-not-zip", "Random bytes named .npz",
             _run_with(lambda kit: _write("w.npz", _noise(1000))),
             "is not a NumPy array (.npy) nor an .npz file"),
    FileCase("weights-pt-garbage", "A damaged PyTorch file",
             _run_with(lambda kit: _write("w.pt", b"PK\x03\x04" + _noise(500))),
             "w.pt is not a readable PyTorch state_dict"),
    FileCase("weights-folder", "A folder that is not a run folder",
             _run_with(lambda kit: (os.makedirs("stuff", exist_ok=True), "stuff")[1]),
             "stuff is a folder but not a run folder of archc train"),
    # --- run folders ------------------------------------------------------------------
    FileCase("run-every-checkpoint-damaged", "Every checkpoint of a run folder damaged",
             lambda kit: (kit.spec(), _resume(damaged_checkpoint(kit, "every")))[1],
             "run has no intact checkpoint to resume from (ckpt-0001/weights.npz is damaged"),
    FileCase("run-resume-missing", "--resume of a folder that does not exist",
             lambda kit: (kit.spec(), _resume("nowhere"))[1],
             "--resume nowhere: no such run folder"),
    FileCase("run-task-empty", "A run folder whose task.json is empty",
             lambda kit: (kit.spec(), (kit.run() / "task.json").write_text(""),
                          _eval_run("run"))[2],
             "task file run/task.json is empty"),
    FileCase("run-task-wrong", "A run folder whose task.json names no task",
             lambda kit: (kit.spec(), (kit.run() / "task.json").write_text('{"task": 3}'),
                          _eval_run("run"))[2],
             "task file run/task.json: 'task' must be one of classify, segment, detect, embed"),
    FileCase("run-in-use", "A second training into a run folder in use",
             lambda kit: (kit.spec(), _hold_lock("run"),
                          ["train", "tiny.yaml", "--data", "digits", "--out", "run"])[2],
             "run folder run is in use by another training (pid"),
    # --- sizes ------------------------------------------------------------------------
    FileCase("size-out-channels", "A layer with a billion channels",
             lambda kit: ["run", kit.spec(TINY + "  - conv2d: {out_channels: 1000000000, "
                          "kernel_size: 1}\n".replace("  - conv2d", "  - reshape: [10, 1, 1]\n"
                                                      "  - conv2d"))],
             "compiling tiny needs about"),
    FileCase("size-linear", "A linear layer of 10^9 features",
             lambda kit: ["export", kit.spec(TINY.replace("out_features: classes",
                                                          "out_features: 1000000000")),
                          "--format", "onnx", "-o", "tiny.onnx"],
             "compiling tiny needs about 242.1 GiB of memory (parameter fc.weight: 238.4 GiB"),
    FileCase("size-batch", "A batch of a billion images",
             lambda kit: ["run", kit.spec(), "--batch", "1000000000"],
             "running tiny at batch 1,000,000,000 needs about",
             hint="give a smaller --batch-size/--batch"),
    FileCase("size-input", "A 100,000 x 100,000 input",
             lambda kit: ["run", kit.spec(TINY.replace("height: 8, width: 8",
                                                       "height: 100000, width: 100000")
                                          .replace("  - flatten\n  - linear: {out_features: "
                                                   "classes}\n    name: fc\n",
                                                   "  - max_pool2d: 2\n"))],
             "at batch 1 needs about"),
    FileCase("size-set-classes", "--set of a billion classes",
             lambda kit: ["train", kit.spec(), "--data", "digits",
                          "--set", "classes=1000000000"],
             "(parameter fc.weight: 238.4 GiB)"),
    FileCase("size-generated-data", "A generated data set of a billion images",
             lambda kit: ["train", kit.spec(TINY_SEG), "--data", "shapes-seg:1000000000"],
             "generating shapes-seg:1000000000 needs about"),
    FileCase("size-max-memory", "A limit given with --max-memory",
             lambda kit: ["run", kit.spec(), "--batch", "100000", "--max-memory", "10M"],
             "than the 10.0 MiB --max-memory"),
    # --- numbers and text -------------------------------------------------------------
    FileCase("number-5000-digits", "A 5,000-digit integer in a spec",
             lambda kit: ["check", kit.spec(TINY.replace("classes: 10",
                                                         "classes: " + "9" * 5000))],
             "an integer of 5,000 digits"),
    FileCase("number-5000-digits-set", "A 5,000-digit integer in --set",
             lambda kit: ["check", kit.spec(), "--set", "classes=" + "9" * 5000],
             "an integer of 5,000 digits"),
    FileCase("long-set-value", "A 100,000-character --set value",
             lambda kit: ["check", kit.spec(), "--set", "classes=" + "x" * 100_000],
             "got the text 'xxxxxxxxxx"),
    FileCase("expression-huge-round", "round() of a huge power",
             lambda kit: ["check", kit.spec(TINY.replace("classes: 10",
                                                         "classes: round(10.0 ** 300)"))],
             "too large for a spec"),
    # --- odd files --------------------------------------------------------------------
    FileCase("spec-dev-zero", "A spec that is /dev/zero",
             lambda kit: ["check", "/dev/zero"], "is not a regular file"),
    FileCase("spec-fifo", "A spec that is a FIFO (a named pipe)", _fifo,
             "net.yaml is not a regular file"),
    FileCase("output-folder-missing", "-o into a folder that does not exist",
             lambda kit: ["run", kit.spec(), "-o", "missing/y.npy"],
             "cannot write output file missing/y.npy: the folder missing does not exist",
             hint="mkdir -p missing"),
    FileCase("export-folder-missing", "export -o into a folder that does not exist",
             lambda kit: ["export", kit.spec(), "--format", "onnx", "-o", "out/net.onnx"],
             "the folder out does not exist"),
    FileCase("import-folder-missing", "import -o into a folder that does not exist",
             lambda kit: ["import", _write("m.onnx", b""), "-o", "specs/net.yaml"],
             "the folder specs does not exist"),
    FileCase("input-not-npy", "--input that is not an array",
             lambda kit: ["run", kit.spec(), "--input", _write("x.npy", b"hello")],
             "input file x.npy is not a NumPy array (.npy) nor an .npz file"),
    # --- data -------------------------------------------------------------------------
    FileCase("idx-labels-range", "MNIST labels outside the ten classes",
             lambda kit: ["train", kit.spec(), "--data",
                          "mnist:" + mnist_folder(labels=bytes([3, 12] * 10))],
             "labels must be 0..9, found 12"),
    FileCase("idx-gzip-bomb", "A gzip bomb in an IDX file",
             lambda kit: ["train", kit.spec(), "--data", "mnist:" + gzip_bomb_idx(),
                          "--max-memory", "2G"],
             "reading mnist/train-images-idx3-ubyte.gz needs about"),
    FileCase("idx-padded", "An IDX file with more data than it declares",
             lambda kit: ["train", kit.spec(), "--data", "mnist:" + mnist_folder(
                 images=idx_bytes((20, 8, 8), bytes(20 * 64 + 5)))],
             "holds more than the 1280 values it declares"),
    FileCase("image-bomb", "An image over Pillow's decompression-bomb limit",
             lambda kit: (os.makedirs("imgs/a"), os.makedirs("imgs/b"),
                          png("imgs/a/big.png", (14_000, 14_000), "1"), png("imgs/b/1.png"),
                          ["train", kit.spec(TINY_RGB, "tiny_rgb.yaml"), "--data",
                           "folder:imgs"])[-1],
             "cannot read image imgs/a/big.png: 196,000,000 pixels"),
    FileCase("image-corrupt", "A corrupt image",
             lambda kit: (os.makedirs("imgs/a"), os.makedirs("imgs/b"),
                          _write("imgs/a/bad.png", b"\x89PNG\r\n\x1a\n" + _noise(200)),
                          png("imgs/b/1.png"),
                          ["train", kit.spec(TINY_RGB, "tiny_rgb.yaml"), "--data",
                           "folder:imgs"])[-1],
             "cannot read image imgs/a/bad.png"),
    FileCase("npz-empty", "An empty .npz data file",
             lambda kit: ["train", kit.spec(), "--data", "npz:" + _write("d.npz", b"")],
             "data file d.npz is empty"),
    FileCase("npz-labels-negative", "Negative labels in an .npz data set",
             lambda kit: (np.savez("d.npz", x=np.zeros((8, 8, 8), np.float32),
                                   y=np.array([0, 1, -3, 1, 0, 1, 0, 1])),
                          ["train", kit.spec(), "--data", "npz:d.npz"])[1],
             "d.npz: labels y must be class numbers 0, 1, 2, ...; found -3"),
    FileCase("npz-labels-fraction", "Fractional labels in an .npz data set",
             lambda kit: (np.savez("d.npz", x=np.zeros((8, 8, 8), np.float32),
                                   y=np.linspace(0, 1, 8)),
                          ["train", kit.spec(), "--data", "npz:d.npz"])[1],
             "d.npz: labels y must be class numbers 0, 1, 2, ...; found 0.143"),
    FileCase("npz-nan-images", "NaN pixels in an .npz data set",
             lambda kit: (np.savez("d.npz", x=np.full((8, 8, 8), np.nan, np.float32),
                                   y=np.zeros(8, np.int64)),
                          ["train", kit.spec(), "--data", "npz:d.npz"])[1],
             "array 'x' holds 512 NaN value(s)"),
    FileCase("npz-count-mismatch", "Different numbers of images and labels",
             lambda kit: (np.savez("d.npz", x=np.zeros((8, 8, 8), np.float32),
                                   y=np.zeros(5, np.int64)),
                          ["train", kit.spec(), "--data", "npz:d.npz"])[1],
             "d.npz: 8 images in x but 5 labels in y"),
    FileCase("coco-no-bbox", "A COCO annotation without bbox",
             lambda kit: (kit.spec(TINY_RGB, "tiny_rgb.yaml"),
                          _coco_train(coco_file(annotations=[{"id": 1, "image_id": 0,
                                                              "category_id": 1}])))[1],
             "coco.json: annotations[0] lacks 'bbox'"),
    FileCase("coco-no-file-name", "A COCO image without file_name",
             lambda kit: (kit.spec(TINY_RGB, "tiny_rgb.yaml"),
                          _coco_train(coco_file(images=[{"id": 0}])))[1],
             "coco.json: images[0] lacks 'file_name'"),
    FileCase("coco-bbox-3", "A COCO bbox of three numbers",
             lambda kit: (kit.spec(TINY_RGB, "tiny_rgb.yaml"), _coco_train(coco_file(
                 annotations=[{"id": 1, "image_id": 0, "category_id": 1,
                               "bbox": [1, 2, 3]}])))[1],
             "coco.json: annotations[0].bbox must be 4 finite numbers [x, y, width, height]"),
    FileCase("coco-bbox-text", "Text in a COCO bbox",
             lambda kit: (kit.spec(TINY_RGB, "tiny_rgb.yaml"), _coco_train(coco_file(
                 annotations=[{"id": 1, "image_id": 0, "category_id": 1,
                               "bbox": [1, 2, "3", 4]}])))[1],
             "annotations[0].bbox must be 4 finite numbers"),
    FileCase("coco-bbox-nan", "NaN in a COCO bbox",
             lambda kit: (kit.spec(TINY_RGB, "tiny_rgb.yaml"), _coco_train(coco_file(
                 raw='{"images": [{"id": 0, "file_name": "0.png"}], "annotations": '
                     '[{"image_id": 0, "category_id": 1, "bbox": [NaN, 1, 2, 2]}], '
                     '"categories": [{"id": 1, "name": "a"}]}')))[1],
             "annotations[0].bbox must be 4 finite numbers"),
    FileCase("coco-negative-box", "A COCO box of negative size",
             lambda kit: (kit.spec(TINY_RGB, "tiny_rgb.yaml"), _coco_train(coco_file(
                 annotations=[{"id": 1, "image_id": 0, "category_id": 1,
                               "bbox": [4, 4, -2, 3]}])))[1],
             "annotations[0].bbox has a negative width or height"),
    FileCase("coco-box-outside", "A COCO box outside its image",
             lambda kit: (kit.spec(TINY_RGB, "tiny_rgb.yaml"), _coco_train(coco_file(
                 annotations=[{"id": 1, "image_id": 0, "category_id": 1,
                               "bbox": [30, 4, 8, 8]}])))[1],
             "annotations[0].bbox [30, 4, 8, 8] lies outside image 0.png (16x16)"),
    FileCase("coco-images-not-list", "COCO images that are not a list",
             lambda kit: (kit.spec(TINY_RGB, "tiny_rgb.yaml"),
                          _coco_train(coco_file(images={"0": "0.png"})))[1],
             "coco.json: 'images' must be a list, got a JSON object"),
    FileCase("coco-deep", "Deeply nested JSON",
             lambda kit: (kit.spec(TINY_RGB, "tiny_rgb.yaml"),
                          _coco_train(coco_file(raw="[" * 100_000 + "]" * 100_000)))[1],
             "is nested too deeply to be read"),
    FileCase("coco-path-traversal", "A COCO file_name that leaves the data set's folder",
             lambda kit: (kit.spec(TINY_RGB, "tiny_rgb.yaml"), _coco_train(coco_file(
                 images=[{"id": 0, "file_name": "../../../../etc/passwd"}],
                 annotations=[])))[1],
             "images[0].file_name '../../../../etc/passwd' leads outside"),
    # --- ONNX ------------------------------------------------------------------------
    FileCase("onnx-garbage", "An ONNX file of random bytes",
             lambda kit: ["import", _write("m.onnx", _noise(300)), "-o", "m.yaml"],
             "m.onnx"),
    FileCase("onnx-too-many-nodes", "An ONNX model too large for a spec",
             lambda kit: ["import", _relu_chain("big.onnx", 120_000), "-o", "big.yaml"],
             "120,000 operators"),
]
