"""STAC description of a run's outputs, and its validation against the STAC JSON schemas.

Each run is described by one Collection and one Item, written as ``<out>/stac/collection.json``
and ``<out>/stac/item.json`` with relative links and asset hrefs (a self-contained catalog: the
output folder can be moved or uploaded as a whole; in an object store, ``s3://bucket/prefix/stac``,
the same relative hrefs resolve inside the bucket). The Item describes the change cube (Zarr,
``application/vnd+zarr``), the COGs, the statistics files and the quick-look, with

- the *projection* extension (v2.0.0): ``proj:code`` (or ``proj:wkt2`` when the CRS has no EPSG
  code), ``proj:shape``, ``proj:transform``, ``proj:bbox`` of the grid;
- the *file* extension (v2.1.0): ``file:size`` and ``file:checksum`` (SHA-256 multihash, hex
  ``1220...``) of every file asset (not of the Zarr, which is a folder of many objects);
- the *processing* extension (v1.2.0): ``processing:lineage``, ``processing:software`` (versions of
  seg2change, torch, dask, xarray, zarr, rasterio, stackstac, rio-cogeo and GDAL) and
  ``processing:version``;
- ``derived_from`` links to every input item at its own address: the href discovery recorded (the
  item's ``canonical`` link, else its ``self`` link, as the catalog gave them), else
  ``<api>/collections/<collection>/items/<id>`` for a STAC API. A loopback address (``127.0.0.1``,
  ``localhost``, ``::1``: an embedded server, such as the demo's, that stops after the run) is never
  published; an item with no lasting address of its own (a loopback-only one, or a line of a local
  ``.ndjson`` file without links) is named in ``seg2change:unlinked_inputs`` instead.

The documents are built as plain dictionaries rather than with pystac's object model because
they must be written to temporary names and renamed into place (pystac's ``save`` writes in place
and rewrites hrefs depending on the catalog type), and because the processing extension has no
pystac class; pystac reads them back in the tests.

The documents are validated by :mod:`pipeline.publish.stac_validation`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import ipaddress
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import rasterio
import shapely
import shapely.geometry
from pyproj import Transformer

from pipeline import __version__
from pipeline.change_cube import ATTR_MODELS, ChangeCubeInfo
from pipeline.layout import STAC_COLLECTION, STAC_ITEM
from pipeline.storage import Location, LocationLike, relative_href, replace_atomically

__all__ = [
    "FILE_EXTENSION",
    "PROCESSING_EXTENSION",
    "PROJECTION_EXTENSION",
    "STAC_VERSION",
    "ZARR_MEDIA_TYPE",
    "AssetFile",
    "build_collection",
    "build_item",
    "derived_from",
    "is_loopback",
    "unlinked_inputs",
    "multihash_sha256",
    "software_versions",
    "write_stac",
]

log = logging.getLogger(__name__)

STAC_VERSION = "1.1.0"
PROJECTION_EXTENSION = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
FILE_EXTENSION = "https://stac-extensions.github.io/file/v2.1.0/schema.json"
PROCESSING_EXTENSION = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
ZARR_MEDIA_TYPE = "application/vnd+zarr"
#: Packages whose versions ``processing:software`` records (distribution names).
SOFTWARE = ("torch", "dask", "xarray", "zarr", "rasterio", "stackstac", "rio-cogeo")


# --------------------------------------------------------------------------- building


@dataclass(frozen=True)
class AssetFile:
    """A file (or Zarr folder) to describe as an asset of the Item.

    Attributes
    ----------
    key
        Asset key.
    path
        Where it is published (a local path or an fsspec URL); its href is made relative to the
        Item's folder.
    media_type
        Its media type.
    roles
        STAC roles (``data``, ``overview``, ``metadata``...).
    title
        Short title.
    fields
        More asset fields (``nodata``, ``data_type``...).
    source
        The local file whose bytes are published at ``path`` (when ``path`` is remote): its size
        and checksum go into the Item. Default: ``path`` itself, when it is a local file.
    """

    key: str
    path: LocationLike
    media_type: str
    roles: tuple[str, ...]
    title: str
    fields: Mapping[str, Any] = field(default_factory=dict)
    source: Path | None = None

    def local_file(self) -> Path | None:
        """The local file that holds the asset's bytes, or None (a Zarr folder, a remote object)."""
        if self.source is not None:
            return self.source
        location = Location.parse(self.path)
        return location.local_path if location.is_local and location.is_file() else None


def multihash_sha256(path: LocationLike) -> str:
    """SHA-256 of a file (local or an fsspec URL) as a hex multihash (``1220`` + the digest), as
    ``file:checksum`` wants."""
    digest = hashlib.sha256()
    with Location.parse(path).open_read() as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return "1220" + digest.hexdigest()


def software_versions() -> dict[str, str]:
    """Versions of seg2change and the libraries that shaped the outputs (``not installed`` if absent)."""
    versions = {"seg2change": __version__}
    for name in SOFTWARE:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    versions["GDAL"] = str(rasterio.__gdal_version__)
    return versions


def is_loopback(href: str) -> bool:
    """Whether ``href`` is a URL on this machine's loopback interface (``127.0.0.0/8``, ``::1``,
    ``localhost``), which no one else can reach and which closes with its server."""
    host = urlsplit(href).hostname if "://" in href else None
    if not host:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _item_href(item: Mapping[str, Any], catalog: str) -> str | None:
    """An input item's lasting address, or None (see the module's notes)."""
    href = item.get("href")
    if not href and catalog.startswith(("http://", "https://")) and item.get("collection"):
        href = f"{catalog.rstrip('/')}/collections/{item['collection']}/items/{item['id']}"
    if not href or is_loopback(str(href)):
        return None
    return str(href)


def derived_from(provenance: Mapping[str, Any]) -> list[dict[str, str]]:
    """``derived_from`` links to the input items of a discovery record (see ``Discovery.provenance``),
    each at its own lasting address; items without one are left out (see :func:`unlinked_inputs`)."""
    catalog = str(provenance.get("catalog", ""))
    links: list[dict[str, str]] = []
    seen: set[str] = set()
    for epoch, items in (provenance.get("items") or {}).items():
        for item in items:
            href = _item_href(item, catalog)
            if href is None or href in seen:
                continue
            seen.add(href)
            links.append(
                {
                    "rel": "derived_from",
                    "href": href,
                    "type": "application/geo+json",
                    "title": f"{epoch}: {item['id']}",
                }
            )
    return links


def unlinked_inputs(provenance: Mapping[str, Any]) -> list[str]:
    """``"<epoch>: <id>"`` of the input items that have no lasting address to link."""
    catalog = str(provenance.get("catalog", ""))
    unlinked = [
        f"{epoch}: {item['id']}"
        for epoch, items in (provenance.get("items") or {}).items()
        for item in items
        if _item_href(item, catalog) is None
    ]
    if unlinked:
        log.warning(
            "%d input item(s) have no lasting address (a loopback STAC API, or a local catalog file "
            "without item links); the STAC names them in seg2change:unlinked_inputs instead of linking them",
            len(unlinked),
        )
    return unlinked


def _iso(value: str | datetime) -> str:
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.isoformat().replace("+00:00", "Z")


def _footprint(info: ChangeCubeInfo) -> tuple[dict[str, Any], list[float]]:
    """The grid's outline in WGS84 (edges densified so the reprojected outline stays faithful)."""
    box = shapely.box(*info.bounds)
    xmin, ymin, xmax, ymax = info.bounds
    dense = shapely.segmentize(box, max_segment_length=max(xmax - xmin, ymax - ymin) / 4)
    to_wgs84 = Transformer.from_crs(info.crs, "EPSG:4326", always_xy=True)
    outline = shapely.transform(dense, lambda xy: np.column_stack(to_wgs84.transform(xy[:, 0], xy[:, 1])))
    # Nanodegree precision (0.1 mm) keeps the JSON short; tuples become lists, as JSON reads them.
    geometry = json.loads(json.dumps(shapely.geometry.mapping(shapely.set_precision(outline, 1e-9))))
    west, south, east, north = outline.bounds
    # Rounded outwards, so the bbox contains the grid's outline.
    bbox = [math.floor(west * 1e9) / 1e9, math.floor(south * 1e9) / 1e9]
    return geometry, [*bbox, math.ceil(east * 1e9) / 1e9, math.ceil(north * 1e9) / 1e9]


def _projection(info: ChangeCubeInfo) -> dict[str, Any]:
    """The projection extension's fields of the grid."""
    epsg = info.crs.to_epsg()
    projection: dict[str, Any] = (
        {"proj:code": f"EPSG:{epsg}"} if epsg else {"proj:code": None, "proj:wkt2": info.crs.to_wkt()}
    )
    projection.update(
        {
            "proj:shape": [info.height, info.width],
            "proj:transform": [float(v) for v in list(info.transform)[:6]],
            "proj:bbox": [float(v) for v in info.bounds],
        }
    )
    return projection


def _asset_doc(asset: AssetFile, item_dir: LocationLike) -> dict[str, Any]:
    """An asset's JSON, with ``file:size`` and ``file:checksum`` when it is a file."""
    doc: dict[str, Any] = {
        "href": relative_href(asset.path, item_dir),
        "type": asset.media_type,
        "title": asset.title,
        "roles": list(asset.roles),
        **asset.fields,
    }
    local = asset.local_file()
    if local is not None:
        doc["file:size"] = local.stat().st_size
        doc["file:checksum"] = multihash_sha256(local)
    return doc


def build_item(
    info: ChangeCubeInfo,
    *,
    item_id: str,
    collection_id: str,
    start: str | datetime,
    end: str | datetime,
    provenance: Mapping[str, Any],
    lineage: str,
    assets: Sequence[AssetFile],
    item_dir: LocationLike,
    title: str | None = None,
) -> dict[str, Any]:
    """Build the Item of a run.

    Parameters
    ----------
    info
        The change cube (grid and attributes).
    item_id, collection_id
        Ids.
    start, end
        Start of the before window and end of the after window.
    provenance
        The discovery record (input items).
    lineage
        ``processing:lineage`` text.
    assets
        The assets; files get ``file:size`` and ``file:checksum``.
    item_dir
        The folder the Item JSON will be published in (hrefs are made relative to it), local or
        an fsspec URL.
    title
        Item title.

    Returns
    -------
    dict
        The Item as JSON-ready data.
    """
    geometry, bbox = _footprint(info)
    models = json.loads(str(info.attrs.get(ATTR_MODELS, "[]")))
    return {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": [PROJECTION_EXTENSION, FILE_EXTENSION, PROCESSING_EXTENSION],
        "id": item_id,
        "collection": collection_id,
        "geometry": geometry,
        "bbox": bbox,
        "properties": {
            "title": title or f"seg2change change {item_id}",
            "datetime": None,
            "start_datetime": _iso(start),
            "end_datetime": _iso(end),
            **_projection(info),
            "processing:lineage": lineage,
            "processing:software": software_versions(),
            "processing:version": __version__,
            "seg2change:fingerprint": info.fingerprint,
            "seg2change:classes": list(info.classes),
            "seg2change:targets": list(info.targets),
            "seg2change:models": models,
            **({"seg2change:unlinked_inputs": unlinked} if (unlinked := unlinked_inputs(provenance)) else {}),
        },
        "links": [
            {"rel": "root", "href": f"./{STAC_COLLECTION}", "type": "application/json"},
            {"rel": "parent", "href": f"./{STAC_COLLECTION}", "type": "application/json"},
            {"rel": "collection", "href": f"./{STAC_COLLECTION}", "type": "application/json"},
            *derived_from(provenance),
        ],
        "assets": {asset.key: _asset_doc(asset, item_dir) for asset in assets},
    }


def build_collection(
    item: Mapping[str, Any], *, item_href: str = f"./{STAC_ITEM}", description: str = ""
) -> dict[str, Any]:
    """Build the Collection holding one Item (extent and id from the Item)."""
    props = item["properties"]
    return {
        "type": "Collection",
        "stac_version": STAC_VERSION,
        "stac_extensions": [],
        "id": item["collection"],
        "title": f"seg2change change detection {item['collection']}",
        "description": description
        or "Open-vocabulary change detection by seg2change: change probability, class maps before and "
        "after, class transitions, per-target change, statistics and a quick-look.",
        "license": "other",
        "keywords": ["change detection", "seg2change", *props.get("seg2change:targets", [])],
        "providers": [{"name": "seg2change", "roles": ["processor", "producer"]}],
        "extent": {
            "spatial": {"bbox": [item["bbox"]]},
            "temporal": {"interval": [[props["start_datetime"], props["end_datetime"]]]},
        },
        "links": [
            {"rel": "root", "href": f"./{STAC_COLLECTION}", "type": "application/json"},
            {"rel": "item", "href": item_href, "type": "application/geo+json", "title": item["id"]},
        ],
    }


def write_stac(collection: Mapping[str, Any], item: Mapping[str, Any], stac_dir: Path) -> tuple[Path, Path]:
    """Write ``collection.json`` and ``item.json`` into ``stac_dir`` (each replaced atomically)."""
    paths = (stac_dir / STAC_COLLECTION, stac_dir / STAC_ITEM)
    for doc, path in zip((collection, item), paths, strict=True):
        with replace_atomically(path) as tmp:
            tmp.write_text(json.dumps(doc, indent=2) + "\n")
    return paths
