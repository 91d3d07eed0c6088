"""Build a local STAC catalog from GeoTIFFs on disk, so any imagery can go through discovery.

An item is made from one *acquisition*: either one file per band (Sentinel-2 style, each file an
asset) or one multi-band file, which is split into one single-band VRT per band because stackstac
reads exactly one band per asset. Geometry, ``proj:*`` fields and band metadata come from rasterio
and pystac's extension classes. rio-stac makes one item per file; here several files form one item,
and multi-band files need the VRT split, which is why this small module exists.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import pystac
import rasterio
import rasterio.warp
import shapely
import shapely.geometry
from pystac.extensions.eo import Band, EOExtension
from pystac.extensions.projection import ProjectionExtension
from pystac.extensions.raster import RasterBand, RasterExtension

from pipeline.errors import CatalogError

__all__ = ["Acquisition", "build_catalog"]

_GDAL_TYPES = {
    "uint8": "Byte",
    "uint16": "UInt16",
    "int16": "Int16",
    "uint32": "UInt32",
    "int32": "Int32",
    "float32": "Float32",
    "float64": "Float64",
}


@dataclass(frozen=True)
class Acquisition:
    """One scene to catalog.

    Attributes
    ----------
    item_id
        Unique id of the item.
    datetime
        Acquisition time (timezone-aware).
    bands
        Common name -> ``(file, band index starting at 1)``.
    properties
        Extra item properties (``eo:cloud_cover``, ``platform``...).
    scale, offset
        Applied to the raw values to get reflectance (``raster:bands``).
    """

    item_id: str
    datetime: datetime
    bands: Mapping[str, tuple[Path, int]]
    properties: Mapping[str, Any] | None = None
    scale: float = 1.0
    offset: float = 0.0


def _band_vrt(source: Path, band: int, target: Path) -> Path:
    with rasterio.open(source) as ds:
        dtype = _GDAL_TYPES.get(ds.dtypes[band - 1])
        if dtype is None:
            raise CatalogError(
                f"{source} band {band} has dtype {ds.dtypes[band - 1]}, which VRTs here do not cover"
            )
        nodata = "" if ds.nodata is None else f"<NoDataValue>{ds.nodata}</NoDataValue>"
        transform = ", ".join(repr(v) for v in ds.transform.to_gdal())
        xml = (
            f'<VRTDataset rasterXSize="{ds.width}" rasterYSize="{ds.height}">'
            f"<SRS>{escape(ds.crs.to_wkt())}</SRS><GeoTransform>{transform}</GeoTransform>"
            f'<VRTRasterBand dataType="{dtype}" band="1">{nodata}<SimpleSource>'
            f'<SourceFilename relativeToVRT="0">{escape(str(source.resolve()))}</SourceFilename>'
            f"<SourceBand>{band}</SourceBand></SimpleSource></VRTRasterBand></VRTDataset>"
        )
    target.write_text(xml)
    return target


def _single_band(path: Path, band: int, name: str, vrt_dir: Path, item_id: str) -> Path:
    with rasterio.open(path) as ds:
        count = ds.count
    if count > 1:
        vrt_dir.mkdir(parents=True, exist_ok=True)
        return _band_vrt(path, band, vrt_dir / f"{item_id}_{name}.vrt")
    if band != 1:
        raise CatalogError(f"{path} has one band; band index {band} does not exist")
    return path


def _footprint(path: Path) -> tuple[shapely.Geometry, dict[str, Any]]:
    with rasterio.open(path) as ds:
        bounds = rasterio.warp.transform_bounds(ds.crs, "EPSG:4326", *ds.bounds, densify_pts=21)
        epsg = ds.crs.to_epsg()
        proj = {
            "epsg": epsg,
            "code": f"EPSG:{epsg}" if epsg else None,
            "wkt2": None if epsg else ds.crs.to_wkt(),
            "shape": [ds.height, ds.width],
            "transform": list(ds.transform)[:6],
            "bbox": list(ds.bounds),
            "dtype": ds.dtypes[0],
            "nodata": ds.nodata,
        }
    return shapely.box(*bounds), proj


def build_catalog(
    acquisitions: Sequence[Acquisition],
    out_dir: Path,
    *,
    collection_id: str,
    description: str = "local imagery",
) -> Path:
    """Write a static STAC Collection (with items) for local rasters and return its path.

    Parameters
    ----------
    acquisitions
        The scenes, one item each.
    out_dir
        Folder for ``collection.json``, the items and any band VRTs.
    collection_id
        Id of the collection; items carry it.
    """
    if not acquisitions:
        raise CatalogError("no acquisitions to catalog; give at least one")
    out_dir.mkdir(parents=True, exist_ok=True)
    items: list[pystac.Item] = []
    for acq in acquisitions:
        footprints = []
        item = pystac.Item(
            id=acq.item_id,
            geometry=None,
            bbox=None,
            datetime=acq.datetime,
            properties=dict(acq.properties or {}),
            collection=collection_id,
        )
        for name, (path, band) in acq.bands.items():
            if not Path(path).is_file():
                raise CatalogError(f"band {name!r} of {acq.item_id}: {path} does not exist")
            href = _single_band(Path(path), band, name, out_dir / "vrt", acq.item_id)
            footprint, proj = _footprint(href)
            footprints.append(footprint)
            asset = pystac.Asset(
                href=str(href.resolve()), media_type=pystac.MediaType.GEOTIFF, roles=["data"]
            )
            item.add_asset(name, asset)
            projection = ProjectionExtension.ext(asset, add_if_missing=True)
            projection.shape = proj["shape"]
            projection.transform = proj["transform"]
            projection.code = proj["code"]
            if proj["wkt2"]:
                projection.wkt2 = proj["wkt2"]
            EOExtension.ext(asset, add_if_missing=True).bands = [Band.create(name=name, common_name=name)]
            RasterExtension.ext(asset, add_if_missing=True).bands = [
                RasterBand.create(
                    nodata=proj["nodata"], data_type=proj["dtype"], scale=acq.scale, offset=acq.offset
                )
            ]
        geometry = shapely.union_all(footprints).envelope
        item.geometry = shapely.geometry.mapping(geometry)
        item.bbox = list(geometry.bounds)
        items.append(item)
    collection = pystac.Collection(
        id=collection_id,
        description=description,
        extent=pystac.Extent(
            pystac.SpatialExtent(
                [list(shapely.union_all([shapely.box(*i.bbox) for i in items if i.bbox]).bounds)]
            ),
            pystac.TemporalExtent(
                [[min(a.datetime for a in acquisitions), max(a.datetime for a in acquisitions)]]
            ),
        ),
    )
    collection.add_items(items)
    collection.normalize_hrefs(str(out_dir))
    collection.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    return out_dir / "collection.json"
