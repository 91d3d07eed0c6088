"""Pairs as torch samples: :class:`ChangeDetectionDataset`, :class:`Sample`, :class:`Batch`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypedDict

import numpy as np
import torch
from numpy.typing import NDArray
from torch.utils.data import Dataset

from seg2change_core.datasets.augmentation import ChangeAugmentation, augment_arrays, augment_change
from seg2change_core.datasets.colour_transfer import pick_style_donors
from seg2change_core.datasets.images import Array
from seg2change_core.datasets.labels import IGNORE_INDEX, LabelEncoding, encode_label
from seg2change_core.datasets.pairs import ChangePair, PairSource
from seg2change_core.datasets.statistics import value_scale
from seg2change_core.errors import DatasetError

__all__ = ["Batch", "ChangeDetectionDataset", "Sample", "collate_samples"]


class Sample(TypedDict):
    """One dataset item (tensors without a batch axis)."""

    before: torch.Tensor
    """``(bands, H, W)`` float32 raw values."""
    after: torch.Tensor
    """Same for date 2."""
    target: torch.Tensor
    """``(H, W)`` int64 change target: 0, 1 or 255."""
    class_before: torch.Tensor | None
    """``(H, W)`` int64 class map of date 1, or ``None``."""
    class_after: torch.Tensor | None
    """Same for date 2."""
    key: str
    """``dataset/name``."""


@dataclass(frozen=True)
class Batch:
    """Stacked samples (see :func:`collate_samples`).

    Attributes
    ----------
    before, after
        ``(B, bands, H, W)`` float32 raw values.
    target
        ``(B, H, W)`` int64 change targets.
    class_before, class_after
        ``(B, H, W)`` int64 class maps, or ``None``.
    keys
        Pair keys.
    """

    before: torch.Tensor
    after: torch.Tensor
    target: torch.Tensor
    class_before: torch.Tensor | None
    class_after: torch.Tensor | None
    keys: list[str]


def collate_samples(samples: Sequence[Sample]) -> Batch:
    """Stack samples of one size into a :class:`Batch` (a ``DataLoader`` ``collate_fn``).

    Raises
    ------
    DatasetError
        When the samples differ in size (crop them, or use batch size 1).
    """
    shapes = {tuple(s["before"].shape) for s in samples}
    if len(shapes) != 1:
        raise DatasetError(
            f"cannot batch pairs of different sizes {sorted(shapes)}; set a crop size or use batch size 1"
        )
    with_classes = all(s["class_before"] is not None and s["class_after"] is not None for s in samples)
    return Batch(
        before=torch.stack([s["before"] for s in samples]),
        after=torch.stack([s["after"] for s in samples]),
        target=torch.stack([s["target"] for s in samples]),
        class_before=torch.stack([s["class_before"] for s in samples])  # type: ignore[misc]
        if with_classes
        else None,
        class_after=torch.stack([s["class_after"] for s in samples])  # type: ignore[misc]
        if with_classes
        else None,
        keys=[s["key"] for s in samples],
    )


@dataclass
class ChangeDetectionDataset(Dataset[Sample]):
    """Pairs as training or evaluation samples, optionally cropped and augmented.

    Parameters
    ----------
    pairs
        Folder pairs (read on first use) or in-memory :class:`ChangePair` objects.
    crop_size
        Side of the random square crop; ``None`` gives whole images.
    augment
        Draw random flips and rotations (and, with ``crop_size``, random crop positions). Without
        it, crops are taken at the top-left corner.
    seed
        Seed of the augmentation draws (see the module docstring).
    ignore_value
        Raw label value meaning "not labelled" (added to every pair's label encoding).
    label_encoding
        Declared label encoding for every pair (see
        :class:`~seg2change_core.datasets.LabelEncoding`); ``None`` uses each pair's own
        (detected per dataset folder when scanned), or detects it per label for pairs without one.
    cache
        Keep pairs in memory once read.
    repeats
        Samples drawn from each pair per epoch (item ``i`` is pair ``i % len(pairs)``, each
        with its own draws); use it to take several random crops of large images per epoch.
    samples_per_pair
        Samples drawn from each pair within one repeat (default 1 each), e.g. from
        :func:`~seg2change_core.datasets.balanced_samples`: more crops of large frames and of
        pairs that hold change.
    focus_change
        Share of augmented crops drawn to contain a randomly chosen changed pixel (when the pair
        has any), so that rare change and its boundaries are seen more often; 0 draws every crop
        uniformly.
    change_augmentation
        Change-specific augmentation (zoom, per-date photometry, date swap, unchanged pairs,
        pasted synthetic change; see :mod:`~seg2change_core.datasets.augmentation`), applied
        when ``augment``; ``None`` applies none.

    Notes
    -----
    Call :meth:`set_epoch` before each epoch so that every epoch draws new augmentations.
    """

    pairs: Sequence[PairSource]
    crop_size: int | None = None
    augment: bool = False
    seed: int = 0
    ignore_value: int | None = None
    label_encoding: LabelEncoding | None = None
    cache: bool = True
    repeats: int = 1
    samples_per_pair: Sequence[int] | None = None
    focus_change: float = 0.0
    change_augmentation: ChangeAugmentation | None = None
    epoch: int = 0
    _cache: dict[int, ChangePair] = field(default_factory=dict, repr=False)
    _pair_of: list[int] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.pairs:
            raise DatasetError("a dataset needs at least one pair")
        if self.crop_size is not None and self.crop_size < 1:
            raise DatasetError(f"crop_size must be positive, got {self.crop_size}")
        if self.repeats < 1:
            raise DatasetError(f"repeats must be at least 1, got {self.repeats}")
        counts = [1] * len(self.pairs) if self.samples_per_pair is None else list(self.samples_per_pair)
        if len(counts) != len(self.pairs) or min(counts) < 1:
            raise DatasetError(
                f"samples_per_pair needs one count of at least 1 per pair ({len(self.pairs)} pairs), "
                f"got {self.samples_per_pair}"
            )
        self._pair_of = [i for _ in range(self.repeats) for i, n in enumerate(counts) for _ in range(n)]

    def __len__(self) -> int:
        return len(self._pair_of)

    def pair_index(self, index: int) -> int:
        """The pair that sample ``index`` is drawn from."""
        return self._pair_of[index]

    def set_epoch(self, epoch: int) -> None:
        """Use the augmentation draws of this epoch."""
        self.epoch = epoch

    def pair(self, index: int) -> ChangePair:
        """The raw pair at ``index`` (read, then cached when ``cache``)."""
        if index in self._cache:
            return self._cache[index]
        loaded = self.pairs[index].load()
        if self.cache:
            self._cache[index] = loaded
        return loaded

    @property
    def keys(self) -> list[str]:
        """Pair keys in order."""
        return [p.key for p in self.pairs]

    def _augment_change(
        self,
        arrays: list[Array],
        rng: np.random.Generator,
        change: ChangeAugmentation,
        pair: ChangePair,
        index: int,
        has_classes: bool,
    ) -> list[Array]:
        """Apply :func:`augment_change` to cropped arrays (donor: a date of another pair)."""
        donor = None
        if change.paste > 0 and len(self.pairs) > 1:
            other = (self.pair_index(index) + int(rng.integers(1, len(self.pairs)))) % len(self.pairs)
            donor_pair = self.pair(other)
            if donor_pair.before.shape[0] == pair.before.shape[0]:
                donor = donor_pair.before if rng.random() < 0.5 else donor_pair.after
        objects = None
        if change.paste_objects > 0 and len(self.pairs) > 1:
            objects = self._changed_objects(rng, index, pair, np.asarray(arrays[2]).shape)
        styles = self._styles(index, pair, change.colour_transfer)
        before, after, target, swapped = augment_change(
            arrays[0],
            arrays[1],
            np.asarray(arrays[2], dtype=np.uint8),
            rng,
            change,
            value_range=1.0 / value_scale(pair.before.dtype),
            donor=donor,
            objects=objects,
            styles=styles,
        )
        out: list[Array] = [before, after, target]
        if has_classes:
            out += [arrays[4], arrays[3]] if swapped else [arrays[3], arrays[4]]
        return out

    def _styles(self, index: int, pair: ChangePair, probability: float) -> tuple[Array | None, Array | None]:
        """Per date, a date of another source's pair to take the colours of (see
        :func:`~seg2change_core.datasets.colour_transfer.pick_style_donors`), or ``None``.

        Drawn from a generator of their own, so the other draws of a sample (crop, pasting,
        photometry) are those of the same run without colour transfer.
        """
        if probability <= 0 or len(self.pairs) < 2:
            return None, None
        rng = np.random.default_rng([self.seed, self.epoch, index, 1])
        sources = [p.source_key for p in self.pairs]
        styles: list[Array | None] = []
        for pick in pick_style_donors(sources, self.pair_index(index), rng, probability):
            if pick is None:
                styles.append(None)
                continue
            donor = self.pair(pick[0])
            date = (donor.before, donor.after)[pick[1]]
            styles.append(date if date.shape[0] == pair.before.shape[0] else None)
        return styles[0], styles[1]

    def _changed_objects(
        self, rng: np.random.Generator, index: int, pair: ChangePair, shape: tuple[int, ...]
    ) -> tuple[Array, NDArray[np.bool_]] | None:
        """Another pair's later date and changed mask, cropped to ``shape`` around its change.

        ``None`` when the drawn pair has other bands, is smaller than ``shape`` or has no change.
        """
        other = (self.pair_index(index) + int(rng.integers(1, len(self.pairs)))) % len(self.pairs)
        donor = self.pair(other)
        changed = self.target(donor) == 1
        height, width = shape
        if (
            donor.after.shape[0] != pair.after.shape[0]
            or changed.shape[0] < height
            or changed.shape[1] < width
        ):
            return None
        picks = np.flatnonzero(changed)
        if not picks.size:
            return None
        row, col = divmod(int(picks[rng.integers(0, picks.size)]), changed.shape[1])
        top = int(np.clip(row - rng.integers(0, height), 0, changed.shape[0] - height))
        left = int(np.clip(col - rng.integers(0, width), 0, changed.shape[1] - width))
        window = (slice(top, top + height), slice(left, left + width))
        return donor.after[:, window[0], window[1]], changed[window]

    def target(self, pair: ChangePair) -> NDArray[np.uint8]:
        """The change target of a pair's raw label (0, 1 or :data:`IGNORE_INDEX`).

        Raises
        ------
        DatasetError
            When the label holds values its encoding does not name, or no encoding is known and
            the label's own values are ambiguous.
        """
        encoding = self.label_encoding or pair.label_encoding
        return encode_label(
            pair.label, encoding, ignore_value=self.ignore_value, where=f"label of {pair.key}"
        )

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} out of range for {len(self)} samples")
        pair = self.pair(self.pair_index(index))
        target = self.target(pair)
        arrays: list[Array] = [pair.before, pair.after, target]
        fills: list[float] = [0.0, 0.0, float(IGNORE_INDEX)]
        has_classes = pair.class_before is not None and pair.class_after is not None
        if has_classes:
            assert pair.class_before is not None and pair.class_after is not None
            arrays += [pair.class_before, pair.class_after]
            fills += [float(IGNORE_INDEX), float(IGNORE_INDEX)]
        if self.augment:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            contain = None
            if self.crop_size is not None and self.focus_change > 0 and rng.random() < self.focus_change:
                changed = np.flatnonzero(target == 1)
                if changed.size:
                    pick = int(changed[rng.integers(0, changed.size)])
                    contain = divmod(pick, target.shape[1])
            change = self.change_augmentation
            zoom = change.draw_zoom(rng) if change is not None and self.crop_size is not None else 1.0
            arrays = augment_arrays(
                arrays, rng, crop_size=self.crop_size, pad_values=fills, contain=contain, zoom=zoom
            )
            if change is not None:
                arrays = self._augment_change(arrays, rng, change, pair, index, has_classes)
        elif self.crop_size is not None:
            arrays = [_top_left(a, self.crop_size, fill) for a, fill in zip(arrays, fills, strict=True)]
        return Sample(
            before=torch.from_numpy(np.asarray(arrays[0], dtype=np.float32)),
            after=torch.from_numpy(np.asarray(arrays[1], dtype=np.float32)),
            target=torch.from_numpy(np.asarray(arrays[2], dtype=np.int64)),
            class_before=torch.from_numpy(np.asarray(arrays[3], dtype=np.int64)) if has_classes else None,
            class_after=torch.from_numpy(np.asarray(arrays[4], dtype=np.int64)) if has_classes else None,
            key=self.pairs[self.pair_index(index)].key,
        )


def _top_left(array: Array, size: int | None, fill: float) -> Array:
    if size is None:
        return array
    height, width = array.shape[-2:]
    pad = [(0, 0)] * (array.ndim - 2) + [(0, max(0, size - height)), (0, max(0, size - width))]
    return np.ascontiguousarray(np.pad(array, pad, constant_values=fill)[..., :size, :size])
