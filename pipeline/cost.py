"""What a job will cost, from its spec and grid alone (no scene is read), and the refusal of a too large one.

:func:`estimate_job` counts the grid's pixels, the input cube's blocks, the model tiles and the
input cube's bytes, and estimates the memory of a worker and of the client. :func:`check_job_size`
refuses a job over ``limits.max_pixels`` unless ``limits.allow_large`` (``--allow-large``) says to
go on; ``run`` and ``prepare`` call it before discovery, so a continent-sized AOI is refused in
a second instead of growing the client until the machine runs out of memory.

Why the client grows with the area: the lazy input cube that :func:`pipeline.cube.assemble_cube`
builds over the whole AOI (stackstac's graph of reads over every block, and xarray's template of
every chunk) holds about :data:`CLIENT_BYTES_PER_BLOCK` per block on the client before anything is
written (measured by ``bench/job_estimate.py``), and inference plans every block up front. The
estimate says so; the refusal keeps such a job from starting at all.

The worker's share includes the models' activations: per thread, one change-model call on one tile
pair and the segmenter over a batch of tiles (:data:`MODEL_CALL_BYTES_PER_PIXEL`,
:data:`BATCH_BYTES_PER_TILE_PIXEL`), and the tile outputs a strip holds for the next block row
(:data:`HELD_TILE_ROWS`): beyond a strip's width, it depends on the block, tile and strip sizes
only. The client's share includes publishing (:data:`PUBLISH_BYTES`), which runs on the client
after inference and stops growing at :data:`PUBLISH_AREA_MAX_PIXELS`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from pipeline.engine_spec import DEFAULT_TILE_SIZE
from pipeline.errors import JobTooLargeError
from pipeline.input_reader import DEFAULT_CACHE_BYTES
from pipeline.spec import JobSpec
from pipeline.tile_plan import DEFAULT_STRIP_PIXELS
from pipeline.tiling import axis_starts

__all__ = [
    "BATCH_BYTES_PER_TILE_PIXEL",
    "CLIENT_BASE_BYTES",
    "CLIENT_BYTES_PER_BLOCK",
    "HELD_TILE_ROWS",
    "MODEL_CALL_BYTES_PER_PIXEL",
    "PUBLISH_BYTES",
    "PUBLISH_AREA_MAX_PIXELS",
    "PUBLISH_BYTES_PER_PIXEL",
    "JobEstimate",
    "check_job_size",
    "estimate_job",
]

#: Client memory per input-cube block while the lazy cube and the block plan are held. The lazy cube
#: alone took 21-25 kB per block of 1024 px (two items per window, 256 to 3,968 blocks) in
#: bench/job_estimate.py; the rest is room for inference's block plan, which is not measured there.
CLIENT_BYTES_PER_BLOCK = 40_000
#: The client process before any job (Python, NumPy, torch, dask, rasterio imported): about 400 MB.
CLIENT_BASE_BYTES = 400 * 10**6
#: Peak memory of one change-model call on one tile pair, per pixel of the tile, beyond its input.
#: Fitted once, for the demo models (``cach-conv-demo`` + the spectral segmenter, 6 bands): the peak
#: RSS of :func:`pipeline.tile_kernel.run_tiles` on a 504 px tile is about
#: ``tile**2 * (MODEL_CALL_BYTES_PER_PIXEL + n * (BATCH_BYTES_PER_TILE_PIXEL + outputs))`` for
#: ``n`` = 1 and 8 tiles per batch (227 and 970 MB); one 1008 px tile took 844 MB, 7 % under the
#: formula. A backbone with larger feature maps (a ViT) takes more: measure it the same way first.
MODEL_CALL_BYTES_PER_PIXEL = 480
#: The segmenter's and the batch's working memory per tile of a batch, per pixel of the tile,
#: besides the tile's outputs (which the group's outputs count). Fitted with the figure above.
BATCH_BYTES_PER_TILE_PIXEL = 350
#: Publishing (COGs, STAC, statistics from the change cube) on the client, the part that does not
#: depend on the area. ``bench/full_tile.py --publish-only`` (publishing alone, demo's 512 px
#: blocks) peaked 660 MB over the client's base at 2,048 px and 841 MB at 4,096 px: this constant
#: and :data:`PUBLISH_BYTES_PER_PIXEL` are that line.
PUBLISH_BYTES = 600 * 10**6
#: Publishing's memory per pixel of the grid, up to :data:`PUBLISH_AREA_MAX_PIXELS`.
PUBLISH_BYTES_PER_PIXEL = 14
#: The grid pixels beyond which publishing's memory stops growing: alone, it peaked 1,238 MB at
#: 10,980 px (``--publish-only``, 1,102 MB at its start), in a whole run 1,211 MB at 2,048 px and
#: 1,380 MB at 4,096 px, the models loaded.
PUBLISH_AREA_MAX_PIXELS = 4096 * 4096
#: Block rows of tile outputs a strip holds at a worker's peak, relative to one tile row across the
#: strip: the groups reaching into the next block row and those of the row in progress (the demo's
#: in-process worker held 94 MB at 2,048 px and 276 MB at 4,096 px, where one row is 70 and 140 MB).
HELD_TILE_ROWS = 2

_EPOCHS = 2
_FLOAT = 4


@dataclass(frozen=True)
class JobEstimate:
    """The size of a job on its grid, before any scene is read.

    Attributes
    ----------
    width, height
        Grid size in pixels (the AOI's bounds at the grid's resolution).
    pixels
        ``width * height``.
    block_size, blocks
        Side of the input cube's blocks and their number.
    tile_size, overlap, tiles
        The model tile, its overlap and the number of tiles of the grid.
    input_bytes
        Bytes of the input cube (float32 reflectance of both dates and every band, and the clear
        counts), before compression.
    worker_bytes
        Memory of one worker, besides the models' weights: its chunk cache, the tile inputs, model
        activations (``activation_bytes``) and block outputs of its threads, and the tile outputs
        a strip keeps for the next block row.
    activation_bytes
        The part of ``worker_bytes`` that the model calls of its threads take.
    client_bytes
        Memory of the client: the input cube assembled and the blocks planned, then publishing
        (``publish_bytes``).
    publish_bytes
        The part of ``client_bytes`` that publishing takes; ``publish_area_bytes`` of it grows
        with the grid's pixels up to :data:`PUBLISH_AREA_MAX_PIXELS`.
    max_pixels
        The job's limit.
    """

    width: int
    height: int
    pixels: int
    block_size: int
    blocks: int
    tile_size: int
    overlap: int
    tiles: int
    input_bytes: int
    worker_bytes: int
    activation_bytes: int
    client_bytes: int
    publish_bytes: int
    publish_area_bytes: int
    max_pixels: int

    @property
    def over_limit(self) -> bool:
        """Whether the job exceeds its ``max_pixels``."""
        return self.pixels > self.max_pixels

    def in_process_bytes(self, workers: int) -> int:
        """Peak of one process holding the client and ``workers`` workers (a cluster of threads).

        Publishing starts after inference, which hands the memory its blocks freed back to the
        operating system (:func:`pipeline.memory_release.release_freed_memory`): the process holds
        the larger of the two on top of the client's planning.
        """
        planning = self.client_bytes - self.publish_bytes
        return planning + max(self.publish_bytes, workers * self.worker_bytes)

    def describe(self) -> str:
        """One line for people: the grid, blocks, tiles, bytes and memory."""
        return (
            f"{self.width:,} x {self.height:,} px = {self.pixels:.3g} px (limit {self.max_pixels:.3g}), "
            f"{self.blocks:,} blocks of {self.block_size} px, {self.tiles:,} tiles of {self.tile_size} px "
            f"(overlap {self.overlap}), input cube {_bytes(self.input_bytes)}, about "
            f"{_bytes(self.worker_bytes)} per worker besides the model weights, about "
            f"{_bytes(self.client_bytes)} on the client"
        )


def _bytes(n: int) -> str:
    for unit, size in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n / 10**3:.0f} kB"


def estimate_job(job: JobSpec, *, tile_size: int | None = None, threads: int | None = None) -> JobEstimate:
    """Estimate a job's size from its spec and grid (no catalog search, no scene read).

    Parameters
    ----------
    job
        The job.
    tile_size
        The change model's recommended tile, when known; the job's ``tiling.tile_size`` wins, and
        512 px is used when neither is given.
    threads
        Threads per worker; default: the job's local cluster layout on this machine.

    Returns
    -------
    JobEstimate
    """
    xmin, ymin, xmax, ymax = job.target_bounds()
    res = job.grid.resolution
    width = max(1, round((xmax - xmin) / res))
    height = max(1, round((ymax - ymin) / res))
    block = job.tiling.block_size or job.block_size
    blocks = math.ceil(height / block) * math.ceil(width / block)
    tile = min(job.tiling.tile_size or tile_size or DEFAULT_TILE_SIZE, height, width)
    overlap = min(job.tiling.overlap, tile // 2)
    stride = tile - overlap
    tiles = len(axis_starts(height, tile, stride)) * len(axis_starts(width, tile, stride))
    bands = len(job.bands)
    input_bytes = width * height * _EPOCHS * (bands * _FLOAT + 1)
    classes = job.prompts.prompt_set().num_classes if job.prompts else 8
    # Per pixel of a block's outputs: change probability, and the class probabilities of both dates.
    out_channels = 1 + _EPOCHS * classes
    tiles_across = math.ceil(block / stride) + 1
    group_input = tiles_across * tile * tile * _EPOCHS * bands * _FLOAT
    group_output = tiles_across * tile * tile * out_channels * _FLOAT
    block_output = block * block * out_channels * _FLOAT
    batch = min(job.tiling.batch_size, tiles_across)
    activations = tile * tile * (MODEL_CALL_BYTES_PER_PIXEL + batch * BATCH_BYTES_PER_TILE_PIXEL)
    strip_px = min(width, max(block, ((job.tiling.strip_size or DEFAULT_STRIP_PIXELS) // block) * block))
    held = HELD_TILE_ROWS * strip_px * tile * out_channels * _FLOAT
    if threads is None:
        threads = job.cluster.threads_per_worker or job.cluster.local_layout(os.cpu_count() or 1)[1]
    publish_area = min(width * height, PUBLISH_AREA_MAX_PIXELS) * PUBLISH_BYTES_PER_PIXEL
    publish = PUBLISH_BYTES + publish_area
    worker = DEFAULT_CACHE_BYTES + threads * (group_input + group_output + block_output + activations) + held
    return JobEstimate(
        width=width,
        height=height,
        pixels=width * height,
        block_size=block,
        blocks=blocks,
        tile_size=tile,
        overlap=overlap,
        tiles=tiles,
        input_bytes=input_bytes,
        worker_bytes=worker,
        activation_bytes=threads * activations,
        client_bytes=CLIENT_BASE_BYTES + blocks * CLIENT_BYTES_PER_BLOCK + publish,
        publish_bytes=publish,
        publish_area_bytes=publish_area,
        max_pixels=job.limits.max_pixels,
    )


def check_job_size(job: JobSpec, *, tile_size: int | None = None) -> JobEstimate:
    """Estimate the job and refuse it when it exceeds ``limits.max_pixels`` and is not allowed to.

    Returns
    -------
    JobEstimate
        The estimate, for the caller to print.

    Raises
    ------
    JobTooLargeError
        The job exceeds ``limits.max_pixels`` and ``limits.allow_large`` is false; the message
        holds the estimate and the ways to go on.
    """
    estimate = estimate_job(job, tile_size=tile_size)
    if estimate.over_limit and not job.limits.allow_large:
        raise JobTooLargeError(
            f"the job is too large to start: {estimate.describe()}. Shrink the AOI, coarsen "
            "grid.resolution or split the area into several jobs; or, to run it anyway, pass "
            "--allow-large (job field limits: {allow_large: true}) or raise limits.max_pixels"
        )
    return estimate
