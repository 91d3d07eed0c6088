"""`seg2change prepare` on a generated 2048 px scene through the embedded STAC server.

Clouds never reach the composite.

Every composite pixel must be the median of exactly the clear observations of its window (checked
against the generated qa masks and COGs), finite wherever one clear acquisition exists, and NaN
where none does. The grid must sit exactly on the scene's, as GDAL and rioxarray both read it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml

from pipeline.cube import open_cube, prepare_cube
from pipeline.demo import demo_job_fields
from pipeline.discover import discover
from pipeline.layout import OutputLayout
from pipeline.spec import JobSpec
from pipeline.stac_servers import serve_collection
from pipeline.synthetic import BAND_NAMES, QA, SCALE, SceneSpec, generate_scene

SIZE = 2048


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path]:
    """`seg2change prepare` on a generated 2048 px scene served by the embedded STAC API."""
    root = tmp_path_factory.mktemp("prepare")
    scene = generate_scene(SceneSpec(size=SIZE, seed=3, cloud_fraction=0.5), root / "scene")
    with serve_collection(scene.collection_path, scene.items_path, kind="rustac") as server:
        fields = demo_job_fields(scene, server.url, root / "out")
        fields.update(block_size=512, zarr_format=2)  # v2 so that the system's GDAL 3.6 reads it too
        job_file = root / "job.yaml"
        job_file.write_text(yaml.safe_dump(fields))
        done = subprocess.run(
            [str(Path(sys.executable).with_name("seg2change")), "prepare", str(job_file), "--no-progress"],
            capture_output=True,
            text=True,
        )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "client cloud filter" in done.stdout
    return scene, root / "out" / "input_cube.zarr"


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


@pytest.mark.parametrize("epoch", ["before", "after"])
def test_composite_is_the_median_of_clear_observations(prepared: tuple, epoch: str) -> None:
    scene, cube_path = prepared
    items = scene.items_of(epoch)
    qa = np.stack([_read(scene.asset_path(item["id"], "qa")) for item in items])
    clear = qa == QA.CLEAR
    assert (~clear).any(axis=0).mean() > 0.3, "the scene must have clouds for this test to mean anything"
    composite = open_cube(cube_path)["reflectance"].sel(epoch=epoch).values
    for b, band in enumerate(BAND_NAMES):
        raw = np.stack([_read(scene.asset_path(item["id"], band)) for item in items]).astype(
            "float32"
        ) * np.float32(SCALE)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            expected = np.nanmedian(np.where(clear, raw, np.nan), axis=0)
        has_clear = clear.any(axis=0)
        assert np.isfinite(composite[b][has_clear]).all()
        assert np.isnan(composite[b][~has_clear]).all()
        np.testing.assert_allclose(composite[b][has_clear], expected[has_clear], rtol=1e-6, atol=1e-7)


def test_the_output_holds_what_its_layout_names(prepared: tuple) -> None:
    scene, cube_path = prepared
    layout = OutputLayout.of(cube_path.parent)
    assert layout.input_cube.local_path == cube_path
    recorded = json.loads(layout.provenance.read_text())
    assert recorded == json.loads(open_cube(cube_path).attrs["provenance"])
    for epoch in ("before", "after"):
        assert sorted(i["id"] for i in recorded["items"][epoch]) == sorted(
            i["id"] for i in scene.items_of(epoch)
        )


def test_cloud_values_never_reach_the_composite(prepared: tuple) -> None:
    scene, cube_path = prepared
    items = scene.items_of("before")
    qa = np.stack([_read(scene.asset_path(item["id"], "qa")) for item in items])
    blue = np.stack([_read(scene.asset_path(item["id"], "blue")) for item in items]).astype("float32") * SCALE
    composite = open_cube(cube_path)["reflectance"].sel(epoch="before", band="blue").values
    only_cloudy = (qa != QA.CLEAR).all(axis=0)
    some_clear = ~only_cloudy
    clear_max = np.where(qa == QA.CLEAR, blue, -np.inf).max(axis=0)
    clear_min = np.where(qa == QA.CLEAR, blue, np.inf).min(axis=0)
    within = (composite >= clear_min - 1e-6) & (composite <= clear_max + 1e-6)
    assert within[some_clear].all()


def test_grid_sits_on_the_scene_grid(prepared: tuple) -> None:
    scene, cube_path = prepared
    ds = open_cube(cube_path)
    with rasterio.open(scene.truth_change) as truth:
        assert ds.rio.crs == truth.crs
        assert tuple(ds.rio.transform())[:6] == pytest.approx(tuple(truth.transform)[:6])
        assert (ds.sizes["y"], ds.sizes["x"]) == truth.shape
    counts = ds["clear_count"].values
    assert counts.max() <= len(scene.items_of("before"))


@pytest.mark.skipif(
    shutil.which("gdalinfo") is None, reason="gdalinfo (gdal-bin) is not installed; .ci/setup installs it"
)
def test_gdalinfo_and_rioxarray_agree_on_the_grid(prepared: tuple) -> None:
    _, cube_path = prepared
    info = subprocess.run(
        ["gdalinfo", "-json", f'ZARR:"{cube_path}":/reflectance:0:0'],
        capture_output=True,
        text=True,
        check=True,
    )
    doc = json.loads(info.stdout)
    ds = open_cube(cube_path)
    assert tuple(doc["geoTransform"]) == pytest.approx(ds.rio.transform().to_gdal())
    assert doc["size"] == [ds.sizes["x"], ds.sizes["y"]]
    assert doc["coordinateSystem"]["wkt"].rstrip().endswith('ID["EPSG",32633]]')
    assert ds.rio.crs.to_epsg() == 32633


def test_block_size_does_not_change_the_cube(prepared: tuple, tmp_path: Path) -> None:
    scene, cube_path = prepared
    fields = demo_job_fields(scene, str(scene.items_path), tmp_path / "out")
    fields["block_size"] = 768  # blocks that do not divide the scene, so edge blocks are partial
    job = JobSpec.build(**fields)
    other = prepare_cube(job, discover(job), progress=False)
    a = open_cube(cube_path)
    b = open_cube(other.path)
    assert b["reflectance"].data.chunksize == (1, 6, 768, 768)
    np.testing.assert_array_equal(a["reflectance"].values, b["reflectance"].values)
    np.testing.assert_array_equal(a["clear_count"].values, b["clear_count"].values)
