"""How many training crops to draw from each pair: by area, and more where something changed.

One crop per pair and epoch lets the many small tiles of a dataset outweigh a few large frames
(a 952 x 640 SZTAKI frame holds ten 252 px crops), and in public sets most tiles hold no change
at all (74 of LEVIR-CD's 119 tiles here): trained on them as they come, a model learns that
"nothing changed" is nearly always right. :func:`balanced_samples` draws crops in proportion to a
pair's area and ``change_boost`` times as many from pairs with change.
"""

from __future__ import annotations

import numpy as np

from seg2change_core.datasets.dataset import ChangeDetectionDataset
from seg2change_core.errors import DatasetError

__all__ = ["balanced_samples"]


def balanced_samples(data: ChangeDetectionDataset, crop_size: int, *, change_boost: int = 1) -> list[int]:
    """Crops per pair: ``round(area / crop_size**2)`` (at least 1), times ``change_boost`` with change.

    Parameters
    ----------
    data
        The pairs (their labels are read once).
    crop_size
        Side of a training crop.
    change_boost
        Factor for pairs with at least one changed pixel (1: none).

    Returns
    -------
    list of int
        One count of at least 1 per pair, for ``ChangeDetectionDataset(samples_per_pair=...)``.
    """
    if crop_size < 1 or change_boost < 1:
        raise DatasetError(
            f"crop_size and change_boost must be at least 1, got {crop_size} and {change_boost}"
        )
    counts = []
    for index in range(len(data.pairs)):
        pair = data.pair(index)
        target = data.target(pair)
        area = max(1, round(target.shape[0] * target.shape[1] / crop_size**2))
        counts.append(area * (change_boost if bool(np.any(target == 1)) else 1))
    return counts
