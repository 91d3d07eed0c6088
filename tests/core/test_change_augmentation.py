"""Change-specific augmentation: per-date photometry, zoom, date swap, unchanged pairs, pasted change."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seg2change_core.datasets import IGNORE_INDEX, ChangeDetectionDataset, ChangePair
from seg2change_core.datasets.augmentation import (
    ChangeAugmentation,
    augment_arrays,
    augment_change,
    paste_objects,
    paste_patches,
    photometric_jitter,
)
from seg2change_core.errors import DatasetError


def _pair(key: str, seed: int, size: int = 64) -> ChangePair:
    rng = np.random.default_rng(seed)
    label = np.zeros((size, size), np.uint8)
    label[10:20, 10:30] = 255
    label[0, :] = 128
    return ChangePair(
        name=key.split("/")[1],
        dataset=key.split("/")[0],
        before=rng.integers(0, 255, (3, size, size), dtype=np.uint8),
        after=rng.integers(0, 255, (3, size, size), dtype=np.uint8),
        label=label,
        class_before=rng.integers(0, 4, (size, size)).astype(np.uint8),
        class_after=rng.integers(4, 8, (size, size)).astype(np.uint8),
    )


def test_photometric_jitter_moves_values_and_stays_physical() -> None:
    image = np.full((3, 8, 8), 100, np.uint8)
    image[:, :4] = 200
    out = photometric_jitter(image, np.random.default_rng(0), 0.3, 255.0, noise=0.02)
    assert out.dtype == np.float32 and out.shape == image.shape
    assert out.min() >= 0 and not np.allclose(out, image)
    # the bright half stays brighter: the jitter is monotonic before noise
    assert out[:, :, :4].mean() > out[:, :, 4:].mean()
    assert np.array_equal(photometric_jitter(image, np.random.default_rng(0), 0.0, 255.0), image)


def test_paste_marks_pasted_pixels_changed_and_keeps_ignored() -> None:
    image = np.zeros((3, 32, 32), np.float32)
    donor = np.full((3, 32, 32), 7.0, np.float32)
    target = np.zeros((32, 32), np.uint8)
    target[0] = IGNORE_INDEX
    out, out_target = paste_patches(image, target, donor, np.random.default_rng(1), count=2, size=(0.2, 0.5))
    pasted = (out == 7.0).all(axis=0)
    assert pasted.any()
    assert np.array_equal(out_target == 1, pasted & (target != IGNORE_INDEX))
    assert (out_target[0] == IGNORE_INDEX).all()
    assert (image == 0).all() and (target[1:] == 0).all()  # inputs untouched


def test_pasted_objects_keep_their_shape_and_are_marked_changed() -> None:
    image = np.zeros((3, 16, 16), np.float32)
    donor = np.full((3, 16, 16), 9.0, np.float32)
    shape = np.zeros((16, 16), bool)
    shape[3:6, 4:12] = True  # an L-shaped "building"
    shape[6:10, 4:6] = True
    target = np.zeros((16, 16), np.uint8)
    target[3] = IGNORE_INDEX
    out, out_target = paste_objects(image, target, donor, shape)
    assert np.array_equal((out == 9.0).all(axis=0), shape)
    assert np.array_equal(out_target == 1, shape & (target != IGNORE_INDEX))
    assert (out_target[3] == IGNORE_INDEX).all() and (image == 0).all()
    with pytest.raises(DatasetError, match="does not match"):
        paste_objects(image, target, donor[:, :8], shape)


def test_dataset_pastes_another_pairs_changed_objects() -> None:
    pairs = [_pair("d/a", 0), _pair("d/b", 1)]
    for pair in pairs:
        pair.label[:] = 0
    pairs[1].label[30:40, 30:50] = 255  # only pair b changed
    settings = ChangeAugmentation(paste_objects=1.0)
    data = ChangeDetectionDataset(pairs, crop_size=64, augment=True, seed=0, change_augmentation=settings)
    sample = data[0]  # pair a, whose own label is all unchanged
    changed = sample["target"].numpy() == 1
    assert changed.sum() == 200
    assert np.array_equal(sample["after"].numpy()[:, changed], pairs[1].after[:, 30:40, 30:50].reshape(3, -1))


def test_unchanged_pair_has_no_change_but_two_looks() -> None:
    a = np.random.default_rng(0).integers(0, 255, (3, 16, 16)).astype(np.float32)
    b = np.random.default_rng(1).integers(0, 255, (3, 16, 16)).astype(np.float32)
    target = np.ones((16, 16), np.uint8)
    target[0, 0] = IGNORE_INDEX
    settings = ChangeAugmentation(photometric=0.3, photometric_probability=1.0, unchanged_pair=1.0)
    before, after, out_target, _ = augment_change(
        a, b, target, np.random.default_rng(2), settings, value_range=255
    )
    assert int((out_target == 1).sum()) == 0 and out_target[0, 0] == IGNORE_INDEX
    assert not np.allclose(before, after)  # each date drew its own photometry
    assert np.corrcoef(before.ravel(), after.ravel())[0, 1] > 0.9  # ...of the same scene


def test_zoom_resamples_images_smoothly_and_labels_by_nearest() -> None:
    image = np.arange(64 * 64, dtype=np.float32).reshape(1, 64, 64)
    label = (np.arange(64 * 64).reshape(64, 64) % 3).astype(np.uint8)
    out = augment_arrays(
        [image, image, label], np.random.default_rng(0), crop_size=32, flip=False, rotate=False, zoom=2.0
    )
    assert out[0].shape == (1, 32, 32) and out[2].shape == (32, 32)
    assert out[2].dtype == np.uint8 and set(np.unique(out[2])) <= {0, 1, 2}
    assert np.array_equal(out[0], out[1])


def test_dataset_applies_change_augmentation_reproducibly() -> None:
    pairs = [_pair("d/a", 0), _pair("d/b", 1)]
    settings = ChangeAugmentation(
        zoom=1.5, photometric=0.2, noise=0.01, swap_dates=0.5, unchanged_pair=0.2, paste=0.5
    )
    data = ChangeDetectionDataset(pairs, crop_size=48, augment=True, seed=3, change_augmentation=settings)
    samples = [data[i] for i in range(2)]
    again = [data[i] for i in range(2)]
    for s, t in zip(samples, again, strict=True):
        assert torch.equal(s["before"], t["before"]) and torch.equal(s["target"], t["target"])
    seen_swap = False
    for epoch in range(12):
        data.set_epoch(epoch)
        sample = data[0]
        assert sample["before"].shape == (3, 48, 48) and sample["target"].shape == (48, 48)
        assert sample["class_before"] is not None
        # class maps follow a date swap: date 1 of pair "a" holds classes 0..3, date 2 holds 4..7
        if int(sample["class_before"].min()) >= 4:
            seen_swap = True
    assert seen_swap
    plain = ChangeDetectionDataset(pairs, crop_size=48, augment=True, seed=3)
    assert not torch.equal(plain[0]["before"], samples[0]["before"])


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(DatasetError, match="zoom must be >= 1"):
        ChangeAugmentation(zoom=0.5)
    with pytest.raises(DatasetError, match="paste_size"):
        ChangeAugmentation(paste_size=(0.5, 0.2))


def test_balanced_samples_by_area_and_change() -> None:
    from seg2change_core.datasets import balanced_samples

    small = _pair("d/a", 0, size=64)  # has change
    still = _pair("d/b", 1, size=64)
    still.label[:] = 0
    large = _pair("d/c", 2, size=200)  # about 10 crops of 64 px
    large.label[:] = 0
    data = ChangeDetectionDataset([small, still, large])
    counts = balanced_samples(data, 64, change_boost=3)
    assert counts == [3, 1, 10]
    drawn = ChangeDetectionDataset([small, still, large], crop_size=64, augment=True, samples_per_pair=counts)
    assert len(drawn) == 14
    assert [drawn.pair_index(i) for i in range(len(drawn))] == [0] * 3 + [1] + [2] * 10
    assert [drawn[i]["key"] for i in (0, 3, 4)] == ["d/a", "d/b", "d/c"]
    with pytest.raises(DatasetError, match="one count of at least 1 per pair"):
        ChangeDetectionDataset([small, still], samples_per_pair=[1])
