"""Monitoring in ``sequence`` mode: the task that appends a region's new periods to its sequence,
and the changed area per period that the run's artifacts show.

:func:`append_periods_task` runs :func:`pipeline.sequence.run.run_sequence` on the region's
sequence as planned (:class:`flows.region_sequence.RegionSequence`): the pairs its cube holds are
skipped, the others run in order, each a whole two-date job under ``pairs/`` of the sequence, and
are stacked into the sequence cube. Its row tells what the run did and reads the changed area of
every pair back from the cube, so a rerun that computes nothing still reports the whole history.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from flows.outputs import (
    inference_summary,
    publication_outputs,
    published_outputs,
    statistics_summary,
    summarise_statistics,
)
from flows.region_sequence import RegionSequence
from flows.regions import Period
from flows.tasks import BACKOFF_FACTOR, NETWORK_RETRIES, dask_client_of_runner, retry_on_network_error

if TYPE_CHECKING:
    from pipeline.run import RunResult
    from pipeline.sequence.run import SequenceResult

__all__ = ["append_periods_task", "period_table", "published_summary"]


def _ha(m2: float | None) -> float | None:
    return None if m2 is None else round(m2 / 10_000.0, 4)


def published_summary(outputs: dict[str, str]) -> dict[str, Any] | None:
    """The statistics summary of a finished job folder's outputs (:func:`flows.outputs.published_outputs`),
    or None when its publishers leave out ``statistics``."""
    from pipeline.publish.statistics import read_statistics

    if "statistics_json" not in outputs:
        return None
    return summarise_statistics(read_statistics(outputs["statistics_json"]))


@task(
    name="append-periods",
    task_run_name="sequence-{sequence.region.name}-{after.label}",
    retries=NETWORK_RETRIES,
    retry_delay_seconds=exponential_backoff(backoff_factor=BACKOFF_FACTOR),
    retry_condition_fn=retry_on_network_error,
    cache_policy=NO_CACHE,  # what it does depends on the sequence cube on disk, not on its inputs
)
def append_periods_task(sequence: RegionSequence, after: Period, force: bool = False) -> dict[str, Any]:
    """Append the region's pending periods to its sequence and describe the sequence.

    Restartable, so retried on network errors: the pairs finished before are skipped and a pair
    stopped half-way resumes from its finished blocks.

    Parameters
    ----------
    sequence
        The region's sequence as planned.
    after
        The period just ended (the row's ``outputs`` and ``summary`` are its pair's).
    force
        Replace the sequence cube and recompute every pair.

    Returns
    -------
    dict
        The region's row: ``region``, ``output`` (the sequence folder), ``mode``, ``status``
        (``computed`` when a pair ran, else ``skipped``), ``skipped``, ``computed_periods`` (the
        periods whose pair ran now), ``windows`` (their number), ``sequence_cube``, ``inference``,
        ``outputs`` and ``summary`` of the pair ending in ``after`` (``inference`` is None when it
        ran before), and ``periods``: per pair, ``period``, ``before``, ``changed_pixels``,
        ``changed_m2`` (None on a geographic grid) and ``computed`` (ran now).
    """
    from pipeline.sequence.run import run_sequence

    with dask_client_of_runner() as client:
        result = run_sequence(sequence.spec, force=force, progress=False, client=client)
    return _row(sequence, after, result)


def _row(sequence: RegionSequence, after: Period, result: SequenceResult) -> dict[str, Any]:
    computed = dict(zip(result.computed, result.runs, strict=True))
    k = sequence.pair_of(after)
    row: dict[str, Any] = {
        "region": sequence.region.name,
        "output": sequence.spec.output,
        "mode": "sequence",
        "status": "computed" if computed else "skipped",
        "skipped": not computed,
        "computed_periods": [sequence.periods[j].label for j in result.computed],
        "windows": len(sequence.periods),
        "sequence_cube": str(result.cube),
    }
    row.update(_pair_outputs(sequence, k, computed.get(k)))
    row["periods"] = _periods(sequence, result)
    return row


def _pair_outputs(sequence: RegionSequence, k: int, run: RunResult | None) -> dict[str, Any]:
    """``inference``, ``outputs`` and ``summary`` of pair ``k``: run now, or read from its folder."""
    if run is not None:
        return {
            "inference": inference_summary(run.inference),
            "outputs": publication_outputs(run.publication),
            "summary": statistics_summary(run.publication),
        }
    job = sequence.spec.pair_job(k)
    outputs = published_outputs(job.output, job.publishers)
    return {"inference": None, "outputs": outputs, "summary": published_summary(outputs) if outputs else None}


def _periods(sequence: RegionSequence, result: SequenceResult) -> list[dict[str, Any]]:
    """The changed area of every pair of the sequence cube, in pair order."""
    from pipeline.change_cube import describe_change_cube
    from pipeline.errors import PublishError
    from pipeline.layout import OutputLayout
    from pipeline.sequence.cube import changed_pixels

    counts = changed_pixels(result.cube)
    try:
        pixel_m2: float | None = describe_change_cube(
            OutputLayout.of(str(sequence.spec.pair_output(1))).change_cube
        ).pixel_area_m2
    except PublishError:  # a geographic grid: no constant pixel area
        pixel_m2 = None
    return [
        {
            "period": sequence.periods[k].label,
            "before": sequence.periods[k - 1].label,
            "changed_pixels": count,
            "changed_m2": None if pixel_m2 is None else count * pixel_m2,
            "computed": k in result.computed,
        }
        for k, count in enumerate(counts, start=1)
    ]


def period_table(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown lines of the changed area per period (rows) and region (columns), from the sequence
    cubes; a pair computed by this run is marked ``(new)``, an area on a geographic grid is in pixels."""
    regions = [row["region"] for row in rows if row.get("periods")]
    if not regions:
        return []
    cells: dict[str, dict[str, str]] = {}
    for row in rows:
        for pair in row.get("periods") or []:
            changed = _ha(pair["changed_m2"])
            text = f"{changed}" if changed is not None else f"{pair['changed_pixels']} px"
            label = f"{pair['period']} vs {pair['before']}"
            cells.setdefault(label, {})[row["region"]] = text + (" (new)" if pair["computed"] else "")
    lines = [
        "## Changed area per period (ha, from each region's sequence cube)",
        "",
        "| period | " + " | ".join(regions) + " |",
        "|---|" + "---|" * len(regions),
    ]
    for label in sorted(cells):
        lines.append(f"| {label} | " + " | ".join(cells[label].get(r, "-") for r in regions) + " |")
    return lines
