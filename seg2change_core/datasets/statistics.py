"""Value scales, default band names and per-band statistics of raw images."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from seg2change_core.datasets.pairs import PairSource

__all__ = ["band_statistics", "default_band_names", "value_scale"]


def value_scale(dtype: np.dtype[np.generic] | type) -> float:
    """Factor from raw values of ``dtype`` to [0, 1] or reflectance.

    ``uint8`` -> ``1 / 255``; ``uint16`` -> ``1e-4`` (Sentinel-2/Landsat-style digital numbers);
    anything else (float reflectance) -> ``1``.
    """
    kind = np.dtype(dtype)
    if kind == np.uint8:
        return 1 / 255
    if kind == np.uint16:
        return 1e-4
    return 1.0


def default_band_names(count: int) -> tuple[str, ...]:
    """``("red", "green", "blue")`` for 3 bands, ``("b1", "b2", ...)`` otherwise."""
    if count == 3:
        return ("red", "green", "blue")
    return tuple(f"b{i + 1}" for i in range(count))


def band_statistics(
    pairs: Sequence[PairSource], scale: float, *, max_pixels: int = 2_000_000, seed: int = 0
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-band mean and standard deviation of ``value * scale`` over both dates of some pairs.

    Parameters
    ----------
    pairs
        The (training) pairs.
    scale
        Factor applied to raw values first.
    max_pixels
        At most this many pixels per date are drawn in all (evenly from each pair, seeded).
    seed
        Seed of the draw.

    Returns
    -------
    mean, std
        Tuples with one value per band (std at least 1e-6).
    """
    rng = np.random.default_rng(seed)
    per_pair = max(1, max_pixels // max(1, len(pairs)))
    chunks: list[NDArray[np.float64]] = []
    for source in pairs:
        pair = source.load()
        for image in (pair.before, pair.after):
            flat = image.reshape(image.shape[0], -1).astype(np.float64) * scale
            if flat.shape[1] > per_pair:
                flat = flat[:, rng.choice(flat.shape[1], per_pair, replace=False)]
            chunks.append(flat)
    values = np.concatenate(chunks, axis=1)
    mean = np.nanmean(values, axis=1)
    std = np.maximum(np.nanstd(values, axis=1), 1e-6)
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)
