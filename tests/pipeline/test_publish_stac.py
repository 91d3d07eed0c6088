"""publish(): the STAC of the outputs (validated offline), checksums, links, quick-look, idempotence.

A small input cube goes through the real engine (CVA baseline + spectral segmenter, one
in-process worker) and is published once per module; the tests read what was written.

Offline, the STAC core schemas (bundled by pystac) are validated; the projection, file and
processing extension schemas are not available offline and are reported as skipped. One test
shows that a local mirror of extension schemas is used when given (with a deliberately strict
stand-in schema), which is how the real ones validate without the network.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import pystac_client
import pytest
import rasterio
import zarr
from engine_inputs import ORIGIN, run_small_engine, write_patch_cube
from pyproj import Transformer

from pipeline.discover import Discovery
from pipeline.errors import PublishError, StacValidationError
from pipeline.publish import (
    PublishResult,
    describe_change_cube,
    publish,
    validate_published,
    validate_stac,
    write_quicklook,
)
from pipeline.publish.quicklooks import quicklook_geometry
from pipeline.publish.stac import (
    FILE_EXTENSION,
    PROCESSING_EXTENSION,
    PROJECTION_EXTENSION,
    ZARR_MEDIA_TYPE,
    derived_from,
    is_loopback,
    unlinked_inputs,
)
from pipeline.spec import JobSpec
from pipeline.stac_servers import serve_collection
from pipeline.synthetic import SceneSpec, generate_scene

# The input cube's band/epoch names are fixed-width strings on purpose (see pipeline.cube).
pytestmark = pytest.mark.filterwarnings("ignore:The data type .* does not have a Zarr V3 specification")

HEIGHT, WIDTH = 260, 300
API = "https://stac.example.com/v1"
PROVENANCE = {
    "catalog": API,
    "collections": ["sentinel-2-l2a"],
    "cloud_limit": 50.0,
    "items": {
        "before": [
            {
                "id": "S2A_2023",
                "collection": "sentinel-2-l2a",
                "href": f"{API}/collections/sentinel-2-l2a/items/S2A_2023",
            },
        ],
        "after": [
            {"id": "S2B_2024a", "collection": "sentinel-2-l2a", "href": None},
            {
                "id": "S2B_2024b",
                "collection": "sentinel-2-l2a",
                "href": "https://mirror.example.org/S2B_2024b.json",
            },
        ],
    },
}
COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"


def make_cube(path: Path) -> Path:
    """A two-date cube with class patches (some changed), a cloud before and a nodata row."""
    clouds = ((0, slice(60, 100), slice(40, 110)),)
    return write_patch_cube(path, HEIGHT, WIDTH, chunk=128, seed=3, change_fraction=0.25, gaps=clouds)


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> JobSpec:
    return JobSpec.build(
        aoi={
            "bbox": (ORIGIN[0], ORIGIN[1] - 10 * HEIGHT, ORIGIN[0] + 10 * WIDTH, ORIGIN[1]),
            "crs": "EPSG:32633",
        },
        before="2023-06-01/2023-06-30",
        after="2024-06-01/2024-08-31",
        catalog=API,
        collections="sentinel-2-l2a",
        grid={"crs": "EPSG:32633"},
        output=str(tmp_path_factory.mktemp("job")),
    )


@pytest.fixture(scope="module")
def run(job: JobSpec) -> tuple[Path, Path]:
    out = Path(job.output)
    cube = make_cube(out / "input_cube.zarr")
    result = run_small_engine(job, cube, out / "change_cube.zarr")
    return cube, result.path


@pytest.fixture(scope="module")
def published(job: JobSpec, run: tuple[Path, Path]) -> PublishResult:
    cube, change = run
    return publish(job, change, cube, PROVENANCE, Path(job.output), progress=False)


def load(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def test_collection_and_item_validate_offline_against_the_core_schemas(published: PublishResult) -> None:
    results = validate_published(published.stac_collection)
    assert [r.validated[0].rsplit("/", 1)[-1] for r in results] == ["collection.json", "item.json"]
    collection, item = results
    assert collection.complete
    # The extension schemas are not available offline: reported, never passed silently.
    assert item.skipped == (PROJECTION_EXTENSION, FILE_EXTENSION, PROCESSING_EXTENSION)
    assert published.validation == tuple(results)
    # pystac reads the self-contained catalog and resolves the item and its assets.
    read = pystac.read_file(str(published.stac_collection))
    assert isinstance(read, pystac.Collection)
    items = list(read.get_items())
    assert [i.id for i in items] == [load(published.stac_item)["id"]]
    for asset in items[0].assets.values():
        assert Path(asset.get_absolute_href() or "").exists()


def test_invalid_documents_are_refused(published: PublishResult) -> None:
    item = load(published.stac_item)
    broken = json.loads(json.dumps(item))
    broken["bbox"] = broken["bbox"][:3]
    with pytest.raises(StacValidationError, match="bbox"):
        validate_stac(broken)
    missing = json.loads(json.dumps(item))
    del missing["properties"]["start_datetime"]  # datetime is null, so the range is required
    with pytest.raises(StacValidationError, match="item.json"):
        validate_stac(missing)
    collection = load(published.stac_collection)
    del collection["extent"]
    with pytest.raises(StacValidationError, match="extent"):
        validate_stac(collection)
    older = dict(item, stac_version="1.0.0")
    with pytest.raises(StacValidationError, match="online=True"):
        validate_stac(older)


def test_a_local_schema_mirror_validates_extensions(published: PublishResult, tmp_path: Path) -> None:
    """The mirror is used for extension schemas (here stand-ins: one strict, two permissive)."""
    item = load(published.stac_item)
    for uri in (PROJECTION_EXTENSION, FILE_EXTENSION, PROCESSING_EXTENSION):
        path = tmp_path / uri.split("://", 1)[1]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"$schema": "http://json-schema.org/draft-07/schema#", "type": "object"}))
    result = validate_stac(item, schema_dir=tmp_path)
    assert result.complete and result.validated[1:] == (
        PROJECTION_EXTENSION,
        FILE_EXTENSION,
        PROCESSING_EXTENSION,
    )
    strict = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": {"properties": {"properties": {"proj:code": {"const": "EPSG:4326"}}}},
    }
    (tmp_path / PROJECTION_EXTENSION.split("://", 1)[1]).write_text(json.dumps(strict))
    with pytest.raises(StacValidationError, match=r"projection/v2\.0\.0.*proj:code"):
        validate_stac(item, schema_dir=tmp_path)


def test_checksums_and_sizes_match_the_files(published: PublishResult, tmp_path: Path) -> None:
    item = load(published.stac_item)
    stac_dir = published.stac_item.local_path.parent
    files = {key: (stac_dir / asset["href"]).resolve() for key, asset in item["assets"].items()}
    expected_files = {
        **{layer: path.local_path.resolve() for layer, path in published.cogs.items()},
        "statistics_parquet": published.statistics_parquet.local_path.resolve(),
        "statistics_json": published.statistics_json.local_path.resolve(),
        "quicklook": published.quicklook.local_path.resolve(),
    }
    for key, path in expected_files.items():
        asset = item["assets"][key]
        assert files[key] == path
        assert asset["file:size"] == path.stat().st_size
        assert asset["file:checksum"] == "1220" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert "file:checksum" not in item["assets"]["change_cube"]
    # A file changed after publishing is caught.
    copy = tmp_path / "copy"
    shutil.copytree(Path(published.stac_collection).parents[1], copy, ignore=shutil.ignore_patterns("*.zarr"))
    with (copy / "statistics.json").open("a") as f:
        f.write(" ")
    zarr_href = item["assets"]["change_cube"]["href"]
    (copy / "stac" / zarr_href).mkdir(parents=True)  # the relative Zarr href resolves in the copy too
    with pytest.raises(StacValidationError, match="statistics_json: size"):
        validate_published(copy / "stac" / "collection.json")


def test_item_describes_grid_time_processing_and_inputs(
    published: PublishResult, job: JobSpec, run: tuple[Path, Path]
) -> None:
    item = load(published.stac_item)
    props = item["properties"]
    assert (
        item["id"].startswith("seg2change-") and item["collection"] == load(published.stac_collection)["id"]
    )
    assert props["datetime"] is None
    assert props["start_datetime"] == "2023-06-01T00:00:00Z"
    assert props["end_datetime"] == "2024-08-31T23:59:59.999999Z"
    assert props["proj:code"] == "EPSG:32633" and props["proj:shape"] == [HEIGHT, WIDTH]
    assert props["proj:transform"] == [10.0, 0.0, ORIGIN[0], 0.0, -10.0, ORIGIN[1]]
    assert props["proj:bbox"] == [ORIGIN[0], ORIGIN[1] - 10 * HEIGHT, ORIGIN[0] + 10 * WIDTH, ORIGIN[1]]
    to_wgs84 = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
    lon, lat = to_wgs84.transform([ORIGIN[0], ORIGIN[0] + 10 * WIDTH], [ORIGIN[1] - 10 * HEIGHT, ORIGIN[1]])
    west, south, east, north = item["bbox"]
    assert west <= min(lon) and east >= max(lon) and south <= min(lat) and north >= max(lat)
    assert east - west < 0.05 and north - south < 0.05
    software = props["processing:software"]
    assert {"seg2change", "torch", "dask", "xarray", "zarr", "rasterio", "stackstac"} <= set(software)
    assert all(isinstance(v, str) and v for v in software.values())
    assert "cva" in props["processing:lineage"] and "sentinel-2-l2a" in props["processing:lineage"]
    assert props["seg2change:classes"][0] == "background"

    assets = item["assets"]
    assert assets["change_cube"]["type"] == ZARR_MEDIA_TYPE and assets["change_cube"]["roles"] == ["data"]
    change_cube_href = published.stac_item.local_path.parent / assets["change_cube"]["href"]
    assert change_cube_href.resolve() == Path(run[1]).resolve()
    for layer in ("change_probability", "change", "class_before", "class_after", "transition"):
        assert assets[layer]["type"] == COG_TYPE and assets[layer]["roles"] == ["data"]
        assert not assets[layer]["href"].startswith("/")
    assert assets["change_probability"]["nodata"] == "nan" and assets["transition"]["nodata"] == 65535
    assert assets["quicklook"]["roles"] == ["overview"] and assets["quicklook"]["type"] == "image/png"

    links = [link for link in item["links"] if link["rel"] == "derived_from"]
    assert [link["href"] for link in links] == [
        f"{API}/collections/sentinel-2-l2a/items/S2A_2023",
        f"{API}/collections/sentinel-2-l2a/items/S2B_2024a",  # constructed: the item had no self link
        "https://mirror.example.org/S2B_2024b.json",
    ]
    assert all(not link["href"].startswith("/") for link in item["links"] if link["rel"] != "derived_from")


def test_derived_from_never_points_at_one_catalog_file_for_every_item(tmp_path: Path) -> None:
    catalog = str(tmp_path / "items.ndjson")
    own = str(tmp_path / "catalog" / "b" / "b.json")
    provenance = {
        "catalog": catalog,
        "items": {
            "before": [{"id": "a", "collection": "c", "href": None}],
            "after": [{"id": "b", "collection": "c", "href": own}],
        },
    }
    assert derived_from(provenance) == [
        {"rel": "derived_from", "href": own, "type": "application/geo+json", "title": "after: b"}
    ]
    assert unlinked_inputs(provenance) == ["before: a"]


LOOPBACK_API = "http://127.0.0.1:41234"
LOOPBACK_PROVENANCE = {
    "catalog": LOOPBACK_API,
    "collections": ["synthetic-s2"],
    "items": {
        "before": [
            {
                "id": "a",
                "collection": "synthetic-s2",
                "href": f"{LOOPBACK_API}/collections/synthetic-s2/items/a",
            },
            {"id": "b", "collection": "synthetic-s2", "href": None},  # would be constructed on the API
        ],
        "after": [
            {"id": "c", "collection": "synthetic-s2", "href": "http://localhost:8080/items/c"},
            {"id": "d", "collection": "synthetic-s2", "href": "http://[::1]:8080/items/d"},
            {"id": "e", "collection": "synthetic-s2", "href": "https://earth-search.aws.element84.com/v1/e"},
        ],
    },
}


def test_loopback_addresses_are_recognised() -> None:
    for href in ("http://127.0.0.1:1/x", "http://127.5.0.1/x", "http://localhost/x", "http://[::1]:80/x"):
        assert is_loopback(href), href
    for href in ("https://earth-search.aws.element84.com/v1", "/data/items.ndjson", "s3://bucket/x", ""):
        assert not is_loopback(href), href


def test_no_published_stac_link_names_a_loopback_address(
    job: JobSpec, run: tuple[Path, Path], tmp_path: Path
) -> None:
    result = publish(job, run[1], run[0], LOOPBACK_PROVENANCE, tmp_path / "out", progress=False)
    hrefs = []
    for path in (result.stac_collection.local_path, result.stac_item.local_path):
        doc = json.loads(path.read_text())
        hrefs += [link["href"] for link in doc["links"]]
        hrefs += [asset["href"] for asset in doc.get("assets", {}).values()]
    assert hrefs and not [h for h in hrefs if "127.0.0.1" in h or "localhost" in h or "[::1]" in h]
    # Nor does any other text of the STAC (the lineage names the catalog) give the dead address.
    for path in (result.stac_collection.local_path, result.stac_item.local_path):
        assert "127.0.0.1" not in path.read_text() and "localhost" not in path.read_text()
    item = json.loads(result.stac_item.local_path.read_text())
    assert [link["href"] for link in item["links"] if link["rel"] == "derived_from"] == [
        "https://earth-search.aws.element84.com/v1/e"
    ]
    assert item["properties"]["seg2change:unlinked_inputs"] == [
        "before: a",
        "before: b",
        "after: c",
        "after: d",
    ]


def test_served_scene_items_are_linked_at_their_catalog_files_not_at_the_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """As in the demo: a generated scene served by the embedded STAC API, whose port closes after the run."""
    scene = generate_scene(SceneSpec(size=256, seed=3, block_size=256), tmp_path_factory.mktemp("scene"))
    with serve_collection(scene.collection_path, scene.items_path, kind="rustac") as server:
        assert is_loopback(server.url)
        client = pystac_client.Client.open(server.url)
        found = list(client.search(collections=[scene.spec.collection_id]).items_as_dicts())
        discovery = Discovery(
            items={"before": found[:2], "after": found[2:]},
            filter_mode="client",
            catalog=server.url,
            cloud_limit=100.0,
            collections=(scene.spec.collection_id,),
        )
        provenance = discovery.provenance()
    assert len(found) == len(scene.items)
    links = derived_from(provenance)
    assert len(links) == len(found) and not unlinked_inputs(provenance)
    for link in links:
        assert Path(link["href"]).parent.parent == scene.catalog_dir
        item = pystac.Item.from_file(link["href"])  # the item's own file, readable after the server stops
        assert link["title"].endswith(item.id)


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_quicklook_is_a_png_of_the_expected_size(published: PublishResult) -> None:
    geometry = quicklook_geometry(HEIGHT, WIDTH)
    assert geometry.stride == 1 and geometry.scale == 1 and geometry.panel == (HEIGHT, WIDTH)
    assert published.quicklook.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with rasterio.open(published.quicklook) as png:
        assert png.driver == "PNG" and png.count == 3
        margin, gap = 10, 10  # pipeline.quicklook's layout: margins, three panels and two gaps
        assert png.width == 2 * margin + 3 * WIDTH + 2 * gap
        assert HEIGHT < png.height < HEIGHT + 200
    # Big areas are read with a stride so the longest side is at most 2048 px; tiny ones enlarged.
    assert quicklook_geometry(5000, 3000) == type(geometry)(stride=3, scale=1, panel=(1667, 1000))
    assert quicklook_geometry(2048, 100).stride == 1
    assert quicklook_geometry(60, 40) == type(geometry)(stride=1, scale=4, panel=(240, 160))


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_quicklook_of_a_big_area_is_strided_and_merges_rare_transitions(
    run: tuple[Path, Path], tmp_path: Path
) -> None:
    cube, change = run
    info = describe_change_cube(change)
    k = len(info.classes)
    present = np.unique(zarr.open_array(str(change), path="transition", mode="r")[...])
    codes = [int(c) for c in present if c < 65534]
    # More transitions than colours: as many as present, plus some absent from the map.
    pixels = {c: 1000 - i for i, c in enumerate(codes + [k * k - 1, k * k - 2, k * k - 3])}
    assert len(pixels) > 10
    path, geometry = write_quicklook(info, cube, tmp_path / "q.png", transition_pixels=pixels, max_side=100)
    assert geometry.stride == 3 and geometry.scale == 2 and geometry.panel == (2 * 87, 2 * 100)
    with rasterio.open(path) as png:
        assert png.width == 40 + 3 * 200
        picture = png.read()
    # pipeline.quicklook's layout: 10 px margins and gaps, titles 2 x 7 px high plus a gap. The
    # change panel (third) shows the after image dimmed (at most 154) and the transitions in
    # colour; white there is the colour of the merged "other" transitions.
    top, left = 10 + 14 + 10, 10 + 2 * (200 + 10)
    panel = picture[:, top : top + 174, left : left + 200]
    assert (picture[:, top - 1, left : left + 200] == 255).all()  # the title band above is white
    assert not (panel[:, 0, :] == 255).all()  # the panel's first row is image, not background
    assert (panel == 255).all(axis=0).sum() > 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.png"]


def test_publishing_again_replaces_only_its_own_files(
    published: PublishResult, job: JobSpec, run: tuple[Path, Path]
) -> None:
    out = Path(job.output)
    (out / "notes.txt").write_text("kept")

    def snapshot() -> dict[str, bytes]:
        return {
            str(p.relative_to(out)): p.read_bytes()
            for p in sorted(out.rglob("*"))
            if p.is_file() and ".zarr" not in str(p.relative_to(out))
        }

    first = snapshot()
    again = publish(job, run[1], run[0], PROVENANCE, out, progress=False)
    second = snapshot()
    assert sorted(first) == sorted(second)  # no temporary or stale files
    assert second["notes.txt"] == b"kept"
    assert again.statistics == published.statistics
    assert first == second  # COGs, statistics, PNG and STAC are reproducible byte for byte
    assert sorted(first) == sorted(
        [
            "notes.txt",
            "quicklook.png",
            "statistics.json",
            "statistics.parquet",
            "stac/collection.json",
            "stac/item.json",
            *(f"cogs/{layer}.tif" for layer in published.cogs),
            *(
                f"cogs/{layer}.tif.aux.xml"
                for layer in ("change", "class_before", "class_after", "transition")
            ),
        ]
    )


def test_publish_refuses_what_it_cannot_describe(
    job: JobSpec, run: tuple[Path, Path], tmp_path: Path
) -> None:
    cube, change = run
    with pytest.raises(PublishError, match="records no provenance"):
        publish(job, change, cube, None, tmp_path, progress=False)
    with pytest.raises(PublishError, match="not a seg2change change cube"):
        publish(job, cube, cube, PROVENANCE, tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_quicklook_legend_names_same_class_change_as_such(
    run: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipeline.publish.quicklooks as quicklooks

    info = describe_change_cube(run[1])
    k = len(info.classes)
    water, building = info.classes.index("water"), info.classes.index("building")
    drawn: dict[int, str] = {}

    def capture(
        before: Any, after: Any, codes: Any, labels: dict[int, str], colours: Any, path: Path, **kw: Any
    ) -> None:
        drawn.update(labels)
        Path(path).write_bytes(b"")

    monkeypatch.setattr(quicklooks, "render_quicklook", capture)
    pixels = {water * k + water: 300, water * k + building: 200}
    write_quicklook(info, run[0], tmp_path / "q.png", transition_pixels=pixels)
    assert drawn[water * k + water].startswith("changed, class unchanged (water)")
    assert drawn[water * k + building].startswith("water -> building")
