"""The main job: discover -> prepare -> infer -> publish, restartable at every stage.

Running the same job again reuses what is done: the input cube when it was made from the same job
fields and the same scenes, the change cube's finished blocks, and the published files are simply
written again from the finished change cube. ``force`` recomputes everything.

A run holds the output folder's lock (:mod:`pipeline.output_lock`) from start to end: a second
run of the same output, ``--overwrite`` (``force=True``) or not, is refused while the first lives, and a lock left by
a killed run is recovered. Holding it, the run removes what killed runs left behind (partial
input cubes, COG staging files) before it writes.

The output may be a local folder or an fsspec URL (``output: s3://bucket/prefix``, see
:mod:`pipeline.storage`): the cubes are written there directly (by the Dask workers for the change
cube), the published files are made in a local temporary folder and uploaded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from distributed import Client

from pipeline.cost import JobEstimate
from pipeline.cube import PreparedCube, prepare_cube
from pipeline.discover import Discovery, discover
from pipeline.errors import JobSpecError
from pipeline.faults import fault_point
from pipeline.infer import InferenceResult, run_inference
from pipeline.output_lock import hold_output
from pipeline.preflight import preflight
from pipeline.publish import PublishResult, publish
from pipeline.spec import JobSpec
from pipeline.storage import Location

__all__ = ["CHANGE_CUBE_NAME", "RunResult", "change_cube_path", "remove_staging_files", "run_job"]

log = logging.getLogger(__name__)

#: Name of the change cube inside a job's output folder.
CHANGE_CUBE_NAME = "change_cube.zarr"


@dataclass(frozen=True)
class RunResult:
    """Everything one run produced."""

    job: JobSpec
    discovery: Discovery
    cube: PreparedCube
    inference: InferenceResult
    publication: PublishResult


def change_cube_path(job: JobSpec) -> Location:
    """Return the location of the job's change cube."""
    return Location(job.output) / CHANGE_CUBE_NAME


#: Names of the files that publishing writes aside and renames (or converts) into place: COG staging
#: GeoTIFFs (``.NAME.staging-XXXXXXXX.tif``) and :func:`pipeline.storage.replace_atomically`'s
#: temporary files (``.NAME.tmp-XXXXXXXX.SUFFIX``).
_STAGING_PATTERNS = (".*.staging-*", ".*.tmp-*")


def remove_staging_files(output: Location) -> list[Path]:
    """Delete what killed runs left of the published files in a local output: COG staging files and
    atomic writes' temporary files, in the output folder and under ``cogs/`` and ``stac/`` (the
    Zarr stores are not searched: they keep their own state).

    Only a run that holds the output's lock may call this (no live run is then writing them).
    """
    if not output.is_local or not output.local_path.is_dir():
        return []
    root = output.local_path
    found: set[Path] = set()
    for pattern in _STAGING_PATTERNS:
        found.update(root.glob(pattern))
        for folder in ("cogs", "stac"):
            found.update((root / folder).rglob(pattern))
    staged = sorted(p for p in found if p.is_file())
    for path in staged:
        log.info("removing %s, left by a run that was stopped while it published", path)
        path.unlink(missing_ok=True)
    return staged


def run_job(
    job: JobSpec,
    *,
    force: bool = False,
    progress: bool = True,
    client: Client | None = None,
    on_estimate: Callable[[JobEstimate], None] | None = None,
) -> RunResult:
    """Run a job end to end.

    Parameters
    ----------
    job
        The job; it must name ``prompts``.
    force
        Rebuild the input cube and recompute the change cube even when they are complete.
    progress
        Show progress bars.
    client
        A ready Dask client to compute on (left open); default: the job's ``cluster``.
    on_estimate
        Called with the job's size estimate (:mod:`pipeline.cost`) once every check that needs no
        pixels has passed (:mod:`pipeline.preflight`), before discovery.

    Returns
    -------
    RunResult

    Raises
    ------
    StorageError
        The output's bucket is missing or cannot be reached with the credentials at hand
        (checked before any work).
    OutputLockedError
        Another live run writes the same output; the message names it.
    """
    if job.prompts is None:
        raise JobSpecError(
            "the job names no prompts; add e.g. 'prompts: {classes: [water, \"building,roof,house\"]}' "
            "(prepare alone needs none)"
        )
    if force and not job.overwrite:
        job = job.model_copy(update={"overwrite": True})
    checked = preflight(job, inference=True)
    if on_estimate is not None:
        on_estimate(checked.estimate)
    output = Location(job.output)
    output.check_access()
    with hold_output(output, job=f"job {job.output}"):
        found = discover(job)
        cube = prepare_cube(job, found, progress=progress, reuse=True)
        inference = run_inference(
            job, cube.path, change_cube_path(job), cluster=client, force=force, progress=progress
        )
        log.info(
            "change cube %s: %d block(s) computed, %d already done",
            inference.path,
            len(inference.computed),
            len(inference.skipped),
        )
        remove_staging_files(output)
        fault_point("publish:start")
        publication = publish(
            job,
            inference.path,
            cube.path,
            found,
            output,
            zones=Path(job.zones) if job.zones else None,
            progress=progress,
        )
        fault_point("publish:done")
    return RunResult(job, found, cube, inference, publication)
