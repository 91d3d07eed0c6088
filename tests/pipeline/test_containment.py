"""Containment: asset files only from the catalog's folder (or asset_roots), outputs apart from inputs."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml

import pipeline.stages
from pipeline.containment import check_asset_hrefs, check_output
from pipeline.cube import prepare_cube
from pipeline.discover import discover
from pipeline.errors import ContainmentError, JobSpecError
from pipeline.run import run_job
from pipeline.spec import JobSpec, load_job

BBOX = [13.0, 52.0, 13.1, 52.1]


def _item(item_id: str, when: str, href: str) -> dict[str, Any]:
    x0, y0, x1, y1 = BBOX
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "id": item_id,
        "collection": "demo",
        "bbox": BBOX,
        "geometry": {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]},
        "properties": {"datetime": when, "eo:cloud_cover": 1.0, "proj:epsg": 32633},
        "assets": {"red": {"href": href, "type": "image/tiff; application=geotiff"}},
        "links": [],
    }


def _catalog(folder: Path, before_href: str, after_href: str = "data/after.tif") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    items = [_item("b", "2024-05-05T10:00:00Z", before_href), _item("a", "2024-07-05T10:00:00Z", after_href)]
    path = folder / "items.ndjson"
    path.write_text("".join(json.dumps(i) + "\n" for i in items))
    return path


def _job(catalog: str | Path, output: Path, **changes: Any) -> JobSpec:
    fields: dict[str, Any] = {
        "aoi": {"bbox": [13.02, 52.02, 13.05, 52.05]},
        "before": "2024-05-01/2024-05-31",
        "after": "2024-07-01/2024-07-31",
        "catalog": str(catalog),
        "collections": ["demo"],
        "bands": ["red"],
        "quality": "none",
        "output": str(output),
        "prompts": {"classes": "water;building"},
    }
    fields.update(changes)
    return JobSpec.build(**fields)


@pytest.mark.parametrize(
    "href", ["../../../../../../../../../../etc/shadow", "file:///etc/passwd", "/etc/passwd"]
)
def test_local_catalog_asset_outside_its_folder_is_refused(tmp_path: Path, href: str) -> None:
    job = _job(_catalog(tmp_path / "catalog", href), tmp_path / "out")
    found = discover(job)
    with pytest.raises(ContainmentError) as caught:
        prepare_cube(job, found, progress=False)
    message = str(caught.value)
    assert "asset 'red' of item 'b'" in message
    assert "/etc/" in message and "outside the folders a job may read assets from" in message
    assert str(tmp_path / "catalog") in message and "asset_roots" in message
    assert not (tmp_path / "out").exists()


def test_assets_inside_the_catalog_folder_or_an_asset_root_pass(tmp_path: Path) -> None:
    elsewhere = tmp_path / "archive"
    elsewhere.mkdir()
    catalog = _catalog(tmp_path / "catalog", str(elsewhere / "before.tif"), "data/after.tif")
    items = discover(_job(catalog, tmp_path / "out")).items
    with pytest.raises(ContainmentError, match="archive/before.tif"):
        check_asset_hrefs(_job(catalog, tmp_path / "out"), items)
    check_asset_hrefs(_job(catalog, tmp_path / "out", asset_roots=[str(elsewhere)]), items)


def test_symlink_out_of_the_catalog_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "catalog"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "before.tif").symlink_to("/etc/passwd")
    job = _job(_catalog(folder, "data/before.tif"), tmp_path / "out")
    with pytest.raises(ContainmentError, match="names the local file /etc/passwd"):
        check_asset_hrefs(job, discover(job).items)


def test_api_items_may_name_local_files_only_in_asset_roots(tmp_path: Path) -> None:
    job = _job("http://127.0.0.1:9/", tmp_path / "out")
    local = {"before": [_item("b", "2024-05-05T10:00:00Z", "file:///etc/passwd")], "after": []}
    with pytest.raises(ContainmentError, match=r"none \(the catalog is a STAC API\)"):
        check_asset_hrefs(job, local)
    relative = {"before": [_item("b", "2024-05-05T10:00:00Z", "../secret.tif")], "after": []}
    with pytest.raises(ContainmentError, match="relative href '../secret.tif'"):
        check_asset_hrefs(job, relative)
    vsi = {"before": [_item("b", "2024-05-05T10:00:00Z", "/vsizip//etc/x.zip/a.tif")], "after": []}
    with pytest.raises(ContainmentError, match="GDAL virtual file system"):
        check_asset_hrefs(job, vsi)
    remote = {
        "before": [_item("b", "2024-05-05T10:00:00Z", "https://example.com/b.tif")],
        "after": [_item("a", "2024-07-05T10:00:00Z", "s3://bucket/a.tif")],
    }
    check_asset_hrefs(job, remote)
    inside_scenes = _job("http://127.0.0.1:9/", tmp_path).model_copy(update={"output": "s3://bucket/results"})
    with pytest.raises(
        ContainmentError,
        match="output s3://bucket/results lies inside s3://bucket, the folder of the asset .red. of item .a.",
    ):
        check_asset_hrefs(inside_scenes, remote)
    allowed = _job("http://127.0.0.1:9/", tmp_path / "out", asset_roots=[str(tmp_path / "scene")])
    inside = {"before": [_item("b", "2024-05-05T10:00:00Z", str(tmp_path / "scene" / "b.tif"))], "after": []}
    check_asset_hrefs(allowed, inside)


@pytest.fixture
def no_discovery(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object, **__: object) -> NoReturn:
        raise AssertionError("discovery ran before the output was checked")

    monkeypatch.setattr(pipeline.stages, "discover", refuse)


def test_output_inside_the_scene_folder_is_refused(tmp_path: Path, no_discovery: None) -> None:
    catalog = _catalog(tmp_path / "scene", "data/before.tif")
    job = _job(catalog, tmp_path / "scene" / "out")
    with pytest.raises(ContainmentError, match=r"output .*/scene/out lies inside the job's inputs"):
        run_job(job, progress=False)
    assert not (tmp_path / "scene" / "out").exists()
    roots = _job("http://127.0.0.1:9/", tmp_path / "scene" / "out", asset_roots=[str(tmp_path / "scene")])
    with pytest.raises(ContainmentError, match="lies inside the job's inputs"):
        check_output(roots)


@pytest.mark.parametrize("cube", ["input_cube.zarr", "change_cube.zarr"])
def test_output_inside_another_jobs_cube_is_refused(tmp_path: Path, cube: str, no_discovery: None) -> None:
    store = tmp_path / "other" / cube
    store.mkdir(parents=True)
    (store / "zarr.json").write_text("{}")
    before = sorted(p.name for p in store.iterdir())
    job = _job("http://127.0.0.1:9/", store / "mine")
    with pytest.raises(ContainmentError, match=f"lies inside the Zarr store .*other/{cube}"):
        run_job(job, progress=False)
    assert sorted(p.name for p in store.iterdir()) == before


def test_output_inside_any_zarr_store_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "somewhere"
    store.mkdir()
    (store / ".zgroup").write_text("{}")
    with pytest.raises(ContainmentError, match="lies inside the Zarr store"):
        check_output(_job("http://127.0.0.1:9/", store / "a" / "b"))
    with pytest.raises(ContainmentError, match="lies inside the Zarr store s3://bucket/x/cube.zarr"):
        check_output(
            _job("http://127.0.0.1:9/", Path("unused")).model_copy(
                update={"output": "s3://bucket/x/cube.zarr/out"}
            )
        )


def test_output_that_is_a_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "report.txt"
    target.write_text("keep me")
    with pytest.raises(ContainmentError, match="is a file, not a folder"):
        check_output(_job("http://127.0.0.1:9/", target))
    with pytest.raises(ContainmentError, match="report.txt is a file"):
        check_output(_job("http://127.0.0.1:9/", target / "out"))
    assert target.read_text() == "keep me"


def test_unwritable_output_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.geteuid() == 0:  # root may write any folder: answer as the file system would for a user
        monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked)
    try:
        with pytest.raises(ContainmentError, match=r"cannot be written: no write permission on .*locked"):
            check_output(_job("http://127.0.0.1:9/", locked / "out"))
    finally:
        locked.chmod(0o700)


def test_empty_output_is_refused_in_a_job_file_too(tmp_path: Path) -> None:
    job_file = tmp_path / "job.yaml"
    doc = {
        "aoi": {"bbox": BBOX},
        "before": "2024-05-01/2024-05-31",
        "after": "2024-07-01/2024-07-31",
        "catalog": "http://127.0.0.1:9/",
        "collections": ["demo"],
        "output": "",
    }
    job_file.write_text(yaml.safe_dump(doc))
    with pytest.raises(JobSpecError, match="output: output is empty"):
        load_job(job_file)
    with pytest.raises(JobSpecError, match="output is empty"):
        load_job(job_file, output="  ")
