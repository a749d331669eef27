"""Data sources and batches: the bundled digits, and small files the tests write in each
format (IDX, CIFAR-10 binary, image folders, npz), with the errors a user meets."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from runtime.train import data
from runtime.train.data import DataError


def test_digits_are_real_scans_split_and_fitted():
    split = data.load("digits", (1, 32, 32), seed=0)
    assert split.train.x.shape[1:] == (1, 32, 32) and split.train.x.dtype == np.float32
    assert len(split.train) + len(split.test) == 1797
    assert len(split.test) == round(1797 * 0.2)
    assert set(np.unique(split.train.y)) == set(range(10))
    assert abs(split.train.x.mean()) < 1e-4 and abs(split.train.x.std() - 1) < 1e-3
    again = data.load("digits", (1, 32, 32), seed=0)
    np.testing.assert_array_equal(split.test.y, again.test.y)
    colour = data.load("digits", (3, 16, 16), seed=1)  # grey repeated for a 3-channel net
    assert colour.train.x.shape[1:] == (3, 16, 16)
    np.testing.assert_array_equal(colour.train.x[:, 0], colour.train.x[:, 2])


def test_resize_is_pytorch_bilinear():
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    expected = torch.nn.functional.interpolate(torch.tensor(x), size=(32, 20), mode="bilinear",
                                               align_corners=False).numpy()
    np.testing.assert_allclose(data.resize(x, 32, 20), expected, rtol=1e-5, atol=1e-6)


def write_idx(path, array, compress=False):
    payload = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + \
        array.astype(np.uint8).tobytes()
    (gzip.open if compress else open)(path, "wb").write(payload)


def test_mnist_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (12, 28, 28)), True)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(12) % 10, True)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", rng.integers(0, 256, (5, 28, 28)))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(5))
    split = data.load(f"mnist:{tmp_path}", (1, 32, 32))
    assert split.train.x.shape == (12, 1, 32, 32) and split.test.y.tolist() == [0, 1, 2, 3, 4]
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x09ab")
    with pytest.raises(DataError, match="declares 9 values but holds 2"):
        data.load(f"mnist:{tmp_path}", (1, 28, 28))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"PK\x03\x04")
    with pytest.raises(DataError, match="not an IDX file"):
        data.load(f"mnist:{tmp_path}", (1, 28, 28))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(4))
    with pytest.raises(DataError, match="5 images but 4 labels"):
        data.load(f"mnist:{tmp_path}", (1, 28, 28))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no train images in .*empty: expected one of"):
        data.load(f"fashion-mnist:{tmp_path / 'empty'}", (1, 28, 28))
    with pytest.raises(DataError, match="does not exist"):
        data.load(f"mnist:{tmp_path / 'nowhere'}", (1, 28, 28))


def test_cifar10_binary_batches(tmp_path):
    rng = np.random.default_rng(1)
    for name, n in (("data_batch_1.bin", 4), ("data_batch_2.bin", 3), ("test_batch.bin", 2)):
        records = np.concatenate([rng.integers(0, 10, (n, 1)),
                                  rng.integers(0, 256, (n, 3072))], axis=1)
        records.astype(np.uint8).tofile(tmp_path / name)
    split = data.load(f"cifar10:{tmp_path}", (3, 32, 32))
    assert split.train.x.shape == (7, 3, 32, 32) and len(split.test) == 2
    assert split.train.classes[0] == "airplane"
    with pytest.raises(DataError, match="takes 1 channels"):
        data.load(f"cifar10:{tmp_path}", (1, 32, 32))
    (tmp_path / "test_batch.bin").write_bytes(b"\x01" * 100)
    with pytest.raises(DataError, match="multiple of 3073"):
        data.load(f"cifar10:{tmp_path}", (3, 32, 32))
    with pytest.raises(DataError, match="no CIFAR-10 binary batches"):
        data.load(f"cifar10:{tmp_path / 'missing'}", (3, 32, 32))


def test_image_folders(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(2)
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(5):
            size = (20 + i, 16)  # images of any size are fitted
            Image.fromarray(rng.integers(0, 256, size[::-1] + (3,)).astype(np.uint8)).save(
                tmp_path / cls / f"{i}.png")
    split = data.load(f"folder:{tmp_path}", (3, 12, 12), seed=0)
    assert split.train.classes == ["cat", "dog"] and len(split.train) + len(split.test) == 10
    assert split.train.x.shape[1:] == (3, 12, 12)
    (tmp_path / "dog" / "5.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read image"):
        data.load(f"folder:{tmp_path}", (3, 12, 12))
    (tmp_path / "dog" / "5.png").unlink()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        data.load(f"folder:{tmp_path}", (3, 12, 12))


def test_npz_arrays_and_their_errors(tmp_path):
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "d.npz", x=rng.random((10, 8, 8)), y=np.arange(10) % 3)
    split = data.load(f"npz:{tmp_path / 'd.npz'}", (1, 8, 8))
    assert len(split.train) == 8 and split.train.classes == ["0", "1", "2"]
    np.savez(tmp_path / "t.npz", x=rng.random((6, 1, 8, 8)), y=np.arange(6) % 2,
             x_test=rng.random((2, 1, 8, 8)), y_test=np.array([0, 1]))
    assert len(data.load(f"npz:{tmp_path / 't.npz'}", (1, 8, 8)).test) == 2
    np.savez(tmp_path / "bad.npz", x=rng.random((6, 1, 8, 8)))
    with pytest.raises(DataError, match="lacks the array"):
        data.load(f"npz:{tmp_path / 'bad.npz'}", (1, 8, 8))
    np.savez(tmp_path / "odd.npz", x=rng.random((6, 8)), y=np.arange(6))
    with pytest.raises(DataError, match="N x C x H x W"):
        data.load(f"npz:{tmp_path / 'odd.npz'}", (1, 8, 8))
    with pytest.raises(DataError, match="no such data file: .*none.npz"):
        data.load(f"npz:{tmp_path / 'none.npz'}", (1, 8, 8))
    with pytest.raises(DataError, match="unknown data 'imagenet'"):
        data.load("imagenet", (3, 8, 8))


def test_batches_are_seeded_by_seed_and_epoch_and_cover_the_set():
    ds = data.Dataset(np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1), np.arange(10),
                      [str(k) for k in range(10)])
    first = [y.tolist() for _, y in data.batches(ds, 4, seed=1, epoch=0)]
    assert [len(b) for b in first] == [4, 4, 2] and sorted(sum(first, [])) == list(range(10))
    assert first == [y.tolist() for _, y in data.batches(ds, 4, seed=1, epoch=0)]
    assert first != [y.tolist() for _, y in data.batches(ds, 4, seed=1, epoch=1)]
    assert [len(y) for _, y in data.batches(ds, 4, drop_last=True)] == [4, 4]
    assert [y.tolist() for _, y in data.batches(ds, 5, shuffle=False)][0] == [0, 1, 2, 3, 4]
    with pytest.raises(DataError, match="at least 1"):
        next(data.batches(ds, 0))
