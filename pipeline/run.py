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

from distributed import Client

from pipeline.cost import JobEstimate
from pipeline.cube import PreparedCube
from pipeline.discover import Discovery
from pipeline.infer import InferenceResult
from pipeline.output_lock import hold_output
from pipeline.publish import PublishResult
from pipeline.spec import JobSpec
from pipeline.stages import check_job, discover_stage, infer_stage, prepare_stage, publish_stage
from pipeline.storage import Location

__all__ = ["RunResult", "run_job"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunResult:
    """Everything one run produced."""

    job: JobSpec
    discovery: Discovery
    cube: PreparedCube
    inference: InferenceResult
    publication: PublishResult


def run_job(
    job: JobSpec,
    *,
    force: bool = False,
    progress: bool = True,
    client: Client | None = None,
    on_estimate: Callable[[JobEstimate], None] | None = None,
) -> RunResult:
    """Run a job end to end: :func:`~pipeline.stages.check_job`, then the four stages of
    :mod:`pipeline.stages` in turn, holding the output's lock.

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
    checked = check_job(job, force=force)
    job = checked.job
    if on_estimate is not None:
        on_estimate(checked.estimate)
    with hold_output(Location(job.output), job=f"job {job.output}"):
        found = discover_stage(job)
        cube = prepare_stage(job, found, progress=progress)
        inference = infer_stage(job, cube, force=force, client=client, progress=progress)
        publication = publish_stage(job, inference, cube, found, progress=progress)
    return RunResult(job, found, cube, inference, publication)
