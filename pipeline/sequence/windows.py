"""The windows cube: each window's composite computed once, along ``time``, and the pairs' inputs cut from it.

A sequence of N windows has N composites. :func:`prepare_windows` computes each one once (the
same median composite of the same scenes that :mod:`pipeline.cube` makes for a job's epoch) and
appends it to ``windows.zarr`` beside the sequence cube:

=========================  ==================  =======================================================
variable                   dims                meaning
=========================  ==================  =======================================================
``reflectance``            (time, band, y, x)  float32 median clear-sky surface reflectance, NaN nodata
``clear_count``            (time, y, x)        uint8 clear observations in the composite
``time``                   (time,)             each window's start (UTC); ``bounds: time_bounds``
``time_bounds``            (time, nv)          each window's start and end (UTC)
``band``, ``y``, ``x``     coordinates         as in the input cube
``spatial_ref``            --                  the grid's CRS (CF grid mapping)
=========================  ==================  =======================================================

Root attributes: the input cube's ``title``, ``Conventions`` and ``software``; ``windows`` (the
windows written, ``START/END`` in UTC, in order), ``window_items`` (per window, the STAC items its
composite was made of, as :meth:`pipeline.discover.Discovery.provenance` records them) and
``window_fields`` (hash of the job fields that decide a composite). A window is appended by
growing the arrays along ``time`` (xarray's ``append_dim``), writing its composite block by block
(memory bounded by the block, as :func:`pipeline.cube_write.write_cube`), and only then listing it
in ``windows``; a run killed before that cuts the arrays back to the listed windows and computes the
window again.

Each pair then gets its input cube from the windows cube (:func:`materialise_pair_input`): the
two time slices, copied block by block through :func:`pipeline.cube_write.write_cube` into the
pair's ``input_cube.zarr`` with the job, provenance and :data:`~pipeline.cube.INPUT_FINGERPRINT`
that the prepare stage computes for the pair, so :func:`pipeline.run.run_job`'s prepare finds it
done and reuses it. Copying chunks costs a read and a write of the two composites, against the
reads of every scene and the medians of compositing. Giving the infer stage the two time slices
directly would save that copy, but the engine reads, checks and fingerprints an ``(epoch, band, y,
x)`` input cube (:func:`pipeline.cube.describe_input`); materialising keeps each pair a plain job
with every guarantee of one (its lock, restart from finished blocks, byte-identical outputs,
publishing from its own folder).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import warnings
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr

from pipeline.cube import INPUT_FIELDS, INPUT_FINGERPRINT, cube_path, input_fingerprint, write_cube
from pipeline.cube_assembly import assemble_region, region_bounds, whole_grid_stacks
from pipeline.cube_schema import ATTR_JOB, ATTR_PROVENANCE, ATTR_SOFTWARE, CLEAR_COUNT, EPOCHS, REFLECTANCE
from pipeline.discover import Discovery, discover_window
from pipeline.errors import NothingFoundError, OutputExistsError
from pipeline.progress import make_progress
from pipeline.sequence.spec import SequenceSpec
from pipeline.signers import resolve_signer
from pipeline.spec import JobSpec, TimeWindow
from pipeline.storage import EMPTY_FOLDER_WARNING, Location
from pipeline.zarr_cf import cf_coordinates, string_labels

__all__ = [
    "WINDOWS_CUBE",
    "WindowsCube",
    "materialise_pair_input",
    "materialise_reference_input",
    "prepare_windows",
    "windows_cube_path",
]

log = logging.getLogger(__name__)

#: Name of the windows cube inside a sequence's output folder.
WINDOWS_CUBE = "windows.zarr"

#: Job fields that decide a window's composite: the input cube's less the two windows.
_WINDOW_FIELDS = tuple(field for field in INPUT_FIELDS if field not in ("before", "after"))
_TIME_ENCODING = {
    "units": "microseconds since 1970-01-01",
    "calendar": "proleptic_gregorian",
    "dtype": "int64",
}
_TIMED = (REFLECTANCE, CLEAR_COUNT, "time", "time_bounds")

# Called through this module's global, so that a test can count the composites computed.
_assemble = assemble_region


@dataclass(frozen=True)
class WindowsCube:
    """The windows cube after :func:`prepare_windows`.

    Attributes
    ----------
    path
        Where it lies.
    windows
        The windows it holds (``START/END``, UTC), in order.
    computed
        The windows (1-based) whose composite was computed now; the others were there before.
    """

    path: Path
    windows: tuple[str, ...]
    computed: tuple[int, ...]


def windows_cube_path(spec: SequenceSpec) -> Path:
    """Where the sequence's windows cube lies."""
    return Path(spec.output) / WINDOWS_CUBE


def prepare_windows(spec: SequenceSpec, *, progress: bool = True) -> WindowsCube:
    """Compute the composite of each window of ``spec`` not yet in its windows cube, and append it.

    The caller holds the sequence's output lock.

    Raises
    ------
    OutputExistsError
        The windows cube was made with other job fields, or holds windows that the requested ones
        do not extend at the end; nothing is changed.
    NothingFoundError
        A window to compute has no scene within the cloud limit.
    """
    path = windows_cube_path(spec)
    job = spec.pair_job(1)
    fields = _fields_hash(job)
    windows = spec.window_dates()
    done = _windows_done(path, windows, fields)
    computed: list[int] = []
    for w in range(done + 1, len(windows) + 1):
        log.info(
            "sequence %s: composite of window %d of %d (%s)", spec.output, w, len(windows), windows[w - 1]
        )
        _append_window(spec, job, path, w, fields, progress=progress)
        computed.append(w)
    return WindowsCube(path, tuple(windows), tuple(computed))


def materialise_pair_input(spec: SequenceSpec, k: int, *, progress: bool = True) -> Location | None:
    """Write pair ``k``'s input cube from windows ``k`` and ``k + 1`` of the windows cube.

    Written only when the pair has no input cube yet (or a partial one of the same fingerprint,
    which is resumed); an existing one is left to the prepare stage, which reuses it when it holds
    the same job fields and scenes and refuses it otherwise. Returns where it was written, or
    ``None`` when it was left alone.
    """
    return _materialise(spec, spec.pair_job(k), (k, k + 1), progress=progress)


def materialise_reference_input(spec: SequenceSpec, w: int, *, progress: bool = True) -> Location | None:
    """Write the input cube of window ``w``'s reference pair (:meth:`SequenceSpec.reference_job`),
    as :func:`materialise_pair_input` does for a consecutive pair."""
    return _materialise(spec, spec.reference_job(w), spec.reference_pair(w), progress=progress)


def _materialise(
    spec: SequenceSpec, job: JobSpec, windows: tuple[int, int], *, progress: bool
) -> Location | None:
    """Cut ``job``'s input cube from the windows (1-based, earlier first) of the windows cube."""
    target = cube_path(job)
    if target.exists():
        return None
    a, b = windows
    stored = xr.open_zarr(str(windows_cube_path(spec)), consolidated=True, decode_coords="all")
    records = [json.loads(str(stored.attrs["window_items"][w - 1])) for w in (a, b)]
    discovery = _recorded_discovery(records)
    fingerprint = input_fingerprint(job, discovery)
    pair = stored[[REFLECTANCE, CLEAR_COUNT]].isel(time=[a - 1, b - 1])
    pair = pair.rename({"time": "epoch"}).drop_vars(["epoch"])
    pair = pair.assign_coords(epoch=string_labels(list(EPOCHS), job.zarr_format))
    pair.attrs = {
        key: stored.attrs[key] for key in ("title", "Conventions", ATTR_SOFTWARE) if key in stored.attrs
    }
    pair.attrs.update(
        {
            ATTR_JOB: job.model_dump_json(),
            ATTR_PROVENANCE: json.dumps(discovery.provenance()),
            INPUT_FINGERPRINT: fingerprint,
        }
    )
    for variable in pair.data_vars.values():  # the stored chunking and codecs are write_cube's to choose
        variable.encoding = {
            k: v for k, v in variable.encoding.items() if k in ("_FillValue", "grid_mapping")
        }
    log.info("input cube of %s cut from windows %d and %d of %s", job.output, a, b, windows_cube_path(spec))
    return write_cube(pair, target, progress=progress, zarr_format=job.zarr_format, resume_key=fingerprint)


def _fields_hash(job: JobSpec) -> str:
    doc = job.model_dump(mode="json", include=set(_WINDOW_FIELDS))
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _windows_done(path: Path, windows: list[str], fields: str) -> int:
    """Windows already in the cube at ``path`` (0 if none), after cutting off a half-appended one.

    Raises
    ------
    OutputExistsError
        The cube was made with other job fields or does not start with ``windows``.
    """
    if not path.exists():
        return 0
    try:
        group = zarr.open_group(str(path), mode="r+", use_consolidated=False)
    except (OSError, ValueError, KeyError, zarr.errors.GroupNotFoundError):
        group = None
    if group is None or "windows" not in group.attrs:
        # Killed before its first window was listed: nothing in it to keep.
        shutil.rmtree(path)
        return 0
    if group.attrs.get("window_fields") != fields:
        raise OutputExistsError(
            f"the windows cube {path} was made with other job fields (area, grid, bands, collections, "
            "cloud limit, quality or block size); nothing was changed: give the sequence a new output "
            "folder to run it with these fields, or replace it (--overwrite)"
        )
    done = [str(w) for w in group.attrs["windows"]]  # type: ignore[union-attr]
    if windows[: len(done)] != done:
        raise OutputExistsError(
            f"the windows cube {path} holds windows {done}, which do not start the requested windows "
            f"{windows}; windows can only be appended at the end: give a new output folder, or replace it "
            "(--overwrite)"
        )
    _cut_to(group, len(done))
    return len(done)


def _cut_to(group: zarr.Group, n: int) -> None:
    """Shrink the time-indexed arrays to ``n`` windows (dropping a window whose append was cut short)."""
    cut = False
    for name in _TIMED:
        array = group[name]
        assert isinstance(array, zarr.Array)
        if array.shape[0] > n:
            array.resize((n, *array.shape[1:]))
            cut = True
    if cut:
        log.info(
            "windows cube %s: dropping a window left half-written by a run that was stopped", group.store
        )
        zarr.consolidate_metadata(group.store)


def _discover(job: JobSpec, w: int, window: TimeWindow) -> Discovery:
    """A :class:`Discovery` of window ``w``'s items, as both epochs (see :func:`_window_dataset`)."""
    signer = resolve_signer(job.catalog.sign) if job.catalog.sign else None
    items, mode = discover_window(job, window, signer=signer)
    if not items:
        raise NothingFoundError(
            f"no scene found in window {w} ({window.start.date()} to {window.end.date()}) in collections "
            f"{', '.join(job.collections)} of {job.catalog.url} with eo:cloud_cover <= {job.cloud_limit:g}% "
            "over the AOI; widen the window, raise cloud_limit, or check the collection ids"
        )
    return Discovery(
        items={"before": items, "after": items},
        filter_mode=mode,
        catalog=job.catalog.url,
        cloud_limit=job.cloud_limit,
        collections=job.collections,
        signer=job.catalog.sign,
    )


def _window_dataset(job: JobSpec, found: Discovery, bounds: tuple[float, float, float, float]) -> xr.Dataset:
    """One window's lazy composite over ``bounds``, along a ``time`` axis of length 1.

    :func:`pipeline.cube.assemble_region` composites each epoch on its own; given the window's
    items for both epochs, its ``before`` epoch is the window's composite (the ``after`` half of
    the lazy graph is never computed).
    """
    ds = _assemble(job, found, bounds)[[REFLECTANCE, CLEAR_COUNT]].isel(epoch=[0])
    return ds.rename({"epoch": "time"}).drop_vars("time")


def _append_window(
    spec: SequenceSpec, job: JobSpec, path: Path, w: int, fields: str, *, progress: bool
) -> None:
    """Compute window ``w``'s composite and append it to the windows cube at ``path``."""
    window, window_text = spec.windows[w - 1], spec.window_dates()[w - 1]
    found = _discover(job, w, window)
    template = _window_dataset(job, found, job.target_bounds())
    start, end = (
        np.datetime64(t.astimezone(UTC).replace(tzinfo=None), "ns") for t in (window.start, window.end)
    )
    template = template.assign_coords(time=("time", np.array([start], dtype="datetime64[ns]")))
    template["time_bounds"] = (("time", "nv"), np.array([[start, end]], dtype="datetime64[ns]"))
    template["time"].attrs.update(bounds="time_bounds", long_name="start of the window", standard_name="time")
    template["time"].encoding.update(_TIME_ENCODING)
    template["time_bounds"].encoding.update(_TIME_ENCODING)
    for name, variable in template.data_vars.items():
        if variable.chunks:
            template[name].encoding["chunks"] = variable.data.chunksize
        if cf_coordinates(variable):
            template[name].encoding["coordinates"] = cf_coordinates(variable)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Consolidated metadata", UserWarning)
        warnings.filterwarnings("ignore", "All-NaN slice encountered", RuntimeWarning)
        warnings.filterwarnings("ignore", EMPTY_FOLDER_WARNING)
        if w == 1:
            attrs = {key: template.attrs[key] for key in ("title", "Conventions", ATTR_SOFTWARE)}
            attrs["window_fields"] = fields
            template.attrs = {}
            template.to_zarr(
                str(path), mode="w-", zarr_format=job.zarr_format, consolidated=False, compute=False
            )
        else:
            attrs = dict(zarr.open_group(str(path), mode="r", use_consolidated=False).attrs)
            timed = template[[REFLECTANCE, CLEAR_COUNT, "time_bounds"]].drop_vars(
                [c for c in template.coords if c != "time"]
            )
            timed.attrs = attrs  # xarray's append replaces the root attributes with these
            timed.to_zarr(str(path), append_dim="time", consolidated=False, compute=False)
        _write_blocks(job, found, path, w, template, progress)
        record = found.provenance()
        record["items"] = record["items"]["before"]
        attrs["windows"] = [*attrs.get("windows", []), window_text]
        attrs["window_items"] = [*attrs.get("window_items", []), json.dumps(record)]
        zarr.open_group(str(path), mode="r+", use_consolidated=False).attrs.put(attrs)
        zarr.consolidate_metadata(str(path))


def _write_blocks(
    job: JobSpec, found: Discovery, path: Path, w: int, template: xr.Dataset, progress: bool
) -> None:
    """Compute window ``w``'s composite one spatial block at a time into its ``time`` slice."""
    display = make_progress(enabled=progress)
    y0s = np.cumsum((0, *template.chunks["y"]))
    x0s = np.cumsum((0, *template.chunks["x"]))
    # Each block sliced from one stack per window over the whole grid (as the pair cube is written).
    with display, whole_grid_stacks():
        task = display.add_task(f"composite of window {w}", total=(len(y0s) - 1) * (len(x0s) - 1))
        for ys in (slice(int(a), int(b)) for a, b in zip(y0s[:-1], y0s[1:], strict=True)):
            for xs in (slice(int(a), int(b)) for a, b in zip(x0s[:-1], x0s[1:], strict=True)):
                block = _window_dataset(job, found, region_bounds(job, ys, xs))
                block = block.drop_vars(list(block.coords))
                block.to_zarr(
                    str(path),
                    region={"time": slice(w - 1, w), "y": ys, "x": xs},
                    mode="r+",
                    consolidated=False,
                )
                display.advance(task)


def _recorded_discovery(records: list[dict[str, Any]]) -> Discovery:
    """A two-window :class:`Discovery` of the items the windows cube records (ids and provenance).

    Its items hold what :meth:`Discovery.provenance` and :func:`pipeline.cube.input_fingerprint`
    read: id, collection, datetime, cloud cover and the item's own link.
    """

    def item(record: dict[str, Any]) -> dict[str, Any]:
        links = [{"rel": "self", "href": record["href"]}] if record.get("href") else []
        properties = {"datetime": record.get("datetime"), "eo:cloud_cover": record.get("eo:cloud_cover")}
        return {
            "id": record["id"],
            "collection": record.get("collection"),
            "properties": properties,
            "links": links,
        }

    first, second = records
    return Discovery(
        items={"before": [item(r) for r in first["items"]], "after": [item(r) for r in second["items"]]},
        filter_mode=second["filter_mode"],
        catalog=second["catalog"],
        cloud_limit=float(second["cloud_limit"]),
        collections=tuple(second["collections"]),
        searched_at=second["searched_at"],
        signer=second.get("href_signer"),
    )
