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

import contextlib
from datetime import date
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.outputs import (
    inference_summary,
    publication_outputs,
    published_outputs,
    statistics_summary,
    summarise_statistics,
)
from flows.regions import (
    Cadence,
    MonitoringPlan,
    Period,
    Region,
    monitoring_periods,
    monitoring_plan,
    region_job,
    regions_from_job_files,
    regions_from_zones,
)
from flows.tasks import SubmittedJob, submit_job, task_runner

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
        (:func:`flows.outputs.summarise_statistics`).

    Raises
    ------
    JobSpecError
        Bad regions or job template, before any work starts.
    RuntimeError
        When a region failed (after the others finished and the artifacts were published).
    """
    plan = monitoring_plan(
        zones, base_job, job_files, output, cadence, run_date, zones_crs
    )  # all valid first
    before, after = plan.before, plan.after
    get_run_logger().info("monitoring %d region(s): %s vs %s", len(plan.regions), after.label, before.label)
    rows = _skipped_regions(plan) if not force else {}
    with contextlib.ExitStack() as held:  # each region's output stays locked until it is published
        submitted = {
            region.name: held.enter_context(submit_job(plan.jobs[region.name], after.label, force=force))
            for region in plan.regions
            if region.name not in rows
        }
        rows.update({name: _computed_region(name, run) for name, run in submitted.items()})
    ordered = [rows[region.name] for region in plan.regions]
    _publish_artifacts(before, after, ordered)
    failed = [row["region"] for row in ordered if row["status"] == "failed"]
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


def _skipped_regions(plan: MonitoringPlan) -> dict[str, dict[str, Any]]:
    """The rows of the regions whose outputs for the period are published already."""
    from pipeline.publish.statistics import read_statistics

    rows: dict[str, dict[str, Any]] = {}
    for region in plan.regions:
        job = plan.jobs[region.name]
        done = published_outputs(job.output, job.publishers)
        if done is None:
            continue
        get_run_logger().info("region %s: outputs for %s exist, skipped", region.name, plan.after.label)
        summary = None
        if "statistics_json" in done:
            summary = summarise_statistics(read_statistics(done["statistics_json"]))
        else:
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
