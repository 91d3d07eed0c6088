"""What a job's run gives back, as the JSON-ready dictionaries the flows return and publish.

The stages return small frozen records (:class:`~pipeline.infer.InferenceResult`,
:class:`~pipeline.publish.PublishResult`); :func:`inference_summary`, :func:`publication_outputs`
and :func:`statistics_summary` turn them into dictionaries. A publication lists the files of the
publishers the job ran, whatever they are, and has statistics to summarise only when the job's
publishers include ``statistics``. :func:`published_outputs` tells a finished output folder from
the files its publishers leave, so that the monitoring flow can skip it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pipeline.spec import DEFAULT_PUBLISHERS
from pipeline.storage import LocationLike

if TYPE_CHECKING:  # the engine (torch, Dask, Zarr) loads when a task runs, not with the flows
    from pipeline.infer import InferenceResult
    from pipeline.publish import PublishResult
    from pipeline.publish.statistics import ChangeStatistics

__all__ = [
    "inference_summary",
    "publication_outputs",
    "published_outputs",
    "statistics_summary",
    "summarise_statistics",
]

log = logging.getLogger(__name__)


def inference_summary(result: InferenceResult) -> dict[str, Any]:
    """The JSON-ready record of an inference: ``path`` (the change cube), ``blocks``, ``computed``
    and ``skipped`` (block counts) and ``wall_seconds``."""
    return {
        "path": str(result.path),
        "blocks": int(result.blocks),
        "computed": len(result.computed),
        "skipped": len(result.skipped),
        "wall_seconds": round(float(result.wall_seconds), 3),
    }


def publication_outputs(result: PublishResult) -> dict[str, Any]:
    """The paths (as strings) of every file a publication wrote, by artifact key
    (:attr:`pipeline.publish.PublishResult.locations`: ``stac_item``, ``statistics_json``,
    ``quicklook``... of the publishers the job ran), the COGs grouped per layer under ``cogs``
    when the ``cog`` publisher ran."""
    cogs = {layer: str(path) for layer, path in result.cogs.items()} if "cog" in result.artifacts else {}
    listed = {key: str(path) for key, path in result.locations.items() if key not in cogs}
    return {**({"cogs": cogs} if cogs else {}), **listed}


def statistics_summary(result: PublishResult, zone: str = "all") -> dict[str, Any] | None:
    """:func:`summarise_statistics` of a publication, or None (said in one log line) when the job's
    publishers leave out ``statistics``."""
    if "statistics" not in result.artifacts:
        log.info(
            "no change statistics to summarise: the job's publishers (%s) leave out 'statistics'",
            ", ".join(result.artifacts),
        )
        return None
    return summarise_statistics(result.statistics, zone)


def summarise_statistics(stats: ChangeStatistics, zone: str = "all") -> dict[str, Any]:
    """Summarise a job's statistics for one zone: changed area and change per target.

    Parameters
    ----------
    stats
        A publication's statistics (:attr:`pipeline.publish.PublishResult.statistics`, or
        :func:`pipeline.publish.statistics.read_statistics` of a published ``statistics.json``).
    zone
        Zone id; ``"all"`` is the whole area.

    Returns
    -------
    dict
        ``zone``, ``pixel_area_m2``, ``valid_pixels``, ``changed_area_m2``, ``changed_area_ha``
        and ``targets``: per target class, ``changed_m2`` (change into or out of it), ``gained_m2``
        (transitions from another class into it: e.g. newly flooded land for ``water``) and
        ``lost_m2`` (transitions out of it).

    Raises
    ------
    KeyError
        The statistics have no such zone.
    """
    totals = {t.zone: t for t in stats.totals}.get(zone)
    if totals is None:
        raise KeyError(
            f"zone {zone!r} is not in the statistics; they have {sorted(t.zone for t in stats.totals)}"
        )
    rows = stats.zone_rows(zone)
    moves = [r for r in rows if r.kind == "transition"]  # class_from != class_to
    targets = {
        target: {
            "changed_m2": float(sum(r.area_m2 for r in rows if r.kind == "target" and r.target == target)),
            "gained_m2": float(sum(r.area_m2 for r in moves if r.class_to == target)),
            "lost_m2": float(sum(r.area_m2 for r in moves if r.class_from == target)),
        }
        for target in stats.targets
    }
    return {
        "zone": zone,
        "pixel_area_m2": float(stats.pixel_area_m2),
        "valid_pixels": int(totals.valid_pixels),
        "changed_area_m2": float(totals.changed_area_m2),
        "changed_area_ha": float(totals.changed_area_ha),
        "targets": targets,
    }


#: The files of the built-in publishers that tell a publication finished (:class:`OutputLayout`
#: attribute names); the COGs' names depend on the change cube, so they are not checked.
_FINISHED_FILES: dict[str, tuple[str, ...]] = {
    "cog": (),
    "statistics": ("statistics_json", "statistics_parquet"),
    "quicklook": ("quicklook",),
    "stac": ("stac_collection", "stac_item"),
}


def published_outputs(
    output: LocationLike, publishers: Sequence[str] = DEFAULT_PUBLISHERS
) -> dict[str, str] | None:
    """Return the published outputs of a finished job folder, or None when it is not finished.

    A folder is finished when its change cube is complete and the files of each of the job's
    ``publishers`` are there (the STAC item is written last). A publisher that is not built in
    writes files this cannot name, so a job listing one never counts as finished here.
    """
    from pipeline.change_cube import change_cube_is_complete
    from pipeline.layout import OutputLayout

    layout = OutputLayout.of(output)
    if any(name not in _FINISHED_FILES for name in publishers):
        return None
    if not change_cube_is_complete(layout.change_cube):
        return None
    files = {name: getattr(layout, name) for publisher in publishers for name in _FINISHED_FILES[publisher]}
    if not all(path.is_file() for path in files.values()):
        return None
    return {"change_cube": str(layout.change_cube), **{name: str(path) for name, path in files.items()}}
