"""Augmentation applied identically to both dates and every label.

:func:`augment_arrays` applies one random crop, horizontal/vertical flip and 90-degree rotation to
date A, date B and every label alike. Draws come from a generator seeded by
``(seed, epoch, index)`` (see :class:`~seg2change_core.datasets.ChangeDetectionDataset`), so a
sample depends only on those three numbers: runs are reproducible and a resumed training sees
exactly the samples an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from seg2change_core.datasets.images import Array
from seg2change_core.errors import DatasetError

__all__ = ["augment_arrays"]


def augment_arrays(
    arrays: Sequence[Array],
    rng: np.random.Generator,
    *,
    crop_size: int | None = None,
    flip: bool = True,
    rotate: bool = True,
    pad_values: Sequence[float] | None = None,
    contain: tuple[int, int] | None = None,
) -> list[Array]:
    """Apply one random crop, flip and 90-degree rotation identically to several arrays.

    Parameters
    ----------
    arrays
        ``(C, H, W)`` or ``(H, W)`` arrays sharing ``H`` and ``W``.
    rng
        Source of the random draws (crop corner, then flips, then rotation).
    crop_size
        Side of the square crop; arrays smaller than it are first padded at the bottom and right
        with ``pad_values``. ``None`` keeps the full size.
    flip, rotate
        Draw horizontal/vertical flips and a rotation by ``k * 90`` degrees. Rotations by 90 and
        270 degrees are only drawn for square outputs.
    pad_values
        Value padded into each array (default 0).
    contain
        ``(row, column)`` of a pixel the crop must contain (the crop corner is drawn among the
        positions that contain it); ``None`` draws it anywhere.

    Returns
    -------
    list of numpy.ndarray
        Contiguous copies, in the order given.
    """
    height, width = arrays[0].shape[-2:]
    if any(a.shape[-2:] != (height, width) for a in arrays):
        raise DatasetError(f"arrays to augment differ in size: {[a.shape for a in arrays]}")
    out = list(arrays)
    if crop_size is not None:
        if height < crop_size or width < crop_size:
            fills = pad_values or [0.0] * len(out)
            pad_h, pad_w = max(0, crop_size - height), max(0, crop_size - width)
            out = [
                np.pad(a, [(0, 0)] * (a.ndim - 2) + [(0, pad_h), (0, pad_w)], constant_values=fill)
                for a, fill in zip(out, fills, strict=True)
            ]
            height, width = height + pad_h, width + pad_w
        top_range, left_range = (0, height - crop_size), (0, width - crop_size)
        if contain is not None:
            row, col = contain
            top_range = (max(0, row - crop_size + 1), min(row, height - crop_size))
            left_range = (max(0, col - crop_size + 1), min(col, width - crop_size))
        top = int(rng.integers(top_range[0], top_range[1] + 1))
        left = int(rng.integers(left_range[0], left_range[1] + 1))
        out = [a[..., top : top + crop_size, left : left + crop_size] for a in out]
        height = width = crop_size
    if flip:
        if rng.random() < 0.5:
            out = [a[..., :, ::-1] for a in out]
        if rng.random() < 0.5:
            out = [a[..., ::-1, :] for a in out]
    if rotate:
        k = int(rng.integers(0, 4)) if height == width else 2 * int(rng.integers(0, 2))
        if k:
            out = [np.rot90(a, k, axes=(a.ndim - 2, a.ndim - 1)) for a in out]
    return [np.ascontiguousarray(a) for a in out]
