"""Per-feature impact: for each footprint (a building, a parcel), how much of it changed.

Given polygons (:func:`~pipeline.publish.footprints.read_footprints`), :func:`feature_impact`
reads the change cube block by block and, in each block, rasterises only the footprints whose
bounds reach it (``rasterio.features``, pixel centres inside the polygon), labelled by their rank
among that block's candidates. Per footprint it accumulates, in numpy arrays indexed by footprint:
pixels covered by data, changed pixels, the sum of the change probability and the class counts of
both dates. Which footprints reach which block is found once, from their bounds, by bucketing them
on the block grid (a grid index: the blocks are a regular grid, so this is exact and costs a few
integers per footprint, where an STRtree would hold every polygon as a geometry). Memory is
therefore one block's arrays, the footprints' WKB in Arrow arrays, and about sixty bytes of counts
per footprint (``bench/feature_impact.py``). The table is made from those counts a few thousand rows
at a time, as the GeoParquet (one row group per step) and the GeoJSON are streamed out.

A footprint without any pixel holding data on both dates (outside the imagery, in its nodata, or
outside the cube) is ``not covered``, never ``unchanged``; one with data on part of its area is
``partly covered`` and its fractions describe that part. A footprint is ``affected`` when it is
covered (partly or wholly) and its changed fraction reaches the user's threshold. Where footprints
overlap, a pixel counts for the later one.

Tables are written with pyarrow and shapely (WKB geometry and the GeoParquet ``geo`` metadata)
rather than geopandas, which is not in the pinned set; the GeoJSON is in WGS84 longitude/latitude
as RFC 7946 asks.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import rasterio.features
import rasterio.windows
import shapely
import zarr
from pyproj import CRS

from pipeline.change_cube import ChangeCubeInfo
from pipeline.errors import PublishError
from pipeline.memory_release import release_freed_memory
from pipeline.publish.cogs import block_windows

# Footprints and read_footprints moved to pipeline.publish.footprints; re-exported for
# flows/response.py, which imports them from here.
from pipeline.publish.footprints import Footprints, read_footprints
from pipeline.storage import replace_atomically

__all__ = [
    "COVERED",
    "NOT_COVERED",
    "PARTLY_COVERED",
    "Footprints",
    "FeatureImpact",
    "FeatureMeasures",
    "feature_impact",
    "read_footprints",
    "write_feature_impact",
]

COVERED = "covered"
PARTLY_COVERED = "partly covered"
NOT_COVERED = "not covered"
#: A footprint with data on at least this share of its area is ``covered``.
COVERED_SHARE = 0.5
_NODATA = 255
_LAYERS = ("change", "change_probability", "class_before", "class_after")
_EPOCHS = ("before", "after")


@dataclass(frozen=True)
class FeatureMeasures:
    """What was counted per footprint: numpy arrays indexed by footprint.

    Attributes
    ----------
    pixels
        Pixels inside the footprint with data on both dates.
    changed
        Of those, the changed ones.
    probability
        Sum of their change probability.
    area
        The footprint's area in the change cube's CRS (square metres).
    majority
        Per epoch (``before``, ``after``), the index in ``names`` of the most frequent class
        (meaningless where ``pixels`` is 0).
    names
        The cube's classes, then ``"no class"``.
    pixel_area
        Area of one pixel, in the units of ``area``.
    """

    pixels: np.ndarray
    changed: np.ndarray
    probability: np.ndarray
    area: np.ndarray
    majority: dict[str, np.ndarray]
    names: tuple[str, ...]
    pixel_area: float


@dataclass(frozen=True)
class FeatureImpact:
    """The per-feature measures and their summary.

    Attributes
    ----------
    footprints
        The footprints (WKB in their own CRS).
    threshold
        Changed fraction from which a footprint is affected.
    measures
        The counts per footprint the table is made of.
    summary
        Per zone and in all: footprints, covered, partly covered, not covered, affected.
    """

    footprints: Footprints
    threshold: float
    measures: FeatureMeasures
    summary: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def table(self) -> pd.DataFrame:
        """One row per footprint (made on each access: :meth:`rows` gives a part).

        Columns: ``id``, ``zone``, ``status`` (covered / partly covered / not covered),
        ``coverage`` (share of the footprint's area with data on both dates), ``pixels`` (with
        data), ``changed_pixels``, ``changed_fraction``, ``mean_change_probability``,
        ``class_before`` and ``class_after`` (majority class of each date, empty when not
        covered), ``affected``.
        """
        return self.rows(0, len(self.footprints))

    def rows(self, start: int, stop: int) -> pd.DataFrame:
        """Rows ``start`` to ``stop`` (excluded, at most the last row) of :attr:`table`, indexed from 0."""
        stop = min(stop, len(self.footprints))
        m, n = self.measures, stop - start
        part = slice(start, stop)
        pixels = m.pixels[part]
        status, fraction, coverage = _status(m, part)
        names = np.asarray(m.names, dtype=object)
        zones = self.footprints.zones.slice(start, n)
        return pd.DataFrame(
            {
                "id": self.footprints.ids.slice(start, n).to_numpy(zero_copy_only=False),
                "zone": np.asarray(zones.dictionary.to_pylist(), dtype=object)[zones.indices.to_numpy()],
                "status": np.asarray(_STATUSES, dtype=object)[status],
                "coverage": coverage,
                "pixels": pixels,
                "changed_pixels": m.changed[part],
                "changed_fraction": fraction,
                "mean_change_probability": np.divide(
                    m.probability[part], pixels, out=np.full(n, np.nan), where=pixels > 0
                ),
                "class_before": _majority(m.majority["before"][part], pixels, names),
                "class_after": _majority(m.majority["after"][part], pixels, names),
                "affected": (pixels > 0) & (np.nan_to_num(fraction) >= self.threshold),
            }
        )


#: Status names by code (see :func:`_status`).
_STATUSES = (NOT_COVERED, PARTLY_COVERED, COVERED)


def _status(m: FeatureMeasures, part: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Status code (index in :data:`_STATUSES`), changed fraction and coverage of some footprints."""
    pixels, area = m.pixels[part], m.area[part]
    n = len(pixels)
    coverage = np.clip(np.divide(pixels * m.pixel_area, area, out=np.zeros(n), where=area > 0), 0.0, 1.0)
    status = np.where(pixels == 0, 0, np.where(coverage >= COVERED_SHARE, 2, 1))
    fraction = np.divide(m.changed[part], pixels, out=np.full(n, np.nan), where=pixels > 0)
    return status, fraction, coverage


def feature_impact(
    info: ChangeCubeInfo,
    footprints: Footprints,
    *,
    threshold: float = 0.25,
    progress: Callable[[str, int, int], None] | None = None,
) -> FeatureImpact:
    """Measure the change inside each footprint, block by block over the change cube.

    Parameters
    ----------
    info
        The change cube (:func:`~pipeline.change_cube.describe_change_cube`).
    footprints
        The polygons (:func:`~pipeline.publish.footprints.read_footprints`).
    threshold
        Changed fraction (0..1] of a footprint's covered pixels from which it is affected.
    progress
        Called as ``progress("features", done, total)`` after each block.

    Raises
    ------
    PublishError
        A threshold outside (0, 1].
    """
    if not 0 < threshold <= 1:
        raise PublishError(
            f"the affected threshold is a changed fraction in (0, 1], got {threshold}; e.g. 0.25"
        )
    n = len(footprints)
    bounds = np.empty((n, 4))
    area = np.empty(n)
    for rows, shapes in footprints.chunks(info.crs):
        bounds[rows] = shapely.bounds(shapes)
        area[rows] = shapely.area(shapes)
    counts = _Counts.zeros(n, len(info.classes), info.height * info.width)
    store = info.path.zarr_store(read_only=True)
    arrays = {name: zarr.open_array(store, path=name, mode="r") for name in _LAYERS}
    windows = list(block_windows(info.height, info.width, info.chunk))
    features, starts = _candidates_by_block(bounds, info)
    del bounds
    release_freed_memory()
    for done, (rows, cols) in enumerate(windows, start=1):
        hits = features[starts[done - 1] : starts[done]]
        if hits.size:
            labels = _rasterise(footprints, hits, info, rows, cols)
            counts.add(hits, labels, _reader(arrays, rows, cols))
        if progress is not None:
            progress("features", done, len(windows))
    measures = FeatureMeasures(
        pixels=counts.pixels,
        changed=counts.changed,
        probability=counts.probability,
        area=area,
        majority={epoch: counts.classes[epoch].argmax(axis=1).astype(np.int16) for epoch in _EPOCHS},
        names=(*info.classes, "no class"),
        pixel_area=abs(info.transform.a * info.transform.e),
    )
    del counts
    release_freed_memory()
    return FeatureImpact(footprints, threshold, measures, _summary(footprints, measures, threshold))


def _candidates_by_block(bounds: np.ndarray, info: ChangeCubeInfo) -> tuple[np.ndarray, np.ndarray]:
    """The footprints (ascending) whose bounds reach each block, in :func:`block_windows` order.

    Returns ``(features, starts)``: block ``b``'s candidates are ``features[starts[b]:starts[b + 1]]``.
    Computed at once (not as a generator) so that the arrays it needs on the way are freed before
    the blocks are read.

    Each bounding box is put in pixel coordinates, widened by a pixel against rounding, and bucketed
    on the block grid: a needless candidate costs a rasterisation that burns nothing, a missing one
    would lose pixels. Footprints with non-finite bounds (empty, or not projectable) reach none.
    """
    side = info.chunk
    grid = (-(-info.height // side), -(-info.width // side))
    inverse = ~info.transform
    ids = np.flatnonzero(np.isfinite(bounds).all(axis=1))
    xs, ys = bounds[ids][:, [0, 2, 0, 2]], bounds[ids][:, [1, 1, 3, 3]]
    spans = []
    for (a, b, c), blocks in zip(
        ((inverse.d, inverse.e, inverse.f), (inverse.a, inverse.b, inverse.c)), grid, strict=True
    ):
        pixel = a * xs + b * ys + c
        low = np.floor((pixel.min(axis=1) - 1) / side)
        high = np.floor((pixel.max(axis=1) + 1) / side)
        spans.append((low, high, blocks))
    inside = np.logical_and.reduce([(high >= 0) & (low < blocks) for low, high, blocks in spans])
    ids = ids[inside]
    (r0, r1), (c0, c1) = (
        (
            np.clip(low[inside], 0, blocks - 1).astype(np.int64),
            np.clip(high[inside], 0, blocks - 1).astype(np.int64),
        )
        for low, high, blocks in spans
    )
    width = c1 - c0 + 1
    count = (r1 - r0 + 1) * width
    offset = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
    width = np.repeat(width, count)
    block = (np.repeat(r0, count) + offset // width) * grid[1] + np.repeat(c0, count) + offset % width
    order = np.argsort(block, kind="stable")  # stable: footprints stay ascending within a block
    features = np.repeat(ids, count)[order]
    starts = np.searchsorted(block[order], np.arange(grid[0] * grid[1] + 1))
    return features, starts


def _reader(arrays: Mapping[str, zarr.Array[Any]], rows: slice, cols: slice) -> Callable[[str], np.ndarray]:
    """A function reading one block of a layer, so each layer is held only while it is counted."""
    return lambda name: np.asarray(arrays[name][rows, cols])


def _rasterise(
    footprints: Footprints, hits: np.ndarray, info: ChangeCubeInfo, rows: slice, cols: slice
) -> np.ndarray:
    """Label a block's pixels with 1 + the rank in ``hits`` of the footprint they fall in (0: none).

    Where footprints overlap, the later one (in ``hits``, ascending) takes the pixel.
    """
    window = rasterio.windows.Window(cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)
    labels: np.ndarray = rasterio.features.rasterize(
        zip(footprints.geometries(hits, info.crs), range(1, hits.size + 1), strict=True),
        out_shape=(window.height, window.width),
        transform=rasterio.windows.transform(window, info.transform),
        fill=0,
        dtype="uint16" if hits.size < np.iinfo(np.uint16).max else "int32",
    )
    return labels


@dataclass(frozen=True)
class _Counts:
    """Per-footprint sums over the blocks, indexed by footprint.

    ``classes`` holds, per epoch, an ``(n, K + 1)`` count of each class (the last column: no class).
    """

    pixels: np.ndarray
    changed: np.ndarray
    probability: np.ndarray
    classes: dict[str, np.ndarray]

    @classmethod
    def zeros(cls, n: int, k: int, scene_pixels: int) -> _Counts:
        # No footprint counts more pixels than the scene has: int32 class counts when that fits.
        dtype = np.int32 if scene_pixels < np.iinfo(np.int32).max else np.int64
        return cls(
            np.zeros(n, np.int64),
            np.zeros(n, np.int64),
            np.zeros(n, np.float64),
            {epoch: np.zeros((n, k + 1), dtype) for epoch in _EPOCHS},
        )

    def add(self, hits: np.ndarray, labels: np.ndarray, read: Callable[[str], np.ndarray]) -> None:
        """Add one block: ``labels`` from :func:`_rasterise`, ``read(layer)`` the block of a layer."""
        m = hits.size
        change = read("change")
        valid = (labels > 0) & (change != _NODATA)
        index = labels[valid].astype(np.intp) - 1
        self.pixels[hits] += np.bincount(index, minlength=m)
        self.changed[hits] += np.bincount(index[change[valid] == 1], minlength=m)
        del change
        probability = np.nan_to_num(read("change_probability")[valid])
        self.probability[hits] += np.bincount(index, weights=probability, minlength=m)
        del probability
        k = self.classes["before"].shape[1] - 1
        for epoch in _EPOCHS:
            keys = index * (k + 1) + np.minimum(read(f"class_{epoch}")[valid], k)
            self.classes[epoch][hits] += np.bincount(keys, minlength=m * (k + 1)).reshape(m, k + 1)


def _majority(majority: np.ndarray, pixels: np.ndarray, names: np.ndarray) -> np.ndarray:
    """Each footprint's majority class name ("" without pixels)."""
    out = np.full(len(pixels), "", dtype=object)
    counted = pixels > 0
    out[counted] = names[majority[counted]]
    return out


def _summary(footprints: Footprints, m: FeatureMeasures, threshold: float) -> dict[str, dict[str, int]]:
    """Counts of footprints by status, and affected, in all and per zone (zones in name order)."""
    status, fraction, _ = _status(m, slice(None))
    affected = (m.pixels > 0) & (np.nan_to_num(fraction) >= threshold)
    codes = footprints.zones.indices.to_numpy()
    names = footprints.zones.dictionary.to_pylist()
    k = len(names)
    columns = {
        "footprints": np.bincount(codes, minlength=k),
        "covered": np.bincount(codes[status == 2], minlength=k),
        "partly_covered": np.bincount(codes[status == 1], minlength=k),
        "not_covered": np.bincount(codes[status == 0], minlength=k),
        "affected": np.bincount(codes[affected], minlength=k),
    }
    summary = {"all": {key: int(counts.sum()) for key, counts in columns.items()}}
    for zone in sorted(range(k), key=lambda z: str(names[z])):
        if names[zone] != "all" and columns["footprints"][zone]:
            summary[str(names[zone])] = {key: int(counts[zone]) for key, counts in columns.items()}
    return summary


def write_feature_impact(
    impact: FeatureImpact, parquet: Path, geojson: Path, summary: Path
) -> tuple[Path, Path, Path]:
    """Write the table as GeoParquet (geometry in its CRS) and GeoJSON (WGS84), and the summary JSON.

    Each file is written beside its final name and moved into place, so a reader never sees a
    half-written one.
    """
    meta = {
        "threshold": impact.threshold,
        "columns": {
            "status": f"{COVERED}: data on >= {COVERED_SHARE:.0%} of the area on both dates; {PARTLY_COVERED}: "
            f"on less; {NOT_COVERED}: on none (outside the imagery or its nodata), never counted unchanged",
            "changed_fraction": "changed pixels / pixels with data inside the footprint",
            "affected": f"covered or partly covered and changed_fraction >= {impact.threshold:g}",
        },
    }
    footprints = impact.footprints
    types: set[int] = set()
    for _, shapes in footprints.chunks():
        types.update(shapely.get_type_id(shapes).tolist())
    geo = {
        "version": "1.1.0",
        "primary_column": "geometry",
        "columns": {
            "geometry": {
                "encoding": "WKB",
                "geometry_types": [{3: "Polygon", 6: "MultiPolygon"}[t] for t in sorted(types)],
                "crs": footprints.crs.to_json_dict(),
            }
        },
    }
    metadata = {b"geo": json.dumps(geo).encode(), b"seg2change": json.dumps(meta).encode()}
    with replace_atomically(parquet) as tmp:
        _write_geoparquet(impact, tmp, metadata)
    with replace_atomically(geojson) as tmp:
        _write_geojson(impact, tmp)
    with replace_atomically(summary) as tmp:
        tmp.write_text(json.dumps({**meta, "summary": impact.summary}, indent=2))
    return parquet, geojson, summary


#: Rows per row group of the GeoParquet: the file is streamed, a row group at a time (Arrow's
#: writer holds about 2 KiB per row of a row group while it encodes it).
_PARQUET_ROWS = 5_000


def _write_geoparquet(impact: FeatureImpact, path: Path, metadata: Mapping[bytes, bytes]) -> None:
    n = len(impact.footprints)
    writer: pq.ParquetWriter | None = None
    try:
        for start in range(0, n, _PARQUET_ROWS) or range(1):
            stop = min(start + _PARQUET_ROWS, n)
            table = pa.Table.from_pandas(impact.rows(start, stop), preserve_index=False)
            wkb = impact.footprints.wkb.slice(start, stop - start).cast(pa.binary())
            table = table.append_column("geometry", wkb)
            table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
            del table
            release_freed_memory()
    finally:
        if writer is not None:
            writer.close()


#: Rows converted to GeoJSON at a time: the file is streamed, so memory does not grow with the table.
_GEOJSON_ROWS = 1_000


def _write_geojson(impact: FeatureImpact, path: Path) -> None:
    to_wgs84 = CRS.from_user_input("OGC:CRS84")
    n = len(impact.footprints)
    with path.open("w") as out:
        out.write('{"type": "FeatureCollection", "features": [')
        for start in range(0, n, _GEOJSON_ROWS):
            rows = impact.rows(start, min(start + _GEOJSON_ROWS, n))
            shapes = shapely.to_geojson(
                impact.footprints.geometries(slice(start, start + _GEOJSON_ROWS), to_wgs84)
            )
            records = rows.astype(object).where(rows.notna(), None).to_dict("records")
            for i, (row, shape) in enumerate(zip(records, shapes, strict=True)):
                head = "\n" if start + i == 0 else ",\n"
                properties = json.dumps(row, default=_plain)
                identifier = json.dumps(row["id"], default=_plain)
                out.write(
                    f'{head}{{"type": "Feature", "id": {identifier}, "properties": {properties}, "geometry": {shape}}}'
                )
        out.write("\n]}\n")


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON")
