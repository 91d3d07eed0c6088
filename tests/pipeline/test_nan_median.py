"""The composite's NaN-median equals numpy.nanmedian bit for bit, on both ordering paths."""

from __future__ import annotations

import warnings

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from pipeline.nan_median import NETWORK_MAX, nan_median, nan_median_over


def _reference(values: np.ndarray, axis: int) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices
        return np.nanmedian(values, axis=axis)


def _observations(count: int, dtype: str = "float32", seed: int = 0) -> np.ndarray:
    """``count`` observations of 3 bands over 40 x 50 px: 40 % NaN, every finite count present."""
    rng = np.random.default_rng(seed + count)
    values = rng.normal(0.2, 0.1, size=(count, 3, 40, 50)).astype(dtype)
    values[rng.random(values.shape) < 0.4] = np.nan
    values[:, :, :2, :] = np.nan  # all-NaN pixels
    for finite in range(count + 1):  # a column per finite count, so even and odd counts both occur
        values[finite:, :, 2:, finite] = np.nan
        values[:finite, :, 2:, finite] = rng.normal(size=(finite, 3, 38)).astype(dtype)
    values[0, 0, 5, 5] = values[1 % count, 0, 5, 5]  # ties
    return values


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("count", [1, 2, 3, 4, NETWORK_MAX, NETWORK_MAX + 1, NETWORK_MAX + 4])
def test_equals_numpy_nanmedian_bit_for_bit(count: int) -> None:
    values = _observations(count)
    result = nan_median(values, axis=0)
    assert _same_bits(result, _reference(values, 0))
    assert np.isnan(result[:, :2]).all()
    assert not np.isnan(result[:, 2:, 1 : count + 1]).any()


def test_any_axis_float64_and_infinities() -> None:
    values = _observations(5, dtype="float64")
    values[0, 1, 10, 10], values[1, 1, 10, 10] = np.inf, -np.inf
    values[:, 2, 11, 11] = [np.inf, np.nan, np.inf, 1.0, np.nan]
    moved = np.moveaxis(values, 0, 2)
    assert _same_bits(nan_median(moved, axis=2), _reference(moved, 2))
    assert _same_bits(nan_median(values, axis=0), _reference(values, 0))


def test_leaves_its_input_alone() -> None:
    values = _observations(4)
    before = values.copy()
    nan_median(values, axis=0)
    assert before.tobytes() == values.tobytes()


def test_refuses_integers() -> None:
    with pytest.raises(TypeError, match="floating-point"):
        nan_median(np.arange(6).reshape(3, 2), axis=0)


def test_lazy_over_a_dimension_equals_xarray_median() -> None:
    values = _observations(3)
    array = xr.DataArray(
        da.from_array(values, chunks=(-1, 3, 20, 25)),
        dims=("time", "band", "y", "x"),
        coords={"time": [10, 20, 30], "band": ["a", "b", "c"]},
    )
    result = nan_median_over(array, "time")
    assert result.chunks == ((3,), (20, 20), (25, 25))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = array.median("time", skipna=True).compute()
    computed = result.compute()
    assert computed.dims == expected.dims
    assert list(computed["band"].values) == ["a", "b", "c"]
    assert _same_bits(computed.values, expected.values)
