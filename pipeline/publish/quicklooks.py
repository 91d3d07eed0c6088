"""The quick-look PNG of a published run: before, after, and the change coloured by transition.

The two true-colour images come from the *input* cube's red, green and blue bands (percentile
stretched by :func:`pipeline.quicklook.render_quicklook`); the change panel paints every changed
pixel in the colour of its transition, with a legend that gives each transition's area (a change
where the class stayed the same is labelled "changed, class unchanged (<class>)"). Big areas
are read with a stride, straight from Zarr, so that the longest side is at most ``max_side``
pixels; small ones are enlarged by an integer factor so the legend and titles stay legible.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from numpy.typing import NDArray

from pipeline.change_cube import TRANSITION_NO_CHANGE, ChangeCubeInfo
from pipeline.cube_schema import REFLECTANCE
from pipeline.errors import PublishError
from pipeline.publish.legend import transition_label
from pipeline.quicklook import render_quicklook
from pipeline.storage import Location, LocationLike, replace_atomically

__all__ = [
    "MAX_SIDE",
    "OTHER_COLOUR",
    "PALETTE",
    "QuicklookGeometry",
    "quicklook_geometry",
    "write_quicklook",
]

log = logging.getLogger(__name__)

#: Longest side of a quick-look panel, in pixels.
MAX_SIDE = 2048
#: Panels smaller than this (longest side) are enlarged by an integer factor.
MIN_SIDE = 256
#: Distinct colours (Kelly / Trubetskoy) for the largest transitions.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
)
#: Colour of the transitions merged into "other".
OTHER_COLOUR = (255, 255, 255)


@dataclass(frozen=True)
class QuicklookGeometry:
    """How a grid is drawn: read every ``stride``-th pixel, enlarge ``scale`` times.

    Attributes
    ----------
    stride
        Step between the pixels read (1: every pixel).
    scale
        Integer enlargement of the panels.
    panel
        ``(rows, cols)`` of one panel in the PNG.
    """

    stride: int
    scale: int
    panel: tuple[int, int]


def quicklook_geometry(height: int, width: int, max_side: int = MAX_SIDE) -> QuicklookGeometry:
    """Stride and enlargement of a ``height x width`` grid's quick-look panels."""
    stride = max(1, -(-max(height, width) // max_side))
    rows, cols = -(-height // stride), -(-width // stride)
    scale = max(1, MIN_SIDE // max(rows, cols))
    return QuicklookGeometry(stride, scale, (rows * scale, cols * scale))


def _rgb(input_cube: Location, epoch: int, stride: int, shape: tuple[int, int]) -> NDArray[np.float32]:
    store = input_cube.zarr_store(read_only=True)
    group = zarr.open_group(store, mode="r")
    reflectance = group[REFLECTANCE]
    if not isinstance(reflectance, zarr.Array) or reflectance.shape[2:] != shape:
        raise PublishError(
            f"the input cube {input_cube} has reflectance of shape "
            f"{getattr(reflectance, 'shape', None)}, not on the change cube's {shape} grid; "
            "give the input cube the change cube was computed from"
        )
    bands = [str(b) for b in np.asarray(zarr.open_array(store, path="band", mode="r")[...])]
    wanted = ("red", "green", "blue")
    if all(b in bands for b in wanted):
        index = [bands.index(b) for b in wanted]
    else:
        log.warning(
            "input cube %s lacks red/green/blue (has %s); the quick-look shows band %s in grey",
            input_cube,
            bands,
            bands[0],
        )
        index = [0, 0, 0]
    # One read of the bands wanted: a chunk holds every band of its epoch, and reading the bands
    # one by one decoded each chunk three times.
    wanted_bands = sorted(set(index))
    planes = np.asarray(
        reflectance.get_orthogonal_selection(
            (
                epoch,
                np.asarray(wanted_bands, dtype=np.int64),
                slice(None, None, stride),
                slice(None, None, stride),
            )
        ),
        dtype=np.float32,
    )
    return np.stack([planes[wanted_bands.index(i)] for i in index], axis=-1)


def write_quicklook(
    info: ChangeCubeInfo,
    input_cube: LocationLike,
    path: Path,
    *,
    transition_pixels: Mapping[int, int] | None = None,
    titles: Sequence[str] = ("before", "after", "change by transition"),
    max_side: int = MAX_SIDE,
) -> tuple[Path, QuicklookGeometry]:
    """Draw the quick-look PNG of a change cube.

    Parameters
    ----------
    info
        The change cube.
    input_cube
        The input cube it was computed from (for the true-colour panels), local or an fsspec URL.
    path
        The PNG to write (replaced atomically).
    transition_pixels
        Full-resolution changed pixels per transition code (from the statistics), used to order
        and label the legend; default: counted on the strided change map.
    titles
        Panel titles.
    max_side
        Longest side of a panel before enlargement.

    Returns
    -------
    tuple
        The PNG path and the geometry used.
    """
    geometry = quicklook_geometry(info.height, info.width, max_side)
    s = geometry.stride
    cube = Location.parse(input_cube)
    # The two dates are read at the same time (zarr decodes their chunks without the GIL).
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="quicklook-read") as pool:
        read_before = pool.submit(_rgb, cube, 0, s, (info.height, info.width))
        after = _rgb(cube, 1, s, (info.height, info.width))
        before = read_before.result()
    transition = np.asarray(
        zarr.open_array(info.path.zarr_store(read_only=True), path="transition", mode="r")[::s, ::s]
    )
    changed = transition < TRANSITION_NO_CHANGE
    codes = np.where(changed, transition.astype(np.int64), -1)
    if transition_pixels is None:
        present, found = np.unique(codes[changed], return_counts=True)
        transition_pixels = dict(zip(present.tolist(), found.tolist(), strict=True))
    k = len(info.classes)
    area_ha = info.pixel_area_m2 / 10_000.0
    order = sorted(
        (c for c, n in transition_pixels.items() if n > 0), key=lambda c: (-transition_pixels[c], c)
    )
    shown = order[: len(PALETTE)]
    labels = {
        c: f"{transition_label(info.classes, c)}  {transition_pixels[c] * area_ha:,.1f} ha" for c in shown
    }
    colours = {c: PALETTE[i] for i, c in enumerate(shown)}
    other = k * k
    rest = set(order) - set(shown)
    unlisted = set(np.unique(codes[changed]).tolist()) - set(shown)
    if rest or unlisted:
        codes = np.where(np.isin(codes, sorted(unlisted)), other, codes)
        rest_ha = sum(transition_pixels[c] for c in rest) * area_ha
        labels[other] = f"other transitions  {rest_ha:,.1f} ha"
        colours[other] = OTHER_COLOUR
    with replace_atomically(path) as tmp:
        render_quicklook(before, after, codes, labels, colours, tmp, titles=titles, scale=geometry.scale)
    return path, geometry
