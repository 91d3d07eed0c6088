"""Where and when a job looks: its area of interest and its two time windows.

:class:`AreaOfInterest` parses a GeoJSON geometry (inline or a file), or a bbox with its CRS,
handles areas that cross the antimeridian and reprojects them; :class:`TimeWindow` parses a STAC
interval or a start/end pair. Both are fields of :class:`~pipeline.spec.JobSpec` and are
re-exported by :mod:`pipeline.spec`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

import numpy as np
import shapely
import shapely.geometry
import shapely.validation
from pydantic import (
    BaseModel,
    ConfigDict,
    field_validator,
    model_validator,
)
from pyproj import CRS, Transformer
from pyproj.aoi import AreaOfInterest as ProjAreaOfInterest
from pyproj.database import query_utm_crs_info

from pipeline import antimeridian
from pipeline.errors import JobSpecError

__all__ = ["AreaOfInterest", "TimeWindow"]

_FROZEN = ConfigDict(frozen=True, extra="forbid")


def _as_utc(value: datetime | date, *, end_of_day: bool) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if end_of_day:
        return datetime.combine(value, time.max, tzinfo=UTC)
    return datetime.combine(value, time.min, tzinfo=UTC)


class TimeWindow(BaseModel):
    """A closed time interval. A bare date as ``end`` includes that whole day.

    Accepts ``{"start": ..., "end": ...}`` or the STAC interval string ``"2024-06-01/2024-06-30"``.
    """

    model_config = _FROZEN

    start: datetime
    end: datetime

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if isinstance(value, str):
            parts = value.split("/")
            if len(parts) != 2 or not all(parts):
                raise ValueError(f"time window {value!r} must be 'START/END', e.g. '2024-06-01/2024-06-30'")
            value = {"start": parts[0], "end": parts[1]}
        if isinstance(value, Mapping):
            out = dict(value)
            for key, end_of_day in (("start", False), ("end", True)):
                raw = out.get(key)
                if isinstance(raw, str) and len(raw) == 10:
                    raw = date.fromisoformat(raw)
                if isinstance(raw, date):
                    out[key] = _as_utc(raw, end_of_day=end_of_day)
            return out
        return value

    @field_validator("start", "end")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return _as_utc(value, end_of_day=False)

    @model_validator(mode="after")
    def _ordered(self) -> TimeWindow:
        if self.end <= self.start:
            raise ValueError(
                f"time window is reversed or empty: start {self.start.isoformat()} is not before "
                f"end {self.end.isoformat()}; swap them"
            )
        return self

    def interval(self) -> str:
        """Return the window as a STAC ``datetime`` search interval."""
        fmt = "%Y-%m-%dT%H:%M:%SZ"
        return f"{self.start.strftime(fmt)}/{self.end.strftime(fmt)}"

    def contains(self, moment: datetime) -> bool:
        """Tell whether a moment lies inside the window (both ends included)."""
        return self.start <= _as_utc(moment, end_of_day=False) <= self.end


class AreaOfInterest(BaseModel):
    """The area to analyse: a GeoJSON geometry in WGS84, or a bbox with its CRS.

    Exactly one of ``geometry`` and ``bbox`` is given. ``geometry`` may also be the path of a
    GeoJSON file (a Feature, FeatureCollection or bare geometry; features are unioned).
    """

    model_config = _FROZEN

    geometry: dict[str, Any] | None = None
    bbox: tuple[float, float, float, float] | None = None
    crs: str = "EPSG:4326"

    @model_validator(mode="before")
    @classmethod
    def _read_file(cls, value: Any) -> Any:
        if isinstance(value, Mapping) and isinstance(value.get("geometry"), str | Path):
            path = Path(value["geometry"]).expanduser()
            if not path.is_file():
                raise ValueError(f"AOI file {path} does not exist; give a GeoJSON file or a bbox")
            import json

            out = dict(value)
            out["geometry"] = _geometry_of(json.loads(path.read_text()))
            return out
        if isinstance(value, Mapping) and value.get("type") in {"Feature", "FeatureCollection"}:
            return {"geometry": _geometry_of(dict(value))}
        if isinstance(value, Mapping) and "coordinates" in value:
            return {"geometry": dict(value)}
        return value

    @model_validator(mode="after")
    def _check(self) -> AreaOfInterest:
        if (self.geometry is None) == (self.bbox is None):
            raise ValueError("give the AOI as exactly one of 'geometry' (GeoJSON) or 'bbox' (with 'crs')")
        try:
            CRS.from_user_input(self.crs)
        except Exception as exc:
            raise ValueError(f"AOI crs {self.crs!r} is not a CRS pyproj knows; use e.g. 'EPSG:4326'") from exc
        if self.bbox is not None:
            xmin, ymin, xmax, ymax = self.bbox
            geographic = CRS.from_user_input(self.crs).is_geographic
            if geographic and xmin > xmax and ymin < ymax and xmax + 360 - xmin < 180:
                if not (-180 <= xmax < xmin <= 180):
                    raise ValueError(
                        f"AOI bbox {self.bbox} crosses the antimeridian (xmin > xmax) but its longitudes "
                        "are outside -180..180; write them in -180..180, e.g. (179.9, -17.1, -179.9, -17.0)"
                    )
                return self
            if not (xmin < xmax and ymin < ymax):
                raise ValueError(
                    f"AOI bbox {self.bbox} is empty or reversed; write it as (xmin, ymin, xmax, ymax) "
                    "(a longitude/latitude bbox narrower than 180° may cross the antimeridian with "
                    "xmin > xmax, e.g. (179.9, -17.1, -179.9, -17.0))"
                )
            return self
        try:
            geom = shapely.geometry.shape(self.geometry)
        except Exception as exc:
            raise ValueError(
                f"AOI geometry is not valid GeoJSON ({exc}); check its 'type' and 'coordinates'"
            ) from exc
        if geom.is_empty:
            raise ValueError("AOI geometry is empty or has no area; give a polygon that encloses the area")
        if not geom.is_valid:
            reason = shapely.validation.explain_validity(geom)
            if "Self-intersection" in reason or "Ring Self" in reason:
                raise ValueError(
                    f"AOI geometry is invalid ({reason}); a self-intersecting polygon must be repaired, "
                    "e.g. with shapely.make_valid(), or drawn again without crossing edges"
                )
            if geom.area == 0:
                raise ValueError(
                    "AOI geometry is empty or has no area; give a polygon that encloses the area"
                )
            raise ValueError(f"AOI geometry is invalid ({reason}); repair it, e.g. with shapely.make_valid()")
        if geom.area == 0:
            raise ValueError("AOI geometry is empty or has no area; give a polygon that encloses the area")
        return self

    @property
    def crosses_antimeridian(self) -> bool:
        """True for a longitude/latitude AOI that crosses ±180° (see :mod:`pipeline.antimeridian`)."""
        if not CRS.from_user_input(self.crs).is_geographic:
            return False
        if self.bbox is not None:
            return self.bbox[0] > self.bbox[2]
        return antimeridian.crosses(shapely.geometry.shape(self.geometry))

    def shape(self) -> shapely.Geometry:
        """Return the AOI as a shapely geometry in :attr:`crs`.

        An AOI crossing the antimeridian is returned split at ±180° (a MultiPolygon whose parts
        lie on either side), as GeoJSON (RFC 7946) and STAC searches want it.
        """
        if self.crosses_antimeridian:
            return antimeridian.split(self._unwrapped())
        if self.bbox is not None:
            return shapely.box(*self.bbox)
        return shapely.geometry.shape(self.geometry)

    def _unwrapped(self) -> shapely.Geometry:
        """The AOI with longitudes continuous across ±180° (west of it shifted by +360°)."""
        if self.bbox is not None:
            xmin, ymin, xmax, ymax = self.bbox
            return shapely.box(xmin, ymin, xmax + 360, ymax)
        return antimeridian.unwrap(shapely.geometry.shape(self.geometry))

    def shape_in(self, crs: CRS | str) -> shapely.Geometry:
        """Return the AOI reprojected to another CRS (densified so edges stay faithful).

        Raises
        ------
        JobSpecError
            The AOI crosses the antimeridian and ``crs`` cannot hold its two sides as one area.
        """
        target = CRS.from_user_input(crs)
        source = CRS.from_user_input(self.crs)
        if self.crosses_antimeridian and not target.is_geographic:
            return antimeridian.project(self.shape(), source, target)
        geom = self.shape()
        if source == target:
            return geom
        geom = shapely.segmentize(geom, max_segment_length=_densify_step(geom))
        transformer = Transformer.from_crs(source, target, always_xy=True)
        return shapely.transform(geom, lambda xy: _stack(transformer.transform(xy[:, 0], xy[:, 1])))

    def wgs84(self) -> shapely.Geometry:
        """Return the AOI in WGS84 longitude/latitude, as STAC searches want it."""
        return self.shape_in("EPSG:4326")

    def utm_crs(self) -> CRS:
        """Return the UTM zone CRS of the AOI's centroid."""
        if self.crosses_antimeridian:
            centre = self._unwrapped().centroid
            centre = shapely.Point((centre.x + 180) % 360 - 180, centre.y)
        else:
            centre = self.wgs84().centroid
        infos = query_utm_crs_info(
            datum_name="WGS 84",
            area_of_interest=ProjAreaOfInterest(centre.x, centre.y, centre.x, centre.y),
        )
        if not infos:
            raise JobSpecError("no UTM zone covers the AOI's centroid; set grid.crs explicitly")
        return CRS.from_epsg(int(infos[0].code))


def _stack(xy: tuple[Any, Any]) -> Any:
    return np.column_stack(xy)


def _densify_step(geom: shapely.Geometry) -> float:
    xmin, ymin, xmax, ymax = geom.bounds
    return max(xmax - xmin, ymax - ymin) / 32 or 1.0


def _geometry_of(doc: dict[str, Any]) -> dict[str, Any]:
    if doc.get("type") == "FeatureCollection":
        geoms = [shapely.geometry.shape(f["geometry"]) for f in doc.get("features", [])]
        if not geoms:
            raise ValueError("AOI FeatureCollection has no features; give at least one polygon")
        union: dict[str, Any] = shapely.geometry.mapping(shapely.union_all(geoms))
        return union
    if doc.get("type") == "Feature":
        return dict(doc["geometry"])
    return doc
