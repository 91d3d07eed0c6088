"""Per-feature impact: footprints over a change cube, block by block, with 'not covered' kept apart."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import rasterio.features
import shapely
import shapely.geometry
from scipy import ndimage

from pipeline.demo import demo_checkpoint, run_demo
from pipeline.errors import PublishError
from pipeline.publish.cogs import describe_change_cube
from pipeline.publish.features import (
    COVERED,
    NOT_COVERED,
    feature_impact,
    read_footprints,
    write_feature_impact,
)
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
