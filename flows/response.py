"""Disaster response: change around a reported event, on demand and at high priority.

An event is an area (GeoJSON file or document, or a bbox), a date and a hazard (``flood``,
``fire``, ``storm``, ``earthquake``). The *before* window runs from 60 days before the event to
the day before it, the *after* window from the event date to 14 days after it (both
configurable). Each hazard has default prompts (flood: water, with vegetation, built-up and bare
soil as the other classes and water as the target); the job uses small blocks (512 px) so that the
first results come quickly, and the change model's own tile unless told another (CACH's 504 px, which
it computes without padding), and the flow run is tagged with its priority. The flow returns the change statistics in the same flow run, with the area that became
the hazard's target class (for a flood: the newly flooded area) and publishes them as artifacts.

The imagery may be the responders' own: a local catalog made by ``seg2change catalog`` (or by
the command line's ``--before-images``/``--after-images``) brings its defaults (no quality band,
no cloud cover, the files' folders as asset roots, their bands and finest resolution; see
:func:`pipeline.own_imagery.own_imagery_options`), and on such fine pixels the tiles overlap by
40 m of ground rather than 64 px (134 px at 0.3 m, 80 px at 0.5 m; never under 64 px, at most half
the tile; a given ``tiling.overlap`` wins). Given ``footprints`` (building polygons), the
flow also measures the change inside each one (:mod:`pipeline.publish.features`), writes the
per-feature table beside the other outputs and returns its summary, also as an artifact.

It is started from the command line (``seg2change respond``), from ``run_deployment`` or by a
Prefect event ``seg2change.event.reported`` through the deployment trigger of ``prefect.yaml``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import flow, get_run_logger, tags, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.events import (
    HAZARD_PROMPTS,
    Hazard,
    check_footprints,
    event_job,
    event_windows,
    parse_area,
)
from flows.outputs import inference_summary, publication_outputs, statistics_summary
from flows.tasks import submit_job, task_runner
from pipeline.own_imagery import own_imagery_options
from pipeline.spec import JobSpec

if TYPE_CHECKING:
    from pipeline.infer import InferenceResult
    from pipeline.publish import PublishResult

__all__ = [
    "HAZARD_PROMPTS",
    "RESPONSE_ARTIFACT_KEY",
    "Hazard",
    "event_job",
    "event_windows",
    "feature_impact_task",
    "parse_area",
    "response_flow",
]

#: Key of the response artifacts (the table has ``-table`` appended).
RESPONSE_ARTIFACT_KEY = "seg2change-response"


def _affected(summary: Mapping[str, Any], job: JobSpec) -> tuple[str, float]:
    assert job.prompts is not None
    targets = summary["targets"]
    name = next(iter(targets)) if targets else (job.prompts.targets or ("",))[0]
    return name, float(targets.get(name, {}).get("gained_m2", 0.0))


@task(name="feature-impact", task_run_name="feature-impact-{period}")
def feature_impact_task(
    change_cube: str, output: str, footprints: str, zone_field: str | None, threshold: float, period: str
) -> dict[str, Any]:
    """Measure the change inside each footprint and write the per-feature table beside the outputs.

    Returns
    -------
    dict
        ``summary`` (per zone: footprints, covered, partly covered, not covered, affected),
        ``threshold`` and the paths of the files written.
    """
    from pipeline.change_cube import describe_change_cube
    from pipeline.layout import OutputLayout
    from pipeline.publish.features import feature_impact, read_footprints, write_feature_impact

    impact = feature_impact(
        describe_change_cube(change_cube),
        read_footprints(Path(footprints), zone_field=zone_field),
        threshold=threshold,
    )
    layout = OutputLayout.of(output)  # a local folder (check_footprints)
    paths = {
        "features_parquet": layout.features_parquet.local_path,
        "features_geojson": layout.features_geojson.local_path,
        "features_summary": layout.features_summary.local_path,
    }
    write_feature_impact(
        impact, paths["features_parquet"], paths["features_geojson"], paths["features_summary"]
    )
    return {"summary": impact.summary, "threshold": threshold, **{k: str(v) for k, v in paths.items()}}


@flow(
    name="seg2change-response",
    flow_run_name="response-{hazard}-{event_date}",
    task_runner=task_runner(),
    log_prints=True,
)
def response_flow(
    area: str | list[float] | dict[str, Any],
    event_date: date,
    hazard: Hazard,
    catalog: str,
    collections: str | list[str],
    output: str,
    area_crs: str = "EPSG:4326",
    before_days: int = 60,
    after_days: int = 14,
    prompts: dict[str, Any] | None = None,
    block_size: int = 512,
    tile_size: int | None = None,
    priority: int = 1,
    job_options: dict[str, Any] | None = None,
    force: bool = False,
    footprints: str | None = None,
    footprint_zone: str | None = None,
    affected_threshold: float = 0.25,
) -> dict[str, Any]:
    """Map the change around an event and return its statistics in the same flow run.

    Parameters
    ----------
    area, event_date, hazard, catalog, collections, output, area_crs, before_days, after_days
        The event and its imagery: see :func:`flows.events.event_job`.
    prompts, block_size, tile_size, job_options
        The job's classes, blocks, model tile (default: the change model's own) and further
        fields: see :func:`flows.events.event_job`.
    priority
        Priority of the run (1 highest), recorded as the tag ``priority:<n>`` of its task runs and
        in the result; the work queue's priority orders runs (see ``prefect.yaml``).
    force
        Recompute outputs that exist (the input cube too), as ``seg2change run --overwrite``.
    footprints, footprint_zone
        GeoJSON or GeoParquet polygons (buildings...) to measure the change in, one row each, and
        their property naming their zone, for the summary by zone.
    affected_threshold
        Changed fraction of a footprint from which it counts as affected.

    Returns
    -------
    dict
        ``event``, ``priority``, ``output``, ``inference`` (block counts), ``outputs`` (paths),
        ``statistics`` (the whole area's summary) and the area that became the hazard's target
        class (``affected_*``, for a flood: the newly flooded area; these are None when the job's
        publishers leave out ``statistics``); with footprints, ``features``.

    Raises
    ------
    Seg2ChangeError
        Invalid parameters or a job that cannot run, at once, before any work and without retries.
    """
    check_footprints(footprints, output, affected_threshold)
    job = event_job(
        area,
        event_date,
        hazard,
        catalog,
        collections,
        output,
        area_crs=area_crs,
        before_days=before_days,
        after_days=after_days,
        prompts=prompts,
        block_size=block_size,
        tile_size=tile_size,
        job_options=own_imagery_options(catalog, job_options, tile_size=tile_size),
    )
    get_run_logger().info(
        "%s on %s, priority %d: before %s, after %s", hazard, event_date, priority, job.before, job.after
    )
    period = f"{hazard}-{event_date}"
    with tags("seg2change", "response", f"hazard:{hazard}", f"priority:{priority}"):
        with submit_job(job, period, force=force) as run:
            publication, inference = run.published.result(), run.infer.result()
        impact = _footprint_impact(job, inference, footprints, footprint_zone, affected_threshold, period)
    result = _response_result(job, event_date, hazard, priority, inference, publication, impact)
    _publish_artifacts(result)
    return result


def _response_result(
    job: JobSpec,
    event_date: date,
    hazard: Hazard,
    priority: int,
    inference: InferenceResult,
    publication: PublishResult,
    impact: dict[str, Any] | None,
) -> dict[str, Any]:
    """The flow's JSON-ready result (see :func:`response_flow`)."""
    summary = statistics_summary(publication)
    affected_class, affected_m2 = _affected(summary, job) if summary is not None else (None, None)
    return {
        "event": {
            "area": job.aoi.model_dump(mode="json"),
            "event_date": event_date.isoformat(),
            "hazard": hazard,
            "before": job.before.interval(),
            "after": job.after.interval(),
        },
        "priority": priority,
        "output": job.output,
        "inference": inference_summary(inference),
        "outputs": publication_outputs(publication),
        "statistics": summary,
        "affected_class": affected_class,
        "affected_area_m2": affected_m2,
        "affected_area_ha": affected_m2 / 10_000.0 if affected_m2 is not None else None,
        **({"features": impact} if impact is not None else {}),
    }


def _footprint_impact(
    job: JobSpec,
    inference: InferenceResult,
    footprints: str | None,
    zone_field: str | None,
    threshold: float,
    period: str,
) -> dict[str, Any] | None:
    """Run :func:`feature_impact_task` on the job's change cube when footprints were given."""
    if not footprints:
        return None
    return feature_impact_task(str(inference.path), job.output, footprints, zone_field, threshold, period)


#: The published files the summary links to, with their labels, when the job published them.
_LINKED = {"stac_item": "STAC item", "statistics_json": "statistics", "quicklook": "quick-look"}


def _statistics_lines(result: Mapping[str, Any]) -> list[str]:
    """The summary's lines on the change, after publishing its table (none without statistics)."""
    event, stats = result["event"], result["statistics"]
    if stats is None:
        return []
    rows = [
        {
            "target": name,
            "gained_ha": round(v["gained_m2"] / 10_000.0, 4),
            "lost_ha": round(v["lost_m2"] / 10_000.0, 4),
            "changed_ha": round(v["changed_m2"] / 10_000.0, 4),
        }
        for name, v in stats["targets"].items()
    ]
    create_table_artifact(
        key=f"{RESPONSE_ARTIFACT_KEY}-table",
        table=rows,
        description=f"{event['hazard']} on {event['event_date']}: change per target class",
    )
    return [
        f"- **{result['affected_class']} gained: {result['affected_area_ha']:.2f} ha** "
        f"({result['affected_area_m2']:.0f} m²)",
        f"- changed in total: {stats['changed_area_ha']:.2f} ha",
    ]


def _publish_artifacts(result: Mapping[str, Any]) -> None:
    event, outputs = result["event"], result["outputs"]
    markdown = "\n".join(
        [
            f"# seg2change response: {event['hazard']} on {event['event_date']}",
            "",
            f"- priority: {result['priority']}",
            f"- before: {event['before']}",
            f"- after: {event['after']}",
            *_statistics_lines(result),
            *(
                f"- {label}: [{Path(outputs[key]).name}](file://{outputs[key]})"
                for key, label in _LINKED.items()
                if key in outputs
            ),
            "",
        ]
    )
    features = result.get("features")
    if features is not None:
        create_table_artifact(
            key=f"{RESPONSE_ARTIFACT_KEY}-features",
            table=[{"zone": zone, **counts} for zone, counts in features["summary"].items()],
            description=(
                f"footprints per zone: covered, not covered (outside the imagery, never counted "
                f"unchanged) and affected (changed fraction >= {features['threshold']:g})"
            ),
        )
        counts = features["summary"]["all"]
        markdown += (
            f"- **footprints affected: {counts['affected']} of {counts['footprints']}** "
            f"({counts['not_covered']} not covered by the imagery)\n"
            f"- per-feature table: [features.geojson](file://{features['features_geojson']})\n"
        )
    create_markdown_artifact(
        key=RESPONSE_ARTIFACT_KEY, markdown=markdown, description="seg2change disaster response summary"
    )
