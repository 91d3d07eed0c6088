"""Per-feature impact: footprints over a change cube, block by block, with 'not covered' kept apart."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import rasterio
import rasterio.features
import shapely
import shapely.affinity
import shapely.geometry
import zarr
from affine import Affine
from pyproj import CRS, Transformer
from scipy import ndimage

from pipeline.change_cube import ChangeCubeInfo, describe_change_cube
from pipeline.demo import demo_checkpoint, run_demo
from pipeline.errors import PublishError
from pipeline.memory_release import _malloc_trim, release_freed_memory
from pipeline.publish import features as features_module
from pipeline.publish import footprints as footprints_module
from pipeline.publish.features import (
    COVERED,
    NOT_COVERED,
    PARTLY_COVERED,
    feature_impact,
    write_feature_impact,
)
from pipeline.publish.footprints import read_footprints
from pipeline.storage import Location
from pipeline.synthetic.landscape import LandCover


def _building_footprints(before: Path, after: Path) -> tuple[list[shapely.Geometry], list[bool], str]:
    """Every building of the after date as a polygon, and whether it is new (not a building before)."""
    with rasterio.open(before) as b, rasterio.open(after) as a:
        was, now, transform, crs = b.read(1), a.read(1), a.transform, a.crs.to_string()
    building = now == LandCover.BUILDING
    labels, count = ndimage.label(building)
    polygons: list[shapely.Geometry] = []
    new: list[bool] = []
    for index, slices in enumerate(ndimage.find_objects(labels), start=1):
        inside = labels[slices] == index
        if inside.sum() < 4:  # a building cut by the scene's edge to a sliver
            continue
        previously = was[slices][inside] == LandCover.BUILDING
        if 0.1 < previously.mean() < 0.9:
            continue  # part old, part new: neither a new nor an unchanged building
        mask = (labels == index).astype("uint8")
        shapes = [
            shapely.geometry.shape(g)
            for g, v in rasterio.features.shapes(mask, mask=mask.astype(bool), transform=transform)
        ]
        polygons.append(shapely.union_all(shapes))
        new.append(bool(previously.mean() <= 0.1))
    return polygons, new, crs


def _write_geojson(path: Path, polygons: list[shapely.Geometry], crs: str, zones: list[str]) -> Path:
    features = [
        {
            "type": "Feature",
            "properties": {"id": f"b{i}", "district": z},
            "geometry": shapely.geometry.mapping(p),
        }
        for i, (p, z) in enumerate(zip(polygons, zones, strict=True))
    ]
    doc = {
        "type": "FeatureCollection",
        "crs": {"type": "name", "properties": {"name": crs}},
        "features": features,
    }
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.slow
def test_new_buildings_are_flagged_and_unchanged_ones_are_not(tmp_path: Path) -> None:
    if demo_checkpoint() is None:
        pytest.skip("the demo CACH checkpoint is absent (seg2change make-demo-checkpoint writes it)")
    result = run_demo(tmp_path / "demo", size=512, progress=False)
    scene = result.scene
    polygons, new, crs = _building_footprints(scene.truth_class_before, scene.truth_class_after)
    new_mask = np.asarray(new)
    assert new_mask.sum() >= 10 and (~new_mask).sum() >= 10  # the scene has both kinds
    # One footprint far outside the scene: it must be reported as not covered, not as unchanged.
    x0, y0 = scene.bbox_utm[0] + 50_000, scene.bbox_utm[1]
    outside = shapely.box(x0, y0, x0 + 100, y0 + 100)
    zones = ["new" if n else "old" for n in new] + ["elsewhere"]
    path = _write_geojson(tmp_path / "footprints.geojson", [*polygons, outside], crs, zones)

    info = describe_change_cube(result.run.inference.path)
    impact = feature_impact(info, read_footprints(path, zone_field="district"), threshold=0.5)
    table = impact.table
    flagged_new = table["affected"].to_numpy()[:-1][new_mask].mean()
    flagged_old = table["affected"].to_numpy()[:-1][~new_mask].mean()
    print(
        f"new buildings flagged: {flagged_new:.1%} of {new_mask.sum()}; unchanged flagged: "
        f"{flagged_old:.1%} of {(~new_mask).sum()}"
    )
    assert flagged_new >= 0.9
    assert flagged_old <= 0.05
    last = table.iloc[-1]
    assert last["status"] == NOT_COVERED and not last["affected"] and np.isnan(last["changed_fraction"])
    assert (table["status"].to_numpy()[:-1] != NOT_COVERED).all()
    assert impact.summary["elsewhere"] == {
        "footprints": 1,
        "covered": 0,
        "partly_covered": 0,
        "not_covered": 1,
        "affected": 0,
    }
    assert impact.summary["new"]["affected"] == int(table["affected"].to_numpy()[:-1][new_mask].sum())
    # Majority classes: a new building was something else before and is a building after.
    new_rows = table.iloc[:-1][new_mask & table["affected"].to_numpy()[:-1]]
    assert (new_rows["class_before"] != "building").mean() > 0.8

    out = write_feature_impact(impact, tmp_path / "f.parquet", tmp_path / "f.geojson", tmp_path / "f.json")
    parquet = pq.read_table(out[0])
    geo = json.loads(parquet.schema.metadata[b"geo"])
    assert geo["primary_column"] == "geometry" and geo["columns"]["geometry"]["encoding"] == "WKB"
    assert shapely.from_wkb(parquet.column("geometry")[0].as_py()).equals_exact(polygons[0], 1e-6)
    assert parquet.column("status").to_pylist() == table["status"].tolist()
    features = json.loads(out[1].read_text())["features"]
    lon, lat = shapely.geometry.shape(features[0]["geometry"]).centroid.coords[0]
    west, south, east, north = scene.bbox_wgs84
    assert west <= lon <= east and south <= lat <= north  # GeoJSON in WGS84
    assert features[-1]["properties"]["status"] == NOT_COVERED
    assert json.loads(out[2].read_text())["summary"]["all"]["footprints"] == len(table)


def test_bad_footprints_and_thresholds_are_refused(tmp_path: Path) -> None:
    with pytest.raises(PublishError, match="does not exist"):
        read_footprints(tmp_path / "none.geojson")
    points = tmp_path / "points.geojson"
    points.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "properties": {},
                        "geometry": {"type": "Point", "coordinates": [0, 0]},
                    }
                ],
            }
        )
    )
    with pytest.raises(PublishError, match="not a polygon"):
        read_footprints(points)
    empty = tmp_path / "empty.geojson"
    empty.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    with pytest.raises(PublishError, match="holds no features"):
        read_footprints(empty)
    square = tmp_path / "square.geojson"
    _write_geojson(square, [shapely.box(0, 0, 1, 1)], "EPSG:32633", ["a"])
    with pytest.raises(PublishError, match="'ward'"):
        read_footprints(square, zone_field="ward")
    assert read_footprints(square, zone_field="district").zones.tolist() == ["a"]
    assert COVERED == "covered"


def _cube(root: Path, height: int, width: int, chunk: int) -> tuple[ChangeCubeInfo, dict[str, np.ndarray]]:
    """A change cube of random layers with nodata patches, and its layers in memory."""
    rng = np.random.default_rng(3)
    probability = rng.random((height, width), dtype=np.float32)
    probability[rng.random((height, width)) < 0.05] = np.nan
    change = (probability > 0.6).astype("uint8")
    change[20:60, 120:] = 255
    change[rng.random((height, width)) < 0.02] = 255
    before = rng.integers(0, 3, (height, width), dtype="uint8")
    before[rng.random((height, width)) < 0.05] = 255
    after = rng.integers(0, 3, (height, width), dtype="uint8")
    after[10:14, :] = 255
    layers = {
        "change": change,
        "change_probability": probability,
        "class_before": before,
        "class_after": after,
    }
    group = zarr.open_group(str(root / "cube.zarr"), mode="w")
    for name, values in layers.items():
        fill = np.nan if values.dtype.kind == "f" else 255
        array = group.create_array(
            name, shape=values.shape, chunks=(chunk, chunk), dtype=values.dtype, fill_value=fill
        )
        array[:] = values
    info = ChangeCubeInfo(
        path=Location(str(root / "cube.zarr")),
        height=height,
        width=width,
        chunk=chunk,
        crs=CRS.from_epsg(32633),
        transform=Affine(2.0, 0, 400_000.0, 0, -2.0, 6_000_000.0),
        classes=("bare", "building", "tree"),
        targets=("building",),
        fingerprint="test",
        attrs={},
    )
    return info, layers


def test_block_by_block_equals_one_whole_scene_pass(tmp_path: Path) -> None:
    """Blocks of 64 px (cut at the edges) give what rasterising every footprint at once over the
    whole scene gives: overlaps (the later footprint takes the pixel), footprints across blocks
    and across the scene's edge, outside it, on block corners and edges, rotated."""
    info, layers = _cube(tmp_path, 150, 200, 64)
    x0, y0 = 400_000.0, 6_000_000.0
    rng = np.random.default_rng(4)
    shapes = [shapely.box(x0 + 10, y0 - 290, x0 + 390, y0 - 10)]  # under all the others
    for i in range(400):
        x, y = x0 - 20 + rng.uniform(0, 440), y0 + 20 - rng.uniform(0, 340)
        box = shapely.box(x, y - rng.uniform(1, 30), x + rng.uniform(1, 30), y)
        shapes.append(shapely.affinity.rotate(box, 30) if i % 5 == 0 else box)
    shapes += [
        shapely.box(x0 + 100, y0 - 200, x0 + 300, y0 - 50),  # over many others
        shapely.box(x0 + 126.5, y0 - 200, x0 + 129.5, y0 - 20),  # two pixels wide, on a block edge
        shapely.box(x0 + 126, y0 - 130, x0 + 130, y0 - 126),  # one pixel in each of four blocks
        shapely.box(x0 + 5_000, y0, x0 + 5_100, y0 + 100),  # outside the scene
    ]
    to_wgs84 = Transformer.from_crs(info.crs, "OGC:CRS84", always_xy=True)
    wgs84 = [shapely.transform(s, lambda xy: np.column_stack(to_wgs84.transform(*xy.T))) for s in shapes]
    path = _write_geojson(tmp_path / "fp.geojson", wgs84, "OGC:CRS84", ["z"] * len(shapes))
    footprints = read_footprints(path)
    impact = feature_impact(info, footprints, threshold=0.3)
    table = impact.table
    out = write_feature_impact(impact, tmp_path / "f.parquet", tmp_path / "f.geojson", tmp_path / "f.json")
    again = read_footprints(out[0], zone_field="zone")  # the GeoParquet written reads back, batch by batch
    assert again.ids.tolist() == footprints.ids.tolist() and again.zones.tolist() == ["all"] * len(shapes)
    assert again.wkb.tolist() == footprints.wkb.tolist() and again.crs == footprints.crs

    projected = footprints.geometries(crs=info.crs)
    labels = rasterio.features.rasterize(
        zip(projected, range(1, len(shapes) + 1), strict=True),
        out_shape=(info.height, info.width),
        transform=info.transform,
        fill=0,
        dtype="int32",
    )
    valid = (labels > 0) & (layers["change"] != 255)
    index = labels[valid] - 1
    n, k = len(shapes), len(info.classes)
    pixels = np.bincount(index, minlength=n)
    np.testing.assert_array_equal(table["pixels"], pixels)
    np.testing.assert_array_equal(
        table["changed_pixels"], np.bincount(index[layers["change"][valid] == 1], minlength=n)
    )
    probability = np.bincount(index, np.nan_to_num(layers["change_probability"][valid]), minlength=n)
    with np.errstate(invalid="ignore"):
        np.testing.assert_allclose(table["mean_change_probability"], probability / pixels, rtol=1e-12)
    names = np.asarray([*info.classes, "no class"], dtype=object)
    for epoch in ("before", "after"):
        classes = np.minimum(layers[f"class_{epoch}"][valid], k)
        counts = np.bincount(index * (k + 1) + classes, minlength=n * (k + 1)).reshape(n, k + 1)
        expected = np.where(pixels > 0, names[counts.argmax(axis=1)], "")
        assert table[f"class_{epoch}"].tolist() == expected.tolist()
    coverage = pixels * 4.0 / shapely.area(projected)
    statuses = np.where(pixels == 0, NOT_COVERED, np.where(coverage >= 0.5, COVERED, PARTLY_COVERED))
    assert table["status"].tolist() == statuses.tolist()
    assert set(table["status"]) == {COVERED, PARTLY_COVERED, NOT_COVERED}
    assert table["status"].iloc[-1] == NOT_COVERED and table["status"].iloc[-4:-1].ne(NOT_COVERED).all()
    assert pixels[-2] == 4
    assert (pixels[1:-4] > 0).sum() > 100  # the small footprints are not all hidden by the last big one


def test_outputs_streamed_by_row_groups_hold_the_whole_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The GeoParquet written a row group at a time, the GeoJSON a few rows at a time and the
    footprints read back a batch at a time give the table made at once, row for row."""
    info, _ = _cube(tmp_path, 150, 200, 64)
    rng = np.random.default_rng(5)
    x, y = 400_000.0 + rng.uniform(-20, 400, 300), 6_000_000.0 - rng.uniform(-20, 300, 300)
    shapes = list(shapely.box(x, y - rng.uniform(1, 30, 300), x + rng.uniform(1, 30, 300), y))
    zones = [f"z{i % 7}" for i in range(len(shapes))]
    path = _write_geojson(tmp_path / "fp.geojson", shapes, "EPSG:32633", zones)
    footprints = read_footprints(path, zone_field="district")
    impact = feature_impact(info, footprints, threshold=0.3)
    table = impact.table
    assert impact.rows(100, 180).equals(table.iloc[100:180].reset_index(drop=True))
    assert impact.rows(290, 400).equals(table.iloc[290:].reset_index(drop=True))
    monkeypatch.setattr(features_module, "_PARQUET_ROWS", 64)
    monkeypatch.setattr(features_module, "_GEOJSON_ROWS", 50)
    monkeypatch.setattr(footprints_module, "CHUNK", 70)
    out = write_feature_impact(impact, tmp_path / "f.parquet", tmp_path / "f.geojson", tmp_path / "f.json")

    assert pq.ParquetFile(out[0]).num_row_groups == 5  # 300 rows in row groups of 64
    written = pq.read_table(out[0])
    assert written.drop_columns(["geometry"]).to_pandas().equals(table)
    assert written.column("geometry").to_pylist() == footprints.wkb.tolist()
    assert b"pandas" in written.schema.metadata and b"geo" in written.schema.metadata
    features = json.loads(out[1].read_text())["features"]
    assert [f["properties"]["id"] for f in features] == table["id"].tolist()
    assert [f["properties"]["pixels"] for f in features] == table["pixels"].tolist()
    assert [f["properties"]["class_after"] for f in features] == table["class_after"].tolist()
    again = read_footprints(out[0], zone_field="zone")  # five batches of 70
    assert again.ids.tolist() == footprints.ids.tolist() and again.zones.tolist() == zones
    assert again.wkb.tolist() == footprints.wkb.tolist()
    summary = json.loads(out[2].read_text())["summary"]
    assert list(summary) == ["all", *sorted(set(zones))]
    assert summary["z3"]["footprints"] == zones.count("z3")
    assert summary["all"]["affected"] == int(table["affected"].sum())


def test_geoparquet_without_rows_or_wkb_is_refused(tmp_path: Path) -> None:
    geo = {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": {"encoding": "WKB"}}}
    meta = {b"geo": json.dumps(geo).encode()}
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"geometry": pa.array([], pa.binary())}).replace_schema_metadata(meta), empty)
    with pytest.raises(PublishError, match="holds no features"):
        read_footprints(empty)
    coordinates = tmp_path / "xy.parquet"
    pq.write_table(pa.table({"geometry": pa.array([1.0, 2.0])}).replace_schema_metadata(meta), coordinates)
    with pytest.raises(PublishError, match="not WKB"):
        read_footprints(coordinates)


def test_freed_memory_is_handed_back_with_glibc() -> None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("malloc_trim is glibc's")
    assert _malloc_trim() is not None
    release_freed_memory()
