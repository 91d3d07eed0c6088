"""What an output path holds (nothing, something else, a partial or finished change cube), and
whether a job may write there."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import zarr

from pipeline.change_cube.schema import (
    ATTR_COMPLETE,
    ATTR_FINGERPRINT,
    ATTR_FORMAT,
    ATTR_INFERENCE,
    DONE,
    FORMAT,
    LAYERS,
)
from pipeline.errors import ChangeCubeMismatchError, OutputExistsError
from pipeline.faults import fault_point
from pipeline.storage import Location, LocationLike

__all__ = [
    "CubeState",
    "change_cube_is_complete",
    "check_reusable",
    "creation_marker",
    "inspect_change_cube",
    "remove_change_cube",
]


@dataclass(frozen=True)
class CubeState:
    """What an existing output path holds.

    Attributes
    ----------
    exists
        Something is at the path.
    is_change_cube
        It is a change cube (has the :data:`FORMAT` attribute).
    fingerprint
        Its job fingerprint, or None.
    complete
        Every block is done.
    attrs
        Its root attributes.
    creating
        Its creation never finished (the creation marker is there, or arrays are missing): it is to
        be created again.
    """

    exists: bool
    is_change_cube: bool = False
    fingerprint: str | None = None
    complete: bool = False
    attrs: Mapping[str, Any] | None = None
    creating: bool = False


def creation_marker(path: LocationLike) -> Location:
    """The marker that lies beside a change cube while it is being created."""
    location = Location.parse(path)
    return location.parent / f".{location.name}.creating"


def inspect_change_cube(path: LocationLike) -> CubeState:
    """Say what ``path`` holds: nothing, something else, or a (partial or complete) change cube."""
    location = Location.parse(path)
    if creation_marker(location).exists():
        return CubeState(exists=True, creating=True)
    if not location.exists():
        return CubeState(exists=False)
    try:
        group = zarr.open_group(location.zarr_store(read_only=True), mode="r")
        attrs = dict(group.attrs)
    except Exception:
        return CubeState(exists=True)
    if attrs.get(ATTR_FORMAT) != FORMAT:
        return CubeState(exists=True, attrs=attrs)
    fingerprint = attrs.get(ATTR_FINGERPRINT)
    return CubeState(
        exists=True,
        is_change_cube=True,
        fingerprint=None if fingerprint is None else str(fingerprint),
        complete=bool(attrs.get(ATTR_COMPLETE, False)),
        attrs=attrs,
        # A cube whose creation was cut short before creation markers existed lacks arrays.
        creating=bool(_missing_arrays(location)),
    )


def change_cube_is_complete(path: LocationLike) -> bool:
    """Whether ``path`` holds a change cube whose every block is done and that was finalised."""
    state = inspect_change_cube(path)
    return state.is_change_cube and state.complete


def _missing_arrays(location: Location) -> list[str]:
    """The arrays of a change cube that its store lacks (read past the consolidated metadata)."""
    group = zarr.open_group(location.zarr_store(read_only=True), mode="r", use_consolidated=False)
    return [name for name in (*LAYERS, DONE) if name not in group]


def check_reusable(
    path: LocationLike, state: CubeState, fingerprint: str, inference: Mapping[str, Any]
) -> None:
    """Refuse an existing output that this job must not write into.

    Raises
    ------
    OutputExistsError
        When ``path`` holds something that is not a change cube.
    ChangeCubeMismatchError
        When it is a change cube of a different job; the message names the differing fields.
    """
    if not state.exists:
        return
    if not state.is_change_cube:
        raise OutputExistsError(
            f"{path} exists and is not a seg2change change cube; choose another output path, "
            "or pass --overwrite (force=True in Python) to replace it"
        )
    if state.fingerprint == fingerprint:
        return
    previous: dict[str, Any] = {}
    if state.attrs is not None:
        try:
            previous = json.loads(state.attrs.get(ATTR_INFERENCE, "{}"))
        except (TypeError, json.JSONDecodeError):
            previous = {}
    differing = sorted(k for k in set(previous) | set(inference) if previous.get(k) != inference.get(k))
    detail = f" (differs in: {', '.join(differing)})" if differing else ""
    raise ChangeCubeMismatchError(
        f"{path} holds the change cube of a different job{detail}; it is kept as it is. "
        "Pass --overwrite (force=True in Python) to replace it, or choose another output path"
    )


def remove_change_cube(path: LocationLike) -> None:
    """Delete an output path (a change cube or what else lies there), and its creation marker.

    The marker is written first, so that a run killed while deleting leaves a cube that the next
    run recognises as half-made and creates again (rather than refusing it as "not a change cube").
    """
    marker = creation_marker(path)
    marker.write_text(json.dumps({"removing": True}))
    Location.parse(path).remove()
    fault_point("change-cube:removed")
    marker.remove()
