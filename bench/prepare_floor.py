"""The least CPU that ``prepare`` can spend on a scene, and the whole-run efficiency it would allow.

``prepare`` must at least decode every source raster once, mask each acquisition with its quality
band, and reduce each window to its per-pixel median and clear count. This script does exactly
that for the scene of :mod:`bench.full_tile` (same generator, same cache, same job), one thread,
whole files at once: plain rasterio reads cast to float32, the job's own quality mask and
:func:`pipeline.nan_median.nan_median`, with no dask graph, no stackstac, no block tiling and no
Zarr write. Scale and offset are not applied (they would only add to the floor).

It prints the CPU seconds of each part and, given the model seconds and the other stages' CPU
seconds of a ``full_tile.py`` run of the same size (``--model-s``, ``--infer-cpu-s``,
``--publish-cpu-s``), the efficiency ceiling with ``prepare`` at this floor:
model / (model + floor + infer's non-model CPU + publish CPU), the best that overlapping stages
could reach if prepare cost nothing beyond its decode and median.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python bench/full_tile.py --sizes 2048     # makes the scene
    OMP_NUM_THREADS=1 .venv/bin/python bench/prepare_floor.py --size 2048 \\
        --model-s 26.6 --infer-cpu-s 29.2 --publish-cpu-s 6.5
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from full_tile import DEFAULT_CACHE, _scene_and_job  # noqa: E402

from pipeline.bands import band_asset  # noqa: E402
from pipeline.discover import Discovery, discover  # noqa: E402
from pipeline.nan_median import nan_median  # noqa: E402
from pipeline.spec import JobSpec  # noqa: E402


def _read(href: str) -> np.ndarray:
    with rasterio.open(href) as dataset:
        values: np.ndarray = dataset.read(1).astype("float32")
        if dataset.nodata is not None:
            values[values == np.float32(dataset.nodata)] = np.nan
        return values


def _href(assets: dict[str, Any], band: str, mapped: str | None) -> str:
    asset = band_asset(assets, band, mapped)
    if asset is None:
        raise SystemExit(f"the scene's item has no asset for band {band!r}; make the scene again")
    return str(asset["href"])


def floor_seconds(job: JobSpec, found: Discovery) -> dict[str, float]:
    """Decode, mask and median CPU seconds of the scene ``found`` for ``job`` (one thread, whole files)."""
    decode = mask = median = 0.0
    for items in found.items.values():
        observations = []
        for item in items:
            start = time.process_time()
            assets = item["assets"]
            bands = np.stack([_read(_href(assets, band, job.band_map.get(band))) for band in job.bands])
            quality = _read(assets[job.quality.asset]["href"]) if job.quality.asset else None
            decode += time.process_time() - start
            start = time.process_time()
            invalid = np.isnan(bands).any(axis=0)
            if quality is not None:
                invalid |= np.asarray(job.quality.invalid(quality))
            bands[:, invalid] = np.nan
            observations.append((bands, invalid))
            mask += time.process_time() - start
        start = time.process_time()
        nan_median(np.stack([b for b, _ in observations]), axis=0)
        np.sum([~i for _, i in observations], axis=0, dtype="uint8")
        median += time.process_time() - start
    return {"decode": decode, "mask": mask, "median": median}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--repeats", type=int, default=3, help="runs; the fastest is kept")
    parser.add_argument("--model-s", type=float, help="model seconds of a full_tile.py run of this size")
    parser.add_argument("--infer-cpu-s", type=float, help="infer's CPU seconds in that run")
    parser.add_argument("--publish-cpu-s", type=float, help="publish's CPU seconds in that run")
    args = parser.parse_args()
    _, job, _ = _scene_and_job(args.size, args.cache, None)
    found = discover(job)
    runs = [floor_seconds(job, found) for _ in range(args.repeats)]
    best = min(runs, key=lambda r: sum(r.values()))
    total = sum(best.values())
    mpx = args.size * args.size / 1e6
    print(
        f"# prepare floor, {args.size} px ({mpx:.1f} Mpx), OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, "
        f"best of {args.repeats}"
    )
    print(
        f"decode {best['decode']:.2f} s, mask {best['mask']:.2f} s, median {best['median']:.2f} s: "
        f"{total:.2f} CPU s ({total / mpx:.3f} s/Mpx)"
    )
    if args.model_s and args.infer_cpu_s is not None and args.publish_cpu_s is not None:
        other = max(args.infer_cpu_s - args.model_s, 0.0) + args.publish_cpu_s
        ceiling = args.model_s / (args.model_s + total + other)
        print(
            f"ceiling with prepare at its floor: {args.model_s:.1f} / ({args.model_s:.1f} + {total:.1f} "
            f"+ {other:.1f} non-model infer and publish) = {ceiling:.3f}"
        )


if __name__ == "__main__":
    main()
