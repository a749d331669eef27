"""Augmentations: each does what it must (shapes kept, pixels moved as said, label
mixing weights summing to one), seeded."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.train import augment
from runtime.train.data import DataError


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    return rng.standard_normal((6, 3, 10, 12)).astype(np.float32), np.arange(6) % 3


def test_every_transform_keeps_the_shape_and_is_seeded(batch):
    x, y = batch
    for name, fn in augment.TRANSFORMS.items():
        extra = {"classes": 3} if name in ("mixup", "cutmix") else {}
        a = fn(x, y, np.random.default_rng(1), **extra)
        b = fn(x, y, np.random.default_rng(1), **extra)
        assert a[0].shape == x.shape and a[0].dtype == np.float32, name
        np.testing.assert_array_equal(a[0], b[0], err_msg=name)


def test_crop_shifts_content_within_the_padding(batch):
    x, y = batch
    out, _ = augment.random_crop(x, y, np.random.default_rng(2), padding=2)
    for i in range(len(x)):  # every crop is the padded image at some offset
        padded = np.pad(x[i], ((0, 0), (2, 2), (2, 2)))
        assert any(np.array_equal(out[i], padded[:, t:t + 10, l:l + 12])
                   for t in range(5) for l in range(5))


def test_flip_mirrors_rows_and_cutout_zeroes_a_square(batch):
    x, y = batch
    out, _ = augment.horizontal_flip(x, y, np.random.default_rng(3), p=1.0)
    np.testing.assert_array_equal(out, x[..., ::-1])
    out, _ = augment.cutout(x, y, np.random.default_rng(3), size=4)
    changed = (out != x).any(axis=1)
    for i in range(len(x)):
        rows, cols = np.nonzero(changed[i])
        assert rows.max() - rows.min() < 4 and cols.max() - cols.min() < 4
        assert (out[i][:, changed[i]] == 0).all()


def test_rotation_by_zero_is_identity_and_keeps_the_centre():
    x = np.random.default_rng(4).standard_normal((2, 1, 9, 9)).astype(np.float32)
    out, _ = augment.rotate(x, None, np.random.default_rng(5), degrees=0.0)
    np.testing.assert_allclose(out, x, atol=1e-6)
    out, _ = augment.rotate(x, None, np.random.default_rng(5), degrees=90.0)
    np.testing.assert_allclose(out[:, :, 4, 4], x[:, :, 4, 4], atol=1e-5)


def test_jitter_keeps_grey_images_grey_shapes():
    x = np.random.default_rng(6).standard_normal((3, 1, 5, 5)).astype(np.float32)
    out, _ = augment.color_jitter(x, None, np.random.default_rng(7))
    assert out.shape == x.shape and not np.array_equal(out, x)


@pytest.mark.parametrize("name", ["mixup", "cutmix"])
def test_mixing_gives_soft_labels_that_sum_to_one(batch, name):
    x, y = batch
    out, soft = augment.TRANSFORMS[name](x, y, np.random.default_rng(8), classes=3)
    assert soft.shape == (6, 3)
    np.testing.assert_allclose(soft.sum(axis=1), 1.0)
    assert (soft.max(axis=1) >= 0.5 - 1e-9).all() or name == "mixup"


def test_cutmix_label_weight_is_the_pasted_area(batch):
    x, y = batch
    x = np.broadcast_to(np.arange(6, dtype=np.float32)[:, None, None, None], x.shape).copy()
    out, soft = augment.cutmix(x, y, np.random.default_rng(9), classes=3)
    for i in range(6):
        share = (out[i, 0] != i).mean()
        own = soft[i, y[i]]
        donor = out[i, 0][out[i, 0] != i]
        if donor.size:
            assert own == pytest.approx(1 - share + (share if y[int(donor[0])] == y[i] else 0))


def test_pipeline_composes_and_refuses_unknown_names(batch):
    x, y = batch
    apply = augment.pipeline("crop, flip,mixup", classes=3)
    out, soft = apply(x, y, np.random.default_rng(10))
    assert out.shape == x.shape and soft.shape == (6, 3)
    assert augment.pipeline(None, 3) is None
    with pytest.raises(DataError, match="unknown augmentation blur"):
        augment.pipeline("crop,blur", 3)
