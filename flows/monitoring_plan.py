"""What one monitoring run computes: its periods, its regions, and each region's job or sequence.

Built and validated before any work (the command line builds it before Prefect and the engine
load), so that a bad region, job template or sequence is refused at once, naming the region.

Two modes
---------
``pairs``
    Each run writes a separate two-date job per region: ``<output>/<region>/<period>``.
``sequence``
    Each run appends the period just ended to one sequence per region,
    ``<output>/<region>/sequence`` (:mod:`flows.region_sequence`): only the new pair is computed,
    and the sequence cube tells when things changed and how often.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Literal, get_args

from flows.region_sequence import RegionSequence, region_sequence
from flows.regions import (
    Cadence,
    Period,
    Region,
    monitoring_periods,
    region_job,
    regions_from_job_files,
    regions_from_zones,
)
from pipeline.errors import JobSpecError
from pipeline.spec import JobSpec

__all__ = ["DEFAULT_MODE", "MonitoringMode", "MonitoringPlan", "monitoring_plan"]

MonitoringMode = Literal["pairs", "sequence"]
#: The mode of a monitoring run that names none: a two-date job per region and period, the layout
#: that existing schedules and their outputs already have.
DEFAULT_MODE: MonitoringMode = "pairs"


@dataclass(frozen=True)
class MonitoringPlan:
    """What one monitoring run computes.

    Attributes
    ----------
    before, after
        The period before and the period just ended.
    regions
        The regions, in the order given.
    jobs
        ``pairs`` mode: each region's two-date job (empty in ``sequence`` mode).
    mode
        ``pairs`` or ``sequence``.
    sequences
        ``sequence`` mode: each region's sequence as this run extends it (empty in ``pairs`` mode).
    """

    before: Period
    after: Period
    regions: list[Region]
    jobs: dict[str, JobSpec]
    mode: MonitoringMode = DEFAULT_MODE
    sequences: dict[str, RegionSequence] = field(default_factory=dict)


def monitoring_plan(
    zones: str | None = None,
    base_job: str | None = None,
    job_files: Sequence[str] | None = None,
    output: str | None = None,
    cadence: Cadence = "monthly",
    run_date: date | None = None,
    zones_crs: str = "EPSG:4326",
    mode: MonitoringMode = DEFAULT_MODE,
    force: bool = False,
) -> MonitoringPlan:
    """Build and validate every region's work of a monitoring run (see :func:`flows.monitoring.monitoring_flow`).

    Raises
    ------
    JobSpecError
        Bad regions, job files, template, mode or sequence, naming the region and the fix.
    OutputExistsError
        ``sequence`` mode: a region's sequence cube was made from another base job (without ``force``).
    """
    if mode not in get_args(MonitoringMode):
        raise JobSpecError(
            f"monitoring mode {mode!r} is unknown; use 'sequence' (append each period to one sequence "
            "per region) or 'pairs' (a separate two-date job per period)"
        )
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
    if mode == "sequence":
        sequences = {r.name: region_sequence(r, before, after, cadence, force=force) for r in regions}
        return MonitoringPlan(before, after, regions, {}, mode, sequences)
    jobs = {region.name: region_job(region, before, after) for region in regions}
    return MonitoringPlan(before, after, regions, jobs, mode)
