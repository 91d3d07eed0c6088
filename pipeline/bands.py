"""Band common names and how each sensor's assets spell them.

A job names bands by their STAC ``eo`` common name (``blue``, ``nir``, ``swir16``...). Catalogs key
their assets differently: Earth Search uses the common names, Planetary Computer uses the Sentinel-2
band ids (``B02``) or Landsat's (``SR_B2``). :func:`resolve_asset_key` finds the asset of an item
that carries a common name, looking at the asset keys first, then at the sensors' asset keys
(:mod:`pipeline.sensors`), then at the ``eo:bands``/``bands`` metadata of each asset. :func:`band_asset` also finds a band inside a
multi-band asset (one RGB GeoTIFF) and returns an asset that reads that band alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.sensors import sensor_aliases

__all__ = [
    "COMMON_NAMES",
    "SENSOR_ALIASES",
    "DEFAULT_BANDS",
    "resolve_asset_key",
    "asset_common_names",
    "band_asset",
    "band_href",
]

#: The common names a job may ask for, in spectral order (STAC eo extension vocabulary).
COMMON_NAMES: tuple[str, ...] = (
    "coastal",
    "blue",
    "green",
    "red",
    "rededge071",
    "rededge075",
    "rededge078",
    "nir",
    "nir08",
    "nir09",
    "cirrus",
    "swir16",
    "swir22",
    "lwir11",
)

#: The bands the spectral segmenter and the demo models read.
DEFAULT_BANDS: tuple[str, ...] = ("blue", "green", "red", "nir", "swir16", "swir22")

#: Asset keys under which the built-in sensors publish each common name
#: (:func:`pipeline.sensors.sensor_aliases` also holds sensors registered later).
SENSOR_ALIASES: Mapping[str, tuple[str, ...]] = sensor_aliases()


def asset_common_names(asset: Mapping[str, Any]) -> list[str]:
    """Return the common names an asset declares in its ``eo:bands`` or ``bands`` metadata.

    Parameters
    ----------
    asset
        One asset of a STAC item, as a JSON dictionary.

    Returns
    -------
    list of str
        The declared common names, possibly empty.
    """
    names: list[str] = []
    for key in ("eo:bands", "bands"):
        for band in asset.get(key) or ():
            name = band.get("common_name") or band.get("eo:common_name")
            if name:
                names.append(str(name))
    return names


def resolve_asset_key(assets: Mapping[str, Mapping[str, Any]], common_name: str) -> str | None:
    """Find the key of the asset that holds a band with the given common name.

    Parameters
    ----------
    assets
        The ``assets`` mapping of a STAC item.
    common_name
        A name from :data:`COMMON_NAMES`, or a literal asset key.

    Returns
    -------
    str or None
        The asset key, or ``None`` when the item has no such band.
    """
    if common_name in assets:
        return common_name
    for alias in sensor_aliases().get(common_name, ()):
        if alias in assets:
            return alias
    for key, asset in assets.items():
        declared = asset_common_names(asset)
        if len(declared) == 1 and declared[0] == common_name:
            return key
    return None


def band_href(href: str, band: int) -> str:
    """Return an href that GDAL reads as band ``band`` (from 1) of a multi-band file alone.

    stackstac reads exactly one band per asset; GDAL's ``vrt://`` connection string (GDAL 3.7+)
    selects one band of a file without writing a VRT.

    Parameters
    ----------
    href
        A local path, an http(s) URL or an ``s3://`` URL.
    band
        Index of the band, from 1.
    """
    if href.startswith(("http://", "https://")):
        href = "/vsicurl/" + href
    elif href.startswith("s3://"):
        href = "/vsis3/" + href.removeprefix("s3://")
    elif href.startswith("file://"):
        href = href.removeprefix("file://")
    return f"vrt://{href}?bands={band}"


def band_asset(
    assets: Mapping[str, Mapping[str, Any]], common_name: str, key: str | None = None
) -> dict[str, Any] | None:
    """Return the asset that holds one band, as a single-band asset stackstac can read.

    A band inside a multi-band asset (``eo:bands``/``bands`` listing several bands) comes back with
    a ``vrt://`` href (see :func:`band_href`) and its own band's metadata only.

    Parameters
    ----------
    assets
        The ``assets`` mapping of a STAC item.
    common_name
        A name from :data:`COMMON_NAMES`, or a literal asset key.
    key
        The asset key to use (a job's ``band_map``); found with :func:`resolve_asset_key` when not given.

    Returns
    -------
    dict or None
        The asset, or ``None`` when the item has no such band.
    """
    found = key or resolve_asset_key(assets, common_name)
    if found is not None and found in assets:
        return dict(assets[found])
    for asset in assets.values():
        declared = asset_common_names(asset)
        if len(declared) < 2 or common_name not in declared or declared.count(common_name) > 1:
            continue
        index = declared.index(common_name)
        single = dict(asset)
        single["href"] = band_href(str(asset["href"]), index + 1)
        for meta in ("eo:bands", "bands", "raster:bands"):
            listed = asset.get(meta)
            if isinstance(listed, list) and len(listed) == len(declared):
                single[meta] = [listed[index]]
        return single
    return None
