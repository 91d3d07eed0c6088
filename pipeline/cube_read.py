"""Reading the input cube: open it, summarise what was prepared, describe it for the engine.

:func:`describe_cube` summarises a cube just prepared (:class:`PreparedCube`, what the prepare
stage reports); :func:`describe_input` reads the metadata of a cube (no pixels), checks that the
engine can read its reflectance raw and returns :class:`InputCube`, what the engine plans and
fingerprints a run with.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
import zarr
from affine import Affine
from numpy.typing import NDArray
from pyproj import CRS

from pipeline.cube_schema import (
    ATTR_JOB,
    ATTR_PROVENANCE,
    CLEAR_COUNT,
    EPOCHS,
    INPUT_FINGERPRINT,
    REFLECTANCE,
)
from pipeline.discover import Discovery
from pipeline.errors import CubeError
from pipeline.storage import Location, LocationLike

__all__ = ["InputCube", "PreparedCube", "describe_cube", "describe_input", "open_cube", "recorded_provenance"]


@dataclass(frozen=True)
class PreparedCube:
    """Where a prepared input cube lies and what it holds."""

    path: Location
    shape: tuple[int, ...]
    bands: tuple[str, ...]
    crs: str
    transform: tuple[float, ...]
    items: dict[str, int]
    clear_fraction: dict[str, float]


@dataclass(frozen=True)
class InputCube:
    """What the engine needs to know of an input cube.

    Attributes
    ----------
    path
        Where it lies.
    height, width
        Pixels.
    bands
        Band names in cube order.
    chunk
        Spatial chunk side of ``reflectance``.
    crs, transform
        The grid.
    y, x
        Pixel-centre coordinates.
    identity
        Its shape, bands, grid and provenance attributes (JSON-ready), for the job fingerprint.
    """

    path: Location
    height: int
    width: int
    bands: tuple[str, ...]
    chunk: int
    crs: CRS
    transform: Any
    y: NDArray[np.floating]
    x: NDArray[np.floating]
    identity: Mapping[str, Any]


def open_cube(path: LocationLike) -> xr.Dataset:
    """Open an input cube written by :func:`pipeline.cube.write_cube` (a local path or an fsspec URL)."""
    store = Location.parse(path).zarr_store(read_only=True)
    ds: xr.Dataset = xr.open_zarr(store, consolidated=True, decode_coords="all")
    return ds


def recorded_provenance(path: LocationLike) -> dict[str, Any] | None:
    """The STAC items the input cube records it was made from, or None when it records none.

    The document is :meth:`pipeline.discover.Discovery.provenance`, as the cube was prepared.
    """
    group = zarr.open_group(Location.parse(path).zarr_store(read_only=True), mode="r")
    recorded = group.attrs.get(ATTR_PROVENANCE)
    return None if recorded is None else dict(json.loads(str(recorded)))


def describe_cube(path: LocationLike, discovery: Discovery) -> PreparedCube:
    """Summarise a written input cube: shape, bands, grid and clear fraction per epoch."""
    path = Location.parse(path)
    written = open_cube(path)
    # A composite pixel is finite exactly where it had a clear observation; the uint8 count is
    # the cheapest layer to read for that.
    clear = {
        str(epoch): float((written[CLEAR_COUNT].sel(epoch=epoch).data > 0).mean().compute())
        for epoch in written["epoch"].values
    }
    transform: Affine = written.rio.transform()
    return PreparedCube(
        path=path,
        shape=tuple(int(n) for n in written[REFLECTANCE].shape),
        bands=tuple(str(b) for b in written["band"].values),
        crs=str(written.rio.crs),
        transform=tuple(transform)[:6],
        items={epoch: len(items) for epoch, items in discovery.items.items()},
        clear_fraction=clear,
    )


def describe_input(path: LocationLike) -> InputCube:
    """Read the input cube's metadata (no pixels) and check that the engine can read it raw.

    Raises
    ------
    CubeError
        When the cube is missing, lacks ``reflectance(epoch, band, y, x)`` with epochs
        ``before, after``, has no CRS, or stores reflectance scaled.
    """
    path = Location.parse(path)
    if not path.exists():
        raise CubeError(f"input cube {path} does not exist; build it first (seg2change cube / prepare_cube)")
    try:
        ds = open_cube(path)
    except Exception as exc:
        raise CubeError(f"cannot open the input cube {path} ({exc}); rebuild it with pipeline.cube") from exc
    if REFLECTANCE not in ds or ds[REFLECTANCE].dims != ("epoch", "band", "y", "x"):
        raise CubeError(
            f"{path} has no reflectance(epoch, band, y, x) variable; rebuild it with pipeline.cube"
        )
    refl = ds[REFLECTANCE]
    epochs = [str(e) for e in ds["epoch"].values]
    if epochs != list(EPOCHS):
        raise CubeError(f"{path} has epochs {epochs}, expected {list(EPOCHS)}; rebuild it with pipeline.cube")
    scaled = {"scale_factor", "add_offset"} & (set(refl.encoding) | set(refl.attrs))
    if scaled or np.dtype(refl.encoding.get("dtype", refl.dtype)).kind != "f":
        raise CubeError(
            f"{path} stores reflectance as scaled integers; the engine reads raw float reflectance: "
            "rebuild the cube with pipeline.cube (float32, NaN nodata)"
        )
    crs = ds.rio.crs
    if crs is None:
        raise CubeError(f"{path} has no CRS (spatial_ref); rebuild it with pipeline.cube")
    transform = ds.rio.transform()
    chunks = refl.encoding.get("chunks") or refl.data.chunksize
    height, width = int(refl.shape[2]), int(refl.shape[3])
    bands = tuple(str(b) for b in ds["band"].values)
    return InputCube(
        path=path,
        height=height,
        width=width,
        bands=bands,
        chunk=int(chunks[-1]),
        crs=CRS.from_user_input(crs),
        transform=transform,
        y=np.asarray(ds["y"].values),
        x=np.asarray(ds["x"].values),
        identity={
            "shape": [height, width],
            "bands": list(bands),
            "crs": CRS.from_user_input(crs).to_wkt(),
            "transform": list(transform)[:6],
            **_provenance(ds.attrs),
        },
    )


def _provenance(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """The attributes that say what the cube was made from, for the engine's fingerprint."""
    from pipeline.inference_identity import inference_job_fields  # the engine's side imports torch

    if INPUT_FINGERPRINT in attrs:
        # The job's data-plane fields and the items used; unlike the provenance it has no search time.
        return {INPUT_FINGERPRINT: attrs[INPUT_FINGERPRINT]}
    return {
        key: inference_job_fields(attrs[key]) if key == ATTR_JOB else attrs[key]
        for key in (ATTR_JOB, ATTR_PROVENANCE)
        if key in attrs
    }
