"""An asset GDAL cannot read (truncated, or not a raster at all) stops prepare with a message, not a traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from pipeline.cube import prepare_cube
from pipeline.discover import discover
from pipeline.errors import CubeError
from pipeline.spec import JobSpec

ORIGIN = (390000.0, 5770000.0)  # EPSG:32633, near 52.07 N 13.4 E
SIZE, RES = 64, 10.0


def _write_tif(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(0).integers(1, 4000, (1, SIZE, SIZE), dtype=np.uint16)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=SIZE,
        height=SIZE,
        count=1,
        dtype="uint16",
        crs="EPSG:32633",
        transform=from_origin(*ORIGIN, RES, RES),
    ) as ds:
        ds.write(data)


def _item(item_id: str, when: str, href: str) -> dict[str, Any]:
    x0, y1 = ORIGIN
    x1, y0 = x0 + SIZE * RES, y1 - SIZE * RES
    lon_lat = [13.38, 52.06, 13.40, 52.07]
    lx0, ly0, lx1, ly1 = lon_lat
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "id": item_id,
        "collection": "demo",
        "bbox": lon_lat,
        "geometry": {
            "type": "Polygon",
            "coordinates": [[[lx0, ly0], [lx1, ly0], [lx1, ly1], [lx0, ly1], [lx0, ly0]]],
        },
        "properties": {
            "datetime": when,
            "eo:cloud_cover": 1.0,
            "proj:code": "EPSG:32633",
            "proj:bbox": [x0, y0, x1, y1],
            "proj:shape": [SIZE, SIZE],
            "proj:transform": [RES, 0.0, x0, 0.0, -RES, y1, 0.0, 0.0, 1.0],
        },
        "assets": {"red": {"href": href, "type": "image/tiff; application=geotiff"}},
        "links": [],
    }


def _job(folder: Path, output: Path) -> JobSpec:
    items = [
        _item("b", "2024-05-05T10:00:00Z", "data/before.tif"),
        _item("a", "2024-07-05T10:00:00Z", "data/after.tif"),
    ]
    catalog = folder / "items.ndjson"
    catalog.write_text("".join(json.dumps(i) + "\n" for i in items))
    x0, y1 = ORIGIN
    return JobSpec.build(
        aoi={"bbox": [x0 + 50, y1 - SIZE * RES + 50, x0 + SIZE * RES - 50, y1 - 50], "crs": "EPSG:32633"},
        before="2024-05-01/2024-05-31",
        after="2024-07-01/2024-07-31",
        catalog=str(catalog),
        collections=["demo"],
        bands=["red"],
        quality="none",
        grid={"resolution": RES, "crs": "EPSG:32633"},
        output=str(output),
        prompts={"classes": "water;building"},
    )


@pytest.mark.parametrize("damage", ["truncated", "not a raster"])
def test_an_unreadable_asset_is_named_with_what_to_do(tmp_path: Path, damage: str) -> None:
    folder = tmp_path / "catalog"
    _write_tif(folder / "data" / "before.tif")
    after = folder / "data" / "after.tif"
    _write_tif(after)
    job = _job(folder, tmp_path / "out")
    found = discover(job)
    if damage == "truncated":
        after.write_bytes(after.read_bytes()[:600])
    else:
        after.write_text("<html><body>403 Forbidden</body></html>")
    with pytest.raises(CubeError) as caught:
        prepare_cube(job, found, progress=False, scheduler="synchronous")
    message = str(caught.value)
    assert "cannot read an input asset" in message and "after.tif" in message
    assert "replace or remove the asset" in message and "catalog.sign" in message
    assert not (tmp_path / "out" / "input_cube.zarr").exists()


def test_readable_assets_prepare(tmp_path: Path) -> None:
    folder = tmp_path / "catalog"
    _write_tif(folder / "data" / "before.tif")
    _write_tif(folder / "data" / "after.tif")
    job = _job(folder, tmp_path / "out")
    prepared = prepare_cube(job, discover(job), progress=False, scheduler="synchronous")
    assert prepared is not None and (tmp_path / "out" / "input_cube.zarr").exists()
