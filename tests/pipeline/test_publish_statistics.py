"""Summary statistics: exact counts and areas on a hand-built change cube, per zone, Parquet/JSON/rich.

The change cube is written through the engine's own layout functions (create, write each block,
finalise) from arrays made here, so every expected number is counted independently with plain
Python/NumPy on the whole arrays.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import shapely
import shapely.geometry
from affine import Affine
from pyproj import CRS, Transformer
from rich.console import Console
from rich.table import Table

from pipeline.change_cube import (
    BlockGrid,
    BlockLayers,
    ChangeCubeLayout,
    create_change_cube,
    finalise_change_cube,
    write_block,
)
from pipeline.errors import PublishError
from pipeline.publish import (
    ALL_ZONE,
    ChangeStatistics,
    compute_statistics,
    describe_change_cube,
    load_zones,
    statistics_table,
    write_statistics,
)

CLASSES = ("background", "water", "building")
TARGETS = ("water", "building")
K = len(CLASSES)
H, W = 90, 120
X0, Y0 = 300_000.0, 4_000_000.0
TRANSFORM = Affine(20, 0, X0, 0, -30, Y0)  # 20 m x 30 m pixels: 600 m2 each
PIXEL_M2 = 600.0
CRS_UTM = CRS.from_epsg(32633)


def hand_layers(seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    before = rng.integers(0, K, (H, W)).astype(np.uint8)
    after = rng.integers(0, K, (H, W)).astype(np.uint8)
    change = (rng.random((H, W)) < 0.3).astype(np.uint8)
    before[5:15, 7:19], after[5:15, 7:19], change[5:15, 7:19] = 1, 2, 1  # 120 px water -> building
    nodata = np.zeros((H, W), dtype=bool)
    nodata[40:50, :] = True
    nodata[:, 100:103] = True
    changed = change == 1
    transition = np.where(changed, before.astype(np.uint16) * K + after, 65534).astype(np.uint16)
    target = np.stack(
        [changed & ((before == CLASSES.index(t)) | (after == CLASSES.index(t))) for t in TARGETS]
    ).astype(np.uint8)
    return {
        "change_probability": np.where(nodata, np.nan, np.where(changed, 0.9, 0.1)).astype(np.float32),
        "change": np.where(nodata, 255, change).astype(np.uint8),
        "class_before": np.where(nodata, 255, before).astype(np.uint8),
        "class_after": np.where(nodata, 255, after).astype(np.uint8),
        "transition": np.where(nodata, 65535, transition).astype(np.uint16),
        "target_change": np.where(nodata[None], 255, target).astype(np.uint8),
    }


def write_hand_cube(path: Path, layers: dict[str, np.ndarray], block: int) -> Path:
    blocks = BlockGrid(H, W, block)
    create_change_cube(
        path,
        ChangeCubeLayout(blocks, CLASSES, TARGETS),
        y=Y0 - 30 * np.arange(H) - 15,
        x=X0 + 20 * np.arange(W) + 10,
        crs=CRS_UTM,
        transform=TRANSFORM,
        attrs={"fingerprint": "hand-built"},
    )
    for row, col in blocks:
        window = blocks.window(row, col)
        rows, cols = window.slices
        parts = {name: (a[:, rows, cols] if a.ndim == 3 else a[rows, cols]) for name, a in layers.items()}
        write_block(path, window, (row, col), BlockLayers(**parts))
    finalise_change_cube(path)
    return path


@pytest.fixture(scope="module")
def layers() -> dict[str, np.ndarray]:
    return hand_layers()


@pytest.fixture(scope="module")
def cube(tmp_path_factory: pytest.TempPathFactory, layers: dict[str, np.ndarray]) -> Path:
    return write_hand_cube(tmp_path_factory.mktemp("stats") / "change_cube.zarr", layers, 64)


@pytest.fixture(scope="module")
def stats(cube: Path) -> ChangeStatistics:
    return compute_statistics(describe_change_cube(cube))


def expected_counts(layers: dict[str, np.ndarray], mask: np.ndarray | None = None) -> dict[str, Any]:
    """Counted pixel by pixel, independently of the block-wise bincounts under test."""
    inside = np.ones((H, W), dtype=bool) if mask is None else mask
    valid = inside & (layers["change"] != 255)
    changed = valid & (layers["change"] == 1)
    pairs = Counter(
        (CLASSES[b], CLASSES[a])
        for b, a in zip(
            layers["class_before"][changed].tolist(), layers["class_after"][changed].tolist(), strict=True
        )
    )
    targets = {t: int((layers["target_change"][i][valid] == 1).sum()) for i, t in enumerate(TARGETS)}
    return {
        "pixels": int(inside.sum()),
        "valid": int(valid.sum()),
        "changed": int(changed.sum()),
        "pairs": dict(pairs),
        "targets": targets,
    }


def check_zone(stats: ChangeStatistics, zone: str, expected: dict[str, Any]) -> None:
    totals = {t.zone: t for t in stats.totals}[zone]
    assert (totals.pixels, totals.valid_pixels, totals.changed_pixels) == (
        expected["pixels"],
        expected["valid"],
        expected["changed"],
    )
    assert totals.nodata_pixels == expected["pixels"] - expected["valid"]
    assert totals.changed_area_m2 == expected["changed"] * PIXEL_M2
    rows = stats.zone_rows(zone)
    assert [(r.kind, r.pixels) for r in rows[:1]] == [("changed", expected["changed"])]
    pairs = {(r.class_from, r.class_to): r for r in rows if r.kind in ("transition", "class_unchanged")}
    assert {k: r.pixels for k, r in pairs.items()} == expected["pairs"]
    for (before, after), r in pairs.items():
        assert r.target is None
        if before == after:
            assert r.kind == "class_unchanged" and r.label == f"changed, class unchanged ({before})"
        else:
            assert r.kind == "transition" and r.label == f"{before} -> {after}"
    targets = {r.target: r for r in rows if r.kind == "target"}
    assert {t: r.pixels for t, r in targets.items()} == expected["targets"]
    assert all(r.class_from is None and r.class_to is None for r in targets.values())
    for row in rows:
        assert row.area_m2 == row.pixels * PIXEL_M2
        assert row.area_ha == pytest.approx(row.pixels * PIXEL_M2 / 10_000, rel=1e-12)


def test_whole_area_counts_and_areas_are_exact(
    stats: ChangeStatistics, layers: dict[str, np.ndarray]
) -> None:
    assert stats.pixel_area_m2 == PIXEL_M2
    assert [t.zone for t in stats.totals] == [ALL_ZONE]
    expected = expected_counts(layers)
    check_zone(stats, ALL_ZONE, expected)
    assert expected["pixels"] - expected["valid"] == 10 * W + 3 * (H - 10)  # the two nodata stripes
    # The hand-placed patch is in there, and every changed pixel is in exactly one transition.
    assert expected["pairs"][("water", "building")] >= 120
    transitions = [r for r in stats.rows if r.kind in ("transition", "class_unchanged")]
    assert sum(r.pixels for r in transitions) == expected["changed"]
    assert [r.pixels for r in transitions] == sorted((r.pixels for r in transitions), reverse=True)
    assert {r.kind for r in transitions} == {"transition", "class_unchanged"}  # the random maps have both
    assert [r.target for r in stats.rows if r.kind == "target"] == list(TARGETS)


def test_counts_do_not_depend_on_the_block_size(
    tmp_path: Path, stats: ChangeStatistics, layers: dict[str, np.ndarray]
) -> None:
    other = write_hand_cube(tmp_path / "blocks50.zarr", layers, 50)
    info = describe_change_cube(other)
    assert info.chunk == 50
    assert compute_statistics(info) == stats


def zones_file(path: Path, to_wgs84: bool) -> Path:
    mid = X0 + 60 * 20
    boxes = [
        ({"id": "west"}, shapely.box(X0 - 100, Y0 - H * 30 - 100, mid, Y0 + 100)),
        ({"name": "east"}, shapely.box(mid, Y0 - H * 30 - 100, X0 + W * 20 + 100, Y0 + 100)),
        # Edges inside pixels: the centres of rows 1-9 and columns 1-9 lie inside (all_touched would
        # add row 0 and column 0). No id or name: its id is its index, "2".
        ({}, shapely.box(X0 + 15, Y0 - 290, X0 + 195, Y0 - 20)),
    ]
    transformer = Transformer.from_crs(CRS_UTM, "EPSG:4326", always_xy=True)
    features = []
    for props, geom in boxes:
        if to_wgs84:
            geom = shapely.transform(
                shapely.segmentize(geom, 10.0),
                lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1])),
            )
        features.append({"type": "Feature", "properties": props, "geometry": shapely.geometry.mapping(geom)})
    doc: dict[str, Any] = {"type": "FeatureCollection", "features": features}
    if not to_wgs84:
        doc["crs"] = {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32633"}}
    path.write_text(json.dumps(doc))
    return path


@pytest.mark.parametrize("to_wgs84", [False, True], ids=["grid-crs", "wgs84"])
def test_zones_split_the_area_exactly(
    tmp_path: Path, cube: Path, layers: dict[str, np.ndarray], stats: ChangeStatistics, to_wgs84: bool
) -> None:
    info = describe_change_cube(cube)
    zones = load_zones(zones_file(tmp_path / "zones.geojson", to_wgs84), info.crs)
    assert [z.id for z in zones] == ["west", "east", "2"]
    by_zone = compute_statistics(info, zones=zones)
    assert [t.zone for t in by_zone.totals] == [ALL_ZONE, "west", "east", "2"]
    columns = np.arange(W)[None, :].repeat(H, axis=0)
    rows = np.arange(H)[:, None].repeat(W, axis=1)
    check_zone(by_zone, ALL_ZONE, expected_counts(layers))
    check_zone(by_zone, "west", expected_counts(layers, columns < 60))
    check_zone(by_zone, "east", expected_counts(layers, columns >= 60))
    check_zone(
        by_zone, "2", expected_counts(layers, (rows >= 1) & (rows < 10) & (columns >= 1) & (columns < 10))
    )
    # The halves add up to the whole area, row by row.
    whole = {(r.kind, r.target, r.class_from, r.class_to): r.pixels for r in by_zone.zone_rows(ALL_ZONE)}
    halves: Counter[tuple[str, str | None, str | None, str | None]] = Counter()
    for zone in ("west", "east"):
        for r in by_zone.zone_rows(zone):
            halves[(r.kind, r.target, r.class_from, r.class_to)] += r.pixels
    assert {k: v for k, v in halves.items() if v} == {k: v for k, v in whole.items() if v}
    assert by_zone.zone_rows(ALL_ZONE) == stats.zone_rows(ALL_ZONE)


def test_parquet_and_json_hold_the_long_table_and_totals(tmp_path: Path, stats: ChangeStatistics) -> None:
    parquet, doc_path = write_statistics(stats, tmp_path / "statistics.parquet", tmp_path / "statistics.json")
    frame = pd.read_parquet(parquet)
    assert list(frame.columns) == [
        "zone",
        "kind",
        "target",
        "class_from",
        "class_to",
        "label",
        "pixels",
        "area_m2",
        "area_ha",
    ]
    pd.testing.assert_frame_equal(frame, stats.to_frame())
    assert len(frame) == len(stats.rows)
    assert frame.loc[frame.kind == "target", ["class_from", "class_to"]].isna().all().all()
    assert frame.loc[frame.kind != "target", "target"].isna().all()
    changed = frame[frame.kind == "changed"]
    assert changed.pixels.tolist() == [frame[frame.kind.isin(["transition", "class_unchanged"])].pixels.sum()]
    same = frame[frame.kind == "class_unchanged"]
    assert len(same) and (same.class_from == same.class_to).all()
    assert same.label.str.startswith("changed, class unchanged (").all()
    schema = pq.read_schema(parquet)
    meta = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
    assert CRS.from_wkt(meta["crs"]) == CRS_UTM and meta["crs_epsg"] == "EPSG:32633"
    assert float(meta["pixel_area_m2"]) == PIXEL_M2
    assert json.loads(meta["classes"]) == list(CLASSES) and json.loads(meta["targets"]) == list(TARGETS)
    assert meta["fingerprint"] == "hand-built" and "models" in meta and "job_name" in meta
    assert b"hectares" in schema.field("area_ha").metadata[b"description"]
    assert (frame.area_m2 == frame.pixels * PIXEL_M2).all()
    doc = json.loads(doc_path.read_text())
    assert doc["metadata"] == {k: v for k, v in meta.items() if k != "pandas"}
    assert set(doc["columns"]) == set(frame.columns)
    totals = {t.zone: t for t in stats.totals}[ALL_ZONE]
    assert doc["zones"][ALL_ZONE]["valid_pixels"] == totals.valid_pixels
    assert doc["zones"][ALL_ZONE]["nodata_pixels"] == totals.nodata_pixels
    assert doc["zones"][ALL_ZONE]["pixels"] == H * W
    assert doc["rows"] == frame.replace({np.nan: None}).to_dict(orient="records")
    assert (
        doc["classes"] == list(CLASSES)
        and doc["targets"] == list(TARGETS)
        and doc["pixel_area_m2"] == PIXEL_M2
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["statistics.json", "statistics.parquet"]


def test_rich_table_lists_the_rows(stats: ChangeStatistics) -> None:
    table = statistics_table(stats)
    assert isinstance(table, Table)
    assert table.row_count == len(stats.rows)
    console = Console(record=True, width=160)
    console.print(table)
    text = console.export_text()
    assert "water" in text and "building" in text and "background" in text
    assert "changed, class unchanged (water)" in text and "water -> building" in text
    limited = statistics_table(stats, zone=ALL_ZONE, limit=2)
    assert limited.row_count == 1 + len(TARGETS) + 2


def test_unusable_zones_are_refused(tmp_path: Path) -> None:
    def write(features: list[dict[str, Any]]) -> Path:
        path = tmp_path / "zones.geojson"
        path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
        return path

    square = shapely.geometry.mapping(shapely.box(14.0, 45.0, 14.1, 45.1))
    with pytest.raises(PublishError, match="not a polygon"):
        load_zones(
            write(
                [
                    {
                        "type": "Feature",
                        "properties": {},
                        "geometry": {"type": "Point", "coordinates": [14, 45]},
                    }
                ]
            ),
            CRS_UTM,
        )
    with pytest.raises(PublishError, match="more than once"):
        load_zones(write([{"type": "Feature", "properties": {"id": "a"}, "geometry": square}] * 2), CRS_UTM)
    with pytest.raises(PublishError, match="reserved"):
        load_zones(
            write([{"type": "Feature", "properties": {"name": ALL_ZONE}, "geometry": square}]), CRS_UTM
        )
    with pytest.raises(PublishError, match="no features"):
        load_zones(write([]), CRS_UTM)
