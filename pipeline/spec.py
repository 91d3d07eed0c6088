"""The job specification: one validated object that says what to compute, where and when.

A :class:`JobSpec` is loaded from YAML (:meth:`JobSpec.from_yaml`) or built from keyword arguments by
the command line and the flows. Every invalid field fails here, before any work starts, with a
:class:`~pipeline.errors.JobSpecError` whose message names the field and the fix.
"""

from __future__ import annotations

import glob
import math
from collections.abc import Mapping
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydantic
import shapely
import shapely.geometry
import shapely.validation
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)
from pyproj import CRS, Transformer
from pyproj.aoi import AreaOfInterest as ProjAreaOfInterest
from pyproj.database import query_utm_crs_info

from pipeline import antimeridian
from pipeline.bands import COMMON_NAMES, DEFAULT_BANDS
from pipeline.engine_spec import ClusterSpec, ModelSpec, PromptSpec, TilingSpec
from pipeline.errors import JobSpecError, StorageError
from pipeline.signers import check_signer_name
from pipeline.storage import Location

__all__ = [
    "AreaOfInterest",
    "CatalogSpec",
    "GridSpec",
    "JobSpec",
    "LimitsSpec",
    "QualitySpec",
    "TimeWindow",
    "load_job",
]

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
        return shapely.geometry.mapping(shapely.union_all(geoms))
    if doc.get("type") == "Feature":
        return dict(doc["geometry"])
    return doc


class CatalogSpec(BaseModel):
    """Where the scenes are listed: a STAC API URL, a local ItemCollection / static catalog file, or
    a folder or glob pattern of the user's own GeoTIFF/COG files.

    Local files may be a STAC ItemCollection (``FeatureCollection``), newline-delimited items
    (``.ndjson``), or a static Catalog/Collection JSON whose item links are followed. A folder
    (searched for ``*.tif`` at any depth) or a glob is catalogued when the job is discovered
    (:mod:`pipeline.own_imagery`: collection ``own-imagery``, each file dated by ``name_date`` or its
    DATETIME tag). A bare string is the ``url``.

    Attributes
    ----------
    url
        The API root URL or the catalog file.
    sign
        Optional href signer applied to every asset href found, after the search: a preset
        (``planetary_computer``) or an import path ``package.module:function`` of a function that
        takes an href and returns the href to read (see :mod:`pipeline.signers`).
    name_date
        For a folder or glob: the ``strptime`` pattern of the date in the file names (``%Y%m%d``).
    retries, backoff, timeout
        Each API request is retried at most ``retries`` times on connection errors and on HTTP
        429/502/503/504, with exponential backoff from ``backoff`` seconds; ``timeout`` bounds the
        wait for one answer (see :mod:`pipeline.catalog_io`).
    """

    model_config = _FROZEN

    url: str
    sign: str | None = None
    name_date: str | None = None
    retries: int = Field(default=5, ge=0, le=20)
    backoff: float = Field(default=0.5, ge=0, le=60)
    timeout: float = Field(default=60.0, gt=0)

    @field_validator("sign")
    @classmethod
    def _known_signer(cls, value: str | None) -> str | None:
        return None if value is None else check_signer_name(value)

    @model_serializer(mode="wrap")
    def _omit_defaults(self, handler: SerializerFunctionWrapHandler) -> Any:
        # Jobs that leave the access fields alone dump as before: their recorded identity is unchanged.
        doc = handler(self)
        if isinstance(doc, dict):
            for name in ("sign", "name_date", "retries", "backoff", "timeout"):
                if getattr(self, name) == type(self).model_fields[name].default:
                    doc.pop(name, None)
        return doc

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        if isinstance(value, str | Path):
            return {"url": str(value)}
        return value

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if value.startswith(("http://", "https://")):
            return value
        path = Path(value.removeprefix("file://")).expanduser()
        if path.is_dir():
            return str(path.resolve())
        if glob.has_magic(str(path)) and Path(str(path).split("*")[0]).parent.is_dir():
            return str(path.absolute())
        if not path.is_file():
            raise ValueError(
                f"catalog {value!r} is neither an http(s) STAC API URL nor an existing local file or folder "
                "of GeoTIFFs; give the API root URL, the path of an ItemCollection/catalog JSON, or the "
                "images' folder"
            )
        return str(path.resolve())

    @property
    def is_images(self) -> bool:
        """True when the catalog is a folder or glob of image files, catalogued at discovery."""
        return not self.is_api and (Path(self.url).is_dir() or glob.has_magic(self.url))

    @property
    def is_api(self) -> bool:
        """True when the catalog is a STAC API reached over HTTP."""
        return self.url.startswith(("http://", "https://"))


class GridSpec(BaseModel):
    """The target grid: CRS (default: the UTM zone of the AOI) and pixel size in CRS units."""

    model_config = _FROZEN

    crs: str | None = None
    resolution: float = 10.0

    @field_validator("resolution")
    @classmethod
    def _positive(cls, value: float) -> float:
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"grid resolution must be a positive number of CRS units, got {value}; e.g. 10")
        return value

    @field_validator("crs")
    @classmethod
    def _known_crs(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            crs = CRS.from_user_input(value)
        except Exception as exc:
            raise ValueError(f"grid crs {value!r} is unknown to pyproj; use e.g. 'EPSG:32633'") from exc
        if crs.is_geographic:
            raise ValueError(
                f"grid crs {value!r} is geographic (degrees); pick a projected CRS in metres, "
                "or leave it out to use the AOI's UTM zone"
            )
        return value


class QualitySpec(BaseModel):
    """Which asset flags clouds, shadows and nodata, and which of its values are invalid.

    Presets: ``synthetic`` (the generated scenes' ``qa`` band: 1 cloud, 2 shadow, 255 nodata),
    ``s2-scl`` (Sentinel-2 L2A scene classification: no data, saturated, shadows, clouds, cirrus),
    ``none`` (no quality band; only nodata is masked).
    """

    model_config = _FROZEN

    asset: str | None = "qa"
    invalid_values: tuple[int, ...] = (1, 2, 255)

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, value: Any) -> Any:
        presets: dict[str, dict[str, Any]] = {
            "synthetic": {"asset": "qa", "invalid_values": (1, 2, 255)},
            "s2-scl": {"asset": "scl", "invalid_values": (0, 1, 3, 8, 9, 10)},
            "none": {"asset": None, "invalid_values": ()},
        }
        if isinstance(value, str):
            if value not in presets:
                raise ValueError(f"quality preset {value!r} is unknown; use one of {sorted(presets)}")
            return presets[value]
        return value


#: Largest grid (pixels of the AOI's bounds) a job may cover without ``limits.allow_large``:
#: 2e9 px is about 450 km x 450 km at 10 m, an input cube of about 100 GB with six bands.
DEFAULT_MAX_PIXELS = 2_000_000_000


class LimitsSpec(BaseModel):
    """How large a job may be before it is refused (see :mod:`pipeline.cost`).

    Attributes
    ----------
    max_pixels
        Largest number of grid pixels (the AOI's bounds at the grid's resolution).
    allow_large
        Run a job over ``max_pixels`` anyway (the command line's ``--allow-large``).
    """

    model_config = _FROZEN

    max_pixels: int = DEFAULT_MAX_PIXELS
    allow_large: bool = False

    @field_validator("max_pixels")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"max_pixels must be at least 1, got {value}; e.g. {DEFAULT_MAX_PIXELS}")
        return value


class JobSpec(BaseModel):
    """Everything one change-detection job needs, validated.

    Attributes
    ----------
    aoi
        Area of interest.
    before, after
        The two time windows; ``before`` must end before ``after`` starts.
    catalog
        STAC API URL or local catalog file.
    collections
        Collection ids to search.
    bands
        Band common names to read (see :data:`pipeline.bands.COMMON_NAMES`).
    band_map
        Optional explicit common name -> asset key mapping for catalogs with unusual keys.
    quality
        The cloud/shadow/nodata quality band and its invalid values.
    grid
        Target CRS and resolution.
    cloud_limit
        Largest ``eo:cloud_cover`` (percent) of an acquisition to use.
    output
        Output folder: a local path, or an fsspec URL such as ``s3://bucket/prefix`` (credentials
        and endpoint from the environment, see :mod:`pipeline.storage`).
    block_size
        Side of the square spatial blocks of the cube, in pixels.
    zarr_format
        3 (default) or 2. GDAL reads Zarr v3 as zarr-python writes it only from GDAL 3.11; readers
        on older GDAL (QGIS LTR, rasterio 1.4 wheels) need 2.
    prompts
        The classes to find and the targets of binary change (see :class:`PromptSpec`); required
        by ``run``, not by ``prepare``.
    models, tiling, cluster
        Change model and segmenter, tile grid and blending, and where to compute.
    zones
        Optional GeoJSON file of polygons for per-zone statistics.
    overwrite
        Replace an existing output. Without it an existing output is an error.
    limits
        The size over which a job is refused unless allowed (see :class:`LimitsSpec`).
    asset_roots
        Local folders that asset files may lie in besides a local catalog's own folder (see
        :mod:`pipeline.containment`); relative paths are taken from the job file.
    """

    model_config = _FROZEN

    aoi: AreaOfInterest
    before: TimeWindow
    after: TimeWindow
    catalog: CatalogSpec
    collections: tuple[str, ...] = Field(min_length=1)
    bands: tuple[str, ...] = DEFAULT_BANDS
    band_map: dict[str, str] = Field(default_factory=dict)
    quality: QualitySpec = QualitySpec()
    grid: GridSpec = GridSpec()
    cloud_limit: float = 50.0
    output: str
    block_size: int = 1024
    zarr_format: Literal[2, 3] = 3
    prompts: PromptSpec | None = None
    models: ModelSpec = ModelSpec()
    tiling: TilingSpec = TilingSpec()
    cluster: ClusterSpec = ClusterSpec()
    zones: str | None = None
    overwrite: bool = False
    limits: LimitsSpec = LimitsSpec()
    asset_roots: tuple[str, ...] = ()

    @field_validator("collections", "bands", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("bands")
    @classmethod
    def _known_bands(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError(f"no bands given; name some of {', '.join(COMMON_NAMES)}")
        seen: set[str] = set()
        for band in value:
            if band in seen:
                raise ValueError(f"band {band!r} is listed twice; list each band once")
            seen.add(band)
        return value

    @field_validator("cloud_limit")
    @classmethod
    def _percent(cls, value: float) -> float:
        if not 0 <= value <= 100:
            raise ValueError(f"cloud_limit is a percentage in [0, 100], got {value}")
        return value

    @field_validator("block_size")
    @classmethod
    def _block(cls, value: int) -> int:
        if value < 64:
            raise ValueError(f"block_size must be at least 64 pixels, got {value}; 1024 is a good default")
        return value

    @field_validator("zones")
    @classmethod
    def _zones(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).expanduser().is_file():
            raise ValueError(
                f"zones file {value} does not exist; give a GeoJSON FeatureCollection of polygons"
            )
        return value

    @field_validator("output")
    @classmethod
    def _output(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("output is empty; give a folder path or an s3:// URI")
        try:
            location = Location(value)
        except StorageError as exc:
            raise ValueError(str(exc)) from None
        if location.protocol in {"http", "https"}:
            raise ValueError(
                f"output {value} is read-only over {location.protocol}; give a folder or an s3:// URI"
            )
        return value

    @model_validator(mode="after")
    def _check(self) -> JobSpec:
        if self.after.start <= self.before.end:
            raise ValueError(
                f"time windows overlap or are in the wrong order: before ends {self.before.end.date()}, "
                f"after starts {self.after.start.date()}; 'before' must end before 'after' starts"
            )
        for band in self.bands:
            if band not in COMMON_NAMES and band not in self.band_map:
                raise ValueError(
                    f"unknown band {band!r}; use a common name ({', '.join(COMMON_NAMES)}) "
                    "or map it to an asset key in band_map"
                )
        if self.aoi.crosses_antimeridian:
            self.target_bounds()  # refuses a grid that cannot hold both sides of ±180° as one area
        return self

    @classmethod
    def build(cls, **fields: Any) -> JobSpec:
        """Validate keyword fields into a spec, raising :class:`JobSpecError` on any problem."""
        try:
            return cls.model_validate(fields)
        except pydantic.ValidationError as exc:
            raise JobSpecError(_explain(exc)) from None

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> JobSpec:
        """Load a job from a YAML file; relative paths in it are taken relative to the file.

        Parameters
        ----------
        path
            The YAML job file.
        **overrides
            Top-level fields that replace the file's (the command line's options).
        """
        path = Path(path)
        if not path.is_file():
            raise JobSpecError(f"job file {path} does not exist; write one (see README) or check the path")
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise JobSpecError(f"job file {path} is not valid YAML: {exc}") from None
        if not isinstance(doc, dict):
            raise JobSpecError(f"job file {path} must hold a mapping of fields, not {type(doc).__name__}")
        doc = _resolve_relative(doc, path.parent)
        doc.update({k: v for k, v in overrides.items() if v is not None})
        return cls.build(**doc)

    def target_crs(self) -> CRS:
        """Return the grid CRS: the one given, or the AOI's UTM zone."""
        return CRS.from_user_input(self.grid.crs) if self.grid.crs else self.aoi.utm_crs()

    def target_bounds(self) -> tuple[float, float, float, float]:
        """Return the AOI's bounds in the target CRS, snapped outward to whole pixels."""
        res = self.grid.resolution
        xmin, ymin, xmax, ymax = self.aoi.shape_in(self.target_crs()).bounds
        return (
            math.floor(xmin / res) * res,
            math.floor(ymin / res) * res,
            math.ceil(xmax / res) * res,
            math.ceil(ymax / res) * res,
        )

    def windows(self) -> dict[Literal["before", "after"], TimeWindow]:
        """Return the two windows by epoch name."""
        return {"before": self.before, "after": self.after}


def _resolve_relative(doc: dict[str, Any], base: Path) -> dict[str, Any]:
    out = dict(doc)
    catalog = out.get("catalog")
    if isinstance(catalog, str) and not catalog.startswith(("http://", "https://", "/", "file://")):
        out["catalog"] = str((base / catalog).resolve())
    if isinstance(catalog, dict) and isinstance(catalog.get("url"), str):
        url = catalog["url"]
        if not url.startswith(("http://", "https://", "/", "file://")):
            out["catalog"] = {**catalog, "url": str((base / url).resolve())}
    aoi = out.get("aoi")
    if isinstance(aoi, dict) and isinstance(aoi.get("geometry"), str):
        aoi = dict(aoi)
        aoi["geometry"] = str((base / aoi["geometry"]).resolve())
        out["aoi"] = aoi
    roots = out.get("asset_roots")
    if isinstance(roots, list | tuple):
        out["asset_roots"] = [
            str((base / r).resolve())
            if isinstance(r, str) and "://" not in r and not r.startswith("/")
            else r
            for r in roots
        ]
    zones = out.get("zones")
    if isinstance(zones, str) and "://" not in zones and not zones.startswith("/"):
        out["zones"] = str((base / zones).resolve())
    models = out.get("models")
    if isinstance(models, dict):
        models = dict(models)
        for key in ("checkpoint", "backbone_weights"):
            value = models.get(key)
            if isinstance(value, str) and "://" not in value and not value.startswith("/"):
                models[key] = str((base / value).resolve())
        out["models"] = models
    output = out.get("output")
    if isinstance(output, str) and output.strip() and "://" not in output and not output.startswith("/"):
        out["output"] = str((base / output).resolve())
    return out


def _explain(exc: pydantic.ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "job"
        message = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "missing":
            message = "is required; add it to the job"
        elif err["type"] == "extra_forbidden":
            message = "is not a known field; check its spelling (see README for the job fields)"
        lines.append(f"{where}: {message}")
    return "invalid job: " + "; ".join(lines)


def load_job(path: str | Path, **overrides: Any) -> JobSpec:
    """Load and validate a job file. See :meth:`JobSpec.from_yaml`."""
    return JobSpec.from_yaml(path, **overrides)
