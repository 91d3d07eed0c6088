"""Bring your own imagery: STAC items for GeoTIFF/COG files on disk, one item per file.

After a disaster the images responders have are plain GeoTIFFs or COGs, often one CRS per date.
:func:`catalog_rasters` turns folders, glob patterns or files into a STAC ItemCollection that the
job's ``catalog`` reads like any other: rio-stac writes each item's footprint (reprojected to
WGS84), ``proj:*`` fields (EPSG code, transform, shape, bbox) and ``eo:bands``; this module adds
what rio-stac cannot know: the acquisition time (given, read from a file-name pattern, or from the
TIFF ``DATETIME`` tag), the bands' common names (from the file's colour interpretation, or given)
and the collection id. A multi-band file stays one asset whose ``eo:bands`` list its bands; the
cube reads each band through GDAL's ``vrt://`` connection string
(see :func:`pipeline.bands.band_asset`), so no
VRT files are written.
"""

from __future__ import annotations

import glob
import json
import math
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pystac
import rasterio
import rasterio.errors
from rasterio.enums import ColorInterp
from rio_stac import create_stac_item

from pipeline.bands import COMMON_NAMES
from pipeline.engine_spec import TilingSpec
from pipeline.errors import CatalogError
from pipeline.storage import replace_atomically

__all__ = [
    "DEFAULT_COLLECTION",
    "IMAGE_ASSET",
    "RASTER_SUFFIXES",
    "catalog_rasters",
    "datetime_from_name",
    "find_rasters",
    "job_defaults",
    "overlap_for_resolution",
    "own_imagery_options",
    "write_item_collection",
]

#: Collection id given to the items when the user names none.
DEFAULT_COLLECTION = "own-imagery"
#: Key of the one asset of each item.
IMAGE_ASSET = "image"
#: Item property that marks items made here (their defaults are found by :func:`job_defaults`).
OWN_IMAGERY_PROPERTY = "seg2change:own_imagery"
_METRES_PER_DEGREE = 111_320.0
#: Ground the tiles of a very-high-resolution job overlap by, in metres: a large building with its
#: yard, so that a building cut by one tile's edge lies whole, with context, inside its neighbour,
#: whose prediction the blend takes there (:func:`overlap_for_resolution`).
OVERLAP_GROUND_M = 40.0
#: File suffixes taken from a folder (a file given by name may have any suffix GDAL reads).
RASTER_SUFFIXES = (".tif", ".tiff", ".TIF", ".TIFF")

_COLOUR_NAMES: Mapping[ColorInterp, str] = {
    ColorInterp.red: "red",
    ColorInterp.green: "green",
    ColorInterp.blue: "blue",
}
_DATETIME_TAGS = ("TIFFTAG_DATETIME", "ACQUISITIONDATETIME", "DATETIME", "ACQUISITION_DATE")
_STRPTIME_FIELDS = {
    "%Y": r"\d{4}",
    "%m": r"\d{2}",
    "%d": r"\d{2}",
    "%H": r"\d{2}",
    "%M": r"\d{2}",
    "%S": r"\d{2}",
    "%j": r"\d{3}",
    "%y": r"\d{2}",
    "%%": "%",
}


def find_rasters(sources: Sequence[str | Path]) -> list[Path]:
    """Expand folders (searched recursively), glob patterns and files into raster paths.

    Parameters
    ----------
    sources
        Each a folder (its ``*.tif``/``*.tiff`` files, at any depth), a glob pattern
        (``post/*.tif``, ``**`` allowed) or a file.

    Returns
    -------
    list of Path
        Absolute paths, each once, in the order found (sorted within a source).

    Raises
    ------
    CatalogError
        A source matches no raster file.
    """
    found: dict[Path, None] = {}
    for source in sources:
        path = Path(source).expanduser()
        if path.is_dir():
            matches = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in RASTER_SUFFIXES)
        elif path.is_file():
            matches = [path]
        elif glob.has_magic(str(source)):
            matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        else:
            raise CatalogError(
                f"{source} is neither a folder, a file nor a glob pattern that matches files; check the path"
            )
        if not matches:
            raise CatalogError(
                f"{source} holds no GeoTIFF ({', '.join(sorted(set(s.lower() for s in RASTER_SUFFIXES)))}); "
                "give the folder of the images, a glob such as 'post/*.tif', or the files"
            )
        for match in matches:
            found.setdefault(match.resolve(), None)
    return list(found)


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    parts = re.split(r"(%.)", pattern)
    regex = []
    for part in parts:
        if re.fullmatch(r"%.", part):
            if part not in _STRPTIME_FIELDS:
                raise CatalogError(
                    f"file-name date pattern {pattern!r} uses {part}, which is not supported; use "
                    f"{', '.join(k for k in _STRPTIME_FIELDS if k != '%%')} and literal text"
                )
            regex.append(_STRPTIME_FIELDS[part])
        else:
            regex.append(re.escape(part))
    return re.compile("".join(regex))


def datetime_from_name(name: str, pattern: str) -> datetime | None:
    """Read an acquisition time from a file name with a ``strptime`` pattern found anywhere in it.

    Parameters
    ----------
    name
        The file name (or any text).
    pattern
        A ``strptime`` format such as ``%Y%m%d`` or ``post_%Y-%m-%d``; it is searched for in ``name``.

    Returns
    -------
    datetime or None
        The time (UTC), or ``None`` when the pattern does not occur in ``name``.
    """
    regex = _pattern_regex(pattern)
    for match in regex.finditer(name):
        try:
            moment = datetime.strptime(match.group(0), pattern)
        except ValueError:
            continue
        return moment.replace(tzinfo=UTC)
    return None


def _datetime_from_tags(tags: Mapping[str, str]) -> datetime | None:
    for key in _DATETIME_TAGS:
        raw = tags.get(key)
        if not raw:
            continue
        text = raw.strip()
        for fmt in ("%Y:%m:%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d", "%Y%m%d"):
            try:
                return datetime.strptime(text.removesuffix("Z"), fmt).replace(tzinfo=UTC)
            except ValueError:
                continue
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            continue
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return None


def _acquired(
    path: Path, tags: Mapping[str, str], given: datetime | None, name_pattern: str | None
) -> datetime:
    if given is not None:
        return given if given.tzinfo else given.replace(tzinfo=UTC)
    if name_pattern is not None:
        moment = datetime_from_name(path.name, name_pattern)
        if moment is None:
            raise CatalogError(
                f"the file name {path.name} does not contain the date pattern {name_pattern!r}; "
                "fix the pattern, or give the date with --datetime"
            )
        return moment
    moment = _datetime_from_tags(tags)
    if moment is None:
        raise CatalogError(
            f"{path} carries no acquisition time (no {' / '.join(_DATETIME_TAGS[:2])} tag); give it with "
            "--datetime (one for all sources or one per source), or read it from the file name with "
            "--name-date (catalog.name_date in a job), e.g. '%Y%m%d'"
        )
    return moment


def _common_names(
    path: Path, count: int, colours: Sequence[ColorInterp], given: Sequence[str] | None
) -> list[str | None]:
    if given:
        if len(given) != count:
            raise CatalogError(
                f"{path} has {count} band(s) but {len(given)} band name(s) were given ({', '.join(given)}); "
                "give one common name per band, in the file's order"
            )
        return list(given)
    names: list[str | None] = [_COLOUR_NAMES.get(c) for c in colours]
    if len(set(n for n in names if n)) != len([n for n in names if n]):
        return [None] * count
    return names


def _item_id(path: Path, taken: Mapping[str, Path]) -> str:
    item_id = path.stem
    if item_id in taken:
        item_id = f"{path.parent.name}_{path.stem}"
    if item_id in taken:
        raise CatalogError(
            f"{path} and {taken[item_id]} would both be item {item_id!r}; rename one of them or "
            "catalog them into separate collections"
        )
    return item_id


def catalog_rasters(
    sources: Sequence[str | Path],
    *,
    collection: str = DEFAULT_COLLECTION,
    datetimes: Sequence[datetime] = (),
    name_pattern: str | None = None,
    bands: Sequence[str] | None = None,
    properties: Mapping[str, Any] | None = None,
) -> pystac.ItemCollection:
    """Describe GeoTIFF/COG files as STAC items, one per file, each with its own CRS and footprint.

    Parameters
    ----------
    sources
        Folders, glob patterns or files (see :func:`find_rasters`).
    collection
        Collection id the items carry (the job's ``collections``).
    datetimes
        Acquisition times: none (read from ``name_pattern`` or the TIFF tags), one for every file, or
        one per source, in order.
    name_pattern
        ``strptime`` pattern of the date in the file names, e.g. ``%Y%m%d``.
    bands
        Common names of the bands in file order (e.g. ``red,green,blue``); default: from each file's
        colour interpretation.
    properties
        Extra properties for every item (``platform``, ``gsd``...).

    Returns
    -------
    pystac.ItemCollection
        The items, with absolute asset hrefs.

    Raises
    ------
    CatalogError
        A source holds no raster, a file cannot be read or has no CRS, a time cannot be found, or
        the band names do not fit.
    """
    if not sources:
        raise CatalogError("no folder, pattern or file given; name where the images are")
    if len(datetimes) not in (0, 1, len(sources)):
        raise CatalogError(
            f"{len(datetimes)} datetimes for {len(sources)} sources; give one for all sources or one per source"
        )
    unknown = [b for b in bands or () if b not in COMMON_NAMES]
    if unknown:
        raise CatalogError(
            f"unknown band name(s) {', '.join(unknown)}; use common names: {', '.join(COMMON_NAMES)}"
        )
    items: list[pystac.Item] = []
    ids: dict[str, Path] = {}
    for index, source in enumerate(sources):
        given = datetimes[0] if len(datetimes) == 1 else (datetimes[index] if datetimes else None)
        for path in find_rasters([source]):
            item = _describe(path, given, name_pattern, bands, collection, properties, ids)
            ids[item.id] = path
            items.append(item)
    return pystac.ItemCollection(items)


def _describe(
    path: Path,
    given: datetime | None,
    name_pattern: str | None,
    bands: Sequence[str] | None,
    collection: str,
    properties: Mapping[str, Any] | None,
    taken: Mapping[str, Path],
) -> pystac.Item:
    try:
        with rasterio.open(path) as ds:
            if ds.crs is None:
                raise CatalogError(
                    f"{path} has no CRS, so it cannot be placed on a map; georeference it first "
                    "(e.g. gdal_translate -a_srs EPSG:n -a_ullr ...)"
                )
            tags = {**ds.tags(), **ds.tags(ns="IMAGERY")}
            names = _common_names(path, ds.count, ds.colorinterp, bands)
            with warnings.catch_warnings():
                # rio-stac parses the DATETIME tag itself and warns when it is TIFF's 'YYYY:MM:DD';
                # the time given here is read by _acquired, which knows that form.
                warnings.filterwarnings("ignore", message="Could not get parse date")
                item: pystac.Item = create_stac_item(
                    ds,
                    input_datetime=_acquired(path, tags, given, name_pattern),
                    collection=collection,
                    properties=dict(properties or {}),
                    id=_item_id(path, taken),
                    asset_name=IMAGE_ASSET,
                    asset_roles=["data"],
                    asset_href=str(path),
                    with_proj=True,
                    with_eo=True,
                    geom_densify_pts=21,
                )
            gsd = abs(ds.res[0]) if ds.crs.is_projected else None
    except rasterio.errors.RasterioIOError as exc:
        raise CatalogError(f"{path} cannot be read as a raster ({exc}); give GeoTIFF or COG files") from None
    asset = item.assets[IMAGE_ASSET]
    for band, name in zip(asset.extra_fields.get("eo:bands", []), names, strict=False):
        if name:
            band["common_name"] = name
    if gsd is not None:
        item.properties.setdefault("gsd", gsd)
    item.properties[OWN_IMAGERY_PROPERTY] = True
    return item


def _pixel_metres(item: Mapping[str, Any]) -> float | None:
    props = item.get("properties", {})
    transform = props.get("proj:transform")
    if not transform:
        return None
    step = min(abs(float(transform[0])), abs(float(transform[4])))
    if props.get("proj:epsg") in (4326, 4269, 4258):  # degrees: metres along a meridian
        return step * _METRES_PER_DEGREE
    return step


def job_defaults(items: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Job fields that fit items made by :func:`catalog_rasters`; empty for any other catalog.

    Own imagery has no quality band and no cloud cover, its files lie outside the catalog's
    folder, and its resolution is its own: the defaults are ``quality: none``, ``cloud_limit: 100``,
    ``asset_roots`` (the files' folders), ``bands`` (the common names every item has, in the first
    item's order) and ``grid.resolution`` (the finest pixel of the items, in metres, as the AOI's
    UTM grid wants it).

    Parameters
    ----------
    items
        STAC item dictionaries.
    """
    items = list(items)
    if not items or not all(i.get("properties", {}).get(OWN_IMAGERY_PROPERTY) for i in items):
        return {}
    folders: set[str] = set()
    common: list[str] | None = None
    for item in items:
        asset = item.get("assets", {}).get(IMAGE_ASSET, {})
        href = str(asset.get("href", ""))
        if href and "://" not in href:
            folders.add(str(Path(href).parent))
        names = [str(b.get("common_name")) for b in asset.get("eo:bands", []) if b.get("common_name")]
        common = names if common is None else [n for n in common if n in names]
    out: dict[str, Any] = {"quality": "none", "cloud_limit": 100, "asset_roots": sorted(folders)}
    if common:
        out["bands"] = common
    steps = [m for m in (_pixel_metres(i) for i in items) if m]
    if steps:
        out["grid"] = {"resolution": round(min(steps), 3)}
    return out


def overlap_for_resolution(resolution: float, tile_size: int | None = None) -> int:
    """Tile overlap in pixels that covers :data:`OVERLAP_GROUND_M` of ground at ``resolution`` metres.

    Never less than the engine's default overlap (64 px, what Sentinel-2 and Landsat jobs use: at
    10 m it is 640 m of ground), and at most half of ``tile_size`` when it is given (the most the
    engine allows). CACH's 504 px tile at 0.5 m gets 80 px (8 % more tiles than with 64 px), at
    0.3 m 134 px (41 % more).

    Parameters
    ----------
    resolution
        Pixel side of the grid in metres (positive).
    tile_size
        The model tile side in pixels, when known.
    """
    default = int(TilingSpec.model_fields["overlap"].default)
    pixels = max(default, math.ceil(OVERLAP_GROUND_M / resolution))
    return min(pixels, tile_size // 2) if tile_size else pixels


def own_imagery_options(
    catalog: str, options: Mapping[str, Any] | None, *, tile_size: int | None = None
) -> dict[str, Any]:
    """A job's further fields with :func:`job_defaults` of a local catalog of own imagery beneath them.

    The given ``options`` win; a ``grid`` mapping is merged key by key. A STAC API URL, or a local
    catalog of other items, brings no defaults. Then, when the grid's resolution is known (given, or
    the own imagery's) and ``tiling.overlap`` is not given, ``tiling.overlap`` becomes
    :func:`overlap_for_resolution` of that resolution, at most half of the tile when it is known
    (``tile_size``, else ``tiling.tile_size``): 134 to 67 px on 0.3 to 0.6 m imagery, 64 px at 10 m.
    """
    out = dict(options or {})
    if not catalog.startswith(("http://", "https://")) and Path(catalog).expanduser().is_file():
        from pipeline.discover import open_catalog_items

        defaults = job_defaults(open_catalog_items(str(Path(catalog).expanduser())))
        for key, value in defaults.items():
            if key == "grid" and isinstance(out.get("grid"), Mapping):
                out["grid"] = {**value, **out["grid"]}
            else:
                out.setdefault(key, value)
    return _with_scaled_overlap(out, tile_size)


def _with_scaled_overlap(options: dict[str, Any], tile_size: int | None) -> dict[str, Any]:
    """``options`` with ``tiling.overlap`` for the grid's resolution, unless given or unknowable.

    A resolution or tile that is not a positive number is left for the job's validation to refuse.
    """
    grid, tiling = options.get("grid"), options.get("tiling")
    resolution = _positive(grid.get("resolution")) if isinstance(grid, Mapping) else None
    if resolution is None or (tiling is not None and not isinstance(tiling, Mapping)):
        return options
    tiling = dict(tiling or {})
    if "overlap" in tiling:
        return options
    tile = _positive(tile_size if tile_size is not None else tiling.get("tile_size"))
    overlap = overlap_for_resolution(resolution, int(tile) if tile is not None else None)
    if overlap == TilingSpec.model_fields["overlap"].default:
        return options  # coarse imagery: the engine's default, left implicit
    return {**options, "tiling": {**tiling, "overlap": overlap}}


def _positive(value: object) -> float | None:
    """``value`` when it is a positive finite number, else None."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
        return float(value)
    return None


def write_item_collection(items: Iterable[pystac.Item], out: Path, *, overwrite: bool = False) -> Path:
    """Write items as one ItemCollection JSON file (a ``.ndjson`` suffix writes one item a line).

    Raises
    ------
    CatalogError
        ``out`` exists and ``overwrite`` is false, or its folder does not exist.
    """
    if out.exists() and not overwrite:
        raise CatalogError(f"{out} exists; give another --out, or --overwrite to replace it")
    if not out.parent.is_dir():
        raise CatalogError(f"the folder of {out} does not exist; create it or give another --out")
    docs = [item.to_dict(transform_hrefs=False) for item in items]
    if out.suffix == ".ndjson":
        text = "".join(json.dumps(doc) + "\n" for doc in docs)
    else:
        text = json.dumps({"type": "FeatureCollection", "features": docs}, indent=1)
    with replace_atomically(out) as tmp:
        tmp.write_text(text)
    return out
