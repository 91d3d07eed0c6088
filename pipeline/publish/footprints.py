"""Footprints (buildings, parcels) read from GeoJSON or GeoParquet and held compactly.

A footprint is kept as WKB in one Arrow array, with its id (an Arrow string array) and its zone (an
Arrow dictionary array: one string per zone name); shapely geometries are made only for the rows a
caller asks for (:meth:`Footprints.geometries`). 100,000 building footprints cost about twelve
megabytes, against two hundred bytes each as Python objects. A GeoParquet file is read a record
batch at a time, so the reader's buffers stay the size of one batch, not of the file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import shapely
from pyproj import CRS, Transformer

from pipeline.errors import PublishError
from pipeline.memory_release import release_freed_memory

__all__ = ["Footprints", "read_footprints"]

_ALL = slice(None)
#: Footprints turned into geometries (or read from GeoParquet) at a time: GEOS holds a few hundred
#: bytes per polygon, freed after each chunk.
CHUNK = 2_000


@dataclass(frozen=True)
class Footprints:
    """Polygons with an id, an optional zone and their CRS.

    Attributes
    ----------
    wkb
        The polygons as WKB (a ``pyarrow`` large binary array), in ``crs``; :meth:`geometries`
        builds shapely objects.
    ids
        One id per footprint (its ``id`` property or member, else its index), a ``pyarrow`` large
        string array.
    zones
        One zone name per footprint (the ``zone_field`` property; ``"all"`` without one), a
        ``pyarrow`` dictionary array (``zones.indices`` into ``zones.dictionary``).
    crs
        CRS of the coordinates.
    """

    wkb: pa.LargeBinaryArray
    ids: pa.LargeStringArray
    zones: pa.DictionaryArray
    crs: CRS

    def __len__(self) -> int:
        return len(self.wkb)

    def geometries(self, rows: slice | np.ndarray = _ALL, crs: CRS | None = None) -> np.ndarray:
        """Shapely polygons of some rows (a slice or an array of row numbers; default all).

        They are reprojected to ``crs`` when given.
        """
        if isinstance(rows, slice):
            start, stop, step = rows.indices(len(self))
            if step != 1:
                raise ValueError(f"rows must be a slice with step 1 or an array of row numbers, got {rows}")
            chosen = self.wkb.slice(start, max(stop - start, 0))
        else:
            chosen = self.wkb.take(rows)
        shapes: np.ndarray = shapely.from_wkb(chosen.to_numpy(zero_copy_only=False))
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
        pa.array(shapely.to_wkb(geometries), type=pa.large_binary()),
        pa.array([str(i) for i in ids], type=pa.large_string()),
        zones,
        _geojson_crs(doc),
        path,
    )


def _zones(props: Sequence[Mapping[str, Any]], zone_field: str | None, path: Path) -> pa.DictionaryArray:
    if zone_field is None:
        return _one_zone(len(props))
    missing = sum(1 for p in props if p.get(zone_field) is None)
    if missing == len(props):
        raise PublishError(
            f"no footprint in {path} has the property {zone_field!r}; name a property the features carry"
        )
    return pa.array(
        [str(p.get(zone_field, "none")) for p in props], type=pa.large_string()
    ).dictionary_encode()


def _one_zone(n: int) -> pa.DictionaryArray:
    """Every footprint in the zone ``"all"``."""
    return pa.DictionaryArray.from_arrays(np.zeros(n, np.int32), pa.array(["all"], type=pa.large_string()))


def _text(column: pa.Array, null: str) -> pa.LargeStringArray:
    """A column as strings: Python's ``str`` of each value, ``null`` for a missing one."""
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return pc.fill_null(column.cast(pa.large_string()), null)
    return pa.array([null if v is None else str(v) for v in column.to_pylist()], type=pa.large_string())


def _read_geoparquet(path: Path, zone_field: str | None) -> Footprints:
    try:
        source = pq.ParquetFile(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise PublishError(f"cannot read the footprints {path} ({exc}); give a GeoParquet file") from None
    geo = json.loads((source.schema_arrow.metadata or {}).get(b"geo", b"{}"))
    column = str(geo.get("primary_column", "geometry"))
    schema = source.schema_arrow
    if column not in schema.names:
        raise PublishError(f"{path} has no geometry column {column!r}; write it as GeoParquet (WKB)")
    kind = schema.field(column).type
    if not (pa.types.is_binary(kind) or pa.types.is_large_binary(kind)):
        raise PublishError(
            f"the geometry column {column!r} of {path} is {kind}, not WKB; "
            "write the GeoParquet with the WKB encoding"
        )
    if zone_field is not None and zone_field not in schema.names:
        raise PublishError(
            f"the footprints in {path} have no column {zone_field!r}; name a column they carry"
        )
    if source.metadata.num_rows == 0:
        raise PublishError(f"{path} holds no features; give a GeoParquet file of polygons")
    crs_doc = geo.get("columns", {}).get(column, {}).get("crs")
    crs = CRS.from_user_input(crs_doc) if crs_doc else CRS.from_user_input("OGC:CRS84")
    wkb: list[pa.Array] = []
    ids: list[pa.Array] = []
    zones: list[pa.Array] = []
    wanted = [c for c in schema.names if c in {"id", zone_field, column}]
    start = 0
    try:
        with source:
            for batch in source.iter_batches(batch_size=CHUNK, columns=wanted, use_threads=False):
                stop = start + batch.num_rows
                wkb.append(batch.column(column).cast(pa.large_binary()))
                if "id" in batch.schema.names:
                    ids.append(_text(batch.column("id"), "None"))
                else:
                    ids.append(pa.array(np.arange(start, stop)).cast(pa.large_string()))
                if zone_field is not None:
                    zones.append(_text(batch.column(zone_field), "none"))
                start = stop
        footprints = (
            pa.concat_arrays(wkb),
            pa.concat_arrays(ids),
            pa.concat_arrays(zones).dictionary_encode() if zone_field is not None else _one_zone(start),
        )
    except (OSError, pa.ArrowInvalid) as exc:
        raise PublishError(f"cannot read the footprints {path} ({exc}); give a GeoParquet file") from None
    del wkb, ids, zones
    return _checked(*footprints, crs, path)


_TYPE_NAMES = {
    0: "Point",
    1: "LineString",
    2: "LinearRing",
    4: "MultiPoint",
    5: "MultiLineString",
    7: "GeometryCollection",
}


def _checked(
    wkb: pa.LargeBinaryArray, ids: pa.LargeStringArray, zones: pa.DictionaryArray, crs: CRS, path: Path
) -> Footprints:
    footprints = Footprints(wkb, ids, zones, crs)
    for rows, shapes in footprints.chunks():
        kinds = shapely.get_type_id(shapes)
        bad = np.flatnonzero(~np.isin(kinds, (3, 6)))  # Polygon, MultiPolygon
        if bad.size:
            kind = _TYPE_NAMES.get(int(kinds[bad[0]]), "missing")
            raise PublishError(
                f"footprint {ids[rows.start + int(bad[0])].as_py()!r} in {path} is a {kind} geometry, not a polygon; "
                "give polygon footprints"
            )
    # The reader's buffers and the geometries checked are freed: hand them back before the blocks.
    release_freed_memory()
    return footprints
