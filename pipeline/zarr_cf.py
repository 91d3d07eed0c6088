"""CF and GDAL conventions shared by the Zarr stores seg2change writes (input cube, change cube).

xarray writes CF metadata, but three details decide whether other readers (a plain
``xr.open_zarr``, rioxarray, GDAL's Zarr driver) find the grid and the labels; they are kept here so
that both cubes get them alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr
from numpy.typing import NDArray
from pyproj import CRS

__all__ = ["cf_coordinates", "gdal_crs_attribute", "string_labels"]


def cf_coordinates(variable: xr.DataArray) -> str:
    """Return the CF ``coordinates`` attribute of a variable: its non-dimension coordinates.

    xarray leaves the ``grid_mapping`` variable (``spatial_ref``) out of ``coordinates`` when it
    writes, so a plain ``xr.open_zarr`` (without ``decode_coords="all"``) reads it back as a data
    variable and rioxarray finds no CRS; set as the variable's ``coordinates`` encoding, this lists it.
    """
    return " ".join(sorted(str(c) for c in variable.coords if c not in variable.dims))


def gdal_crs_attribute(crs: CRS) -> dict[str, str]:
    """Return GDAL's own ``_CRS`` Zarr attribute, which GDAL before 3.7 reads instead of CF ``grid_mapping``."""
    attribute = {"wkt": crs.to_wkt()}
    epsg = crs.to_epsg()
    if epsg is not None:
        attribute["url"] = f"http://www.opengis.net/def/crs/EPSG/0/{epsg}"
    return attribute


def string_labels(values: Sequence[str], zarr_format: int) -> NDArray[Any]:
    """Return label coordinate values (band, epoch, target names) as Zarr stores them best.

    Fixed-width strings in Zarr v2, because GDAL's driver cannot read variable-length strings there;
    variable-length strings in v3 (its ``string`` data type, which other Zarr readers read), because
    v3's fixed-width type has no spec yet.
    """
    return np.array(values, dtype="U" if zarr_format == 2 else object)
