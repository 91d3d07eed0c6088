"""Areas of interest that cross the antimeridian (±180° longitude).

A longitude/latitude polygon whose edge jumps by more than 180° of longitude (corners at 179.95°
and -179.95°) crosses the antimeridian: read naively it is a strip around the whole globe. Here it
is *unwrapped* (longitudes made continuous, e.g. 179.95..180.05), *split* at ±180° into the parts
on either side for searches (GeoJSON, RFC 7946 section 3.1.9), and *projected* part by part onto
the job's grid, which must hold both parts as one area (a UTM zone next to the antimeridian does;
a global projection such as Web Mercator puts them 40,000 km apart and is refused).

The ``antimeridian`` package does the splitting too, but it is not in the project's pinned set of
dependencies; the few shapely operations below cover the polygons an AOI is made of.
"""

from __future__ import annotations

import numpy as np
import shapely
import shapely.affinity
from pyproj import CRS, Transformer

from pipeline.errors import JobSpecError

__all__ = ["crosses", "project", "split", "unwrap"]


def _polygons(geom: shapely.Geometry) -> list[shapely.Polygon]:
    if isinstance(geom, shapely.Polygon):
        return [geom]
    if isinstance(geom, shapely.MultiPolygon | shapely.GeometryCollection):
        return [p for part in geom.geoms for p in _polygons(part)]
    return []


def _jumps(ring: shapely.LinearRing) -> bool:
    x = np.asarray(ring.coords)[:, 0]
    return bool(np.any(np.abs(np.diff(x)) > 180))


def crosses(geom: shapely.Geometry) -> bool:
    """Whether a longitude/latitude geometry crosses the antimeridian.

    It does when an edge of a ring jumps by more than 180° of longitude, or when it is already
    split: a multi-polygon with parts touching both -180° and 180°.
    """
    polygons = _polygons(geom)
    for polygon in polygons:
        if any(_jumps(ring) for ring in (polygon.exterior, *polygon.interiors)):
            return True
    if len(polygons) > 1:
        xmin, _, xmax, _ = geom.bounds
        return bool(xmin <= -180 and xmax >= 180)
    return False


def _unwrap_ring(ring: shapely.LinearRing) -> np.ndarray:
    xy = np.asarray(ring.coords, dtype=float).copy()
    steps = np.diff(xy[:, 0])
    offsets = np.concatenate(
        [[0.0], np.cumsum(np.where(steps > 180, -360.0, np.where(steps < -180, 360.0, 0)))]
    )
    xy[:, 0] += offsets
    return xy


def unwrap(geom: shapely.Geometry) -> shapely.Geometry:
    """Make longitudes continuous across ±180°: the parts west of it move by +360° (values up to 540°).

    Raises
    ------
    JobSpecError
        The unwrapped area is 180° wide or more (it then has no sensible grid).
    """
    parts = []
    for polygon in _polygons(geom):
        shell = _unwrap_ring(polygon.exterior)
        shift = 360.0 if shell[:, 0].max() <= 0 else 0.0
        holes = [_unwrap_ring(ring) for ring in polygon.interiors]
        # A hole unwraps like its shell; align it to the shell's side of the antimeridian.
        holes = [h + [[360.0 * round((shell[:, 0].mean() - h[:, 0].mean()) / 360.0), 0]] for h in holes]
        parts.append(shapely.Polygon(shell + [[shift, 0]], [h + [[shift, 0]] for h in holes]))
    unwrapped = shapely.union_all(parts) if len(parts) > 1 else parts[0]
    xmin, _, xmax, _ = unwrapped.bounds
    if xmax - xmin >= 180:
        raise JobSpecError(
            f"the AOI crosses the antimeridian and spans {xmax - xmin:.1f}° of longitude once unwrapped; "
            "an AOI crossing ±180° must be narrower than 180°: split it into smaller jobs"
        )
    return unwrapped


def split(unwrapped: shapely.Geometry) -> shapely.Geometry:
    """Split an unwrapped geometry at 180° into a multi-polygon in -180..180 (east part first)."""
    east = shapely.intersection(unwrapped, shapely.box(-540, -90, 180, 90))
    west = shapely.intersection(unwrapped, shapely.box(180, -90, 540, 90))
    west = shapely.affinity.translate(west, xoff=-360)
    parts = [p for p in (*_polygons(east), *_polygons(west)) if not p.is_empty and p.area > 0]
    return shapely.MultiPolygon(parts)


def project(parts: shapely.Geometry, source: CRS, target: CRS) -> shapely.Geometry:
    """Project the split parts of an AOI to a projected CRS, refusing one that tears them apart.

    Parameters
    ----------
    parts
        The AOI split at ±180° (:func:`split`), in the geographic CRS ``source``.
    source
        The AOI's geographic CRS.
    target
        The grid's CRS.

    Raises
    ------
    JobSpecError
        The two sides of the antimeridian do not meet in ``target`` (e.g. Web Mercator).
    """
    transformer = Transformer.from_crs(source, target, always_xy=True)
    projected = []
    for part in _polygons(parts):
        xmin, ymin, xmax, ymax = part.bounds
        step = max(xmax - xmin, ymax - ymin) / 32 or 1.0
        dense = shapely.segmentize(part, max_segment_length=step)
        projected.append(
            shapely.transform(dense, lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1])))
        )
    sides = list(zip(projected, _polygons(parts), strict=True))
    east = [done for done, part in sides if part.bounds[2] >= 180]
    west = [done for done, part in sides if part.bounds[0] <= -180]
    if east and west:
        union = shapely.union_all(projected)
        gap = shapely.distance(shapely.union_all(east), shapely.union_all(west))
        uxmin, uymin, uxmax, uymax = union.bounds
        if gap > 1e-6 * max(uxmax - uxmin, uymax - uymin, 1.0):
            raise JobSpecError(
                f"grid crs {target.to_string()} cannot hold the AOI across the antimeridian as one area "
                f"(its two sides lie {gap:.3g} {target.axis_info[0].unit_name}s apart there); leave "
                "grid.crs out to use the UTM zone of the AOI, or give a UTM zone next to ±180° "
                "(EPSG:32601/32660 north, EPSG:32701/32760 south)"
            )
    return shapely.union_all(projected)
