"""Footprints (buildings, parcels) read from GeoJSON or GeoParquet and held compactly.

A footprint is kept as WKB with its id and zone; shapely geometries are made only for the rows a
caller asks for (:meth:`Footprints.geometries`), so 100,000 footprints cost about two hundred bytes
each. A GeoParquet file is read a record batch at a time, so the reader's buffers stay the size
of one batch, not of the file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
from pyproj import CRS, Transformer

from pipeline.errors import PublishError

__all__ = ["Footprints", "read_footprints"]

_ALL = slice(None)
#: Footprints turned into geometries (or read from GeoParquet) at a time.
CHUNK = 10_000


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

    def chunks(self, crs: CRS | None = None) -> Iterator[tuple[slice, np.ndarray]]:
        """Yield ``(rows, geometries)`` for consecutive rows, :data:`CHUNK` at a time."""
        for start in range(0, len(self), CHUNK):
            rows = slice(start, min(start + CHUNK, len(self)))
            yield rows, self.geometries(rows, crs)


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


def _read_geoparquet(path: Path, zone_field: str | None) -> Footprints:
    try:
        source = pq.ParquetFile(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise PublishError(f"cannot read the footprints {path} ({exc}); give a GeoParquet file") from None
    geo = json.loads((source.schema_arrow.metadata or {}).get(b"geo", b"{}"))
    column = str(geo.get("primary_column", "geometry"))
    names = source.schema_arrow.names
    if column not in names:
        raise PublishError(f"{path} has no geometry column {column!r}; write it as GeoParquet (WKB)")
    if zone_field is not None and zone_field not in names:
        raise PublishError(
            f"the footprints in {path} have no column {zone_field!r}; name a column they carry"
        )
    crs_doc = geo.get("columns", {}).get(column, {}).get("crs")
    crs = CRS.from_user_input(crs_doc) if crs_doc else CRS.from_user_input("OGC:CRS84")
    n = source.metadata.num_rows
    wkb = np.empty(n, dtype=object)
    ids = np.empty(n, dtype=object)
    zones = np.full(n, "all", dtype=object)
    # One shared string per zone name: a zone column repeats a few names over many rows.
    zone_names: dict[str, str] = {}
    wanted = [c for c in names if c in {"id", zone_field, column}]
    start = 0
    try:
        with source:
            for batch in source.iter_batches(batch_size=CHUNK, columns=wanted, use_threads=False):
                rows = slice(start, start + batch.num_rows)
                wkb[rows] = batch.column(column).to_numpy(zero_copy_only=False)
                if "id" in batch.schema.names:
                    ids[rows] = [str(i) for i in batch.column("id").to_pylist()]
                else:
                    ids[rows] = [str(i) for i in range(rows.start, rows.stop)]
                if zone_field is not None:
                    named = ("none" if z is None else str(z) for z in batch.column(zone_field).to_pylist())
                    zones[rows] = [zone_names.setdefault(z, z) for z in named]
                start = rows.stop
    except (OSError, pa.ArrowInvalid) as exc:
        raise PublishError(f"cannot read the footprints {path} ({exc}); give a GeoParquet file") from None
    # Arrow's allocator keeps freed batches for reuse; hand them back before the blocks are read.
    pa.default_memory_pool().release_unused()
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
    footprints = Footprints(wkb, ids, zones, crs)
    for rows, shapes in footprints.chunks():
        kinds = shapely.get_type_id(shapes)
        bad = np.flatnonzero(~np.isin(kinds, (3, 6)))  # Polygon, MultiPolygon
        if bad.size:
            kind = _TYPE_NAMES.get(int(kinds[bad[0]]), "missing")
            raise PublishError(
                f"footprint {ids[rows.start + bad[0]]!r} in {path} is a {kind} geometry, not a polygon; "
                "give polygon footprints"
            )
    return footprints
