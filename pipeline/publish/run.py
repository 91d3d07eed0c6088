"""Publish a finished change cube: COGs, statistics, quick-look and the STAC that describes them.

Everything is read back from the change cube on disk (never from the engine's memory), block by
block, so publishing can run again at any time, on any machine that sees the outputs. Each file
is written under a temporary name and renamed into place, so publishing again replaces exactly
its own files (``cogs/*.tif`` and the category names beside the coded ones, ``cogs/*.tif.aux.xml``,
``statistics.parquet``, ``statistics.json``, ``quicklook.png``,
``stac/collection.json``, ``stac/item.json``) and a failure leaves the earlier ones as they were.
The STAC is written last, once the files it checksums exist, and validated before ``publish``
returns (offline: STAC core; see :mod:`pipeline.publish.stac` for the extensions).

The output folder may also be an fsspec URL (``s3://bucket/prefix``). GDAL and rio-cogeo write
local files, so every file is then made in a local temporary folder laid out like the output,
checked there (COGs validated, STAC validated, checksums and sizes taken from the very bytes that
are sent), and uploaded one object at a time, each upload atomic, the STAC last. The STAC's hrefs
are relative (``../cogs/change.tif``) and resolve in the bucket as they do on a disk.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import zarr

from pipeline.discover import Discovery
from pipeline.errors import PublishError
from pipeline.progress import staged_progress
from pipeline.publish.cogs import COG_MEDIA_TYPE, ChangeCubeInfo, describe_change_cube, write_cogs
from pipeline.publish.quicklooks import write_quicklook
from pipeline.publish.stac import (
    ZARR_MEDIA_TYPE,
    AssetFile,
    build_collection,
    build_item,
    is_loopback,
    write_stac,
)
from pipeline.publish.stac_validation import StacValidation, validate_stac
from pipeline.publish.statistics import ALL_ZONE, ChangeStatistics, compute_statistics, write_statistics
from pipeline.publish.zones import Zone, load_zones
from pipeline.spec import JobSpec
from pipeline.storage import Location, LocationLike

__all__ = ["PublishResult", "publish"]

log = logging.getLogger(__name__)

PARQUET_MEDIA_TYPE = "application/vnd.apache.parquet"


@dataclass(frozen=True)
class PublishResult:
    """What :func:`publish` wrote.

    Attributes
    ----------
    cogs
        COG path per layer.
    stac_collection, stac_item
        The STAC documents.
    statistics_parquet, statistics_json
        The statistics files.
    quicklook
        The quick-look PNG.
    statistics
        The statistics (print them with :func:`pipeline.publish.statistics_table`).
    validation
        What the STAC validation checked (collection, item).
    """

    cogs: Mapping[str, Location]
    stac_collection: Location
    stac_item: Location
    statistics_parquet: Location
    statistics_json: Location
    quicklook: Location
    statistics: ChangeStatistics
    validation: tuple[StacValidation, ...]


def _cog_threads() -> int:
    """Threads for the COG layers: the cores this process may use, less the one counting statistics."""
    return max(1, len(os.sched_getaffinity(0)) - 1)


def _job_doc(job: JobSpec | Mapping[str, Any] | None, attrs: Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(job, JobSpec):
        return job.model_dump(mode="json")
    if job is not None:
        return dict(job)
    try:
        return dict(json.loads(str(attrs["job"])))
    except (KeyError, json.JSONDecodeError, TypeError):
        raise PublishError("no job given and the change cube records none; pass the job to publish") from None


def _provenance(discovery: Discovery | Mapping[str, Any] | None, input_cube: Location) -> dict[str, Any]:
    if isinstance(discovery, Discovery):
        return discovery.provenance()
    if discovery is not None:
        return dict(discovery)
    recorded = zarr.open_group(input_cube.zarr_store(read_only=True), mode="r").attrs.get("provenance")
    if recorded is None:
        raise PublishError(
            f"no discovery given and the input cube {input_cube} records no provenance; pass the Discovery "
            "(or its provenance() dict) so the STAC can link the input items"
        )
    return dict(json.loads(str(recorded)))


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


def _period(start: str, end: str) -> str:
    """A time window as a short title: ``jun 2023``, ``jun-aug 2023`` or ``dec 2022-jan 2023``."""
    s, e = datetime.fromisoformat(start), datetime.fromisoformat(end)
    if (s.year, s.month) == (e.year, e.month):
        return f"{s:%b %Y}"
    if s.year == e.year:
        return f"{s:%b}-{e:%b %Y}"
    return f"{s:%b %Y}-{e:%b %Y}"


def publish(
    job: JobSpec | Mapping[str, Any] | None,
    change_cube: LocationLike,
    input_cube: LocationLike,
    discovery: Discovery | Mapping[str, Any] | None,
    out_dir: LocationLike,
    *,
    zones: Path | None = None,
    progress: bool = True,
) -> PublishResult:
    """Publish a finished change cube: COGs, statistics, quick-look PNG and STAC.

    Parameters
    ----------
    job
        The job (its windows date the outputs); None reads the job recorded in the change cube.
    change_cube
        The finished change cube (Zarr).
    input_cube
        The input cube it was computed from (for the quick-look's true-colour panels).
    discovery
        The discovery (or its ``provenance()`` record) whose items the STAC links as
        ``derived_from``; None reads the provenance recorded in the input cube.
    out_dir
        Output folder, local or an fsspec URL: ``cogs/``, ``stac/``, ``statistics.parquet``,
        ``statistics.json`` and ``quicklook.png`` are written there; nothing else in it is touched.
    zones
        GeoJSON FeatureCollection of polygons for per-zone statistics; default: the job's
        ``zones``, if any.
    progress
        Show progress bars.

    Returns
    -------
    PublishResult

    Raises
    ------
    PublishError
        When the change cube is missing or incomplete, the zones are unusable, or a file cannot be
        written; earlier published files are kept.
    StacValidationError
        When the STAC written is invalid (a bug: please report it).
    StorageError
        When the output's bucket is missing or cannot be reached with the credentials at hand.
    """
    out = Location.parse(out_dir)
    out.check_access()
    input_location = Location.parse(input_cube)
    info = describe_change_cube(change_cube)
    job_doc = _job_doc(job, info.attrs)
    provenance = _provenance(discovery, input_location)
    zones_path = zones if zones is not None else (Path(job_doc["zones"]) if job_doc.get("zones") else None)
    zone_list = load_zones(zones_path, info.crs) if zones_path is not None else []
    if out.is_local:
        return _publish(info, job_doc, provenance, zone_list, input_location, out, out.local_path, progress)
    with tempfile.TemporaryDirectory(prefix="seg2change-publish-") as staging:
        return _publish(info, job_doc, provenance, zone_list, input_location, out, Path(staging), progress)


def _publish(
    info: ChangeCubeInfo,
    job_doc: Mapping[str, Any],
    provenance: Mapping[str, Any],
    zone_list: list[Zone],
    input_cube: Location,
    out: Location,
    local: Path,
    progress: bool,
) -> PublishResult:
    """Write every file into the local folder ``local``, then, when ``out`` is elsewhere, upload them.

    ``local`` is ``out`` itself for a local output, else a temporary folder laid out like ``out``.
    """

    def published(path: Path) -> Location:
        return out.join(path.relative_to(local).as_posix())

    def source(path: Path) -> Path | None:
        return None if out.is_local else path

    stac_dir = local / "stac"
    with (
        staged_progress(enabled=progress) as update,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="publish") as background,
    ):
        # The COGs (GDAL, in threads of their own) overlap the statistics and the quick-look here:
        # each step reads the change cube by windows and releases the GIL while it decodes, counts
        # and compresses, so the cores share the work.
        cogs_written = background.submit(
            write_cogs, info, local / "cogs", progress=update, workers=_cog_threads()
        )
        stats = compute_statistics(info, zones=zone_list, progress=update)
        parquet, stats_json = write_statistics(stats, local / "statistics.parquet", local / "statistics.json")
        k = len(info.classes)
        code = {c: i for i, c in enumerate(info.classes)}
        pixels = {
            code[r.class_from] * k + code[r.class_to]: r.pixels
            for r in stats.zone_rows(ALL_ZONE)
            if r.kind in ("transition", "class_unchanged")
            and r.class_from is not None
            and r.class_to is not None
        }
        before, after = job_doc["before"], job_doc["after"]
        titles = (
            f"before {_period(before['start'], before['end'])}",
            f"after {_period(after['start'], after['end'])}",
            "change by transition",
        )
        quicklook, _ = write_quicklook(
            info, input_cube, local / "quicklook.png", transition_pixels=pixels, titles=titles
        )
        update("quick-look", 1, 1)
        cogs = cogs_written.result()

        assets = [
            AssetFile("change_cube", info.path, ZARR_MEDIA_TYPE, ("data",), "change cube (Zarr)"),
            *(
                AssetFile(
                    layer,
                    published(written.path),
                    COG_MEDIA_TYPE,
                    ("data",),
                    f"{layer.replace('_', ' ')} (COG)",
                    {
                        "description": written.spec.description,
                        "data_type": written.spec.dtype,
                        "nodata": "nan" if layer == "change_probability" else int(written.spec.nodata),
                    },
                    source=source(written.path),
                )
                for layer, written in cogs.items()
            ),
            *(
                AssetFile(
                    f"{layer}_categories",
                    published(written.sidecar),
                    "application/xml",
                    ("metadata",),
                    f"{layer.replace('_', ' ')} category names (GDAL .aux.xml beside the COG)",
                    source=source(written.sidecar),
                )
                for layer, written in cogs.items()
                if written.sidecar is not None
            ),
            AssetFile(
                "statistics_parquet",
                published(parquet),
                PARQUET_MEDIA_TYPE,
                ("metadata",),
                "changed area statistics (Parquet)",
                source=source(parquet),
            ),
            AssetFile(
                "statistics_json",
                published(stats_json),
                "application/json",
                ("metadata",),
                "changed area statistics (JSON)",
                source=source(stats_json),
            ),
            AssetFile(
                "quicklook",
                published(quicklook),
                "image/png",
                ("overview",),
                "quick-look: before, after, change",
                source=source(quicklook),
            ),
        ]
        fingerprint = info.fingerprint[:16] or "unknown"
        collection_id = f"seg2change-{fingerprint}"
        item_id = (
            f"{collection_id}-{datetime.fromisoformat(before['start']):%Y%m%d}"
            f"-{datetime.fromisoformat(after['end']):%Y%m%d}"
        )
        item = build_item(
            info,
            item_id=item_id,
            collection_id=collection_id,
            start=before["start"],
            end=after["end"],
            provenance=provenance,
            lineage=_lineage(job_doc, provenance, json.loads(str(info.attrs.get("models", "[]")))),
            assets=assets,
            item_dir=published(stac_dir),
        )
        collection = build_collection(item)
        validation = (validate_stac(collection), validate_stac(item))
        collection_path, item_path = write_stac(collection, item, stac_dir)
        if not out.is_local:
            # The STAC goes last, once every file it describes is in place.
            files = [c.path for c in cogs.values()]
            files += [c.sidecar for c in cogs.values() if c.sidecar is not None]
            files += [
                parquet,
                stats_json,
                quicklook,
                collection_path,
                item_path,
            ]
            for n, path in enumerate(files):
                published(path).upload(path)
                update("upload", n + 1, len(files))
        update("STAC", 1, 1)
    log.info(
        "published %s: %d COGs, statistics (%d zone(s)), quick-look, STAC %s",
        out,
        len(cogs),
        len(stats.totals),
        published(collection_path),
    )
    return PublishResult(
        cogs={layer: published(c.path) for layer, c in cogs.items()},
        stac_collection=published(collection_path),
        stac_item=published(item_path),
        statistics_parquet=published(parquet),
        statistics_json=published(stats_json),
        quicklook=published(quicklook),
        statistics=stats,
        validation=validation,
    )
