"""Tiled distributed inference: chunking invariance, nodata, the change cube layout, refusals, GPU resources.

Every test makes its own small input cube (classes with typical Sentinel-2 reflectances, some of
them changed, clouds on each date, a nodata row) and runs the classical CVA baseline with the
spectral segmenter, which need no weights.
"""

from __future__ import annotations

import importlib.metadata
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
import zarr
from affine import Affine
from dask.typing import Key
from distributed import Client, LocalCluster, Scheduler
from distributed.diagnostics.plugin import SchedulerPlugin
from engine_inputs import PROMPTS, engine_job, patch_reflectance, write_reflectance_cube

import pipeline.block_tasks
import pipeline.infer
import pipeline.models
from pipeline.change_cube import TRANSITION_NO_CHANGE, TRANSITION_NODATA, BlockGrid, open_change_cube
from pipeline.cluster import connect
from pipeline.cube import describe_input, open_cube
from pipeline.cube_fit import sample_pixels
from pipeline.demo import demo_checkpoint
from pipeline.engine_spec import ClusterSpec, ModelSpec, PromptSpec, TilingSpec
from pipeline.errors import (
    ChangeCubeMismatchError,
    ClusterError,
    InferenceError,
    JobSpecError,
    OutputExistsError,
)
from pipeline.infer import InferenceResult, run_inference
from pipeline.models import LoadedModels, ModelRuntime, build_models, fit_change_model
from pipeline.spec import JobSpec
from pipeline.tile_kernel import infer_array, predict_fixed_batches
from pipeline.tile_plan import TilePlan, strip_blocks
from pipeline.tiling import BlendAccumulator, RampBlender, TileGrid, Window
from seg2change_core.baselines import CVABaseline
from seg2change_core.fusion import fuse


def make_cube(path: Path, height: int, width: int, *, chunk: int, seed: int = 0) -> Path:
    """Write a two-date cube of ``height x width`` pixels with changes, clouds and nodata."""
    clouds = (
        (0, slice(height // 3, height // 3 + 40), slice(width // 4, width // 4 + 60)),
        (1, slice(height // 2, height // 2 + 30), slice(width // 2, width // 2 + 90)),
    )
    refl = patch_reflectance(height, width, seed=seed, change_fraction=0.2, gaps=clouds)
    refl[1, 2, 0, 0] = np.nan  # one band missing at a corner pixel
    return write_reflectance_cube(path, refl, chunk=chunk)


def reference(
    cube_path: Path, tiling: TilingSpec, models: ModelSpec | None = None, prompts: PromptSpec = PROMPTS
) -> dict[str, np.ndarray]:
    """Single-process run on the whole array in memory (the baseline fitted once, as the engine does).

    It runs with the workers' one torch thread (see ``clients``): a convolutional model's float32
    kernels differ by ~1e-6 between thread counts, which is not what these tests are about.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _reference(cube_path, tiling, models, prompts)
    finally:
        torch.set_num_threads(threads)


def _reference(
    cube_path: Path, tiling: TilingSpec, models: ModelSpec | None, prompts: PromptSpec
) -> dict[str, np.ndarray]:
    models = models or ModelSpec()
    cube = describe_input(cube_path)
    runtime = ModelRuntime(models, cube.bands)
    before, after = sample_pixels(
        cube, windows=models.fit_blocks, max_pixels=models.fit_pixels, seed=models.seed
    )
    loaded = build_models(fit_change_model(runtime, before, after))
    reflectance = open_cube(cube_path)["reflectance"].values
    assert tiling.tile_size is not None
    grid = TileGrid(cube.height, cube.width, tiling.tile_size, tiling.overlap)
    layers = infer_array(
        reflectance,
        models=loaded,
        prompts=prompts.prompt_set(),
        grid=grid,
        blender=RampBlender(tiling.overlap, tiling.window),
        batch_size=tiling.batch_size,
    )
    return dict(layers.items())


LAYERS = ("change_probability", "change", "class_before", "class_after", "transition", "target_change")


def array(path: Path, name: str) -> zarr.Array:
    return zarr.open_array(str(path), path=name, mode="r")


def read_layers(path: Path) -> dict[str, np.ndarray]:
    return {name: np.asarray(array(path, name)[...]) for name in LAYERS}


def assert_same(result: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    np.testing.assert_allclose(
        result["change_probability"], expected["change_probability"], rtol=0, atol=1e-6, equal_nan=True
    )
    for name in ("change", "class_before", "class_after", "transition", "target_change"):
        assert result[name].dtype == expected[name].dtype, name
        np.testing.assert_array_equal(result[name], expected[name], err_msg=name)


@pytest.fixture(scope="module")
def cube(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cube(tmp_path_factory.mktemp("cube") / "input_cube.zarr", 1100, 900, chunk=256)


SMALL_TILING = TilingSpec(tile_size=128, overlap=32, batch_size=4)


@pytest.fixture(scope="module")
def small_reference(cube: Path) -> dict[str, np.ndarray]:
    return reference(cube, SMALL_TILING)


def run_small(tmp_path: Path, cube: Path, out: Path, cluster: ClusterSpec) -> InferenceResult:
    """The placeholder job on ``cube`` into ``out`` with the small tiling and :data:`PROMPTS`."""
    return run_inference(
        engine_job(tmp_path), cube, out, tiling=SMALL_TILING, cluster=cluster, prompts=PROMPTS, progress=False
    )


@pytest.fixture(scope="module")
def clients() -> Iterator[dict[int, ClusterSpec]]:
    """Running clusters of one and two worker processes, joined by address (one torch thread each:
    the test machines' two cores are shared)."""
    with (
        LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as one,
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as two,
    ):
        yield {
            n: ClusterSpec(address=cluster.scheduler_address, torch_threads=1)
            for n, cluster in ((1, one), (2, two))
        }


@pytest.mark.parametrize(
    ("block", "workers", "strip"),
    [(256, 2, None), (256, 2, 512), (512, 1, None), (1024, 2, None), (1024, 1, None)],
)
def test_chunking_invariance_blocks_and_workers_match_the_in_memory_reference(
    tmp_path: Path,
    cube: Path,
    small_reference: dict[str, np.ndarray],
    clients: dict[int, ClusterSpec],
    block: int,
    workers: int,
    strip: int | None,
) -> None:
    out = tmp_path / "change.zarr"
    tiling = SMALL_TILING.model_copy(update={"block_size": block, "strip_size": strip})
    result = run_inference(
        engine_job(tmp_path),
        cube,
        out,
        tiling=tiling,
        cluster=clients[workers],
        prompts=PROMPTS,
        progress=False,
    )
    n_blocks = -(-1100 // block) * -(-900 // block)
    assert result.blocks == n_blocks and len(result.computed) == n_blocks and result.skipped == ()
    assert array(out, "change_probability").chunks == (block, block)
    assert_same(read_layers(out), small_reference)
    # Each tile is computed once; strips compute the tiles at their seams once more.
    grid = TileGrid(1100, 900, 128, 32)
    plan = TilePlan(grid, BlockGrid(1100, 900, block), strip_blocks(block, strip))
    assert result.tiles == plan.tile_computations(BlockGrid(1100, 900, block))
    assert (result.tiles == len(grid)) == (plan.strip_blocks >= -(-900 // block))


def test_cach_checkpoint_is_chunking_invariant(tmp_path: Path, clients: dict[int, ClusterSpec]) -> None:
    """The learned model too: every block size and worker count gives the in-memory result within 1e-6."""
    checkpoint = demo_checkpoint()
    if checkpoint is None:
        pytest.skip("the demo CACH checkpoint is absent (seg2change make-demo-checkpoint writes it)")
    models = ModelSpec(checkpoint=str(checkpoint))
    tiling = TilingSpec(tile_size=252, overlap=32)
    cube = make_cube(tmp_path / "cube.zarr", 600, 500, chunk=256, seed=5)
    expected = reference(cube, tiling, models=models)
    for block, workers in ((256, 2), (512, 1)):
        out = tmp_path / f"change-{block}.zarr"
        run_inference(
            engine_job(tmp_path),
            cube,
            out,
            models=models,
            tiling=tiling.model_copy(update={"block_size": block}),
            cluster=clients[workers],
            prompts=PROMPTS,
            progress=False,
        )
        assert_same(read_layers(out), expected)


def test_the_change_model_always_sees_one_batch_size() -> None:
    """A model whose kernels depend on the batch size gives a tile the same result in any batch."""

    class BatchSizeShows:
        def predict(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
            return (before[:, :1] - after[:, :1]) + before.shape[0]

    before = torch.arange(5, dtype=torch.float32).view(5, 1, 1, 1).expand(5, 2, 3, 4)
    after = torch.zeros(5, 2, 3, 4)
    for size in (1, 2, 4, 8):
        out = predict_fixed_batches(BatchSizeShows(), before, after, size)  # type: ignore[arg-type]
        assert out.shape == (5, 1, 3, 4)
        np.testing.assert_array_equal(out[:, 0, 0, 0].numpy(), np.arange(5) + size)


def test_reference_equals_a_naive_whole_array_blend(
    cube: Path, small_reference: dict[str, np.ndarray]
) -> None:
    """An independent check of the engine's blending: tile the whole array, blend, fuse."""
    refl = open_cube(cube)["reflectance"].values
    info = describe_input(cube)
    models = ModelSpec()
    before, after = sample_pixels(info, windows=models.fit_blocks, max_pixels=models.fit_pixels, seed=0)
    loaded = build_models(fit_change_model(ModelRuntime(models, info.bands), before, after))
    assert isinstance(loaded.change, CVABaseline) and loaded.change.fitted is not None
    prompts = PROMPTS.prompt_set()
    grid = TileGrid(1100, 900, 128, 32)
    whole = Window(0, 1100, 0, 900)
    acc = BlendAccumulator(whole, 1 + 2 * prompts.num_classes, RampBlender(32))
    for tile in grid:
        b = torch.from_numpy(refl[(0, slice(None), *tile.window.slices)])[None]
        a = torch.from_numpy(refl[(1, slice(None), *tile.window.slices)])[None]
        p = loaded.change.predict(b, a)
        cb, ca = loaded.segmenter.segment(b, prompts), loaded.segmenter.segment(a, prompts)
        acc.add(tile, torch.cat([p, cb, ca], dim=1)[0].numpy())
    blended = acc.result()
    valid = np.isfinite(refl).all(axis=(0, 1))
    expected = np.where(valid, blended[0], np.nan)
    np.testing.assert_allclose(
        small_reference["change_probability"], expected, rtol=0, atol=1e-6, equal_nan=True
    )
    k = prompts.num_classes
    fused = fuse(
        torch.from_numpy(blended[None, :1]),
        torch.from_numpy(blended[None, 1 : 1 + k]),
        torch.from_numpy(blended[None, 1 + k :]),
        prompts,
    )
    np.testing.assert_array_equal(
        small_reference["class_after"][valid], fused.class_after[0, 0].numpy()[valid]
    )
    # The classes are found and changes detected, so the comparison is not vacuous.
    assert len(np.unique(small_reference["class_before"][valid])) >= 4
    assert 0.05 < small_reference["change"][valid].mean() < 0.5


def test_nodata_on_either_date_gives_nodata_in_every_layer(
    cube: Path, small_reference: dict[str, np.ndarray]
) -> None:
    refl = open_cube(cube)["reflectance"].values
    invalid = ~np.isfinite(refl).all(axis=(0, 1))
    assert invalid[-1].all() and invalid[0, 0] and invalid[1100 // 3 + 5, 900 // 4 + 5] and invalid[560, 460]
    layers = small_reference
    assert np.isnan(layers["change_probability"][invalid]).all()
    assert np.isfinite(layers["change_probability"][~invalid]).all()
    for name in ("change", "class_before", "class_after"):
        assert (layers[name][invalid] == 255).all() and (layers[name][~invalid] != 255).all()
    assert (layers["transition"][invalid] == TRANSITION_NODATA).all()
    assert (layers["target_change"][:, invalid] == 255).all()
    unchanged = ~invalid & (layers["change"] == 0)
    assert (layers["transition"][unchanged] == TRANSITION_NO_CHANGE).all()
    changed = ~invalid & (layers["change"] == 1)
    k = PROMPTS.prompt_set().num_classes
    np.testing.assert_array_equal(
        layers["transition"][changed], layers["class_before"][changed] * k + layers["class_after"][changed]
    )


def test_change_cube_is_georeferenced_consolidated_and_records_the_job(
    tmp_path: Path, cube: Path, clients: dict[int, ClusterSpec]
) -> None:
    out = tmp_path / "change.zarr"
    job = engine_job(tmp_path)
    with Client(clients[2].address) as client:  # a ready client is used and left open
        run_inference(job, cube, out, tiling=SMALL_TILING, cluster=client, prompts=PROMPTS, progress=False)
        assert client.status == "running"
    ds = open_change_cube(out)
    source = open_cube(cube)
    assert ds.rio.crs == source.rio.crs
    assert ds.rio.transform() == source.rio.transform()
    np.testing.assert_array_equal(ds["y"].values, source["y"].values)
    assert list(ds["target"].values) == ["water", "building"]
    assert "wkt" in dict(array(out, "change").attrs["_CRS"])  # type: ignore[arg-type]
    assert array(out, "class_before").attrs["flag_meanings"] == "background water forest building bare_soil"
    attrs = dict(zarr.open_group(str(out), mode="r").attrs)
    assert attrs["complete"] is True
    assert JobSpec.model_validate_json(str(attrs["job"])) == job
    models = json.loads(str(attrs["models"]))
    assert models[0]["name"] == "cva-otsu-baseline" and models[0]["sha256"] == "none"
    assert models[1]["name"] == "spectral"
    assert attrs["software_version"] == importlib.metadata.version("seg2change")
    assert zarr.open_consolidated(str(out), mode="r").attrs["complete"] is True
    assert array(out, "transition").dtype == np.uint16
    assert array(out, "target_change").shape == (2, 1100, 900)


def test_zarr_v2_output_when_the_job_asks(
    tmp_path: Path, cube: Path, clients: dict[int, ClusterSpec], small_reference: dict[str, np.ndarray]
) -> None:
    out = tmp_path / "change.zarr"
    run_inference(
        engine_job(tmp_path, zarr_format=2),
        cube,
        out,
        tiling=SMALL_TILING.model_copy(update={"block_size": 512}),
        cluster=clients[2],
        prompts=PROMPTS,
        progress=False,
    )
    assert (out / ".zmetadata").is_file() and not (out / "zarr.json").exists()
    assert_same(read_layers(out), small_reference)
    assert open_change_cube(out).rio.crs is not None
    # GDAL (rasterio's own, older than 3.11) reads v2 cubes in the right place, with their nodata.
    for name, nodata in (("change_probability", None), ("class_before", 255), ("transition", 65535)):
        with rasterio.open(f'ZARR:"{out}":/{name}') as src:
            assert src.crs.to_epsg() == 32633
            assert src.transform == Affine(10, 0, 400_000, 0, -10, 5_000_000)
            assert np.isnan(src.nodata) if nodata is None else src.nodata == nodata
            np.testing.assert_array_equal(src.read(1), small_reference[name])


def test_finished_job_is_not_recomputed_and_other_jobs_are_refused(
    tmp_path: Path, cube: Path, clients: dict[int, ClusterSpec]
) -> None:
    out = tmp_path / "change.zarr"
    job = engine_job(tmp_path)
    tiling = SMALL_TILING.model_copy(update={"block_size": 512})
    first = run_inference(job, cube, out, tiling=tiling, cluster=clients[2], prompts=PROMPTS, progress=False)
    stamp = (out / "change_probability" / "c" / "0" / "0").stat().st_mtime_ns

    again = run_inference(job, cube, out, tiling=tiling, cluster=clients[2], prompts=PROMPTS, progress=False)
    assert again.computed == () and len(again.skipped) == first.blocks
    assert (out / "change_probability" / "c" / "0" / "0").stat().st_mtime_ns == stamp

    other = PromptSpec.build(classes="water;forest")
    with pytest.raises(ChangeCubeMismatchError, match=r"differs in: prompts.*force=True"):
        run_inference(job, cube, out, tiling=tiling, cluster=clients[2], prompts=other, progress=False)
    with pytest.raises(ChangeCubeMismatchError, match="tiling"):
        run_inference(
            job,
            cube,
            out,
            tiling=tiling.model_copy(update={"overlap": 16}),
            cluster=clients[2],
            prompts=PROMPTS,
            progress=False,
        )
    assert (out / "change_probability" / "c" / "0" / "0").stat().st_mtime_ns == stamp

    forced = run_inference(
        job, cube, out, tiling=tiling, cluster=clients[2], prompts=other, force=True, progress=False
    )
    assert len(forced.computed) == forced.blocks
    assert list(open_change_cube(out)["target"].values) == ["water", "forest"]


def test_a_foreign_output_is_refused_and_kept(
    tmp_path: Path, cube: Path, clients: dict[int, ClusterSpec]
) -> None:
    out = tmp_path / "change.zarr"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(OutputExistsError, match="not a seg2change change cube"):
        run_small(tmp_path, cube, out, clients[1])
    assert (out / "precious.txt").read_text() == "keep me"


def test_block_errors_name_the_block_and_model_errors_keep_their_message(
    tmp_path: Path, cube: Path, clients: dict[int, ClusterSpec]
) -> None:
    with pytest.raises(JobSpecError, match="no classes to look for"):
        run_inference(
            engine_job(tmp_path),
            cube,
            tmp_path / "a.zarr",
            tiling=SMALL_TILING,
            cluster=clients[1],
            progress=False,
        )
    # The spectral segmenter lacks evidence for 'lava': its own message reaches the caller.
    with pytest.raises(Exception, match="no evidence for class 'lava'"):
        run_inference(
            engine_job(tmp_path),
            cube,
            tmp_path / "b.zarr",
            tiling=SMALL_TILING,
            cluster=clients[1],
            prompts=PromptSpec.build(classes="water;lava"),
            progress=False,
        )
    models = ModelSpec(change_bands=("red", "rededge071"))
    with pytest.raises(InferenceError, match="add rededge071 to the job's bands"):
        run_inference(
            engine_job(tmp_path),
            cube,
            tmp_path / "c.zarr",
            models=models,
            tiling=SMALL_TILING,
            cluster=clients[1],
            prompts=PROMPTS,
            progress=False,
        )


def test_a_change_cube_the_workers_cannot_create_is_named_and_nothing_is_written(
    tmp_path: Path, cube: Path, clients: dict[int, ClusterSpec], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cube is created by a task on the cluster: its failure must reach the caller as such."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise OSError("read-only file system")

    monkeypatch.setattr(pipeline.infer, "create_change_cube", refuse)
    out = tmp_path / "a.zarr"
    with pytest.raises(InferenceError, match=r"cannot create the change cube .*read-only file system"):
        run_small(tmp_path, cube, out, clients[1])
    assert not out.exists()


def test_models_are_built_once_per_worker_process(
    tmp_path: Path, cube: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    builds: list[str] = []
    real = pipeline.models.build_models

    def counting(runtime: ModelRuntime) -> LoadedModels:
        builds.append(runtime.key())
        return real(runtime)

    monkeypatch.setattr(pipeline.models, "build_models", counting)
    pipeline.models.clear_model_cache()
    # Two worker threads in this process: both share the one process-wide cache.
    cluster = ClusterSpec(n_workers=1, threads_per_worker=2, processes=False)
    tiling = SMALL_TILING.model_copy(update={"block_size": 256})
    kwargs: dict[str, Any] = {"tiling": tiling, "cluster": cluster, "prompts": PROMPTS, "progress": False}
    first = run_inference(engine_job(tmp_path), cube, tmp_path / "a.zarr", **kwargs)
    second = run_inference(engine_job(tmp_path), cube, tmp_path / "b.zarr", **kwargs)
    assert len(first.computed) == len(second.computed) == 20
    assert len(builds) == 1
    pipeline.models.clear_model_cache()


def test_every_task_and_the_run_hand_freed_memory_back(
    tmp_path: Path, cube: Path, small_reference: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Worker threads free tile outputs and blocks in their own malloc heaps, which keep the pages
    (the client of a 10,980 px run held 2.6 GB): each tile group and block task, and the run at its
    end, hand them back, and the result is the same."""
    calls: list[str] = []
    lock = threading.Lock()

    def spy(where: str) -> Any:
        def release() -> None:
            with lock:
                calls.append(where)

        return release

    monkeypatch.setattr(pipeline.block_tasks, "release_freed_memory", spy("task"))
    monkeypatch.setattr(pipeline.infer, "release_freed_memory", spy("run"))
    cluster = ClusterSpec(n_workers=1, threads_per_worker=2, processes=False)
    out = tmp_path / "a.zarr"
    result = run_small(tmp_path, cube, out, cluster)
    assert_same(read_layers(out), small_reference)
    blocks = BlockGrid(1100, 900, 256)
    plan = TilePlan(TileGrid(1100, 900, 128, 32), blocks, strip_blocks(256))
    groups = {g for planned in plan.plan(list(blocks)) for g in planned.groups}
    assert calls.count("task") == len(result.computed) + len(groups)
    assert calls[-1] == "run" and calls.count("run") == 1


def test_every_worker_thread_runs_torch_with_the_runtimes_threads(cube: Path) -> None:
    """torch's intra-op thread count belongs to the calling thread: each worker thread sets its own."""
    runtime = ModelRuntime(ModelSpec(), describe_input(cube).bands, fit=(0.1, 1.0), torch_threads=1)
    seen: list[int] = []

    def work() -> None:
        torch.set_num_threads(2)  # whatever the thread had before
        pipeline.models.get_models(runtime)
        seen.append(torch.get_num_threads())

    for _ in range(2):
        thread = threading.Thread(target=work)
        thread.start()
        thread.join()
    assert seen == [1, 1]


def test_the_model_build_runs_beside_the_task_that_started_it(
    cube: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task starts the build, reads its input meanwhile, then waits; other threads share the one build."""
    runtime = ModelRuntime(ModelSpec(), describe_input(cube).bands, fit=(0.1, 1.0), torch_threads=1)
    release = threading.Event()
    builders: list[str] = []
    real = pipeline.models.build_models

    def slow(runtime: ModelRuntime) -> LoadedModels:
        builders.append(threading.current_thread().name)
        assert release.wait(10)
        return real(runtime)

    monkeypatch.setattr(pipeline.models, "build_models", slow)
    pipeline.models.clear_model_cache()
    try:
        pending = pipeline.models.start_building(runtime)
        assert not pending.done()  # the caller goes on (to its read) while the build runs
        got: list[LoadedModels] = []
        waiter = threading.Thread(target=lambda: got.append(pipeline.models.get_models(runtime)))
        waiter.start()
        assert pipeline.models.start_building(runtime) is pending  # one build, whoever asks
        release.set()
        waiter.join(10)
        assert got == [pending.result()]
        assert builders == ["seg2change-build-models"]
        assert pipeline.models.get_models(runtime) is got[0]  # cached from now on
    finally:
        release.set()
        pipeline.models.clear_model_cache()


def test_a_failed_model_build_fails_its_waiters_and_is_tried_again(
    cube: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = ModelRuntime(ModelSpec(), describe_input(cube).bands, fit=(0.1, 1.0), torch_threads=1)
    real = pipeline.models.build_models
    calls: list[int] = []

    def flaky(runtime: ModelRuntime) -> LoadedModels:
        calls.append(1)
        if len(calls) == 1:
            raise InferenceError("weights file went away")
        return real(runtime)

    monkeypatch.setattr(pipeline.models, "build_models", flaky)
    pipeline.models.clear_model_cache()
    try:
        with pytest.raises(InferenceError, match="weights file went away"):
            pipeline.models.get_models(runtime)
        assert isinstance(pipeline.models.get_models(runtime).change, CVABaseline)
        assert len(calls) == 2
    finally:
        pipeline.models.clear_model_cache()


def test_local_cluster_layout_defaults_to_threads_sharing_the_cores() -> None:
    assert ClusterSpec().local_layout(8) == (1, 8)
    assert ClusterSpec(n_workers=2).local_layout(8) == (2, 4)
    assert ClusterSpec(processes=True).local_layout(8) == (8, 1)
    assert ClusterSpec(processes=True, threads_per_worker=2).local_layout(8) == (4, 2)
    assert ClusterSpec(threads_per_worker=3).local_layout(1) == (1, 3)
    assert ClusterSpec().local_layout(1) == (1, 1)


def test_specs_name_the_fix() -> None:
    with pytest.raises(JobSpecError, match="overlap 100 exceeds half the tile"):
        TilingSpec.build(tile_size=128, overlap=100)
    with pytest.raises(JobSpecError, match="unknown segmenter 'sam'; use one of"):
        ModelSpec.build(segmenter="sam")
    with pytest.raises(JobSpecError, match="is not an existing file"):
        ModelSpec.build(checkpoint="/nonexistent/model.safetensors")
    with pytest.raises(JobSpecError, match="drop n_workers or the address"):
        ClusterSpec.build(address="tcp://127.0.0.1:8786", n_workers=2)
    with pytest.raises(JobSpecError, match="not among the classes"):
        PromptSpec.build(classes="water;forest", targets="building")
    with pytest.raises(JobSpecError, match="block_size must be at least 64"):
        TilingSpec.build(block_size=32)
    assert PromptSpec.build(classes=["water", ["tree", "forest"]]).classes == ("water", "tree,forest")


def test_gpu_models_run_without_tf32() -> None:
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        pipeline.models.use_exact_float32()
        assert torch.backends.cuda.matmul.allow_tf32 is False and torch.backends.cudnn.allow_tf32 is False
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_gpu_jobs_request_the_gpu_resource(
    tmp_path: Path, cube: Path, small_reference: dict[str, np.ndarray]
) -> None:
    """Model tasks ask for GPU=1 (blocks do not): they run on workers advertising it and are refused
    where none does."""
    with (
        LocalCluster(n_workers=1, processes=False, dashboard_address=None) as plain,
        pytest.raises(ClusterError, match="--resources GPU=1"),
        connect(ClusterSpec(address=plain.scheduler_address, gpu=True)),
    ):
        pass
    with LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None, resources={"GPU": 1}
    ) as gpu_like:
        out = tmp_path / "change.zarr"
        seen: list[object] = []
        gpu_like.scheduler.add_plugin(_RecordResources(seen))
        run_inference(
            engine_job(tmp_path),
            cube,
            out,
            models=ModelSpec(device="cuda" if torch.cuda.is_available() else "auto"),
            tiling=SMALL_TILING.model_copy(update={"block_size": 512}),
            cluster=ClusterSpec(address=gpu_like.scheduler_address, gpu=True),
            prompts=PROMPTS,
            progress=False,
        )
        assert {kind for kind, _ in seen} == {"block", "tiles"}
        assert all(r == {"GPU": 1} for kind, r in seen if kind == "tiles")
        assert not any(r for kind, r in seen if kind == "block")
        assert_same(read_layers(out), small_reference)
    if not torch.cuda.is_available():
        with pytest.raises(ClusterError, match="no CUDA device is visible"), connect(ClusterSpec(gpu=True)):
            pass


def test_only_the_last_blocks_wait_for_the_final_groups(
    tmp_path: Path, cube: Path, small_reference: dict[str, np.ndarray]
) -> None:
    """The gate holding back the row before the last depends on a few groups, not on all of them
    (which would keep every group's result in memory to the end)."""
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        seen: dict[str, set[str]] = {}
        cluster.scheduler.add_plugin(_RecordDependencies(seen))
        out = tmp_path / "change.zarr"
        run_inference(
            engine_job(tmp_path),
            cube,
            out,
            tiling=SMALL_TILING.model_copy(update={"block_size": 256}),
            cluster=ClusterSpec(address=cluster.scheduler_address),
            prompts=PROMPTS,
            progress=False,
        )
        assert_same(read_layers(out), small_reference)
    (gate,) = (key for key in seen if key.startswith("infer-gate-"))
    assert len(seen[gate]) == 2 and all(d.startswith("infer-tiles-") for d in seen[gate])
    gated = {(int(key.split("-")[2]), int(key.split("-")[3])) for key, deps in seen.items() if gate in deps}
    rows, cols = BlockGrid(1100, 900, 256).shape
    assert {(rows - 2, cols - 2), (rows - 2, cols - 1)} <= gated
    assert all(row >= rows - 2 for row, _ in gated)


class _RecordDependencies(SchedulerPlugin):
    """Scheduler plugin recording the dependencies of inference tasks."""

    name = "record-dependencies"

    def __init__(self, seen: dict[str, set[str]]) -> None:
        self.seen = seen

    def update_graph(self, scheduler: Scheduler, *, keys: set[Key], **kwargs: object) -> None:
        for key in keys:
            if str(key).startswith(("infer-block-", "infer-gate-")):
                self.seen[str(key)] = {str(d.key) for d in scheduler.tasks[key].dependencies}


class _RecordResources(SchedulerPlugin):
    """Scheduler plugin recording the resource restrictions of inference tasks."""

    name = "record-resources"

    def __init__(self, seen: list[object]) -> None:
        self.seen = seen

    def update_graph(self, scheduler: Scheduler, *, keys: set[Key], **kwargs: object) -> None:
        for key in keys:
            if str(key).startswith(("infer-block-", "infer-tiles-")):
                self.seen.append((str(key).split("-")[1], scheduler.tasks[key].resource_restrictions))


@pytest.mark.slow
def test_chunking_invariance_at_real_block_sizes(tmp_path: Path, clients: dict[int, ClusterSpec]) -> None:
    """Blocks of 512, 1024 and 2048 px on a 2100 px cube: one result, the in-memory one."""
    cube = make_cube(tmp_path / "cube.zarr", 2100, 2100, chunk=1024, seed=3)
    tiling = TilingSpec(tile_size=256, overlap=32, batch_size=4)
    prompts = PromptSpec.build(classes="water;building", background="background")
    expected = reference(cube, tiling, prompts=prompts)
    for block, workers in ((512, 2), (1024, 2), (2048, 1)):
        out = tmp_path / f"change-{block}.zarr"
        start = time.perf_counter()
        run_inference(
            engine_job(tmp_path),
            cube,
            out,
            tiling=tiling.model_copy(update={"block_size": block}),
            cluster=clients[workers],
            prompts=prompts,
            progress=False,
        )
        print(f"block {block}, {workers} worker(s): {time.perf_counter() - start:.1f} s")
        assert_same(read_layers(out), expected)
