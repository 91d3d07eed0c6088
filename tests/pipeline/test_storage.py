"""Locations: local paths and fsspec URLs behind one type (no server needed: local disk and memory://)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from pipeline.errors import JobSpecError, StorageError
from pipeline.spec import JobSpec
from pipeline.storage import Location, relative_href


def test_urls_are_normalised_and_paths_stay_paths(tmp_path: Path) -> None:
    assert (
        Location("s3://bucket/jobs/a/") == Location("s3://bucket/jobs/a") == Location("S3://bucket/jobs//a")
    )
    assert str(Location("s3://bucket/jobs/a") / "change_cube.zarr") == "s3://bucket/jobs/a/change_cube.zarr"
    assert Location(f"file://{tmp_path}/x") == Location(tmp_path / "x")
    local = Location(tmp_path) / "out"
    assert (
        local.is_local and local.local_path == tmp_path / "out" and os.fspath(local) == str(tmp_path / "out")
    )
    remote = Location("s3://bucket/jobs/a/stac/item.json")
    assert (remote.protocol, remote.bucket, remote.name) == ("s3", "bucket", "item.json")
    assert remote.parent.parent == Location("s3://bucket/jobs/a")
    assert Location("s3://bucket").parent == Location("s3://bucket")
    assert Location.parse(remote) is remote
    assert pickle.loads(pickle.dumps(remote)) == remote  # travels to Dask workers


def test_a_url_is_not_a_local_path() -> None:
    remote = Location("s3://bucket/a")
    with pytest.raises(TypeError, match="not on the local file system"):
        os.fspath(remote)
    with pytest.raises(StorageError, match="not on the local file system"):
        _ = remote.local_path


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("nope://bucket/a", "no fsspec implementation knows the protocol 'nope'"),
        ("gs://bucket/a", "gcsfs"),  # known to fsspec, its package not installed
        ("s3://", "names no bucket"),
        ("  ", "the location is empty"),
    ],
)
def test_unusable_locations_say_what_to_do(url: str, message: str) -> None:
    with pytest.raises(StorageError, match=message):
        Location(url)


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("nope://bucket/a", "protocol 'nope'"),
        ("https://example.org/out", "read-only"),
        ("s3://", "no bucket"),
    ],
)
def test_the_job_refuses_an_unusable_output_before_any_work(output: str, message: str) -> None:
    with pytest.raises(JobSpecError, match=message):
        JobSpec.build(
            aoi={"bbox": (13.3, 52.4, 13.4, 52.5)},
            before="2024-05-01/2024-05-31",
            after="2024-07-01/2024-07-31",
            catalog="https://stac.example.org/v1",
            collections="sentinel-2-l2a",
            output=output,
        )


def test_relative_hrefs_within_one_store_and_absolute_across(tmp_path: Path) -> None:
    assert relative_href("s3://b/job/cogs/change.tif", "s3://b/job/stac") == "../cogs/change.tif"
    assert relative_href("s3://b/job/stac/collection.json", "s3://b/job/stac") == "./collection.json"
    assert (
        relative_href("s3://other/job/change_cube.zarr", "s3://b/job/stac")
        == "s3://other/job/change_cube.zarr"
    )
    assert relative_href(tmp_path / "job" / "a.tif", tmp_path / "job" / "stac") == "../a.tif"
    stac = Location("s3://b/job/stac")
    assert stac.resolve_href("../cogs/change.tif") == Location("s3://b/job/cogs/change.tif")
    assert stac.resolve_href("s3://other/x") == Location("s3://other/x")
    assert Location(tmp_path / "stac").resolve_href("./item.json") == Location(
        tmp_path / "stac" / "item.json"
    )


def test_local_writes_are_atomic_and_leave_no_debris(tmp_path: Path) -> None:
    target = Location(tmp_path) / "deep" / "folder" / "doc.json"
    target.write_text("first")
    target.write_text("second")
    assert target.read_text() == "second" and target.is_file() and target.size() == 6
    assert sorted(p.name for p in (tmp_path / "deep" / "folder").iterdir()) == ["doc.json"]
    source = tmp_path / "source.bin"
    source.write_bytes(b"\x00" * 1000)
    copy = Location(tmp_path) / "copies" / "copy.bin"
    copy.upload(source)
    assert copy.read_bytes() == source.read_bytes()
    Location(tmp_path / "deep").remove()
    assert not (tmp_path / "deep").exists()
    Location(tmp_path / "deep").remove()  # missing is fine


def test_remote_locations_check_write_read_and_remove_through_fsspec() -> None:
    root = Location("memory://seg2change-test-storage/job")
    root.remove()
    assert not root.exists()
    (root / "stac" / "item.json").write_text("{}")
    assert root.exists() and (root / "stac").exists() and not (root / "cogs").exists()
    assert (root / "stac" / "item.json").is_file() and not (root / "stac").is_file()
    assert (root / "stac" / "item.json").read_text() == "{}"
    with (root / "stac" / "item.json").open_read() as f:
        assert f.read() == b"{}"
    root.remove()
    assert not root.exists()
