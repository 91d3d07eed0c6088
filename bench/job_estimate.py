"""How fast a too large job is refused, and how the client's memory grows with the area before the refusal.

Prints, for a continent-sized AOI (Europe, 10 m): the time from the job's fields to the refusal with
its estimate (spec validation + :func:`pipeline.preflight.preflight`, as ``run`` does it before
discovery), and the estimate's figures. Then it measures what :data:`pipeline.cost.CLIENT_BYTES_PER_BLOCK`
stands for: the client memory that :func:`pipeline.cube.assemble_cube` (the lazy input cube over the
whole AOI) takes per block, for AOIs of growing size, with two made-up items per window (nothing is
read or written), and the client's time to plan every block of inference (:mod:`pipeline.tile_plan`).

Run: ``OMP_NUM_THREADS=1 .venv/bin/python bench/job_estimate.py [--sides 1 2 4]``
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from pipeline.change_cube import BlockGrid
from pipeline.cost import CLIENT_BYTES_PER_BLOCK
from pipeline.cube import assemble_cube
from pipeline.discover import Discovery
from pipeline.errors import JobTooLargeError
from pipeline.preflight import preflight
from pipeline.spec import JobSpec
from pipeline.tile_plan import TilePlan, strip_blocks
from pipeline.tiling import TileGrid

EUROPE = [-10.0, 35.0, 30.0, 70.0]


def _fields(bbox: list[float], output: Path) -> dict[str, Any]:
    return {
        "aoi": {"bbox": bbox},
        "before": "2024-05-01/2024-05-31",
        "after": "2024-07-01/2024-07-31",
        "catalog": "http://127.0.0.1:9/",
        "collections": ["s2"],
        "quality": "none",
        "output": str(output),
        "prompts": {"classes": "water;building"},
    }


def _item(job: JobSpec, item_id: str, when: str) -> dict[str, Any]:
    xmin, ymin, xmax, ymax = job.target_bounds()
    res = job.grid.resolution
    epsg = job.target_crs().to_epsg()
    return {
        "type": "Feature",
        "id": item_id,
        "collection": "s2",
        "bbox": list(job.aoi.wgs84().bounds),
        "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]},
        "properties": {
            "datetime": when,
            "proj:epsg": epsg,
            "proj:bbox": [xmin, ymin, xmax, ymax],
            "proj:shape": [round((ymax - ymin) / res), round((xmax - xmin) / res)],
            "proj:transform": [res, 0, xmin, 0, -res, ymax],
        },
        "assets": {band: {"href": f"/nonexistent/{band}.tif", "type": "image/tiff"} for band in job.bands},
    }


def refusal(output: Path) -> None:
    started = time.perf_counter()
    job = JobSpec.build(**_fields(EUROPE, output))
    try:
        preflight(job, inference=True)
    except JobTooLargeError as exc:
        elapsed = time.perf_counter() - started
        print(f"Europe {EUROPE} at 10 m: refused in {elapsed:.2f} s (spec + every check before discovery)")
        print(f"  {exc}")
    else:
        raise SystemExit("the continent was not refused")
    print(f"  output folder created: {output.exists()}")


def client_growth(sides: list[float], output: Path) -> None:
    process = psutil.Process()
    print("\nclient memory of the lazy input cube (assemble_cube), two items per window:")
    print(f"{'side (deg)':>10} {'pixels':>10} {'blocks':>7} {'seconds':>8} {'MB':>7} {'bytes/block':>12}")
    for side in sides:
        job = JobSpec.build(**_fields([8.0, 45.0, 8.0 + side, 45.0 + side * 0.7], output))
        discovery = Discovery(
            items={
                "before": [_item(job, "b", "2024-05-05T00:00:00Z")],
                "after": [_item(job, "a", "2024-07-05T00:00:00Z")],
            },
            filter_mode="client",
            catalog="made up",
            cloud_limit=50,
            collections=("s2",),
        )
        gc.collect()
        rss = process.memory_info().rss
        started = time.perf_counter()
        cube = assemble_cube(job, discovery)
        elapsed = time.perf_counter() - started
        grown = process.memory_info().rss - rss
        blocks = len(cube.chunks["y"]) * len(cube.chunks["x"])
        pixels = cube.sizes["y"] * cube.sizes["x"]
        print(
            f"{side:>10g} {pixels:>10.3g} {blocks:>7} {elapsed:>8.2f} {grown / 1e6:>7.0f} {grown / blocks:>12.0f}"
        )
        del cube
    print(f"pipeline.cost.CLIENT_BYTES_PER_BLOCK = {CLIENT_BYTES_PER_BLOCK}")


def planning(sides: list[int]) -> None:
    print("\nclient time to plan every block of a square grid (512 px tiles, overlap 64, 1024 px blocks):")
    print(f"{'side (px)':>10} {'blocks':>7} {'plan s':>7} {'count tiles s':>14} {'tiles':>8}")
    for side in sides:
        plan = TilePlan(TileGrid(side, side, 512, 64), BlockGrid(side, side, 1024), strip_blocks(1024))
        started = time.perf_counter()
        planned = list(plan.plan(plan.blocks))
        planned_s = time.perf_counter() - started
        started = time.perf_counter()
        tiles = plan.count_tiles(planned)
        print(
            f"{side:>10} {len(planned):>7} {planned_s:>7.2f} {time.perf_counter() - started:>14.2f} {tiles:>8}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sides", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    parser.add_argument("--plan-sides", type=int, nargs="+", default=[16384, 32768, 65536])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        refusal(Path(folder) / "out")
        client_growth(args.sides, Path(folder) / "out")
    planning(args.plan_sides)


if __name__ == "__main__":
    main()
