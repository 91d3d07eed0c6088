"""Zones of per-zone statistics: polygons from a GeoJSON FeatureCollection, on the change cube's grid.

Zones may be in any CRS (a GeoJSON ``crs`` member names it; default WGS84 longitude/latitude);
each zone is densified and reprojected to the grid's CRS, so a straight edge in degrees stays
faithful on a projected grid. The id :data:`ALL_ZONE` is reserved for the whole area.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely
import shapely.geometry
from pyproj import CRS, Transformer

from pipeline.errors import PublishError

__all__ = ["ALL_ZONE", "Zone", "load_zones"]

#: Zone name of the whole area.
ALL_ZONE = "all"


@dataclass(frozen=True)
class Zone:
    """A zone for statistics: its id and its polygon(s) in the grid's CRS."""

    id: str
    geometry: shapely.Geometry


def _zone_crs(doc: Mapping[str, Any]) -> CRS:
    named = (doc.get("crs") or {}).get("properties", {}).get("name")
    try:
        return CRS.from_user_input(named) if named else CRS.from_user_input("OGC:CRS84")
    except Exception as exc:
        raise PublishError(
            f"the zones' crs {named!r} is unknown to pyproj; name it like 'EPSG:32633' or "
            "'urn:ogc:def:crs:EPSG::32633', or give the zones in WGS84 without a crs member"
        ) from exc


def load_zones(path: Path, crs: CRS) -> list[Zone]:
    """Read a GeoJSON FeatureCollection of polygons and reproject it to ``crs``.

    A zone's id is its ``id`` property, else its ``name`` property, else the feature's ``id``
    member, else its index in the collection.

    Raises
    ------
    PublishError
        When the file is unreadable, holds no polygon features, has a non-polygon geometry,
        repeats an id, or uses the reserved id :data:`ALL_ZONE`.
    """
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PublishError(
            f"cannot read the zones file {path} ({exc}); give a GeoJSON FeatureCollection"
        ) from None
    features = doc.get("features") if doc.get("type") == "FeatureCollection" else None
    if doc.get("type") == "Feature":
        features = [doc]
    if not features:
        raise PublishError(
            f"the zones file {path} holds no features; give a GeoJSON FeatureCollection of polygons"
        )
    transformer = Transformer.from_crs(_zone_crs(doc), crs, always_xy=True)
    zones: list[Zone] = []
    for index, feature in enumerate(features):
        props = feature.get("properties") or {}
        raw_id = next(
            (v for v in (props.get("id"), props.get("name"), feature.get("id")) if v is not None), index
        )
        zone_id = str(raw_id)
        geometry = shapely.geometry.shape(
            feature.get("geometry") or {"type": "GeometryCollection", "geometries": []}
        )
        if geometry.geom_type not in ("Polygon", "MultiPolygon"):
            raise PublishError(
                f"zone {zone_id!r} in {path} is a {geometry.geom_type}, not a polygon; give polygon zones"
            )
        xmin, ymin, xmax, ymax = geometry.bounds
        step = max(xmax - xmin, ymax - ymin) / 256 or 1.0
        dense = shapely.segmentize(geometry, max_segment_length=step)
        projected = shapely.transform(
            dense, lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1]))
        )
        zones.append(Zone(zone_id, shapely.make_valid(projected)))
    ids = [z.id for z in zones]
    duplicated = sorted({i for i in ids if ids.count(i) > 1})
    if duplicated:
        raise PublishError(
            f"zone ids {duplicated} appear more than once in {path}; give each zone a unique id or name"
        )
    if ALL_ZONE in ids:
        raise PublishError(f"zone id {ALL_ZONE!r} is reserved for the whole area; rename that zone in {path}")
    return zones
