"""Reading a change cube: opening it, and the description (grid, classes, attributes) that
publishing and the flows read instead of the store."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import rasterio
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
import zarr
from affine import Affine
from pyproj import CRS

from pipeline.change_cube.schema import ATTR_CLASSES, ATTR_COMPLETE, ATTR_FINGERPRINT, ATTR_FORMAT, FORMAT
from pipeline.errors import PublishError
from pipeline.storage import Location, LocationLike

__all__ = ["ChangeCubeInfo", "describe_change_cube", "open_change_cube"]


def open_change_cube(path: LocationLike) -> xr.Dataset:
    """Open a change cube with its CRS decoded (integer layers keep their types in Zarr v3)."""
    store = Location.parse(path).zarr_store(read_only=True)
    ds: xr.Dataset = xr.open_zarr(store, consolidated=True, decode_coords="all")
    return ds


@dataclass(frozen=True)
class ChangeCubeInfo:
    """What publishing needs to know of a finished change cube (no pixels).

    Attributes
    ----------
    path
        The Zarr store (a local path or an fsspec URL).
    height, width
        Pixels.
    chunk
        Spatial chunk side of the layers (the engine's block size).
    crs, transform
        The grid.
    classes
        Class labels in channel order (``K = len(classes)``).
    targets
        Target class labels (the ``target`` dimension of ``target_change``).
    fingerprint
        The job fingerprint recorded by the engine.
    attrs
        The root attributes.
    """

    path: Location
    height: int
    width: int
    chunk: int
    crs: CRS
    transform: Affine
    classes: tuple[str, ...]
    targets: tuple[str, ...]
    fingerprint: str
    attrs: Mapping[str, Any] = field(repr=False)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(xmin, ymin, xmax, ymax)`` of the grid in its CRS."""
        west, south, east, north = rasterio.transform.array_bounds(self.height, self.width, self.transform)
        return float(west), float(south), float(east), float(north)

    @property
    def pixel_area_m2(self) -> float:
        """Area of one pixel in square metres (the CRS's linear unit converted to metres)."""
        if self.crs.is_geographic:
            raise PublishError(
                f"the change cube's CRS {self.crs.name} is geographic (degrees), so pixel areas are not "
                "constant; compute the job on a projected grid (grid.crs, e.g. the UTM zone)"
            )
        factor = self.crs.axis_info[0].unit_conversion_factor if self.crs.axis_info else 1.0
        return abs(self.transform.a * self.transform.e - self.transform.b * self.transform.d) * factor**2


def describe_change_cube(path: LocationLike) -> ChangeCubeInfo:
    """Read a change cube's grid, classes and attributes, and check that it can be published.

    Raises
    ------
    PublishError
        When ``path`` is missing, is not a seg2change change cube, is incomplete (inference has not
        finished), or has no CRS.
    """
    path = Location.parse(path)
    if not path.exists():
        raise PublishError(f"change cube {path} does not exist; run the inference first (seg2change run)")
    store = path.zarr_store(read_only=True)
    try:
        group = zarr.open_group(store, mode="r")
        attrs = dict(group.attrs)
    except Exception as exc:
        raise PublishError(f"cannot open {path} as Zarr ({exc}); give the change cube's path") from None
    if attrs.get(ATTR_FORMAT) != FORMAT:
        raise PublishError(
            f"{path} is not a seg2change change cube (format {attrs.get(ATTR_FORMAT)!r}, expected {FORMAT!r}); "
            "give the change cube written by the inference"
        )
    if not attrs.get(ATTR_COMPLETE, False):
        raise PublishError(
            f"the change cube {path} is incomplete (some blocks were never computed); run the same job "
            "again to finish the inference, then publish"
        )
    ds = xr.open_zarr(store, consolidated=True, decode_coords="all", mask_and_scale=False)
    crs = ds.rio.crs
    if crs is None:
        raise PublishError(f"the change cube {path} has no CRS (spatial_ref); recompute it with the engine")
    layer = ds["transition"]
    chunks = layer.encoding.get("chunks") or zarr.open_array(store, path="transition", mode="r").chunks
    return ChangeCubeInfo(
        path=path,
        height=int(layer.shape[0]),
        width=int(layer.shape[1]),
        chunk=int(chunks[-1]),
        crs=CRS.from_user_input(crs),
        transform=ds.rio.transform(),
        classes=tuple(json.loads(str(attrs.get(ATTR_CLASSES, "[]")))),
        targets=tuple(str(t) for t in ds["target"].values),
        fingerprint=str(attrs.get(ATTR_FINGERPRINT, "")),
        attrs=attrs,
    )
