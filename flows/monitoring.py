"""Regional monitoring: change over the period just ended, for named regions, on a schedule.

Each run compares the period that just ended with the one before it (a run on 2024-07-03 with the
monthly cadence compares June 2024, the *after* window, with May 2024, the *before* window), for
every region, concurrently. Regions come from a GeoJSON of zones and a base job template (one job
per zone: the zone is the job's AOI) or from a list of job files (one region per file, named by
the file's stem). Each region's outputs go to ``<base>/<region>/<period>`` (``<period>`` such as
``2024-06``), so a run is idempotent: a region whose change cube is complete and whose STAC item is
published for that period is skipped, with no inference at all. The run's summary (statistics per
region, links to the outputs and quick-looks) is published as Prefect artifacts.
"""

from __future__ import annotations

import calendar
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.tasks import published_outputs, submit_job, summarise_statistics, task_runner
from pipeline.errors import JobSpecError
from pipeline.spec import JobSpec, load_job
from pipeline.storage import Location

__all__ = [
    "MONITORING_ARTIFACT_KEY",
    "Cadence",
    "Period",
    "Region",
    "monitoring_flow",
    "monitoring_periods",
    "region_job",
    "regions_from_job_files",
    "regions_from_zones",
]

Cadence = Literal["monthly", "quarterly", "yearly"]
_MONTHS: dict[str, int] = {"monthly": 1, "quarterly": 3, "yearly": 12}
#: Key of the run summary artifacts (the table has ``-table`` appended).
MONITORING_ARTIFACT_KEY = "seg2change-monitoring"


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
    if cadence not in _MONTHS:
        raise JobSpecError(f"cadence {cadence!r} is unknown; use one of {', '.join(_MONTHS)}")
    span = _MONTHS[cadence]
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
        Folder holding the region's outputs, one subfolder per period.
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


def _slug(value: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", value.strip()).strip("-.")
    return slug or "region"


def _file_output(job_file: Path) -> str:
    try:
        doc = yaml.safe_load(job_file.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise JobSpecError(
            f"job file {job_file} cannot be read ({exc}); check the path and its YAML"
        ) from None
    output = doc.get("output") if isinstance(doc, dict) else None
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


def _ha(m2: float) -> float:
    return round(m2 / 10_000.0, 4)


def _publish_artifacts(before: Period, after: Period, rows: list[dict[str, Any]]) -> None:
    table = []
    for row in rows:
        summary = row.get("summary") or {}
        targets = summary.get("targets", {})
        table.append(
            {
                "region": row["region"],
                "period": after.label,
                "status": row["status"],
                "changed_ha": _ha(summary.get("changed_area_m2", 0.0)) if summary else None,
                **{f"{t}_gained_ha": _ha(v["gained_m2"]) for t, v in targets.items()},
                **{f"{t}_lost_ha": _ha(v["lost_m2"]) for t, v in targets.items()},
                "stac_item": (row.get("outputs") or {}).get("stac_item"),
                "quicklook": (row.get("outputs") or {}).get("quicklook"),
            }
        )
    create_table_artifact(
        key=f"{MONITORING_ARTIFACT_KEY}-table",
        table=table,
        description=f"seg2change monitoring {after.label} vs {before.label}: statistics per region",
    )
    lines = [
        f"# seg2change monitoring: {after.label} vs {before.label}",
        "",
        f"After window {after.window()}, before window {before.window()}.",
        "",
        "| region | status | changed (ha) | per target: gained / lost (ha) | outputs |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        summary = row.get("summary") or {}
        outputs = row.get("outputs") or {}
        targets = ", ".join(
            f"{t}: +{_ha(v['gained_m2'])} / -{_ha(v['lost_m2'])}"
            for t, v in summary.get("targets", {}).items()
        )
        links = " · ".join(
            f"[{name}](file://{outputs[name]})"
            for name in ("stac_item", "statistics_json", "quicklook")
            if outputs.get(name)
        )
        changed = _ha(summary["changed_area_m2"]) if summary else "-"
        detail = row.get("error", links) or "-"
        lines.append(f"| {row['region']} | {row['status']} | {changed} | {targets or '-'} | {detail} |")
    create_markdown_artifact(
        key=MONITORING_ARTIFACT_KEY,
        markdown="\n".join(lines) + "\n",
        description=f"seg2change monitoring run summary for {after.label}",
    )


@flow(
    name="seg2change-monitoring",
    flow_run_name="monitoring-{cadence}",
    task_runner=task_runner(),
    log_prints=True,
)
def monitoring_flow(
    zones: str | None = None,
    base_job: str | None = None,
    job_files: list[str] | None = None,
    output: str | None = None,
    cadence: Cadence = "monthly",
    run_date: date | None = None,
    zones_crs: str = "EPSG:4326",
    force: bool = False,
) -> dict[str, Any]:
    """Compute the change of the period just ended against the one before, for every region.

    Parameters
    ----------
    zones, base_job
        A GeoJSON FeatureCollection of regions and the job template applied to each
        (:func:`regions_from_zones`).
    job_files
        Or: one job file per region (:func:`regions_from_job_files`).
    output
        Base output folder (default: the job files' ``output``); region ``r`` and period ``p``
        write to ``<output>/<r>/<p>``.
    cadence
        ``monthly`` (default), ``quarterly`` or ``yearly``.
    run_date
        Day of the run (default: today, UTC); the *after* period is the one that ended before it.
    zones_crs
        CRS of the zone coordinates.
    force
        Recompute regions whose outputs exist.

    Returns
    -------
    dict
        ``before``, ``after`` (period labels and windows) and ``regions``: per region its
        ``region``, ``output``, ``status`` (``computed``, ``skipped`` or ``failed``), ``skipped``,
        ``inference`` (block counts, None when skipped), ``outputs`` (paths) and ``summary``
        (:func:`flows.tasks.summarise_statistics`).

    Raises
    ------
    JobSpecError
        Bad regions or job template, before any work starts.
    RuntimeError
        When a region failed (after the others finished and the artifacts were published).
    """
    logger = get_run_logger()
    day = run_date or datetime.now(UTC).date()
    before, after = monitoring_periods(day, cadence)
    if (zones is None) == (not job_files):
        raise JobSpecError("give either zones and base_job, or job_files (not both, not neither)")
    if zones is not None:
        if base_job is None:
            raise JobSpecError("zones need a base_job template (a job YAML without aoi and windows)")
        regions = regions_from_zones(zones, base_job, output, zones_crs)
    else:
        regions = regions_from_job_files(job_files or [], output)
    jobs = {region.name: region_job(region, before, after) for region in regions}  # all valid first
    logger.info("monitoring %d region(s): %s vs %s", len(regions), after.label, before.label)

    submitted: dict[str, tuple[Any, Any]] = {}
    rows: dict[str, dict[str, Any]] = {}
    for region in regions:
        job = jobs[region.name]
        done = None if force else published_outputs(job.output)
        if done is not None:
            logger.info("region %s: outputs for %s exist, skipped", region.name, after.label)
            rows[region.name] = {
                "region": region.name,
                "output": job.output,
                "status": "skipped",
                "skipped": True,
                "inference": None,
                "outputs": done,
                "summary": summarise_statistics(done["statistics_json"]),
            }
        else:
            submitted[region.name] = submit_job(job, after.label, force=force)

    failed: list[str] = []
    for name, (infer, published) in submitted.items():
        published.wait()
        row: dict[str, Any] = {"region": name, "output": jobs[name].output, "skipped": False}
        if published.state.is_completed():
            outputs = published.result()
            row.update(
                status="computed", inference=infer.result(), outputs=outputs, summary=outputs["summary"]
            )
        else:
            state = published.state if not infer.state.is_failed() else infer.state
            row.update(status="failed", inference=None, outputs=None, summary=None, error=state.message)
            failed.append(name)
        rows[name] = row

    ordered = [rows[region.name] for region in regions]
    _publish_artifacts(before, after, ordered)
    if failed:
        raise RuntimeError(
            f"monitoring {after.label}: region(s) {', '.join(failed)} failed; see their task runs"
        )
    return {
        "cadence": cadence,
        "before": {"label": before.label, "window": before.window()},
        "after": {"label": after.label, "window": after.window()},
        "regions": ordered,
    }
