"""STAC metadata of a synthetic scene: Items, the Collection and a static catalog.

The JSON is written by hand rather than through pystac because pystac 1.15 drops ``proj:epsg``
from the Items it loads and writes (projection v2 keeps only ``proj:code``), while stackstac
0.5.1 reads only ``proj:epsg``; the Items here carry both. ``eo:bands`` and ``raster:bands`` sit
on each asset (one band per asset), where stackstac looks for common names, scale, offset and
nodata. pystac still reads the static catalog (the tests check it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pyproj import Transformer

from pipeline.synthetic.atmosphere import QA
from pipeline.synthetic.landscape import ChangeType, LandCover
from pipeline.synthetic.spec import Acquisition, Epoch, SceneSpec
from pipeline.synthetic.spectra import BANDS, NODATA, OFFSET, SCALE

__all__ = [
    "COG_MEDIA_TYPE",
    "EXTENSIONS",
    "PLATFORM",
    "QA_ASSET",
    "build_collection",
    "build_item",
    "footprint",
    "write_catalog",
    "write_collection",
    "write_items_ndjson",
]

STAC_VERSION = "1.1.0"
COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"
PLATFORM = "synthetic-s2"
QA_ASSET = "qa"
#: Truth assets of the Collection: key -> (file name under ``truth/``, title).
TRUTH_ASSETS: dict[str, tuple[str, str]] = {
    "class_before": ("class_before.tif", "Land cover, before epoch"),
    "class_after": ("class_after.tif", "Land cover, after epoch"),
    "change": ("change.tif", "Change type between the epochs"),
}
EXTENSIONS = [
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "https://stac-extensions.github.io/projection/v2.0.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "https://stac-extensions.github.io/classification/v2.0.0/schema.json",
]


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def footprint(spec: SceneSpec, points_per_edge: int = 8) -> tuple[dict[str, Any], list[float]]:
    """GeoJSON polygon and bbox of the scene in EPSG:4326 (lon, lat).

    Parameters
    ----------
    spec
        The scene.
    points_per_edge
        Vertices per edge of the polygon (UTM edges are slightly curved in lon/lat).

    Returns
    -------
    geometry, bbox
        A GeoJSON Polygon (counter-clockwise) and ``[west, south, east, north]``.
    """
    minx, miny, maxx, maxy = spec.bounds_utm
    n = points_per_edge
    ring_utm: list[tuple[float, float]] = []
    corners = [(minx, miny), (maxx, miny), (maxx, maxy), (minx, maxy)]
    for (x0, y0), (x1, y1) in zip(corners, corners[1:] + corners[:1], strict=True):
        ring_utm += [(x0 + (x1 - x0) * i / n, y0 + (y1 - y0) * i / n) for i in range(n)]
    transformer = Transformer.from_crs(spec.epsg, 4326, always_xy=True)
    lons, lats = transformer.transform([p[0] for p in ring_utm], [p[1] for p in ring_utm])
    ring = [[round(float(x), 9), round(float(y), 9)] for x, y in zip(lons, lats, strict=True)]
    ring.append(ring[0])
    bbox = [
        min(p[0] for p in ring),
        min(p[1] for p in ring),
        max(p[0] for p in ring),
        max(p[1] for p in ring),
    ]
    return {"type": "Polygon", "coordinates": [ring]}, bbox


def _raster_band(data_type: str, nodata: int, resolution: float, scaled: bool) -> dict[str, Any]:
    band: dict[str, Any] = {"data_type": data_type, "nodata": nodata, "spatial_resolution": resolution}
    if scaled:
        band.update({"scale": SCALE, "offset": OFFSET})
    return band


def _asset_definitions(spec: SceneSpec) -> dict[str, dict[str, Any]]:
    """Asset fields without ``href``: shared by the Items and the Collection's ``item_assets``."""
    assets: dict[str, dict[str, Any]] = {}
    for band in BANDS:
        assets[band.name] = {
            "type": COG_MEDIA_TYPE,
            "title": f"{band.name} ({band.s2_name}) surface reflectance",
            "roles": ["data"],
            "gsd": spec.resolution,
            "eo:bands": [
                {
                    "name": band.s2_name,
                    "common_name": band.name,
                    "center_wavelength": band.center_wavelength,
                    "full_width_half_max": band.full_width_half_max,
                }
            ],
            "raster:bands": [_raster_band("uint16", NODATA, spec.resolution, scaled=True)],
        }
    assets[QA_ASSET] = {
        "type": COG_MEDIA_TYPE,
        "title": "Pixel quality: 0 clear, 1 cloud, 2 cloud shadow, 255 nodata",
        "roles": ["data"],
        "gsd": spec.resolution,
        "raster:bands": [_raster_band("uint8", int(QA.NODATA), spec.resolution, scaled=False)],
        "classification:classes": [
            {"value": int(code), "name": code.name.lower(), **({"nodata": True} if code is QA.NODATA else {})}
            for code in QA
        ],
    }
    return assets


def build_item(
    spec: SceneSpec,
    acquisition: Acquisition,
    hrefs: dict[str, str],
    cloud_cover: float,
    shadow_cover: float,
) -> dict[str, Any]:
    """STAC Item of one acquisition.

    Parameters
    ----------
    spec
        The scene.
    acquisition
        The acquisition.
    hrefs
        Asset key (band common names and ``"qa"``) -> absolute path of its COG.
    cloud_cover, shadow_cover
        Percent of valid pixels flagged cloud / shadow in the ``qa`` band.

    Returns
    -------
    dict
        The Item as JSON-ready dict, with ``proj:epsg`` and ``proj:code``.
    """
    geometry, bbox = footprint(spec)
    t = spec.transform
    assets = _asset_definitions(spec)
    missing = sorted(set(assets) - set(hrefs))
    if missing:
        raise KeyError(f"no href for assets {missing}")
    for key, asset in assets.items():
        assets[key] = {"href": hrefs[key], **asset}
    return {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": EXTENSIONS,
        "id": acquisition.item_id,
        "collection": spec.collection_id,
        "geometry": geometry,
        "bbox": bbox,
        "properties": {
            "datetime": _iso(acquisition.datetime),
            "platform": PLATFORM,
            "constellation": "synthetic",
            "instruments": ["msi"],
            "gsd": spec.resolution,
            "eo:cloud_cover": round(cloud_cover, 4),
            "proj:epsg": spec.epsg,
            "proj:code": spec.crs,
            "proj:shape": [spec.size, spec.size],
            "proj:transform": [t.a, t.b, t.c, t.d, t.e, t.f],
            "proj:bbox": list(spec.bounds_utm),
            "synthetic:epoch": acquisition.epoch.value,
            "synthetic:acquisition": acquisition.index,
            "synthetic:mostly_clear": acquisition.mostly_clear,
            "synthetic:shadow_cover": round(shadow_cover, 4),
            "synthetic:seed": spec.seed,
        },
        "links": [],
        "assets": assets,
    }


def build_collection(
    spec: SceneSpec, items: Sequence[dict[str, Any]], truth_hrefs: dict[str, str]
) -> dict[str, Any]:
    """STAC Collection of a scene, its extent taken from the Items.

    Parameters
    ----------
    spec
        The scene.
    items
        Items from :func:`build_item`.
    truth_hrefs
        Key of :data:`TRUTH_ASSETS` -> absolute path; added as Collection assets.

    Returns
    -------
    dict
        The Collection as JSON-ready dict (no links).
    """
    west = min(i["bbox"][0] for i in items)
    south = min(i["bbox"][1] for i in items)
    east = max(i["bbox"][2] for i in items)
    north = max(i["bbox"][3] for i in items)
    times = sorted(i["properties"]["datetime"] for i in items)
    classes = [{"value": int(c), "name": c.name.lower(), "title": c.label} for c in LandCover.classes()]
    changes = [{"value": int(c), "name": c.name.lower(), "title": c.label} for c in ChangeType]
    assets: dict[str, dict[str, Any]] = {}
    for key, (_, title) in TRUTH_ASSETS.items():
        is_change = key == "change"
        assets[key] = {
            "href": truth_hrefs[key],
            "type": COG_MEDIA_TYPE,
            "title": title,
            "roles": ["data", "ground-truth"],
            "raster:bands": [_raster_band("uint8", 255 if is_change else 0, spec.resolution, scaled=False)],
            "classification:classes": changes if is_change else classes,
        }
    windows = {e.value: [_iso(t) for t in spec.epoch_window(e)] for e in Epoch}
    return {
        "type": "Collection",
        "stac_version": STAC_VERSION,
        "stac_extensions": EXTENSIONS,
        "id": spec.collection_id,
        "title": f"Synthetic Sentinel-2-like scene (seed {spec.seed})",
        "description": (
            "Generated multispectral scenes with known land cover and change between a before and an "
            "after epoch (pipeline.synthetic). Surface reflectance = DN * 0.0001; qa: 0 clear, "
            f"1 cloud, 2 shadow, 255 nodata. Epochs: {windows}."
        ),
        "license": "CC0-1.0",
        "extent": {
            "spatial": {"bbox": [[west, south, east, north]]},
            "temporal": {"interval": [[times[0], times[-1]]]},
        },
        "summaries": {
            "platform": [PLATFORM],
            "constellation": ["synthetic"],
            "gsd": [spec.resolution],
            "proj:code": [spec.crs],
            "eo:bands": [a["eo:bands"][0] for a in _asset_definitions(spec).values() if "eo:bands" in a],
        },
        "item_assets": _asset_definitions(spec),
        "assets": assets,
        "links": [],
    }


def _dump(data: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def write_collection(collection: dict[str, Any], path: Path) -> None:
    """Write a Collection as indented JSON."""
    _dump(collection, path)


def write_items_ndjson(items: Sequence[dict[str, Any]], path: Path) -> None:
    """Write Items one per line (the input of ``rustac serve`` and of bulk loaders)."""
    tmp = path.with_name(path.name + ".part")
    with tmp.open("w") as f:
        for item in items:
            f.write(json.dumps(item, separators=(",", ":")) + "\n")
    os.replace(tmp, path)


def write_catalog(collection: dict[str, Any], items: Sequence[dict[str, Any]], catalog_dir: Path) -> Path:
    """Write a self-contained static catalog: ``collection.json`` and ``<id>/<id>.json``.

    Links are relative (the folder can be moved); asset hrefs stay as given (absolute).

    Parameters
    ----------
    collection
        From :func:`build_collection`.
    items
        From :func:`build_item`.
    catalog_dir
        Folder to write into (created).

    Returns
    -------
    pathlib.Path
        Path of the catalog's ``collection.json`` (open it with ``pystac.read_file``).
    """
    catalog_dir.mkdir(parents=True, exist_ok=True)
    root = dict(collection)
    root["links"] = [
        {"rel": "root", "href": "./collection.json", "type": "application/json"},
        *(
            {"rel": "item", "href": f"./{item['id']}/{item['id']}.json", "type": "application/geo+json"}
            for item in items
        ),
    ]
    for item in items:
        folder = catalog_dir / item["id"]
        folder.mkdir(exist_ok=True)
        linked = dict(item)
        linked["links"] = [
            {"rel": rel, "href": "../collection.json", "type": "application/json"}
            for rel in ("root", "parent", "collection")
        ]
        _dump(linked, folder / f"{item['id']}.json")
    path = catalog_dir / "collection.json"
    _dump(root, path)
    return path
