"""The per-pixel median over a few observations, ignoring NaN: the input cube's composite.

Hand-written for speed. ``DataArray.median(skipna=True)`` ends in :func:`numpy.nanmedian`, which for
an axis shorter than 600 builds a masked array and sorts it with :func:`numpy.ma.median`. Here the
few observations of a pixel are ordered by elementwise min/max over whole arrays (NaN set to +inf,
so it orders last) and each pixel's median is picked by its count of observations that are not NaN.
On one prepare block (3 observations, 6 bands, 512 x 512 px) that took 0.079 s of CPU against
0.31 s for :func:`numpy.nanmedian` and 0.14 s for a :func:`numpy.sort` along the observations (best
of five, 2-core development machine under load). The sort was faster from 8 observations on
(min/max needs O(n^2) array operations), so it is used above :data:`NETWORK_MAX`.

The values are those of :func:`numpy.nanmedian`, bit for bit, float32 in float32 out: NumPy's
masked median also sums the two middle values in the input's precision and halves the sum (the
middle value is added to itself for an odd count), and an all-NaN pixel gives NaN.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import xarray as xr

__all__ = ["NETWORK_MAX", "nan_median", "nan_median_over"]


#: Up to this many observations the values are ordered by a network of elementwise min/max
#: (odd-even transposition, O(n^2) array operations); above it :func:`numpy.sort` is faster.
NETWORK_MAX = 6


def nan_median(values: npt.NDArray[np.floating], axis: int = -1) -> npt.NDArray[np.floating]:
    """Median along ``axis`` ignoring NaN, equal to :func:`numpy.nanmedian` (without its warning).

    Parameters
    ----------
    values
        A floating-point array.
    axis
        The axis to reduce.

    Returns
    -------
    numpy.ndarray
        ``values``'s dtype, the shape of ``values`` without ``axis``; NaN where every value along
        ``axis`` is NaN.

    Raises
    ------
    TypeError
        ``values`` is not floating point (an integer array has no NaN to skip).
    """
    if not np.issubdtype(values.dtype, np.floating):
        raise TypeError(f"nan_median needs a floating-point array, got {values.dtype}; cast it first")
    dtype = values.dtype
    # One contiguous copy, observations first, NaN replaced by +inf so that it orders last; each
    # pixel's count of observations that are not NaN says how many of the ordered values count.
    ordered = np.array(np.moveaxis(values, axis, 0), dtype=dtype, order="C")
    missing = np.isnan(ordered)
    finite = ordered.shape[0] - np.count_nonzero(missing, axis=0)
    ordered[missing] = np.inf
    _order(ordered)
    result = np.full(ordered.shape[1:], np.nan, dtype=dtype)
    for count in range(1, ordered.shape[0] + 1):
        # NumPy's masked median: the two middle values (the same one twice for an odd count),
        # summed and halved in the input's precision.
        middle = np.add(ordered[(count - 1) // 2], ordered[count // 2], dtype=dtype)
        np.copyto(result, np.true_divide(middle, 2, dtype=dtype), where=finite == count)
    return result


def _order(values: npt.NDArray[np.floating]) -> None:
    """Sort ``values`` along its first axis in place."""
    n = values.shape[0]
    if n > NETWORK_MAX:
        values.sort(axis=0)
        return
    for round_ in range(n):
        for i in range(round_ % 2, n - 1, 2):
            low = np.minimum(values[i], values[i + 1])
            np.maximum(values[i], values[i + 1], out=values[i + 1])
            values[i] = low


def nan_median_over(array: xr.DataArray, dim: str) -> xr.DataArray:
    """Median of ``array`` over ``dim`` ignoring NaN, lazily per chunk for a dask-backed array.

    Parameters
    ----------
    array
        Floating-point values; a dask-backed array must hold ``dim`` in one chunk
        (``array.chunk({dim: -1})``).
    dim
        The dimension to reduce.

    Returns
    -------
    xarray.DataArray
        ``array`` without ``dim``, same dtype, values of :func:`numpy.nanmedian`.
    """
    result: xr.DataArray = xr.apply_ufunc(
        nan_median,
        array,
        input_core_dims=[[dim]],
        dask="parallelized",
        output_dtypes=[array.dtype],
        keep_attrs=False,
    )
    return result
