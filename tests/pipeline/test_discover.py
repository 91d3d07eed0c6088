"""Discovery: the same items whatever the catalog, the cloud filter on the server when it can run there."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from pipeline.discover import discover, discover_window, open_catalog_items
from pipeline.errors import CatalogError, NothingFoundError
from pipeline.spec import JobSpec
from pipeline.stac_servers import find_pg_bindir, find_pgstac_python, serve_collection

AOI = [13.00, 52.00, 13.10, 52.10]


def _item(
    item_id: str, when: str, cloud: float, bbox: list[float] = AOI, collection: str = "demo"
) -> dict[str, Any]:
    x0, y0, x1, y1 = bbox
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "stac_extensions": [],
        "id": item_id,
        "collection": collection,
        "bbox": bbox,
        "geometry": {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]},
        "properties": {"datetime": when, "eo:cloud_cover": cloud, "proj:code": "EPSG:32633"},
        "assets": {"red": {"href": "red.tif", "type": "image/tiff; application=geotiff"}},
        "links": [],
    }


ITEMS = [
    _item("b-clear", "2024-05-05T10:00:00Z", 3.0),
    _item("b-cloudy", "2024-05-10T10:00:00Z", 80.0),
    _item("b-clear-late", "2024-05-20T10:00:00Z", 12.0),
    _item("b-elsewhere", "2024-05-06T10:00:00Z", 1.0, bbox=[20.0, 40.0, 20.1, 40.1]),
    _item("a-clear", "2024-07-03T10:00:00Z", 5.0),
    _item("a-cloudy", "2024-07-08T10:00:00Z", 95.0),
    _item("out-of-window", "2024-06-15T10:00:00Z", 0.0),
]
EXPECTED = {"before": ["b-clear", "b-clear-late"], "after": ["a-clear"]}


def _collection() -> dict[str, Any]:
    return {
        "type": "Collection",
        "stac_version": "1.1.0",
        "id": "demo",
        "description": "discovery test",
        "license": "proprietary",
        "extent": {
            "spatial": {"bbox": [[13.0, 40.0, 20.1, 52.1]]},
            "temporal": {"interval": [["2024-05-01T00:00:00Z", "2024-07-31T00:00:00Z"]]},
        },
        "links": [],
    }


@pytest.fixture(scope="module")
def catalog_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    folder = tmp_path_factory.mktemp("catalog")
    collection = folder / "collection.json"
    collection.write_text(json.dumps(_collection()))
    ndjson = folder / "items.ndjson"
    ndjson.write_text("\n".join(json.dumps(i) for i in ITEMS) + "\n")
    feature_collection = folder / "items.json"
    feature_collection.write_text(json.dumps({"type": "FeatureCollection", "features": ITEMS}))
    return collection, ndjson, feature_collection


def _job(catalog: str, tmp_path: Path, **changes: Any) -> JobSpec:
    fields: dict[str, Any] = {
        "aoi": {"bbox": [13.02, 52.02, 13.05, 52.05]},
        "before": "2024-05-01/2024-05-31",
        "after": "2024-07-01/2024-07-31",
        "catalog": catalog,
        "collections": ["demo"],
        "cloud_limit": 20,
        "output": str(tmp_path / "out"),
    }
    fields.update(changes)
    return JobSpec.build(**fields)


def _ids(found: dict[str, list[dict[str, Any]]]) -> dict[str, list[str]]:
    return {epoch: [item["id"] for item in items] for epoch, items in found.items()}


@pytest.mark.parametrize("which", [1, 2])
def test_local_files_are_filtered_on_the_client(
    catalog_files: tuple[Path, Path, Path], tmp_path: Path, which: int
) -> None:
    found = discover(_job(str(catalog_files[which]), tmp_path))
    assert found.filter_mode == "client"
    assert _ids(found.items) == EXPECTED
    assert found.items["before"][0]["properties"]["proj:epsg"] == 32633  # filled in for stackstac
    record = found.provenance()
    assert [row["id"] for row in record["items"]["after"]] == ["a-clear"]
    assert record["cloud_limit"] == 20


def test_local_asset_hrefs_become_absolute(catalog_files: tuple[Path, Path, Path]) -> None:
    item = next(open_catalog_items(catalog_files[1]))
    assert item["assets"]["red"]["href"] == str(catalog_files[1].parent / "red.tif")


def test_nothing_found_names_window_collections_and_limit(
    catalog_files: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    job = _job(str(catalog_files[1]), tmp_path, cloud_limit=4)
    with pytest.raises(NothingFoundError) as info:
        discover(job)
    message = str(info.value)
    assert "between 2024-07-01 and 2024-07-31" in message
    assert "collections demo" in message
    assert "<= 4%" in message
    assert "raise cloud_limit" in message


def test_rustac_filters_on_the_client_and_says_so(
    catalog_files: tuple[Path, Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        serve_collection(catalog_files[0], catalog_files[1], kind="rustac") as server,
        caplog.at_level(logging.INFO, logger="pipeline.discover"),
    ):
        found = discover(_job(server.url, tmp_path))
    assert found.filter_mode == "client"
    assert _ids(found.items) == EXPECTED
    assert "cloud filter runs on the client" in caplog.text


def _pgstac_available() -> str | None:
    try:
        find_pgstac_python()
        find_pg_bindir()
    except Exception as exc:  # the reason is shown in the skip message
        return str(exc)
    return None


@pytest.mark.pgstac
def test_pgstac_filters_on_the_server(catalog_files: tuple[Path, Path, Path], tmp_path: Path) -> None:
    reason = _pgstac_available()
    if reason:
        pytest.skip(f"pgstac is not installed here: {reason}")
    with serve_collection(catalog_files[0], catalog_files[1], kind="pgstac") as server:
        job = _job(server.url, tmp_path)
        found = discover(job)
        assert found.filter_mode == "server-filter"
        assert _ids(found.items) == EXPECTED
        # The server really filtered: the raw answer holds no item over the limit.
        raw, _ = discover_window(job, job.before)
        assert all(item["properties"]["eo:cloud_cover"] <= 20 for item in raw)


def test_a_catalog_file_without_items_says_so(catalog_files: tuple[Path, Path, Path], tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="holds no items"):
        discover(_job(str(catalog_files[0]), tmp_path))
