"""Naive full-scene accumulation vs the blocked engine: peak memory, time, and agreement.

Both sides run on the same prepared input cube (a generated scene, cached under ``--workdir``),
with the same tile size, overlap, blending window, batch size and demo models (the CVA baseline
is fitted on the same seeded pixel sample), each in its **own child process** so that each peak
resident memory (``VmHWM`` of ``/proc/self/status``, read by the child at its end) is its own:

* **naive** -- what many tools do: read the whole scene into memory, allocate one output array
  ``(channels, H, W)`` and one weight array ``(H, W)`` the size of the scene (float64), loop over
  every tile of the scene in one process accumulating ``w * p`` and ``w``, divide, fuse the whole
  scene, save the layers (``.npy``);
* **ours** -- :func:`pipeline.infer.run_inference` (blocks with halo, written to the change cube
  Zarr) on the job's default cluster: one in-process worker (``processes=False``) with one thread
  per core, each thread's torch on one core, so the scheduler, the worker and the models all
  count in the one child's peak. ``--ours-threads 1`` gives ours one worker thread whose torch
  takes every core, as the naive loop's does.

The naive loop's torch gets every core. Printed: time, model seconds, peak RSS, ratios naive /
ours, and the max absolute difference of the change probability (where both are finite).

Usage::

    .venv/bin/python bench/naive_vs_blocked.py --size 2048 --block-size 512
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_efficiency import DEFAULT_WORKDIR, load_now, machine_header, models_spec, prepare_inputs, quiet  # noqa: E402

from pipeline.engine_spec import ClusterSpec, TilingSpec  # noqa: E402
from pipeline.infer import describe_input, fit_for_cube, run_inference  # noqa: E402
from pipeline.input_reader import read_window  # noqa: E402
from pipeline.models import ModelRuntime, build_models, change_model_info  # noqa: E402
from pipeline.tiling import RampBlender, TileGrid, Window, batched  # noqa: E402
from seg2change_core.fusion import fuse  # noqa: E402


def _peak_mib() -> float:
    """This process's own peak RSS (``VmHWM``; ``ru_maxrss`` would include the parent's RSS at fork)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_naive(args: argparse.Namespace) -> dict[str, Any]:
    """The naive full-scene accumulation, in this process."""
    start = time.perf_counter()
    inputs = prepare_inputs(args.size, args.workdir)
    cube = describe_input(inputs.cube)
    spec = models_spec(inputs)
    info = change_model_info(spec, cube.bands)
    tiling = TilingSpec(tile_size=args.tile_size, batch_size=args.batch_size)
    tile_size = tiling.resolve_tile_size(info.tile_size)
    runtime = fit_for_cube(ModelRuntime(spec, cube.bands), cube)
    models = build_models(runtime)
    prompts = inputs.job(args.workdir / "naive").prompts
    assert prompts is not None
    prompt_set = prompts.prompt_set()
    k = prompt_set.num_classes
    height, width = cube.height, cube.width

    data = read_window(str(cube.path), Window(0, height, 0, width))  # the whole scene
    grid = TileGrid(height, width, tile_size, tiling.overlap)
    blender = RampBlender(tiling.overlap, tiling.window)
    total = np.zeros((1 + 2 * k, height, width), dtype=np.float64)
    weight = np.zeros((height, width), dtype=np.float64)
    model_seconds = 0.0
    for group in batched(list(grid), args.batch_size):
        pair = torch.from_numpy(
            np.stack([data[(epoch, slice(None), *t.window.slices)] for epoch in (0, 1) for t in group])
        )
        n = len(group)
        s = time.perf_counter()
        with torch.inference_mode():
            change = models.change.predict(
                pair[:n][:, list(models.change_bands)], pair[n:][:, list(models.change_bands)]
            )
            classes = models.segmenter.segment(pair[:, list(models.segmenter_bands)], prompt_set)
            out = torch.cat([change, classes[:n], classes[n:]], dim=1).to(torch.float32).numpy()
        model_seconds += time.perf_counter() - s
        for i, t in enumerate(group):
            w = blender.window(t)
            total[(slice(None), *t.window.slices)] += w * out[i]
            weight[t.window.slices] += w
    total /= weight
    blended = total.astype(np.float32)
    del total, weight
    fused = fuse(
        torch.from_numpy(blended[None, :1]),
        torch.from_numpy(blended[None, 1 : 1 + k]),
        torch.from_numpy(blended[None, 1 + k :]),
        prompt_set,
    )
    valid = np.isfinite(data).all(axis=(0, 1))
    probability = np.where(valid, blended[0], np.float32("nan"))
    folder = args.workdir / "naive"
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "change_probability.npy", probability)
    for name in ("change", "class_before", "class_after", "transition"):
        np.save(folder / f"{name}.npy", getattr(fused, name)[0, 0].numpy())
    return {"seconds": time.perf_counter() - start, "model_seconds": model_seconds, "peak_mib": _peak_mib()}


def run_ours(args: argparse.Namespace) -> dict[str, Any]:
    """The blocked engine on an in-process cluster, in this process."""
    start = time.perf_counter()
    inputs = prepare_inputs(args.size, args.workdir)
    out = args.workdir / "ours" / "change_cube.zarr"
    tiling = TilingSpec(tile_size=args.tile_size, batch_size=args.batch_size, block_size=args.block_size)
    cluster = ClusterSpec(n_workers=1, threads_per_worker=args.ours_threads, processes=False)
    result = run_inference(
        inputs.job(out.parent), inputs.cube, out, tiling=tiling, cluster=cluster, force=True, progress=False
    )
    return {
        "seconds": time.perf_counter() - start,
        "model_seconds": result.model_seconds,
        "peak_mib": _peak_mib(),
    }


def child(side: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one side in a fresh child process; return what it printed (JSON)."""
    command = [
        sys.executable,
        __file__,
        "--side",
        side,
        "--size",
        str(args.size),
        "--workdir",
        str(args.workdir),
    ]
    command += ["--block-size", str(args.block_size), "--batch-size", str(args.batch_size)]
    command += ["--ours-threads", str(args.ours_threads)]
    if args.tile_size:
        command += ["--tile-size", str(args.tile_size)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{side} failed:\n{done.stderr[-3000:]}")
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    figures["load"] = load_now()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=2048, help="scene side, px (10 m)")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--block-size", type=int, default=1024, help="our block size")
    parser.add_argument("--tile-size", type=int, default=None, help="default: the model's (512)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--ours-threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="worker threads of ours (default: one per core, the job's default; torch then takes one core each)",
    )
    parser.add_argument("--side", choices=["naive", "ours"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    quiet()
    if args.side:
        run = run_naive if args.side == "naive" else run_ours
        print(json.dumps(run(args)))
        return

    print(machine_header("naive full-scene accumulation vs blocked engine"), flush=True)
    prepare_inputs(args.size, args.workdir)  # prepared (or reused) before either side runs
    print(
        f"scene {args.size} x {args.size} px, tile {args.tile_size or 'model default'}, batch "
        f"{args.batch_size}, our block {args.block_size} px, our worker threads {args.ours_threads}; "
        "each side in its own child process\n",
        flush=True,
    )
    naive = child("naive", args)
    ours = child("ours", args)
    print(f"{'':>6} {'time s':>8} {'model s':>8} {'peak MiB':>9} {'load1':>6}")
    for name, r in (("naive", naive), ("ours", ours)):
        print(
            f"{name:>6} {r['seconds']:>8.2f} {r['model_seconds']:>8.2f} {r['peak_mib']:>9.1f} {r['load']:>6}"
        )
    print(
        f"{'ratio':>6} {naive['seconds'] / ours['seconds']:>8.2f} {'':>8} "
        f"{naive['peak_mib'] / ours['peak_mib']:>9.2f}   (naive / ours)"
    )
    theirs = np.load(args.workdir / "naive" / "change_probability.npy")
    mine = np.asarray(
        zarr.open_array(str(args.workdir / "ours" / "change_cube.zarr"), path="change_probability")[:]
    )
    both = np.isfinite(theirs) & np.isfinite(mine)
    same_mask = bool(np.array_equal(np.isfinite(theirs), np.isfinite(mine)))
    diff = float(np.max(np.abs(theirs[both] - mine[both]))) if both.any() else float("nan")
    print(
        f"\nchange probability: max |naive - ours| = {diff:.3g} over {int(both.sum()):,} px; same nodata: {same_mask}"
    )


if __name__ == "__main__":
    main()
