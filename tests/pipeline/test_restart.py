"""A run killed part-way and started again finishes with the same bytes and recomputes only what is missing.

Two ways of dying are exercised: an error raised in a block task (the run stops, finished blocks
stay done), and a process killed with SIGKILL in the middle of writing a block (some of its chunks
already replaced by garbage, its marker not yet set).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr
from affine import Affine
from engine_inputs import engine_job

import pipeline.block_tasks
import pipeline.infer
from pipeline.change_cube import BlockGrid, read_done
from pipeline.cube import write_cube
from pipeline.engine_spec import ClusterSpec, PromptSpec, TilingSpec
from pipeline.errors import InferenceError
from pipeline.spec import JobSpec

HEIGHT, WIDTH, BLOCK = 600, 500, 128
TILING = TilingSpec(tile_size=64, overlap=16, batch_size=8, block_size=BLOCK)
PROMPTS = PromptSpec.build(classes="water;forest;building", background="background")
CLUSTER = ClusterSpec(n_workers=1, threads_per_worker=1, processes=False)
ALL_BLOCKS = set(BlockGrid(HEIGHT, WIDTH, BLOCK))


def _make_cube(path: Path) -> Path:
    rng = np.random.default_rng(7)
    bands = ("blue", "green", "red", "nir", "swir16", "swir22")
    spectra = np.array(
        [
            [0.06, 0.07, 0.05, 0.03, 0.01, 0.005],
            [0.03, 0.05, 0.03, 0.35, 0.17, 0.08],
            [0.16, 0.17, 0.18, 0.20, 0.26, 0.24],
        ],
        dtype=np.float32,
    )
    coarse = rng.integers(0, 3, (2, HEIGHT // 20 + 1, WIDTH // 20 + 1))
    classes = np.kron(coarse, np.ones((1, 20, 20), dtype=int))[:, :HEIGHT, :WIDTH]
    refl = spectra[classes].transpose(0, 3, 1, 2) + rng.normal(0, 0.005, (2, 6, HEIGHT, WIDTH))
    refl = refl.astype(np.float32)
    refl[1, :, 100:140, 200:260] = np.nan
    ds = xr.Dataset(
        {"reflectance": (("epoch", "band", "y", "x"), da.from_array(refl, chunks=(1, 6, 256, 256)))},
        coords={
            "epoch": np.array(["before", "after"], dtype="U6"),
            "band": np.array(bands, dtype="U"),
            "y": 5_000_000.0 - 10 * np.arange(HEIGHT) - 5,
            "x": 400_000.0 + 10 * np.arange(WIDTH) + 5,
        },
    )
    ds = ds.rio.write_crs("EPSG:32633").rio.write_transform(Affine(10, 0, 400_000, 0, -10, 5_000_000))
    with dask.config.set(scheduler="threads"):
        return write_cube(ds, path, progress=False)


@pytest.fixture(scope="module")
def cube(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_cube(tmp_path_factory.mktemp("restart") / "input_cube.zarr")


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> JobSpec:
    return engine_job(tmp_path_factory.mktemp("out"))


@pytest.fixture(scope="module")
def uninterrupted(cube: Path, job: JobSpec, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("uninterrupted") / "change.zarr"
    result = pipeline.infer.run_inference(
        job, cube, out, tiling=TILING, cluster=CLUSTER, prompts=PROMPTS, progress=False
    )
    assert set(result.computed) == ALL_BLOCKS
    return store_bytes(out)


def store_bytes(path: Path) -> dict[str, bytes]:
    """Every file of a Zarr store (chunks, markers and metadata) by its path in the store."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def recording_writes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Record every block the engine writes (the tasks run in this process)."""
    written: list[tuple[int, int]] = []
    real = pipeline.block_tasks.write_block

    def write_block(path: Path, window: Any, block: tuple[int, int], layers: Any) -> None:
        written.append(block)
        real(path, window, block, layers)

    monkeypatch.setattr(pipeline.block_tasks, "write_block", write_block)
    return written


def failing_after(n: int, real: Callable[..., None]) -> Callable[..., None]:
    count = [0]

    def write_block(path: Path, window: Any, block: tuple[int, int], layers: Any) -> None:
        if count[0] == n:
            raise RuntimeError("injected failure: the worker died")
        real(path, window, block, layers)
        count[0] += 1

    return write_block


def test_failed_run_resumes_and_matches_an_uninterrupted_run(
    tmp_path: Path, cube: Path, job: JobSpec, uninterrupted: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "change.zarr"
    half = len(ALL_BLOCKS) // 2
    monkeypatch.setattr(
        pipeline.block_tasks, "write_block", failing_after(half, pipeline.block_tasks.write_block)
    )
    with pytest.raises(InferenceError, match="run the same job again to resume"):
        pipeline.infer.run_inference(
            job, cube, out, tiling=TILING, cluster=CLUSTER, prompts=PROMPTS, progress=False
        )
    monkeypatch.undo()
    done_before = {tuple(b) for b in np.argwhere(read_done(out, BlockGrid(HEIGHT, WIDTH, BLOCK)))}
    assert len(done_before) == half
    assert zarr.open_group(str(out), mode="r").attrs["complete"] is False

    written = recording_writes(monkeypatch)
    result = pipeline.infer.run_inference(
        job, cube, out, tiling=TILING, cluster=CLUSTER, prompts=PROMPTS, progress=False
    )
    assert set(result.computed) == ALL_BLOCKS - done_before
    assert set(result.skipped) == done_before
    assert sorted(written) == sorted(ALL_BLOCKS - done_before)
    assert store_bytes(out) == uninterrupted


_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path

    import numpy as np
    import zarr

    import pipeline.block_tasks
    import pipeline.infer
    from pipeline.engine_spec import ClusterSpec, PromptSpec, TilingSpec
    from pipeline.spec import JobSpec

    job_json, cube, out, kill_after = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
    real = pipeline.block_tasks.write_block
    count = [0]

    def write_block(path, window, block, layers):
        if count[0] == kill_after:
            # Half of this block's chunks are replaced by garbage, then the process dies.
            group = zarr.open_group(str(path), mode="r+")
            rows, cols = window.slices
            group["change_probability"][rows, cols] = np.zeros_like(layers.change_probability)
            group["class_before"][rows, cols] = np.full_like(layers.class_before, 7)
            os.kill(os.getpid(), signal.SIGKILL)
        real(path, window, block, layers)
        count[0] += 1

    pipeline.block_tasks.write_block = write_block
    pipeline.infer.run_inference(
        JobSpec.model_validate_json(Path(job_json).read_text()), cube, out,
        tiling=TilingSpec.model_validate_json({tiling!r}),
        cluster=ClusterSpec.model_validate_json({cluster!r}),
        prompts=PromptSpec.model_validate_json({prompts!r}),
        progress=False,
    )
    """
).format(
    tiling=TILING.model_dump_json(), cluster=CLUSTER.model_dump_json(), prompts=PROMPTS.model_dump_json()
)


def test_sigkilled_run_resumes_recomputes_only_unfinished_blocks_and_matches(
    tmp_path: Path, cube: Path, job: JobSpec, uninterrupted: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "change.zarr"
    job_file = tmp_path / "job.json"
    job_file.write_text(job.model_dump_json())
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    half = len(ALL_BLOCKS) // 2
    child = subprocess.run(
        [sys.executable, str(script), str(job_file), str(cube), str(out), str(half)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert child.returncode == -signal.SIGKILL, child.stderr[-3000:]

    grid = BlockGrid(HEIGHT, WIDTH, BLOCK)
    done_before = {tuple(b) for b in np.argwhere(read_done(out, grid))}
    assert len(done_before) == half
    torn = store_bytes(out)
    assert torn != uninterrupted  # the garbage of the killed block is on disk

    written = recording_writes(monkeypatch)
    result = pipeline.infer.run_inference(
        job, cube, out, tiling=TILING, cluster=CLUSTER, prompts=PROMPTS, progress=False
    )
    assert set(result.computed) == ALL_BLOCKS - done_before
    assert sorted(written) == sorted(ALL_BLOCKS - done_before)
    assert store_bytes(out) == uninterrupted

    again = pipeline.infer.run_inference(
        job, cube, out, tiling=TILING, cluster=CLUSTER, prompts=PROMPTS, progress=False
    )
    assert again.computed == () and set(again.skipped) == ALL_BLOCKS
    assert store_bytes(out) == uninterrupted


def test_force_recomputes_a_finished_cube(
    tmp_path: Path, cube: Path, job: JobSpec, uninterrupted: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "change.zarr"
    pipeline.infer.run_inference(
        job, cube, out, tiling=TILING, cluster=CLUSTER, prompts=PROMPTS, progress=False
    )
    written = recording_writes(monkeypatch)
    result = pipeline.infer.run_inference(
        job, cube, out, tiling=TILING, cluster=CLUSTER, prompts=PROMPTS, force=True, progress=False
    )
    assert set(result.computed) == ALL_BLOCKS and sorted(written) == sorted(ALL_BLOCKS)
    assert store_bytes(out) == uninterrupted
