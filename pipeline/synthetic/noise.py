"""Deterministic noise on the global pixel grid of a synthetic scene.

Every random-looking quantity of a synthetic scene (where the forests are, which parcel is
ploughed, where a cloud sits, the speckle of a pixel) is a pure function of the scene seed and of
*global* pixel coordinates. A block computed on its own is therefore bit-for-bit identical to the
same pixels computed as part of the whole scene.

This is hand-written rather than taken from a noise library on purpose:

- the values must not depend on the shape of the array they are computed in. Only integer
  hashing, additions and multiplications are used (no ``sin``/``exp``, whose vectorised and
  scalar code paths may round the last bit differently), so every element is computed by the same
  IEEE operations wherever it sits;
- the libraries that exist (``noise``, ``opensimplex``) loop over points in Python or C per call
  and keep no notion of a global lattice that a window can be cut from.

Value noise is separable here: the lattice values of the few lattice nodes that a window touches
are hashed once, interpolated along columns (a ``(lattice rows, width)`` array) and then along
rows, which costs a handful of array operations per pixel.
"""

from __future__ import annotations

import functools

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "fbm",
    "fbm_quantile",
    "hash_grid",
    "hash_ints",
    "mix",
    "uniform_grid",
    "value_noise",
]

_M64 = (1 << 64) - 1
_K1 = 0x9E3779B97F4A7C15
_K2 = 0xC2B2AE3D27D4EB4F
_F1 = 0xFF51AFD7ED558CCD
_F2 = 0xC4CEB9FE1A85EC53
_INV53 = 1.0 / float(1 << 53)


def _fmix_int(k: int) -> int:
    k &= _M64
    k ^= k >> 33
    k = (k * _F1) & _M64
    k ^= k >> 33
    k = (k * _F2) & _M64
    k ^= k >> 33
    return k


def mix(*parts: int | str) -> int:
    """Combine integers and names into one 64-bit salt.

    Parameters
    ----------
    *parts
        Seed, channel names, indices. Strings are hashed byte by byte (stable across runs,
        unlike Python's ``hash``).

    Returns
    -------
    int
        A 64-bit unsigned salt.
    """
    k = 0x243F6A8885A308D3
    for part in parts:
        values = part.encode() if isinstance(part, str) else [part]
        for v in values:
            k = _fmix_int(k ^ ((int(v) * _K1) & _M64))
    return k


def _fmix(k: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """MurmurHash3's 64-bit finaliser, in place."""
    k ^= k >> np.uint64(33)
    k *= np.uint64(_F1)
    k ^= k >> np.uint64(33)
    k *= np.uint64(_F2)
    k ^= k >> np.uint64(33)
    return k


def hash_ints(values: NDArray[np.int64], salt: int) -> NDArray[np.uint64]:
    """Hash an integer array element by element.

    Parameters
    ----------
    values
        Integers of any shape (negative values are fine).
    salt
        A salt from :func:`mix`.

    Returns
    -------
    numpy.ndarray
        ``uint64`` hashes of the same shape.
    """
    with np.errstate(over="ignore"):
        k = np.asarray(values, dtype=np.int64).astype(np.uint64)
        k *= np.uint64(_K1)
        k ^= np.uint64(salt & _M64)
        return _fmix(k)


def hash_grid(rows: NDArray[np.int64], cols: NDArray[np.int64], salt: int) -> NDArray[np.uint64]:
    """Hash every (row, column) pair of two 1-D coordinate arrays.

    Parameters
    ----------
    rows, cols
        1-D integer coordinates.
    salt
        A salt from :func:`mix`.

    Returns
    -------
    numpy.ndarray
        ``uint64`` array of shape ``(len(rows), len(cols))``.
    """
    with np.errstate(over="ignore"):
        hr = hash_ints(rows, salt)
        hc = np.asarray(cols, dtype=np.int64).astype(np.uint64) * np.uint64(_K2)
        k = hr[:, None] ^ hc[None, :]
        return _fmix(k)


def uniform_grid(rows: NDArray[np.int64], cols: NDArray[np.int64], salt: int) -> NDArray[np.float64]:
    """Uniform numbers in ``[0, 1)`` for every (row, column) pair; see :func:`hash_grid`."""
    return (hash_grid(rows, cols, salt) >> np.uint64(11)).astype(np.float64) * _INV53


def _axis(coords: NDArray[np.int64], scale: float) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
    """Lattice cell index and smoothstep weight of pixel centres along one axis."""
    f = (coords.astype(np.float64) + 0.5) / scale
    cell = np.floor(f)
    t = f - cell
    weight = t * t * (3.0 - 2.0 * t)
    return cell.astype(np.int64), weight.astype(np.float32)


def value_noise(
    rows: NDArray[np.int64], cols: NDArray[np.int64], scale: float, salt: int
) -> NDArray[np.float32]:
    """Smooth value noise in ``[0, 1]`` on a lattice of spacing ``scale`` pixels.

    Parameters
    ----------
    rows, cols
        1-D global pixel coordinates of the window (consecutive integers in practice).
    scale
        Lattice spacing in pixels: the size of the features.
    salt
        A salt from :func:`mix`.

    Returns
    -------
    numpy.ndarray
        ``float32`` array of shape ``(len(rows), len(cols))``.
    """
    iy, wy = _axis(rows, scale)
    ix, wx = _axis(cols, scale)
    y0, x0 = int(iy.min()), int(ix.min())
    lattice_rows = np.arange(y0, int(iy.max()) + 2, dtype=np.int64)
    lattice_cols = np.arange(x0, int(ix.max()) + 2, dtype=np.int64)
    lattice = uniform_grid(lattice_rows, lattice_cols, salt).astype(np.float32)
    jx = ix - x0
    along_x = lattice[:, jx] * (np.float32(1) - wx) + lattice[:, jx + 1] * wx
    jy = iy - y0
    out: NDArray[np.float32] = along_x[jy, :] * (np.float32(1) - wy)[:, None]
    out += along_x[jy + 1, :] * wy[:, None]
    return out


def fbm(
    rows: NDArray[np.int64],
    cols: NDArray[np.int64],
    scale: float,
    salt: int,
    octaves: int = 3,
) -> NDArray[np.float32]:
    """Fractal sum of :func:`value_noise` octaves, normalised to ``[0, 1]``.

    Octave ``k`` has spacing ``scale / 2**k`` and weight ``2**-k``. The values are bell-shaped
    around 0.5; use :func:`fbm_quantile` to turn an area fraction into a threshold.

    Parameters
    ----------
    rows, cols
        1-D global pixel coordinates of the window.
    scale
        Spacing of the coarsest octave, in pixels.
    salt
        A salt from :func:`mix`.
    octaves
        Number of octaves (at least 1).

    Returns
    -------
    numpy.ndarray
        ``float32`` array of shape ``(len(rows), len(cols))``.
    """
    total = value_noise(rows, cols, scale, mix(salt, 0))
    norm = 1.0
    for k in range(1, octaves):
        weight = 0.5**k
        total += np.float32(weight) * value_noise(rows, cols, scale / 2**k, mix(salt, k))
        norm += weight
    total *= np.float32(1.0 / norm)
    return total


@functools.cache
def _fbm_sorted_sample(octaves: int) -> NDArray[np.float32]:
    coords = np.arange(1024, dtype=np.int64)
    sample = fbm(coords, coords, 8.0, mix("fbm-quantile-sample", octaves), octaves)
    return np.sort(sample.ravel())


def fbm_quantile(q: float, octaves: int = 3) -> float:
    """The value of :func:`fbm` below which a fraction ``q`` of all pixels lie.

    Estimated once per ``octaves`` from a fixed sample of about 16,000 lattice cells, so the
    thresholds (and thus the scenes) are the same on every run and machine.

    Parameters
    ----------
    q
        Fraction in ``[0, 1]``.
    octaves
        As in :func:`fbm`.

    Returns
    -------
    float
        The threshold.
    """
    sample = _fbm_sorted_sample(octaves)
    index = min(len(sample) - 1, max(0, round(q * (len(sample) - 1))))
    return float(sample[index])
