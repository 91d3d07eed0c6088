"""Assembly of the input cube: stack each window's scenes on one grid, mask clouds, composite.

stackstac builds a lazy ``(time, band, y, x)`` array per window on the job's grid, reprojecting
scenes whose CRS differs. Pixels that the quality band flags (cloud, shadow, nodata) or that hold
no data become NaN; each window is reduced to its per-pixel median over the clear observations.
The two composites form the lazy input cube that :mod:`pipeline.cube` writes.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import rioxarray  # noqa: F401  (registers the .rio accessor)
import stackstac
import xarray as xr

from pipeline import __version__
from pipeline.bands import band_asset
from pipeline.cube_schema import ATTR_JOB, ATTR_PROVENANCE, ATTR_SOFTWARE, CLEAR_COUNT, EPOCHS, REFLECTANCE
from pipeline.discover import Discovery
from pipeline.errors import CubeError
from pipeline.nan_median import nan_median_over
from pipeline.spec import JobSpec
from pipeline.zarr_cf import gdal_crs_attribute, string_labels

__all__ = ["assemble_cube", "assemble_region", "region_bounds", "whole_grid_stacks"]

_QUALITY = "_quality"


def _normalise_assets(item: dict[str, Any], job: JobSpec) -> dict[str, Any]:
    """Re-key an item's assets by band common name, so items of different catalogs stack together."""
    assets = item.get("assets", {})
    renamed: dict[str, Any] = {}
    for band in job.bands:
        asset = band_asset(assets, band, job.band_map.get(band))
        if asset is None:
            raise CubeError(
                f"item {item['id']} has no asset for band {band!r} (assets: {', '.join(sorted(assets))}); "
                "drop the band or map it in band_map"
            )
        renamed[band] = asset
    if job.quality.asset is not None:
        if job.quality.asset not in assets:
            raise CubeError(
                f"item {item['id']} has no quality asset {job.quality.asset!r} "
                f"(assets: {', '.join(sorted(assets))}); set quality.asset, or quality: none"
            )
        quality = dict(assets[job.quality.asset])
        quality.pop("raster:bands", None)
        renamed[_QUALITY] = quality
    out = dict(item)
    out["assets"] = renamed
    return out


def _scales(
    items: Sequence[dict[str, Any]], bands: Sequence[str], ids: Sequence[str]
) -> tuple[xr.DataArray, xr.DataArray]:
    """Per (time, band) scale and offset of the stacked items, in the order of their ``ids``."""
    by_id = {item["id"]: item for item in items}
    scale = np.ones((len(ids), len(bands)), dtype="float32")
    offset = np.zeros((len(ids), len(bands)), dtype="float32")
    for i, item_id in enumerate(ids):
        for j, band in enumerate(bands):
            raster = (by_id[item_id]["assets"][band].get("raster:bands") or [{}])[0]
            scale[i, j] = raster.get("scale", 1.0)
            offset[i, j] = raster.get("offset", 0.0)
    dims = ("time", "band")
    return xr.DataArray(scale, dims=dims), xr.DataArray(offset, dims=dims)


def _empty_composite(job: JobSpec, stack: xr.DataArray) -> tuple[xr.DataArray, xr.DataArray]:
    """The composite of a region no item of the window covers: all nodata, no clear observation."""
    rows, cols = stack.sizes["y"], stack.sizes["x"]
    coords = {"y": stack["y"].values, "x": stack["x"].values}
    composite = xr.DataArray(
        da.full((len(job.bands), rows, cols), np.nan, dtype="float32"),
        dims=("band", "y", "x"),
        coords={"band": list(job.bands), **coords},
    )
    count = xr.DataArray(da.zeros((rows, cols), dtype="uint8"), dims=("y", "x"), coords=coords)
    return composite, count


def _stackstac(
    normalised: Sequence[dict[str, Any]], job: JobSpec, bounds: tuple[float, float, float, float]
) -> xr.DataArray:
    """stackstac's lazy ``(time, band, y, x)`` stack of a window's items (assets re-keyed) over ``bounds``."""
    crs = job.target_crs()
    epsg = crs.to_epsg()
    if epsg is None:
        raise CubeError(
            f"grid CRS {crs.name} has no EPSG code; stackstac needs one, give grid.crs as 'EPSG:n'"
        )
    assets = list(job.bands) + ([_QUALITY] if job.quality.asset else [])
    try:
        stack: xr.DataArray = stackstac.stack(
            normalised,
            assets=assets,
            epsg=epsg,
            resolution=job.grid.resolution,
            bounds=bounds,
            chunksize=job.block_size,
            dtype=np.dtype("float32"),
            fill_value=np.float32("nan"),
            rescale=False,
            xy_coords="center",
            properties=False,
            band_coords=False,
            snap_bounds=False,
        )
    except (ValueError, KeyError) as exc:
        raise CubeError(
            f"stackstac could not stack the items ({exc}); check their proj:* and assets"
        ) from None
    return stack


class _WholeGridStacks:
    """Each window's stack over the job's whole grid, made once and sliced for every block.

    A stack made over one block's bounds opened every asset again for each block, under the GIL,
    and read it through a warped VRT (the block's grid is not the file's); sliced from the whole
    grid's stack, a block reads each file's window directly, through readers opened once per
    thread. Same pixels: the grid is the same, and an item that misses the block reads as NaN,
    which the median skips and the clear count does not count.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._stacks: dict[tuple[Any, ...], xr.DataArray] = {}

    @contextmanager
    def kept(self) -> Iterator[None]:
        with self._lock:
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    self._stacks.clear()

    def stack(
        self, normalised: Sequence[dict[str, Any]], job: JobSpec, bounds: tuple[float, float, float, float]
    ) -> xr.DataArray:
        """The stack over ``bounds``: a slice of the whole grid's while kept and ``bounds`` is a region of it."""
        region = _region_of(job, bounds)
        if region is None or not self._users:
            return _stackstac(normalised, job, bounds)
        key = (
            tuple(
                (item["id"], tuple((k, a.get("href")) for k, a in item["assets"].items()))
                for item in normalised
            ),
            job.model_dump_json(),
        )
        with self._lock:
            whole = self._stacks.get(key)
        if whole is None:
            whole = _stackstac(normalised, job, job.target_bounds())
            with self._lock:
                whole = self._stacks.setdefault(key, whole)
        rows, cols = region
        if rows.stop > whole.sizes["y"] or cols.stop > whole.sizes["x"]:
            return _stackstac(normalised, job, bounds)
        return whole.isel(y=rows, x=cols)


_whole_grid = _WholeGridStacks()


@contextmanager
def whole_grid_stacks() -> Iterator[None]:
    """While open, :func:`assemble_region` stacks each window's items once over the job's whole grid
    and gives each region of the grid (:func:`region_bounds`) the slice of that stack (see
    :class:`_WholeGridStacks`); the stacks are dropped when the last such context closes."""
    with _whole_grid.kept():
        yield


def _region_of(job: JobSpec, bounds: tuple[float, float, float, float]) -> tuple[slice, slice] | None:
    """The ``(rows, cols)`` whose :func:`region_bounds` are exactly ``bounds``, or None."""
    xmin, _, _, ymax = job.target_bounds()
    res = job.grid.resolution
    rows = slice(round((ymax - bounds[3]) / res), round((ymax - bounds[1]) / res))
    cols = slice(round((bounds[0] - xmin) / res), round((bounds[2] - xmin) / res))
    inside = 0 <= rows.start < rows.stop and 0 <= cols.start < cols.stop
    return (rows, cols) if inside and region_bounds(job, rows, cols) == tuple(bounds) else None


def _composite(
    items: Sequence[dict[str, Any]], job: JobSpec, bounds: tuple[float, float, float, float]
) -> tuple[xr.DataArray, xr.DataArray]:
    """One window's median composite and clear-observation count over ``bounds``."""
    normalised = [_normalise_assets(item, job) for item in items]
    stack = _whole_grid.stack(normalised, job, bounds)
    if stack.sizes["time"] == 0:
        return _empty_composite(job, stack)
    # Scale and offset are applied here, per item and band, rather than by stackstac: its safe-cast
    # check refuses float32 output for scales like 1e-4, and items of one window may differ
    # (Sentinel-2 processing baselines changed the offset).
    scale, offset = _scales(normalised, job.bands, [str(i) for i in stack["id"].values])
    reflectance = stack.sel(band=list(job.bands)) * scale + offset
    invalid = reflectance.isnull().any("band")
    if job.quality.asset:
        quality = stack.sel(band=_QUALITY)
        invalid = invalid | job.quality.invalid(quality)
    clear = reflectance.where(~invalid).chunk({"time": -1})
    composite = nan_median_over(clear, "time").astype("float32")
    count = (~invalid).sum("time").astype("uint8")
    return composite, count


def region_bounds(job: JobSpec, rows: slice, cols: slice) -> tuple[float, float, float, float]:
    """Return the bounds of a pixel region (rows and columns of the job's grid) in the grid's CRS."""
    xmin, _, _, ymax = job.target_bounds()
    res = job.grid.resolution
    return (xmin + cols.start * res, ymax - rows.stop * res, xmin + cols.stop * res, ymax - rows.start * res)


def assemble_cube(job: JobSpec, discovery: Discovery) -> xr.Dataset:
    """Build the lazy input cube of a job from the items it discovered.

    Returns
    -------
    xarray.Dataset
        ``reflectance(epoch, band, y, x)`` float32 and ``clear_count(epoch, y, x)`` uint8, with the
        grid's CRS as a CF ``spatial_ref`` variable, chunked in ``job.block_size`` spatial blocks.
    """
    return assemble_region(job, discovery, job.target_bounds())


def assemble_region(
    job: JobSpec, discovery: Discovery, bounds: tuple[float, float, float, float]
) -> xr.Dataset:
    """Build the lazy input cube over ``bounds`` only (see :func:`assemble_cube` and :func:`region_bounds`).

    Building each block's graph afresh this way keeps the cost per block independent of the area.
    """
    composites, counts = [], []
    for epoch in EPOCHS:
        composite, count = _composite(discovery.items[epoch], job, bounds)
        composites.append(composite)
        counts.append(count)
    epoch_index = pd.Index(list(EPOCHS), name="epoch")
    reflectance = xr.concat(composites, dim=epoch_index).transpose("epoch", "band", "y", "x")
    clear_count = xr.concat(counts, dim=epoch_index).transpose("epoch", "y", "x")
    reflectance.attrs.clear()  # stackstac's RasterSpec attrs are not JSON and do not describe the composite
    clear_count.attrs.clear()
    keep = {"epoch", "band", "y", "x"}
    reflectance = reflectance.drop_vars([c for c in reflectance.coords if c not in keep])
    clear_count = clear_count.drop_vars([c for c in clear_count.coords if c not in keep])
    block = job.block_size
    ds = xr.Dataset(
        {
            REFLECTANCE: reflectance.chunk({"epoch": 1, "band": -1, "y": block, "x": block}),
            CLEAR_COUNT: clear_count.chunk({"epoch": 1, "y": block, "x": block}),
        }
    )
    ds = ds.assign_coords(
        epoch=string_labels(list(EPOCHS), job.zarr_format),
        band=string_labels(job.bands, job.zarr_format),
    )
    ds[REFLECTANCE].attrs.update(long_name="median clear-sky surface reflectance", units="1")
    ds[REFLECTANCE].encoding["_FillValue"] = np.float32("nan")
    ds[CLEAR_COUNT].attrs.update(long_name="number of clear observations in the composite", units="1")
    crs = job.target_crs()
    for variable in ds.data_vars.values():
        variable.attrs["_CRS"] = gdal_crs_attribute(crs)
    ds = ds.rio.write_crs(crs.to_wkt()).rio.write_coordinate_system()
    cube: xr.Dataset = ds.rio.write_transform(ds.rio.transform(recalc=True))
    cube.attrs.update(
        {
            "title": "seg2change input cube",
            "Conventions": "CF-1.8",
            ATTR_SOFTWARE: f"seg2change {__version__}",
            ATTR_JOB: job.model_dump_json(),
            ATTR_PROVENANCE: json.dumps(discovery.provenance()),
        }
    )
    return cube
