"""The four stages of a job, and the one check before them, as functions both orchestrations call.

:func:`pipeline.run.run_job` chains them in one process; the Prefect tasks of :mod:`flows.tasks`
wrap them one to one. Both therefore refuse the same bad jobs at the same point and replace the
same outputs:

1. :func:`check_job` -- every check that needs no pixels (:func:`pipeline.preflight.preflight`),
   before anything is searched or written; ``force`` becomes the job's ``overwrite``, so the input
   cube is rebuilt and the change cube recomputed alike on both paths;
2. :func:`discover_stage` -- the catalog search, returning its :class:`~pipeline.discover.Discovery`;
3. :func:`prepare_stage` -- the input cube from the discovery, returning its
   :class:`~pipeline.cube.PreparedCube`;
4. :func:`infer_stage` -- the change cube from the prepared cube, returning its
   :class:`~pipeline.infer.InferenceResult`;
5. :func:`publish_stage` -- COGs, STAC, statistics and quick-look from the inference, returning
   its :class:`~pipeline.publish.PublishResult`.

Each stage takes the job and the description the stage before it returned, never a path to read
back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from distributed import Client

from pipeline import layout
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

__all__ = [
    "CheckedJob",
    "change_cube_path",
    "check_job",
    "discover_stage",
    "infer_stage",
    "prepare_stage",
    "publish_stage",
    "remove_staging_files",
]

log = logging.getLogger(__name__)

#: Names of the files that publishing writes aside and renames (or converts) into place: COG staging
#: GeoTIFFs (``.NAME.staging-XXXXXXXX.tif``) and :func:`pipeline.storage.replace_atomically`'s
#: temporary files (``.NAME.tmp-XXXXXXXX.SUFFIX``).
_STAGING_PATTERNS = (".*.staging-*", ".*.tmp-*")


def change_cube_path(job: JobSpec) -> Location:
    """Return the location of the job's change cube."""
    return layout.OutputLayout.of(job.output).change_cube


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
        for folder in (layout.COGS, layout.STAC):
            found.update((root / folder).rglob(pattern))
    staged = sorted(p for p in found if p.is_file())
    for path in staged:
        log.info("removing %s, left by a run that was stopped while it published", path)
        path.unlink(missing_ok=True)
    return staged


@dataclass(frozen=True)
class CheckedJob:
    """A job that passed every check needing no pixels.

    Attributes
    ----------
    job
        The job as the stages run it: with ``overwrite`` set when the run was forced.
    estimate
        Its size estimate (:mod:`pipeline.cost`), at the model's tile.
    tile_size
        The model tile inference will use: the job's, else the change model's own.
    """

    job: JobSpec
    estimate: JobEstimate
    tile_size: int


def check_job(job: JobSpec, *, force: bool = False) -> CheckedJob:
    """Refuse a job that cannot run, before anything is searched or written.

    Parameters
    ----------
    job
        The job; it must name ``prompts``.
    force
        Replace what exists: the job's ``overwrite`` is set, so the input cube is rebuilt and the
        change cube recomputed.

    Returns
    -------
    CheckedJob

    Raises
    ------
    Seg2ChangeError
        The first check that fails (:func:`pipeline.preflight.preflight`: the output, the size, the
        prompts, the models, the scheduler), with its message naming the fix.
    """
    if job.prompts is None:  # the cheapest check first, as ``seg2change run`` always did
        raise JobSpecError(
            "the job names no prompts; add e.g. 'prompts: {classes: [water, \"building,roof,house\"]}' "
            "(prepare alone needs none)"
        )
    if force and not job.overwrite:
        job = job.model_copy(update={"overwrite": True})
    checked = preflight(job, inference=True)
    assert checked.tile_size is not None  # preflight resolves the tile whenever it checks the models
    return CheckedJob(job, checked.estimate, checked.tile_size)


def discover_stage(job: JobSpec) -> Discovery:
    """Search the catalog for the job's scenes (:func:`pipeline.discover.discover`).

    Raises
    ------
    CatalogError
        The catalog cannot be reached.
    NothingFoundError
        A window has no usable scene.
    """
    return discover(job)


def prepare_stage(job: JobSpec, discovery: Discovery, *, progress: bool = True) -> PreparedCube:
    """Build the job's input cube from the scenes found, or reuse the one made from the same job
    fields and scenes (``job.overwrite`` rebuilds it; :func:`pipeline.cube.prepare_cube`)."""
    return prepare_cube(job, discovery, progress=progress, reuse=True)


def infer_stage(
    job: JobSpec,
    cube: PreparedCube,
    *,
    force: bool = False,
    client: Client | None = None,
    progress: bool = True,
) -> InferenceResult:
    """Compute the job's change cube from its prepared input cube (:func:`pipeline.infer.run_inference`).

    Parameters
    ----------
    job
        The job.
    cube
        What :func:`prepare_stage` returned.
    force
        Recompute every block, also of a complete change cube.
    client
        A ready Dask client to compute on (left open); default: the job's ``cluster``.
    progress
        Show progress bars.
    """
    inference = run_inference(
        job, cube.path, change_cube_path(job), cluster=client, force=force, progress=progress
    )
    log.info(
        "change cube %s: %d block(s) computed, %d already done",
        inference.path,
        len(inference.computed),
        len(inference.skipped),
    )
    return inference


def publish_stage(
    job: JobSpec,
    inference: InferenceResult,
    cube: PreparedCube,
    discovery: Discovery,
    *,
    progress: bool = True,
) -> PublishResult:
    """Publish the change cube into the job's output (:func:`pipeline.publish.publish`).

    Holding the output's lock (re-entrant: a run that holds it already keeps it), it first removes
    the staging files a killed publication left (:func:`remove_staging_files`).

    Parameters
    ----------
    job
        The job.
    inference, cube, discovery
        What :func:`infer_stage`, :func:`prepare_stage` and :func:`discover_stage` returned.
    progress
        Show progress bars.
    """
    output = Location(job.output)
    with hold_output(output, job=f"job {job.output}"):
        remove_staging_files(output)
        fault_point("publish:start")
        publication = publish(
            job,
            inference.path,
            cube.path,
            discovery,
            output,
            zones=Path(job.zones) if job.zones else None,
            progress=progress,
        )
        fault_point("publish:done")
    return publication
