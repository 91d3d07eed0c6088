"""Reading images and labels: every GDAL format through rasterio.

Images are read with rasterio (imported when the first file is read), so PNG, JPG, GeoTIFF and
every other GDAL format work; an image is a ``(bands, height, width)`` array of its own dtype.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from seg2change_core.errors import DatasetError

__all__ = ["IMAGE_SUFFIXES", "Array", "read_image"]

#: File suffixes (lower case) read as images.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")

Array = NDArray[np.generic]


def read_image(path: Path) -> Array:
    """Read all bands of an image file as a ``(bands, height, width)`` array of its own dtype.

    Raises
    ------
    DatasetError
        When the file cannot be read as an image.
    """
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                data: Array = src.read()
    except RasterioIOError as exc:
        raise DatasetError(f"cannot read image {path}: {exc}; give a PNG, JPG or GeoTIFF file") from exc
    return data


def _image_shape(path: Path) -> tuple[int, int, int]:
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                return int(src.count), int(src.height), int(src.width)
    except RasterioIOError as exc:
        raise DatasetError(f"cannot read image {path}: {exc}; give a PNG, JPG or GeoTIFF file") from exc


def _single_band(data: Array, path: Path | str) -> Array:
    if data.ndim == 2:
        return data
    if data.shape[0] == 1 or all(np.array_equal(data[0], band) for band in data[1:]):
        first: Array = data[0]
        return first
    raise DatasetError(
        f"label {path} has {data.shape[0]} different bands; a label must have one band "
        "(or identical bands, as some RGB-saved masks do)"
    )
