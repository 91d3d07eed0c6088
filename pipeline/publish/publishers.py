"""The built-in publishers: COGs, statistics, quick-look and STAC (see :mod:`pipeline.publish.registry`).

Each writes its files with the module that owns their format (:mod:`~pipeline.publish.cogs`,
:mod:`~pipeline.publish.statistics`, :mod:`~pipeline.publish.quicklooks`,
:mod:`~pipeline.publish.stac`) and describes them as :class:`~pipeline.publish.registry.Artifact` s,
which the STAC publisher turns into the Item's assets.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from pipeline.change_cube import ATTR_MODELS
from pipeline.layout import COGS, QUICKLOOK, STAC, STATISTICS_JSON, STATISTICS_PARQUET
from pipeline.publish.cogs import COG_MEDIA_TYPE, write_cogs
from pipeline.publish.quicklooks import write_quicklook
from pipeline.publish.registry import ALL_EARLIER, Artifact, PublishContext, register_publisher
from pipeline.publish.stac import (
    ZARR_MEDIA_TYPE,
    AssetFile,
    build_collection,
    build_item,
    is_loopback,
    write_stac,
)
from pipeline.publish.stac_validation import validate_stac
from pipeline.publish.statistics import ALL_ZONE, ChangeStatistics, compute_statistics, write_statistics

__all__ = [
    "PARQUET_MEDIA_TYPE",
    "CogPublisher",
    "QuicklookPublisher",
    "StacPublisher",
    "StatisticsPublisher",
]

PARQUET_MEDIA_TYPE = "application/vnd.apache.parquet"


def _cog_threads() -> int:
    """Threads for the COG layers: one per core this process may use.

    The statistics and the quick-look run in threads beside them; they are short next to the COGs
    on a large grid (the quick-look's panels are capped at :data:`~pipeline.publish.quicklooks.MAX_SIDE`),
    and leaving them a core of their own left it idle once they were done while the layers went
    one after the other on the other.
    """
    return max(1, len(os.sched_getaffinity(0)))


@register_publisher("cog")
class CogPublisher:
    """COGs of the change cube's main layers (``cogs/<layer>.tif``), and the category names of the
    coded ones beside them (``cogs/<layer>.tif.aux.xml``); each artifact's value is its
    :class:`~pipeline.publish.cogs.CogLayer`."""

    name = "cog"
    needs: tuple[str, ...] = ()

    def publish(self, context: PublishContext) -> list[Artifact]:
        """Write the COGs (see :func:`~pipeline.publish.cogs.write_cogs`)."""
        cogs = write_cogs(
            context.info, context.local / COGS, progress=context.progress, workers=_cog_threads()
        )
        layers = [
            Artifact(
                layer,
                written.path,
                COG_MEDIA_TYPE,
                ("data",),
                f"{layer.replace('_', ' ')} (COG)",
                {
                    "description": written.spec.description,
                    "data_type": written.spec.dtype,
                    "nodata": "nan" if layer == "change_probability" else int(written.spec.nodata),
                },
                value=written,
            )
            for layer, written in cogs.items()
        ]
        sidecars = [
            Artifact(
                f"{layer}_categories",
                written.sidecar,
                "application/xml",
                ("metadata",),
                f"{layer.replace('_', ' ')} category names (GDAL .aux.xml beside the COG)",
            )
            for layer, written in cogs.items()
            if written.sidecar is not None
        ]
        return layers + sidecars


@register_publisher("statistics")
class StatisticsPublisher:
    """Changed area per target class and transition, per zone: ``statistics.parquet`` and
    ``statistics.json``; both artifacts' value is the
    :class:`~pipeline.publish.statistics.ChangeStatistics`."""

    name = "statistics"
    needs: tuple[str, ...] = ()

    def publish(self, context: PublishContext) -> list[Artifact]:
        """Count the change cube and write the tables (see :mod:`pipeline.publish.statistics`)."""
        stats = compute_statistics(context.info, zones=context.zones, progress=context.progress)
        parquet, stats_json = write_statistics(
            stats, context.local / STATISTICS_PARQUET, context.local / STATISTICS_JSON
        )
        return [
            Artifact(
                "statistics_parquet",
                parquet,
                PARQUET_MEDIA_TYPE,
                ("metadata",),
                "changed area statistics (Parquet)",
                value=stats,
            ),
            Artifact(
                "statistics_json",
                stats_json,
                "application/json",
                ("metadata",),
                "changed area statistics (JSON)",
                value=stats,
            ),
        ]


def _period(start: str, end: str) -> str:
    """A time window as a short title: ``jun 2023``, ``jun-aug 2023`` or ``dec 2022-jan 2023``."""
    s, e = datetime.fromisoformat(start), datetime.fromisoformat(end)
    if (s.year, s.month) == (e.year, e.month):
        return f"{s:%b %Y}"
    if s.year == e.year:
        return f"{s:%b}-{e:%b %Y}"
    return f"{s:%b %Y}-{e:%b %Y}"


@register_publisher("quicklook")
class QuicklookPublisher:
    """The quick-look PNG (``quicklook.png``): before, after and the change by transition, its legend
    ordered and labelled by the statistics' full-resolution areas."""

    name = "quicklook"
    needs: tuple[str, ...] = ("statistics",)

    def publish(self, context: PublishContext) -> list[Artifact]:
        """Draw the quick-look (see :func:`~pipeline.publish.quicklooks.write_quicklook`)."""
        info = context.info
        stats: ChangeStatistics = context.value("statistics", "statistics_json")
        k = len(info.classes)
        code = {c: i for i, c in enumerate(info.classes)}
        pixels = {
            code[r.class_from] * k + code[r.class_to]: r.pixels
            for r in stats.zone_rows(ALL_ZONE)
            if r.kind in ("transition", "class_unchanged")
            and r.class_from is not None
            and r.class_to is not None
        }
        before, after = context.job["before"], context.job["after"]
        titles = (
            f"before {_period(before['start'], before['end'])}",
            f"after {_period(after['start'], after['end'])}",
            "change by transition",
        )
        path, _ = write_quicklook(
            info, context.input_cube, context.local / QUICKLOOK, transition_pixels=pixels, titles=titles
        )
        context.progress("quick-look", 1, 1)
        return [Artifact("quicklook", path, "image/png", ("overview",), "quick-look: before, after, change")]


def _lineage(job: Mapping[str, Any], provenance: Mapping[str, Any], models: list[dict[str, Any]]) -> str:
    items = provenance.get("items") or {}
    names = {m.get("role"): m.get("name") for m in models}
    prompts = job.get("prompts") or {}
    classes = "; ".join(prompts.get("classes", [])) or "the job's classes"
    catalog = str(provenance.get("catalog"))
    if is_loopback(catalog):
        catalog = "a STAC API on the processing machine's loopback interface, gone after the run"
    return (
        f"Median clear-sky composites of {len(items.get('before', []))} scene(s) in "
        f"{job['before']['start']}/{job['before']['end']} and {len(items.get('after', []))} scene(s) in "
        f"{job['after']['start']}/{job['after']['end']} from {', '.join(provenance.get('collections', []))} "
        f"of {catalog}; per-pixel change probability from the {names.get('change', '?')} "
        f"change model and class maps from the {names.get('segmenter', '?')} open-vocabulary segmenter "
        f"({classes}), computed tile by tile, blended, and gated into class transitions by seg2change."
    )


def _assets(context: PublishContext) -> list[AssetFile]:
    """The change cube and every artifact of the earlier publishers, as the Item's assets."""
    return [
        AssetFile("change_cube", context.info.path, ZARR_MEDIA_TYPE, ("data",), "change cube (Zarr)"),
        *(
            AssetFile(
                a.key,
                context.published(a.path),
                a.media_type,
                a.roles,
                a.title,
                a.fields,
                source=context.source(a.path),
            )
            for artifacts in context.earlier.values()
            for a in artifacts
        ),
    ]


@register_publisher("stac")
class StacPublisher:
    """The STAC Collection and Item (``stac/collection.json``, ``stac/item.json``) describing the
    change cube and the files of every publisher listed before it, validated (offline: STAC core)
    before they are written; each artifact's value is its
    :class:`~pipeline.publish.stac_validation.StacValidation`."""

    name = "stac"
    needs: tuple[str, ...] = (ALL_EARLIER,)

    def publish(self, context: PublishContext) -> Sequence[Artifact]:
        """Build, validate and write the Collection and the Item (see :mod:`pipeline.publish.stac`)."""
        info, job = context.info, context.job
        before, after = job["before"], job["after"]
        collection_id = f"seg2change-{info.fingerprint[:16] or 'unknown'}"
        item_id = (
            f"{collection_id}-{datetime.fromisoformat(before['start']):%Y%m%d}"
            f"-{datetime.fromisoformat(after['end']):%Y%m%d}"
        )
        stac_dir = context.local / STAC
        item = build_item(
            info,
            item_id=item_id,
            collection_id=collection_id,
            start=before["start"],
            end=after["end"],
            provenance=context.provenance,
            lineage=_lineage(job, context.provenance, json.loads(str(info.attrs.get(ATTR_MODELS, "[]")))),
            assets=_assets(context),
            item_dir=context.published(stac_dir),
        )
        collection = build_collection(item)
        validation = (validate_stac(collection), validate_stac(item))
        collection_path, item_path = write_stac(collection, item, stac_dir)
        context.progress("STAC", 1, 1)
        return [
            Artifact(
                "stac_collection",
                collection_path,
                "application/json",
                ("metadata",),
                "STAC Collection",
                value=validation[0],
            ),
            Artifact(
                "stac_item",
                item_path,
                "application/geo+json",
                ("metadata",),
                "STAC Item",
                value=validation[1],
            ),
        ]
