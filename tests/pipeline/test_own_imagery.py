"""Own imagery: GeoTIFFs in folders become STAC items the job reads, one CRS per date allowed."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
import shapely
import shapely.geometry
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin

from pipeline.bands import band_asset
from pipeline.cube import assemble_cube
from pipeline.discover import discover, open_catalog_items
from pipeline.errors import CatalogError, JobSpecError
from pipeline.own_imagery import catalog_rasters, datetime_from_name, find_rasters, write_item_collection
from pipeline.spec import JobSpec

JOPLIN = Path(__file__).resolve().parents[3] / "shared" / "data" / "geo" / "xview2_joplin"

# A 600 m square near Joplin in UTM 15N (NAD83) and the same place in lon/lat.
UTM_ORIGIN = (366_700.0, 4_104_400.0)
LONLAT_ORIGIN = (-94.4994, 37.0765)


def _write_rgb(
    path: Path,
    *,
    crs: str,
    origin: tuple[float, float],
    res: float,
    size: int = 64,
    tags: dict[str, str] | None = None,
    seed: int = 0,
    colours: bool = True,
) -> np.ndarray:
    data = np.random.default_rng(seed).integers(1, 255, size=(3, size, size), dtype="uint8")
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": 3,
        "dtype": "uint8",
        "crs": crs,
        "transform": from_origin(*origin, res, res),
    }
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
        if colours:
            ds.colorinterp = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
        else:
            ds.colorinterp = (ColorInterp.undefined,) * 3
        if tags:
            ds.update_tags(**tags)
    return data


@pytest.fixture
def two_dates(tmp_path: Path) -> Path:
    """Pre in EPSG:26915 at 10 m with a DATETIME tag, post in EPSG:4326 with the date in its name."""
    _write_rgb(
        tmp_path / "imgs" / "pre" / "scene.tif",
        crs="EPSG:26915",
        origin=UTM_ORIGIN,
        res=10.0,
        tags={"TIFFTAG_DATETIME": "2011:05:01 16:30:00"},
    )
    _write_rgb(
        tmp_path / "imgs" / "post" / "post_20110525.tif",
        crs="EPSG:4326",
        origin=LONLAT_ORIGIN,
        res=1e-4,
        seed=1,
    )
    return tmp_path / "imgs"


def test_items_carry_crs_footprint_time_and_band_names(two_dates: Path) -> None:
    pre = catalog_rasters([two_dates / "pre"], collection="own")
    post = catalog_rasters([two_dates / "post"], collection="own", name_pattern="post_%Y%m%d")
    (before,), (after,) = pre.items, post.items
    assert before.id == "scene" and before.collection_id == "own"
    assert before.datetime == datetime(2011, 5, 1, 16, 30, tzinfo=UTC)
    assert after.datetime == datetime(2011, 5, 25, tzinfo=UTC)
    assert before.properties["proj:epsg"] == 26915 and after.properties["proj:epsg"] == 4326
    assert before.properties["proj:shape"] == [64, 64]
    assert before.properties["gsd"] == 10.0 and "gsd" not in after.properties
    # The footprint is in WGS84 and lies where the UTM file is (its corner near Joplin).
    footprint = shapely.geometry.shape(before.geometry)
    assert footprint.contains(shapely.Point(-94.4960, 37.0740))
    asset = before.assets["image"].to_dict()
    assert [b["common_name"] for b in asset["eo:bands"]] == ["red", "green", "blue"]
    assert asset["href"] == str((two_dates / "pre" / "scene.tif").resolve())


def test_datetime_given_per_source_and_band_names_given(two_dates: Path) -> None:
    items = catalog_rasters(
        [two_dates / "pre", str(two_dates / "post" / "*.tif")],
        datetimes=[datetime(2011, 4, 1), datetime(2011, 6, 1)],
        bands=["blue", "green", "red"],
    )
    assert [i.datetime for i in items] == [
        datetime(2011, 4, 1, tzinfo=UTC),
        datetime(2011, 6, 1, tzinfo=UTC),
    ]
    names = [b["common_name"] for b in items.items[0].assets["image"].to_dict()["eo:bands"]]
    assert names == ["blue", "green", "red"]


def test_datetime_from_name_patterns() -> None:
    assert datetime_from_name("tile_a_20110525_x.tif", "%Y%m%d") == datetime(2011, 5, 25, tzinfo=UTC)
    assert datetime_from_name("post-2011-05-25T1630.tif", "%Y-%m-%dT%H%M") == datetime(
        2011, 5, 25, 16, 30, tzinfo=UTC
    )
    assert datetime_from_name("tile_31500-5137.tif", "%Y%m%d") is None
    with pytest.raises(CatalogError, match="%B"):
        datetime_from_name("x", "%d %B %Y")


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")  # the file without a CRS
def test_clear_errors(two_dates: Path, tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="--datetime"):
        catalog_rasters([two_dates / "post"])  # no tag, no pattern, no date given
    with pytest.raises(CatalogError, match="does not contain the date pattern"):
        catalog_rasters([two_dates / "pre"], name_pattern="%Y%m%d")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CatalogError, match="holds no GeoTIFF"):
        find_rasters([tmp_path / "empty"])
    with pytest.raises(CatalogError, match="neither a folder"):
        find_rasters([tmp_path / "missing"])
    with pytest.raises(CatalogError, match="one per source"):
        catalog_rasters([two_dates / "pre"], datetimes=[datetime(2011, 1, 1)] * 2)
    with pytest.raises(CatalogError, match="one common name per band"):
        catalog_rasters([two_dates / "pre"], bands=["red"])
    with pytest.raises(CatalogError, match="unknown band"):
        catalog_rasters([two_dates / "pre"], bands=["r", "g", "b"])
    plain = tmp_path / "plain.tif"
    with rasterio.open(plain, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8") as ds:
        ds.write(np.zeros((1, 8, 8), "uint8"))
    with pytest.raises(CatalogError, match="has no CRS"):
        catalog_rasters([plain], datetimes=[datetime(2011, 1, 1)])


def test_same_file_name_in_two_folders_gets_distinct_ids(tmp_path: Path) -> None:
    for folder in ("a", "b"):
        _write_rgb(tmp_path / folder / "tile.tif", crs="EPSG:26915", origin=UTM_ORIGIN, res=10.0)
    items = catalog_rasters([tmp_path], datetimes=[datetime(2011, 1, 1)])
    assert [i.id for i in items] == ["tile", "b_tile"]


def test_write_never_replaces_without_overwrite(two_dates: Path, tmp_path: Path) -> None:
    items = catalog_rasters([two_dates / "pre"])
    out = tmp_path / "items.json"
    out.write_text("keep me")
    with pytest.raises(CatalogError, match="--overwrite"):
        write_item_collection(items, out)
    assert out.read_text() == "keep me"
    write_item_collection(items, out, overwrite=True)
    assert [i["id"] for i in open_catalog_items(out)] == ["scene"]
    ndjson = write_item_collection(items, tmp_path / "items.ndjson")
    assert [i["id"] for i in open_catalog_items(ndjson)] == ["scene"]


def test_band_asset_reads_one_band_of_a_multiband_file(two_dates: Path) -> None:
    item = catalog_rasters([two_dates / "pre"]).items[0].to_dict()
    green = band_asset(item["assets"], "green")
    assert green is not None and green["href"].startswith("vrt://") and green["href"].endswith("?bands=2")
    assert [b["common_name"] for b in green["eo:bands"]] == ["green"]
    with rasterio.open(green["href"]) as ds, rasterio.open(item["assets"]["image"]["href"]) as full:
        assert ds.count == 1
        np.testing.assert_array_equal(ds.read(1), full.read(2))
    assert band_asset(item["assets"], "nir") is None


def _job(catalog: Path, output: Path, roots: list[str]) -> JobSpec:
    return JobSpec.build(
        aoi={"bbox": (366_760.0, 4_104_000.0, 367_000.0, 4_104_240.0), "crs": "EPSG:26915"},
        before="2011-04-01/2011-05-10",
        after="2011-05-20/2011-06-10",
        catalog=str(catalog),
        collections=["own"],
        bands=["red", "green", "blue"],
        quality="none",
        grid={"crs": "EPSG:26915", "resolution": 10.0},
        cloud_limit=100,
        output=str(output),
        asset_roots=roots,
    )


def test_two_crs_dates_stack_on_one_grid(two_dates: Path, tmp_path: Path) -> None:
    items = list(catalog_rasters([two_dates / "pre"], collection="own"))
    items += list(catalog_rasters([two_dates / "post"], collection="own", name_pattern="post_%Y%m%d"))
    catalog = write_item_collection(items, tmp_path / "items.json")
    job = _job(catalog, tmp_path / "out", [str(two_dates)])
    found = discover(job)
    assert [i["id"] for i in found.items["before"]] == ["scene"]
    assert [i["id"] for i in found.items["after"]] == ["post_20110525"]
    cube = assemble_cube(job, found)
    values = cube["reflectance"].values
    assert values.shape == (2, 3, 24, 24)
    assert not np.isnan(values).any()  # both dates cover the AOI, each reprojected from its own CRS
    with rasterio.open(two_dates / "pre" / "scene.tif") as ds:
        rows, cols = ds.index(366_765.0, 4_104_235.0)
        # Same grid as the pre file: the cube's green is the file's band 2 at that pixel.
        assert values[0, 1, 0, 0] == ds.read(2)[rows, cols]


def test_static_catalog_with_child_links_is_read_directly(two_dates: Path, tmp_path: Path) -> None:
    items = list(catalog_rasters([two_dates / "pre"], collection="own"))
    items += list(catalog_rasters([two_dates / "post"], collection="own", name_pattern="post_%Y%m%d"))
    root = pystac.Catalog(id="event", description="an open-data event catalog")
    child = pystac.Collection(
        id="own",
        description="pre and post",
        extent=pystac.Extent(
            pystac.SpatialExtent([[-95, 37, -94, 38]]), pystac.TemporalExtent([[items[0].datetime, None]])
        ),
    )
    root.add_child(child)
    for item in items:
        child.add_item(item)
    root.normalize_hrefs(str(tmp_path / "stac"))
    root.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    assert "child" in {
        link["rel"] for link in json.loads((tmp_path / "stac" / "catalog.json").read_text())["links"]
    }
    job = _job(tmp_path / "stac" / "catalog.json", tmp_path / "out", [str(two_dates)])
    found = discover(job)
    assert [i["id"] for i in found.items["before"]] == ["scene"]
    assert [i["id"] for i in found.items["after"]] == ["post_20110525"]


@pytest.mark.shared_data
@pytest.mark.skipif(not JOPLIN.is_dir(), reason=f"the real data {JOPLIN} is not on this machine")
def test_joplin_folders_catalog_with_their_own_crs() -> None:
    items = catalog_rasters(
        [JOPLIN / "pre", JOPLIN / "post"], datetimes=[datetime(2011, 5, 1), datetime(2011, 5, 25)]
    )
    by_epsg: dict[int, int] = {}
    for item in items:
        by_epsg[item.properties["proj:epsg"]] = by_epsg.get(item.properties["proj:epsg"], 0) + 1
        names = [b.get("common_name") for b in item.assets["image"].to_dict()["eo:bands"]]
        assert names == ["red", "green", "blue"]
    assert by_epsg == {26915: 4, 4326: 6}
    pre = shapely.union_all([shapely.geometry.shape(i.geometry) for i in items if i.datetime.day == 1])
    post = shapely.union_all([shapely.geometry.shape(i.geometry) for i in items if i.datetime.day == 25])
    # SOURCES.md: the dates overlap about -94.4996..-94.4812 E, 37.0628..37.0751 N.
    assert pre.intersection(post).contains(shapely.Point(-94.495, 37.070))


def test_spectral_segmenter_refuses_rgb_only_imagery_naming_clip() -> None:
    from pipeline.engine_spec import ModelSpec
    from pipeline.models import ModelRuntime, build_models
    from seg2change_core.errors import SegmenterError

    with pytest.raises(SegmenterError, match="RGB imagery.*'clip' segmenter"):
        build_models(ModelRuntime(ModelSpec(), ("red", "green", "blue"), fit=(0.1, 1.0)))
    built = build_models(
        ModelRuntime(ModelSpec(), ("blue", "green", "red", "nir", "swir16", "swir22"), fit=(0.1, 1.0))
    )
    assert built.segmenter.name == "spectral"


def test_own_catalog_brings_its_job_defaults_and_options_win(two_dates: Path, tmp_path: Path) -> None:
    from pipeline.own_imagery import job_defaults, own_imagery_options

    items = list(catalog_rasters([two_dates / "pre"], collection="own"))
    items += list(catalog_rasters([two_dates / "post"], collection="own", name_pattern="post_%Y%m%d"))
    catalog = write_item_collection(items, tmp_path / "items.json")
    defaults = job_defaults(open_catalog_items(catalog))
    assert defaults == {
        "quality": "none",
        "cloud_limit": 100,
        "asset_roots": sorted(str((two_dates / d).resolve()) for d in ("post", "pre")),
        "bands": ["red", "green", "blue"],
        # pre: 10 m; post: 1e-4 degrees, about 11.1 m along a meridian: the finer wins.
        "grid": {"resolution": 10.0},
    }
    given = own_imagery_options(str(catalog), {"cloud_limit": 20, "grid": {"crs": "EPSG:32615"}})
    assert given["cloud_limit"] == 20 and given["grid"] == {"resolution": 10.0, "crs": "EPSG:32615"}
    assert given["quality"] == "none"
    # Any other catalog is left alone: a STAC API, or items not made by seg2change catalog.
    assert own_imagery_options("https://earth-search.aws.element84.com/v1", {"bands": ["red"]}) == {
        "bands": ["red"]
    }
    other = tmp_path / "other.json"
    docs = [i.to_dict(transform_hrefs=False) for i in items]
    for doc in docs:
        doc["properties"].pop("seg2change:own_imagery")
    other.write_text(json.dumps({"type": "FeatureCollection", "features": docs}))
    assert own_imagery_options(str(other), None) == {}


def test_job_catalog_may_be_a_folder_or_glob_of_images(tmp_path: Path) -> None:
    images = tmp_path / "images"
    _write_rgb(images / "pre_20110501.tif", crs="EPSG:26915", origin=UTM_ORIGIN, res=10.0)
    _write_rgb(images / "post_20110525.tif", crs="EPSG:4326", origin=LONLAT_ORIGIN, res=1e-4, seed=1)
    fields = _job(images, tmp_path / "out", []).model_dump(mode="json")
    for url in (str(images), str(images / "*.tif")):
        fields.update(catalog={"url": url, "name_date": "%Y%m%d"}, collections=["own-imagery"])
        job = JobSpec.build(**fields)
        assert job.catalog.is_images and not job.catalog.is_api
        found = discover(job)
        assert [i["id"] for i in found.items["before"]] == ["pre_20110501"]
        assert [i["id"] for i in found.items["after"]] == ["post_20110525"]
    assert "name_date" not in JobSpec.build(**{**fields, "catalog": str(images)}).model_dump()["catalog"]
    with pytest.raises(JobSpecError, match="folder of GeoTIFFs"):
        JobSpec.build(**{**fields, "catalog": str(tmp_path / "missing")})
    undated = JobSpec.build(**{**fields, "catalog": str(images)})
    with pytest.raises(CatalogError, match="--name-date"):
        discover(undated)


def test_tiles_overlap_by_a_ground_distance_on_very_high_resolution_imagery(tmp_path: Path) -> None:
    """40 m of ground: 134 px at 0.3 m, 80 px at 0.5 m, never under the engine's 64 px, at most half
    the tile; a given overlap wins, a given resolution counts, and the event's job takes it."""
    from flows.events import event_job
    from pipeline.own_imagery import overlap_for_resolution, own_imagery_options

    assert [overlap_for_resolution(r, 504) for r in (30.0, 10.0, 0.6, 0.5, 0.3, 0.1)] == [
        64,
        64,
        67,
        80,
        134,
        252,
    ]
    assert overlap_for_resolution(0.1) == 400 and overlap_for_resolution(0.3, 200) == 100
    for folder in ("pre", "post"):
        _write_rgb(tmp_path / folder / "scene.tif", crs="EPSG:32615", origin=UTM_ORIGIN, res=0.3, size=32)
    items = list(catalog_rasters([tmp_path / "pre"], datetimes=[datetime(2011, 5, 1)], collection="own"))
    items += list(catalog_rasters([tmp_path / "post"], datetimes=[datetime(2011, 5, 25)], collection="own"))
    catalog = str(write_item_collection(items, tmp_path / "items.json"))

    options = own_imagery_options(catalog, None)
    assert options["grid"] == {"resolution": 0.3} and options["tiling"] == {"overlap": 134}
    assert own_imagery_options(catalog, None, tile_size=252)["tiling"] == {"overlap": 126}
    small = own_imagery_options(catalog, {"tiling": {"tile_size": 256, "batch_size": 2}})
    assert small["tiling"] == {"tile_size": 256, "batch_size": 2, "overlap": 128}
    assert own_imagery_options(catalog, {"tiling": {"overlap": 16}})["tiling"] == {"overlap": 16}
    assert own_imagery_options(catalog, {"grid": {"resolution": 0.5}})["tiling"] == {"overlap": 80}
    assert "tiling" not in own_imagery_options(catalog, {"grid": {"resolution": 10}})
    # A STAC API's job at a given fine resolution gets it too; a bad resolution is left to the job.
    api = "https://stac.example.org/v1"
    assert own_imagery_options(api, {"grid": {"resolution": 0.4}}) == {
        "grid": {"resolution": 0.4},
        "tiling": {"overlap": 100},
    }
    assert own_imagery_options(api, {"grid": {"resolution": -1}}) == {"grid": {"resolution": -1}}

    area = [UTM_ORIGIN[0], UTM_ORIGIN[1] - 9, UTM_ORIGIN[0] + 9, UTM_ORIGIN[1]]
    job = event_job(
        area,
        datetime(2011, 5, 22).date(),
        "storm",
        catalog,
        "own",
        str(tmp_path / "out"),
        area_crs="EPSG:32615",
        tile_size=252,
        job_options=own_imagery_options(catalog, None, tile_size=252),
    )
    assert job.tiling.tile_size == 252 and job.tiling.overlap == 126
    # Without a tile given, the model's own is known only at inference: 134 px fits CACH's 504 px, and a
    # model of 252 px tiles is refused there with the fix named.
    job = event_job(
        area,
        datetime(2011, 5, 22).date(),
        "storm",
        catalog,
        "own",
        str(tmp_path / "out"),
        area_crs="EPSG:32615",
        job_options=own_imagery_options(catalog, None),
    )
    assert job.tiling.overlap == 134 and job.tiling.resolve_tile_size(504) == 504
    with pytest.raises(JobSpecError, match="overlap 134 exceeds half the tile .* at most 126"):
        job.tiling.resolve_tile_size(252)
