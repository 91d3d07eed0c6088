"""Prefect tasks of the flows: one per stage of :mod:`pipeline.stages`, with retries and caching.

:func:`submit_job` runs :func:`pipeline.stages.check_job` first, as :func:`pipeline.run.run_job`
does, so both refuse the same jobs before any work and apply ``force`` alike (the job's
``overwrite``: the input cube is rebuilt, the change cube recomputed). Each task then calls one
stage with the job and the description the task before it returned (a
:class:`~pipeline.discover.Discovery`, :class:`~pipeline.cube.PreparedCube`,
:class:`~pipeline.infer.InferenceResult`, :class:`~pipeline.publish.PublishResult`: small frozen
records, never arrays: the heavy data stays in the Zarr stores and files under the job's output).
:mod:`flows.outputs` turns them into the JSON-ready dictionaries the flows return.

The output's lock
    A flow run holds its output's lock (:mod:`pipeline.output_lock`) from the check to the end of
    the publication, as :func:`pipeline.run.run_job` does: :func:`submit_job` takes it in the
    flow's process, which renews it, and gives it back once the publish task has ended. Each task
    is handed the holder and runs its stage under it (:func:`pipeline.output_lock.run_under`), in
    whatever process it runs, so no other run can take the output between two tasks.

Retries
    The stages that talk to the network (the catalog search and the asset reads of ``prepare``)
    retry three times with exponential backoff (2, 4, 8 s) -- but only on network errors
    (:class:`~pipeline.errors.CatalogError`, connection and time-out errors). Bad input
    (:class:`~pipeline.errors.JobSpecError`, :class:`~pipeline.errors.NothingFoundError`, any other
    error) fails at once, with the pipeline's message naming the fix.
Caching
    The inference task is cached on the job's inputs: its key hashes the job JSON and the period
    (:func:`job_cache_key`), and only while the job's change cube is complete, so a cached result
    never names outputs that were deleted or never finished.
Dask
    :func:`task_runner` picks the flow's task runner: a ``DaskTaskRunner`` on a running scheduler
    (``address``), a local ``DaskTaskRunner`` (``"local"``), or Prefect's thread pool. When the tasks
    run on Dask workers, the inference task computes its blocks on the same cluster
    (``prefect_dask.get_dask_client``); otherwise on the job's ``cluster``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

from prefect import task
from prefect.client.schemas.objects import TaskRun
from prefect.context import TaskRunContext
from prefect.states import State
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.tasks import Task, exponential_backoff

from pipeline.errors import CatalogError, NothingFoundError
from pipeline.spec import JobSpec

if TYPE_CHECKING:  # the engine (torch, Dask, Zarr) loads when a task runs, not with the flows
    from pipeline.cube import PreparedCube
    from pipeline.discover import Discovery
    from pipeline.infer import InferenceResult
    from pipeline.output_lock import LockHolder
    from pipeline.publish import PublishResult

__all__ = [
    "DASK_ADDRESS_ENV",
    "NETWORK_RETRIES",
    "SubmittedJob",
    "dask_client_of_runner",
    "discover_task",
    "infer_task",
    "is_network_error",
    "job_cache_key",
    "prepare_task",
    "publish_task",
    "retry_on_network_error",
    "submit_job",
    "task_runner",
]

#: Environment variable naming the Dask scheduler of the flows (an address, or ``local``).
DASK_ADDRESS_ENV = "SEG2CHANGE_DASK_ADDRESS"
#: Retries of the network stages.
NETWORK_RETRIES = 3
#: Base delay of the exponential backoff, in seconds (2, 4, 8 s).
BACKOFF_FACTOR = 2.0


# --------------------------------------------------------------------------- retry policy


def is_network_error(exc: BaseException) -> bool:
    """Tell whether an error is worth retrying: the catalog or a remote file could not be reached.

    ``NothingFoundError`` is a ``CatalogError`` too, but the catalog answered: nothing to retry.
    """
    if isinstance(exc, NothingFoundError):
        return False
    if isinstance(exc, CatalogError | ConnectionError | TimeoutError):
        return True
    try:
        from rasterio.errors import RasterioIOError
    except ImportError:  # pragma: no cover - rasterio is a dependency
        return False
    return isinstance(exc, RasterioIOError) and _looks_remote(str(exc))


def _looks_remote(message: str) -> bool:
    lowered = message.lower()
    return any(word in lowered for word in ("http", "curl", "timed out", "connection", "s3://", "/vsis3"))


def retry_on_network_error(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect ``retry_condition_fn``: retry a failed task run only when it failed on the network."""
    try:
        state.result()
    except BaseException as exc:  # the run's own exception, re-raised by result()
        return is_network_error(exc)
    return False


# --------------------------------------------------------------------------- caching


def job_cache_key(context: TaskRunContext, parameters: Mapping[str, Any]) -> str | None:
    """Cache key of a task on a job: the task's name, the job JSON and the period.

    A cached result is only worth reusing while the outputs it names exist: when the job's change
    cube is not complete (never computed, interrupted, or deleted since), there is no key (None),
    so the task runs and nothing stale is ever returned.

    Parameters
    ----------
    context
        The task run context (its task's name enters the key).
    parameters
        The task's parameters; ``job`` (a :class:`JobSpec`) and ``period`` (a label such as
        ``"2024-06"``, optional) are hashed, the others are not.

    Returns
    -------
    str or None
        The SHA-256 of the job JSON and period, or None while the change cube is incomplete.
    """
    from pipeline.change_cube import change_cube_is_complete
    from pipeline.stages import change_cube_path

    job = parameters["job"]
    if not isinstance(job, JobSpec) or not change_cube_is_complete(change_cube_path(job)):
        return None
    doc = {"task": context.task.name, "job": job.model_dump(mode="json"), "period": parameters.get("period")}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


# --------------------------------------------------------------------------- task runners


def task_runner(scheduler: str | None = None) -> Any:
    """Return the task runner for a flow.

    Parameters
    ----------
    scheduler
        ``None``: the environment variable ``SEG2CHANGE_DASK_ADDRESS`` if set, else Prefect's
        thread pool (each job computes on its own ``cluster``); ``"local"``: a local Dask cluster
        started by prefect-dask; an address (``tcp://host:8786``): that running Dask scheduler.

    Notes
    -----
    Tasks on Dask workers report to the Prefect API named by ``PREFECT_API_URL``; without one each
    worker starts its own temporary server, so set it (or run under ``prefect server start``).
    """
    scheduler = scheduler if scheduler is not None else os.environ.get(DASK_ADDRESS_ENV) or None
    if scheduler is None or scheduler in {"threads", "none"}:
        return ThreadPoolTaskRunner(max_workers=8)
    from prefect_dask import DaskTaskRunner

    from pipeline.cluster import local_cluster_of

    if scheduler == "local":  # closed: every listener on 127.0.0.1, no HTTP pages
        return DaskTaskRunner(
            cluster_class=local_cluster_of, cluster_kwargs={"processes": True, "threads_per_worker": 1}
        )
    return DaskTaskRunner(address=scheduler)


@contextlib.contextmanager
def dask_client_of_runner() -> Iterator[Any]:
    """Yield a client of the Dask cluster running this task, or None outside a Dask worker."""
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        yield None
        return
    from prefect_dask import get_dask_client

    with get_dask_client() as client:
        yield client


# --------------------------------------------------------------------------- tasks


@contextlib.contextmanager
def _under(job: JobSpec, lock: LockHolder | None) -> Iterator[None]:
    """Run a stage under the flow run's lock of the job's output; alone (None), the stage takes it."""
    if lock is None:
        yield
        return
    from pipeline.output_lock import run_under

    with run_under(job.output, lock):
        yield


_NETWORK_DELAYS = exponential_backoff(backoff_factor=BACKOFF_FACTOR)


@task(
    name="discover",
    task_run_name="discover-{period}",
    retries=NETWORK_RETRIES,
    retry_delay_seconds=_NETWORK_DELAYS,
    retry_condition_fn=retry_on_network_error,
)
def discover_task(job: JobSpec, period: str = "event", lock: LockHolder | None = None) -> Discovery:
    """Search the catalog for the job's scenes (:func:`pipeline.stages.discover_stage`).

    Parameters
    ----------
    job
        The job.
    period
        Label of the period (used in the task run's name).
    lock
        The flow run's hold of the output's lock (:func:`submit_job`).

    Returns
    -------
    Discovery
        The items chosen per window.

    Raises
    ------
    CatalogError
        The catalog cannot be reached (retried).
    NothingFoundError
        A window has no usable scene (not retried).
    """
    from pipeline import stages

    with _under(job, lock):
        return stages.discover_stage(job)


@task(
    name="prepare",
    task_run_name="prepare-{period}",
    retries=NETWORK_RETRIES,
    retry_delay_seconds=_NETWORK_DELAYS,
    retry_condition_fn=retry_on_network_error,
)
def prepare_task(
    job: JobSpec, discovery: Discovery, period: str = "event", lock: LockHolder | None = None
) -> PreparedCube:
    """Build (or reuse) the job's input cube from the scenes found (:func:`pipeline.stages.prepare_stage`).

    Parameters
    ----------
    job
        The job.
    discovery
        What :func:`discover_task` returned.
    period
        Label of the period.
    lock
        The flow run's hold of the output's lock (:func:`submit_job`).

    Returns
    -------
    PreparedCube
        The input cube's location and what it holds.
    """
    from pipeline import stages

    with _under(job, lock):
        return stages.prepare_stage(job, discovery, progress=False)


@task(name="infer", task_run_name="infer-{period}", cache_key_fn=job_cache_key)
def infer_task(
    job: JobSpec,
    cube: PreparedCube,
    period: str = "event",
    force: bool = False,
    lock: LockHolder | None = None,
) -> InferenceResult:
    """Compute the job's change cube from its input cube, block by block on Dask
    (:func:`pipeline.stages.infer_stage`).

    Cached on the job's JSON and the period (:func:`job_cache_key`).

    Parameters
    ----------
    job
        The job.
    cube
        What :func:`prepare_task` returned.
    period
        Label of the period (part of the cache key).
    force
        Recompute every block.
    lock
        The flow run's hold of the output's lock (:func:`submit_job`).

    Returns
    -------
    InferenceResult
        The change cube and its block counts (:func:`inference_summary` as JSON).
    """
    from pipeline import stages

    with _under(job, lock), dask_client_of_runner() as client:
        return stages.infer_stage(job, cube, force=force, client=client, progress=False)


@task(name="publish", task_run_name="publish-{period}")
def publish_task(
    job: JobSpec,
    inference: InferenceResult,
    cube: PreparedCube,
    discovery: Discovery,
    period: str = "event",
    lock: LockHolder | None = None,
) -> PublishResult:
    """Publish the change cube with the job's publishers (:func:`pipeline.stages.publish_stage`).

    Parameters
    ----------
    job
        The job.
    inference, cube, discovery
        What :func:`infer_task`, :func:`prepare_task` and :func:`discover_task` returned.
    period
        Label of the period.
    lock
        The flow run's hold of the output's lock (:func:`submit_job`).

    Returns
    -------
    PublishResult
        The files written and the statistics (:func:`publication_outputs` and
        :func:`summarise_statistics` as JSON).
    """
    from pipeline import stages

    with _under(job, lock):
        return stages.publish_stage(job, inference, cube, discovery, progress=False)


# --------------------------------------------------------------------------- one job


@dataclass
class SubmittedJob:
    """A job whose stages are submitted, holding its output's lock until the publish task ends.

    Use it as a context manager: leaving the block waits for the publish task (whatever its
    end) and gives the lock back.

    Attributes
    ----------
    job
        The job as checked (:func:`pipeline.stages.check_job`).
    infer, published
        The futures of the inference task (an :class:`~pipeline.infer.InferenceResult`) and of the
        publish task (a :class:`~pipeline.publish.PublishResult`).
    """

    job: JobSpec
    infer: Any
    published: Any
    _lock: contextlib.ExitStack = field(repr=False)

    def __enter__(self) -> SubmittedJob:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self.published.wait()  # every task ends before it: each is upstream of publish
        finally:
            self._lock.close()


def submit_job(job: JobSpec, period: str, *, force: bool = False) -> SubmittedJob:
    """Check one job, take its output's lock and submit its four stages to the flow's task runner,
    chained by their futures and run under that lock.

    Must be called inside a flow, and its result used as a context manager (``with submit_job(job,
    period) as run: run.published.result()``), which keeps the lock until the publish task ended.
    Jobs submitted one after another run concurrently.

    Parameters
    ----------
    job
        The job.
    period
        Label of the period (task run names, cache key).
    force
        Replace what exists, as :func:`pipeline.run.run_job` does: the job's ``overwrite`` is set
        (the input cube is rebuilt), the change cube recomputed, and the inference cache skipped.

    Returns
    -------
    SubmittedJob

    Raises
    ------
    Seg2ChangeError
        A check that needs no pixels failed (:func:`pipeline.stages.check_job`); nothing is submitted.
    OutputLockedError
        Another live run writes the same output; the message names it. Nothing is submitted.
    """
    from pipeline.output_lock import hold_output
    from pipeline.stages import check_job

    job = check_job(job, force=force).job
    stack = contextlib.ExitStack()
    lock = stack.enter_context(hold_output(job.output, job=f"job {job.output}"))
    try:
        # Futures stand in for the values they resolve to; Prefect waits for them before each stage.
        found: Any = discover_task.submit(job, period=period, lock=lock)
        cube: Any = prepare_task.submit(job, found, period=period, lock=lock)
        infer_runner = infer_task.with_options(refresh_cache=True) if force else infer_task
        infer: Any = infer_runner.submit(job, cube, period=period, force=force, lock=lock)
        published = publish_task.submit(job, infer, cube, found, period=period, lock=lock)
    except BaseException:
        stack.close()
        raise
    return SubmittedJob(job, infer, published, stack)
