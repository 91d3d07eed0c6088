"""Peak memory of one inference worker process for areas 1x, 4x and 16x a base size.

Generated scenes of each side (default 1024, 2048, 4096 px, i.e. 1x, 4x, 16x the area) are
prepared once and cached under ``--workdir`` (see ``engine_efficiency.prepare_inputs``). For each,
the infer stage runs with the demo models on a fresh ``LocalCluster`` of **one worker process**
(one thread), and after the run the worker's peak resident memory is read inside it with
``resource.getrusage(RUSAGE_SELF).ru_maxrss``. Each row prints the peak and its ratio to the
smallest area. The claim being checked (DESIGN.md, "bounded memory"): a worker's peak depends on
the block and tile sizes, not on the area -- target: 16x area within 1.25x of the 1x peak.

Usage::

    .venv/bin/python bench/engine_memory.py --sizes 1024 2048 4096 --block-size 1024
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

from distributed import Client, LocalCluster

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_efficiency import DEFAULT_WORKDIR, load_now, machine_header, prepare_inputs, quiet  # noqa: E402

from pipeline.engine_spec import TilingSpec  # noqa: E402
from pipeline.infer import run_inference  # noqa: E402


def _peak_rss_mib() -> float:
    """Peak resident memory of the calling process in MiB.

    ``VmHWM`` of ``/proc/self/status`` (the high-water mark of this process's own address space)
    where it exists: ``getrusage().ru_maxrss`` survives ``fork`` + ``exec``, so a spawned Dask worker
    would start from the RSS its parent had when it forked (the bench process, larger after
    preparing a larger scene). Elsewhere ``ru_maxrss`` is the fallback.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(size: int, workdir: Path, block: int, tile: int | None, batch: int) -> tuple[float, float, float]:
    """Infer one scene on a fresh 1-worker cluster; return (worker peak MiB, worker MiB before, wall s)."""
    inputs = prepare_inputs(size, workdir)
    out = workdir / "memory" / f"change-{size}.zarr"
    tiling = TilingSpec(tile_size=tile, block_size=block, batch_size=batch)
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        before = next(iter(client.run(_peak_rss_mib).values()))
        result = run_inference(
            inputs.job(out.parent),
            inputs.cube,
            out,
            tiling=tiling,
            cluster=client,
            force=True,
            progress=False,
        )
        peak = next(iter(client.run(_peak_rss_mib).values()))
    return peak, before, result.wall_seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096], help="scene sides, px")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--block-size", type=int, default=1024)
    parser.add_argument("--tile-size", type=int, default=None, help="default: the model's (512)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--target", type=float, default=1.25, help="largest / smallest peak allowed")
    args = parser.parse_args()
    quiet()

    print(machine_header("engine memory: peak RSS of one worker process vs area"), flush=True)
    print(
        f"block {args.block_size} px, tile {args.tile_size or 'model default'}, batch {args.batch_size}, "
        "1 worker process x 1 thread\n",
        flush=True,
    )
    rows = []
    for size in args.sizes:
        start = time.perf_counter()
        prepare_inputs(size, args.workdir)  # cached; prepared before timing
        prepared = time.perf_counter() - start
        peak, idle, wall = measure(size, args.workdir, args.block_size, args.tile_size, args.batch_size)
        rows.append((size, peak, idle, wall, load_now(), prepared))
        print(
            f"{size:>6} px: worker peak {peak:7.1f} MiB (idle worker {idle:6.1f} MiB), infer {wall:6.1f} s, "
            f"prepare {prepared:6.1f} s (0 if cached), load1 {rows[-1][4]}",
            flush=True,
        )
    base_size, base = rows[0][0], rows[0][1]
    print()
    print(
        f"{'size px':>8} {'area x':>7} {'km^2':>7} {'infer s':>8} {'peak MiB':>9} {'above idle':>10} "
        f"{'x smallest':>10} {'load1':>6}"
    )
    for size, peak, idle, wall, load, _ in rows:
        print(
            f"{size:>8} {(size / base_size) ** 2:>7.0f} {(size * 0.01) ** 2:>7.1f} {wall:>8.1f} {peak:>9.1f} "
            f"{peak - idle:>10.1f} {peak / base:>10.2f} {load:>6}"
        )
    worst = max(peak for _, peak, *_ in rows) / base
    verdict = "met" if worst <= args.target else "NOT met"
    print(f"\nlargest / smallest peak = {worst:.2f} (target <= {args.target}: {verdict})")


if __name__ == "__main__":
    main()
