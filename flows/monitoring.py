"""Regional monitoring: change over the period just ended, for named regions, on a schedule.

Each run compares the period that just ended with the one before it (a run on 2024-07-03 with the
monthly cadence compares June 2024, the *after* window, with May 2024, the *before* window), for
every region, concurrently. Regions come from a GeoJSON of zones and a base job template (one job
per zone: the zone is the job's AOI) or from a list of job files (one region per file, named by
the file's stem). The ``mode`` says where each region's change goes (:mod:`flows.monitoring_plan`):

``pairs`` (default)
    A two-date job per region and period, in ``<base>/<region>/<period>`` (``<period>`` such as
    ``2024-06``), so a run is idempotent: a region whose change cube is complete and whose outputs
    are published for that period is skipped, with no inference at all.
``sequence``
    The period is appended to the region's one sequence, ``<base>/<region>/sequence``
    (:mod:`flows.region_sequence`): only the new pair is computed, a rerun computes nothing, missed
    periods are filled; the sequence cube says when things changed and how often.

The run's summary (statistics per region, links to the outputs and quick-looks, and in
``sequence`` mode the changed area of every period from the sequence cubes) is published as
Prefect artifacts.
"""

from __future__ import annotations

import contextlib
from datetime import date
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.monitoring_plan import DEFAULT_MODE, MonitoringMode, MonitoringPlan, monitoring_plan
from flows.monitoring_sequence import append_periods_task, period_table, published_summary
from flows.outputs import (
    inference_summary,
    publication_outputs,
    published_outputs,
    statistics_summary,
)
from flows.regions import (
    Cadence,
    Period,
    Region,
    monitoring_periods,
    region_job,
    regions_from_job_files,
    regions_from_zones,
)
from flows.tasks import SubmittedJob, submit_job, task_runner

__all__ = [
    "MONITORING_ARTIFACT_KEY",
    "Cadence",
    "MonitoringMode",
    "Period",
    "Region",
    "monitoring_flow",
    "monitoring_periods",
    "region_job",
    "regions_from_job_files",
    "regions_from_zones",
]

#: Key of the run summary artifacts (the table has ``-table`` appended).
MONITORING_ARTIFACT_KEY = "seg2change-monitoring"


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
    periods = period_table(rows)
    if periods:
        lines += ["", *periods]
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
    mode: MonitoringMode = DEFAULT_MODE,
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
        Base output folder (default: the job files' ``output``); region ``r`` writes to
        ``<output>/<r>/<period>`` (``pairs`` mode) or ``<output>/<r>/sequence`` (``sequence``).
    cadence
        ``monthly`` (default), ``quarterly`` or ``yearly``.
    run_date
        Day of the run (default: today, UTC); the *after* period is the one that ended before it.
    zones_crs
        CRS of the zone coordinates.
    force
        Recompute regions whose outputs exist (``sequence`` mode: replace each region's sequence
        cube and recompute every one of its pairs).
    mode
        ``pairs`` (default): a two-date job per region and period; ``sequence``: append the
        period to one sequence per region (:mod:`flows.monitoring_plan`).

    Returns
    -------
    dict
        ``cadence``, ``mode``, ``before``, ``after`` (period labels and windows) and ``regions``:
        per region its ``region``, ``output``, ``status`` (``computed``, ``skipped`` or
        ``failed``), ``skipped``, ``inference`` (block counts, None when skipped), ``outputs``
        (paths) and ``summary`` (:func:`flows.outputs.summarise_statistics`) of the period's
        pair; in ``sequence`` mode also ``computed_periods``, ``windows``, ``sequence_cube`` and
        ``periods`` (:func:`flows.monitoring_sequence.append_periods_task`).

    Raises
    ------
    JobSpecError
        Bad regions, job template or sequence, before any work starts.
    RuntimeError
        When a region failed (after the others finished and the artifacts were published).
    """
    plan = monitoring_plan(
        zones, base_job, job_files, output, cadence, run_date, zones_crs, mode, force
    )  # all valid first
    before, after = plan.before, plan.after
    get_run_logger().info(
        "monitoring %d region(s) in %s mode: %s vs %s", len(plan.regions), mode, after.label, before.label
    )
    ordered = _sequence_regions(plan, force) if plan.mode == "sequence" else _pair_regions(plan, force)
    _publish_artifacts(before, after, ordered)
    failed = [row["region"] for row in ordered if row["status"] == "failed"]
    if failed:
        raise RuntimeError(
            f"monitoring {after.label}: region(s) {', '.join(failed)} failed; see their task runs"
        )
    return {
        "cadence": cadence,
        "mode": plan.mode,
        "before": {"label": before.label, "window": before.window()},
        "after": {"label": after.label, "window": after.window()},
        "regions": ordered,
    }


def _pair_regions(plan: MonitoringPlan, force: bool) -> list[dict[str, Any]]:
    """``pairs`` mode: each region's two-date job of the period, unless it is published already."""
    rows = _skipped_regions(plan) if not force else {}
    with contextlib.ExitStack() as held:  # each region's output stays locked until it is published
        submitted = {
            region.name: held.enter_context(submit_job(plan.jobs[region.name], plan.after.label, force=force))
            for region in plan.regions
            if region.name not in rows
        }
        rows.update({name: _computed_region(name, run) for name, run in submitted.items()})
    return [rows[region.name] for region in plan.regions]


def _sequence_regions(plan: MonitoringPlan, force: bool) -> list[dict[str, Any]]:
    """``sequence`` mode: append the pending periods of each region's sequence, regions concurrently.

    The first pair each region computes is checked before any region works
    (:func:`pipeline.stages.check_job`), so a bad job fails the run at once, as in ``pairs`` mode.
    """
    from pipeline.stages import check_job

    logger = get_run_logger()
    for name, sequence in plan.sequences.items():
        pending = [period.label for period in sequence.pending]
        if not pending:
            logger.info(
                "region %s: its sequence holds %s already, nothing to compute", name, plan.after.label
            )
            continue
        if len(pending) > 1:
            logger.info(
                "region %s: filling the periods missed since its last run: %s", name, ", ".join(pending)
            )
        check_job(sequence.spec.pair_job(sequence.done + 1), force=force)
    futures = {
        name: append_periods_task.submit(sequence, plan.after, force=force)
        for name, sequence in plan.sequences.items()
    }
    rows = []
    for name, future in futures.items():
        future.wait()
        if future.state.is_completed():
            rows.append(future.result())
            continue
        rows.append(
            {
                "region": name,
                "output": plan.sequences[name].spec.output,
                "mode": "sequence",
                "status": "failed",
                "skipped": False,
                "inference": None,
                "outputs": None,
                "summary": None,
                "error": future.state.message,
            }
        )
    return rows


def _skipped_regions(plan: MonitoringPlan) -> dict[str, dict[str, Any]]:
    """The rows of the regions whose outputs for the period are published already."""
    rows: dict[str, dict[str, Any]] = {}
    for region in plan.regions:
        job = plan.jobs[region.name]
        done = published_outputs(job.output, job.publishers)
        if done is None:
            continue
        get_run_logger().info("region %s: outputs for %s exist, skipped", region.name, plan.after.label)
        summary = published_summary(done)
        if summary is None:
            get_run_logger().info(
                "region %s: no statistics to summarise, 'statistics' is not published", region.name
            )
        rows[region.name] = {
            "region": region.name,
            "output": job.output,
            "status": "skipped",
            "skipped": True,
            "inference": None,
            "outputs": done,
            "summary": summary,
        }
    return rows


def _computed_region(name: str, run: SubmittedJob) -> dict[str, Any]:
    """The row of a region whose stages were submitted, once they ended."""
    infer, published = run.infer, run.published
    published.wait()
    row: dict[str, Any] = {"region": name, "output": run.job.output, "skipped": False}
    if published.state.is_completed():
        publication = published.result()
        row.update(
            status="computed",
            inference=inference_summary(infer.result()),
            outputs=publication_outputs(publication),
            summary=statistics_summary(publication),
        )
    else:
        state = published.state if not infer.state.is_failed() else infer.state
        row.update(status="failed", inference=None, outputs=None, summary=None, error=state.message)
    return row
