"""Cube assembly: stack each window's scenes on one grid, mask clouds, composite, write Zarr.

stackstac builds a lazy ``(time, band, y, x)`` array per window on the job's grid, reprojecting
scenes whose CRS differs. Pixels that the quality band flags (cloud, shadow, nodata) or that hold
no data become NaN; each window is reduced to its per-pixel median over the clear observations.
The two composites form the input cube ``reflectance(epoch, band, y, x)`` (float32 surface
reflectance, NaN where no clear observation exists), with ``clear_count(epoch, y, x)`` recording
how many observations each composite pixel used. It is written lazily to Zarr v3 in spatial blocks,
so memory depends on the block size and not on the area.
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import pandas as pd
import rioxarray  # noqa: F401  (registers the .rio accessor)
import stackstac
import xarray as xr
import zarr
from affine import Affine
from pyproj import CRS

from pipeline import __version__
from pipeline.bands import resolve_asset_key
from pipeline.discover import Discovery
from pipeline.errors import CubeError, OutputExistsError
from pipeline.progress import DaskProgress
from pipeline.spec import JobSpec

__all__ = [
    "CUBE_NAME",
    "PreparedCube",
    "assemble_cube",
    "cube_path",
    "describe_cube",
    "gdal_crs_attribute",
    "open_cube",
    "prepare_cube",
    "write_cube",
]

log = logging.getLogger(__name__)

#: Name of the input cube inside a job's output folder.
CUBE_NAME = "input_cube.zarr"
_QUALITY = "_quality"


@dataclass(frozen=True)
class PreparedCube:
    """Where a prepared input cube lies and what it holds."""

    path: Path
    shape: tuple[int, ...]
    bands: tuple[str, ...]
    crs: str
    transform: tuple[float, ...]
    items: dict[str, int]
    clear_fraction: dict[str, float]


def cube_path(job: JobSpec) -> Path:
    """Return the path of the job's input cube."""
    return Path(job.output) / CUBE_NAME


def _normalise_assets(item: dict[str, Any], job: JobSpec) -> dict[str, Any]:
    """Re-key an item's assets by band common name, so items of different catalogs stack together."""
    assets = item.get("assets", {})
    renamed: dict[str, Any] = {}
    for band in job.bands:
        key = job.band_map.get(band) or resolve_asset_key(assets, band)
        if key is None or key not in assets:
            raise CubeError(
                f"item {item['id']} has no asset for band {band!r} (assets: {', '.join(sorted(assets))}); "
                "drop the band or map it in band_map"
            )
        renamed[band] = assets[key]
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


def _scales(items: Sequence[dict[str, Any]], bands: Sequence[str]) -> tuple[xr.DataArray, xr.DataArray]:
    scale = np.ones((len(items), len(bands)), dtype="float32")
    offset = np.zeros((len(items), len(bands)), dtype="float32")
    for i, item in enumerate(items):
        for j, band in enumerate(bands):
            raster = (item["assets"][band].get("raster:bands") or [{}])[0]
            scale[i, j] = raster.get("scale", 1.0)
            offset[i, j] = raster.get("offset", 0.0)
    dims = ("time", "band")
    return xr.DataArray(scale, dims=dims), xr.DataArray(offset, dims=dims)


def _composite(items: Sequence[dict[str, Any]], job: JobSpec) -> tuple[xr.DataArray, xr.DataArray]:
    crs = job.target_crs()
    epsg = crs.to_epsg()
    if epsg is None:
        raise CubeError(
            f"grid CRS {crs.name} has no EPSG code; stackstac needs one, give grid.crs as 'EPSG:n'"
        )
    assets = list(job.bands) + ([_QUALITY] if job.quality.asset else [])
    normalised = [_normalise_assets(item, job) for item in items]
    try:
        stack = stackstac.stack(
            normalised,
            assets=assets,
            epsg=epsg,
            resolution=job.grid.resolution,
            bounds=job.target_bounds(),
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
    # Scale and offset are applied here, per item and band, rather than by stackstac: its safe-cast
    # check refuses float32 output for scales like 1e-4, and items of one window may differ
    # (Sentinel-2 processing baselines changed the offset).
    scale, offset = _scales(normalised, job.bands)
    reflectance = stack.sel(band=list(job.bands)) * scale + offset
    invalid = reflectance.isnull().any("band")
    if job.quality.asset:
        quality = stack.sel(band=_QUALITY)
        invalid = invalid | quality.isnull() | quality.isin(list(job.quality.invalid_values))
    clear = reflectance.where(~invalid).chunk({"time": -1})
    composite = clear.median("time", skipna=True).astype("float32")
    count = (~invalid).sum("time").astype("uint8")
    return composite, count


def gdal_crs_attribute(crs: CRS) -> dict[str, str]:
    """Return GDAL's own ``_CRS`` Zarr attribute, which GDAL before 3.7 reads instead of CF ``grid_mapping``."""
    attribute = {"wkt": crs.to_wkt()}
    epsg = crs.to_epsg()
    if epsg is not None:
        attribute["url"] = f"http://www.opengis.net/def/crs/EPSG/0/{epsg}"
    return attribute


def assemble_cube(job: JobSpec, discovery: Discovery) -> xr.Dataset:
    """Build the lazy input cube of a job from the items it discovered.

    Returns
    -------
    xarray.Dataset
        ``reflectance(epoch, band, y, x)`` float32 and ``clear_count(epoch, y, x)`` uint8, with the
        grid's CRS as a CF ``spatial_ref`` variable, chunked in ``job.block_size`` spatial blocks.
    """
    composites, counts = [], []
    for epoch in ("before", "after"):
        composite, count = _composite(discovery.items[epoch], job)
        composites.append(composite)
        counts.append(count)
    epoch_index = pd.Index(["before", "after"], name="epoch")
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
            "reflectance": reflectance.chunk({"epoch": 1, "band": -1, "y": block, "x": block}),
            "clear_count": clear_count.chunk({"epoch": 1, "y": block, "x": block}),
        }
    )
    # Fixed-width strings: GDAL's Zarr driver cannot read variable-length string coordinates.
    ds = ds.assign_coords(
        epoch=np.array(["before", "after"], dtype="U6"), band=np.array(job.bands, dtype="U")
    )
    ds["reflectance"].attrs.update(
        long_name="median clear-sky surface reflectance", units="1", _FillValue=np.float32("nan")
    )
    ds["clear_count"].attrs.update(long_name="number of clear observations in the composite", units="1")
    crs = job.target_crs()
    for variable in ds.data_vars.values():
        variable.attrs["_CRS"] = gdal_crs_attribute(crs)
    ds = ds.rio.write_crs(crs.to_wkt()).rio.write_coordinate_system()
    ds = ds.rio.write_transform(ds.rio.transform(recalc=True))
    ds.attrs.update(
        title="seg2change input cube",
        Conventions="CF-1.8",
        software=f"seg2change {__version__}",
        job=job.model_dump_json(),
        provenance=json.dumps(discovery.provenance()),
    )
    return ds


def write_cube(
    ds: xr.Dataset, path: Path, *, overwrite: bool = False, progress: bool = True, zarr_format: int = 3
) -> Path:
    """Write a lazy cube to Zarr v3, block by block, without ever replacing a good output by a broken one.

    The cube is written next to its destination and moved into place only when complete; an
    existing cube is replaced only with ``overwrite=True``.
    """
    if path.exists() and not overwrite:
        raise OutputExistsError(
            f"{path} already exists; pass --overwrite to replace it, or choose another output"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:8]}")
    for name, variable in ds.data_vars.items():
        if variable.chunks:
            ds[name].encoding["chunks"] = variable.data.chunksize
    try:
        delayed = ds.to_zarr(
            str(partial), mode="w-", zarr_format=zarr_format, consolidated=True, compute=False
        )
        with DaskProgress("writing cube", enabled=progress):
            dask.compute(delayed)
        zarr.consolidate_metadata(str(partial))
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(path)
    partial.rename(path)
    return path


def open_cube(path: str | Path) -> xr.Dataset:
    """Open an input cube written by :func:`write_cube`."""
    return xr.open_zarr(str(path), consolidated=True, decode_coords="all")


def prepare_cube(
    job: JobSpec, discovery: Discovery, *, progress: bool = True, scheduler: Any = None
) -> PreparedCube:
    """Assemble and write the job's input cube; see :func:`assemble_cube` and :func:`write_cube`.

    Parameters
    ----------
    scheduler
        A dask scheduler (``"threads"``, ``"synchronous"`` or a distributed ``Client``). Default: threads.
    """
    path = cube_path(job)
    if path.exists() and not job.overwrite:
        raise OutputExistsError(
            f"{path} already exists; pass --overwrite to replace it, or choose another output"
        )
    ds = assemble_cube(job, discovery)
    with dask.config.set(scheduler=scheduler or "threads"):
        write_cube(ds, path, overwrite=job.overwrite, progress=progress, zarr_format=job.zarr_format)
    (path.parent / "provenance.json").write_text(json.dumps(discovery.provenance(), indent=2))
    return describe_cube(path, discovery)


def describe_cube(path: Path, discovery: Discovery) -> PreparedCube:
    """Summarise a written input cube: shape, bands, grid and clear fraction per epoch."""
    written = open_cube(path)
    clear = {
        str(epoch): float(da.isfinite(written["reflectance"].sel(epoch=epoch).data[0]).mean().compute())
        for epoch in written["epoch"].values
    }
    transform: Affine = written.rio.transform()
    return PreparedCube(
        path=path,
        shape=tuple(int(n) for n in written["reflectance"].shape),
        bands=tuple(str(b) for b in written["band"].values),
        crs=str(written.rio.crs),
        transform=tuple(transform)[:6],
        items={epoch: len(items) for epoch, items in discovery.items.items()},
        clear_fraction=clear,
    )
