"""The input cube: its owner module, which prepares it, reuses it, opens it and describes it.

Each window's scenes are stacked on the job's grid, masked and reduced to a median composite
(:mod:`pipeline.cube_assembly`); the two composites form the input cube ``reflectance(epoch, band,
y, x)`` (float32 surface reflectance, NaN where no clear observation exists), with
``clear_count(epoch, y, x)`` recording how many observations each composite pixel used. It is
written lazily to Zarr in spatial blocks (:mod:`pipeline.cube_write`), so memory depends on the
block size and not on the area, and a killed write is resumed where it stopped.

Root attributes: ``title``, ``Conventions``, ``software``, ``job`` (the job, JSON), ``provenance``
(the STAC items used, JSON), :data:`INPUT_FINGERPRINT` (:func:`input_fingerprint`) and
``complete``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

import dask
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from affine import Affine

from pipeline.containment import check_asset_hrefs
from pipeline.cube_assembly import assemble_cube, assemble_region, region_bounds
from pipeline.cube_write import cube_is_complete, remove_partial_cubes, root_attrs, write_cube
from pipeline.discover import Discovery
from pipeline.errors import OutputExistsError
from pipeline.layout import INPUT_CUBE, OutputLayout
from pipeline.output_lock import hold_output
from pipeline.spec import JobSpec
from pipeline.storage import Location, LocationLike

__all__ = [
    "CUBE_NAME",
    "INPUT_FINGERPRINT",
    "PreparedCube",
    "assemble_cube",
    "cube_is_complete",
    "cube_path",
    "describe_cube",
    "input_fingerprint",
    "open_cube",
    "region_bounds",
    "prepare_cube",
    "remove_partial_cubes",
    "write_cube",
]

log = logging.getLogger(__name__)

#: Name of the input cube inside a job's output folder (:data:`pipeline.layout.INPUT_CUBE`).
CUBE_NAME = INPUT_CUBE
#: Root attribute: the :func:`input_fingerprint` of the job and items the cube was made from.
INPUT_FINGERPRINT = "input_fingerprint"

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

# Called through this module's global, so that a test can count the regions assembled.
_assemble = assemble_region


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
    return OutputLayout.of(job.output).input_cube


def open_cube(path: LocationLike) -> xr.Dataset:
    """Open an input cube written by :func:`write_cube` (a local path or an fsspec URL)."""
    store = Location.parse(path).zarr_store(read_only=True)
    ds: xr.Dataset = xr.open_zarr(store, consolidated=True, decode_coords="all")
    return ds


def input_fingerprint(job: JobSpec, discovery: Discovery) -> str:
    """Hash of what determines an input cube: the data-plane fields of the job and the items used."""
    doc = {
        "job": job.model_dump(mode="json", include=set(_INPUT_FIELDS)),
        "items": {epoch: sorted(item["id"] for item in items) for epoch, items in discovery.items.items()},
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


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
    """Reuse, resume or write the input cube at ``path``; the caller holds the output's lock."""
    fingerprint = input_fingerprint(job, discovery)
    # A partial cube of this job and these items is resumed; other partials are removed.
    remove_partial_cubes(path, keep=None if job.overwrite else fingerprint)
    if path.exists() and not job.overwrite:
        stored = root_attrs(path).get(INPUT_FINGERPRINT)
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
    ds = _assemble(job, discovery, job.target_bounds())
    ds.attrs[INPUT_FINGERPRINT] = fingerprint
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
    OutputLayout.of(job.output).provenance.write_text(json.dumps(discovery.provenance(), indent=2))
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
