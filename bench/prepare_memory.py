"""Peak memory of ``seg2change prepare`` for generated scenes of growing size.

Generates (or reuses) scenes of each size under ``--workdir``, serves each from the embedded
rustac STAC API, and runs ``seg2change prepare`` in a fresh process, reading that process's peak
resident memory from the kernel (``getrusage(RUSAGE_CHILDREN)``). Prints one row per size and the
ratio of each to the smallest. The claim being checked: memory depends on the block size, not the
area, so the 8192 px cube should need at most 1.5x the memory of the 2048 px one.

Usage::

    .venv/bin/python bench/prepare_memory.py --sizes 2048 8192 --workdir /tmp/s2c-bench
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

from pipeline.cube import open_cube
from pipeline.demo import demo_job_fields
from pipeline.stac_servers import serve_collection
from pipeline.synthetic import SceneSpec, ensure_scene


def _peak_child_rss_mb(command: list[str]) -> tuple[float, float]:
    """Run a command in a fresh process; return its wall time and peak RSS in MiB."""
    script = (
        "import resource, subprocess, sys\n"
        "rc = subprocess.run(sys.argv[1:]).returncode\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        "sys.exit(rc)\n"
    )
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", script, *command], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return wall, int(done.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/seg2change-bench-prepare"))
    parser.add_argument("--block-size", type=int, default=1024)
    args = parser.parse_args()
    seg2change = str(Path(sys.executable).with_name("seg2change"))
    rows = []
    for size in args.sizes:
        folder = args.workdir / f"scene-{size}"
        t0 = time.perf_counter()
        scene = ensure_scene(SceneSpec(size=size, seed=0), folder / "scene")
        generated = time.perf_counter() - t0
        with serve_collection(scene.collection_path, scene.items_path, kind="rustac") as server:
            fields = demo_job_fields(scene, server.url, folder / "out")
            fields["block_size"] = args.block_size
            job_file = folder / "job.yaml"
            job_file.write_text(yaml.safe_dump(fields, sort_keys=False))
            wall, peak = _peak_child_rss_mb(
                [seg2change, "prepare", str(job_file), "--overwrite", "--no-progress"]
            )
        cube = open_cube(folder / "out" / "input_cube.zarr")
        finite = float(np.isfinite(cube["reflectance"].isel(band=0).data[:, ::8, ::8]).mean().compute())
        rows.append((size, generated, wall, peak, finite))
        print(
            f"{size:>6} px  scene {generated:6.1f} s  prepare {wall:6.1f} s  peak RSS {peak:7.1f} MiB",
            flush=True,
        )
    base = rows[0][3]
    print()
    print(f"{'size':>8} {'pixels':>12} {'prepare s':>10} {'peak MiB':>9} {'x smallest':>10} {'clear':>6}")
    for size, _, wall, peak, finite in rows:
        print(f"{size:>8} {size * size:>12,} {wall:>10.1f} {peak:>9.1f} {peak / base:>10.2f} {finite:>6.1%}")
    print(f"\nblock size {args.block_size} px; peak RSS of the whole `seg2change prepare` process")


if __name__ == "__main__":
    main()
