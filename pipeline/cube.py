"""The input cube: its owner module, which prepares it, reuses it, opens it and describes it.

Each window's scenes are stacked on the job's grid, masked and reduced to a median composite
(:mod:`pipeline.cube_assembly`); the two composites form the input cube ``reflectance(epoch, band,
y, x)`` (float32 surface reflectance, NaN where no clear observation exists), with
``clear_count(epoch, y, x)`` recording how many observations each composite pixel used. It is
written lazily to Zarr in spatial blocks (:mod:`pipeline.cube_write`), so memory depends on the
block size and not on the area, and a killed write is resumed where it stopped.

Its variables, epochs and root attributes are named in :mod:`pipeline.cube_schema`: ``title``,
``Conventions``, ``software``, ``job`` (the job, JSON), ``provenance`` (the STAC items used, JSON),
:data:`INPUT_FINGERPRINT` (:func:`input_fingerprint`) and ``complete``. It is opened and described
by :mod:`pipeline.cube_read`: :func:`describe_cube` for the prepare stage, :func:`describe_input`
for the inference engine.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import dask

from pipeline.containment import check_asset_hrefs
from pipeline.cube_assembly import assemble_cube, assemble_region, region_bounds, whole_grid_stacks
from pipeline.cube_read import InputCube, PreparedCube, describe_cube, describe_input, open_cube
from pipeline.cube_schema import INPUT_FINGERPRINT
from pipeline.cube_write import cube_is_complete, remove_partial_cubes, root_attrs, write_cube
from pipeline.discover import Discovery
from pipeline.errors import OutputExistsError
from pipeline.layout import INPUT_CUBE, OutputLayout
from pipeline.output_lock import hold_output
from pipeline.spec import JobSpec
from pipeline.storage import Location

__all__ = [
    "CUBE_NAME",
    "INPUT_FIELDS",
    "INPUT_FINGERPRINT",
    "InputCube",
    "PreparedCube",
    "assemble_cube",
    "cube_is_complete",
    "cube_path",
    "describe_cube",
    "describe_input",
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

#: Job fields that decide the input cube's pixels; the rest (models, tiling...) do not.
INPUT_FIELDS = (
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

#: Input-cube blocks assembled and written at the same time (unless the scheduler is
#: ``"synchronous"``). One block's graph kept 1.1 of 2 cores busy (its reads and its median wait on
#: each other). bench/full_tile.py at 2,048 px (512 px blocks, 3 scenes per window): prepare's peak
#: 596 MB with one block, 783 MB with two, below inference's 1.5 GB; memory stays flat in the area.
BLOCKS_AT_ONCE = 2

# Called through this module's global, so that a test can count the regions assembled.
_assemble = assemble_region


def cube_path(job: JobSpec) -> Location:
    """Return the location of the job's input cube."""
    return OutputLayout.of(job.output).input_cube


def input_fingerprint(job: JobSpec, discovery: Discovery) -> str:
    """Hash of what determines an input cube: the data-plane fields of the job and the items used."""
    doc = {
        "job": job.model_dump(mode="json", include=set(INPUT_FIELDS)),
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
        :data:`BLOCKS_AT_ONCE` blocks are written at a time, one with ``"synchronous"``.
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
    with whole_grid_stacks():
        _write_locked(job, discovery, path, fingerprint, progress=progress, scheduler=scheduler)
    OutputLayout.of(job.output).provenance.write_text(json.dumps(discovery.provenance(), indent=2))
    return describe_cube(path, discovery)


def _write_locked(
    job: JobSpec, discovery: Discovery, path: Location, fingerprint: str, *, progress: bool, scheduler: Any
) -> None:
    """Write the input cube block by block, each block sliced from each window's stack over the whole grid."""
    with dask.config.set(scheduler=scheduler or "threads"):
        write_cube(
            # No name here holds the whole cube's lazy graph: write_cube drops it once the metadata is
            # written, and each block builds its own.
            _assemble(job, discovery, job.target_bounds()).assign_attrs({INPUT_FINGERPRINT: fingerprint}),
            path,
            overwrite=job.overwrite,
            progress=progress,
            zarr_format=job.zarr_format,
            blocks=lambda rows, cols: _assemble(job, discovery, region_bounds(job, rows, cols)),
            resume_key=fingerprint,
            blocks_at_once=1 if scheduler == "synchronous" else BLOCKS_AT_ONCE,
        )
