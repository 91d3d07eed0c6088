"""Pipeline efficiency of the inference engine: time in model forward passes / wall time.

On one generated scene (the demo's generator, 10 m pixels) and the demo models (the demo job's
fields: the demo CACH checkpoint when :func:`pipeline.demo.demo_checkpoint` finds it, else the
CVA baseline; the spectral segmenter), the input cube is prepared once and cached under
``--workdir``. Then, for each block size / tile size / batch size / worker count asked for, the
infer stage (:func:`pipeline.infer.run_inference`, ``force=True``) runs on a fresh local cluster
and the script prints::

    efficiency = model seconds (summed over blocks) / (infer wall seconds x workers)

the share of the workers' wall time spent inside the change model and segmenter calls (1.0 would
be a pipeline that never waits on reading, blending, fusing, writing or scheduling). Right after
each run the same tile groups' model calls are timed alone (inputs in memory, same threads, plan
order: ``alone s``), and ``alone/wall`` = alone s / wall s is printed beside ``eff``: it does not
count a model call slowed by the other threads' work as useful time. One whole run
(:func:`pipeline.run.run_job` into a fresh output: discover, prepare, infer, publish) is timed
too, with the demo's own settings, for the whole-run efficiency.

Finally one block is profiled in this process, stage by stage (read with halo, model calls,
blend, fuse, write), with the same code path as :func:`pipeline.infer.compute_window`, to show
where the time that is not model time goes.

The other engine benches import :func:`prepare_inputs` and :func:`machine_header` from here.

Usage::

    .venv/bin/python bench/engine_efficiency.py --size 2048 --workdir /tmp/seg2change-bench-engine
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from pipeline.change_cube import (
    BlockGrid,
    ChangeCubeLayout,
    create_change_cube,
    write_block,
)
from pipeline.cluster import connect
from pipeline.cube import prepare_cube
from pipeline.demo import demo_checkpoint, demo_job_fields
from pipeline.discover import discover
from pipeline.engine_spec import ClusterSpec, ModelSpec, TilingSpec
from pipeline.infer import (
    blend_tiles,
    derive_layers,
    describe_input,
    fit_for_cube,
    run_inference,
    run_tiles,
    valid_pixels,
)
from pipeline.input_reader import read_window
from pipeline.models import ModelRuntime, build_models, change_model_info, get_models
from pipeline.run import run_job
from pipeline.spec import JobSpec
from pipeline.storage import Location
from pipeline.synthetic import GeneratedScene, SceneSpec, ensure_scene
from pipeline.tile_plan import TilePlan, strip_blocks
from pipeline.tiling import RampBlender, TileGrid, covering

DEFAULT_WORKDIR = Path("/tmp/seg2change-bench-engine")

#: Stages of a block, as profiled by :func:`profile_block`.
STAGES = {
    "read": "read block + halo (zarr)",
    "change": "model: change (CVA/CACH)",
    "segment": "model: segmenter",
    "stack": "cut, stack, concat tiles",
    "blend": "blend (w*p, w, divide)",
    "layers": "fuse, mask, cast layers",
    "write": "write block (zarr)",
}


@dataclass
class _Timed:
    """A model whose calls add their seconds to ``seconds`` (``method`` is the timed call)."""

    inner: Any
    method: str
    seconds: float = 0.0

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.inner, name)
        if name != self.method:
            return attribute

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return attribute(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        return timed


# --------------------------------------------------------------------------- shared helpers


def machine_header(title: str) -> str:
    """A header naming the bench, the machine, its cores and its load now."""
    try:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "n/a"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"== {title}\n"
        f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | "
        f"{cores} cores | python {platform.python_version()} | torch {torch.__version__}\n"
        f"load average (1/5/15 min) at start: {load}\n"
        f"models: change {'demo CACH checkpoint' if demo_checkpoint() else 'CVA baseline'} "
        "(demo_checkpoint() is " + ("present" if demo_checkpoint() else "absent") + "), segmenter spectral"
    )


def load_now() -> str:
    """The 1-minute load average, for printing next to a timing."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


@dataclass(frozen=True)
class Inputs:
    """A generated scene, the demo job fields for it, and its prepared input cube."""

    size: int
    scene: GeneratedScene
    fields: dict[str, Any]
    cube: Location
    prepare_seconds: float

    def job(self, output: Path, **update: Any) -> JobSpec:
        """The demo job on this scene, writing to ``output``."""
        return JobSpec.build(**{**self.fields, "output": str(output), **update})

    @property
    def area_km2(self) -> float:
        """Area of the scene in square kilometres."""
        side_m = self.size * float(self.scene.spec.resolution)
        return side_m * side_m / 1e6


def prepare_inputs(size: int, workdir: Path, *, seed: int = 0, chunk: int = 512) -> Inputs:
    """Generate (or reuse) a scene of ``size`` px and its input cube (chunked ``chunk`` px) under ``workdir``.

    The scene's items file is the catalog (no server); a cube made from the same fields and items
    is reused.
    """
    folder = workdir / f"scene-{size}"
    scene = ensure_scene(SceneSpec(size=size, seed=seed), folder / "scene")
    fields = demo_job_fields(scene, str(scene.items_path), folder / "prepared")
    fields["block_size"] = chunk
    job = JobSpec.build(**fields)
    start = time.perf_counter()
    cube = prepare_cube(job, discover(job), progress=False, reuse=True)
    return Inputs(size, scene, fields, cube.path, time.perf_counter() - start)


def models_spec(inputs: Inputs) -> ModelSpec:
    """The demo job's model spec."""
    return ModelSpec.model_validate(inputs.fields["models"])


# --------------------------------------------------------------------------- efficiency runs


@dataclass(frozen=True)
class Setting:
    """One engine configuration to time."""

    block: int
    tile: int | None
    batch: int
    workers: int
    processes: bool = True

    def cluster(self) -> ClusterSpec:
        """The local cluster: ``workers`` processes of one thread, or one process with ``workers`` threads."""
        if self.processes:
            return ClusterSpec(n_workers=self.workers, threads_per_worker=1, processes=True)
        return ClusterSpec(n_workers=1, threads_per_worker=self.workers, processes=False)


def time_inference(inputs: Inputs, setting: Setting, out: Path, *, warm: bool = False) -> dict[str, Any]:
    """Run the infer stage once with ``setting``; return its figures.

    ``warm``: the local cluster is started (and its workers' models built by a first run) before
    the timed run, which gets the ready ``Client`` -- the engine without cluster start-up.
    """
    job = inputs.job(out.parent)
    tiling = TilingSpec(tile_size=setting.tile, block_size=setting.block, batch_size=setting.batch)
    spec = setting.cluster()
    if warm:
        with connect(spec) as session:
            session.client.run(lambda: None)
            result = run_inference(
                job, inputs.cube, out, tiling=tiling, cluster=session.client, force=True, progress=False
            )
    else:
        result = run_inference(job, inputs.cube, out, tiling=tiling, cluster=spec, force=True, progress=False)
    workers = setting.workers
    cube = describe_input(inputs.cube)
    tile_size = tiling.resolve_tile_size(change_model_info(models_spec(inputs), cube.bands).tile_size)
    unique = len(TileGrid(cube.height, cube.width, tile_size, tiling.overlap))
    return {
        "redundancy": result.tiles / unique,
        "useful_eff": result.model_seconds * unique / result.tiles / (result.wall_seconds * workers),
        "wall": result.wall_seconds,
        "model": result.model_seconds,
        "task": result.task_seconds,
        "tiles": result.tiles,
        "blocks": len(result.computed),
        "eff": result.model_seconds / (result.wall_seconds * workers),
        "task_eff": result.model_seconds / result.task_seconds,
        "load": load_now(),
    }


def time_whole_run(inputs: Inputs, workdir: Path) -> tuple[float, float, float]:
    """One demo run from scratch into a fresh output; return (whole wall, infer wall, model seconds)."""
    out = workdir / "whole-run"
    shutil.rmtree(out, ignore_errors=True)
    job = inputs.job(out, block_size=inputs.fields["block_size"])
    start = time.perf_counter()
    result = run_job(job, progress=False)
    wall = time.perf_counter() - start
    return wall, result.inference.wall_seconds, result.inference.model_seconds


def resolved_tile(inputs: Inputs, tile: int | None) -> int:
    """The tile size a setting runs with (``None``: the change model's recommendation)."""
    cube = describe_input(inputs.cube)
    return TilingSpec(tile_size=tile).resolve_tile_size(
        change_model_info(models_spec(inputs), cube.bands).tile_size
    )


def fixed_overheads(inputs: Inputs, workers: int) -> tuple[float, float, float]:
    """Seconds of the per-run work outside block tasks: the baseline fit, and a cluster start + close
    with ``workers`` worker processes and with ``workers`` threads of one in-process worker."""
    cube = describe_input(inputs.cube)
    spec = models_spec(inputs)
    start = time.perf_counter()
    fit_for_cube(ModelRuntime(spec, cube.bands), cube)
    fit = time.perf_counter() - start
    starts = []
    for setting in (Setting(0, None, 1, workers, True), Setting(0, None, 1, workers, False)):
        start = time.perf_counter()
        with connect(setting.cluster()) as session:
            session.client.run(lambda: None)
        starts.append(time.perf_counter() - start)
    return fit, starts[0], starts[1]


def time_models_alone(inputs: Inputs, setting: Setting, *, repeats: int = 2) -> float:
    """Wall seconds of the scene's model calls alone: the engine's tile groups, read into memory
    beforehand, run by the engine's :func:`run_tiles` on ``setting.workers`` threads in plan order
    (torch threads as a run gets them), with nothing else: no reads, blending, writes or Dask.

    The same tiles in the same batches as a run, so the same indivisible tail: with 9 tiles on 2
    threads one thread computes 5. The best of ``repeats``.
    """
    cube = describe_input(inputs.cube)
    spec = models_spec(inputs)
    tiling = TilingSpec(block_size=setting.block, batch_size=setting.batch)
    tile_size = resolved_tile(inputs, setting.tile)
    grid = TileGrid(cube.height, cube.width, tile_size, tiling.overlap)
    blocks = BlockGrid(cube.height, cube.width, setting.block)
    plan = TilePlan(grid, blocks, strip_blocks(setting.block, tiling.strip_size))
    keys = list(dict.fromkeys(key for planned in plan.plan(blocks) for key in planned.groups))
    cores = len(os.sched_getaffinity(0))
    runtime = fit_for_cube(
        ModelRuntime(spec, cube.bands, torch_threads=max(1, cores // setting.workers)), cube
    )
    prompts = inputs.job(Path("unused")).prompts
    assert prompts is not None
    prompt_set = prompts.prompt_set()
    groups = []
    for key in keys:
        tiles = plan.tiles_of(key)
        halo = covering(tiles)
        groups.append((read_window(str(cube.path), halo), halo, tiles))

    def run_group(group: tuple[Any, Any, Any]) -> None:
        data, halo, tiles = group
        run_tiles(data, halo, tiles, models=get_models(runtime), prompts=prompt_set, batch_size=setting.batch)

    best = float("inf")
    with ThreadPoolExecutor(setting.workers) as pool:
        for _ in range(repeats):
            start = time.perf_counter()
            list(pool.map(run_group, groups))
            best = min(best, time.perf_counter() - start)
    return best


# --------------------------------------------------------------------------- one block, stage by stage


def profile_block(inputs: Inputs, *, block: int, tile: int | None, batch: int, out: Path) -> dict[str, float]:
    """Time the stages of one interior block in this process (same steps as ``compute_window``)."""
    cube = describe_input(inputs.cube)
    spec = models_spec(inputs)
    info = change_model_info(spec, cube.bands)
    tiling = TilingSpec(tile_size=tile, block_size=block, batch_size=batch)
    tile_size = tiling.resolve_tile_size(info.tile_size)
    grid = TileGrid(cube.height, cube.width, tile_size, tiling.overlap)
    blocks = BlockGrid(cube.height, cube.width, block)
    blender = RampBlender(tiling.overlap, tiling.window)
    runtime = fit_for_cube(ModelRuntime(spec, cube.bands, torch_threads=None), cube)
    models = build_models(runtime)
    prompts = inputs.job(out.parent).prompts
    assert prompts is not None
    prompt_set = prompts.prompt_set()
    shutil.rmtree(out, ignore_errors=True)
    layout = ChangeCubeLayout(
        blocks, prompt_set.labels, prompt_set.targets, inputs.job(out.parent).zarr_format
    )
    create_change_cube(out, layout, y=cube.y, x=cube.x, crs=cube.crs, transform=cube.transform, attrs={})
    row, col = blocks.shape[0] // 2, blocks.shape[1] // 2
    t: dict[str, float] = {}
    window = blocks.window(row, col)
    halo = grid.halo(window)
    tiles = grid.tiles_intersecting(window)
    # Warm the models once (first calls allocate), then time.
    for _ in range(2):
        change, segment = _Timed(models.change, "predict"), _Timed(models.segmenter, "segment")
        timed_models = replace(models, change=change, segmenter=segment)
        s = time.perf_counter()
        data = read_window(str(cube.path), halo)
        t["read"] = time.perf_counter() - s
        s = time.perf_counter()
        outputs, _ = run_tiles(data, halo, tiles, models=timed_models, prompts=prompt_set, batch_size=batch)
        t["change"], t["segment"] = change.seconds, segment.seconds
        t["stack"] = time.perf_counter() - s - change.seconds - segment.seconds
        s = time.perf_counter()
        blended = blend_tiles(window, tiles, outputs, blender=blender)
        t["blend"] = time.perf_counter() - s
        s = time.perf_counter()
        layers = derive_layers(blended, valid_pixels(data, window.relative_to(halo), models), prompt_set)
        t["layers"] = time.perf_counter() - s
        s = time.perf_counter()
        write_block(out, window, (row, col), layers)
        t["write"] = time.perf_counter() - s
        t["tiles"] = float(len(tiles))
    return t


# --------------------------------------------------------------------------- main


def quiet() -> None:
    """Silence library warnings and Dask's shutdown chatter in the printed tables."""
    warnings.filterwarnings("ignore")
    logging.getLogger("distributed").setLevel(logging.CRITICAL)


def main() -> None:
    quiet()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=2048, help="scene side in pixels (10 m)")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--blocks", type=int, nargs="+", default=[1024, 2048], help="block sizes to try")
    parser.add_argument(
        "--tiles",
        type=int,
        nargs="+",
        default=[None],
        help="tile sizes to try (default: the change model's own, 504 for CACH, 512 for the CVA baseline)",
    )
    parser.add_argument("--batches", type=int, nargs="+", default=[8], help="tiles per model call to try")
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1], help="worker processes (or threads) to try"
    )
    parser.add_argument(
        "--processes",
        choices=["yes", "no", "both"],
        default="yes",
        help="workers as processes (yes), as threads of one in-process worker (no), or both",
    )
    parser.add_argument(
        "--warm",
        choices=["no", "also", "only"],
        default="also",
        help="time on an already started cluster too",
    )
    parser.add_argument("--no-whole-run", action="store_true", help="skip the timed whole run")
    parser.add_argument(
        "--no-alone", action="store_true", help="skip timing the model calls alone (alone s, alone/wall)"
    )
    parser.add_argument("--target", type=float, default=0.8)
    args = parser.parse_args()

    print(machine_header("engine efficiency: model time / wall time"), flush=True)
    inputs = prepare_inputs(args.size, args.workdir)
    print(
        f"scene {args.size} x {args.size} px at 10 m ({inputs.area_km2:.1f} km^2), cube {inputs.cube} "
        f"(prepare {inputs.prepare_seconds:.1f} s, reused if ~0)\n",
        flush=True,
    )
    settings = [
        Setting(b, t, n, w, p)
        for b in args.blocks
        for t in args.tiles
        for n in args.batches
        for w in args.workers
        for p in {"yes": [True], "no": [False], "both": [True, False]}[args.processes]
    ]
    modes = {"no": [False], "also": [False, True], "only": [True]}[args.warm]
    header = (
        f"{'block':>6} {'tile':>5} {'batch':>5} {'wrk':>4} {'kind':>7} {'blocks':>6} {'tiles':>6} {'wall s':>7} "
        f"{'model s':>8} {'task s':>7} {'eff':>6} {'model/task':>10} {'redund':>6} {'useful':>6} {'cluster':>7} "
        f"{'load1':>6} {'alone s':>7} {'alone/wall':>10}  >= target (eff, alone/wall)"
    )
    print(header)
    rows = []
    for setting, warm in ((x, w) for x in settings for w in modes):
        r = time_inference(inputs, setting, args.workdir / "efficiency" / "change_cube.zarr", warm=warm)
        # Timed right after its run: this machine's speed drifts by 20 % over minutes.
        alone = float("nan") if args.no_alone else time_models_alone(inputs, setting, repeats=1)
        ratio = alone / r["wall"]
        rows.append((setting, r))
        print(
            f"{setting.block:>6} {resolved_tile(inputs, setting.tile):>5} {setting.batch:>5} {setting.workers:>4} "
            f"{'process' if setting.processes else 'thread':>7} "
            f"{r['blocks']:>6} {r['tiles']:>6} {r['wall']:>7.2f} {r['model']:>8.2f} {r['task']:>7.2f} "
            f"{r['eff']:>6.2f} {r['task_eff']:>10.2f} {r['redundancy']:>6.2f} {r['useful_eff']:>6.2f} "
            f"{'warm' if warm else 'cold':>7} {r['load']:>6} {alone:>7.2f} {ratio:>10.2f}  "
            f"{'yes' if r['eff'] >= args.target else 'no'}, {'yes' if ratio >= args.target else 'no'}",
            flush=True,
        )
    print(
        "eff = model s / (wall s x workers); model/task = model s / block-task s (excludes scheduling);\n"
        "alone s = wall time of the same tile groups' model calls alone (inputs in memory, same threads, plan "
        "order, timed right after the run);\nalone/wall = alone s / wall s: the share of the run's wall time the model calls "
        "by themselves need;\n"
        "wrk = workers (kind process: one process each; thread: threads of one in-process worker);\n"
        "redund = tiles computed / tiles in the grid (1.00 = each tile once; strip seams add some);\n"
        "useful = eff / redund (model time on distinct tiles only);\n"
        "cold = run_inference starts and closes its LocalCluster inside the timed wall; warm = it gets a "
        "Client started before the timing"
    )

    if not args.no_whole_run:
        wall, infer_wall, model = time_whole_run(inputs, args.workdir)
        demo_cluster = ClusterSpec.model_validate(inputs.fields.get("cluster", {}))
        workers, threads = demo_cluster.local_layout(len(os.sched_getaffinity(0)))
        slots = workers * threads
        print(
            f"\nwhole run (discover+prepare+infer+publish, demo settings: block {inputs.fields['block_size']}, "
            f"cluster {demo_cluster.model_dump(exclude_defaults=True)}): {wall:.1f} s, infer {infer_wall:.1f} s, "
            f"model {model:.1f} s -> model / (whole wall x {slots}) = {model / (wall * slots):.2f}, "
            f"model / (infer wall x {slots}) = {model / (infer_wall * slots):.2f} (load1 {load_now()})",
            flush=True,
        )

    fit, start_processes, start_threads = fixed_overheads(inputs, max(args.workers))
    print(
        f"\nfixed per-run costs outside the block tasks (measured apart, load1 {load_now()}): fit of the CVA "
        f"baseline (sample + fit, in the client) {fit:.2f} s; start + close a LocalCluster of "
        f"{max(args.workers)} worker process(es) {start_processes:.2f} s, of one in-process worker with "
        f"{max(args.workers)} thread(s) {start_threads:.2f} s",
        flush=True,
    )

    best = max(rows, key=lambda x: x[1]["eff"])[0]
    prof = profile_block(
        inputs, block=best.block, tile=best.tile, batch=best.batch, out=args.workdir / "profile" / "cube.zarr"
    )
    total = sum(v for k, v in prof.items() if k != "tiles")
    print(
        f"\none interior block profiled in-process (block {best.block}, tile {resolved_tile(inputs, best.tile)}, "
        f"batch {best.batch}, {int(prof['tiles'])} tiles, torch threads {torch.get_num_threads()}, "
        f"load1 {load_now()}):"
    )
    print(f"{'stage':>28} {'s':>7} {'share':>6}")
    for key, name in STAGES.items():
        print(f"{name:>28} {prof[key]:>7.3f} {prof[key] / total:>6.1%}")
    print(f"{'total':>28} {total:>7.3f} {1:>6.1%}")


if __name__ == "__main__":
    main()
