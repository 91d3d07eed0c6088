"""AOIs across the antimeridian: split at ±180°, searched on both sides, gridded as one small area."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import shapely

from pipeline.discover import discover
from pipeline.errors import JobSpecError
from pipeline.spec import JobSpec
from pipeline.stac_servers import serve_collection

#: 0.1° x 0.1° around the antimeridian at 17° S (Fiji), as a polygon and as a bbox.
POLYGON = {
    "type": "Polygon",
    "coordinates": [
        [[179.95, -17.05], [-179.95, -17.05], [-179.95, -16.95], [179.95, -16.95], [179.95, -17.05]]
    ],
}
BBOX = [179.95, -17.05, -179.95, -16.95]


def fields(aoi: dict[str, Any], catalog: str = "http://127.0.0.1:9/", **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "aoi": aoi,
        "before": "2024-05-01/2024-05-31",
        "after": "2024-07-01/2024-07-31",
        "catalog": catalog,
        "collections": ["demo"],
        "output": "/tmp/seg2change-antimeridian-out",
    }
    base.update(changes)
    return base


def _item(item_id: str, when: str, bbox: list[float]) -> dict[str, Any]:
    x0, y0, x1, y1 = bbox
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": [],
        "id": item_id,
        "collection": "demo",
        "bbox": bbox,
        "geometry": {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]},
        "properties": {"datetime": when, "eo:cloud_cover": 1.0},
        "assets": {"red": {"href": "red.tif", "type": "image/tiff; application=geotiff"}},
        "links": [],
    }


EAST = [179.5, -17.5, 180.0, -16.5]
WEST = [-180.0, -17.5, -179.5, -16.5]
ITEMS = [
    _item("before-east", "2024-05-05T10:00:00Z", EAST),
    _item("before-west", "2024-05-06T10:00:00Z", WEST),
    _item("before-africa", "2024-05-07T10:00:00Z", [16.0, -17.5, 16.8, -16.5]),  # a naive strip holds it
    _item("after-east", "2024-07-05T10:00:00Z", EAST),
    _item("after-west", "2024-07-06T10:00:00Z", WEST),
]
EXPECTED = {"before": ["before-east", "before-west"], "after": ["after-east", "after-west"]}


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("antimeridian")
    collection = {
        "type": "Collection",
        "stac_version": "1.1.0",
        "id": "demo",
        "description": "items on both sides of the antimeridian",
        "license": "proprietary",
        "extent": {
            "spatial": {"bbox": [[179.5, -17.5, -179.5, -16.5]]},
            "temporal": {"interval": [["2024-05-01T00:00:00Z", "2024-07-31T00:00:00Z"]]},
        },
        "links": [],
    }
    (folder / "collection.json").write_text(json.dumps(collection))
    items = folder / "items.ndjson"
    items.write_text("".join(json.dumps(i) + "\n" for i in ITEMS))
    return folder / "collection.json", items


def _ids(items: dict[str, list[dict[str, Any]]]) -> dict[str, list[str]]:
    return {epoch: [i["id"] for i in found] for epoch, found in items.items()}


@pytest.mark.parametrize("aoi", [{"geometry": POLYGON}, {"bbox": BBOX}], ids=["polygon", "bbox"])
def test_aoi_is_split_at_180_and_gridded_on_its_own_size(aoi: dict[str, Any]) -> None:
    job = JobSpec.build(**fields(aoi))
    assert job.aoi.crosses_antimeridian
    parts = job.aoi.wgs84()
    assert isinstance(parts, shapely.MultiPolygon) and len(parts.geoms) == 2
    assert sorted(round(p.bounds[0], 2) for p in parts.geoms) == [-180.0, 179.95]
    assert all(p.bounds[0] >= -180 and p.bounds[2] <= 180 for p in parts.geoms)
    assert job.target_crs().to_epsg() in {32701, 32760}  # a UTM zone beside ±180°, south
    xmin, ymin, xmax, ymax = job.target_bounds()
    # 0.1° is 10.6 km at 17° S (and 11.1 km of latitude); naively read, it would be 38,000 km wide.
    assert 10_000 < xmax - xmin < 12_000 and 10_500 < ymax - ymin < 12_000


def test_local_catalog_returns_the_scenes_on_both_sides(catalog: tuple[Path, Path]) -> None:
    for aoi in ({"geometry": POLYGON}, {"bbox": BBOX}):
        found = discover(JobSpec.build(**fields(aoi, catalog=str(catalog[1]))))
        assert _ids(found.items) == EXPECTED


def test_stac_api_returns_the_scenes_on_both_sides(catalog: tuple[Path, Path]) -> None:
    with serve_collection(*catalog, kind="rustac") as server:
        found = discover(JobSpec.build(**fields({"geometry": POLYGON}, catalog=server.url)))
    assert _ids(found.items) == EXPECTED


def test_grid_that_tears_the_sides_apart_is_refused() -> None:
    with pytest.raises(JobSpecError, match=r"grid crs EPSG:3857 cannot hold the AOI across the antimeridian"):
        JobSpec.build(**fields({"geometry": POLYGON}, grid={"crs": "EPSG:3857"}))
    job = JobSpec.build(**fields({"bbox": BBOX}, grid={"crs": "EPSG:32660"}))
    xmin, _, xmax, _ = job.target_bounds()
    assert 10_000 < xmax - xmin < 12_000


@pytest.mark.parametrize(
    ("aoi", "expected"),
    [
        ({"bbox": [10.0, 0.0, 5.0, 1.0]}, "empty or reversed"),  # 355° wide: reversed, not crossing
        ({"bbox": [510000, 0, 500000, 1000], "crs": "EPSG:32633"}, "empty or reversed"),
        ({"bbox": [190.0, 0.0, -179.0, 1.0]}, "outside -180..180"),
    ],
)
def test_reversed_bboxes_that_do_not_cross_are_refused(aoi: dict[str, Any], expected: str) -> None:
    with pytest.raises(JobSpecError, match=expected):
        JobSpec.build(**fields(aoi))


def test_ordinary_aoi_does_not_cross() -> None:
    job = JobSpec.build(**fields({"bbox": [13.0, 52.0, 13.1, 52.1]}))
    assert not job.aoi.crosses_antimeridian
    assert job.target_crs().to_epsg() == 32633


def test_aoi_in_another_geographic_crs_is_projected_from_it() -> None:
    nad83 = JobSpec.build(**fields({"bbox": BBOX, "crs": "EPSG:4269"}))
    wgs84 = JobSpec.build(**fields({"bbox": BBOX}))
    assert nad83.aoi.crosses_antimeridian
    assert nad83.target_bounds() == pytest.approx(wgs84.target_bounds(), abs=20)
