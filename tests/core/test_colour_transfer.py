"""Colour transfer between source images: histogram matching and the dataset's style donors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seg2change_core.datasets import ChangeDetectionDataset, ChangePair, Sample
from seg2change_core.datasets.augmentation import ChangeAugmentation, augment_change
from seg2change_core.datasets.colour_transfer import match_histograms, pick_style_donors
from seg2change_core.errors import DatasetError


def _pair(dataset: str, name: str, seed: int, brightness: int) -> ChangePair:
    rng = np.random.default_rng(seed)
    label = np.zeros((48, 48), np.uint8)
    label[8:20, 8:24] = 255
    return ChangePair(
        name=name,
        dataset=dataset,
        before=rng.integers(0, 60, (3, 48, 48), dtype=np.uint8) + np.uint8(brightness),
        after=rng.integers(0, 60, (3, 48, 48), dtype=np.uint8) + np.uint8(brightness),
        label=label,
    )


def test_matched_bands_take_the_reference_distribution_and_keep_their_order() -> None:
    rng = np.random.default_rng(0)
    image = rng.normal(100.0, 20.0, (3, 40, 40)).astype(np.float32)
    reference = np.stack([rng.integers(lo, lo + 50, (64, 64)) for lo in (0, 100, 200)]).astype(np.uint8)
    out = match_histograms(image, reference)
    assert out.dtype == np.float32 and out.shape == image.shape
    for band in range(3):
        # values lie in the reference's range, with its quantiles
        assert reference[band].min() <= out[band].min() and out[band].max() <= reference[band].max()
        assert np.quantile(out[band], 0.5) == pytest.approx(np.quantile(reference[band], 0.5), abs=1.0)
        order = np.argsort(image[band].ravel(), kind="stable")
        assert (np.diff(out[band].ravel()[order]) >= 0).all()
    # integer and float references give the same mapping (bincount and unique paths)
    assert np.array_equal(out, match_histograms(image, reference.astype(np.float32)))


def test_matching_refuses_other_bands_and_empty_images() -> None:
    with pytest.raises(DatasetError, match="same bands"):
        match_histograms(np.zeros((3, 4, 4)), np.zeros((4, 4, 4)))
    with pytest.raises(DatasetError, match="empty"):
        match_histograms(np.zeros((3, 0, 4)), np.zeros((3, 4, 4)))


def test_style_donors_come_from_other_sources_only() -> None:
    sources = ["a/s1", "a/s1", "a/s2", "b/s3"]
    rng = np.random.default_rng(0)
    picks = [p for _ in range(50) for p in pick_style_donors(sources, 0, rng, 1.0)]
    assert all(p is not None and p[0] in (2, 3) and p[1] in (0, 1) for p in picks)
    assert pick_style_donors(["a/s1", "a/s1"], 0, rng, 1.0) == (None, None)
    assert pick_style_donors(sources, 0, rng, 0.0) == (None, None)


def test_augment_change_restyles_dates_and_keeps_the_target() -> None:
    rng = np.random.default_rng(3)
    before = rng.integers(0, 60, (3, 32, 32)).astype(np.float32)
    after = before.copy()
    target = np.zeros((32, 32), np.uint8)
    dark = np.full((3, 8, 8), 10, np.uint8)
    bright = np.full((3, 8, 8), 200, np.uint8)
    a, b, out_target, _ = augment_change(
        before, after, target, rng, ChangeAugmentation(), value_range=255.0, styles=(dark, bright)
    )
    assert (a == 10).all() and (b == 200).all() and np.array_equal(out_target, target)
    same = augment_change(
        before, after, target, np.random.default_rng(3), ChangeAugmentation(), value_range=255.0
    )
    assert np.array_equal(same[0], before) and np.array_equal(same[1], after)


def test_dataset_colour_transfer_changes_colours_only() -> None:
    pairs = [
        _pair("d", "s1_0000_0000", 0, 0),
        _pair("d", "s1_0000_0048", 1, 0),
        _pair("d", "s2_0000_0000", 2, 180),
    ]

    def samples(probability: float) -> list[Sample]:
        change = ChangeAugmentation(photometric=0.1, paste=0.5, colour_transfer=probability)
        dataset = ChangeDetectionDataset(pairs, crop_size=32, augment=True, change_augmentation=change)
        return [dataset[i] for i in range(len(pairs))]

    plain, styled = samples(0.0), samples(1.0)
    for p, s in zip(plain, styled, strict=True):
        # crops, pasting and the target are drawn as without colour transfer
        assert torch.equal(p["target"], s["target"])
    # the dark source's dates took the bright source's colours, and the other way round
    assert float(styled[0]["before"].mean()) > float(plain[0]["before"].mean()) + 100
    assert float(styled[2]["after"].mean()) < float(plain[2]["after"].mean()) - 100
    with pytest.raises(DatasetError, match="probabilities"):
        ChangeAugmentation(colour_transfer=1.5)
