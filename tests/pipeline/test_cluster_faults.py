"""Cluster faults end a run with a clear error, never a hang or a traceback from cleanup code.

* The creation task may run twice (Dask recomputes a task whose result was on a lost worker): the
  second run finds the finished cube of the same job and leaves it as it is.
* All workers lost: a :class:`ClusterError` after :data:`pipeline.block_submission.WORKERLESS_SECONDS`,
  finished blocks kept, and a rerun resumes.
* Scheduler lost: a :class:`ClusterError` that says so (the client's reconnection timeout bounds
  the wait), not the ``OSError`` of the cleanup that follows.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pytest
from affine import Affine
from distributed import Client, LocalCluster, get_worker
from engine_inputs import PROMPTS, engine_job, write_patch_cube
from pyproj import CRS

import pipeline.block_submission
import pipeline.block_tasks
import pipeline.infer
from pipeline.change_cube import BlockGrid, ChangeCubeLayout, create_change_cube, read_done
from pipeline.engine_spec import TilingSpec
from pipeline.errors import ClusterError, OutputExistsError

SIZE, BLOCK = 256, 64
TILING = TilingSpec(tile_size=64, overlap=16, block_size=BLOCK)
#: The job recorded in every change cube, wherever it is written.
JOB = engine_job("cluster-faults-output")


def store_bytes(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_creating_the_cube_again_for_the_same_job_changes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "change_cube.zarr"
    create = dict(
        layout=ChangeCubeLayout(BlockGrid(128, 128, 64), ("background", "water"), ("water",)),
        y=5_000_000.0 - 10 * np.arange(128) - 5,
        x=400_000.0 + 10 * np.arange(128) + 5,
        crs=CRS.from_epsg(32633),
        transform=Affine(10, 0, 400_000, 0, -10, 5_000_000),
    )
    create_change_cube(out, attrs={"fingerprint": "abc"}, **create)  # type: ignore[arg-type]
    first = store_bytes(out)
    create_change_cube(out, attrs={"fingerprint": "abc"}, **create)  # type: ignore[arg-type]
    assert store_bytes(out) == first
    with pytest.raises(OutputExistsError, match="created only where nothing is"):
        create_change_cube(out, attrs={"fingerprint": "another job"}, **create)  # type: ignore[arg-type]
    assert store_bytes(out) == first


@pytest.fixture(scope="module")
def cube(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_patch_cube(tmp_path_factory.mktemp("faults") / "input_cube.zarr", SIZE, SIZE, chunk=BLOCK)


@pytest.fixture
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=False,
        dashboard_address=None,
        worker_dashboard_address=None,
    ) as local:
        yield local


def after_first_block(monkeypatch: pytest.MonkeyPatch, fault: Callable[[], None]) -> None:
    """Run ``fault`` in a thread of its own once the first block is written (its task then waits a
    moment, so the fault lands while the run goes on)."""
    real = pipeline.block_tasks.write_block
    fired = threading.Event()

    def write_block(*args: Any) -> None:
        real(*args)
        if not fired.is_set():
            fired.set()
            threading.Thread(target=fault, daemon=True).start()
            time.sleep(0.5)

    monkeypatch.setattr(pipeline.block_tasks, "write_block", write_block)


def run(cube: Path, out: Path, client: Client) -> pipeline.infer.InferenceResult:
    return pipeline.infer.run_inference(
        JOB, cube, out, tiling=TILING, cluster=client, prompts=PROMPTS, progress=False
    )


def test_losing_every_worker_is_a_clear_error_after_a_bounded_wait_and_a_rerun_resumes(
    tmp_path: Path, cube: Path, cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipeline.block_submission, "WORKERLESS_SECONDS", 1.0)
    after_first_block(monkeypatch, lambda: cluster.scale(0))
    out = tmp_path / "change_cube.zarr"
    started = time.monotonic()
    with Client(cluster) as client, pytest.raises(ClusterError, match="has had no worker for 1 s") as lost:
        run(cube, out, client)
    assert time.monotonic() - started < 60
    assert "run the same job again to resume" in str(lost.value)
    done = read_done(out, BlockGrid(SIZE, SIZE, BLOCK))
    assert 1 <= done.sum() < done.size

    monkeypatch.undo()
    cluster.scale(1)
    with Client(cluster) as client:
        client.wait_for_workers(1)
        resumed = run(cube, out, client)
    assert len(resumed.skipped) == done.sum() and len(resumed.computed) == done.size - done.sum()


def test_losing_the_scheduler_is_a_clear_error_not_a_cleanup_traceback(
    tmp_path: Path, cube: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The workers of a lost scheduler try to reach it again for the connect timeout before they close.
    with (
        dask.config.set({"distributed.comm.timeouts.connect": "2s"}),
        LocalCluster(
            n_workers=1,
            threads_per_worker=1,
            processes=False,
            dashboard_address=None,
            worker_dashboard_address=None,
        ) as cluster,
        Client(cluster, timeout=2) as client,
    ):
        after_first_block(monkeypatch, lambda: client.sync(cluster.scheduler.close))
        with pytest.raises(ClusterError, match="lost the Dask scheduler") as lost:
            run(cube, tmp_path / "change_cube.zarr", client)
    assert "run the same job again to resume" in str(lost.value)
    assert not isinstance(lost.value.__context__, OSError)


class _FailsToClose:
    """A context manager whose closing fails, as closing a cluster whose scheduler is gone does."""

    def __enter__(self) -> str:
        return "session"

    def __exit__(self, *exc: object) -> None:
        raise OSError("Timed out trying to connect to tcp://10.0.0.9:8786")


def test_a_failure_to_close_the_cluster_never_hides_the_runs_error() -> None:
    closing = pipeline.infer._closed_quietly_on_error
    with pytest.raises(ClusterError, match="the cause") as raised, closing(_FailsToClose()) as session:
        assert session == "session"
        raise ClusterError("the cause")
    assert raised.value.__context__ is None
    with pytest.raises(OSError, match="Timed out"), closing(_FailsToClose()):
        pass  # with nothing else to report, the closing error is the error


def test_a_creation_task_run_again_after_its_worker_died_finds_its_cube_and_goes_on(
    tmp_path: Path, cube: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker dies after creating the cube and before its task reports back: Dask runs the
    creation again on the other worker, which finds the finished cube of the same job and leaves it
    (was: "cannot create the change cube ... FileExistsError")."""
    real = pipeline.infer.create_change_cube
    died = tmp_path / "first-creator"  # a file: Dask may run a copy of the function below

    def create_then_die(*args: Any, **kwargs: Any) -> None:
        real(*args, **kwargs)
        if not died.exists():
            worker = get_worker()
            died.write_text(worker.address)
            worker.io_loop.add_callback(worker.close)
            time.sleep(2)  # the worker closes before this task can report back

    monkeypatch.setattr(pipeline.infer, "create_change_cube", create_then_die)
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=False,
            dashboard_address=None,
            worker_dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        result = run(cube, tmp_path / "change_cube.zarr", client)
        assert died.read_text() not in client.nthreads() and len(client.nthreads()) == 1
    assert len(result.computed) == len(BlockGrid(SIZE, SIZE, BLOCK))
