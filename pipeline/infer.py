"""Tiled, distributed, restartable inference: from the input cube to the change cube.

The cube is split into square blocks (the output's chunks) and covered by the tiles of one global
grid (:mod:`pipeline.tiling`). Two kinds of Dask tasks do the work, planned by
:mod:`pipeline.tile_plan` so that every tile is computed once:

* a **tile-group task** reads the union of a few tiles (one grid row of those a block owns)
  from the input Zarr, through a per-process cache of decoded chunks shared with the neighbouring
  groups (:mod:`pipeline.input_reader`), and runs them in batches through the change model and the
  segmenter (built once per worker, :mod:`pipeline.models`); its result, the tiles' probabilities,
  stays in worker memory;
* a **block task** receives the groups of every tile that intersects its block, blends their
  probabilities, derives the class maps, transition and binary change from the blended
  probabilities through :func:`seg2change_core.fusion.fuse`, and writes the block's chunks into the
  change cube followed by the block's completion marker (:mod:`pipeline.change_cube`).

Task arguments are a few hundred bytes (paths, the tile grid, the model description, indices),
never input arrays. Each pixel always receives the same tiles, added in the same order, and each
tile is computed by the change model in a batch of one fixed size (:func:`predict_fixed_batches`):
the result does not depend on the block size or on the number of workers, and equals
:func:`infer_array` on the whole array in memory.

:func:`run_inference` is the entry point: it validates, fingerprints the job, resumes or refuses an
existing output, fits what must be fitted once per job, starts or joins the cluster, submits the
tile groups of the unfinished blocks, a task that creates a new change cube, and the blocks, and
follows them with a progress bar. Tasks run in the plan's order
(:meth:`pipeline.tile_plan.TilePlan.task_order`), the cube's creation just before the first block,
except that the last blocks of the row before the final one wait until the final groups have
started: they fill the threads that would otherwise wait for the last tiles.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, TypeVar

import numpy as np
import torch
from distributed import Client, Future, as_completed
from numpy.typing import NDArray
from pyproj import CRS

from pipeline import __version__
from pipeline.change_cube import (
    FORMAT,
    TRANSITION_NO_CHANGE,
    TRANSITION_NODATA,
    UINT8_NODATA,
    BlockGrid,
    BlockLayers,
    ChangeCubeLayout,
    CubeState,
    check_reusable,
    create_change_cube,
    finalise_change_cube,
    inspect_change_cube,
    read_done,
    remove_change_cube,
    write_block,
)
from pipeline.cluster import connect
from pipeline.cube import open_cube
from pipeline.engine_spec import ClusterSpec, ModelSpec, PromptSpec, TilingSpec
from pipeline.errors import ClusterError, CubeError, InferenceError, JobSpecError
from pipeline.input_reader import forget_run, read_window
from pipeline.models import (
    LoadedModels,
    ModelRuntime,
    change_model_info,
    fit_change_model,
    get_models,
    model_identities,
    start_building,
)
from pipeline.output_lock import hold_output
from pipeline.progress import make_progress
from pipeline.spec import JobSpec
from pipeline.storage import Location, LocationLike
from pipeline.tile_plan import GroupKey, PlannedBlock, TilePlan, strip_blocks
from pipeline.tiling import BlendAccumulator, Blender, RampBlender, Tile, TileGrid, Window, batched, covering
from seg2change_core.change_model import ChangeModel
from seg2change_core.errors import Seg2ChangeError
from seg2change_core.fusion import fuse
from seg2change_core.prompts import PromptSet

__all__ = [
    "BlockContext",
    "BlockReport",
    "InferenceResult",
    "InputCube",
    "TilePieces",
    "blend_tiles",
    "compute_tile_group",
    "compute_window",
    "derive_layers",
    "describe_input",
    "fit_for_cube",
    "infer_array",
    "predict_fixed_batches",
    "pieces_for",
    "process_block",
    "run_inference",
    "run_tiles",
    "sample_pixels",
    "valid_pixels",
]

log = logging.getLogger(__name__)

#: Side of the windows sampled to fit a baseline once per job (independent of the block size).
FIT_WINDOW = 512

#: Job fields that do not change the inference result (the block size counts through the tiling).
# The catalog URL is not inference-relevant: the input cube's identity records which items it holds,
# and the same items served from another endpoint (the demo's server takes a new port) give the same cube.
_NOT_INFERENCE = {
    "output",
    "overwrite",
    "cluster",
    "models",
    "tiling",
    "prompts",
    "block_size",
    "catalog",
    "zones",
    "limits",
    "asset_roots",
}

F32 = NDArray[np.float32]
T = TypeVar("T")

#: Seconds a run waits for workers once the cluster has none left, before it gives up.
WORKERLESS_SECONDS = 60.0


# --------------------------------------------------------------------------- the input cube


@dataclass(frozen=True)
class InputCube:
    """What the engine needs to know of an input cube.

    Attributes
    ----------
    path
        Where it lies.
    height, width
        Pixels.
    bands
        Band names in cube order.
    chunk
        Spatial chunk side of ``reflectance``.
    crs, transform
        The grid.
    y, x
        Pixel-centre coordinates.
    identity
        Its shape, bands, grid and provenance attributes (JSON-ready), for the job fingerprint.
    """

    path: Location
    height: int
    width: int
    bands: tuple[str, ...]
    chunk: int
    crs: CRS
    transform: Any
    y: NDArray[np.floating]
    x: NDArray[np.floating]
    identity: Mapping[str, Any]


def describe_input(path: LocationLike) -> InputCube:
    """Read the input cube's metadata (no pixels) and check that the engine can read it raw.

    Raises
    ------
    CubeError
        When the cube is missing, lacks ``reflectance(epoch, band, y, x)`` with epochs
        ``before, after``, has no CRS, or stores reflectance scaled.
    """
    path = Location.parse(path)
    if not path.exists():
        raise CubeError(f"input cube {path} does not exist; build it first (seg2change cube / prepare_cube)")
    try:
        ds = open_cube(path)
    except Exception as exc:
        raise CubeError(f"cannot open the input cube {path} ({exc}); rebuild it with pipeline.cube") from exc
    if "reflectance" not in ds or ds["reflectance"].dims != ("epoch", "band", "y", "x"):
        raise CubeError(
            f"{path} has no reflectance(epoch, band, y, x) variable; rebuild it with pipeline.cube"
        )
    refl = ds["reflectance"]
    epochs = [str(e) for e in ds["epoch"].values]
    if epochs != ["before", "after"]:
        raise CubeError(
            f"{path} has epochs {epochs}, expected ['before', 'after']; rebuild it with pipeline.cube"
        )
    scaled = {"scale_factor", "add_offset"} & (set(refl.encoding) | set(refl.attrs))
    if scaled or np.dtype(refl.encoding.get("dtype", refl.dtype)).kind != "f":
        raise CubeError(
            f"{path} stores reflectance as scaled integers; the engine reads raw float reflectance: "
            "rebuild the cube with pipeline.cube (float32, NaN nodata)"
        )
    crs = ds.rio.crs
    if crs is None:
        raise CubeError(f"{path} has no CRS (spatial_ref); rebuild it with pipeline.cube")
    transform = ds.rio.transform()
    chunks = refl.encoding.get("chunks") or refl.data.chunksize
    height, width = int(refl.shape[2]), int(refl.shape[3])
    bands = tuple(str(b) for b in ds["band"].values)
    if "input_fingerprint" in ds.attrs:
        # The job's data-plane fields and the items used; unlike the provenance it has no search time.
        provenance: dict[str, Any] = {"input_fingerprint": ds.attrs["input_fingerprint"]}
    else:
        provenance = {
            key: _without_output_fields(ds.attrs[key]) if key == "job" else ds.attrs[key]
            for key in ("job", "provenance")
            if key in ds.attrs
        }
    identity = {
        "shape": [height, width],
        "bands": list(bands),
        "crs": CRS.from_user_input(crs).to_wkt(),
        "transform": list(transform)[:6],
        **provenance,
    }
    return InputCube(
        path=path,
        height=height,
        width=width,
        bands=bands,
        chunk=int(chunks[-1]),
        crs=CRS.from_user_input(crs),
        transform=transform,
        y=np.asarray(ds["y"].values),
        x=np.asarray(ds["x"].values),
        identity=identity,
    )


def _without_output_fields(job_json: Any) -> Any:
    try:
        doc = json.loads(job_json)
    except (TypeError, json.JSONDecodeError):
        return job_json
    return {k: v for k, v in doc.items() if k not in _NOT_INFERENCE} if isinstance(doc, dict) else doc


def sample_pixels(
    cube: InputCube, *, windows: int, max_pixels: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic sample of valid pixels of the cube, to fit a model once per job.

    ``windows`` windows of :data:`FIT_WINDOW` pixels, spread evenly over a fixed grid of the cube
    (so the sample does not depend on the block size), are read; their valid pixels (every band
    finite on both dates) are subsampled (seeded) to ``max_pixels`` in total.

    Returns
    -------
    tuple of torch.Tensor
        ``before, after`` as ``(1, bands, 1, N)`` float32.

    Raises
    ------
    InferenceError
        When the sampled windows hold no valid pixel.
    """
    grid = BlockGrid(cube.height, cube.width, FIT_WINDOW)
    cells = list(grid)
    picks = sorted({int(round(i)) for i in np.linspace(0, len(cells) - 1, min(windows, len(cells)))})
    per_window = max(1, max_pixels // len(picks))
    rng = np.random.default_rng(seed)
    parts: list[F32] = []
    for index in picks:
        data = read_window(str(cube.path), grid.window(*cells[index]))
        flat = data.reshape(2, data.shape[1], -1)
        valid = np.isfinite(flat).all(axis=(0, 1))
        pixels = flat[:, :, valid]
        if pixels.shape[2] > per_window:
            keep = np.sort(rng.choice(pixels.shape[2], per_window, replace=False))
            pixels = pixels[:, :, keep]
        parts.append(pixels)
    sample = np.concatenate(parts, axis=2)
    if sample.shape[2] < 2:
        raise InferenceError(
            f"the input cube {cube.path} has no valid pixels where it was sampled (every band finite "
            "on both dates); check the cube's clear fraction, loosen the cloud limit or widen the windows"
        )
    tensor = torch.from_numpy(sample)
    return tensor[0][None, :, None, :], tensor[1][None, :, None, :]


def fit_for_cube(runtime: ModelRuntime, cube: InputCube) -> ModelRuntime:
    """``runtime`` with its change model fitted on a sample of ``cube`` (:func:`sample_pixels`) when
    it needs a fit once per job (the CVA baseline); otherwise ``runtime`` unchanged."""
    spec = runtime.spec
    if not change_model_info(spec, runtime.cube_bands).needs_fit:
        return runtime
    before, after = sample_pixels(cube, windows=spec.fit_blocks, max_pixels=spec.fit_pixels, seed=spec.seed)
    return fit_change_model(runtime, before, after)


# --------------------------------------------------------------------------- one window


def run_tiles(
    data: F32,
    halo: Window,
    tiles: Sequence[Tile],
    *,
    models: LoadedModels,
    prompts: PromptSet,
    batch_size: int,
) -> tuple[list[F32], float]:
    """Run the models on ``tiles``, cut from ``data`` (which covers ``halo``), in batches.

    Returns
    -------
    tuple
        One ``(1 + 2 * classes, rows, cols)`` float32 probability array per tile (change, classes
        before, classes after), and the seconds spent in model calls.
    """
    k = prompts.num_classes
    n_bands = data.shape[1]
    change_bands = _band_selector(models.change_bands, n_bands)
    seg_bands = _band_selector(models.segmenter_bands, n_bands)
    outputs: list[F32] = []
    model_seconds = 0.0
    for batch in batched(tiles, batch_size):
        crops = [t.window.relative_to(halo) for t in batch]
        # One (2 * n, bands, rows, cols) stack: the n tiles before, then the same n tiles after.
        pair = torch.from_numpy(np.stack([data[(epoch, slice(None), *c)] for epoch in (0, 1) for c in crops]))
        pair = pair.to(models.device)
        n = len(batch)
        start = time.perf_counter()
        with torch.inference_mode():
            for_change = pair[:, change_bands]
            change = predict_fixed_batches(
                models.change,
                for_change[:n],
                for_change[n:],
                1 if models.device.type == "cpu" else batch_size,
            )
            classes = models.segmenter.segment(pair[:, seg_bands], prompts)
            out = torch.cat([change, classes[:n], classes[n:]], dim=1).to(torch.float32).cpu().numpy()
        model_seconds += time.perf_counter() - start
        if out.shape[1] != 1 + 2 * k:
            raise InferenceError(
                f"the models returned {out.shape[1]} channels per tile, expected {1 + 2 * k} "
                f"(1 change + {k} classes per date); check the segmenter against the prompts"
            )
        outputs.extend(out[i] for i in range(n))
    return outputs, model_seconds


def predict_fixed_batches(
    model: ChangeModel, before: torch.Tensor, after: torch.Tensor, size: int
) -> torch.Tensor:
    """A change model's probabilities for ``n`` tiles, computed ``size`` tiles per call.

    The last call is padded to ``size`` tiles by repeating its last tile. A model's kernels may
    depend on the batch size (oneDNN and cuDNN choose other convolution kernels for other sizes:
    the conv-backbone CACH differs by up to 1e-5 between a tile alone and in a batch of eight),
    so a tile's probability must not depend on how many tiles its block happened to batch with it;
    with one batch size, it does not (the other tiles of a batch never enter its computation). On
    a CPU, one tile per call costs no more than larger batches; a GPU keeps its batches.

    Parameters
    ----------
    model
        The change model.
    before, after
        ``(n, bands, rows, cols)`` raw tiles.
    size
        Tiles per model call.

    Returns
    -------
    torch.Tensor
        ``(n, 1, rows, cols)``.
    """
    parts = []
    for start in range(0, before.shape[0], size):
        b, a = before[start : start + size], after[start : start + size]
        count = b.shape[0]
        if count < size:
            b = torch.cat([b, b[-1:].expand(size - count, *b.shape[1:])])
            a = torch.cat([a, a[-1:].expand(size - count, *a.shape[1:])])
        parts.append(model.predict(b, a)[:count])
    return torch.cat(parts)


def blend_tiles(
    target: Window,
    tiles: Sequence[Tile],
    outputs: Sequence[F32],
    *,
    blender: Blender,
) -> F32:
    """Blend the tiles' probabilities over ``target`` (tiles in grid order, each covering part of it)."""
    accumulator = BlendAccumulator(target, outputs[0].shape[0], blender, tiles)
    for tile, probabilities in zip(tiles, outputs, strict=True):
        accumulator.add(tile, probabilities)
    return accumulator.result()


def valid_pixels(data: F32, inside: tuple[slice, slice], models: LoadedModels) -> NDArray[np.bool_]:
    """Pixels of ``data[..., rows, cols]`` where every band a model reads is finite on both dates."""
    used = sorted(set(models.change_bands) | set(models.segmenter_bands))
    rows, cols = inside
    return np.asarray(np.isfinite(data[:, used, rows, cols]).all(axis=(0, 1)), dtype=bool)


def derive_layers(blended: F32, valid: NDArray[np.bool_], prompts: PromptSet) -> BlockLayers:
    """The output layers from blended probabilities: fusion, then nodata where ``valid`` is False."""
    k = prompts.num_classes
    fused = fuse(
        torch.from_numpy(blended[None, :1]),
        torch.from_numpy(blended[None, 1 : 1 + k]),
        torch.from_numpy(blended[None, 1 + k :]),
        prompts,
    )
    transition = fused.transition[0, 0].numpy()
    transition = np.where(transition < 0, TRANSITION_NO_CHANGE, transition)
    return BlockLayers(
        change_probability=np.where(valid, blended[0], np.float32("nan")).astype(np.float32),
        change=_masked(fused.change[0, 0].numpy(), valid, UINT8_NODATA, np.uint8),
        class_before=_masked(fused.class_before[0, 0].numpy(), valid, UINT8_NODATA, np.uint8),
        class_after=_masked(fused.class_after[0, 0].numpy(), valid, UINT8_NODATA, np.uint8),
        transition=_masked(transition, valid, TRANSITION_NODATA, np.uint16),
        target_change=_masked(fused.per_target[0].numpy(), valid[None], UINT8_NODATA, np.uint8),
    )


def compute_window(
    data: F32,
    halo: Window,
    target: Window,
    *,
    models: LoadedModels,
    prompts: PromptSet,
    grid: TileGrid,
    blender: Blender,
    batch_size: int,
) -> tuple[BlockLayers, float, int]:
    """Compute the output layers of ``target`` from the input ``data`` that covers ``halo``, in one go.

    Parameters
    ----------
    data
        ``(2, bands, rows, cols)`` reflectance of ``halo`` (cube band order, NaN nodata).
    halo
        The window ``data`` holds; must contain every grid tile intersecting ``target``.
    target
        The window to produce.
    models, prompts
        Built models and the classes.
    grid, blender, batch_size
        Tile grid, blending windows and tiles per model call.

    Returns
    -------
    tuple
        The layers, seconds spent in model calls, and the number of tiles computed.
    """
    tiles = grid.tiles_intersecting(target)
    outputs, model_seconds = run_tiles(
        data, halo, tiles, models=models, prompts=prompts, batch_size=batch_size
    )
    blended = blend_tiles(target, tiles, outputs, blender=blender)
    layers = derive_layers(blended, valid_pixels(data, target.relative_to(halo), models), prompts)
    return layers, model_seconds, len(tiles)


def _band_selector(indices: tuple[int, ...], n_bands: int) -> slice | list[int]:
    """Index of the bands a model reads: a view (no copy) when it reads all bands in cube order."""
    return slice(None) if indices == tuple(range(n_bands)) else list(indices)


def _masked(values: NDArray[Any], valid: NDArray[np.bool_], nodata: int, dtype: type[np.generic]) -> Any:
    return np.where(valid, values, nodata).astype(dtype)


def infer_array(
    reflectance: F32,
    *,
    models: LoadedModels,
    prompts: PromptSet,
    grid: TileGrid,
    blender: Blender,
    batch_size: int = 8,
) -> BlockLayers:
    """Run the whole tiled inference on an in-memory ``(2, bands, rows, cols)`` array in one go.

    The single-process reference of the distributed engine (and a convenience for small scenes and
    notebooks): the whole array is one block.
    """
    height, width = reflectance.shape[2], reflectance.shape[3]
    if (grid.height, grid.width) != (height, width):
        raise InferenceError(
            f"the tile grid is for {grid.height} x {grid.width} pixels but the array has "
            f"{height} x {width}; build the grid for the array"
        )
    whole = Window(0, height, 0, width)
    layers, _, _ = compute_window(
        reflectance,
        whole,
        whole,
        models=models,
        prompts=prompts,
        grid=grid,
        blender=blender,
        batch_size=batch_size,
    )
    return layers


# --------------------------------------------------------------------------- the tasks


@dataclass(frozen=True)
class BlockContext:
    """What every task of a run shares (small and picklable).

    Attributes
    ----------
    cube_path, out_path
        Input and output Zarr stores.
    grid, blocks
        Tile grid and block grid.
    blender
        Blending windows.
    batch_size
        Tiles per model call.
    runtime
        How to build the models.
    prompts
        The classes.
    run
        Identifier of the run, unique: the key of its cached input chunks (:mod:`pipeline.input_reader`).
    """

    cube_path: str
    out_path: str
    grid: TileGrid
    blocks: BlockGrid
    blender: Blender
    batch_size: int
    runtime: ModelRuntime
    prompts: PromptSet
    run: str


@dataclass(frozen=True)
class TilePieces:
    """The parts of a tile group's outputs that one block blends (kept in worker memory until then).

    Attributes
    ----------
    tiles
        Grid indices ``(row, col)`` of the tiles that reach into the block.
    parts
        The window of each tile inside the block.
    probabilities
        ``(1 + 2 * classes, rows, cols)`` float32 probabilities of each part.
    valid
        Where each part's input is valid (every band a model reads finite on both dates).
    computed
        Tiles the group computed.
    model_seconds
        The group's time in model calls.
    seconds
        The group task's duration (building models the first time, reading, model calls, cutting).
    """

    tiles: tuple[tuple[int, int], ...]
    parts: tuple[Window, ...]
    probabilities: tuple[F32, ...]
    valid: tuple[NDArray[np.bool_], ...]
    computed: int
    model_seconds: float
    seconds: float


@dataclass(frozen=True)
class BlockReport:
    """What one block task did, with the tile groups it reports for.

    Attributes
    ----------
    block
        ``(row, col)`` of the block.
    tiles
        Tiles computed by the groups it reports.
    model_seconds
        Time in model calls of the groups it reports.
    seconds
        Time of the block task plus the group tasks it reports.
    pid
        Worker process id.
    """

    block: tuple[int, int]
    tiles: int
    model_seconds: float
    seconds: float
    pid: int


def compute_tile_group(
    context: BlockContext,
    tiles: tuple[tuple[int, int], ...],
    consumers: tuple[tuple[int, int], ...],
) -> dict[tuple[int, int], TilePieces]:
    """Run the models on some grid tiles (a group of :mod:`pipeline.tile_plan`), reading just their union.

    The outputs are cut into one :class:`TilePieces` per consumer block (copies), so that each part
    is released as soon as its block is written.
    """
    start = time.perf_counter()
    grid_tiles = [context.grid.tile(row, col) for row, col in tiles]
    halo = covering(grid_tiles)
    start_building(context.runtime)  # a worker's first read overlaps the model build
    data = read_window(context.cube_path, halo, run=context.run)
    models = get_models(context.runtime)
    outputs, model_seconds = run_tiles(
        data, halo, grid_tiles, models=models, prompts=context.prompts, batch_size=context.batch_size
    )
    valid = valid_pixels(data, (slice(None), slice(None)), models)
    del data
    cut: dict[tuple[int, int], list[tuple[tuple[int, int], Window, F32, NDArray[np.bool_]]]] = {
        block: [] for block in consumers
    }
    for tile, output in zip(grid_tiles, outputs, strict=True):
        for block in consumers:
            part = tile.window.intersection(context.blocks.window(*block))
            if part is not None:
                values = np.ascontiguousarray(output[(slice(None), *part.relative_to(tile.window))])
                cut[block].append(((tile.row, tile.col), part, values, valid[part.relative_to(halo)].copy()))
    seconds = time.perf_counter() - start
    return {
        block: TilePieces(
            tuple(p[0] for p in parts),
            tuple(p[1] for p in parts),
            tuple(p[2] for p in parts),
            tuple(p[3] for p in parts),
            len(tiles),
            model_seconds,
            seconds,
        )
        for block, parts in cut.items()
    }


def _gate(*_: object) -> None:
    """A task with no work, run once its dependencies are: blocks depending on it wait for them too."""


def pieces_for(pieces: Mapping[tuple[int, int], TilePieces], block: tuple[int, int]) -> TilePieces:
    """The pieces of one block, taken out of a group's result (a task of its own, so each is freed apart)."""
    return pieces[block]


def process_block(
    context: BlockContext, row: int, col: int, reported: int, *groups: TilePieces, after: object = None
) -> BlockReport:
    """Blend one block from its tile pieces, derive its layers and write them (then its marker).

    ``reported`` is the number of leading ``groups`` whose model time this block reports; ``after``
    holds only dependencies (a :func:`_gate`, the task creating the cube), which hold the block
    back until they have run.
    """
    start = time.perf_counter()
    window = context.blocks.window(row, col)
    by_index = {
        index: (part, values, valid)
        for group in groups
        for index, part, values, valid in zip(
            group.tiles, group.parts, group.probabilities, group.valid, strict=True
        )
    }
    tiles = context.grid.tiles_intersecting(window)
    accumulator = BlendAccumulator(window, 1 + 2 * context.prompts.num_classes, context.blender, tiles)
    valid_block = np.zeros((window.height, window.width), dtype=bool)
    # The tiles cover the block, and each part carries the validity of the input it was computed from.
    for tile in tiles:
        part, values, valid = by_index[(tile.row, tile.col)]
        accumulator.add_part(tile, part, values)
        valid_block[part.relative_to(window)] = valid
    blended = accumulator.result()
    layers = derive_layers(blended, valid_block, context.prompts)
    del blended, by_index
    write_block(context.out_path, window, (row, col), layers)
    own = groups[:reported]
    return BlockReport(
        (row, col),
        sum(g.computed for g in own),
        sum(g.model_seconds for g in own),
        time.perf_counter() - start + sum(g.seconds for g in own),
        os.getpid(),
    )


# --------------------------------------------------------------------------- the entry point


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


def _from_job(value: Any, job: JobSpec, field: str, default: Any) -> Any:
    if value is not None:
        return value
    from_job = getattr(job, field, None)
    return from_job if from_job is not None else default


def _fingerprint(doc: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


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
    models = _from_job(models, job, "models", ModelSpec())
    tiling = _from_job(tiling, job, "tiling", TilingSpec())
    cluster = _from_job(cluster, job, "cluster", None)
    prompts = _from_job(prompts, job, "prompts", None)
    if prompts is None:
        raise JobSpecError(
            "no classes to look for: pass prompts=PromptSpec(classes='building;water') or set the job's prompts"
        )
    prompt_set = prompts.prompt_set() if isinstance(prompts, PromptSpec) else prompts
    out_path = Location.parse(out_path)
    out_path.check_access()
    cube = describe_input(cube_path)

    info = change_model_info(models, cube.bands)
    tile_size = tiling.resolve_tile_size(info.tile_size)
    block_size = tiling.block_size or cube.chunk
    grid = TileGrid(cube.height, cube.width, tile_size, tiling.overlap)
    blocks = BlockGrid(cube.height, cube.width, block_size)
    blender = RampBlender(tiling.overlap, tiling.window)
    identities = model_identities(models, cube.bands)
    prompt_doc = PromptSpec.from_prompt_set(prompt_set).model_dump(mode="json")
    inference = {
        "format": FORMAT,
        "job": job.model_dump(mode="json", exclude=_NOT_INFERENCE),
        "input_cube": cube.identity,
        "models": [{"role": m.role, "name": m.name, "sha256": m.sha256} for m in identities],
        "model_options": models.model_dump(mode="json", exclude={"checkpoint", "backbone_weights", "device"}),
        "tiling": {
            "tile_size": tile_size,
            "overlap": tiling.overlap,
            "window": tiling.window,
            "block_size": block_size,
        },
        "prompts": prompt_doc,
        "zarr_format": job.zarr_format,
    }
    fingerprint = _fingerprint(inference)

    with hold_output(out_path.parent, job=f"{out_path.name} of job {fingerprint[:12]}"):
        state = inspect_change_cube(out_path)
        if state.creating and (not state.is_change_cube or state.fingerprint == fingerprint):
            log.warning("%s was being created when an earlier run stopped; creating it again", out_path)
            remove_change_cube(out_path)
            state = CubeState(exists=False)
        if force and state.exists:
            log.info("force: replacing %s", out_path)
            remove_change_cube(out_path)
            state = CubeState(exists=False)
        check_reusable(out_path, state, fingerprint, inference)
        all_blocks = tuple(blocks)
        if state.complete:
            log.info(
                "%s is already complete for this job; nothing to do (--overwrite recomputes it)", out_path
            )
            return InferenceResult(
                out_path, fingerprint, len(blocks), (), all_blocks, time.perf_counter() - started, 0.0, 0.0, 0
            )

        runtime = ModelRuntime(models, cube.bands)
        recorded_threads: int | None = None
        attrs: dict[str, Any] = {}
        if state.exists and state.attrs is not None:
            fit = json.loads(state.attrs.get("model_fit", "null"))
            runtime = replace(runtime, fit=None if fit is None else (float(fit[0]), float(fit[1])))
            recorded_threads = json.loads(state.attrs.get("torch_threads", "null"))
            done = read_done(out_path, blocks)
            log.info("resuming %s: %d of %d blocks already done", out_path, int(done.sum()), len(blocks))
        else:
            runtime = fit_for_cube(runtime, cube)
            attrs = {
                "job": job.model_dump_json(),
                "inference": json.dumps(inference, sort_keys=True, default=str),
                "fingerprint": fingerprint,
                "models": json.dumps([m.as_dict() for m in identities]),
                "model_fit": json.dumps(runtime.fit),
                "tiling": json.dumps(inference["tiling"]),
                "prompts": json.dumps(prompt_doc),
                "software_version": __version__,
            }
            done = np.zeros(blocks.shape, dtype=bool)
        skipped = tuple(b for b in all_blocks if done[b])
        pending = [b for b in all_blocks if not done[b]]
        plan = TilePlan(grid, blocks, strip_blocks(block_size, tiling.strip_size))
        planned = list(plan.plan(pending))
        log.info(
            "inference: %d blocks of %d px (%d to compute), %d tiles of %d px overlap %d (%d to compute), "
            "strips of %d blocks, models %s",
            len(blocks),
            block_size,
            len(pending),
            len(grid),
            tile_size,
            tiling.overlap,
            plan.count_tiles(planned),
            plan.strip_blocks,
            ", ".join(m.name for m in identities),
        )

        reports: list[BlockReport] = []
        if planned:
            wants_gpu = models.device == "cuda"
            with _closed_quietly_on_error(connect(cluster, gpu=wants_gpu)) as session:
                # Torch's intra-op threads change a model's float sums in the last bits: a resume
                # computes with the threads the cube was started with, whatever the cluster now.
                threads = recorded_threads if recorded_threads is not None else session.torch_threads
                create: Callable[[], None] | None = None
                if not state.exists:
                    create = partial(
                        create_change_cube,
                        out_path,
                        ChangeCubeLayout(blocks, prompt_set.labels, prompt_set.targets, job.zarr_format),
                        y=cube.y,
                        x=cube.x,
                        crs=cube.crs,
                        transform=cube.transform,
                        attrs={**attrs, "torch_threads": json.dumps(threads)},
                    )
                context = BlockContext(
                    cube_path=str(cube.path),
                    out_path=str(out_path),
                    grid=grid,
                    blocks=blocks,
                    blender=blender,
                    batch_size=tiling.batch_size,
                    runtime=replace(runtime, torch_threads=threads),
                    prompts=prompt_set,
                    run=uuid.uuid4().hex,
                )
                try:
                    reports = _run_blocks(
                        session.client,
                        context,
                        plan,
                        planned,
                        session.model_task_resources(),
                        progress,
                        create,
                    )
                except (OSError, TimeoutError) as exc:
                    raise ClusterError(
                        f"lost the Dask cluster while computing {out_path} ({type(exc).__name__}: {exc}); "
                        "blocks finished so far are kept: check that the scheduler and workers run "
                        "(their logs say why they stopped), then run the same job again to resume"
                    ) from exc
                finally:
                    _forget_run(session.client, context.run)
        else:
            log.info("every block of %s is done; only marking it complete", out_path)
        finalise_change_cube(out_path)
    wall = time.perf_counter() - started
    result = InferenceResult(
        path=out_path,
        fingerprint=fingerprint,
        blocks=len(blocks),
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


def _forget_run(client: Client, run: str) -> None:
    """Drop the run's cached input chunks on every worker; a cluster already gone has nothing to drop."""
    try:
        client.run(forget_run, run)
    except Exception as exc:  # the error that stopped the run is the one to report, not this one
        log.debug("could not clear the input caches of run %s: %s", run[:8], exc)


def _scheduler_address(client: Client) -> str:
    """The scheduler's address as the client last knew it (no request: it may be gone)."""
    try:
        return str(client.scheduler_info().get("address", "?"))
    except Exception:
        return "?"


def _completed(client: Client, futures: Sequence[Future]) -> Iterator[Future]:
    """Yield ``futures`` as they finish, or raise :class:`ClusterError` once the cluster has had no
    worker for :data:`WORKERLESS_SECONDS` (Dask would wait for new workers for ever)."""
    pending = as_completed(list(futures))
    workerless_since: float | None = None
    checked = 0.0
    while not pending.is_empty():
        batch = pending.next_batch(block=False)
        if batch:
            workerless_since = None
            yield from batch
            continue
        time.sleep(0.05)
        now = time.monotonic()
        if now - checked < 1.0:
            continue
        checked = now
        if client.nthreads():
            workerless_since = None
        elif workerless_since is None:
            workerless_since = now
        elif now - workerless_since > WORKERLESS_SECONDS:
            raise ClusterError(
                f"the Dask cluster at {_scheduler_address(client)} has had no worker for "
                f"{WORKERLESS_SECONDS:.0f} s: all its workers were lost (their logs say why: memory "
                "limit, killed, machine gone); blocks finished so far are kept: start workers and run "
                "the same job again to resume"
            )


def _run_blocks(
    client: Client,
    context: BlockContext,
    plan: TilePlan,
    planned_blocks: Sequence[PlannedBlock],
    model_resources: dict[str, float] | None,
    progress: bool,
    create: Callable[[], None] | None = None,
) -> list[BlockReport]:
    """Submit the tile groups, ``create`` (which creates the output cube; None when it exists) and
    the blocks, and wait for the blocks."""
    run = context.run[:8]
    consumers: dict[GroupKey, list[tuple[int, int]]] = {}
    for planned in planned_blocks:
        for key in planned.groups:
            consumers.setdefault(key, []).append(planned.block)
    # Explicit priorities (earlier = first) make workers follow the plan's task order: a group's
    # pieces are cut right after it, and a block runs as soon as its pieces are there. Only the
    # tile groups call the models, so only they take a GPU: blocks blend and write beside them.
    # The blocks after the last group wait for a gate task that depends on the ``threads`` groups
    # before the last ``threads``: a block ready as soon as its pieces are would otherwise take a
    # thread before those last groups, which Dask hands to a worker only as its threads free up.
    # (Depending on every earlier group would hold all their results until the end.)
    threads = sum(w.get("nthreads", 1) for w in client.scheduler_info(n_workers=-1)["workers"].values())
    # Two blocks per thread that would wait: a block's blend and write take a fraction of a group's
    # model time, and each deferred block holds its pieces to the end.
    order = plan.task_order(planned_blocks, defer=2 * (threads - 1))
    last_group = max(i for i, item in enumerate(order) if isinstance(item, GroupKey))
    group_priority: dict[GroupKey, int] = {}
    block_priority: dict[tuple[int, int], int] = {}
    for position, item in enumerate(order):
        if isinstance(item, GroupKey):
            group_priority[item] = -2 * position
        else:
            block_priority[item.block] = -2 * position
    gated = {item.block for item in order[last_group + 1 :] if isinstance(item, PlannedBlock)}
    groups: dict[GroupKey, Future] = {
        key: client.submit(
            compute_tile_group,
            context,
            tuple((t.row, t.col) for t in plan.tiles_of(key)),
            tuple(consumers[key]),
            key=f"infer-tiles-{key.strip}-{key.row}-{key.col}-{key.tile_row}-{run}",
            pure=False,
            resources=model_resources,
            priority=key_priority,
        )
        for key, key_priority in group_priority.items()
    }
    gate = client.submit(
        _gate,
        *[groups[key] for key in list(group_priority)[-2 * threads : -threads]],
        key=f"infer-gate-{run}",
        pure=False,
        priority=-2 * last_group - 1,
    )
    # The cube is created by a task of its own, given to the first thread free after the groups
    # that come before the first block in the plan's order. Created on the client at the start,
    # it competed with the model build and the first reads for the cores.
    first_block = max(block_priority.values())
    created = (
        None
        if create is None
        else client.submit(create, key=f"infer-create-{run}", pure=False, priority=first_block + 1)
    )
    blocks: dict[Future, tuple[int, int]] = {}
    try:
        for planned in planned_blocks:
            row, col = planned.block
            ordered = planned.reports + tuple(g for g in planned.groups if g not in planned.reports)
            pieces = [
                client.submit(
                    pieces_for,
                    groups[key],
                    planned.block,
                    key=f"infer-pick-{key.strip}-{key.row}-{key.col}-{key.tile_row}-{row}-{col}-{run}",
                    pure=False,
                    priority=group_priority[key],
                )
                for key in ordered
            ]
            future = client.submit(
                process_block,
                context,
                row,
                col,
                len(planned.reports),
                *pieces,
                after=(gate if planned.block in gated else None, created),
                key=f"infer-block-{row}-{col}-{run}",
                pure=False,
                priority=block_priority[planned.block],
            )
            blocks[future] = planned.block
    except BaseException:
        client.cancel([*groups.values(), gate, *blocks, *([created] if created else [])])
        raise
    # The client keeps no reference to groups and pieces: each is released once its consumers ran.
    groups.clear()
    del gate
    reports: list[BlockReport] = []
    with make_progress(enabled=progress) as bar:
        task = bar.add_task("inference", total=len(blocks))
        try:
            for future in _completed(client, list(blocks)):
                if future.status != "finished":
                    block = blocks[future]
                    if created is not None and created.status == "error":
                        failure = created.exception()
                        if isinstance(failure, Seg2ChangeError):
                            raise failure
                        raise InferenceError(
                            f"cannot create the change cube {context.out_path} ({type(failure).__name__}: "
                            f"{failure}); check that the workers can write there"
                        ) from failure
                    exc = None if future.status == "cancelled" else future.exception()
                    if exc is None and client.status != "running":
                        # Cancelled by no one here: the client lost its scheduler, and with it every task.
                        raise ClusterError(
                            f"lost the Dask scheduler {_scheduler_address(client)} while block {block} "
                            f"was pending (the client is {client.status}): the scheduler stopped or "
                            "cannot be reached; blocks finished so far are kept: start the scheduler "
                            "(or use a local cluster) and run the same job again to resume"
                        )
                    if exc is None:
                        raise ClusterError(
                            f"the Dask scheduler {_scheduler_address(client)} cancelled the task of block "
                            f"{block} (seen after workers were lost); blocks finished so far are kept: "
                            "check the workers' logs and run the same job again to resume"
                        )
                    if isinstance(exc, Seg2ChangeError):
                        log.error("block %s failed: %s", block, exc)
                        raise exc
                    raise InferenceError(
                        f"block {block} failed ({type(exc).__name__}: {exc}); blocks finished so far "
                        "are kept: fix the cause and run the same job again to resume"
                    ) from exc
                reports.append(future.result())
                bar.advance(task)
        finally:
            client.cancel([f for f in blocks if not f.done()])
    return reports
