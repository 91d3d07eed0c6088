"""Cloud-optimized GeoTIFFs of the change cube's main layers, read back from the Zarr block by block.

Why not ``rioxarray``'s ``to_raster(driver="COG")``: on a distributed cluster with a lock it was
seen to leave an all-zero file that still validates as a COG (see the field notes). Each layer is
therefore read from the *finished* change cube with plain zarr, one window at a time, written into
a tiled (512 px) staging GeoTIFF, and converted with rio-cogeo's
:func:`~rio_cogeo.cogeo.cog_translate`, which adds the overviews (nearest for class maps and codes,
average for the probability) and lays the file out as a DEFLATE-compressed COG. The staging file is
ZSTD level 1: the COG's bytes do not depend on it, and it took 12 % fewer CPU seconds for the five
layers than DEFLATE (2,048 px demo run). The result is checked with
:func:`~rio_cogeo.cogeo.cog_validate` before it replaces an earlier file of the same name, so a
reader never sees a half-written COG. Memory is bounded by one window (the Zarr chunk side rounded
up to whole 512-px tiles), whatever the size of the area: rio-cogeo stages every layer on disk.

This module also holds what the other publishing steps share: :func:`block_windows`; they read the
change cube's description with :func:`pipeline.change_cube.describe_change_cube` and write their
files with :func:`pipeline.storage.replace_atomically`.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rioxarray  # noqa: F401  (registers the .rio accessor)
import zarr
from rasterio.windows import Window as RasterioWindow
from rio_cogeo.cogeo import cog_translate, cog_validate
from rio_cogeo.profiles import cog_profiles

# ChangeCubeInfo and describe_change_cube belong to the change cube's owner; re-exported for importers.
from pipeline.change_cube import (
    TRANSITION_NO_CHANGE,
    TRANSITION_NODATA,
    UINT8_NODATA,
    ChangeCubeInfo,
    describe_change_cube,
)
from pipeline.errors import PublishError
from pipeline.layout import cog_name
from pipeline.publish.legend import (
    CHANGE_NAMES,
    RGBA,
    change_colormap,
    class_colormap,
    transition_colormap,
    transition_names,
)
from pipeline.storage import replace_atomically

__all__ = [
    "COG_LAYERS",
    "COG_MEDIA_TYPE",
    "TILE_SIZE",
    "ChangeCubeInfo",
    "CogLayer",
    "CogSpec",
    "block_windows",
    "compression_threads",
    "describe_change_cube",
    "layer_legend",
    "sidecar_path",
    "translate_to_cog",
    "write_cog",
    "write_cogs",
]

log = logging.getLogger(__name__)

#: Side of the COG tiles (and of the staging GeoTIFF's tiles).
TILE_SIZE = 512
#: Compression of the staging GeoTIFF that rio-cogeo turns into the COG (not the COG's own).
STAGING_COMPRESSION: Mapping[str, Any] = {"compress": "zstd", "zstd_level": 1}
#: GDAL's block cache while the COGs are written. GDAL's default (5 % of the machine's memory) let
#: a layer's dirty staging blocks pile up: at 6,144 px the five layers peaked at 548 MB above the
#: process's start, against 177 MB with this cache, in the same time and with the same bytes.
GDAL_CACHE_BYTES = 64 * 2**20
#: STAC media type of a COG.
COG_MEDIA_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"


@dataclass(frozen=True)
class CogSpec:
    """How one layer is encoded.

    Attributes
    ----------
    dtype
        Pixel type (the Zarr's).
    nodata
        Nodata value (NaN for the probability).
    predictor
        TIFF predictor: 2 (horizontal differencing) for integers, 3 (floating point) for floats.
    resampling
        Overview resampling: ``average`` for the probability, ``nearest`` for classes and codes.
    description
        Band description written into the file.
    """

    dtype: str
    nodata: float
    predictor: int
    resampling: str
    description: str


#: The layers published as COGs, and how each is encoded.
COG_LAYERS: Mapping[str, CogSpec] = {
    "change_probability": CogSpec("float32", float("nan"), 3, "average", "probability of change"),
    "change": CogSpec("uint8", UINT8_NODATA, 2, "nearest", "binary change (1 changed, 0 unchanged)"),
    "class_before": CogSpec("uint8", UINT8_NODATA, 2, "nearest", "class on the before date"),
    "class_after": CogSpec("uint8", UINT8_NODATA, 2, "nearest", "class on the after date"),
    "transition": CogSpec(
        "uint16",
        TRANSITION_NODATA,
        2,
        "nearest",
        f"class_before * K + class_after where changed, {TRANSITION_NO_CHANGE} unchanged",
    ),
}


def block_windows(height: int, width: int, side: int) -> Iterator[tuple[slice, slice]]:
    """Yield ``(rows, cols)`` slices of square windows of ``side`` pixels covering the grid, row by row."""
    for r0 in range(0, height, side):
        for c0 in range(0, width, side):
            yield slice(r0, min(r0 + side, height)), slice(c0, min(c0 + side, width))


@dataclass(frozen=True)
class CogLayer:
    """A written COG.

    Attributes
    ----------
    layer
        The change cube variable.
    path
        The file.
    spec
        How it is encoded.
    overviews
        Overview decimation factors in the file.
    sidecar
        The GDAL auxiliary file with the category names (coded layers), or None.
    """

    layer: str
    path: Path
    spec: CogSpec
    overviews: tuple[int, ...]
    sidecar: Path | None = None


def layer_legend(layer: str, classes: Sequence[str]) -> tuple[dict[int, RGBA], list[str]] | None:
    """The colour table and category names (code order, from 0) of a coded layer; None for the
    probability. See :mod:`pipeline.publish.legend`."""
    if layer == "change":
        return change_colormap(), list(CHANGE_NAMES)
    if layer in ("class_before", "class_after"):
        return class_colormap(classes), list(classes)
    if layer == "transition":
        return transition_colormap(classes), transition_names(classes)
    return None


def sidecar_path(path: Path) -> Path:
    """The GDAL auxiliary file (``<cog>.aux.xml``) that holds a COG's category names."""
    return path.with_name(path.name + ".aux.xml")


def _write_category_names(path: Path, names: Sequence[str]) -> Path:
    """Write the category names of band 1 into GDAL's auxiliary (PAM) file beside ``path``.

    GeoTIFF has no tag for category names: GDAL keeps them in ``<file>.aux.xml``, where GDAL,
    rasterio and QGIS read them (``gdalinfo`` lists them under "Categories").
    """
    root = ET.Element("PAMDataset")
    band = ET.SubElement(root, "PAMRasterBand", band="1")
    categories = ET.SubElement(band, "CategoryNames")
    for name in names:
        ET.SubElement(categories, "Category").text = name
    ET.indent(root)
    sidecar = sidecar_path(path)
    with replace_atomically(sidecar) as tmp:
        ET.ElementTree(root).write(tmp, encoding="UTF-8", xml_declaration=False)
    return sidecar


def _window_side(chunk: int) -> int:
    """Read/write window: the Zarr chunk rounded up to whole COG tiles (aligned to both grids)."""
    return TILE_SIZE * max(1, -(-chunk // TILE_SIZE))


def _spot_check(written: Any, source: zarr.Array[Any], info: ChangeCubeInfo, layer: str) -> None:
    """Compare the first and the central tile of the COG with the Zarr (cheap; catches empty files)."""
    side = min(TILE_SIZE, info.height, info.width)
    for r0, c0 in ((0, 0), ((info.height - side) // 2, (info.width - side) // 2)):
        window = RasterioWindow(c0, r0, side, side)
        cog = written.read(1, window=window)
        expected = np.asarray(source[r0 : r0 + side, c0 : c0 + side])
        if not np.array_equal(cog, expected, equal_nan=expected.dtype.kind == "f"):
            raise PublishError(
                f"the COG written for {layer} differs from the change cube at rows {r0}-{r0 + side}, "
                f"columns {c0}-{c0 + side}; the earlier file is kept. Check the disk and publish again"
            )


def _staging_profile(info: ChangeCubeInfo, spec: CogSpec) -> dict[str, Any]:
    """Creation options of a layer's tiled staging GeoTIFF."""
    return {
        "driver": "GTiff",
        "width": info.width,
        "height": info.height,
        "count": 1,
        "dtype": spec.dtype,
        "crs": info.crs.to_wkt(),
        "transform": info.transform,
        "nodata": spec.nodata,
        "tiled": True,
        "blockxsize": TILE_SIZE,
        "blockysize": TILE_SIZE,
        "predictor": spec.predictor,
        "BIGTIFF": "IF_SAFER",
        **STAGING_COMPRESSION,
    }


def _write_staging(
    info: ChangeCubeInfo,
    layer: str,
    source: zarr.Array[Any],
    staging: Path,
    legend: tuple[dict[int, RGBA], list[str]] | None,
) -> None:
    """Copy a layer window by window into the staging GeoTIFF, with its tags and colour table."""
    spec = COG_LAYERS[layer]
    tags = {"layer": layer, "seg2change_fingerprint": info.fingerprint}
    if layer in ("class_before", "class_after"):
        tags["classes"] = json.dumps(list(info.classes))
    if layer == "transition":
        tags.update(classes=json.dumps(list(info.classes)), num_classes=str(len(info.classes)))
    with rasterio.open(staging, "w", **_staging_profile(info, spec)) as dst:
        dst.set_band_description(1, spec.description)
        dst.update_tags(**tags)
        if legend is not None:
            dst.write_colormap(1, legend[0])
        for rows, cols in block_windows(info.height, info.width, _window_side(info.chunk)):
            data = np.asarray(source[rows, cols], dtype=spec.dtype)
            window = RasterioWindow(cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)
            dst.write(data, 1, window=window)


def _translate(
    info: ChangeCubeInfo,
    layer: str,
    source: zarr.Array[Any],
    staging: Path,
    path: Path,
    overview_level: int | None,
) -> tuple[int, ...]:
    """Convert the staging GeoTIFF into the COG at ``path``, check it, and return its overviews."""
    spec = COG_LAYERS[layer]
    with replace_atomically(path) as tmp:
        translate_to_cog(
            staging,
            tmp,
            layer,
            predictor=spec.predictor,
            overview_resampling=spec.resampling,
            overview_level=overview_level,
        )
        with rasterio.open(tmp) as written:
            overviews = tuple(written.overviews(1))
            _spot_check(written, source, info, layer)
    return overviews


def compression_threads() -> int:
    """Threads GDAL compresses a COG's tiles with: one per core this process may use.

    GDAL writes the tiles in their order whatever the number, so the bytes are the same; the
    longest layer (the float probability) no longer ends on one core after the others are done
    (6,144 px, machine loaded: publish 24.3-25.8 s against 27.0 s, the same CPU seconds).
    """
    return len(os.sched_getaffinity(0))


def translate_to_cog(
    staging: Path,
    target: Path,
    name: str,
    *,
    predictor: int,
    overview_resampling: str,
    overview_level: int | None = None,
) -> None:
    """Convert a staging GeoTIFF into a COG (DEFLATE, :data:`TILE_SIZE` px tiles) and validate it.

    Parameters
    ----------
    staging
        The staging GeoTIFF.
    target
        Where the COG goes (a temporary path that the caller moves into place once it is checked).
    name
        The layer's name, for messages.
    predictor
        The TIFF predictor (2 for integers, 3 for floats).
    overview_resampling
        How overviews are made (``nearest`` for classes).
    overview_level
        Number of overview levels; default rio-cogeo's choice from the size.

    Raises
    ------
    PublishError
        When the written file is not a valid COG.
    """
    cog_profile = dict(cog_profiles.get("deflate"))
    cog_profile.update(
        blockxsize=TILE_SIZE,
        blockysize=TILE_SIZE,
        predictor=predictor,
        BIGTIFF="IF_SAFER",
        NUM_THREADS=str(compression_threads()),
    )
    cog_translate(
        str(staging),
        str(target),
        cog_profile,
        overview_level=overview_level,
        overview_resampling=overview_resampling,  # type: ignore[arg-type]
        # rio-cogeo's intermediate file (full resolution and overviews, beside the target) is left
        # uncompressed: the COG is compressed from the same pixels, so its bytes are the same, and
        # the five layers took a third less CPU (2,048 px: 1.1 s instead of 1.6 s), the DEFLATE
        # encode and decode of every pixel saved once. The cost is disk, for the time of one
        # translate per thread: the layer uncompressed plus a third (10,980 px probability: 640 MB).
        allow_intermediate_compression=False,
        forward_band_tags=True,
        # Staged on disk whatever the size (rio-cogeo's default holds layers under 120 Mpx in
        # memory): the same bytes, and publishing's memory stays one window per layer.
        in_memory=False,
        quiet=True,
    )
    valid, errors, _ = cog_validate(str(target), quiet=True)
    if not valid:
        raise PublishError(
            f"the COG written for {name} is not valid ({'; '.join(errors)}); this is a bug, "
            "please report it with the GDAL and rio-cogeo versions"
        )


def write_cog(
    info: ChangeCubeInfo,
    layer: str,
    path: Path,
    *,
    overview_level: int | None = None,
) -> CogLayer:
    """Write one layer of a change cube as a validated COG.

    Parameters
    ----------
    info
        The change cube (:func:`describe_change_cube`).
    layer
        One of :data:`COG_LAYERS`.
    path
        The COG to write; an existing file is replaced only once the new one is valid. A coded
        layer (classes, transitions, change) gets a colour table, and category names in
        ``<path>.aux.xml`` (see :func:`layer_legend`).
    overview_level
        Number of overview levels; default: rio-cogeo's choice (halve until a level fits a tile).

    Returns
    -------
    CogLayer

    Raises
    ------
    PublishError
        When the layer is unknown or the written file is not a valid COG.
    """
    if layer not in COG_LAYERS:
        raise PublishError(f"layer {layer!r} is not published as a COG; choose from {', '.join(COG_LAYERS)}")
    spec = COG_LAYERS[layer]
    source = zarr.open_array(info.path.zarr_store(read_only=True), path=layer, mode="r")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.stem}.staging-{uuid.uuid4().hex[:8]}.tif")
    legend = layer_legend(layer, info.classes)
    try:
        _write_staging(info, layer, source, staging, legend)
        overviews = _translate(info, layer, source, staging, path, overview_level)
    finally:
        staging.unlink(missing_ok=True)
    sidecar = _write_category_names(path, legend[1]) if legend is not None else None
    return CogLayer(layer=layer, path=path, spec=spec, overviews=overviews, sidecar=sidecar)


def write_cogs(
    info: ChangeCubeInfo,
    folder: Path,
    *,
    layers: Sequence[str] = tuple(COG_LAYERS),
    overview_level: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    workers: int = 1,
) -> dict[str, CogLayer]:
    """Write ``<folder>/<layer>.tif`` for each layer (see :func:`write_cog`).

    Parameters
    ----------
    progress
        Called as ``progress("COGs", done, total)`` after each layer.
    workers
        Layers written at the same time, each in its own thread (GDAL and the Zarr codecs release
        the GIL); each holds one window and its own staging file, and the files are the same.

    Returns
    -------
    dict
        The written COG per layer, in the order of ``layers``.
    """
    if workers < 1:
        raise PublishError(f"workers={workers}: give at least 1 thread to write the COGs")

    def one(layer: str) -> CogLayer:
        written = write_cog(info, layer, folder / cog_name(layer), overview_level=overview_level)
        log.info("COG %s: %s (overviews %s)", layer, written.path, written.overviews)
        return written

    done: dict[str, CogLayer] = {}
    with (
        rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES),
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cog") as pool,
    ):
        for written in pool.map(one, layers):
            done[written.layer] = written
            if progress is not None:
                progress("COGs", len(done), len(layers))
    return {layer: done[layer] for layer in layers}
