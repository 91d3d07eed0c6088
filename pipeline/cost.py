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

__all__ = ["CLIENT_BASE_BYTES", "CLIENT_BYTES_PER_BLOCK", "JobEstimate", "check_job_size", "estimate_job"]

#: Client memory per input-cube block while the lazy cube and the block plan are held. The lazy cube
#: alone took 21-25 kB per block of 1024 px (two items per window, 256 to 3,968 blocks) in
#: bench/job_estimate.py; the rest is room for inference's block plan, which is not measured there.
CLIENT_BYTES_PER_BLOCK = 40_000
#: The client process before any job (Python, NumPy, torch, dask, rasterio imported): about 400 MB.
CLIENT_BASE_BYTES = 400 * 10**6

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
        Memory of one worker, besides the models: its chunk cache, the tile inputs and block outputs
        of its threads, and the tile outputs a strip keeps for the next block row.
    client_bytes
        Memory of the client while the input cube is assembled and the blocks planned.
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
    client_bytes: int
    max_pixels: int

    @property
    def over_limit(self) -> bool:
        """Whether the job exceeds its ``max_pixels``."""
        return self.pixels > self.max_pixels

    def describe(self) -> str:
        """One line for people: the grid, blocks, tiles, bytes and memory."""
        return (
            f"{self.width:,} x {self.height:,} px = {self.pixels:.3g} px (limit {self.max_pixels:.3g}), "
            f"{self.blocks:,} blocks of {self.block_size} px, {self.tiles:,} tiles of {self.tile_size} px "
            f"(overlap {self.overlap}), input cube {_bytes(self.input_bytes)}, about "
            f"{_bytes(self.worker_bytes)} per worker besides the models, about "
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
    strip_px = min(width, max(block, ((job.tiling.strip_size or DEFAULT_STRIP_PIXELS) // block) * block))
    held = strip_px * tile * out_channels * _FLOAT
    if threads is None:
        threads = job.cluster.threads_per_worker or job.cluster.local_layout(os.cpu_count() or 1)[1]
    worker = DEFAULT_CACHE_BYTES + threads * (group_input + group_output + block_output) + held
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
        client_bytes=CLIENT_BASE_BYTES + blocks * CLIENT_BYTES_PER_BLOCK,
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
