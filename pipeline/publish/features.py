"""Per-feature impact: for each footprint (a building, a parcel), how much of it changed.

Given polygons (GeoJSON, or GeoParquet with a WKB geometry column), :func:`feature_impact` reads
the change cube block by block, rasterises the footprints that touch each block
(``rasterio.features``, pixel centres inside the polygon) and accumulates per footprint: pixels
covered by data, changed pixels, the sum of the change probability and the class histograms of
both dates. Footprints are held as WKB with their bounds, and a block's candidates are turned into
geometries only while it is counted, so memory is the block's arrays plus about two hundred bytes
per footprint (``bench/feature_impact.py``).

A footprint without any pixel holding data on both dates (outside the imagery, in its nodata, or
outside the cube) is ``not covered``, never ``unchanged``; one with data on part of its area is
``partly covered`` and its fractions describe that part. A footprint is ``affected`` when it is
covered (partly or wholly) and its changed fraction reaches the user's threshold.

Tables are written with pyarrow and shapely (WKB geometry and the GeoParquet ``geo`` metadata)
rather than geopandas, which is not in the pinned set; the GeoJSON is in WGS84 longitude/latitude
as RFC 7946 asks.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import rasterio.features
import rasterio.windows
import shapely
import shapely.geometry
import zarr
from pyproj import CRS, Transformer

from pipeline.errors import PublishError
from pipeline.publish.cogs import ChangeCubeInfo, block_windows
from pipeline.storage import replace_atomically

__all__ = [
    "COVERED",
    "NOT_COVERED",
    "PARTLY_COVERED",
    "Footprints",
    "FeatureImpact",
    "feature_impact",
    "read_footprints",
    "write_feature_impact",
]

COVERED = "covered"
PARTLY_COVERED = "partly covered"
NOT_COVERED = "not covered"
#: A footprint with data on at least this share of its area is ``covered``.
COVERED_SHARE = 0.5
_NODATA = 255
_ALL = slice(None)
#: Footprints turned into geometries at a time when their bounds and areas are measured.
_CHUNK = 10_000


@dataclass(frozen=True)
class Footprints:
    """Polygons with an id, an optional zone and their CRS.

    Attributes
    ----------
    wkb
        The polygons as WKB (bytes), in ``crs``; :meth:`geometries` builds shapely objects.
    ids
        One id per footprint (its ``id`` property or member, else its index).
    zones
        One zone name per footprint (the ``zone_field`` property; ``"all"`` without one).
    crs
        CRS of the coordinates.
    """

    wkb: np.ndarray
    ids: np.ndarray
    zones: np.ndarray
    crs: CRS

    def __len__(self) -> int:
        return len(self.wkb)

    def geometries(self, rows: slice | np.ndarray = _ALL, crs: CRS | None = None) -> np.ndarray:
        """Shapely polygons of some rows (default all), reprojected to ``crs`` when given."""
        shapes: np.ndarray = shapely.from_wkb(self.wkb[rows])
        if crs is None or crs == self.crs:
            return shapes
        transformer = Transformer.from_crs(self.crs, crs, always_xy=True)
        projected: np.ndarray = shapely.transform(
            shapes, lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1]))
        )
        return projected


def _geojson_crs(doc: Mapping[str, Any]) -> CRS:
    named = (doc.get("crs") or {}).get("properties", {}).get("name")
    try:
        return CRS.from_user_input(named) if named else CRS.from_user_input("OGC:CRS84")
    except Exception as exc:
        raise PublishError(
            f"the footprints' crs {named!r} is unknown to pyproj; name it like 'EPSG:32633', or give "
            "the footprints in WGS84 without a crs member"
        ) from exc


def read_footprints(path: Path, *, zone_field: str | None = None) -> Footprints:
    """Read footprint polygons from a GeoJSON FeatureCollection or a GeoParquet file.

    Parameters
    ----------
    path
        ``.geojson``/``.json`` (CRS84 unless a ``crs`` member names another) or ``.parquet``
        (GeoParquet: WKB primary column and ``geo`` metadata).
    zone_field
        Property holding each footprint's zone (district, block...), for the summary by zone.

    Raises
    ------
    PublishError
        Unreadable file, no features, a geometry that is not a polygon, or a missing zone field.
    """
    path = Path(path)
    if not path.is_file():
        raise PublishError(f"footprints file {path} does not exist; give a GeoJSON or GeoParquet file")
    if path.suffix == ".parquet":
        return _read_geoparquet(path, zone_field)
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PublishError(
            f"cannot read the footprints {path} ({exc}); give a GeoJSON FeatureCollection"
        ) from None
    features = (
        doc.get("features") if isinstance(doc, dict) and doc.get("type") == "FeatureCollection" else None
    )
    if not features:
        raise PublishError(f"{path} holds no features; give a GeoJSON FeatureCollection of polygons")
    geometries = shapely.from_geojson(
        [json.dumps(f.get("geometry") or {"type": "Polygon", "coordinates": []}) for f in features]
    )
    props = [f.get("properties") or {} for f in features]
    ids = [p.get("id", f.get("id", i)) for i, (p, f) in enumerate(zip(props, features, strict=True))]
    zones = _zones(props, zone_field, path)
    return _checked(
        shapely.to_wkb(geometries),
        np.asarray([str(i) for i in ids], dtype=object),
        zones,
        _geojson_crs(doc),
        path,
    )


def _zones(props: Sequence[Mapping[str, Any]], zone_field: str | None, path: Path) -> np.ndarray:
    if zone_field is None:
        return np.full(len(props), "all", dtype=object)
    missing = sum(1 for p in props if p.get(zone_field) is None)
    if missing == len(props):
        raise PublishError(
            f"no footprint in {path} has the property {zone_field!r}; name a property the features carry"
        )
    return np.asarray([str(p.get(zone_field, "none")) for p in props], dtype=object)


def _primary_column(schema: pa.Schema) -> str:
    geo = json.loads((schema.metadata or {}).get(b"geo", b"{}"))
    return str(geo.get("primary_column", "geometry"))


def _read_geoparquet(path: Path, zone_field: str | None) -> Footprints:
    try:
        schema = pq.read_schema(path)
        wanted = {"id", zone_field, _primary_column(schema)}
        table = pq.read_table(path, columns=[c for c in schema.names if c in wanted])
    except (OSError, pa.ArrowInvalid) as exc:
        raise PublishError(f"cannot read the footprints {path} ({exc}); give a GeoParquet file") from None
    geo = json.loads((table.schema.metadata or {}).get(b"geo", b"{}"))
    column = geo.get("primary_column", "geometry")
    if column not in table.column_names:
        raise PublishError(f"{path} has no geometry column {column!r}; write it as GeoParquet (WKB)")
    crs_doc = geo.get("columns", {}).get(column, {}).get("crs")
    crs = CRS.from_user_input(crs_doc) if crs_doc else CRS.from_user_input("OGC:CRS84")
    wkb = table.column(column).to_numpy(zero_copy_only=False)
    n = table.num_rows
    if "id" in table.column_names:
        ids = np.asarray([str(i) for i in table.column("id").to_pylist()], dtype=object)
    else:
        ids = np.asarray([str(i) for i in range(n)], dtype=object)
    if zone_field is None:
        zones = np.full(n, "all", dtype=object)
    elif zone_field not in table.column_names:
        raise PublishError(
            f"the footprints in {path} have no column {zone_field!r}; name a column they carry"
        )
    else:
        zones = np.asarray(
            ["none" if z is None else str(z) for z in table.column(zone_field).to_pylist()], dtype=object
        )
    return _checked(wkb, ids, zones, crs, path)


_TYPE_NAMES = {
    0: "Point",
    1: "LineString",
    2: "LinearRing",
    4: "MultiPoint",
    5: "MultiLineString",
    7: "GeometryCollection",
}


def _checked(wkb: np.ndarray, ids: np.ndarray, zones: np.ndarray, crs: CRS, path: Path) -> Footprints:
    for start in range(0, len(wkb), _CHUNK):
        kinds = shapely.get_type_id(shapely.from_wkb(wkb[start : start + _CHUNK]))
        bad = np.flatnonzero(~np.isin(kinds, (3, 6)))  # Polygon, MultiPolygon
        if bad.size:
            kind = _TYPE_NAMES.get(int(kinds[bad[0]]), "missing")
            raise PublishError(
                f"footprint {ids[start + bad[0]]!r} in {path} is a {kind} geometry, not a polygon; "
                "give polygon footprints"
            )
    return Footprints(wkb, ids, zones, crs)


@dataclass(frozen=True)
class FeatureImpact:
    """The per-feature table and its summary.

    Attributes
    ----------
    table
        One row per footprint: ``id``, ``zone``, ``coverage`` (share of the footprint's area with
        data on both dates), ``status`` (covered / partly covered / not covered), ``pixels``
        (with data), ``changed_pixels``, ``changed_fraction``, ``mean_change_probability``,
        ``class_before`` and ``class_after`` (majority class of each date, empty when not
        covered), ``affected``.
    footprints
        The footprints (WKB in their own CRS).
    threshold
        Changed fraction from which a footprint is affected.
    summary
        Per zone and in all: footprints, covered, partly covered, not covered, affected.
    """

    table: pd.DataFrame
    footprints: Footprints
    threshold: float
    summary: dict[str, dict[str, int]] = field(default_factory=dict)


def feature_impact(
    info: ChangeCubeInfo,
    footprints: Footprints,
    *,
    threshold: float = 0.25,
    progress: Callable[[str, int, int], None] | None = None,
) -> FeatureImpact:
    """Measure the change inside each footprint, block by block over the change cube.

    Parameters
    ----------
    info
        The change cube (:func:`~pipeline.publish.cogs.describe_change_cube`).
    footprints
        The polygons (:func:`read_footprints`).
    threshold
        Changed fraction (0..1] of a footprint's covered pixels from which it is affected.
    progress
        Called as ``progress("features", done, total)`` after each block.

    Raises
    ------
    PublishError
        A threshold outside (0, 1].
    """
    if not 0 < threshold <= 1:
        raise PublishError(
            f"the affected threshold is a changed fraction in (0, 1], got {threshold}; e.g. 0.25"
        )
    n = len(footprints)
    k = len(info.classes)
    bounds = np.empty((n, 4))
    area = np.empty(n)
    for start in range(0, n, _CHUNK):
        shapes = footprints.geometries(slice(start, start + _CHUNK), info.crs)
        bounds[start : start + len(shapes)] = shapely.bounds(shapes)
        area[start : start + len(shapes)] = shapely.area(shapes)
    pixels = np.zeros(n, np.int64)
    changed = np.zeros(n, np.int64)
    probability = np.zeros(n, np.float64)
    histograms: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"before": [], "after": []}
    store = info.path.zarr_store(read_only=True)
    arrays = {
        name: zarr.open_array(store, path=name, mode="r")
        for name in ("change", "change_probability", "class_before", "class_after")
    }
    windows = list(block_windows(info.height, info.width, info.chunk))
    for done, (rows, cols) in enumerate(windows, start=1):
        window = rasterio.windows.Window(
            cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start
        )
        block_transform = rasterio.windows.transform(window, info.transform)
        west, south, east, north = rasterio.windows.bounds(window, info.transform)
        hits = np.flatnonzero(
            (bounds[:, 0] < east) & (bounds[:, 2] > west) & (bounds[:, 1] < north) & (bounds[:, 3] > south)
        )
        if hits.size:
            labels = rasterio.features.rasterize(
                zip(footprints.geometries(hits, info.crs), hits + 1, strict=True),
                out_shape=(window.height, window.width),
                transform=block_transform,
                fill=0,
                dtype="int32",
            )
            change = np.asarray(arrays["change"][rows, cols])
            valid = (labels > 0) & (change != _NODATA)
            index = labels[valid] - 1
            del labels
            pixels += np.bincount(index, minlength=n)
            changed += np.bincount(index[change[valid] == 1], minlength=n)
            del change
            prob = np.nan_to_num(np.asarray(arrays["change_probability"][rows, cols])[valid])
            probability += np.bincount(index, weights=prob, minlength=n)
            del prob
            key_type = np.int32 if n * (k + 1) < np.iinfo(np.int32).max else np.int64
            keys_base = index.astype(key_type) * (k + 1)
            for epoch in ("before", "after"):
                classes = np.asarray(arrays[f"class_{epoch}"][rows, cols])[valid]
                keys, counts = np.unique(
                    keys_base + np.minimum(classes, k).astype(key_type), return_counts=True
                )
                histograms[epoch].append((keys, counts))
        if progress is not None:
            progress("features", done, len(windows))
    pixel_area = abs(info.transform.a * info.transform.e)
    coverage = np.clip(np.divide(pixels * pixel_area, area, out=np.zeros(n), where=area > 0), 0.0, 1.0)
    status = np.where(pixels == 0, NOT_COVERED, np.where(coverage >= COVERED_SHARE, COVERED, PARTLY_COVERED))
    fraction = np.divide(changed, pixels, out=np.full(n, np.nan), where=pixels > 0)
    mean_probability = np.divide(probability, pixels, out=np.full(n, np.nan), where=pixels > 0)
    table = pd.DataFrame(
        {
            "id": footprints.ids,
            "zone": footprints.zones,
            "status": status,
            "coverage": coverage,
            "pixels": pixels,
            "changed_pixels": changed,
            "changed_fraction": fraction,
            "mean_change_probability": mean_probability,
            "class_before": _majority(histograms["before"], n, k, info.classes),
            "class_after": _majority(histograms["after"], n, k, info.classes),
            "affected": (pixels > 0) & (np.nan_to_num(fraction) >= threshold),
        }
    )
    return FeatureImpact(table, footprints, threshold, _summary(table))


def _majority(
    parts: list[tuple[np.ndarray, np.ndarray]], n: int, k: int, classes: Sequence[str]
) -> np.ndarray:
    labels = np.asarray([*classes, "no class"], dtype=object)
    out = np.full(n, "", dtype=object)
    if not parts:
        return out
    keys = np.concatenate([p[0] for p in parts])
    counts = np.concatenate([p[1] for p in parts])
    summed = pd.Series(counts).groupby(keys).sum()
    feature, cls = np.divmod(summed.index.to_numpy(), k + 1)
    frame = pd.DataFrame({"feature": feature, "cls": cls, "count": summed.to_numpy()})
    best = frame.sort_values(["feature", "count", "cls"], ascending=[True, False, True]).drop_duplicates(
        "feature"
    )
    out[best["feature"].to_numpy()] = labels[best["cls"].to_numpy()]
    return out


def _summary(table: pd.DataFrame) -> dict[str, dict[str, int]]:
    def counts(rows: pd.DataFrame) -> dict[str, int]:
        return {
            "footprints": len(rows),
            "covered": int((rows["status"] == COVERED).sum()),
            "partly_covered": int((rows["status"] == PARTLY_COVERED).sum()),
            "not_covered": int((rows["status"] == NOT_COVERED).sum()),
            "affected": int(rows["affected"].sum()),
        }

    summary = {"all": counts(table)}
    for zone, rows in table.groupby("zone", sort=True):
        if str(zone) != "all":
            summary[str(zone)] = counts(rows)
    return summary


def write_feature_impact(
    impact: FeatureImpact, parquet: Path, geojson: Path, summary: Path
) -> tuple[Path, Path, Path]:
    """Write the table as GeoParquet (geometry in its CRS) and GeoJSON (WGS84), and the summary JSON.

    Each file is written beside its final name and moved into place, so a reader never sees a
    half-written one.
    """
    meta = {
        "threshold": impact.threshold,
        "columns": {
            "status": f"{COVERED}: data on >= {COVERED_SHARE:.0%} of the area on both dates; {PARTLY_COVERED}: "
            f"on less; {NOT_COVERED}: on none (outside the imagery or its nodata), never counted unchanged",
            "changed_fraction": "changed pixels / pixels with data inside the footprint",
            "affected": f"covered or partly covered and changed_fraction >= {impact.threshold:g}",
        },
    }
    table = pa.Table.from_pandas(impact.table, preserve_index=False)
    footprints = impact.footprints
    table = table.append_column("geometry", pa.array(footprints.wkb, type=pa.binary()))
    types: set[int] = set()
    for start in range(0, len(footprints), _CHUNK):
        types.update(shapely.get_type_id(footprints.geometries(slice(start, start + _CHUNK))).tolist())
    geo = {
        "version": "1.1.0",
        "primary_column": "geometry",
        "columns": {
            "geometry": {
                "encoding": "WKB",
                "geometry_types": [{3: "Polygon", 6: "MultiPolygon"}[t] for t in sorted(types)],
                "crs": footprints.crs.to_json_dict(),
            }
        },
    }
    table = table.replace_schema_metadata(
        {
            **(table.schema.metadata or {}),
            b"geo": json.dumps(geo).encode(),
            b"seg2change": json.dumps(meta).encode(),
        }
    )
    with replace_atomically(parquet) as tmp:
        pq.write_table(table, tmp)
    with replace_atomically(geojson) as tmp:
        _write_geojson(impact, tmp)
    with replace_atomically(summary) as tmp:
        tmp.write_text(json.dumps({**meta, "summary": impact.summary}, indent=2))
    return parquet, geojson, summary


#: Rows converted to GeoJSON at a time: the file is streamed, so memory does not grow with the table.
_GEOJSON_ROWS = 5_000


def _write_geojson(impact: FeatureImpact, path: Path) -> None:
    to_wgs84 = CRS.from_user_input("OGC:CRS84")
    table = impact.table
    with path.open("w") as out:
        out.write('{"type": "FeatureCollection", "features": [')
        for start in range(0, len(table), _GEOJSON_ROWS):
            rows = table.iloc[start : start + _GEOJSON_ROWS]
            shapes = shapely.to_geojson(
                impact.footprints.geometries(slice(start, start + _GEOJSON_ROWS), to_wgs84)
            )
            records = rows.astype(object).where(rows.notna(), None).to_dict("records")
            for n, (row, shape) in enumerate(zip(records, shapes, strict=True)):
                head = "\n" if start + n == 0 else ",\n"
                properties = json.dumps(row, default=_plain)
                identifier = json.dumps(row["id"], default=_plain)
                out.write(
                    f'{head}{{"type": "Feature", "id": {identifier}, "properties": {properties}, "geometry": {shape}}}'
                )
        out.write("\n]}\n")


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON")
