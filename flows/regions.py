"""The regions and periods of a monitoring run, and each region's job fields.

Pure functions, without Prefect: :mod:`flows.monitoring_plan` builds a run's plan from them, and
the command line builds it first, so that a bad region or job template is refused before Prefect
and the engine are imported.
"""

from __future__ import annotations

import calendar
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.errors import JobSpecError
from pipeline.spec import JobSpec, _resolve_relative, load_job
from pipeline.storage import Location

__all__ = [
    "SEQUENCE_DIR",
    "Cadence",
    "Period",
    "Region",
    "monitoring_periods",
    "period_of",
    "periods_from",
    "region_base",
    "region_job",
    "regions_from_job_files",
    "regions_from_zones",
]

Cadence = Literal["monthly", "quarterly", "yearly"]
#: Folder of a region's sequence in its output folder (``<output>/<region>/sequence``).
SEQUENCE_DIR = "sequence"
_MONTHS: dict[str, int] = {"monthly": 1, "quarterly": 3, "yearly": 12}


@dataclass(frozen=True)
class Period:
    """A calendar period: its label and first and last day (both included)."""

    label: str
    start: date
    end: date

    def window(self) -> str:
        """The period as a job's time window string ``START/END``."""
        return f"{self.start.isoformat()}/{self.end.isoformat()}"


def _shift_months(year: int, month: int, months: int) -> tuple[int, int]:
    index = year * 12 + (month - 1) + months
    return index // 12, index % 12 + 1


def _period(year: int, month: int, cadence: Cadence) -> Period:
    span = _MONTHS[cadence]
    end_year, end_month = _shift_months(year, month, span - 1)
    end = date(end_year, end_month, calendar.monthrange(end_year, end_month)[1])
    if cadence == "monthly":
        label = f"{year:04d}-{month:02d}"
    elif cadence == "quarterly":
        label = f"{year:04d}-Q{(month - 1) // 3 + 1}"
    else:
        label = f"{year:04d}"
    return Period(label, date(year, month, 1), end)


def _check_cadence(cadence: str) -> int:
    if cadence not in _MONTHS:
        raise JobSpecError(f"cadence {cadence!r} is unknown; use one of {', '.join(_MONTHS)}")
    return _MONTHS[cadence]


def period_of(day: date, cadence: Cadence = "monthly") -> Period:
    """Return the period of the cadence that contains ``day``.

    Examples
    --------
    >>> period_of(date(2024, 8, 20), "quarterly").label
    '2024-Q3'
    """
    span = _check_cadence(cadence)
    return _period(day.year, day.month - (day.month - 1) % span, cadence)


def periods_from(first: Period, last: Period, cadence: Cadence = "monthly") -> list[Period]:
    """Return the consecutive periods of the cadence from ``first`` to ``last``, both included.

    Examples
    --------
    >>> [p.label for p in periods_from(period_of(date(2024, 11, 5)), period_of(date(2025, 1, 5)))]
    ['2024-11', '2024-12', '2025-01']
    """
    span = _check_cadence(cadence)
    out: list[Period] = []
    year, month = first.start.year, first.start.month
    while date(year, month, 1) <= last.start:
        out.append(_period(year, month, cadence))
        year, month = _shift_months(year, month, span)
    return out


def monitoring_periods(run_date: date, cadence: Cadence = "monthly") -> tuple[Period, Period]:
    """Return the (before, after) periods of a run: the period just ended and the one before it.

    Parameters
    ----------
    run_date
        The day of the run.
    cadence
        ``"monthly"``, ``"quarterly"`` (calendar quarters) or ``"yearly"``.

    Examples
    --------
    >>> before, after = monitoring_periods(date(2024, 7, 3))
    >>> before.label, after.label
    ('2024-05', '2024-06')
    """
    span = _check_cadence(cadence)
    # First month of the period that contains the run date, then step back one and two periods.
    first = run_date.month - (run_date.month - 1) % span
    after_year, after_month = _shift_months(run_date.year, first, -span)
    before_year, before_month = _shift_months(run_date.year, first, -2 * span)
    return _period(before_year, before_month, cadence), _period(after_year, after_month, cadence)


@dataclass(frozen=True)
class Region:
    """A monitored region: its name, its job file and the job fields that differ from the file.

    Attributes
    ----------
    name
        Region name (a slug: letters, digits, ``-``, ``_``, ``.``); the folder of its outputs.
    job_file
        The job (template) file.
    base_output
        Folder holding the region's outputs: one subfolder per period, or its sequence
        (:data:`SEQUENCE_DIR`).
    overrides
        Job fields replacing the file's (the AOI, for zones).
    """

    name: str
    job_file: str
    base_output: str
    overrides: dict[str, Any]

    def output(self, period: Period) -> str:
        """The output folder of one period: ``<base>/<period>``."""
        return str(Location(self.base_output) / period.label)

    def sequence_output(self) -> str:
        """The folder of the region's sequence: ``<base>/sequence``."""
        return str(Location(self.base_output) / SEQUENCE_DIR)


def _slug(value: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", value.strip()).strip("-.")
    return slug or "region"


def _read_job_file(job_file: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(job_file.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise JobSpecError(
            f"job file {job_file} cannot be read ({exc}); check the path and its YAML"
        ) from None
    if not isinstance(doc, dict):
        raise JobSpecError(f"job file {job_file} must hold a mapping of fields, not {type(doc).__name__}")
    return doc


def _file_output(job_file: Path) -> str:
    output = _read_job_file(job_file).get("output")
    if not isinstance(output, str) or not output.strip():
        raise JobSpecError(
            f"job file {job_file} names no 'output' and the flow was given none; pass output=<folder>"
        )
    if "://" in output or Path(output).is_absolute():
        return output
    return str((job_file.parent / output).resolve())


def regions_from_zones(
    zones: str | Path, base_job: str | Path, output: str | None = None, zones_crs: str = "EPSG:4326"
) -> list[Region]:
    """One region per feature of a GeoJSON FeatureCollection, each a copy of a base job.

    Parameters
    ----------
    zones
        GeoJSON FeatureCollection of polygons; a feature's name is its ``name``, ``id`` or
        ``region`` property (or the feature's ``id``), else ``region-<n>``.
    base_job
        Job template YAML: every field but ``aoi``, ``before``, ``after`` (the flow sets them) and
        ``output`` (optional when ``output`` is given).
    output
        Base output folder; default: the template's ``output``. Region ``r`` writes to
        ``<output>/<r>/<period>``.
    zones_crs
        CRS of the zone coordinates (GeoJSON is WGS84 longitude/latitude).
    """
    path = Path(zones)
    if not path.is_file():
        raise JobSpecError(f"zones file {path} does not exist; give a GeoJSON FeatureCollection of polygons")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise JobSpecError(
            f"zones file {path} is not JSON ({exc}); give a GeoJSON FeatureCollection"
        ) from None
    features = doc.get("features") if isinstance(doc, dict) else None
    if doc.get("type") != "FeatureCollection" or not features:
        raise JobSpecError(f"zones file {path} must be a GeoJSON FeatureCollection with at least one polygon")
    template = Path(base_job)
    base = output or _file_output(template)
    regions: list[Region] = []
    for n, feature in enumerate(features):
        props = feature.get("properties") or {}
        raw = props.get("name") or props.get("id") or props.get("region") or feature.get("id")
        name = _slug(str(raw)) if raw is not None else f"region-{n}"
        regions.append(
            Region(
                name=name,
                job_file=str(template),
                base_output=str(Location(base) / name),
                overrides={"aoi": {"geometry": feature.get("geometry"), "crs": zones_crs}},
            )
        )
    _check_unique(regions)
    return regions


def regions_from_job_files(job_files: Sequence[str | Path], output: str | None = None) -> list[Region]:
    """One region per job file, named by the file's stem.

    Parameters
    ----------
    job_files
        Job YAML files (their ``before``/``after`` are replaced by the periods).
    output
        Base output folder; default: each file's ``output``. Region ``r`` writes to
        ``<output>/<r>/<period>``.
    """
    if not job_files:
        raise JobSpecError("no job files given; give at least one, or zones and a base job")
    regions = []
    for file in job_files:
        path = Path(file)
        if not path.is_file():
            raise JobSpecError(f"job file {path} does not exist; check the path")
        name = _slug(path.stem)
        base = output if output is not None else _file_output(path)
        regions.append(Region(name, str(path), str(Location(base) / name), {}))
    _check_unique(regions)
    return regions


def _check_unique(regions: Sequence[Region]) -> None:
    seen: set[str] = set()
    for region in regions:
        if region.name in seen:
            raise JobSpecError(
                f"two regions are named {region.name!r}; give each zone a distinct 'name' property "
                "(or each job file a distinct name)"
            )
        seen.add(region.name)


def region_job(region: Region, before: Period, after: Period) -> JobSpec:
    """The validated job of one region and period (``overwrite`` is off: outputs are never replaced)."""
    try:
        return load_job(
            region.job_file,
            **region.overrides,
            before=before.window(),
            after=after.window(),
            output=region.output(after),
        )
    except JobSpecError as exc:
        raise JobSpecError(f"region {region.name!r}: {exc}") from None


def region_base(region: Region) -> dict[str, Any]:
    """The job fields of a region without its windows and output: the base job of its sequence.

    The job file's fields, relative paths taken relative to the file as :func:`pipeline.spec.load_job`
    takes them, with the region's overrides; ``before``, ``after`` and ``output`` are left out (the
    sequence gives each pair its windows and output).

    Raises
    ------
    JobSpecError
        When the job file cannot be read or is not a mapping.
    """
    path = Path(region.job_file)
    doc = _resolve_relative(_read_job_file(path), path.parent)
    doc.update({key: value for key, value in region.overrides.items() if value is not None})
    return {key: value for key, value in doc.items() if key not in ("before", "after", "output")}
