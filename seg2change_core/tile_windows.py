"""The tile layout along one axis and the blending ramps: one definition for the engine and evaluation.

The large-area engine (:mod:`pipeline.tiling`) and whole-image evaluation
(:mod:`seg2change_core.tiled`) cut images into overlapping tiles and blend the tiles' probabilities
with smooth windows. Both take these two functions from here (``seg2change_core`` may not import
``pipeline``), so that a frame is scored exactly as a job would compute it:

* :func:`axis_starts`: tiles at ``0, stride, 2 * stride, ...`` while one fits, then one tile ending
  exactly at the edge (every tile has the full size); a side shorter than the tile gets one tile.
* :func:`ramp`: a 1-D window that is 1 inside and ramps over ``overlap`` samples, taken at pixel
  centres ``f((i + 0.5) / n)``, with ``f(t) = sin^2(pi t / 2)`` (``"cosine"``) or ``f(t) = t``
  (``"linear"``); ``f(t) + f(1 - t) = 1``, so the ramps of two regular neighbours add up to 1, and
  a side where the tile touches the image border stays flat.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from seg2change_core.errors import ModelError

__all__ = ["WindowProfile", "axis_starts", "ramp"]

WindowProfile = Literal["cosine", "linear"]


def axis_starts(length: int, tile: int, stride: int) -> tuple[int, ...]:
    """Start offsets of the tiles along one axis of ``length`` pixels.

    ``0, stride, 2 * stride, ...`` while a tile fits, then one tile ending exactly at ``length``.
    A side shorter than the tile gets a single tile starting at 0 (clipped to the side).

    Raises
    ------
    ModelError
        For a stride below 1 when more than one tile is needed.
    """
    if length <= tile:
        return (0,)
    if stride < 1:
        raise ModelError(f"tile stride must be positive, got {stride}; use an overlap below the tile size")
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return tuple(sorted(set(starts)))


def ramp(
    length: int, overlap: int, profile: WindowProfile, *, flat_start: bool, flat_end: bool
) -> NDArray[np.float64]:
    """A 1-D window of ``length`` samples: 1 inside, ramps of ``overlap`` samples at the ends.

    Parameters
    ----------
    length
        Samples in the window.
    overlap
        Ramp length; ``0`` gives a flat window.
    profile
        ``"cosine"`` (raised cosine) or ``"linear"``.
    flat_start, flat_end
        Keep the window at 1 at that end (the tile touches the image's border there).

    Returns
    -------
    numpy.ndarray
        float64 weights in ``(0, 1]``.

    Raises
    ------
    ModelError
        For an unknown profile.
    """
    weights = np.ones(length, dtype=np.float64)
    n = min(overlap, length // 2)
    if n == 0:
        return weights
    t = (np.arange(n, dtype=np.float64) + 0.5) / n
    if profile == "cosine":
        rising = np.sin(0.5 * math.pi * t) ** 2
    elif profile == "linear":
        rising = t
    else:
        raise ModelError(f"unknown window profile {profile!r}; use 'cosine' or 'linear'")
    if not flat_start:
        weights[:n] = rising
    if not flat_end:
        weights[length - n :] = rising[::-1]
    return weights
