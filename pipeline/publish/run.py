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

import contextlib
import json
import logging
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pipeline.change_cube import ATTR_JOB, describe_change_cube
from pipeline.cube_read import recorded_provenance
from pipeline.discover import Discovery
from pipeline.errors import PublishError
from pipeline.progress import staged_progress
from pipeline.publish.cogs import COG_MEDIA_TYPE
from pipeline.publish.registry import Artifact, PublishContext, Publisher, needed_by, resolve_publishers
from pipeline.publish.stac_validation import StacValidation
from pipeline.publish.statistics import ChangeStatistics
from pipeline.publish.zones import load_zones
from pipeline.spec import DEFAULT_PUBLISHERS, JobSpec
from pipeline.storage import Location, LocationLike

__all__ = ["PublishResult", "publish"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishResult:
    """What :func:`publish` wrote.

    Attributes
    ----------
    artifacts
        The artifacts of each publisher, in the job's order of publishers.
    locations
        Where each artifact is published, by artifact key.

    The properties name the files of the built-in publishers; each raises :class:`PublishError`
    when its publisher was not run.
    """

    artifacts: Mapping[str, tuple[Artifact, ...]]
    locations: Mapping[str, Location]

    def _of(self, publisher: str) -> tuple[Artifact, ...]:
        try:
            return self.artifacts[publisher]
        except KeyError:
            raise PublishError(
                f"the job's publishers ({', '.join(self.artifacts)}) do not include {publisher!r}, so nothing "
                f"of it was published; add {publisher!r} to the job's publishers"
            ) from None

    def _artifact(self, publisher: str, key: str) -> Artifact:
        for artifact in self._of(publisher):
            if artifact.key == key:
                return artifact
        raise PublishError(f"publisher {publisher!r} published no {key!r}")

    @property
    def cogs(self) -> dict[str, Location]:
        """COG per layer."""
        return {a.key: self.locations[a.key] for a in self._of("cog") if a.media_type == COG_MEDIA_TYPE}

    @property
    def stac_collection(self) -> Location:
        """The STAC Collection."""
        return self.locations[self._artifact("stac", "stac_collection").key]

    @property
    def stac_item(self) -> Location:
        """The STAC Item."""
        return self.locations[self._artifact("stac", "stac_item").key]

    @property
    def statistics_parquet(self) -> Location:
        """The statistics as Parquet."""
        return self.locations[self._artifact("statistics", "statistics_parquet").key]

    @property
    def statistics_json(self) -> Location:
        """The statistics as JSON."""
        return self.locations[self._artifact("statistics", "statistics_json").key]

    @property
    def quicklook(self) -> Location:
        """The quick-look PNG."""
        return self.locations[self._artifact("quicklook", "quicklook").key]

    @property
    def statistics(self) -> ChangeStatistics:
        """The statistics (print them with :func:`pipeline.publish.statistics_table`)."""
        stats: ChangeStatistics = self._artifact("statistics", "statistics_json").value
        return stats

    @property
    def validation(self) -> tuple[StacValidation, ...]:
        """What the STAC validation checked (collection, item)."""
        return (
            self._artifact("stac", "stac_collection").value,
            self._artifact("stac", "stac_item").value,
        )


def _job_doc(job: JobSpec | Mapping[str, Any] | None, attrs: Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(job, JobSpec):
        return job.model_dump(mode="json")
    if job is not None:
        return dict(job)
    try:
        return dict(json.loads(str(attrs[ATTR_JOB])))
    except (KeyError, json.JSONDecodeError, TypeError):
        raise PublishError("no job given and the change cube records none; pass the job to publish") from None


def _provenance(discovery: Discovery | Mapping[str, Any] | None, input_cube: Location) -> dict[str, Any]:
    if isinstance(discovery, Discovery):
        return discovery.provenance()
    if discovery is not None:
        return dict(discovery)
    recorded = recorded_provenance(input_cube)
    if recorded is None:
        raise PublishError(
            f"no discovery given and the input cube {input_cube} records no provenance; pass the Discovery "
            "(or its provenance() dict) so the STAC can link the input items"
        )
    return recorded


def publish(
    job: JobSpec | Mapping[str, Any] | None,
    change_cube: LocationLike,
    input_cube: LocationLike,
    discovery: Discovery | Mapping[str, Any] | None,
    out_dir: LocationLike,
    *,
    zones: Path | None = None,
    publishers: Sequence[str] | None = None,
    progress: bool = True,
) -> PublishResult:
    """Publish a finished change cube: by default COGs, statistics, quick-look PNG and STAC.

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
        Output folder, local or an fsspec URL: by default ``cogs/``, ``stac/``,
        ``statistics.parquet``, ``statistics.json`` and ``quicklook.png`` are written there;
        nothing else in it is touched.
    zones
        GeoJSON FeatureCollection of polygons for per-zone statistics; default: the job's
        ``zones``, if any.
    publishers
        Registered publisher names, in order (see :mod:`pipeline.publish.registry`); default:
        the job's ``publishers``, else :data:`~pipeline.spec.DEFAULT_PUBLISHERS`.
    progress
        Show progress bars.

    Returns
    -------
    PublishResult

    Raises
    ------
    PublishError
        When the change cube is missing or incomplete, the zones are unusable, a publisher is
        unknown or listed before one it needs, or a file cannot be written; earlier published
        files are kept.
    StacValidationError
        When the STAC written is invalid (a bug: please report it).
    StorageError
        When the output's bucket is missing or cannot be reached with the credentials at hand.
    """
    out = Location.parse(out_dir)
    out.check_access()
    info = describe_change_cube(change_cube)
    job_doc = _job_doc(job, info.attrs)
    chosen = resolve_publishers(tuple(publishers or job_doc.get("publishers") or DEFAULT_PUBLISHERS))
    input_location = Location.parse(input_cube)
    provenance = _provenance(discovery, input_location)
    zones_path = zones if zones is not None else (Path(job_doc["zones"]) if job_doc.get("zones") else None)
    zone_list = tuple(load_zones(zones_path, info.crs)) if zones_path is not None else ()
    with contextlib.ExitStack() as stack:
        # A remote output's files are made in a local folder laid out like it, then uploaded.
        local = (
            out.local_path
            if out.is_local
            else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="seg2change-publish-")))
        )
        context = PublishContext(info, job_doc, provenance, zone_list, input_location, out, local)
        return _publish(chosen, context, progress)


def _publish(publishers: Sequence[Publisher], context: PublishContext, progress: bool) -> PublishResult:
    """Run the publishers into ``context.local``, then, when the output is elsewhere, upload their files.

    ``context.local`` is the output itself for a local output, else a temporary folder laid out
    like it; the files are uploaded in the publishers' order (the STAC, listed last, goes last,
    once every file it describes is in place).
    """
    with staged_progress(enabled=progress) as update:
        results = _run_publishers(publishers, replace(context, progress=update))
        files = [a.path for artifacts in results.values() for a in artifacts]
        if not context.out.is_local:
            for n, path in enumerate(files):
                context.published(path).upload(path)
                update("upload", n + 1, len(files))
    log.info(
        "published %s: %s",
        context.out,
        ", ".join(f"{name} ({len(artifacts)} file(s))" for name, artifacts in results.items()),
    )
    return PublishResult(
        artifacts=results,
        locations={a.key: context.published(a.path) for artifacts in results.values() for a in artifacts},
    )


def _run_publishers(
    publishers: Sequence[Publisher], context: PublishContext
) -> dict[str, tuple[Artifact, ...]]:
    """Run each publisher in a thread of its own once those it needs have finished; return their artifacts.

    The publishers' work reads the change cube by windows and releases the GIL while it decodes,
    counts and compresses, so the cores share it (the COGs overlap the statistics and the
    quick-look). The first failure, in the job's order, is raised once every publisher has stopped.
    """
    order = [p.name for p in publishers]
    futures: dict[str, Future[tuple[Artifact, ...]]] = {}

    def run(publisher: Publisher, waits: dict[str, Future[tuple[Artifact, ...]]]) -> tuple[Artifact, ...]:
        earlier = {name: future.result() for name, future in waits.items()}
        written = publisher.publish(replace(context, earlier=earlier))
        return _checked(publisher.name, written, context.local)

    with ThreadPoolExecutor(max_workers=len(publishers), thread_name_prefix="publish") as pool:
        for publisher in publishers:
            waits = {name: futures[name] for name in needed_by(publisher, order)}
            futures[publisher.name] = pool.submit(run, publisher, waits)
        results = {name: future.result() for name, future in futures.items()}
    keys = [a.key for artifacts in results.values() for a in artifacts]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise PublishError(
            f"artifact keys {repeated} are written by more than one publisher ({', '.join(order)}); "
            "give each publisher's artifacts keys of their own"
        )
    return results


def _checked(name: str, written: Any, local: Path) -> tuple[Artifact, ...]:
    """A publisher's artifacts, checked: Artifacts of files inside ``local`` that exist."""
    if not isinstance(written, Sequence) or not all(isinstance(a, Artifact) for a in written):
        raise PublishError(
            f"publisher {name!r} returned {written!r}; a publisher returns the list of Artifacts it wrote"
        )
    for artifact in written:
        if not artifact.path.is_relative_to(local) or not artifact.path.is_file():
            raise PublishError(
                f"publisher {name!r} names {artifact.path} as its artifact {artifact.key!r}, which is not a "
                f"file it wrote inside {local}; write into PublishContext.local"
            )
    return tuple(written)
