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

import contextlib
import hashlib
import json
import logging
import shutil
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
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
from pipeline.bands import band_asset
from pipeline.containment import check_asset_hrefs
from pipeline.discover import Discovery
from pipeline.errors import CubeError, OutputExistsError
from pipeline.faults import fault_point
from pipeline.output_lock import hold_output
from pipeline.progress import make_progress
from pipeline.spec import JobSpec
from pipeline.storage import EMPTY_FOLDER_WARNING, Location, LocationLike

__all__ = [
    "CUBE_NAME",
    "PreparedCube",
    "assemble_cube",
    "cube_is_complete",
    "cube_path",
    "describe_cube",
    "gdal_crs_attribute",
    "open_cube",
    "region_bounds",
    "prepare_cube",
    "remove_partial_cubes",
    "write_cube",
]

log = logging.getLogger(__name__)

#: Name of the input cube inside a job's output folder.
CUBE_NAME = "input_cube.zarr"
_QUALITY = "_quality"


@dataclass(frozen=True)
class PreparedCube:
    """Where a prepared input cube lies and what it holds."""

    path: Location
    shape: tuple[int, ...]
    bands: tuple[str, ...]
    crs: str
    transform: tuple[float, ...]
    items: dict[str, int]
    clear_fraction: dict[str, float]


def cube_path(job: JobSpec) -> Location:
    """Return the location of the job's input cube."""
    return Location(job.output) / CUBE_NAME


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


def _composite(
    items: Sequence[dict[str, Any]], job: JobSpec, bounds: tuple[float, float, float, float]
) -> tuple[xr.DataArray, xr.DataArray]:
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
        invalid = invalid | quality.isnull() | quality.isin(list(job.quality.invalid_values))
    clear = reflectance.where(~invalid).chunk({"time": -1})
    composite = clear.median("time", skipna=True).astype("float32")
    count = (~invalid).sum("time").astype("uint8")
    return composite, count


def _labels(values: Sequence[str], zarr_format: int) -> np.ndarray:
    """String coordinate values: fixed-width for Zarr v2, which GDAL's driver reads (it cannot read
    variable-length strings there); variable-length for v3, whose fixed-width type has no spec yet."""
    return np.array(values, dtype="U" if zarr_format == 2 else object)


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
    return _assemble(job, discovery, job.target_bounds())


def _assemble(job: JobSpec, discovery: Discovery, bounds: tuple[float, float, float, float]) -> xr.Dataset:
    composites, counts = [], []
    for epoch in ("before", "after"):
        composite, count = _composite(discovery.items[epoch], job, bounds)
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
    ds = ds.assign_coords(
        epoch=_labels(["before", "after"], job.zarr_format), band=_labels(job.bands, job.zarr_format)
    )
    ds["reflectance"].attrs.update(long_name="median clear-sky surface reflectance", units="1")
    ds["reflectance"].encoding["_FillValue"] = np.float32("nan")
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


BlockSource = Callable[[slice, slice], xr.Dataset]


def write_cube(
    ds: xr.Dataset,
    path: LocationLike,
    *,
    overwrite: bool = False,
    progress: bool = True,
    zarr_format: int = 3,
    blocks: BlockSource | None = None,
    resume_key: str | None = None,
) -> Location:
    """Write a lazy cube to Zarr, one spatial block at a time, never replacing a good output by a broken one.

    The array metadata is written first; then each block of ``ds``'s spatial chunks is computed
    on its own and written into its region. Computing block by block, rather than handing dask the
    whole graph, is what keeps memory bounded by the block size: on one big graph dask's ordering
    starts reads of many blocks at once and memory grows with the area (measured: 8x the memory
    for 16x the area). An existing cube is replaced only with ``overwrite=True``.

    On a local disk the cube is written next to its destination and moved into place only when
    complete. An object store has no rename: there the cube is written in place (an existing one
    is deleted first, with ``overwrite``), its root attribute ``complete`` is false until every
    block and the consolidated metadata are written, and a cube whose ``complete`` is false is
    never reused (see :func:`cube_is_complete`).

    Parameters
    ----------
    path
        A local path or an fsspec URL (``s3://bucket/prefix/input_cube.zarr``).
    blocks
        Builds the lazy dataset of one ``(rows, cols)`` region. Default: slices of ``ds``. Building
        each block's graph afresh keeps the cost per block independent of the area, where slicing
        one huge graph costs time in proportion to the whole graph for every block.
    resume_key
        On a local disk: name the partial cube after this key (the input fingerprint: the same key
        must mean the same pixels) and record each block written, in a folder beside it
        (``.NAME.partial-KEY.blocks``), so that a call with the same key after a run was killed or
        failed part-way writes only the blocks that are missing. Without it, a fresh partial cube is
        written and removed on failure. Object stores are written in place from the start.

    Returns
    -------
    Location
        Where the cube now lies.
    """
    location = Location.parse(path)
    if location.exists() and not overwrite:
        raise OutputExistsError(
            f"{location} already exists; pass --overwrite to replace it, or choose another output"
        )
    written: Path | None = None
    if location.is_local:
        location.local_path.parent.mkdir(parents=True, exist_ok=True)
        key = resume_key[:16] if resume_key else uuid.uuid4().hex[:8]
        target = location.parent / f".{location.name}.partial-{key}"
        if resume_key:
            written = Path(f"{target}.blocks")
    else:
        location.remove()
        target = location
    resuming = written is not None and written.is_dir() and target.exists()
    if written is not None and not resuming:
        # A partial cube whose metadata was never finished: nothing in it to keep.
        shutil.rmtree(target.local_path, ignore_errors=True)
        shutil.rmtree(written, ignore_errors=True)
    ds = ds.assign_attrs(complete=False)
    for name, variable in ds.data_vars.items():
        if variable.chunks:
            ds[name].encoding["chunks"] = variable.data.chunksize
        if cf_coordinates(variable):
            ds[name].encoding["coordinates"] = cf_coordinates(variable)
    spatial = [name for name, v in ds.data_vars.items() if {"y", "x"} <= set(v.dims)]
    regions = list(_block_regions(ds))
    try:
        with warnings.catch_warnings():
            # Consolidated metadata is a zarr-python extension for v3; it is what makes opening fast.
            warnings.filterwarnings("ignore", "Consolidated metadata", UserWarning)
            # Pixels with no clear observation are expected; they become NaN in the composite.
            warnings.filterwarnings("ignore", "All-NaN slice encountered", RuntimeWarning)
            warnings.filterwarnings("ignore", EMPTY_FOLDER_WARNING)
            store = target.zarr_store()
            if resuming:
                assert written is not None
                log.info(
                    "resuming the partial input cube %s: %d of %d blocks already written",
                    target,
                    sum(1 for _ in written.iterdir()),
                    len(regions),
                )
            else:
                ds.to_zarr(
                    store,
                    mode=target.zarr_create_mode,
                    zarr_format=zarr_format,
                    consolidated=False,
                    compute=False,
                )
                if written is not None:
                    written.mkdir()
            display = make_progress(enabled=progress)
            with display:
                task = display.add_task("writing cube blocks", total=len(regions))
                for ys, xs in regions:
                    marker = None if written is None else written / f"{ys.start}-{xs.start}"
                    if marker is None or not marker.exists():
                        block = blocks(ys, xs) if blocks else ds.isel(y=ys, x=xs)
                        block = block[spatial].drop_vars(list(block[spatial].coords))
                        try:
                            block.to_zarr(store, region={"y": ys, "x": xs}, mode="r+", consolidated=False)
                        except RuntimeError as exc:
                            unreadable = _unreadable_asset(exc, ys, xs, resumable=written is not None)
                            if unreadable is None:
                                raise
                            raise unreadable from exc
                        if marker is not None:
                            marker.touch()
                        fault_point("prepare:block-written")
                    display.advance(task)
            # Consolidated first, then marked complete, then consolidated again: a cube marked
            # complete always has consolidated metadata, whatever moment a run is killed.
            zarr.consolidate_metadata(store)
            zarr.open_group(store, mode="r+", use_consolidated=False).attrs["complete"] = True
            zarr.consolidate_metadata(store)
            fault_point("prepare:written")
    except BaseException:
        if written is not None:
            raise  # kept, to be resumed
        if target.is_local:
            shutil.rmtree(target.local_path, ignore_errors=True)
        else:
            with contextlib.suppress(Exception):
                target.remove()
        raise
    if location.is_local:
        if written is not None:
            shutil.rmtree(written)
        if location.exists():
            location.remove()
        target.local_path.rename(location.local_path)
    return location


def _block_regions(ds: xr.Dataset) -> Iterator[tuple[slice, slice]]:
    """Yield the ``(y, x)`` slices of the dataset's spatial chunks, row by row."""
    y_chunks = ds.chunks["y"]
    x_chunks = ds.chunks["x"]
    y0 = 0
    for height in y_chunks:
        x0 = 0
        for width in x_chunks:
            yield slice(y0, y0 + height), slice(x0, x0 + width)
            x0 += width
        y0 += height


def open_cube(path: LocationLike) -> xr.Dataset:
    """Open an input cube written by :func:`write_cube` (a local path or an fsspec URL)."""
    store = Location.parse(path).zarr_store(read_only=True)
    return xr.open_zarr(store, consolidated=True, decode_coords="all")


def cube_is_complete(path: LocationLike) -> bool:
    """Whether the Zarr store at ``path`` was written to the end by :func:`write_cube`.

    A cube without the ``complete`` attribute counts as complete on a local disk (where cubes
    appear only when complete, by a rename) and as incomplete on an object store.
    """
    location = Location.parse(path)
    return bool(_root_attrs(location).get("complete", location.is_local))


def _root_attrs(location: Location) -> dict[str, Any]:
    """The root attributes as stored now (not the consolidated copy); empty when unreadable."""
    try:
        group = zarr.open_group(location.zarr_store(read_only=True), mode="r", use_consolidated=False)
        return dict(group.attrs)
    except (OSError, ValueError, KeyError, zarr.errors.GroupNotFoundError):
        return {}


#: Job fields that decide the input cube's pixels; the rest (models, tiling...) do not.
_INPUT_FIELDS = (
    "aoi",
    "before",
    "after",
    "collections",
    "bands",
    "band_map",
    "quality",
    "grid",
    "cloud_limit",
    "block_size",
    "zarr_format",
)


def remove_partial_cubes(path: LocationLike, *, keep: str | None = None) -> list[Path]:
    """Delete what killed runs left of the local cube ``path``: its ``.NAME.partial-*`` folders,
    except those of the resume key ``keep`` (:func:`write_cube`).

    Only a run that holds the output's lock (:mod:`pipeline.output_lock`) may call this: a live
    run's partial cube is then never among them. Returns what was removed.
    """
    location = Location.parse(path)
    if not location.is_local or not location.local_path.parent.is_dir():
        return []
    kept = f".{location.name}.partial-{keep[:16]}" if keep else None
    partials = [
        p
        for p in sorted(location.local_path.parent.glob(f".{location.name}.partial-*"))
        if kept is None or p.name not in (kept, f"{kept}.blocks")
    ]
    for partial in partials:
        log.info("removing %s, left by a run that was stopped while it prepared the input cube", partial)
        shutil.rmtree(partial, ignore_errors=True)
    return partials


def input_fingerprint(job: JobSpec, discovery: Discovery) -> str:
    """Hash of what determines an input cube: the data-plane fields of the job and the items used."""
    doc = {
        "job": job.model_dump(mode="json", include=set(_INPUT_FIELDS)),
        "items": {epoch: sorted(item["id"] for item in items) for epoch, items in discovery.items.items()},
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _unreadable_asset(exc: RuntimeError, ys: slice, xs: slice, *, resumable: bool) -> CubeError | None:
    """A clear error for an asset stackstac could not open or read (``None`` for other errors).

    stackstac reports a file GDAL cannot open or read (a truncated download, an HTML error page
    saved as .tif, an href that needs signing) as ``RuntimeError("Error opening 'href': ...")``.
    """
    message = str(exc)
    if not message.startswith(("Error opening", "Error reading")):
        return None
    kept = "The blocks written so far are kept; " if resumable else ""
    return CubeError(
        f"cannot read an input asset for the block at rows {ys.start}-{ys.stop}, columns "
        f"{xs.start}-{xs.stop}: {message}. The file is not a readable raster (a truncated or "
        "interrupted download, an error page saved in its place) or the catalog needs its hrefs "
        f"signed (catalog.sign). {kept}replace or remove the asset in the catalog and run again."
    )


def prepare_cube(
    job: JobSpec, discovery: Discovery, *, progress: bool = True, scheduler: Any = None, reuse: bool = False
) -> PreparedCube:
    """Assemble and write the job's input cube; see :func:`assemble_cube` and :func:`write_cube`.

    Parameters
    ----------
    scheduler
        A dask scheduler (``"threads"``, ``"synchronous"`` or a distributed ``Client``). Default: threads.
    reuse
        Keep an existing cube made from the same job fields and the same items, instead of
        refusing it (``job.overwrite`` rebuilds it whatever it holds). An unfinished cube of the
        same job fields and items (an object-store write that was killed) is always written again.

    Raises
    ------
    OutputExistsError
        The cube exists, was not made by this job and these items (or ``reuse`` is false), and the
        job does not say ``overwrite``.
    StorageError
        The output's bucket is missing or cannot be reached with the credentials at hand.
    """
    path = cube_path(job)
    path.check_access()
    check_asset_hrefs(job, discovery.items)
    with hold_output(path.parent, job=f"input cube of job {job.output}"):
        return _prepare_locked(job, discovery, path, progress=progress, scheduler=scheduler, reuse=reuse)


def _prepare_locked(
    job: JobSpec, discovery: Discovery, path: Location, *, progress: bool, scheduler: Any, reuse: bool
) -> PreparedCube:
    fingerprint = input_fingerprint(job, discovery)
    # A partial cube of this job and these items is resumed; other partials are removed.
    remove_partial_cubes(path, keep=None if job.overwrite else fingerprint)
    if path.exists() and not job.overwrite:
        stored = _root_attrs(path).get("input_fingerprint")
        complete = cube_is_complete(path)
        if reuse and complete and stored == fingerprint:
            log.info("reusing the input cube %s (same job fields and items)", path)
            remove_partial_cubes(path)
            return describe_cube(path, discovery)
        if not complete and stored == fingerprint:
            # This job's own cube, left half-written by a run that was killed: start it again.
            log.info("the input cube %s was not finished by an earlier run; writing it again", path)
            path.remove()
        else:
            if not complete:
                reason = "holds an unfinished cube of another job or of other scenes"
            else:
                reason = "was made by another job or from other scenes" if reuse else "already exists"
            raise OutputExistsError(
                f"{path} {reason}; pass --overwrite to replace it, or choose another output"
            )
    ds = assemble_cube(job, discovery)
    ds.attrs["input_fingerprint"] = fingerprint
    with dask.config.set(scheduler=scheduler or "threads"):
        write_cube(
            ds,
            path,
            overwrite=job.overwrite,
            progress=progress,
            zarr_format=job.zarr_format,
            blocks=lambda rows, cols: _assemble(job, discovery, region_bounds(job, rows, cols)),
            resume_key=fingerprint,
        )
    (path.parent / "provenance.json").write_text(json.dumps(discovery.provenance(), indent=2))
    return describe_cube(path, discovery)


def describe_cube(path: LocationLike, discovery: Discovery) -> PreparedCube:
    """Summarise a written input cube: shape, bands, grid and clear fraction per epoch."""
    path = Location.parse(path)
    written = open_cube(path)
    # A composite pixel is finite exactly where it had a clear observation; the uint8 count is
    # the cheapest layer to read for that.
    clear = {
        str(epoch): float((written["clear_count"].sel(epoch=epoch).data > 0).mean().compute())
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
