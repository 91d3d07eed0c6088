"""Discovery: find, per time window, the scenes that cover the AOI within the cloud limit.

STAC APIs are searched with pystac-client. The cloud-cover filter runs on the server when the API
conforms to the *filter* (CQL2) or *query* extension, and on the client otherwise (the log says
which). Local ItemCollections, ``.ndjson`` files and static catalogs are filtered on the client with
the same rules, so a job gives the same items whatever the catalog is.

Every API request is retried with backoff a bounded number of times (:mod:`pipeline.catalog_io`);
a job's ``catalog.sign`` signer (:mod:`pipeline.signers`) rewrites the asset hrefs of the items
found, after the search.
"""

from __future__ import annotations

import glob
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any, Literal

import pystac
import shapely
import shapely.geometry
from pystac_client import Client
from pystac_client.conformance import ConformanceClasses
from pystac_client.errors import ClientTypeError
from pystac_client.exceptions import APIError

from pipeline.catalog_io import RETRY_STATUSES, backoff_wait_s, stac_api_io
from pipeline.errors import CatalogError, CatalogUnavailableError, NothingFoundError
from pipeline.signers import HrefSigner, resolve_signer
from pipeline.spec import CatalogSpec, JobSpec, TimeWindow

__all__ = ["Discovery", "FilterMode", "discover", "discover_window", "open_catalog_items"]

log = logging.getLogger(__name__)

FilterMode = Literal["server-filter", "server-query", "client"]


@dataclass(frozen=True)
class Discovery:
    """The items chosen for each window, and how they were filtered.

    Attributes
    ----------
    items
        STAC item dictionaries per epoch (``before``, ``after``), sorted by datetime.
    filter_mode
        Where the cloud filter ran: on the server (CQL2 ``filter`` or ``query``) or on the client.
    catalog
        The catalog URL or file searched.
    signer
        The ``catalog.sign`` signer the asset hrefs went through, if any.
    """

    items: dict[str, list[dict[str, Any]]]
    filter_mode: FilterMode
    catalog: str
    cloud_limit: float
    collections: tuple[str, ...]
    searched_at: str = field(default_factory=lambda: datetime.now().astimezone().isoformat())
    signer: str | None = None

    def provenance(self) -> dict[str, Any]:
        """Return a JSON-ready record of what was searched and which items were chosen.

        Item hrefs are the items' own (``self``) links, never the signed asset hrefs, whose tokens
        are credentials.
        """
        signed = {"href_signer": self.signer} if self.signer else {}
        return {
            **signed,
            "catalog": self.catalog,
            "collections": list(self.collections),
            "cloud_limit": self.cloud_limit,
            "filter_mode": self.filter_mode,
            "searched_at": self.searched_at,
            "items": {
                epoch: [
                    {
                        "id": item["id"],
                        "collection": item.get("collection"),
                        "datetime": item["properties"].get("datetime"),
                        "eo:cloud_cover": item["properties"].get("eo:cloud_cover"),
                        "href": _self_href(item),
                    }
                    for item in items
                ]
                for epoch, items in self.items.items()
            },
        }


def _self_href(item: dict[str, Any]) -> str | None:
    """The item's own address: its ``canonical`` link (a lasting one, which a STAC API serving a
    copy of the item keeps), else its first ``self`` link."""
    links = item.get("links", ())
    for rel in ("canonical", "self"):
        for link in links:
            if link.get("rel") == rel and link.get("href"):
                return str(link["href"])
    return None


def discover(job: JobSpec) -> Discovery:
    """Search the job's catalog for both windows.

    Raises
    ------
    CatalogError
        The catalog cannot be reached or read (after the bounded retries), or the job's href signer
        cannot be imported or fails.
    NothingFoundError
        A window has no item within the cloud limit; the message names the window, the
        collections and the cloud limit.
    """
    found: dict[str, list[dict[str, Any]]] = {}
    mode: FilterMode = "client"
    signer = resolve_signer(job.catalog.sign) if job.catalog.sign else None
    for epoch, window in job.windows().items():
        items, mode = discover_window(job, window, signer=signer)
        if not items:
            raise NothingFoundError(
                f"no {epoch} scene found between {window.start.date()} and {window.end.date()} in "
                f"collections {', '.join(job.collections)} of {job.catalog.url} with eo:cloud_cover <= "
                f"{job.cloud_limit:g}% over the AOI; widen the {epoch} window, raise cloud_limit, or check "
                "the collection ids"
            )
        log.info("%s window %s: %d item(s) (%s filter)", epoch, window.interval(), len(items), mode)
        found[epoch] = items
    return Discovery(
        items=found,
        filter_mode=mode,
        catalog=job.catalog.url,
        cloud_limit=job.cloud_limit,
        collections=job.collections,
        signer=job.catalog.sign,
    )


def discover_window(
    job: JobSpec, window: TimeWindow, *, signer: HrefSigner | None = None
) -> tuple[list[dict[str, Any]], FilterMode]:
    """Return the items of one window and where the cloud filter ran.

    Parameters
    ----------
    job, window
        The job and one of its windows.
    signer
        The job's resolved ``catalog.sign`` signer; resolved here when not given.
    """
    if signer is None and job.catalog.sign:
        signer = resolve_signer(job.catalog.sign)
    aoi = job.aoi.wgs84()
    if job.catalog.is_api:
        items, mode = _search_api(job.catalog, job.collections, aoi, window, job.cloud_limit)
    else:
        items = list(open_catalog_items(job.catalog))
        mode = "client"
        if not items:
            raise CatalogError(
                f"the catalog file {job.catalog.url} holds no items (a Collection without item links?); "
                "give its items as an ItemCollection or .ndjson file, or a catalog that links them"
            )
    kept = [_with_epsg(it) for it in items if _matches(it, job.collections, aoi, window, job.cloud_limit)]
    if signer is not None:
        _sign_assets(kept, signer, str(job.catalog.sign))
    return sorted(kept, key=lambda it: (it["properties"].get("datetime") or "", it["id"])), mode


def _sign_assets(items: list[dict[str, Any]], signer: HrefSigner, name: str) -> None:
    """Pass every asset href of ``items`` through ``signer``, in place."""
    for item in items:
        for key, asset in item.get("assets", {}).items():
            href = asset.get("href")
            if not href:
                continue
            try:
                signed = signer(href)
            except Exception as exc:  # the signer is the user's code or a third party's
                error = CatalogUnavailableError if isinstance(exc, OSError | TimeoutError) else CatalogError
                raise error(
                    f"signing asset {key!r} of item {item.get('id')} with {name!r} failed "
                    f"({type(exc).__name__}: {exc}); check the signer's network access and credentials, "
                    "or remove catalog.sign if this catalog's hrefs are readable as they are"
                ) from None
            if not isinstance(signed, str) or not signed:
                raise CatalogError(
                    f"href signer {name!r} returned {signed!r} for {href}; a signer must return the href "
                    "to read, as a string"
                )
            asset["href"] = signed


def _api_error(exc: Exception, action: str, url: str, catalog: CatalogSpec, *, opening: bool) -> CatalogError:
    """A CatalogError for a request that failed for good: what was asked, of which URL, and what to do."""
    status = getattr(exc, "status_code", None)
    tries = (
        f"after {catalog.retries} retr{'y' if catalog.retries == 1 else 'ies'} over about "
        f"{backoff_wait_s(catalog):.3g} s of backoff"
    )
    if status in RETRY_STATUSES:
        return CatalogUnavailableError(
            f"{action} at {url} failed: the server answered HTTP {status} ({HTTPStatus(status).phrase}) "
            f"{tries}; it is overloaded or down: try again later, or wait longer with catalog.retries "
            f"(now {catalog.retries}) and catalog.backoff (now {catalog.backoff:g} s)"
        )
    if status is not None:
        body = " ".join(str(exc).split())[:300]
        return CatalogError(
            f"{action} at {url} was refused: HTTP {status} ({body}); this is not retried: check the "
            "job's catalog URL, collections, windows and AOI"
        )
    if isinstance(exc, pystac.STACError | ValueError | ClientTypeError) and not isinstance(exc, APIError):
        return CatalogError(
            f"{action} at {url} gave an answer that is not STAC ({exc}); check that the URL is the API's "
            "root (its landing page), e.g. https://earth-search.aws.element84.com/v1"
        )
    failed = f"could not reach the STAC API at {url}" if opening else f"{action} at {url} failed"
    return CatalogUnavailableError(
        f"{failed} {tries} ({exc}); check the URL, that the server is running and that this machine "
        "can reach it"
    )


def _search_api(
    catalog: CatalogSpec,
    collections: tuple[str, ...],
    aoi: shapely.Geometry,
    window: TimeWindow,
    cloud_limit: float,
) -> tuple[list[dict[str, Any]], FilterMode]:
    url = catalog.url
    try:
        client = Client.open(url, stac_io=stac_api_io(catalog), timeout=catalog.timeout)
    except (APIError, OSError, pystac.STACError, ValueError, ClientTypeError) as exc:
        raise _api_error(exc, "opening the STAC API", url, catalog, opening=True) from None
    kwargs: dict[str, Any] = {
        "collections": list(collections),
        "intersects": shapely.geometry.mapping(aoi),
        "datetime": window.interval(),
    }
    mode: FilterMode
    if client.conforms_to(ConformanceClasses.FILTER):
        mode = "server-filter"
        kwargs["filter"] = {"op": "<=", "args": [{"property": "eo:cloud_cover"}, cloud_limit]}
        kwargs["filter_lang"] = "cql2-json"
    elif client.conforms_to(ConformanceClasses.QUERY):
        mode = "server-query"
        kwargs["query"] = {"eo:cloud_cover": {"lte": cloud_limit}}
    else:
        mode = "client"
    log.info("searching %s (%s): cloud filter runs %s", url, window.interval(), _describe(mode))
    search_url = url
    try:
        search = client.search(**kwargs)
        search_url = search.url
        return [dict(item) for item in search.items_as_dicts()], mode
    except (APIError, OSError) as exc:
        raise _api_error(exc, "the STAC search", search_url, catalog, opening=False) from None


def _describe(mode: FilterMode) -> str:
    return {
        "server-filter": "on the server (CQL2 filter)",
        "server-query": "on the server (query extension)",
        "client": "on the client (the API conforms to neither filter nor query)",
    }[mode]


def _matches(
    item: dict[str, Any],
    collections: tuple[str, ...],
    aoi: shapely.Geometry,
    window: TimeWindow,
    cloud_limit: float,
) -> bool:
    props = item.get("properties", {})
    if item.get("collection") not in collections:
        return False
    moment = props.get("datetime") or props.get("start_datetime")
    if moment is None or not window.contains(datetime.fromisoformat(moment.replace("Z", "+00:00"))):
        return False
    cloud = props.get("eo:cloud_cover")
    if cloud_limit < 100 and (cloud is None or float(cloud) > cloud_limit):
        return False
    geometry = item.get("geometry")
    return geometry is not None and shapely.geometry.shape(geometry).intersects(aoi)


def open_catalog_items(catalog: CatalogSpec | str | Path) -> Iterator[dict[str, Any]]:
    """Yield every item of a local catalog file as a dictionary with absolute asset hrefs.

    Parameters
    ----------
    catalog
        An ItemCollection JSON, an ``.ndjson`` file of items, a static Catalog/Collection JSON, or a
        folder or glob pattern of GeoTIFF/COG files (see :func:`pipeline.own_imagery.catalog_rasters`).
    """
    path = Path(catalog.url if isinstance(catalog, CatalogSpec) else catalog)
    if path.is_dir() or glob.has_magic(str(path)):
        from pipeline.own_imagery import catalog_rasters

        pattern = catalog.name_date if isinstance(catalog, CatalogSpec) else None
        for item in catalog_rasters([path], name_pattern=pattern):
            yield _with_epsg(item.to_dict(transform_hrefs=False))
        return
    try:
        if path.suffix == ".ndjson":
            yield from (
                _absolute(json.loads(line), path) for line in path.read_text().splitlines() if line.strip()
            )
            return
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CatalogError(f"could not read the catalog file {path} ({exc}); check it is STAC JSON") from None
    kind = doc.get("type")
    if kind == "FeatureCollection":
        yield from (_absolute(item, path) for item in doc.get("features", []))
    elif kind == "Feature":
        yield _absolute(doc, path)
    elif kind in {"Catalog", "Collection"}:
        root = pystac.read_file(str(path))
        if not isinstance(root, pystac.Catalog):
            raise CatalogError(f"{path} is not a STAC Catalog or Collection")
        for item in root.get_items(recursive=True):
            item.make_asset_hrefs_absolute()
            yield _with_epsg(item.to_dict(transform_hrefs=False))
    else:
        raise CatalogError(
            f"{path} is not an ItemCollection, item, catalog or collection (type {kind!r}); "
            "give STAC JSON or newline-delimited items (.ndjson)"
        )


def _absolute(item: dict[str, Any], source: Path) -> dict[str, Any]:
    for asset in item.get("assets", {}).values():
        href = asset.get("href", "")
        if href and "://" not in href and not href.startswith("/"):
            asset["href"] = str((source.parent / href).resolve())
    return _with_epsg(item)


def _with_epsg(item: dict[str, Any]) -> dict[str, Any]:
    """Give an item ``proj:epsg`` when it only has ``proj:code`` (stackstac reads only the former)."""
    for holder in (item.get("properties", {}), *item.get("assets", {}).values()):
        code = holder.get("proj:code")
        if isinstance(code, str) and code.upper().startswith("EPSG:") and "proj:epsg" not in holder:
            holder["proj:epsg"] = int(code.split(":", 1)[1])
    return item
