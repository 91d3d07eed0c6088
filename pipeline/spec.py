"""The job specification: one validated object that says what to compute, where and when.

A :class:`JobSpec` is loaded from YAML (:meth:`JobSpec.from_yaml`) or built from keyword arguments by
the command line and the flows. Every invalid field fails here, before any work starts, with a
:class:`~pipeline.errors.JobSpecError` whose message names the field and the fix.

The parts live where their knowledge is and are re-exported here: :class:`AreaOfInterest` and
:class:`TimeWindow` in :mod:`pipeline.area`, :class:`CatalogSpec` in :mod:`pipeline.catalog_spec`,
:class:`QualitySpec` and its presets in :mod:`pipeline.sensors`, the engine's specs in
:mod:`pipeline.engine_spec`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import pydantic
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pyproj import CRS

from pipeline.area import AreaOfInterest, TimeWindow
from pipeline.bands import COMMON_NAMES, DEFAULT_BANDS
from pipeline.catalog_spec import CatalogSpec
from pipeline.engine_spec import ClusterSpec, ModelSpec, PromptSpec, TilingSpec
from pipeline.errors import JobSpecError, StorageError
from pipeline.sensors import QualitySpec
from pipeline.storage import Location

__all__ = [
    "AreaOfInterest",
    "CatalogSpec",
    "GridSpec",
    "JobSpec",
    "DEFAULT_PUBLISHERS",
    "LimitsSpec",
    "QualitySpec",
    "TimeWindow",
    "load_job",
]

_FROZEN = ConfigDict(frozen=True, extra="forbid")


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


#: The publishers of a job that names none (see :mod:`pipeline.publish.registry`).
DEFAULT_PUBLISHERS = ("cog", "statistics", "quicklook", "stac")


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
        The cloud/shadow/nodata quality band and its invalid values or bits (a preset name of
        :mod:`pipeline.sensors`, or fields).
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
    publishers
        The outputs to publish, in order (see :mod:`pipeline.publish.registry`): registered
        publisher names; default :data:`DEFAULT_PUBLISHERS`.
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
    publishers: tuple[str, ...] = DEFAULT_PUBLISHERS

    @field_validator("collections", "bands", "publishers", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("publishers")
    @classmethod
    def _publishers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # Imported here: the publishers import GDAL and friends, and import this module.
        from pipeline.errors import PublishError
        from pipeline.publish.registry import resolve_publishers

        try:
            resolve_publishers(value)
        except PublishError as exc:
            raise ValueError(str(exc)) from None
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
