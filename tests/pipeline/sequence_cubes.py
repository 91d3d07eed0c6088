"""Small sequence cubes built without running a model, for the tests of what is made from them.

Each pair's change cube is written by hand (the layers :func:`pipeline.sequence.cube.add_pair`
reads, the transition included, on a UTM 33N 10 m grid) and stacked with ``add_pair``, so the cube has the real layout and
date layers. The change is known: pair ``k`` changes the ``k``-th band of rows to ``building``
(target ``building``), pair 2 also floods a square (target ``water``), the last pair reverts the
square, and the bottom row is nodata in every pair.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import rioxarray  # noqa: F401  (the .rio accessor)
import xarray as xr
import zarr
from affine import Affine
from numpy.typing import NDArray

from pipeline.sequence.cube import SEQUENCE_CUBE, add_pair

CRS = "EPSG:32633"
ORIGIN = (400_000.0, 5_000_000.0)
CLASSES = ("background", "water", "building")
TARGETS = ("building", "water")
WATER, BUILDING = 1, 2


def windows(n: int) -> list[str]:
    """``n`` monthly windows of 2024 as the cube stores them (``START/END`` UTC)."""
    return [f"2024-{m:02d}-01T00:00:00+00:00/2024-{m + 1:02d}-01T00:00:00+00:00" for m in range(1, n + 1)]


def class_maps(n: int, shape: tuple[int, int]) -> list[NDArray[np.uint8]]:
    """The class of each of ``n`` windows (nodata 255 on the bottom row)."""
    rows, cols = shape
    band = max(1, rows // (n + 1))
    maps = []
    current = np.zeros(shape, dtype=np.uint8)
    square = (slice(rows // 2, rows // 2 + band), slice(cols // 2, cols // 2 + band))
    for k in range(n):
        if k >= 1:
            current[(k - 1) * band : k * band, :] = BUILDING
        current[square] = WATER if 2 <= k < n - 1 else 0
        shown = current.copy()
        shown[-1, :] = 255
        maps.append(shown)
    return maps


def _pair_cube(path: Path, before: NDArray[np.uint8], after: NDArray[np.uint8], block: int) -> Path:
    rows, cols = before.shape
    nodata = (before == 255) | (after == 255)
    changed = before != after
    change = np.where(nodata, 255, changed).astype(np.uint8)
    targets = np.stack(
        [
            np.where(nodata, 255, changed & ((before == c) | (after == c))).astype(np.uint8)
            for c in (BUILDING, WATER)
        ]
    )
    codes = before.astype(np.uint16) * len(CLASSES) + after
    transition = np.where(nodata, 65535, np.where(changed, codes, 65534)).astype(np.uint16)
    probability = np.where(nodata, np.nan, np.where(changed, 0.9, 0.1)).astype(np.float32)
    transform = Affine(10.0, 0.0, ORIGIN[0], 0.0, -10.0, ORIGIN[1])
    x = ORIGIN[0] + 10.0 * (np.arange(cols) + 0.5)
    y = ORIGIN[1] - 10.0 * (np.arange(rows) + 0.5)
    yx = ("y", "x")
    ds = xr.Dataset(
        {
            "change_probability": (yx, probability),
            "change": (yx, change),
            "target_change": (("target", "y", "x"), targets),
            "class_before": (yx, before),
            "class_after": (yx, after),
            "transition": (yx, transition),
        },
        coords={"x": x, "y": y, "target": np.array(TARGETS, dtype=object)},
    )
    ds = ds.rio.write_crs(CRS).rio.write_transform(transform)
    ds.to_zarr(path, mode="w", zarr_format=3, consolidated=True)
    group = zarr.open_group(str(path), mode="r+")
    group.attrs.update({"block_size": block, "classes": json.dumps(list(CLASSES))})
    return path


def build_sequence_cube(
    root: Path, n_windows: int = 4, shape: tuple[int, int] = (40, 48), block: int = 16
) -> Path:
    """A sequence cube of ``n_windows`` windows in ``root`` (see the module); returns its path."""
    maps = class_maps(n_windows, shape)
    dates = windows(n_windows)
    cube = root / SEQUENCE_CUBE
    base: dict[str, Any] = {"test": "sequence cube"}
    for k in range(1, n_windows):
        pair = _pair_cube(root / f"pair_{k}.zarr", maps[k - 1], maps[k], block)
        add_pair(cube, k, pair, dates, base)
    return cube
