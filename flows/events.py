"""The job of a reported event (flood, fire, storm, earthquake): its windows, area and prompts.

Pure functions, without Prefect: :mod:`flows.response` runs the job they build, and the command
line builds it first, so that a bad event is refused before Prefect and the engine are imported.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Literal

from pipeline.errors import JobSpecError
from pipeline.spec import JobSpec

__all__ = [
    "HAZARD_PROMPTS",
    "Hazard",
    "check_footprints",
    "event_job",
    "event_windows",
    "parse_area",
]

Hazard = Literal["flood", "fire", "storm", "earthquake"]

#: Default prompts per hazard: the classes to map and the target whose gain is the affected area.
HAZARD_PROMPTS: dict[str, dict[str, list[str]]] = {
    "flood": {"classes": ["water", "vegetation", "built-up", "bare soil"], "targets": ["water"]},
    "fire": {
        "classes": ["burned area", "vegetation", "bare soil", "water", "built-up"],
        "targets": ["burned area"],
    },
    "storm": {
        "classes": ["building,roof,house", "vegetation", "bare soil", "water"],
        "targets": ["building"],
    },
    "earthquake": {
        "classes": ["building,roof,house", "vegetation", "bare soil", "water"],
        "targets": ["building"],
    },
}


def event_windows(event_date: date, before_days: int = 60, after_days: int = 14) -> tuple[str, str]:
    """Return the (before, after) windows of an event as ``START/END`` strings.

    ``before`` is ``[event - before_days, event - 1 day]``; ``after`` is
    ``[event, event + after_days]``, both ends included.

    Examples
    --------
    >>> event_windows(date(2024, 6, 1))
    ('2024-04-02/2024-05-31', '2024-06-01/2024-06-15')
    """
    if before_days < 1 or after_days < 0:
        raise JobSpecError(
            f"before_days must be >= 1 and after_days >= 0, got {before_days} and {after_days}; "
            "e.g. 60 and 14"
        )
    before = f"{event_date - timedelta(days=before_days)}/{event_date - timedelta(days=1)}"
    after_end = event_date + timedelta(days=max(after_days, 1))
    return before, f"{event_date}/{after_end}"


def parse_area(area: str | Sequence[float] | Mapping[str, Any], crs: str = "EPSG:4326") -> dict[str, Any]:
    """Turn an event area into the job's ``aoi`` field, for :class:`pipeline.spec.AreaOfInterest` to
    read and check (it reads GeoJSON files, unions features and checks bboxes and geometries).

    Only what the spec does not read is parsed here: text (JSON, ``"xmin,ymin,xmax,ymax"`` or a file
    path) becomes the document, bbox or ``geometry`` path it stands for.

    Parameters
    ----------
    area
        A GeoJSON file path, a GeoJSON document (mapping or JSON text), a bbox
        ``[xmin, ymin, xmax, ymax]`` or the text ``"xmin,ymin,xmax,ymax"``.
    crs
        CRS of the bbox or geometry coordinates; a Feature or FeatureCollection is WGS84.

    Raises
    ------
    JobSpecError
        Text that looks like JSON but is not, or features given in another CRS than WGS84.
    """
    if isinstance(area, str):
        text = area.strip()
        parts = [p for p in text.replace(" ", ",").split(",") if p]
        if text.startswith(("{", "[")):
            try:
                area = json.loads(text)
            except json.JSONDecodeError as exc:
                raise JobSpecError(f"area looks like JSON but is not ({exc}); give valid GeoJSON") from None
        elif len(parts) == 4 and all(_is_number(p) for p in parts):
            area = [float(p) for p in parts]
        else:
            return {"geometry": text, "crs": crs}  # a GeoJSON file
    if isinstance(area, Mapping):
        if area.get("type") not in {"Feature", "FeatureCollection"}:
            return {"geometry": dict(area), "crs": crs}
        if crs.upper() not in {"EPSG:4326", "OGC:CRS84"}:
            raise JobSpecError(
                f"area is a GeoJSON {area['type']}, whose coordinates are WGS84 longitude/latitude "
                f"(RFC 7946), but area_crs is {crs}; leave area_crs at EPSG:4326, or give the bare "
                "geometry or a bbox in that CRS"
            )
        return dict(area)
    return {"bbox": list(area), "crs": crs}


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def event_job(
    area: str | Sequence[float] | Mapping[str, Any],
    event_date: date,
    hazard: Hazard,
    catalog: str,
    collections: str | Sequence[str],
    output: str,
    *,
    area_crs: str = "EPSG:4326",
    before_days: int = 60,
    after_days: int = 14,
    prompts: Mapping[str, Any] | None = None,
    block_size: int = 512,
    tile_size: int | None = None,
    job_options: Mapping[str, Any] | None = None,
) -> JobSpec:
    """Build and validate the job of an event (:func:`flows.response.response_flow` runs it).

    Parameters
    ----------
    area
        GeoJSON file path, GeoJSON document, or bbox (``[xmin, ymin, xmax, ymax]`` or
        ``"xmin,ymin,xmax,ymax"``) in ``area_crs``.
    event_date
        Day of the event: the first day of the *after* window.
    hazard
        ``flood``, ``fire``, ``storm`` or ``earthquake``: picks the default prompts.
    catalog, collections
        STAC API URL (or local catalog file) and collection ids (list or comma-separated).
    output
        Output folder.
    area_crs
        CRS of the area's coordinates.
    before_days, after_days
        Window lengths around the event (60 and 14 days).
    prompts
        Classes and targets (``{"classes": [...], "targets": [...]}``); default: the hazard's.
    block_size
        Input/output block side, small (512) so that the first blocks come quickly.
    tile_size
        Model tile side; default: the change model's own (CACH's 504 px, which it computes
        without padding), in pixels whatever the imagery's resolution. Given, the overlap is a
        quarter of it (at most 64 px).
    job_options
        Further job fields (``bands``, ``quality``, ``grid``, ``cloud_limit``, ``models``,
        ``cluster``, ``tiling``...); their ``tiling`` replaces the fields above.

    Raises
    ------
    JobSpecError
        Any invalid field, with the fix in the message.
    """
    if hazard not in HAZARD_PROMPTS:
        raise JobSpecError(f"hazard {hazard!r} is unknown; use one of {', '.join(HAZARD_PROMPTS)}")
    before, after = event_windows(event_date, before_days, after_days)
    options = dict(job_options or {})
    tiling: dict[str, Any] = {"block_size": block_size}
    if tile_size is not None:
        tiling.update(tile_size=tile_size, overlap=min(64, tile_size // 4))
    tiling.update(options.pop("tiling", None) or {})
    fields: dict[str, Any] = {
        "aoi": parse_area(area, area_crs),
        "before": before,
        "after": after,
        "catalog": catalog,
        "collections": collections,
        "output": output,
        "block_size": block_size,
        "prompts": dict(prompts) if prompts is not None else HAZARD_PROMPTS[hazard],
        "tiling": tiling,
    }
    fields.update(options)
    return JobSpec.build(**fields)


def check_footprints(footprints: str | None, output: str, threshold: float) -> None:
    """Refuse footprints that cannot be measured, before any work.

    Raises
    ------
    JobSpecError
        A missing footprints file, a threshold outside (0, 1], or an output that is not a local folder.
    """
    if footprints is None:
        return
    if not Path(footprints).expanduser().is_file():
        raise JobSpecError(f"footprints file {footprints} does not exist; give a GeoJSON or GeoParquet file")
    if not 0 < threshold <= 1:
        raise JobSpecError(f"affected_threshold is a changed fraction in (0, 1], got {threshold}; e.g. 0.25")
    if "://" in output:
        raise JobSpecError(
            f"per-feature impact is written to local output folders only, and {output} is not one; "
            "give a local output folder, or leave out the footprints"
        )
