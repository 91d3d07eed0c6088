"""Colour transfer between source images: one date given the light of another source.

Change datasets cut many tiles from few source images, and each source has its own sun, season,
haze and sensor response. A model trained on them learns what change looks like *in those
sources*; in LEVIR-CD the training change comes mostly from one source image whose later date is
brighter, while the held-out sources are darker in their later date. :func:`match_histograms`
gives a date the band histograms of a date from another source (a non-linear mapping that keeps
the order of its values, so its objects and edges stay where they were), and
:func:`pick_style_donors` draws those other sources, so that the same ground seen under another
source's radiometry is labelled as it was.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from seg2change_core.datasets.images import Array
from seg2change_core.errors import DatasetError

__all__ = ["match_histograms", "pick_style_donors"]

Float32 = NDArray[np.float32]


def match_histograms(image: Array, reference: Array) -> Float32:
    """Map each band of ``image`` onto the value distribution of the same band of ``reference``.

    Each pixel takes the reference value at its own quantile in its band (ties share one
    quantile), as in scikit-image's ``match_histograms``.

    Parameters
    ----------
    image
        ``(bands, H, W)`` raw values to restyle.
    reference
        ``(bands, h, w)`` raw values whose band histograms the result takes (any size).

    Returns
    -------
    numpy.ndarray
        ``(bands, H, W)`` float32; the order of values within each band is kept.

    Raises
    ------
    DatasetError
        When the band counts differ or either image is empty.
    """
    source = np.asarray(image)
    style = np.asarray(reference)
    if source.ndim != 3 or style.ndim != 3 or source.shape[0] != style.shape[0]:
        raise DatasetError(
            f"histogram matching needs (bands, H, W) images with the same bands, got {source.shape} "
            f"and {style.shape}; pick a reference with the image's bands"
        )
    if source[0].size == 0 or style[0].size == 0:
        raise DatasetError(f"cannot match histograms of an empty image ({source.shape}, {style.shape})")
    out = np.empty(source.shape, dtype=np.float32)
    for band in range(source.shape[0]):
        values, inverse, counts = np.unique(source[band], return_inverse=True, return_counts=True)
        ref_values, ref_counts = _histogram(style[band])
        quantiles = np.cumsum(counts) / source[band].size
        ref_quantiles = np.cumsum(ref_counts) / style[band].size
        mapped = np.interp(quantiles, ref_quantiles, ref_values)
        out[band] = mapped[inverse.reshape(source[band].shape)]
    return out


def _histogram(band: Array) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """The distinct values of ``band`` in increasing order and how often each occurs.

    Integer bands of up to 16 bits are counted with ``bincount`` (a whole 1024 px frame in a few
    milliseconds instead of a quarter second for a sort).
    """
    if np.issubdtype(band.dtype, np.integer) and band.dtype.itemsize <= 2:
        low = int(band.min())
        counts = np.bincount(band.ravel().astype(np.int64) - low)
        present = np.flatnonzero(counts)
        return (present + low).astype(np.float64), counts[present]
    values, counts = np.unique(band, return_counts=True)
    return values.astype(np.float64), counts


def pick_style_donors(
    sources: Sequence[str], index: int, rng: np.random.Generator, probability: float
) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    """For each date of pair ``index``, a date of another source's pair to take its colours from.

    Parameters
    ----------
    sources
        Source image of every pair (pairs of one source share its radiometry).
    index
        The pair being augmented.
    rng
        Source of the draws (three per date: whether, which pair, which of its dates; always
        drawn, so the number of draws does not depend on the outcome).
    probability
        Chance of a transfer per date.

    Returns
    -------
    tuple
        Per date, ``(pair index, 0 for its earlier date or 1 for its later one)``, or ``None``
        where the date keeps its own colours (also when every pair comes from one source).
    """
    others = [i for i, source in enumerate(sources) if source != sources[index]]
    picks: list[tuple[int, int] | None] = []
    for _ in range(2):
        take = bool(rng.random() < probability)
        choice = int(rng.integers(0, max(len(others), 1)))
        date = int(rng.integers(0, 2))
        picks.append((others[choice], date) if take and others else None)
    return picks[0], picks[1]
