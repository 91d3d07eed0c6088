"""Time to create an empty change cube (metadata and coordinates only) for growing areas.

Every run creates its change cube once, on a Dask worker, just before the first block is written
(:func:`pipeline.change_cube.create_change_cube`). It writes no data chunks, so its time should
not grow with the area. For each side asked for, the cube of a square 10 m grid (seven classes,
three targets, 512 px blocks) is created three times into a temporary folder, and the best and
worst times are printed with the number of files written.

Usage::

    .venv/bin/python bench/change_cube_creation.py --sizes 1024 8192 32768
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from affine import Affine
from pyproj import CRS

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_efficiency import machine_header  # noqa: E402

from pipeline.change_cube import BlockGrid, ChangeCubeLayout, create_change_cube  # noqa: E402

CLASSES = ("water", "building", "burned area", "forest", "grass", "bare soil", "cropland")
TARGETS = ("water", "building", "burned area")
BLOCK_SIZE = 512


def create_times(size: int, folder: Path, repeats: int = 3) -> tuple[list[float], int]:
    """Create the cube of a ``size`` px square ``repeats`` times; return the times and the file count."""
    y = 5_450_000 - 5 - 10 * np.arange(size, dtype=np.float64)
    x = 600_000 + 5 + 10 * np.arange(size, dtype=np.float64)
    layout = ChangeCubeLayout(BlockGrid(size, size, BLOCK_SIZE), CLASSES, TARGETS, 3)
    times = []
    files = 0
    for repeat in range(repeats):
        path = folder / f"cube-{size}-{repeat}.zarr"
        start = time.perf_counter()
        create_change_cube(
            path,
            layout,
            y=y,
            x=x,
            crs=CRS.from_epsg(32633),
            transform=Affine(10, 0, 600_000, 0, -10, 5_450_000),
            attrs={"bench": "change_cube_creation"},
        )
        times.append(time.perf_counter() - start)
        files = sum(1 for p in path.rglob("*") if p.is_file())
        shutil.rmtree(path)
    return times, files


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 8192, 32768], help="grid sides in px")
    args = parser.parse_args()
    print(machine_header("change cube creation"))
    print(f"{'side px':>8} {'blocks':>8} {'best s':>8} {'worst s':>8} {'files':>6}")
    with tempfile.TemporaryDirectory(prefix="seg2change-bench-create-") as tmp:
        for size in args.sizes:
            times, files = create_times(size, Path(tmp))
            rows, cols = BlockGrid(size, size, BLOCK_SIZE).shape
            print(f"{size:>8} {rows * cols:>8} {min(times):>8.3f} {max(times):>8.3f} {files:>6}")


if __name__ == "__main__":
    main()
