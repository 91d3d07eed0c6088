"""Cloud-optimized GeoTIFFs of a sequence cube's date layers, with a colour ramp and the windows' dates.

One COG per date layer (``first_change``, ``last_change``, ``n_changes``) and one per target's
first change (``first_target_change_<target>``). Pixel values stay what the cube holds: window
numbers (1-based) for the dates, a count for ``n_changes``, 0 where no change was seen, 65535
nodata. What the numbers mean travels in the file:

- a GDAL colour table: 0 white, 1 .. N a viridis ramp (early dark blue, late yellow), nodata
  black (the file's nodata value makes it transparent);
- GDAL tags ``WINDOW_1=START/END`` ... ``WINDOW_N=START/END`` (UTC, as the cube's ``windows``
  attribute), ``windows`` (the same list as JSON), ``layer``, ``target`` for a target's layer;
- the band description, which names the tags.

They are written as :mod:`pipeline.publish.cogs` writes the change cube's layers: read from the
Zarr one window at a time (the chunk side rounded up to whole 512 px tiles) into a tiled staging
GeoTIFF, converted by rio-cogeo's ``cog_translate`` (nearest overviews, DEFLATE), checked with
``cog_validate`` and against the cube's first tile, and only then moved over an earlier file of the
same name. Memory is one window, whatever the area.
"""

from __future__ import annotations

import json
import re
import uuid
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
import zarr
from affine import Affine
from pyproj import CRS
from rasterio.windows import Window

from pipeline.errors import OutputExistsError, PublishError
from pipeline.publish.cogs import (
    GDAL_CACHE_BYTES,
    STAGING_COMPRESSION,
    TILE_SIZE,
    block_windows,
    translate_to_cog,
)
from pipeline.publish.legend import RGB, RGBA, UNCHANGED_COLOUR
from pipeline.sequence.cube import DATE_LAYERS, DATE_NODATA, open_sequence_cube
from pipeline.storage import replace_atomically

__all__ = [
    "DATE_DESCRIPTIONS",
    "NODATA_COLOUR",
    "SequenceGrid",
    "date_colormap",
    "ramp_colour",
    "read_sequence_grid",
    "target_layer_name",
    "write_date_layer_cogs",
]

#: What each date layer's values mean (the band description; the target layers use ``first_change``'s).
DATE_DESCRIPTIONS: Mapping[str, str] = {
    "first_change": "window number (1-based) after the first pair that changed; 0 no change",
    "last_change": "window number (1-based) after the last pair that changed; 0 no change",
    "n_changes": "number of pairs that changed; 0 none",
}
#: Colour of nodata in the colour table (transparent through the file's nodata value).
NODATA_COLOUR: RGB = (0, 0, 0)
#: Anchors of the ramp (matplotlib's viridis at 0, 1/4, 1/2, 3/4 and 1), interpolated linearly.
_RAMP: tuple[RGB, ...] = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))


def ramp_colour(value: int, top: int) -> RGB:
    """Colour of ``value`` in ``1 .. top`` on the ramp (1 dark blue, ``top`` yellow)."""
    if not 1 <= value <= max(top, 1):
        raise ValueError(f"value {value} is outside the ramp 1..{top}")
    position = 0.0 if top <= 1 else (value - 1) / (top - 1) * (len(_RAMP) - 1)
    low = min(int(position), len(_RAMP) - 2)
    frac = position - low
    a, b = np.asarray(_RAMP[low], dtype=float), np.asarray(_RAMP[low + 1], dtype=float)
    r, g, bl = (int(round(v)) for v in a + (b - a) * frac)
    return (r, g, bl)


def date_colormap(top: int) -> dict[int, RGBA]:
    """GDAL colour table of a date layer whose values run ``1 .. top``: 0 white, nodata black."""
    table: dict[int, RGBA] = {0: (*UNCHANGED_COLOUR, 255)}
    for value in range(1, top + 1):
        table[value] = (*ramp_colour(value, top), 255)
    table[DATE_NODATA] = (*NODATA_COLOUR, 255)
    return table


def target_layer_name(target: str) -> str:
    """Name (and file stem) of a target's first-change layer: ``first_target_change_<target>``,
    characters other than letters, digits, ``-`` and ``_`` replaced by ``_``."""
    return "first_target_change_" + re.sub(r"[^A-Za-z0-9_-]+", "_", target.strip())


@dataclass(frozen=True)
class SequenceGrid:
    """What the COGs and quick-looks read of a finished sequence cube (no pixels).

    Attributes
    ----------
    path
        The sequence cube.
    height, width
        Pixels.
    chunk
        Spatial chunk side of its arrays.
    crs, transform
        The grid.
    windows
        The windows' ``START/END`` (UTC), window ``k`` at index ``k - 1``.
    classes
        Class labels in code order.
    targets
        Target labels (the ``target`` dimension).
    """

    path: Path
    height: int
    width: int
    chunk: int
    crs: CRS
    transform: Affine
    windows: tuple[str, ...]
    classes: tuple[str, ...]
    targets: tuple[str, ...]

    @property
    def pairs(self) -> int:
        """Number of pairs stacked (``len(windows) - 1``)."""
        return len(self.windows) - 1


def read_sequence_grid(cube: Path) -> SequenceGrid:
    """Describe a finished sequence cube.

    Raises
    ------
    PublishError
        When ``cube`` is no sequence cube, holds no finished pair, has no CRS, or a pair is being
        stacked (its date layers are not those of the cube's windows).
    """
    try:
        group = open_sequence_cube(Path(cube))
    except OutputExistsError as exc:
        raise PublishError(str(exc)) from None
    except Exception as exc:  # a folder or file that Zarr cannot open as a group
        raise PublishError(
            f"cannot open {cube} as a sequence cube ({exc}); give the sequence.zarr a sequence run wrote"
        ) from None
    attrs: dict[str, Any] = dict(group.attrs)
    windows = tuple(str(w) for w in attrs["windows"])
    done = int(attrs["pairs_done"])
    if done < 1 or len(windows) != done + 1:
        raise PublishError(
            f"the sequence cube {cube} holds {done} finished pair(s) for {len(windows)} windows; run the "
            "sequence (seg2change sequence) until it finishes, then publish"
        )
    first = zarr.open_array(str(cube), path="first_change", mode="r")
    layer_windows: Any = first.attrs.get("windows", [])
    if list(layer_windows) != list(windows):
        raise PublishError(
            f"the date layers of {cube} are not those of its windows {list(windows)} (a run stopped while "
            "stacking a pair?); run the sequence again, then publish"
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata")
        ds = xr.open_zarr(cube, decode_coords="all", mask_and_scale=False)
    layer = ds["first_change"]
    if layer.rio.crs is None:
        raise PublishError(f"the sequence cube {cube} has no CRS (spatial_ref); run the sequence again")
    return SequenceGrid(
        path=Path(cube),
        height=int(layer.shape[0]),
        width=int(layer.shape[1]),
        chunk=int(first.chunks[-1]),
        crs=CRS.from_user_input(layer.rio.crs),
        transform=layer.rio.transform(),
        windows=windows,
        classes=tuple(json.loads(str(attrs["classes"]))),
        targets=tuple(
            str(t) for t in np.asarray(zarr.open_array(str(cube), path="target", mode="r")[...]).tolist()
        ),
    )


def _tags(grid: SequenceGrid, layer: str, target: str | None) -> dict[str, str]:
    tags = {f"WINDOW_{k}": window for k, window in enumerate(grid.windows, 1)}
    tags.update(layer=layer, windows=json.dumps(list(grid.windows)))
    if target is not None:
        tags["target"] = target
    return tags


def _description(layer: str, target: str | None) -> str:
    if target is not None:
        return f"first change of target {target}: {DATE_DESCRIPTIONS['first_change']}; dates in WINDOW_k tags"
    return f"{layer}: {DATE_DESCRIPTIONS[layer]}; window dates in WINDOW_k tags"


def _read(source: zarr.Array[Any], index: int | None, rows: slice, cols: slice) -> np.ndarray[Any, Any]:
    selection = (rows, cols) if index is None else (index, rows, cols)
    return np.asarray(source[selection], dtype=np.uint16)


def _write_staging(
    grid: SequenceGrid,
    source: zarr.Array[Any],
    index: int | None,
    staging: Path,
    tags: Mapping[str, str],
    description: str,
    colormap: Mapping[int, RGBA],
) -> None:
    """Copy one layer window by window into a tiled staging GeoTIFF, with its tags and colour table."""
    profile = {
        "driver": "GTiff",
        "width": grid.width,
        "height": grid.height,
        "count": 1,
        "dtype": "uint16",
        "crs": grid.crs.to_wkt(),
        "transform": grid.transform,
        "nodata": DATE_NODATA,
        "tiled": True,
        "blockxsize": TILE_SIZE,
        "blockysize": TILE_SIZE,
        "predictor": 2,
        "BIGTIFF": "IF_SAFER",
        **STAGING_COMPRESSION,
    }
    side = TILE_SIZE * max(1, -(-grid.chunk // TILE_SIZE))
    with rasterio.open(staging, "w", **profile) as dst:
        dst.set_band_description(1, description)
        dst.update_tags(**tags)
        dst.write_colormap(1, colormap)
        for rows, cols in block_windows(grid.height, grid.width, side):
            window = Window(cols.start, rows.start, cols.stop - cols.start, rows.stop - rows.start)
            dst.write(_read(source, index, rows, cols), 1, window=window)


def _translate(staging: Path, path: Path, name: str, expected: np.ndarray[Any, Any]) -> None:
    """Convert the staging file into a validated COG at ``path`` (replaced only once it is valid)."""
    with replace_atomically(path) as tmp:
        translate_to_cog(staging, tmp, name, predictor=2, overview_resampling="nearest")
        with rasterio.open(tmp) as written:
            rows, cols = expected.shape
            if not np.array_equal(written.read(1, window=Window(0, 0, cols, rows)), expected):
                raise PublishError(
                    f"the COG written for {name} differs from the sequence cube in its first tile; the "
                    "earlier file is kept. Check the disk and publish again"
                )


def _write_one(
    grid: SequenceGrid,
    source: zarr.Array[Any],
    index: int | None,
    name: str,
    path: Path,
    target: str | None,
) -> None:
    layer = "first_change" if target is not None else name
    top = grid.pairs if layer == "n_changes" else len(grid.windows)
    staging = path.with_name(f".{path.stem}.staging-{uuid.uuid4().hex[:8]}.tif")
    side = min(TILE_SIZE, grid.height), min(TILE_SIZE, grid.width)
    try:
        _write_staging(
            grid,
            source,
            index,
            staging,
            _tags(grid, name, target),
            _description(layer, target),
            date_colormap(top),
        )
        _translate(staging, path, name, _read(source, index, slice(0, side[0]), slice(0, side[1])))
    finally:
        staging.unlink(missing_ok=True)


def write_date_layer_cogs(cube: Path, out_dir: Path) -> dict[str, Path]:
    """Write a validated COG of each date layer of a sequence cube, and of each target's first change.

    Parameters
    ----------
    cube
        The sequence cube (``sequence.zarr``) of a finished sequence run.
    out_dir
        Folder of the COGs (created): ``first_change.tif``, ``last_change.tif``, ``n_changes.tif``
        and ``first_target_change_<target>.tif`` (see :func:`target_layer_name`). An existing file
        is replaced only once its successor is valid.

    Returns
    -------
    dict
        The COG of each layer name (the file's stem), date layers first, then the targets in the
        cube's order.

    Raises
    ------
    PublishError
        When ``cube`` is not a finished sequence cube (see :func:`read_sequence_grid`), two targets
        map to the same file name, or a written file is not a valid COG.
    """
    grid = read_sequence_grid(Path(cube))
    layers: list[tuple[str, str, int | None, str | None]] = [(name, name, None, None) for name in DATE_LAYERS]
    layers += [(target_layer_name(t), "first_target_change", i, t) for i, t in enumerate(grid.targets)]
    names = [name for name, *_ in layers]
    if len(set(names)) != len(names):
        raise PublishError(
            f"targets {list(grid.targets)} give the same COG name twice ({names}); rename the targets so "
            "that they differ in letters or digits"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES):
        for name, array, index, target in layers:
            source = zarr.open_array(str(grid.path), path=array, mode="r")
            path = out_dir / f"{name}.tif"
            _write_one(grid, source, index, name, path, target)
            written[name] = path
    return written
