"""Small input cubes and a quick engine run, shared by the engine and publishing tests.

A cube here is a grid of class patches (water, forest, building, bare soil) with some patches
changed between the dates, per-pixel brightness and noise, clouds (NaN boxes) and a nodata row
along the bottom, on a UTM 33N 10 m grid. Nothing is read from disk, so each test makes exactly
the input it needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import xarray as xr
from affine import Affine
from distributed import LocalCluster

from pipeline.cube import write_cube
from pipeline.engine_spec import ClusterSpec, PromptSpec, TilingSpec
from pipeline.infer import InferenceResult, run_inference
from pipeline.spec import JobSpec

ORIGIN = (400_000.0, 5_000_000.0)
BANDS = ("blue", "green", "red", "nir", "swir16", "swir22")
SPECTRA = np.array(
    [
        [0.06, 0.07, 0.05, 0.03, 0.01, 0.005],  # water
        [0.03, 0.05, 0.03, 0.35, 0.17, 0.08],  # forest
        [0.16, 0.17, 0.18, 0.20, 0.26, 0.24],  # building
        [0.10, 0.14, 0.19, 0.24, 0.32, 0.28],  # bare soil
    ],
    dtype=np.float32,
)
PROMPTS = PromptSpec.build(
    classes="water;forest;building,roof;bare soil", background="background", targets=("building", "water")
)

#: ``(epoch, rows, cols)`` boxes that are NaN in every band (clouds).
Gap = tuple[int, slice, slice]


def patch_reflectance(
    height: int, width: int, *, seed: int, change_fraction: float, gaps: Sequence[Gap] = ()
) -> np.ndarray:
    """Return ``(2, band, height, width)`` float32 reflectance of changed class patches with gaps."""
    rng = np.random.default_rng(seed)
    cell = 23
    before = rng.integers(0, 4, (height // cell + 1, width // cell + 1))
    changed = rng.random(before.shape) < change_fraction
    after = np.where(changed, (before + rng.integers(1, 4, before.shape)) % 4, before)
    refl = np.empty((2, len(BANDS), height, width), dtype=np.float32)
    for epoch, classes in enumerate((before, after)):
        up = np.kron(classes, np.ones((cell, cell), dtype=classes.dtype))[:height, :width]
        brightness = rng.uniform(0.9, 1.1, (1, height, width)).astype(np.float32)
        refl[epoch] = SPECTRA[up].transpose(2, 0, 1) * brightness
        refl[epoch] += rng.normal(0, 0.004, refl[epoch].shape).astype(np.float32)
    for epoch, rows, cols in gaps:
        refl[epoch, :, rows, cols] = np.nan
    refl[:, :, -1, :] = np.nan  # a nodata row along the bottom edge
    return refl


def write_reflectance_cube(path: Path, refl: np.ndarray, *, chunk: int) -> Path:
    """Write reflectance as an input cube on the UTM 33N 10 m grid anchored at :data:`ORIGIN`."""
    height, width = refl.shape[-2:]
    ds = xr.Dataset(
        {
            "reflectance": (
                ("epoch", "band", "y", "x"),
                da.from_array(refl, chunks=(1, len(BANDS), chunk, chunk)),
            )
        },
        coords={
            "epoch": np.array(["before", "after"], dtype="U6"),
            "band": np.array(BANDS, dtype="U"),
            "y": ORIGIN[1] - 10 * np.arange(height) - 5,
            "x": ORIGIN[0] + 10 * np.arange(width) + 5,
        },
    )
    ds = ds.rio.write_crs("EPSG:32633").rio.write_transform(Affine(10, 0, ORIGIN[0], 0, -10, ORIGIN[1]))
    with dask.config.set(scheduler="threads"):  # not the tests' distributed clients
        return write_cube(ds, path, progress=False)


def write_patch_cube(
    path: Path,
    height: int,
    width: int,
    *,
    chunk: int,
    seed: int = 0,
    change_fraction: float = 0.2,
    gaps: Sequence[Gap] = (),
) -> Path:
    """Write a patch cube (see :func:`patch_reflectance`) and return its path."""
    refl = patch_reflectance(height, width, seed=seed, change_fraction=change_fraction, gaps=gaps)
    return write_reflectance_cube(path, refl, chunk=chunk)


def engine_job(output: str | Path, **fields: object) -> JobSpec:
    """A job for engine tests: the engine is given its input cube, so the search fields are placeholders."""
    return JobSpec.build(
        aoi={"bbox": (400_000, 4_980_000, 420_000, 5_000_000), "crs": "EPSG:32633"},
        before="2023-06-01/2023-06-30",
        after="2024-06-01/2024-06-30",
        catalog="https://stac.example.com/v1",
        collections="sentinel-2-l2a",
        grid={"crs": "EPSG:32633"},
        output=str(output),
        **fields,
    )


def run_small_engine(job: JobSpec, cube: Path, out: Path) -> InferenceResult:
    """Run the engine on one in-process worker: 128 px tiles and blocks, no dashboards, one thread."""
    with LocalCluster(
        n_workers=1,
        processes=False,
        threads_per_worker=1,
        dashboard_address=None,
        worker_dashboard_address=None,
    ) as cluster:
        return run_inference(
            job,
            cube,
            out,
            tiling=TilingSpec(tile_size=128, overlap=32, batch_size=8, block_size=128),
            cluster=ClusterSpec(address=cluster.scheduler_address, torch_threads=1),
            prompts=PROMPTS,
            progress=False,
        )
