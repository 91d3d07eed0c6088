"""Throughput of the engine in km^2 per minute at 10 m with the demo models.

For each scene side asked for (generated scenes, 10 m pixels, inputs prepared once and cached
under ``--workdir``), prints:

* infer-stage throughput: scene area / wall time of :func:`pipeline.infer.run_inference`
  (``force=True``) on a fresh local cluster like the default one (one in-process worker with 2
  threads; ``--workers``, ``--processes`` change it), best of ``--repeats``;
* whole-run throughput (``--whole-run``): scene area / wall time of :func:`pipeline.run.run_job`
  into a fresh output (discover, prepare the cube from the generated scenes, infer, publish).

Usage::

    .venv/bin/python bench/engine_throughput.py --sizes 2048 --whole-run
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_efficiency import (  # noqa: E402
    DEFAULT_WORKDIR,
    Setting,
    load_now,
    machine_header,
    prepare_inputs,
    quiet,
    time_inference,
    time_whole_run,
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048], help="scene sides, px (10 m)")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--block-size", type=int, default=1024)
    parser.add_argument("--tile-size", type=int, default=None, help="default: the model's (512)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="worker threads (or processes)")
    parser.add_argument(
        "--processes",
        action="store_true",
        help="workers as processes instead of threads of one in-process worker",
    )
    parser.add_argument("--repeats", type=int, default=1, help="infer runs per size (best is kept)")
    parser.add_argument("--whole-run", action="store_true", help="also time a whole run from scratch")
    args = parser.parse_args()
    quiet()

    print(machine_header("engine throughput: km^2 per minute at 10 m"), flush=True)
    print(
        f"block {args.block_size} px, tile {args.tile_size or 'model default'}, batch {args.batch_size}, "
        f"{args.workers} worker {'processes x 1 thread' if args.processes else 'threads in one in-process worker'}\n",
        flush=True,
    )
    print(f"{'size px':>8} {'km^2':>7} {'stage':>10} {'wall s':>8} {'km^2/min':>9} {'Mpx/s':>7} {'load1':>6}")
    setting = Setting(args.block_size, args.tile_size, args.batch_size, args.workers, args.processes)
    for size in args.sizes:
        inputs = prepare_inputs(size, args.workdir)
        walls = []
        for _ in range(args.repeats):
            r = time_inference(inputs, setting, args.workdir / "throughput" / "change_cube.zarr")
            walls.append((r["wall"], r["load"]))
        wall, load = min(walls)
        mpx = size * size / 1e6
        print(
            f"{size:>8} {inputs.area_km2:>7.1f} {'infer':>10} {wall:>8.2f} {inputs.area_km2 / wall * 60:>9.1f} "
            f"{mpx / wall:>7.2f} {load:>6}",
            flush=True,
        )
        if args.whole_run:
            whole, _, _ = time_whole_run(inputs, args.workdir)
            print(
                f"{size:>8} {inputs.area_km2:>7.1f} {'whole run':>10} {whole:>8.2f} "
                f"{inputs.area_km2 / whole * 60:>9.1f} {mpx / whole:>7.2f} {load_now():>6}",
                flush=True,
            )
    print("\nwhole run = discover + prepare (from the generated scene files) + infer + publish, fresh output")


if __name__ == "__main__":
    main()
