"""Jobs write to s3:// through fsspec: a real S3-compatible server (SeaweedFS) on 127.0.0.1.

One server serves the whole module (~4 s to start), with its own credentials, given to the jobs
and their Dask workers the standard way: ``AWS_*`` environment variables. A small generated scene
is run once into the bucket and once into a local folder; the two must hold the same bytes, and
the published files in the bucket must be valid and described by a STAC Item whose hrefs resolve
there. The restart path is the local one's (``test_restart.py``): a run that fails half-way and
is run again computes only the unfinished blocks and ends with the same bytes.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import rioxarray  # noqa: F401  (the .rio accessor)
import s3fs
import xarray as xr
import yaml
import zarr
from engine_inputs import PROMPTS, engine_job, patch_reflectance, write_reflectance_cube
from rio_cogeo.cogeo import cog_validate
from test_restart import failing_after, recording_writes

import pipeline.block_tasks
import pipeline.infer
from pipeline.change_cube import BlockGrid, read_done
from pipeline.engine_spec import ClusterSpec, TilingSpec
from pipeline.errors import (
    ChangeCubeMismatchError,
    InferenceError,
    OutputExistsError,
    ServerError,
    StorageError,
)
from pipeline.local_servers.object_store import S3Server, SeaweedServer
from pipeline.local_servers.process import pid_alive
from pipeline.publish import validate_published
from pipeline.run import RunResult, run_job
from pipeline.spec import JobSpec
from pipeline.storage import Location
from pipeline.synthetic import GeneratedScene, SceneSpec, generate_scene

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

#: Variables that would point botocore elsewhere than the test server.
_FOREIGN_AWS = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


@pytest.fixture(scope="module")
def store(weed: Path) -> Iterator[SeaweedServer]:
    with SeaweedServer(bucket="seg2change") as server:
        yield server


def _point_at(monkeypatch: pytest.MonkeyPatch, store: SeaweedServer) -> None:
    for name in _FOREIGN_AWS:
        monkeypatch.delenv(name, raising=False)
    for name, value in store.env.items():
        monkeypatch.setenv(name, value)
    # Never look for credentials outside this test: no config files, no instance metadata.
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(scope="module")
def s3_env(store: SeaweedServer) -> Iterator[None]:
    """The server's credentials and endpoint in this process's environment (inherited by workers)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        _point_at(monkeypatch, store)
        yield


@pytest.fixture
def s3(store: SeaweedServer, s3_env: None) -> s3fs.S3FileSystem:
    """A client given the server's options explicitly, as a notebook user would."""
    return s3fs.S3FileSystem(**store.storage_options, use_listings_cache=False)


def objects(fs: s3fs.S3FileSystem, url: str) -> dict[str, bytes]:
    """Every object under a prefix, by its key below the prefix (folder markers left out)."""
    root = Location(url).key
    return {
        name[len(root) + 1 :]: fs.cat_file(name) for name in sorted(fs.find(root)) if not name.endswith("/")
    }


def local_files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- the server


def test_the_server_is_a_real_store_that_refuses_strangers(store: SeaweedServer) -> None:
    assert isinstance(store, S3Server)
    assert store.endpoint_url.startswith("http://127.0.0.1:") and store.pids
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{store.endpoint_url}/{store.bucket}/")  # anonymous
    assert refused.value.code == 403
    fs = s3fs.S3FileSystem(**store.storage_options)
    fs.pipe_file(f"{store.bucket}/hello.txt", b"hello")
    assert fs.cat_file(f"{store.bucket}/hello.txt") == b"hello"
    fs.rm_file(f"{store.bucket}/hello.txt")


@pytest.mark.usefixtures("weed")
def test_close_kills_the_server_and_removes_its_files() -> None:
    server = SeaweedServer(bucket=None)
    (pid,) = server.pids
    workdir = server.log_path.parent
    sockets = list(server._state.sockets)
    assert workdir.is_dir()
    server.close()
    server.close()  # again: nothing
    assert server.closed and not server.pids and not workdir.exists()
    assert not pid_alive(pid)
    assert not any(s.exists() for s in sockets)
    with pytest.raises(ServerError, match="closed"):
        server.create_bucket("later")


# --------------------------------------------------------------------------- a whole job


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> GeneratedScene:
    return generate_scene(SceneSpec(size=512, seed=5), tmp_path_factory.mktemp("scene"))


def job_fields(scene: GeneratedScene, output: str) -> dict[str, Any]:
    from pipeline.demo import demo_job_fields

    fields = demo_job_fields(scene, str(scene.items_path), Path("unused"))
    fields.update(
        output=output,
        block_size=256,
        # Worker processes: they write their blocks to the bucket with the credentials they inherit.
        cluster={"n_workers": 2, "threads_per_worker": 1, "processes": True},
    )
    return fields


@pytest.fixture(scope="module")
def runs(
    store: SeaweedServer, s3_env: None, scene: GeneratedScene, tmp_path_factory: pytest.TempPathFactory
) -> tuple[RunResult, RunResult]:
    """The same job run into the bucket and into a local folder."""
    remote = run_job(JobSpec.build(**job_fields(scene, store.url("jobs", "scene-5"))), progress=False)
    local_out = tmp_path_factory.mktemp("local") / "scene-5"
    local = run_job(JobSpec.build(**job_fields(scene, str(local_out))), progress=False)
    return remote, local


def test_job_into_s3_writes_what_the_local_job_writes(
    runs: tuple[RunResult, RunResult], store: SeaweedServer, s3: s3fs.S3FileSystem
) -> None:
    remote, local = runs
    assert str(remote.inference.path) == store.url("jobs", "scene-5", "change_cube.zarr")
    assert str(remote.cube.path) == store.url("jobs", "scene-5", "input_cube.zarr")
    assert len(remote.inference.computed) == 4 and remote.inference.fingerprint == local.inference.fingerprint

    # Read back through fsspec with explicit storage_options, as a notebook would.
    for name in ("change_cube.zarr", "input_cube.zarr"):
        a = xr.open_zarr(
            store.url("jobs", "scene-5", name),
            storage_options=store.storage_options,
            consolidated=True,
            mask_and_scale=False,
            decode_coords="all",
        )
        b = xr.open_zarr(
            local.inference.path.parent.local_path / name,
            consolidated=True,
            mask_and_scale=False,
            decode_coords="all",
        )
        assert set(a.data_vars) == set(b.data_vars) and len(a.data_vars) > 0
        for var in a.data_vars:
            x, y = a[var].values, b[var].values
            assert x.dtype == y.dtype, var
            np.testing.assert_array_equal(x, y, err_msg=f"{name}/{var}")
        assert a.rio.crs == b.rio.crs and a.rio.transform() == b.rio.transform()
        assert a.attrs["complete"] is True
    assert float((xr.open_zarr(local.inference.path.local_path)["change"] == 1).mean()) > 0.01

    # The change cube's chunks, markers and array metadata are the local run's, object for object
    # (the root metadata differs: it records the job, whose output differs).
    remote_objects = objects(s3, str(remote.inference.path))
    local_objects = local_files(local.inference.path.local_path)
    assert remote_objects.keys() == local_objects.keys() and len(remote_objects) > 20
    assert {k: v for k, v in remote_objects.items() if k != "zarr.json"} == {
        k: v for k, v in local_objects.items() if k != "zarr.json"
    }

    provenance = json.loads(s3.cat_file(f"{store.bucket}/jobs/scene-5/provenance.json"))
    local_provenance = json.loads((local.inference.path.parent.local_path / "provenance.json").read_text())
    assert provenance["items"] and provenance["items"] == local_provenance["items"]


def test_published_files_in_s3_are_valid_and_described_by_stac(
    runs: tuple[RunResult, RunResult], store: SeaweedServer, s3: s3fs.S3FileSystem, tmp_path: Path
) -> None:
    remote, local = runs
    published = remote.publication
    assert str(published.stac_item) == store.url("jobs", "scene-5", "stac", "item.json")

    # COGs: uploaded, valid after download, the same bytes as the local run's.
    assert set(published.cogs) == set(local.publication.cogs)
    for layer, location in published.cogs.items():
        downloaded = tmp_path / f"{layer}.tif"
        s3.get_file(location.key, str(downloaded))
        valid, errors, _ = cog_validate(str(downloaded), quiet=True)
        assert valid, (layer, errors)
        assert downloaded.read_bytes() == local.publication.cogs[layer].local_path.read_bytes(), layer

    # STAC: valid, every href relative and resolving in the bucket, sizes and checksums right.
    results = validate_published(published.stac_collection)
    assert [r.id for r in results][1] == json.loads(s3.cat_file(published.stac_item.key))["id"]
    item = json.loads(s3.cat_file(published.stac_item.key))
    stac_dir = published.stac_item.parent
    for key, asset in item["assets"].items():
        assert asset["href"].startswith(("./", "../")), (key, asset["href"])
        target = stac_dir.resolve_href(asset["href"])
        assert target.exists(), key
        if "file:size" in asset:
            assert s3.size(target.key) == asset["file:size"], key
    assert stac_dir.resolve_href(item["assets"]["change_cube"]["href"]) == remote.inference.path
    assert item["assets"] == json.loads(local.publication.stac_item.read_text())["assets"]

    # Statistics: readable with pandas through fsspec, equal to the local run's.
    frame = pd.read_parquet(str(published.statistics_parquet), storage_options=store.storage_options)
    pd.testing.assert_frame_equal(frame, pd.read_parquet(local.publication.statistics_parquet.local_path))
    assert json.loads(s3.cat_file(published.statistics_json.key)) == json.loads(
        local.publication.statistics_json.read_text()
    )
    assert s3.cat_file(published.quicklook.key)[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_rerun_into_s3_reuses_everything(
    runs: tuple[RunResult, RunResult], store: SeaweedServer, scene: GeneratedScene, s3: s3fs.S3FileSystem
) -> None:
    remote, _ = runs
    before = objects(s3, str(remote.inference.path))
    again = run_job(JobSpec.build(**job_fields(scene, store.url("jobs", "scene-5"))), progress=False)
    assert again.inference.computed == () and len(again.inference.skipped) == 4
    assert objects(s3, str(remote.inference.path)) == before


def test_the_command_line_runs_a_yaml_job_into_s3(
    runs: tuple[RunResult, RunResult], store: SeaweedServer, scene: GeneratedScene, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from flows.cli import app

    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(job_fields(scene, store.url("jobs", "scene-5")), sort_keys=False))
    result = CliRunner().invoke(app, ["run", str(job_file), "--no-progress"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # rich wraps long lines
    assert (
        f"change cube: {store.url('jobs', 'scene-5', 'change_cube.zarr')} (0 block(s) computed, 4 already done"
        in text
    )
    assert store.url("jobs", "scene-5", "stac", "item.json") in text

    missing = tmp_path / "missing.yaml"
    missing.write_text(yaml.safe_dump(job_fields(scene, "s3://no-such-bucket/a"), sort_keys=False))
    refused = CliRunner().invoke(app, ["run", str(missing), "--no-progress"])
    assert refused.exit_code == 2 and "bucket 'no-such-bucket' does not exist" in " ".join(
        refused.output.split()
    )


def test_an_unfinished_s3_input_cube_of_the_same_job_is_written_again(
    runs: tuple[RunResult, RunResult], store: SeaweedServer, scene: GeneratedScene, s3: s3fs.S3FileSystem
) -> None:
    remote, _ = runs
    cube = remote.cube.path
    chunks = {k: v for k, v in objects(s3, str(cube)).items() if "zarr.json" not in k}
    # As a prepare killed half-way leaves it: written in place, never marked complete.
    zarr.open_group(cube.zarr_store(), mode="r+", use_consolidated=False).attrs["complete"] = False
    again = run_job(JobSpec.build(**job_fields(scene, store.url("jobs", "scene-5"))), progress=False)
    assert zarr.open_group(cube.zarr_store(read_only=True), mode="r").attrs["complete"] is True
    assert {k: v for k, v in objects(s3, str(cube)).items() if "zarr.json" not in k} == chunks
    assert again.inference.computed == ()  # the same input: the change cube stays done


def test_an_s3_prefix_holding_another_jobs_output_is_refused_and_kept(
    runs: tuple[RunResult, RunResult], store: SeaweedServer, scene: GeneratedScene, s3: s3fs.S3FileSystem
) -> None:
    prefix = store.url("jobs", "scene-5")
    before = objects(s3, prefix)
    other_classes = job_fields(scene, prefix)
    other_classes["prompts"] = {"classes": ["water", "forest,tree"], "targets": ["water"]}
    with pytest.raises(ChangeCubeMismatchError, match="holds the change cube of a different job"):
        run_job(JobSpec.build(**other_classes), progress=False)
    other_scenes = job_fields(scene, prefix)
    other_scenes["cloud_limit"] = 80
    with pytest.raises(OutputExistsError, match="was made by another job or from other scenes"):
        run_job(JobSpec.build(**other_scenes), progress=False)
    assert objects(s3, prefix) == before


def test_missing_bucket_and_bad_credentials_are_clear_errors(
    store: SeaweedServer, scene: GeneratedScene, monkeypatch: pytest.MonkeyPatch
) -> None:
    _point_at(monkeypatch, store)
    missing = JobSpec.build(**job_fields(scene, "s3://no-such-bucket/jobs/a"))
    with pytest.raises(StorageError, match=r"the bucket 'no-such-bucket' does not exist; create it"):
        run_job(missing, progress=False)

    job = JobSpec.build(**job_fields(scene, store.url("jobs", "refused")))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(StorageError, match="access denied.*AWS_SECRET_ACCESS_KEY"):
        run_job(job, progress=False)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StorageError, match="no credentials found.*AWS_ACCESS_KEY_ID"):
        run_job(job, progress=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")  # nothing listens on port 9
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", store.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", store.secret_key)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(StorageError, match="does not answer.*AWS_ENDPOINT_URL"):
        run_job(job, progress=False)


# --------------------------------------------------------------------------- restarting in S3

HEIGHT, WIDTH, BLOCK = 384, 320, 128
TILING = TilingSpec(tile_size=64, overlap=16, batch_size=8, block_size=BLOCK)
CLUSTER = ClusterSpec(
    n_workers=1, threads_per_worker=1, processes=False
)  # in-process: the failure is injected
ALL_BLOCKS = set(BlockGrid(HEIGHT, WIDTH, BLOCK))


@pytest.fixture(scope="module")
def restart_job(tmp_path_factory: pytest.TempPathFactory) -> JobSpec:
    return engine_job(tmp_path_factory.mktemp("restart"))


@pytest.fixture(scope="module")
def restart_cube(store: SeaweedServer, s3_env: None) -> Location:
    """An input cube written straight into the bucket (write_cube in place, marked complete)."""
    refl = patch_reflectance(
        HEIGHT, WIDTH, seed=11, change_fraction=0.3, gaps=[(1, slice(40, 90), slice(50, 120))]
    )
    return write_reflectance_cube(store.url("restart", "input_cube.zarr"), refl, chunk=128)


def _infer(job: JobSpec, cube: Location, out: str | Path) -> pipeline.infer.InferenceResult:
    return pipeline.infer.run_inference(
        job, cube, out, tiling=TILING, cluster=CLUSTER, prompts=PROMPTS, progress=False
    )


def test_an_s3_input_cube_is_written_in_place_and_marked_complete(
    restart_cube: Location, s3: s3fs.S3FileSystem
) -> None:
    from pipeline.cube import cube_is_complete

    assert restart_cube.exists() and cube_is_complete(restart_cube)
    keys = objects(s3, str(restart_cube.parent))
    assert not any(".partial" in k for k in keys)  # no rename dance on an object store
    group = zarr.open_group(restart_cube.zarr_store(read_only=True), mode="r", use_consolidated=False)
    assert group.attrs["complete"] is True


def test_failed_s3_run_resumes_and_matches_an_uninterrupted_run(
    restart_job: JobSpec,
    restart_cube: Location,
    store: SeaweedServer,
    s3: s3fs.S3FileSystem,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    uninterrupted = tmp_path / "uninterrupted.zarr"
    assert set(_infer(restart_job, restart_cube, uninterrupted).computed) == ALL_BLOCKS

    out = store.url("restart", f"change-{tmp_path.name}.zarr")
    half = len(ALL_BLOCKS) // 2
    monkeypatch.setattr(
        pipeline.block_tasks, "write_block", failing_after(half, pipeline.block_tasks.write_block)
    )
    with pytest.raises(InferenceError, match="run the same job again to resume"):
        _infer(restart_job, restart_cube, out)
    monkeypatch.undo()
    done_before = {tuple(b) for b in np.argwhere(read_done(out, BlockGrid(HEIGHT, WIDTH, BLOCK)))}
    assert len(done_before) == half
    assert zarr.open_group(Location(out).zarr_store(read_only=True), mode="r").attrs["complete"] is False

    written = recording_writes(monkeypatch)
    result = _infer(restart_job, restart_cube, out)
    assert set(result.computed) == ALL_BLOCKS - done_before and set(result.skipped) == done_before
    assert sorted(written) == sorted(ALL_BLOCKS - done_before)
    # Every object of the resumed cube in the bucket is the uninterrupted local run's file.
    assert objects(s3, out) == local_files(uninterrupted)


def test_force_replaces_a_finished_s3_cube(
    restart_job: JobSpec, restart_cube: Location, store: SeaweedServer, s3: s3fs.S3FileSystem, tmp_path: Path
) -> None:
    out = store.url("restart", f"forced-{tmp_path.name}.zarr")
    first = _infer(restart_job, restart_cube, out)
    snapshot = objects(s3, out)
    s3.pipe_file(f"{Location(out).key}/stray-object", b"left by someone")
    forced = pipeline.infer.run_inference(
        restart_job,
        restart_cube,
        out,
        tiling=TILING,
        cluster=CLUSTER,
        prompts=PROMPTS,
        force=True,
        progress=False,
    )
    assert set(forced.computed) == ALL_BLOCKS and forced.fingerprint == first.fingerprint
    assert objects(s3, out) == snapshot  # the stray object went with the old cube
