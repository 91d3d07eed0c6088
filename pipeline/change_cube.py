"""The change cube: the Zarr store the inference engine fills block by block, and how it is restarted.

Layout
------
All spatial variables share the input cube's ``y``/``x`` grid, CRS (CF ``spatial_ref`` plus GDAL's
``_CRS`` attribute) and transform; they are chunked in square ``block_size`` blocks, one chunk per
block and per variable, so no two tasks ever write the same chunk.

==========================  ========  =======  ==================================================
variable                    dtype     nodata   meaning
==========================  ========  =======  ==================================================
``change_probability``      float32   NaN      blended probability of change (agnostic head)
``change``                  uint8     255      1 where ``change_probability > 0.5``, else 0
``class_before``            uint8     255      class channel on the before date (argmax)
``class_after``             uint8     255      class channel on the after date (argmax)
``transition``              uint16    65535    ``class_before * K + class_after`` where changed,
                                               65534 (:data:`TRANSITION_NO_CHANGE`) where not
``target_change``           uint8     255      per target class (``target`` dimension): 1 where
                                               changed and either date is that class, else 0
``block_done``              uint8     (0)      1 once a block is completely written
==========================  ========  =======  ==================================================

Every layer lists ``spatial_ref`` in its ``coordinates`` and ``grid_mapping`` attributes, so a
plain ``xr.open_zarr`` gives ``.rio.crs`` and ``.rio.transform()``. In Zarr v3 (the default) the
integer layers' nodata is the array ``fill_value`` and a ``nodata`` attribute (no CF
``_FillValue``), so they open as integers; the probability's nodata is CF ``_FillValue`` NaN. The
``target`` labels are variable-length strings (Zarr v3 ``string``); in Zarr v2 they are
fixed-width and nodata is CF ``_FillValue`` (open with ``mask_and_scale=False`` to keep integers).

Class channels follow the :class:`~seg2change_core.prompts.PromptSet` order (background first when
there is one); ``K`` is their number and the labels are in the ``classes`` attribute and in CF
``flag_values``/``flag_meanings`` of the class maps. A pixel is nodata in every layer when any band
the models read is NaN on either date. Class maps, transition and binary change are derived
*after* blending, through :func:`seg2change_core.fusion.fuse`, so nothing is thresholded per tile.

Root attributes: ``format`` (:data:`FORMAT`), ``job`` (the job, JSON), ``inference`` (the
inference-relevant fields the fingerprint hashes, JSON), ``fingerprint``, ``models`` (name, source,
checkpoint SHA-256 or ``"none"``, JSON), ``model_fit`` (values fitted once per job, JSON),
``software``, ``block_size``, ``complete`` (true once every block is done). Metadata is
consolidated at creation and again on completion.

Restarting
----------
``block_done`` has one chunk per block. A task writes all of its block's chunks and only then
sets its ``block_done`` element. Each chunk is stored as one object: on a local disk zarr writes a
temporary file and renames it over the chunk (atomic within one file system), on object stores a
PUT is atomic. A run killed at any moment therefore leaves every block either marked done with all
of its chunks in place, or unmarked; unmarked blocks are recomputed in full by the next run, which
overwrites whatever partial chunks they left, so the finished cube has the same bytes as an
uninterrupted run. An unreadable marker (never expected, given atomic writes) counts as not done.

Creation is detectably incomplete: :func:`create_change_cube` first writes a creation marker
beside the cube (``.change_cube.zarr.creating``), then the cube, and removes the marker last. A run
that finds the marker (its predecessor was killed while creating) deletes the half-made cube and
creates it again; a creation task that Dask runs a second time (its first result lost with a
worker) finds the finished cube of the same job and leaves it as it is. Finalisation writes
``complete`` into the root metadata and consolidates again; a run killed between the last block
and ``complete`` finds every block done and only finalises.

Where it lies
-------------
Every function takes a local path or an fsspec URL (:class:`~pipeline.storage.Location`); on an
object store (``s3://bucket/prefix/change_cube.zarr``) each Dask worker writes its blocks' chunks
and markers there directly through zarr's ``FsspecStore``, so workers on other machines need
only the same credentials, never a shared disk.
"""

from __future__ import annotations

import json
import logging
import uuid
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import dask.array as da
import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
import zarr
from affine import Affine
from numpy.typing import NDArray
from pyproj import CRS

from pipeline import __version__
from pipeline.cube import cf_coordinates, gdal_crs_attribute
from pipeline.errors import ChangeCubeMismatchError, OutputExistsError
from pipeline.faults import fault_point
from pipeline.storage import EMPTY_FOLDER_WARNING, Location, LocationLike
from pipeline.tiling import Window

__all__ = [
    "DONE",
    "FORMAT",
    "LAYERS",
    "TRANSITION_NODATA",
    "TRANSITION_NO_CHANGE",
    "UINT8_NODATA",
    "BlockGrid",
    "BlockLayers",
    "ChangeCubeLayout",
    "CubeState",
    "check_reusable",
    "create_change_cube",
    "creation_marker",
    "finalise_change_cube",
    "inspect_change_cube",
    "open_change_cube",
    "read_done",
    "remove_change_cube",
    "write_block",
]

log = logging.getLogger(__name__)

#: Value of the ``format`` root attribute of a change cube.
FORMAT = "seg2change-change-cube/1"
#: Nodata of the uint8 layers.
UINT8_NODATA = 255
#: Transition code of valid pixels that did not change.
TRANSITION_NO_CHANGE = 65534
#: Transition code of nodata pixels.
TRANSITION_NODATA = 65535
#: Name of the per-block completion marker array.
DONE = "block_done"
#: The spatial layers, in writing order.
LAYERS = ("change_probability", "change", "class_before", "class_after", "transition", "target_change")

_NODATA: dict[str, Any] = {
    "change_probability": np.float32("nan"),
    "change": np.uint8(UINT8_NODATA),
    "class_before": np.uint8(UINT8_NODATA),
    "class_after": np.uint8(UINT8_NODATA),
    "transition": np.uint16(TRANSITION_NODATA),
    "target_change": np.uint8(UINT8_NODATA),
}


@dataclass(frozen=True)
class BlockGrid:
    """Square blocks of ``block_size`` pixels covering a ``height x width`` cube from its origin."""

    height: int
    width: int
    block_size: int

    @property
    def shape(self) -> tuple[int, int]:
        """Number of blocks ``(rows, cols)``."""
        return -(-self.height // self.block_size), -(-self.width // self.block_size)

    def __len__(self) -> int:
        rows, cols = self.shape
        return rows * cols

    def window(self, row: int, col: int) -> Window:
        """Pixels of block ``(row, col)`` (edge blocks are clipped to the cube)."""
        b = self.block_size
        return Window(row * b, min((row + 1) * b, self.height), col * b, min((col + 1) * b, self.width))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rows, cols = self.shape
        for row in range(rows):
            for col in range(cols):
                yield row, col


@dataclass(frozen=True)
class ChangeCubeLayout:
    """What fixes the shape of a change cube.

    Attributes
    ----------
    blocks
        The block grid (also the chunk grid).
    classes
        Class labels in channel order.
    targets
        Target class labels (the ``target`` dimension).
    zarr_format
        2 or 3.
    """

    blocks: BlockGrid
    classes: tuple[str, ...]
    targets: tuple[str, ...]
    zarr_format: Literal[2, 3] = 3


@dataclass(frozen=True)
class BlockLayers:
    """The output layers of one block, each ``(rows, cols)`` except ``target_change`` ``(T, rows, cols)``."""

    change_probability: NDArray[np.float32]
    change: NDArray[np.uint8]
    class_before: NDArray[np.uint8]
    class_after: NDArray[np.uint8]
    transition: NDArray[np.uint16]
    target_change: NDArray[np.uint8]

    def items(self) -> Iterator[tuple[str, NDArray[Any]]]:
        """``(name, array)`` pairs in :data:`LAYERS` order."""
        for name in LAYERS:
            yield name, getattr(self, name)


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
    if attrs.get("format") != FORMAT:
        return CubeState(exists=True, attrs=attrs)
    fingerprint = attrs.get("fingerprint")
    return CubeState(
        exists=True,
        is_change_cube=True,
        fingerprint=None if fingerprint is None else str(fingerprint),
        complete=bool(attrs.get("complete", False)),
        attrs=attrs,
        # A cube whose creation was cut short before creation markers existed lacks arrays.
        creating=bool(_missing_arrays(location)),
    )


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
            previous = json.loads(state.attrs.get("inference", "{}"))
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


def create_change_cube(
    path: LocationLike,
    layout: ChangeCubeLayout,
    *,
    y: NDArray[np.floating],
    x: NDArray[np.floating],
    crs: CRS,
    transform: Affine,
    attrs: Mapping[str, Any],
) -> None:
    """Write the empty change cube: metadata, coordinates, no data chunks, no block marked done.

    Idempotent, so that Dask may run it again when the worker holding its result is lost: a
    finished cube with the same ``fingerprint`` attribute is left as it is, and one whose
    creation was interrupted (:func:`creation_marker`) is deleted and created again.

    Parameters
    ----------
    path
        Where to create it (a local path or an fsspec URL); nothing but this job's cube (finished or
        interrupted) may lie there.
    layout
        Block grid, classes, targets and Zarr format.
    y, x
        Pixel-centre coordinates of the input grid.
    crs, transform
        The input grid's CRS and affine transform.
    attrs
        Root attributes (JSON-ready values) to record (job, fingerprint, models...).
    """
    blocks = layout.blocks
    h, w, b = blocks.height, blocks.width, blocks.block_size
    n_targets = len(layout.targets)
    spatial = (b, b)
    # Only the metadata is written (compute=False), so each layer is one named dask chunk: the
    # template's graph, and the time to build it, then stay the same whatever the area (a chunk
    # per block took 2.2 s at 32768 px), and the name spares hashing it. The Zarr chunks come
    # from the encoding below.
    template = uuid.uuid4().hex
    shapes = {name: (n_targets, h, w) if name == "target_change" else (h, w) for name in LAYERS}
    data: dict[str, tuple[tuple[str, ...], Any]] = {
        name: (
            ("target", "y", "x") if name == "target_change" else ("y", "x"),
            da.full(
                shapes[name], _NODATA[name], dtype=_NODATA[name].dtype, chunks=-1, name=f"{name}-{template}"
            ),
        )
        for name in LAYERS
    }
    rows, cols = blocks.shape
    data[DONE] = (
        ("block_row", "block_col"),
        da.zeros((rows, cols), dtype="uint8", chunks=-1, name=f"{DONE}-{template}"),
    )
    ds = xr.Dataset(
        data,
        coords={
            "y": np.asarray(y),
            "x": np.asarray(x),
            "target": _string_labels(layout.targets, layout.zarr_format),
        },
    )
    ds = ds.rio.write_crs(crs.to_wkt()).rio.write_transform(transform).rio.write_coordinate_system()
    classes = layout.classes
    flags = {
        "flag_values": list(range(len(classes))),
        "flag_meanings": " ".join(c.replace(" ", "_") for c in classes),
    }
    described: dict[str, dict[str, Any]] = {
        "change_probability": {"long_name": "probability of change (blended)", "units": "1"},
        "change": {
            "long_name": "binary change (probability > 0.5)",
            "flag_values": [0, 1],
            "flag_meanings": "unchanged changed",
        },
        "class_before": {"long_name": "class on the before date", **flags},
        "class_after": {"long_name": "class on the after date", **flags},
        "transition": {
            "long_name": "class transition code: class_before * K + class_after where changed",
            "num_classes": len(classes),
            "no_change_value": TRANSITION_NO_CHANGE,
        },
        "target_change": {
            "long_name": "change into or out of each target class",
            "flag_values": [0, 1],
            "flag_meanings": "no_target_change target_change",
        },
    }
    crs_attribute = gdal_crs_attribute(crs)
    for name in LAYERS:
        var = ds[name]
        var.attrs.update(described[name])
        var.attrs["_CRS"] = crs_attribute
        chunks = (n_targets, *spatial) if name == "target_change" else spatial
        _encode_layer(var, chunks, _NODATA[name], layout.zarr_format)
    done = ds[DONE]
    done.attrs.update(
        long_name="block completely written",
        flag_values=[0, 1],
        flag_meanings="pending done",
        block_size=b,
    )
    _encode_layer(done, (1, 1), np.uint8(0), layout.zarr_format, spatial=False)
    ds.attrs.update(
        {
            "title": "seg2change change cube",
            "Conventions": "CF-1.8",
            "format": FORMAT,
            "software": f"seg2change {__version__}",
            "block_size": b,
            "classes": json.dumps(list(classes)),
            "complete": False,
            **attrs,
        }
    )
    location = Location.parse(path)
    marker = creation_marker(location)
    if marker.exists():
        remove_change_cube(location)
    elif location.exists():
        state = inspect_change_cube(location)
        if state.is_change_cube and state.fingerprint == attrs.get("fingerprint"):
            return
        raise OutputExistsError(
            f"{location} already exists; the change cube is created only where nothing is"
        )
    marker.write_text(json.dumps({"fingerprint": attrs.get("fingerprint")}))
    fault_point("change-cube:creating")
    if location.is_local:
        location.local_path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", EMPTY_FOLDER_WARNING)
        # Consolidated metadata is a zarr-python extension for v3; it is what makes opening fast.
        warnings.filterwarnings("ignore", "Consolidated metadata", UserWarning)
        ds.to_zarr(
            location.zarr_store(),
            mode=location.zarr_create_mode,
            compute=False,
            zarr_format=layout.zarr_format,
            consolidated=True,
        )
    fault_point("change-cube:arrays-written")
    marker.remove()
    fault_point("change-cube:created")


def _string_labels(values: tuple[str, ...], zarr_format: Literal[2, 3]) -> NDArray[Any]:
    """Label coordinate values: variable-length strings in Zarr v3 (its ``string`` data type, which
    other Zarr readers read; its fixed-width one has no spec), fixed-width in v2 (GDAL's driver
    cannot read variable-length ones there), as for the input cube's band names."""
    return np.array(values, dtype=object if zarr_format == 3 else "U")


def _encode_layer(
    var: xr.DataArray,
    chunks: tuple[int, ...],
    nodata: Any,
    zarr_format: Literal[2, 3],
    *,
    spatial: bool = True,
) -> None:
    """Set a layer's chunks, nodata and grid mapping so that a plain ``xr.open_zarr`` reads it right.

    ``coordinates`` names ``spatial_ref``: xarray leaves a ``grid_mapping`` variable out of that
    attribute, and a plain ``open_zarr`` (without ``decode_coords="all"``) then reads it as a data
    variable, where rioxarray does not find the CRS. In Zarr v3 an integer layer's nodata is the
    array's ``fill_value`` and a ``nodata`` attribute, not CF ``_FillValue``, so it opens as integers
    instead of float with NaN (xarray masks v3 arrays by ``_FillValue`` only); the float
    probability keeps ``_FillValue`` NaN. Zarr v2 keeps CF ``_FillValue`` (GDAL's v2 driver reads
    it; xarray masks it unless ``mask_and_scale=False``). ``spatial=False`` (the block markers):
    ``nodata`` is only the initial value, and there is no grid mapping to name.
    """
    var.encoding["chunks"] = chunks
    if spatial:
        var.encoding["coordinates"] = cf_coordinates(var)
    if zarr_format == 2 or np.dtype(var.dtype).kind == "f":
        var.encoding["_FillValue"] = nodata
    if zarr_format == 3:
        var.encoding["fill_value"] = nodata
        if spatial and np.dtype(var.dtype).kind != "f":
            var.attrs["nodata"] = int(nodata)


def read_done(path: LocationLike, blocks: BlockGrid) -> NDArray[np.bool_]:
    """Which blocks are marked done, as a ``blocks.shape`` boolean array.

    A marker chunk that cannot be read counts as not done.
    """
    array = _array(path, DONE, "r")
    try:
        return np.asarray(array[...]) == 1
    except Exception:
        log.warning("some completion markers of %s are unreadable; checking them one by one", path)
    done = np.zeros(blocks.shape, dtype=bool)
    for row, col in blocks:
        try:
            done[row, col] = array[row, col] == 1
        except Exception:
            done[row, col] = False
    return done


def _array(path: LocationLike, name: str, mode: Literal["r", "r+"]) -> zarr.Array:
    store = Location.parse(path).zarr_store(read_only=mode == "r")
    return zarr.open_array(store, path=name, mode=mode)


def write_block(path: LocationLike, window: Window, block: tuple[int, int], layers: BlockLayers) -> None:
    """Write one block's layers into their chunks, then mark the block done."""
    rows, cols = window.slices
    for name, data in layers.items():
        array = _array(path, name, "r+")
        if data.ndim == 3:
            array[:, rows, cols] = data
        else:
            array[rows, cols] = data
    fault_point("block:chunks-written")
    _array(path, DONE, "r+")[block] = 1
    fault_point("block:written")


def finalise_change_cube(path: LocationLike) -> None:
    """Record that every block is done and consolidate the metadata again (idempotent)."""
    fault_point("finalise:start")
    store = Location.parse(path).zarr_store()
    with warnings.catch_warnings():
        # As in create_change_cube: the extension that makes opening fast.
        warnings.filterwarnings("ignore", "Consolidated metadata", UserWarning)
        group = zarr.open_group(store, mode="r+")
        group.attrs["complete"] = True
        fault_point("finalise:marked")
        zarr.consolidate_metadata(store)


def open_change_cube(path: LocationLike) -> xr.Dataset:
    """Open a change cube with its CRS decoded (integer layers keep their types in Zarr v3)."""
    store = Location.parse(path).zarr_store(read_only=True)
    return xr.open_zarr(store, consolidated=True, decode_coords="all")
