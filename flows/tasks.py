"""Prefect tasks of the flows: one per stage of :mod:`pipeline.stages`, with retries and caching.

:func:`submit_job` runs :func:`pipeline.stages.check_job` first, as :func:`pipeline.run.run_job`
does, so both refuse the same jobs before any work and apply ``force`` alike (the job's
``overwrite``: the input cube is rebuilt, the change cube recomputed). Each task then calls one
stage with the job and the description the task before it returned (a
:class:`~pipeline.discover.Discovery`, :class:`~pipeline.cube.PreparedCube`,
:class:`~pipeline.infer.InferenceResult`, :class:`~pipeline.publish.PublishResult`: small frozen
records, never arrays: the heavy data stays in the Zarr stores and files under the job's output).
:func:`inference_summary`, :func:`publication_outputs` and :func:`summarise_statistics` turn them into
the JSON-ready dictionaries the flows return.

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
from typing import TYPE_CHECKING, Any

from prefect import task
from prefect.client.schemas.objects import TaskRun
from prefect.context import TaskRunContext
from prefect.states import State
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.tasks import Task, exponential_backoff

from pipeline.errors import CatalogError, NothingFoundError
from pipeline.spec import JobSpec
from pipeline.storage import LocationLike

if TYPE_CHECKING:  # the engine (torch, Dask, Zarr) loads when a task runs, not with the flows
    from pipeline.cube import PreparedCube
    from pipeline.discover import Discovery
    from pipeline.infer import InferenceResult
    from pipeline.publish import PublishResult
    from pipeline.publish.statistics import ChangeStatistics

__all__ = [
    "DASK_ADDRESS_ENV",
    "NETWORK_RETRIES",
    "discover_task",
    "infer_task",
    "inference_summary",
    "is_network_error",
    "job_cache_key",
    "prepare_task",
    "publication_outputs",
    "publish_task",
    "published_outputs",
    "retry_on_network_error",
    "submit_job",
    "summarise_statistics",
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
def _dask_client_of_runner() -> Iterator[Any]:
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

_NETWORK = {
    "retries": NETWORK_RETRIES,
    "retry_delay_seconds": exponential_backoff(backoff_factor=BACKOFF_FACTOR),
    "retry_condition_fn": retry_on_network_error,
}


@task(name="discover", task_run_name="discover-{period}", **_NETWORK)  # type: ignore[call-overload]
def discover_task(job: JobSpec, period: str = "event") -> Discovery:
    """Search the catalog for the job's scenes (:func:`pipeline.stages.discover_stage`).

    Parameters
    ----------
    job
        The job.
    period
        Label of the period (used in the task run's name).

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

    return stages.discover_stage(job)


@task(name="prepare", task_run_name="prepare-{period}", **_NETWORK)  # type: ignore[call-overload]
def prepare_task(job: JobSpec, discovery: Discovery, period: str = "event") -> PreparedCube:
    """Build (or reuse) the job's input cube from the scenes found (:func:`pipeline.stages.prepare_stage`).

    Parameters
    ----------
    job
        The job.
    discovery
        What :func:`discover_task` returned.
    period
        Label of the period.

    Returns
    -------
    PreparedCube
        The input cube's location and what it holds.
    """
    from pipeline import stages

    return stages.prepare_stage(job, discovery, progress=False)


@task(name="infer", task_run_name="infer-{period}", cache_key_fn=job_cache_key)
def infer_task(
    job: JobSpec, cube: PreparedCube, period: str = "event", force: bool = False
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

    Returns
    -------
    InferenceResult
        The change cube and its block counts (:func:`inference_summary` as JSON).
    """
    from pipeline import stages

    with _dask_client_of_runner() as client:
        return stages.infer_stage(job, cube, force=force, client=client, progress=False)


@task(name="publish", task_run_name="publish-{period}")
def publish_task(
    job: JobSpec,
    inference: InferenceResult,
    cube: PreparedCube,
    discovery: Discovery,
    period: str = "event",
) -> PublishResult:
    """Publish the change cube: COGs, STAC item, statistics and quick-look
    (:func:`pipeline.stages.publish_stage`).

    Parameters
    ----------
    job
        The job.
    inference, cube, discovery
        What :func:`infer_task`, :func:`prepare_task` and :func:`discover_task` returned.
    period
        Label of the period.

    Returns
    -------
    PublishResult
        The files written and the statistics (:func:`publication_outputs` and
        :func:`summarise_statistics` as JSON).
    """
    from pipeline import stages

    return stages.publish_stage(job, inference, cube, discovery, progress=False)


# --------------------------------------------------------------------------- outputs


def inference_summary(result: InferenceResult) -> dict[str, Any]:
    """The JSON-ready record of an inference: ``path`` (the change cube), ``blocks``, ``computed``
    and ``skipped`` (block counts) and ``wall_seconds``."""
    return {
        "path": str(result.path),
        "blocks": int(result.blocks),
        "computed": len(result.computed),
        "skipped": len(result.skipped),
        "wall_seconds": round(float(result.wall_seconds), 3),
    }


def publication_outputs(result: PublishResult) -> dict[str, Any]:
    """The paths (as strings) of what a publication wrote: ``cogs`` (per layer),
    ``stac_collection``, ``stac_item``, ``statistics_parquet``, ``statistics_json`` and
    ``quicklook``."""
    return {
        "cogs": {layer: str(path) for layer, path in result.cogs.items()},
        "stac_collection": str(result.stac_collection),
        "stac_item": str(result.stac_item),
        "statistics_parquet": str(result.statistics_parquet),
        "statistics_json": str(result.statistics_json),
        "quicklook": str(result.quicklook),
    }


def summarise_statistics(stats: ChangeStatistics, zone: str = "all") -> dict[str, Any]:
    """Summarise a job's statistics for one zone: changed area and change per target.

    Parameters
    ----------
    stats
        A publication's statistics (:attr:`pipeline.publish.PublishResult.statistics`, or
        :func:`pipeline.publish.statistics.read_statistics` of a published ``statistics.json``).
    zone
        Zone id; ``"all"`` is the whole area.

    Returns
    -------
    dict
        ``zone``, ``pixel_area_m2``, ``valid_pixels``, ``changed_area_m2``, ``changed_area_ha``
        and ``targets``: per target class, ``changed_m2`` (change into or out of it), ``gained_m2``
        (transitions from another class into it: e.g. newly flooded land for ``water``) and
        ``lost_m2`` (transitions out of it).

    Raises
    ------
    KeyError
        The statistics have no such zone.
    """
    totals = {t.zone: t for t in stats.totals}.get(zone)
    if totals is None:
        raise KeyError(
            f"zone {zone!r} is not in the statistics; they have {sorted(t.zone for t in stats.totals)}"
        )
    rows = stats.zone_rows(zone)
    moves = [r for r in rows if r.kind == "transition"]  # class_from != class_to
    targets = {
        target: {
            "changed_m2": float(sum(r.area_m2 for r in rows if r.kind == "target" and r.target == target)),
            "gained_m2": float(sum(r.area_m2 for r in moves if r.class_to == target)),
            "lost_m2": float(sum(r.area_m2 for r in moves if r.class_from == target)),
        }
        for target in stats.targets
    }
    return {
        "zone": zone,
        "pixel_area_m2": float(stats.pixel_area_m2),
        "valid_pixels": int(totals.valid_pixels),
        "changed_area_m2": float(totals.changed_area_m2),
        "changed_area_ha": float(totals.changed_area_ha),
        "targets": targets,
    }


def published_outputs(output: LocationLike) -> dict[str, str] | None:
    """Return the published outputs of a finished job folder, or None when it is not finished.

    A folder is finished when its change cube is complete and its STAC item and statistics have
    been published (the STAC item is written last).
    """
    from pipeline.change_cube import change_cube_is_complete
    from pipeline.layout import OutputLayout

    layout = OutputLayout.of(output)
    paths = {"change_cube": layout.change_cube, **layout.published_files()}
    if not change_cube_is_complete(layout.change_cube):
        return None
    if not all(p.is_file() for name, p in paths.items() if name != "change_cube"):
        return None
    return {name: str(p) for name, p in paths.items()}


# --------------------------------------------------------------------------- one job


def submit_job(job: JobSpec, period: str, *, force: bool = False) -> tuple[Any, Any]:
    """Check one job and submit its four stages to the flow's task runner, chained by their futures.

    Must be called inside a flow. Jobs submitted one after another run concurrently.

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
    infer, publish
        The futures of the inference task (an :class:`~pipeline.infer.InferenceResult`) and of the
        publish task (a :class:`~pipeline.publish.PublishResult`).

    Raises
    ------
    Seg2ChangeError
        A check that needs no pixels failed (:func:`pipeline.stages.check_job`); nothing is submitted.
    """
    from pipeline.stages import check_job

    job = check_job(job, force=force).job
    # Futures stand in for the values they resolve to; Prefect waits for them before each stage.
    found: Any = discover_task.submit(job, period=period)
    cube: Any = prepare_task.submit(job, found, period=period)
    infer_runner = infer_task.with_options(refresh_cache=True) if force else infer_task
    infer: Any = infer_runner.submit(job, cube, period=period, force=force)
    published = publish_task.submit(job, infer, cube, found, period=period)
    return infer, published
