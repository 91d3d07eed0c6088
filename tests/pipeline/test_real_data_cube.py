"""Real imagery through discovery and cube assembly: OSCD Sentinel-2 cities and xView2 Joplin.

OSCD ships 13 single-band GeoTIFFs per date in EPSG:4326 at three native resolutions; Joplin
ships RGB tiles of the same place in two CRSs (EPSG:26915 before, EPSG:4326 after). Both must land
on one UTM grid whose georeferencing GDAL and rioxarray agree on.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely.geometry

from pipeline.cube import open_cube, prepare_cube
from pipeline.discover import discover
from pipeline.local_catalog import Acquisition, build_catalog
from pipeline.spec import JobSpec

pytestmark = pytest.mark.shared_data

OSCD_BANDS = {"blue": "B02", "green": "B03", "red": "B04", "nir": "B08", "swir16": "B11", "swir22": "B12"}


def _oscd_catalog(city_dir: Path, out: Path) -> Path:
    dates = dict(
        line.split(": ") for line in (city_dir / "dates.txt").read_text().split("\n") if ": " in line
    )
    acquisitions = []
    for epoch, folder in (("date_1", "imgs_1"), ("date_2", "imgs_2")):
        files = sorted((city_dir / folder).glob("*.tif"))
        bands = {
            name: (next(f for f in files if f.stem.endswith(f"_{code}")), 1)
            for name, code in OSCD_BANDS.items()
        }
        when = datetime.strptime(dates[epoch].strip(), "%Y%m%d").replace(tzinfo=UTC)
        acquisitions.append(
            Acquisition(
                item_id=f"{city_dir.name}-{epoch}",
                datetime=when,
                bands=bands,
                properties={"eo:cloud_cover": 0.0, "platform": "sentinel-2"},
                scale=1e-4,
            )
        )
    return build_catalog(acquisitions, out, collection_id="oscd")


GDAL_READS_ZARR3 = tuple(int(p) for p in rasterio.__gdal_version__.split(".")[:2]) >= (3, 11)


def _gdal_georef(zarr_path: Path) -> tuple[str, tuple[float, ...], tuple[int, int]]:
    with rasterio.open(f'ZARR:"{zarr_path}":/reflectance:0:0') as ds:
        return ds.crs.to_string(), tuple(ds.transform)[:6], (ds.height, ds.width)


def _gdalinfo_origin(zarr_path: Path) -> tuple[float, float, float]:
    info = subprocess.run(
        ["gdalinfo", "-json", f'ZARR:"{zarr_path}":/reflectance:1:2'],
        capture_output=True,
        text=True,
        check=True,
    )
    doc = json.loads(info.stdout)
    x0, dx, _, y0, _, dy = doc["geoTransform"]
    assert doc["coordinateSystem"]["wkt"].rstrip().endswith('ID["EPSG",32631]]')
    return x0, y0, dx


def test_oscd_city_cube_is_georeferenced(shared_data: Path, tmp_path: Path) -> None:
    city = shared_data / "change_detection" / "oscd_s2" / "bercy"
    catalog = _oscd_catalog(city, tmp_path / "catalog")
    footprint = json.loads((city / "bercy.geojson").read_text())
    job = JobSpec.build(
        aoi=footprint,
        before="2016-11-01/2016-12-31",
        after="2017-08-01/2017-09-30",
        catalog=str(catalog),
        collections=["oscd"],
        quality="none",
        output=str(tmp_path / "out"),
        asset_roots=[str(city)],  # the band files stay in the shared data, outside the catalog's folder
        block_size=256,
        zarr_format=3 if GDAL_READS_ZARR3 else 2,  # GDAL < 3.11 reads only Zarr v2 of zarr-python's
    )
    found = discover(job)
    assert [i["id"] for i in found.items["before"]] == ["bercy-date_1"]
    assert found.filter_mode == "client"
    cube = prepare_cube(job, found, progress=False)
    ds = open_cube(cube.path)
    assert ds["reflectance"].dims == ("epoch", "band", "y", "x")
    assert list(ds["band"].values) == list(OSCD_BANDS)
    assert ds.rio.crs.to_epsg() == 32631
    # The footprint is a rotated quad in UTM; inside it nearly every pixel has data.
    inner = ds["reflectance"].isel(y=slice(40, -40), x=slice(40, -40)).values
    assert np.isfinite(inner).mean() > 0.99
    assert 0.0 < float(np.nanmedian(inner[:, 2])) < 0.5  # red reflectance of a city in autumn
    crs, transform, shape = _gdal_georef(cube.path)
    assert crs == "EPSG:32631"
    assert transform == pytest.approx(tuple(ds.rio.transform())[:6])
    assert shape == (ds.sizes["y"], ds.sizes["x"])
    if shutil.which("gdalinfo") and job.zarr_format == 2:
        x0, y0, dx = _gdalinfo_origin(cube.path)
        transform = ds.rio.transform()
        assert (x0, y0, dx) == pytest.approx((transform.c, transform.f, transform.a))


def test_joplin_two_crs_reproject_onto_one_grid(shared_data: Path, tmp_path: Path) -> None:
    joplin = shared_data / "geo" / "xview2_joplin"
    acquisitions = []
    # xView2 does not give capture times; nominal dates before and after the 2011-05-22 tornado.
    for epoch, when in (
        ("pre", datetime(2011, 5, 1, tzinfo=UTC)),
        ("post", datetime(2011, 6, 1, tzinfo=UTC)),
    ):
        for tif in sorted((joplin / epoch).glob("*.tif")):
            acquisitions.append(
                Acquisition(
                    item_id=f"{epoch}-{tif.stem}",
                    datetime=when,
                    bands={"red": (tif, 1), "green": (tif, 2), "blue": (tif, 3)},
                    properties={"eo:cloud_cover": 0.0},
                )
            )
    catalog = build_catalog(acquisitions, tmp_path / "catalog", collection_id="joplin")
    overlap = shapely.geometry.box(-94.4990, 37.0640, -94.4830, 37.0740)
    job = JobSpec.build(
        aoi={"geometry": shapely.geometry.mapping(overlap)},
        before="2011-04-01/2011-05-21",
        after="2011-05-23/2011-06-30",
        catalog=str(catalog),
        collections=["joplin"],
        bands=["red", "green", "blue"],
        quality="none",
        grid={"resolution": 1.0},
        output=str(tmp_path / "out"),
        block_size=512,
    )
    found = discover(job)
    crss = {
        json.dumps(item["assets"]["red"]["proj:code"])
        for epoch in ("before", "after")
        for item in found.items[epoch]
    }
    assert crss == {'"EPSG:26915"', '"EPSG:4326"'}
    cube = prepare_cube(job, found, progress=False)
    ds = open_cube(cube.path)
    assert ds.rio.crs.to_epsg() == 32615  # the AOI's UTM zone, not either input CRS
    assert ds.rio.resolution() == (1.0, -1.0)
    before = ds["reflectance"].sel(epoch="before").values
    after = ds["reflectance"].sel(epoch="after").values
    both = np.isfinite(before).all(0) & np.isfinite(after).all(0)
    assert both.mean() > 0.05
    # Co-registered: the two dates correlate far better in place than shifted by 20 m.
    b, a = before[0], after[0]
    aligned = np.corrcoef(b[both], a[both])[0, 1]
    shifted_mask = both[:, :-20] & both[:, 20:]
    shifted = np.corrcoef(b[:, :-20][shifted_mask], a[:, 20:][shifted_mask])[0, 1]
    assert aligned > shifted + 0.1
    if GDAL_READS_ZARR3:
        crs, transform, _ = _gdal_georef(cube.path)
        assert crs == "EPSG:32615" and transform == pytest.approx(tuple(ds.rio.transform())[:6])
