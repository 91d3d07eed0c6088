"""Creating the empty change cube: metadata, coordinates and encodings, no data chunks."""

from __future__ import annotations

import json
import uuid
import warnings
from collections.abc import Mapping
from typing import Any, Literal

import dask.array as da
import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from affine import Affine
from numpy.typing import NDArray
from pyproj import CRS

from pipeline import __version__
from pipeline.change_cube.schema import (
    ATTR_BLOCK_SIZE,
    ATTR_CLASSES,
    ATTR_COMPLETE,
    ATTR_FINGERPRINT,
    ATTR_FORMAT,
    ATTR_SOFTWARE,
    DONE,
    FORMAT,
    LAYERS,
    NODATA,
    TRANSITION_NO_CHANGE,
    ChangeCubeLayout,
)
from pipeline.change_cube.state import creation_marker, inspect_change_cube, remove_change_cube
from pipeline.errors import OutputExistsError
from pipeline.faults import fault_point
from pipeline.storage import EMPTY_FOLDER_WARNING, Location, LocationLike
from pipeline.zarr_cf import cf_coordinates, gdal_crs_attribute, string_labels

__all__ = ["create_change_cube"]


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
    creation was interrupted (:func:`~pipeline.change_cube.creation_marker`) is deleted and
    created again.

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
    ds = _template(layout, y=y, x=x, crs=crs, transform=transform)
    _describe_layers(ds, layout, crs)
    ds.attrs.update(
        {
            "title": "seg2change change cube",
            "Conventions": "CF-1.8",
            ATTR_FORMAT: FORMAT,
            ATTR_SOFTWARE: f"seg2change {__version__}",
            ATTR_BLOCK_SIZE: layout.blocks.block_size,
            ATTR_CLASSES: json.dumps(list(layout.classes)),
            ATTR_COMPLETE: False,
            **attrs,
        }
    )
    location = Location.parse(path)
    marker = creation_marker(location)
    if marker.exists():
        remove_change_cube(location)
    elif location.exists():
        state = inspect_change_cube(location)
        if state.is_change_cube and state.fingerprint == attrs.get(ATTR_FINGERPRINT):
            return
        raise OutputExistsError(
            f"{location} already exists; the change cube is created only where nothing is"
        )
    marker.write_text(json.dumps({"fingerprint": attrs.get(ATTR_FINGERPRINT)}))
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


def _template(
    layout: ChangeCubeLayout,
    *,
    y: NDArray[np.floating],
    x: NDArray[np.floating],
    crs: CRS,
    transform: Affine,
) -> xr.Dataset:
    """The cube's variables as lazy constants (nodata everywhere, no block done) on the input grid."""
    blocks = layout.blocks
    h, w = blocks.height, blocks.width
    n_targets = len(layout.targets)
    # Only the metadata is written (compute=False), so each layer is one named dask chunk: the
    # template's graph, and the time to build it, then stay the same whatever the area (a chunk
    # per block took 2.2 s at 32768 px), and the name spares hashing it. The Zarr chunks come
    # from the encoding (_describe_layers).
    template = uuid.uuid4().hex
    shapes = {name: (n_targets, h, w) if name == "target_change" else (h, w) for name in LAYERS}
    data: dict[str, tuple[tuple[str, ...], Any]] = {
        name: (
            ("target", "y", "x") if name == "target_change" else ("y", "x"),
            da.full(
                shapes[name], NODATA[name], dtype=NODATA[name].dtype, chunks=-1, name=f"{name}-{template}"
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
            "target": string_labels(layout.targets, layout.zarr_format),
        },
    )
    georeferenced: xr.Dataset = (
        ds.rio.write_crs(crs.to_wkt()).rio.write_transform(transform).rio.write_coordinate_system()
    )
    return georeferenced


def _layer_attributes(classes: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """The CF attributes of each layer (long name, flag values and meanings)."""
    flags = {
        "flag_values": list(range(len(classes))),
        "flag_meanings": " ".join(c.replace(" ", "_") for c in classes),
    }
    return {
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


def _describe_layers(ds: xr.Dataset, layout: ChangeCubeLayout, crs: CRS) -> None:
    """Set each variable's attributes and encoding (chunks, nodata, grid mapping) in place."""
    b = layout.blocks.block_size
    spatial = (b, b)
    described = _layer_attributes(layout.classes)
    crs_attribute = gdal_crs_attribute(crs)
    for name in LAYERS:
        var = ds[name]
        var.attrs.update(described[name])
        var.attrs["_CRS"] = crs_attribute
        chunks = (len(layout.targets), *spatial) if name == "target_change" else spatial
        _encode_layer(var, chunks, NODATA[name], layout.zarr_format)
    done = ds[DONE]
    done.attrs.update(
        long_name="block completely written",
        flag_values=[0, 1],
        flag_meanings="pending done",
        block_size=b,
    )
    _encode_layer(done, (1, 1), np.uint8(0), layout.zarr_format, spatial=False)


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
