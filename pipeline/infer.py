"""Tiled, distributed, restartable inference: from the input cube to the change cube.

The cube is split into square blocks (the output's chunks) and covered by the tiles of one global
grid (:mod:`pipeline.tiling`). Dask tasks do the work (:mod:`pipeline.block_tasks`), planned by
:mod:`pipeline.tile_plan` so that every tile is computed once: a **tile-group task** reads a few
tiles from the input Zarr and runs the models on them (:mod:`pipeline.tile_kernel`); a **block
task** blends the probabilities of every tile that intersects its block, fuses them into the
layers and writes the block's chunks into the change cube, then its completion marker. Task
arguments are a few hundred bytes, never input arrays. Each pixel always receives the same tiles,
added in the same order, and each tile is computed in a batch of one fixed size: the result does
not depend on the block size or on the number of workers, and equals
:func:`pipeline.tile_kernel.infer_array` on the whole array in memory.

:func:`run_inference` is the entry point, a sequence of steps: settle the specs, describe the input
cube and fingerprint the job (:mod:`pipeline.inference_identity`); resume or refuse an existing
output; fit what must be fitted once per job (:mod:`pipeline.cube_fit`); plan the unfinished
blocks; start or join the cluster, where :mod:`pipeline.block_submission` runs the tile groups, the
cube's creation and the blocks in the plan's order; mark the cube complete.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, TypeVar

import numpy as np
from distributed import Client

from pipeline import __version__
from pipeline.block_submission import clear_input_caches, run_blocks
from pipeline.block_tasks import BlockContext, BlockReport
from pipeline.change_cube import (
    ATTR_FINGERPRINT,
    ATTR_INFERENCE,
    ATTR_JOB,
    ATTR_MODEL_FIT,
    ATTR_MODELS,
    ATTR_PROMPTS,
    ATTR_SOFTWARE_VERSION,
    ATTR_TILING,
    ATTR_TORCH_THREADS,
    BlockGrid,
    ChangeCubeLayout,
    CubeState,
    check_reusable,
    create_change_cube,
    finalise_change_cube,
    inspect_change_cube,
    read_done,
    remove_change_cube,
)
from pipeline.cluster import connect
from pipeline.cube_fit import fit_for_cube
from pipeline.cube_read import InputCube, describe_input
from pipeline.engine_spec import ClusterSpec, ModelSpec, PromptSpec, TilingSpec
from pipeline.errors import ClusterError, JobSpecError
from pipeline.inference_identity import fingerprint, inference_document
from pipeline.memory_release import release_freed_memory
from pipeline.models import ModelIdentity, ModelRuntime, change_model_info, model_identities
from pipeline.output_lock import hold_output
from pipeline.spec import JobSpec
from pipeline.storage import Location, LocationLike
from pipeline.tile_kernel import blend_tiles, derive_layers, run_tiles, valid_pixels
from pipeline.tile_plan import PlannedBlock, TilePlan, strip_blocks
from pipeline.tiling import Blender, RampBlender, TileGrid
from seg2change_core.prompts import PromptSet

# Besides the entry point and its result, names that bench scripts and tests of other modules use
# from here (re-exported; their homes are the modules they are imported from).
__all__ = [
    "InferenceResult",
    "blend_tiles",
    "derive_layers",
    "describe_input",
    "fit_for_cube",
    "run_inference",
    "run_tiles",
    "valid_pixels",
]

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class InferenceResult:
    """What a run did.

    Attributes
    ----------
    path
        The change cube.
    fingerprint
        The job fingerprint recorded in it.
    blocks
        Blocks in the cube.
    computed
        Blocks computed by this run, in completion order.
    skipped
        Blocks already done before this run.
    wall_seconds
        Duration of the run.
    model_seconds
        Time spent in model calls, summed over the blocks computed.
    task_seconds
        Duration of the block tasks, summed.
    tiles
        Tile computations (a tile counts once per group task that computed it: once, or again at a
        strip seam).
    """

    path: Location
    fingerprint: str
    blocks: int
    computed: tuple[tuple[int, int], ...]
    skipped: tuple[tuple[int, int], ...]
    wall_seconds: float
    model_seconds: float
    task_seconds: float
    tiles: int


def run_inference(
    job: JobSpec,
    cube_path: LocationLike,
    out_path: LocationLike,
    *,
    models: ModelSpec | None = None,
    tiling: TilingSpec | None = None,
    cluster: ClusterSpec | Client | None = None,
    prompts: PromptSpec | PromptSet | None = None,
    force: bool = False,
    progress: bool = True,
) -> InferenceResult:
    """Compute the change cube of a job from its input cube, block by block on a Dask cluster.

    Parameters
    ----------
    job
        The job (recorded in the output; its inference-relevant fields enter the fingerprint).
    cube_path
        The input cube (:func:`pipeline.cube.write_cube`).
    out_path
        The change cube to write: a local path, or an fsspec URL (``s3://bucket/prefix/...``)
        that the workers write to directly.
    models, tiling, cluster, prompts
        Engine specs; each defaults to the job's field of that name when it has one, else to the
        spec's defaults (``prompts`` has no default and must be given one way or the other).
        ``cluster`` may be a ready ``Client``, which is used and left open.
    force
        Recompute everything, replacing whatever is at ``out_path``.
    progress
        Show a progress bar over the blocks.

    Returns
    -------
    InferenceResult

    Raises
    ------
    ChangeCubeMismatchError
        When ``out_path`` holds the change cube of a different job (and not ``force``).
    OutputExistsError
        When ``out_path`` holds something else (and not ``force``).
    InferenceError
        When a block fails; blocks finished before stay done, so a rerun resumes.
    """
    started = time.perf_counter()
    run = _set_up(job, cube_path, out_path, models=models, tiling=tiling, cluster=cluster, prompts=prompts)
    out = run.out_path
    with hold_output(out.parent, job=f"{out.name} of job {run.fingerprint[:12]}"):
        state = _claim_output(run, force=force)
        all_blocks = tuple(run.blocks)
        if state.complete:
            log.info("%s is already complete for this job; nothing to do (--overwrite recomputes it)", out)
            return InferenceResult(
                out,
                run.fingerprint,
                len(run.blocks),
                (),
                all_blocks,
                time.perf_counter() - started,
                0.0,
                0.0,
                0,
            )
        start = _start_or_resume(run, state)
        skipped = tuple(b for b in all_blocks if start.done[b])
        plan, planned = _plan(run, [b for b in all_blocks if not start.done[b]])
        reports: list[BlockReport] = []
        if planned:
            reports = _compute(run, start, plan, planned, create_cube=not state.exists, progress=progress)
        else:
            log.info("every block of %s is done; only marking it complete", out)
        finalise_change_cube(out)
    release_freed_memory()  # what the blocks freed in this process (a cluster of threads) goes back
    return _report(run, reports, skipped, time.perf_counter() - started)


@dataclass(frozen=True)
class _Run:
    """A run's specs, input, grids and identity, settled before its output is touched."""

    job: JobSpec
    cube: InputCube
    out_path: Location
    models: ModelSpec
    tiling: TilingSpec
    cluster: ClusterSpec | Client | None
    prompts: PromptSet
    grid: TileGrid
    blocks: BlockGrid
    blender: Blender
    identities: tuple[ModelIdentity, ...]
    inference: dict[str, Any]
    fingerprint: str


@dataclass(frozen=True)
class _Start:
    """Where a run starts: its models (fitted), the attributes of a cube it creates, done blocks."""

    runtime: ModelRuntime
    recorded_threads: int | None
    attrs: dict[str, Any]
    done: np.ndarray[Any, np.dtype[np.bool_]]


def _from_job(value: Any, job: JobSpec, field: str, default: Any) -> Any:
    if value is not None:
        return value
    from_job = getattr(job, field, None)
    return from_job if from_job is not None else default


def _set_up(
    job: JobSpec,
    cube_path: LocationLike,
    out_path: LocationLike,
    *,
    models: ModelSpec | None,
    tiling: TilingSpec | None,
    cluster: ClusterSpec | Client | None,
    prompts: PromptSpec | PromptSet | None,
) -> _Run:
    """Resolve the specs from the arguments and the job, check the paths, describe the input cube,
    lay out the grids and fingerprint the job."""
    models = _from_job(models, job, "models", ModelSpec())
    tiling = _from_job(tiling, job, "tiling", TilingSpec())
    cluster = _from_job(cluster, job, "cluster", None)
    prompts = _from_job(prompts, job, "prompts", None)
    if prompts is None:
        raise JobSpecError(
            "no classes to look for: pass prompts=PromptSpec(classes='building;water') or set the job's prompts"
        )
    prompt_set = prompts.prompt_set() if isinstance(prompts, PromptSpec) else prompts
    out = Location.parse(out_path)
    out.check_access()
    cube = describe_input(cube_path)

    info = change_model_info(models, cube.bands)
    tile_size = tiling.resolve_tile_size(info.tile_size)
    block_size = tiling.block_size or cube.chunk
    identities = model_identities(models, cube.bands)
    inference = inference_document(
        job,
        input_identity=cube.identity,
        models=models,
        identities=identities,
        tiling={
            "tile_size": tile_size,
            "overlap": tiling.overlap,
            "window": tiling.window,
            "block_size": block_size,
        },
        prompts=PromptSpec.from_prompt_set(prompt_set).model_dump(mode="json"),
    )
    return _Run(
        job=job,
        cube=cube,
        out_path=out,
        models=models,
        tiling=tiling,
        cluster=cluster,
        prompts=prompt_set,
        grid=TileGrid(cube.height, cube.width, tile_size, tiling.overlap),
        blocks=BlockGrid(cube.height, cube.width, block_size),
        blender=RampBlender(tiling.overlap, tiling.window),
        identities=identities,
        inference=inference,
        fingerprint=fingerprint(inference),
    )


def _claim_output(run: _Run, *, force: bool) -> CubeState:
    """What the output path holds once a half-made or (with ``force``) any existing output is
    removed; refuses an output this job must not write into (:func:`check_reusable`)."""
    out = run.out_path
    state = inspect_change_cube(out)
    if state.creating and (not state.is_change_cube or state.fingerprint == run.fingerprint):
        log.warning("%s was being created when an earlier run stopped; creating it again", out)
        remove_change_cube(out)
        state = CubeState(exists=False)
    if force and state.exists:
        log.info("force: replacing %s", out)
        remove_change_cube(out)
        state = CubeState(exists=False)
    check_reusable(out, state, run.fingerprint, run.inference)
    return state


def _start_or_resume(run: _Run, state: CubeState) -> _Start:
    """Resume with the fit and threads recorded in an existing cube, or fit the models and write
    down the attributes of the cube to create."""
    runtime = ModelRuntime(run.models, run.cube.bands)
    if state.exists and state.attrs is not None:
        fit = json.loads(state.attrs.get(ATTR_MODEL_FIT, "null"))
        runtime = replace(runtime, fit=None if fit is None else (float(fit[0]), float(fit[1])))
        recorded_threads = json.loads(state.attrs.get(ATTR_TORCH_THREADS, "null"))
        done = read_done(run.out_path, run.blocks)
        log.info("resuming %s: %d of %d blocks already done", run.out_path, int(done.sum()), len(run.blocks))
        return _Start(runtime, recorded_threads, {}, done)
    runtime = fit_for_cube(runtime, run.cube)
    attrs = {
        ATTR_JOB: run.job.model_dump_json(),
        ATTR_INFERENCE: json.dumps(run.inference, sort_keys=True, default=str),
        ATTR_FINGERPRINT: run.fingerprint,
        ATTR_MODELS: json.dumps([m.as_dict() for m in run.identities]),
        ATTR_MODEL_FIT: json.dumps(runtime.fit),
        ATTR_TILING: json.dumps(run.inference["tiling"]),
        ATTR_PROMPTS: json.dumps(run.inference["prompts"]),
        ATTR_SOFTWARE_VERSION: __version__,
    }
    return _Start(runtime, None, attrs, np.zeros(run.blocks.shape, dtype=bool))


def _plan(run: _Run, pending: list[tuple[int, int]]) -> tuple[TilePlan, list[PlannedBlock]]:
    """The tile plan of the run and its pending blocks' tasks."""
    tiling = run.tiling
    plan = TilePlan(run.grid, run.blocks, strip_blocks(run.blocks.block_size, tiling.strip_size))
    planned = list(plan.plan(pending))
    log.info(
        "inference: %d blocks of %d px (%d to compute), %d tiles of %d px overlap %d (%d to compute), "
        "strips of %d blocks, models %s",
        len(run.blocks),
        run.blocks.block_size,
        len(pending),
        len(run.grid),
        run.grid.tile_size,
        tiling.overlap,
        plan.count_tiles(planned),
        plan.strip_blocks,
        ", ".join(m.name for m in run.identities),
    )
    return plan, planned


def _compute(
    run: _Run,
    start: _Start,
    plan: TilePlan,
    planned: list[PlannedBlock],
    *,
    create_cube: bool,
    progress: bool,
) -> list[BlockReport]:
    """Connect to the cluster and compute the planned blocks (creating the cube first when
    ``create_cube``); a lost cluster becomes a :class:`ClusterError` that says a rerun resumes."""
    out = run.out_path
    wants_gpu = run.models.device == "cuda"
    with _closed_quietly_on_error(connect(run.cluster, gpu=wants_gpu)) as session:
        # Torch's intra-op threads change a model's float sums in the last bits: a resume
        # computes with the threads the cube was started with, whatever the cluster now.
        threads = start.recorded_threads if start.recorded_threads is not None else session.torch_threads
        create: Callable[[], None] | None = None
        if create_cube:
            create = partial(
                create_change_cube,
                out,
                ChangeCubeLayout(run.blocks, run.prompts.labels, run.prompts.targets, run.job.zarr_format),
                y=run.cube.y,
                x=run.cube.x,
                crs=run.cube.crs,
                transform=run.cube.transform,
                attrs={**start.attrs, ATTR_TORCH_THREADS: json.dumps(threads)},
            )
        context = BlockContext(
            cube_path=str(run.cube.path),
            out_path=str(out),
            grid=run.grid,
            blocks=run.blocks,
            blender=run.blender,
            batch_size=run.tiling.batch_size,
            runtime=replace(start.runtime, torch_threads=threads),
            prompts=run.prompts,
            run=uuid.uuid4().hex,
        )
        try:
            return run_blocks(
                session.client, context, plan, planned, session.model_task_resources(), progress, create
            )
        except (OSError, TimeoutError) as exc:
            raise ClusterError(
                f"lost the Dask cluster while computing {out} ({type(exc).__name__}: {exc}); "
                "blocks finished so far are kept: check that the scheduler and workers run "
                "(their logs say why they stopped), then run the same job again to resume"
            ) from exc
        finally:
            clear_input_caches(session.client, context.run)


def _report(
    run: _Run, reports: list[BlockReport], skipped: tuple[tuple[int, int], ...], wall: float
) -> InferenceResult:
    """The run's result, logged."""
    result = InferenceResult(
        path=run.out_path,
        fingerprint=run.fingerprint,
        blocks=len(run.blocks),
        computed=tuple(r.block for r in reports),
        skipped=skipped,
        wall_seconds=wall,
        model_seconds=sum(r.model_seconds for r in reports),
        task_seconds=sum(r.seconds for r in reports),
        tiles=sum(r.tiles for r in reports),
    )
    log.info(
        "inference done: %d blocks computed, %d skipped, %.1f s wall, %.1f s in models, %.1f s in tasks",
        len(result.computed),
        len(skipped),
        wall,
        result.model_seconds,
        result.task_seconds,
    )
    return result


@contextmanager
def _closed_quietly_on_error(manager: AbstractContextManager[T]) -> Iterator[T]:
    """Enter ``manager``; when the block raises, an error while closing it is logged instead of
    raised over the block's error (closing a cluster whose scheduler was lost fails too)."""
    value = manager.__enter__()
    try:
        yield value
    except BaseException as exc:
        try:
            suppress = manager.__exit__(type(exc), exc, exc.__traceback__)
        except Exception as closing:
            log.debug("closing after %s failed as well: %s", type(exc).__name__, closing)
            suppress = False
        if not suppress:
            raise
    else:
        manager.__exit__(None, None, None)
