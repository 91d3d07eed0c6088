"""Summary statistics of a change cube: changed area per target class and per transition, per zone.

Counts are made block by block from the finished change cube (one Zarr chunk of ``change``,
``transition`` and ``target_change`` in memory at a time), so memory does not grow with the area.
For the whole area and for each zone of an optional GeoJSON FeatureCollection, every block adds:

- pixels, valid pixels (data on both dates), nodata pixels and changed pixels (``change == 1``);
- per target class, the pixels where ``target_change`` is 1 (a change into or out of the class);
- per transition code ``before * K + after`` (``K`` classes), the changed pixels, decoded to the
  class names ``class_from -> class_to``. A code whose two classes are equal is a change the
  change model found where the segmenter saw the same class on both dates (a new building in a
  built-up area): its kind is ``class_unchanged``, named "changed, class unchanged (<class>)".

The long table (:data:`COLUMNS`, described for readers in :data:`COLUMN_DESCRIPTIONS`) has one row
per zone and

- kind ``changed``: all changed pixels (the changed total; ``target``, ``class_from`` and
  ``class_to`` empty);
- kind ``target``: change into or out of the class named in ``target`` (``class_from`` and
  ``class_to`` empty; a pixel that changed from one target class into another counts for both);
- kind ``transition``: changed pixels whose class went from ``class_from`` to another ``class_to``;
- kind ``class_unchanged``: changed pixels whose class stayed ``class_from`` (= ``class_to``).

The transition and class_unchanged rows add up to the changed total. ``label`` names each row in
words; ``area_m2`` and ``area_ha`` are the pixels' area in square metres and hectares. The Parquet
file's key-value metadata (``pyarrow.parquet.read_schema(path).metadata``) and the JSON's
``metadata`` carry the CRS (WKT and EPSG code), the pixel area, the job (name, windows,
fingerprint) and the models, and each column's description.

Areas are pixel counts times the pixel area (square metres from the grid's transform and CRS
unit). Zones may be in any CRS (a GeoJSON ``crs`` member names it; default WGS84 longitude/
latitude); each zone is reprojected to the grid (densified first) and rasterized onto each block
with :func:`rasterio.features.rasterize` (``all_touched=False``: a pixel belongs to a zone when its
centre lies inside), zone by zone, so overlapping zones each count their own pixels.

The long table is written as Parquet and, with the per-zone totals, as JSON;
:func:`statistics_table` renders it for a terminal with rich.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import rasterio.features
import rasterio.windows
import shapely
import shapely.geometry
import zarr
from numpy.typing import NDArray
from rich.table import Table
from rich.text import Text

from pipeline.change_cube import (
    ATTR_JOB,
    ATTR_MODELS,
    ATTR_SOFTWARE,
    TRANSITION_NO_CHANGE,
    UINT8_NODATA,
    ChangeCubeInfo,
)
from pipeline.errors import PublishError
from pipeline.publish.cogs import block_windows
from pipeline.publish.legend import transition_label
from pipeline.publish.zones import ALL_ZONE, Zone
from pipeline.storage import Location, LocationLike, replace_atomically

__all__ = [
    "ALL_ZONE",
    "COLUMNS",
    "COLUMN_DESCRIPTIONS",
    "ChangeStatistics",
    "StatisticsRow",
    "ZoneTotals",
    "compute_statistics",
    "read_statistics",
    "statistics_metadata",
    "statistics_table",
    "write_statistics",
]

#: Square metres in a hectare.
M2_PER_HA = 10_000.0

Kind = Literal["changed", "target", "transition", "class_unchanged"]

#: Columns of the long table, in order.
COLUMNS = ("zone", "kind", "target", "class_from", "class_to", "label", "pixels", "area_m2", "area_ha")
#: What each column holds (written into the Parquet and JSON files for their readers).
COLUMN_DESCRIPTIONS: Mapping[str, str] = {
    "zone": f"zone id; {ALL_ZONE!r} is the whole area",
    "kind": "changed (all changed pixels), target (change into or out of a target class), transition "
    "(changed, class_from -> another class_to), class_unchanged (changed, class stayed class_from)",
    "target": "the target class of a 'target' row, else empty",
    "class_from": "class on the before date of a transition or class_unchanged row, else empty",
    "class_to": "class on the after date of a transition or class_unchanged row, else empty",
    "label": "the row in words",
    "pixels": "changed pixels",
    "area_m2": "area of those pixels in square metres (m2)",
    "area_ha": "area of those pixels in hectares (ha, 10,000 m2)",
}


@dataclass(frozen=True)
class StatisticsRow:
    """One row of the long statistics table.

    Attributes
    ----------
    zone
        Zone id (:data:`ALL_ZONE` for the whole area).
    kind
        ``"changed"`` (the changed total), ``"target"``, ``"transition"`` or ``"class_unchanged"``
        (see the module's notes).
    target
        The target class of a ``"target"`` row, else None.
    class_from, class_to
        Class names on the before and after dates of a ``"transition"`` or ``"class_unchanged"``
        row, else None.
    label
        The row in words.
    pixels, area_m2, area_ha
        Changed pixels and their area.
    """

    zone: str
    kind: Kind
    target: str | None
    class_from: str | None
    class_to: str | None
    label: str
    pixels: int
    area_m2: float
    area_ha: float


@dataclass(frozen=True)
class ZoneTotals:
    """Totals of one zone: pixels inside it, valid and nodata among them, and changed pixels/area."""

    zone: str
    pixels: int
    valid_pixels: int
    nodata_pixels: int
    changed_pixels: int
    changed_area_m2: float
    changed_area_ha: float


@dataclass(frozen=True)
class ChangeStatistics:
    """The statistics of one change cube.

    Attributes
    ----------
    rows
        The long table: per zone, the changed total, the target rows (every target, in target
        order) and then the transition and class_unchanged rows (those present, most pixels first).
    totals
        Per zone totals, the whole area first.
    pixel_area_m2
        Area of one pixel.
    classes, targets
        Class and target labels.
    crs
        The grid's CRS (WKT).
    metadata
        What a reader of the files needs besides the table (CRS, pixel area, job, models...), as
        strings: the Parquet key-value metadata and the JSON's ``metadata``.
    """

    rows: tuple[StatisticsRow, ...]
    totals: tuple[ZoneTotals, ...]
    pixel_area_m2: float
    classes: tuple[str, ...]
    targets: tuple[str, ...]
    crs: str
    metadata: Mapping[str, str] = field(default_factory=dict)

    COLUMNS = COLUMNS

    def to_frame(self) -> pd.DataFrame:
        """The long table as a DataFrame with :data:`COLUMNS`."""
        frame = pd.DataFrame([asdict(r) for r in self.rows], columns=list(COLUMNS))
        text = {c: "string" for c in ("zone", "kind", "target", "class_from", "class_to", "label")}
        return frame.astype({**text, "pixels": "int64", "area_m2": "float64", "area_ha": "float64"})

    def to_arrow(self) -> pa.Table:
        """The long table as an Arrow table carrying :attr:`metadata` and the column descriptions."""
        table = pa.Table.from_pandas(self.to_frame(), preserve_index=False)
        fields = [f.with_metadata({"description": COLUMN_DESCRIPTIONS[f.name]}) for f in table.schema]
        metadata = {**(table.schema.metadata or {}), **self.metadata}
        return table.cast(pa.schema(fields, metadata=metadata))

    def to_json_dict(self) -> dict[str, Any]:
        """The JSON document: pixel area, classes, targets, metadata, columns, per-zone totals and
        the rows."""
        return {
            "pixel_area_m2": self.pixel_area_m2,
            "classes": list(self.classes),
            "targets": list(self.targets),
            "crs": self.crs,
            "metadata": dict(self.metadata),
            "columns": dict(COLUMN_DESCRIPTIONS),
            "zones": {t.zone: {k: v for k, v in asdict(t).items() if k != "zone"} for t in self.totals},
            "rows": [asdict(r) for r in self.rows],
        }

    def zone_rows(self, zone: str) -> list[StatisticsRow]:
        """The rows of one zone."""
        return [r for r in self.rows if r.zone == zone]


# --------------------------------------------------------------------------- counting


@dataclass
class _Counts:
    pixels: int
    valid: int
    changed: int
    transitions: NDArray[np.int64]
    targets: NDArray[np.int64]

    @classmethod
    def empty(cls, n_codes: int, n_targets: int) -> _Counts:
        return cls(0, 0, 0, np.zeros(n_codes, np.int64), np.zeros(n_targets, np.int64))

    def add(
        self,
        inside: NDArray[np.bool_] | None,
        change: NDArray[np.uint8],
        transition: NDArray[np.uint16],
        target_change: NDArray[np.uint8],
    ) -> None:
        valid = change != UINT8_NODATA
        if inside is not None:
            valid &= inside
            self.pixels += int(inside.sum())
        else:
            self.pixels += change.size
        self.valid += int(valid.sum())
        self.changed += int((valid & (change == 1)).sum())
        codes = transition[valid & (transition < TRANSITION_NO_CHANGE)]
        if codes.size:
            if int(codes.max()) >= self.transitions.size:
                raise PublishError(
                    f"transition code {int(codes.max())} exceeds the {self.transitions.size} codes of "
                    f"{math.isqrt(self.transitions.size)} classes; the change cube is inconsistent, recompute it"
                )
            self.transitions += np.bincount(codes, minlength=self.transitions.size).astype(np.int64)
        self.targets += ((target_change == 1) & valid[None]).reshape(len(self.targets), -1).sum(axis=1)


def compute_statistics(
    info: ChangeCubeInfo,
    *,
    zones: Sequence[Zone] = (),
    progress: Callable[[str, int, int], None] | None = None,
) -> ChangeStatistics:
    """Count changed pixels and areas per target class and per transition, for the area and each zone.

    Parameters
    ----------
    info
        The change cube (:func:`~pipeline.change_cube.describe_change_cube`).
    zones
        Zones in the grid's CRS (:func:`~pipeline.publish.zones.load_zones`).
    progress
        Called as ``progress("statistics", done, total)`` after each block.

    Returns
    -------
    ChangeStatistics
    """
    counts = _count_blocks(info, zones, progress)
    rows: list[StatisticsRow] = []
    totals: list[ZoneTotals] = []
    for zone_id, zone_counts in counts.items():
        totals.append(_zone_totals(zone_id, zone_counts, info.pixel_area_m2))
        rows.extend(_zone_rows(info, zone_id, zone_counts))
    return ChangeStatistics(
        rows=tuple(rows),
        totals=tuple(totals),
        pixel_area_m2=info.pixel_area_m2,
        classes=info.classes,
        targets=info.targets,
        crs=info.crs.to_wkt(),
        metadata=statistics_metadata(info),
    )


def _count_blocks(
    info: ChangeCubeInfo, zones: Sequence[Zone], progress: Callable[[str, int, int], None] | None
) -> dict[str, _Counts]:
    """The counts of the whole area and of each zone, read block by block from the change cube."""
    k = len(info.classes)
    arrays = {
        name: zarr.open_array(info.path.zarr_store(read_only=True), path=name, mode="r")
        for name in ("change", "transition", "target_change")
    }
    counts = {z: _Counts.empty(k * k, len(info.targets)) for z in [ALL_ZONE, *(z.id for z in zones)]}
    windows = list(block_windows(info.height, info.width, info.chunk))
    for n, (rows, cols) in enumerate(windows):
        change = np.asarray(arrays["change"][rows, cols])
        transition = np.asarray(arrays["transition"][rows, cols])
        target_change = np.asarray(arrays["target_change"][:, rows, cols])
        counts[ALL_ZONE].add(None, change, transition, target_change)
        window = rasterio.windows.Window(
            cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start
        )
        box = shapely.box(*rasterio.windows.bounds(window, info.transform))
        for zone in zones:
            if not zone.geometry.intersects(box):
                continue
            inside = rasterio.features.rasterize(
                [(zone.geometry, 1)],
                out_shape=change.shape,
                transform=rasterio.windows.transform(window, info.transform),
                all_touched=False,
                dtype="uint8",
            ).astype(bool)
            counts[zone.id].add(inside, change, transition, target_change)
        if progress is not None:
            progress("statistics", n + 1, len(windows))
    return counts


def _zone_totals(zone: str, counts: _Counts, area: float) -> ZoneTotals:
    return ZoneTotals(
        zone=zone,
        pixels=counts.pixels,
        valid_pixels=counts.valid,
        nodata_pixels=counts.pixels - counts.valid,
        changed_pixels=counts.changed,
        changed_area_m2=counts.changed * area,
        changed_area_ha=counts.changed * area / M2_PER_HA,
    )


def _zone_rows(info: ChangeCubeInfo, zone: str, counts: _Counts) -> list[StatisticsRow]:
    """The rows of one zone: the changed total, every target, then the transitions (most pixels first)."""
    area = info.pixel_area_m2
    k = len(info.classes)

    def row(kind: Kind, label: str, pixels: int, **names: str | None) -> StatisticsRow:
        return StatisticsRow(
            zone=zone,
            kind=kind,
            target=names.get("target"),
            class_from=names.get("class_from"),
            class_to=names.get("class_to"),
            label=label,
            pixels=pixels,
            area_m2=pixels * area,
            area_ha=pixels * area / M2_PER_HA,
        )

    rows = [row("changed", "changed (all classes)", counts.changed)]
    for target, pixels in zip(info.targets, counts.targets.tolist(), strict=True):
        rows.append(row("target", f"{target}: changed into or out of", pixels, target=target))
    transitions = counts.transitions
    order = sorted(np.flatnonzero(transitions).tolist(), key=lambda code: (-int(transitions[code]), code))
    for code in order:
        before, after = divmod(code, k)
        rows.append(
            row(
                "class_unchanged" if before == after else "transition",
                transition_label(info.classes, code),
                int(transitions[code]),
                class_from=info.classes[before],
                class_to=info.classes[after],
            )
        )
    return rows


def statistics_metadata(info: ChangeCubeInfo) -> dict[str, str]:
    """What a reader of the statistics files needs besides the table, as strings.

    Keys: ``crs`` (WKT), ``crs_epsg`` (``EPSG:<code>`` or empty), ``pixel_area_m2``, ``area_units``,
    ``classes`` and ``targets`` (JSON lists), ``job_name``, ``before``, ``after`` (the job's
    windows, ``start/end``), ``fingerprint`` (of the job's inference), ``models`` (JSON: name,
    source, checkpoint SHA-256 of each), ``software`` and ``transition_codes``. A job has no name
    field: ``job_name`` is the name of its output folder (``berlin`` for ``./out/berlin`` or
    ``s3://bucket/jobs/berlin``), not the whole path, so the files are the same wherever the
    folder is written or moved (as the STAC's relative hrefs are).
    """
    try:
        job = json.loads(str(info.attrs.get(ATTR_JOB, "{}")))
    except json.JSONDecodeError:
        job = {}

    def window(name: str) -> str:
        value = job.get(name) or {}
        return f"{value.get('start', '')}/{value.get('end', '')}" if value else ""

    epsg = info.crs.to_epsg()
    return {
        "crs": info.crs.to_wkt(),
        "crs_epsg": f"EPSG:{epsg}" if epsg else "",
        "pixel_area_m2": repr(info.pixel_area_m2),
        "area_units": "area_m2: square metres; area_ha: hectares (10,000 m2)",
        "classes": json.dumps(list(info.classes)),
        "targets": json.dumps(list(info.targets)),
        "job_name": str(job.get("output", "")).rstrip("/").rsplit("/", 1)[-1],
        "before": window("before"),
        "after": window("after"),
        "fingerprint": info.fingerprint,
        "models": str(info.attrs.get(ATTR_MODELS, "[]")),
        "software": str(info.attrs.get(ATTR_SOFTWARE, "")),
        "transition_codes": "class_before * K + class_after, K = len(classes); 65534 unchanged, 65535 nodata",
    }


# --------------------------------------------------------------------------- output


def write_statistics(stats: ChangeStatistics, parquet: Path, json_path: Path) -> tuple[Path, Path]:
    """Write the long table as Parquet and the whole document as JSON (each replaced atomically)."""
    with replace_atomically(parquet) as tmp:
        pq.write_table(stats.to_arrow(), tmp)
    with replace_atomically(json_path) as tmp:
        tmp.write_text(json.dumps(stats.to_json_dict(), indent=2) + "\n")
    return parquet, json_path


def read_statistics(json_path: LocationLike) -> ChangeStatistics:
    """Read the statistics that :func:`write_statistics` wrote as JSON (a local path or a URL).

    Raises
    ------
    PublishError
        The file is missing or is not a statistics document; publish the change cube again.
    """
    try:
        doc = json.loads(Location.parse(json_path).read_text())
        return ChangeStatistics(
            rows=tuple(StatisticsRow(**row) for row in doc["rows"]),
            totals=tuple(ZoneTotals(zone=zone, **totals) for zone, totals in doc["zones"].items()),
            pixel_area_m2=float(doc["pixel_area_m2"]),
            classes=tuple(doc["classes"]),
            targets=tuple(doc["targets"]),
            crs=str(doc["crs"]),
            metadata=dict(doc["metadata"]),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PublishError(
            f"cannot read the statistics {json_path} ({exc}); publish the change cube again"
        ) from None


def statistics_table(stats: ChangeStatistics, *, zone: str | None = None, limit: int | None = None) -> Table:
    """Render the statistics as a rich table.

    Parameters
    ----------
    stats
        The statistics.
    zone
        Show one zone only; default: every zone.
    limit
        Show at most this many transition rows per zone (the largest).

    Returns
    -------
    rich.table.Table
    """
    table = Table(title="changed area", show_lines=False)
    for name, justify in (
        ("zone", "left"),
        ("kind", "left"),
        ("what", "left"),
        ("pixels", "right"),
        ("area (ha)", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    zones = [t.zone for t in stats.totals if zone is None or t.zone == zone]
    for z in zones:
        shown = 0
        for row in stats.zone_rows(z):
            if row.kind in ("transition", "class_unchanged"):
                if limit is not None and shown >= limit:
                    continue
                shown += 1
            kind = Text(row.kind, style="bold") if row.kind == "changed" else row.kind
            table.add_row(z, kind, row.label, f"{row.pixels:,}", f"{row.area_ha:,.2f}")
        table.add_section()
    return table
