"""The input cube as the inference engine sees it: its grid, bands and identity, read from the store.

:func:`describe_input` reads the metadata of an input cube written by :mod:`pipeline.cube` (no
pixels) and checks that the engine can read its reflectance raw; the result, :class:`InputCube`,
is what the engine plans and fingerprints a run with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pyproj import CRS

from pipeline.cube import open_cube
from pipeline.errors import CubeError
from pipeline.inference_identity import inference_job_fields
from pipeline.storage import Location, LocationLike

__all__ = ["InputCube", "describe_input"]


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
    if "reflectance" not in ds or ds["reflectance"].dims != ("epoch", "band", "y", "x"):
        raise CubeError(
            f"{path} has no reflectance(epoch, band, y, x) variable; rebuild it with pipeline.cube"
        )
    refl = ds["reflectance"]
    epochs = [str(e) for e in ds["epoch"].values]
    if epochs != ["before", "after"]:
        raise CubeError(
            f"{path} has epochs {epochs}, expected ['before', 'after']; rebuild it with pipeline.cube"
        )
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
    if "input_fingerprint" in ds.attrs:
        # The job's data-plane fields and the items used; unlike the provenance it has no search time.
        provenance: dict[str, Any] = {"input_fingerprint": ds.attrs["input_fingerprint"]}
    else:
        provenance = {
            key: inference_job_fields(ds.attrs[key]) if key == "job" else ds.attrs[key]
            for key in ("job", "provenance")
            if key in ds.attrs
        }
    identity = {
        "shape": [height, width],
        "bands": list(bands),
        "crs": CRS.from_user_input(crs).to_wkt(),
        "transform": list(transform)[:6],
        **provenance,
    }
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
        identity=identity,
    )
