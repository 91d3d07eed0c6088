"""Land cover of a synthetic scene in both epochs, and the change between them.

The layout is a pure function of the seed and of global pixel coordinates (see
:mod:`pipeline.synthetic.noise`), so any window can be computed on its own and equals the same
pixels of the whole scene. It does not depend on the scene size either: a larger scene with the
same seed contains a smaller one as its upper-left corner.

Base landscape (sizes in pixels, i.e. metres / 10 at the default resolution):

- natural and agricultural zones from coarse noise (features ~320 px); natural land is forest
  or grass by a finer noise threshold;
- cropland as rectilinear parcels (16-48 px sides, brick-like: column splits shift between rows
  of parcels); a few parcels are meadow (grass) or fallow (bare soil); each parcel has a crop
  vigour per epoch (phenology: spectral change without land-cover change);
- bare-soil patches and water bodies as noise blobs;
- settlements (coarse noise) with buildings as small rectangles on a 12 px lattice and streets;
- straight roads on a jittered 160 px grid, crossing everything but water.

Change events sit on a lattice of 256 px *event cells*, each split into 3 x 3 sub-cells; an
event occupies one sub-cell and never reaches outside it. The cell at the scene origin holds one
event of every kind, so every scene (at least 256 px) shows every change type; other cells hold
each kind with probability 0.3. The events also shape the before landscape (a forest to clear, a
lake to drain), so their change is never empty. Construction turns a field or bare plot into an
estate drawn like the settlements (buildings on a 9 px lattice with grass between them, on fields
an access road), so the whole estate changes, not only its roofs.

Hand-written because no library generates land cover that is both plausible and defined per
pixel on a global grid; the class and change-type codes are the ground-truth legend the rest of
the project reuses.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np
from numpy.typing import NDArray
from rasterio.windows import Window

from pipeline.synthetic.noise import fbm, fbm_quantile, hash_grid, hash_ints, mix, value_noise
from pipeline.synthetic.spec import Epoch, SceneSpec, window_coords

__all__ = [
    "EVENT_CELL",
    "ChangeType",
    "LandCover",
    "Landscape",
    "change_map",
    "class_map",
    "landscape_window",
    "truth_window",
]

EVENT_CELL = 256

U8 = NDArray[np.uint8]
F32 = NDArray[np.float32]
I64 = NDArray[np.int64]


class LandCover(IntEnum):
    """Land-cover classes of the synthetic scenes (the ground-truth legend).

    The integer codes are stable and are the pixel values of the truth rasters; ``0`` is nodata
    and never occurs inside a scene.
    """

    NODATA = 0
    WATER = 1
    FOREST = 2
    GRASS = 3
    CROPLAND = 4
    BARE_SOIL = 5
    ROAD = 6
    BUILDING = 7
    BURNED = 8

    @property
    def label(self) -> str:
        """Lower-case human name, e.g. ``"bare soil"``."""
        return self.name.lower().replace("_", " ")

    @property
    def color(self) -> tuple[int, int, int]:
        """RGB colour used in the truth rasters' colour map."""
        return _COLORS[self]

    @classmethod
    def classes(cls) -> tuple[LandCover, ...]:
        """All classes except :attr:`NODATA`."""
        return tuple(c for c in cls if c is not cls.NODATA)


#: Each class in a user's words (comma-separated synonyms), as open-vocabulary prompts name it.
LAND_COVER_PROMPTS: dict[LandCover, str] = {
    LandCover.WATER: "water",
    LandCover.FOREST: "forest,tree",
    LandCover.GRASS: "grass,meadow",
    LandCover.CROPLAND: "cropland,field",
    LandCover.BARE_SOIL: "bare soil",
    LandCover.ROAD: "road",
    LandCover.BUILDING: "building,roof,house",
    LandCover.BURNED: "burned area",
}

#: Coarse groups of the legend: the distinctions spectral evidence alone makes reliably (it
#: cannot tell cropland from grass or forest without texture or a time series).
COARSE_GROUPS: dict[str, tuple[LandCover, ...]] = {
    "water": (LandCover.WATER,),
    "vegetation": (LandCover.FOREST, LandCover.GRASS, LandCover.CROPLAND),
    "bare soil": (LandCover.BARE_SOIL,),
    "built-up": (LandCover.ROAD, LandCover.BUILDING),
    "burned": (LandCover.BURNED,),
}


_COLORS: dict[LandCover, tuple[int, int, int]] = {
    LandCover.NODATA: (0, 0, 0),
    LandCover.WATER: (31, 120, 180),
    LandCover.FOREST: (27, 94, 32),
    LandCover.GRASS: (140, 200, 90),
    LandCover.CROPLAND: (240, 210, 80),
    LandCover.BARE_SOIL: (165, 120, 80),
    LandCover.ROAD: (90, 90, 90),
    LandCover.BUILDING: (220, 40, 40),
    LandCover.BURNED: (150, 70, 160),  # apart from black, the nodata colour of every class map
}


class ChangeType(IntEnum):
    """Kinds of change between the epochs; the pixel values of ``truth/change.tif``.

    ``NONE`` (0) where the class is the same in both epochs, the kind of event elsewhere.
    """

    NONE = 0
    CONSTRUCTION = 1
    """A new estate on fields or bare land: buildings, grass between them, on fields an access road."""
    CLEARING = 2
    """Forest cleared to bare soil."""
    FLOOD = 3
    """A water body expanded over the land around it."""
    DRAIN = 4
    """A water body shrank; its bed became bare soil and grass."""
    BURN = 5
    """Forest or grass burned."""

    @property
    def label(self) -> str:
        """Lower-case human name, e.g. ``"construction"``."""
        return self.name.lower()


@dataclass(frozen=True)
class Landscape:
    """Land cover of one window in both epochs.

    Attributes
    ----------
    before, after
        :class:`LandCover` codes, ``uint8``.
    change
        :class:`ChangeType` codes, ``uint8``; non-zero exactly where ``before != after``.
    vigour_before, vigour_after
        Crop vigour in ``[0.3, 1]`` per pixel (meaningful on cropland), ``float32``.
    """

    before: U8
    after: U8
    change: U8
    vigour_before: F32
    vigour_after: F32

    def classes(self, epoch: Epoch) -> U8:
        """Class map of one epoch."""
        return self.before if Epoch(epoch) is Epoch.BEFORE else self.after

    def vigour(self, epoch: Epoch) -> F32:
        """Crop vigour of one epoch."""
        return self.vigour_before if Epoch(epoch) is Epoch.BEFORE else self.vigour_after


_FOREST, _GRASS, _BUILDING = (
    np.uint8(LandCover.FOREST),
    np.uint8(LandCover.GRASS),
    np.uint8(LandCover.BUILDING),
)

# Base layout: feature scales (px) and area fractions.
_NATURAL_SCALE, _NATURAL_FRACTION = 320.0, 0.5
_FOREST_SCALE, _FOREST_SHARE = 90.0, 0.6
_SETTLEMENT_SCALE, _SETTLEMENT_FRACTION = 400.0, 0.12
_WATER_SCALE, _WATER_FRACTION = 140.0, 0.04
_BARE_SCALE, _BARE_FRACTION = 48.0, 0.03
_PARCEL_PERIOD, _PARCEL_MIN = 64, 16
_ROAD_SPACING, _ROAD_WIDTH, _ROAD_KEEP = 160, 2, 0.75
_STREET_SPACING, _STREET_WIDTH, _STREET_KEEP = 40, 1, 0.9
_BUILDING_PITCH, _BUILDING_PROBABILITY = 12, 0.55

# Events: index in the cell table -> change type. Two construction kinds (on fields, on bare land).
_FLOOD, _DRAIN, _CLEARING, _BURN, _BUILD_FIELD, _BUILD_BARE = range(6)
_EVENT_CHANGE = np.array(
    [
        ChangeType.FLOOD,
        ChangeType.DRAIN,
        ChangeType.CLEARING,
        ChangeType.BURN,
        ChangeType.CONSTRUCTION,
        ChangeType.CONSTRUCTION,
        ChangeType.NONE,  # index -1: no event
    ],
    dtype=np.uint8,
)
_EVENT_PROBABILITY = 0.3
_SUB_CENTRES = np.array([(2 * s + 1) * EVENT_CELL // 6 for s in range(3)], dtype=np.int64)
_JITTER = 6
_RADIUS = 30  # the largest footprint; with jitter and perturbation it stays inside the sub-cell


def _unit(h: NDArray[np.uint64]) -> NDArray[np.float64]:
    """Uniform ``[0, 1)`` numbers from the top 53 bits of a hash."""
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _bits(h: NDArray[np.uint64], shift: int, modulo: int) -> I64:
    return ((h >> np.uint64(shift)) % np.uint64(modulo)).astype(np.int64)


def _lines(coords: I64, spacing: int, width: int, keep: float, salt: int) -> NDArray[np.bool_]:
    """Pixels on straight lines, one candidate per ``spacing`` px at a seeded offset."""
    k = coords // spacing
    h = hash_ints(k, salt)
    margin = spacing // 8
    offset = margin + _bits(h, 0, spacing - 2 * margin - width)
    exists = _unit(h) < keep
    local = coords - k * spacing - offset
    on: NDArray[np.bool_] = exists & (local >= 0) & (local < width)
    return on


def _partition(coords: I64, salt: int) -> I64:
    """Index of the parcel strip of each coordinate (strips of 16-48 px, two per 64 px)."""
    chunk = coords // _PARCEL_PERIOD
    split = _PARCEL_MIN + _bits(hash_ints(chunk, salt), 0, _PARCEL_PERIOD - 2 * _PARCEL_MIN + 1)
    result: I64 = 2 * chunk + (coords - chunk * _PARCEL_PERIOD >= split)
    return result


def _table_gather(row_keys: I64, col_keys: I64, salt: int) -> tuple[NDArray[np.uint64], I64, I64]:
    """Hash table over the distinct keys of a window, with the indices to gather it per pixel."""
    ru, rinv = np.unique(row_keys, return_inverse=True)
    c0 = int(col_keys.min())
    table = hash_grid(ru, np.arange(c0, int(col_keys.max()) + 1, dtype=np.int64), salt)
    return table, rinv.reshape(row_keys.shape), col_keys - c0


def _parcels(rows: I64, cols: I64, seed: int) -> tuple[F32, F32, F32]:
    """Per pixel: a uniform number of its parcel (the parcel's kind) and crop vigour per epoch."""
    pr = _partition(rows, mix(seed, "parcel-rows"))
    shift = _bits(hash_ints(pr, mix(seed, "parcel-shift")), 0, _PARCEL_PERIOD)
    cc = cols[None, :] + shift[:, None]
    cx = cc // _PARCEL_PERIOD
    table, ri, ci = _table_gather(pr, cx, mix(seed, "parcel-cols"))
    split = _PARCEL_MIN + _bits(table, 0, _PARCEL_PERIOD - 2 * _PARCEL_MIN + 1)
    pc = 2 * cx + (cc - cx * _PARCEL_PERIOD >= split[ri[:, None], ci])
    table, ri, ci = _table_gather(pr, pc, mix(seed, "parcel-id"))
    index = (ri[:, None], ci)
    kind = _unit(table).astype(np.float32)[index]
    vigour = [
        (0.3 + 0.7 * _unit(hash_ints(table.astype(np.int64), mix(seed, "vigour", epoch.value)))).astype(
            np.float32
        )[index]
        for epoch in Epoch
    ]
    return kind, vigour[0], vigour[1]


def _buildings(rows: I64, cols: I64, seed: int) -> NDArray[np.bool_]:
    """Small rectangles on a 12 px lattice (where a settlement allows them)."""
    by, bx = rows // _BUILDING_PITCH, cols // _BUILDING_PITCH
    table, ri, ci = _table_gather(by, bx, mix(seed, "buildings"))
    h = table[ri[:, None], ci[None, :]]
    present = _unit(h) < _BUILDING_PROBABILITY
    x0, w = 1 + _bits(h, 8, 3), 4 + _bits(h, 16, 5)
    y0, ht = 1 + _bits(h, 24, 3), 4 + _bits(h, 32, 5)
    lx = (cols - bx * _BUILDING_PITCH)[None, :] - x0
    ly = (rows - by * _BUILDING_PITCH)[:, None] - y0
    inside: NDArray[np.bool_] = present & (lx >= 0) & (lx < w) & (ly >= 0) & (ly < ht)
    return inside


def _base(rows: I64, cols: I64, seed: int) -> tuple[U8, F32, F32]:
    """Base land cover (no events) and the crop vigour of each epoch."""
    natural = fbm(rows, cols, _NATURAL_SCALE, mix(seed, "natural")) > fbm_quantile(1 - _NATURAL_FRACTION)
    forest = fbm(rows, cols, _FOREST_SCALE, mix(seed, "forest")) > fbm_quantile(1 - _FOREST_SHARE)
    settlement = fbm(rows, cols, _SETTLEMENT_SCALE, mix(seed, "settlement"), 2) > fbm_quantile(
        1 - _SETTLEMENT_FRACTION, 2
    )
    water = fbm(rows, cols, _WATER_SCALE, mix(seed, "water")) > fbm_quantile(1 - _WATER_FRACTION)
    bare = fbm(rows, cols, _BARE_SCALE, mix(seed, "bare"), 2) > fbm_quantile(1 - _BARE_FRACTION, 2)

    kind, vigour_before, vigour_after = _parcels(rows, cols, seed)
    classes = np.full((rows.size, cols.size), LandCover.CROPLAND, dtype=np.uint8)
    classes[kind >= 0.85] = LandCover.GRASS
    classes[kind >= 0.95] = LandCover.BARE_SOIL
    classes[natural] = np.where(forest, _FOREST, _GRASS)[natural]
    classes[bare & ~settlement] = LandCover.BARE_SOIL
    classes[settlement] = np.where(_buildings(rows, cols, seed), _BUILDING, _GRASS)[settlement]
    road = _lines(rows, _ROAD_SPACING, _ROAD_WIDTH, _ROAD_KEEP, mix(seed, "road-rows"))[:, None] | _lines(
        cols, _ROAD_SPACING, _ROAD_WIDTH, _ROAD_KEEP, mix(seed, "road-cols")
    )
    street = _lines(rows, _STREET_SPACING, _STREET_WIDTH, _STREET_KEEP, mix(seed, "street-rows"))[
        :, None
    ] | _lines(cols, _STREET_SPACING, _STREET_WIDTH, _STREET_KEEP, mix(seed, "street-cols"))
    classes[road | (street & settlement)] = LandCover.ROAD
    classes[water] = LandCover.WATER
    return classes, vigour_before, vigour_after


def _event_tables(ey: I64, ex: I64, seed: int) -> tuple[I64, I64, I64, I64, I64]:
    """Per event cell and sub-cell: event index (-1 none), centre jitter (y, x), half sizes (a, b)."""
    cy = np.arange(int(ey.min()), int(ey.max()) + 1, dtype=np.int64)
    cx = np.arange(int(ex.min()), int(ex.max()) + 1, dtype=np.int64)
    cell = hash_grid(cy, cx, mix(seed, "event-cell"))
    sub = np.arange(9, dtype=np.int64)
    keys = hash_grid(cell.ravel().astype(np.int64), sub, mix(seed, "event-order"))
    rank = np.argsort(np.argsort(keys, axis=1, kind="stable"), axis=1, kind="stable")
    events = np.arange(6, dtype=np.int64)
    chance = _unit(hash_grid(cell.ravel().astype(np.int64), events, mix(seed, "event-on")))
    present = chance < _EVENT_PROBABILITY
    origin = ((cy == 0)[:, None] & (cx == 0)[None, :]).ravel()
    present[origin] = True
    event = np.where(rank < 6, rank, -1)
    event = np.where(
        event >= 0, np.where(np.take_along_axis(present, np.clip(event, 0, 5), axis=1), event, -1), -1
    )
    h = hash_grid(cell.ravel().astype(np.int64), sub, mix(seed, "event-shape"))
    jy = _bits(h, 0, 2 * _JITTER + 1) - _JITTER
    jx = _bits(h, 8, 2 * _JITTER + 1) - _JITTER
    a = 14 + _bits(h, 16, 11)
    b = 10 + _bits(h, 24, 9)
    shape = (cy.size, cx.size, 9)
    return (
        event.reshape(shape),
        jy.reshape(shape),
        jx.reshape(shape),
        a.reshape(shape),
        b.reshape(shape),
    )


def _apply_events(rows: I64, cols: I64, seed: int, base: U8) -> tuple[U8, U8, U8]:
    """Before and after land cover and change types, from the base land cover."""
    before = base.copy()
    ey, ex = rows // EVENT_CELL, cols // EVENT_CELL
    sy = ((rows - ey * EVENT_CELL) * 3) // EVENT_CELL
    sx = ((cols - ex * EVENT_CELL) * 3) // EVENT_CELL
    event_t, jy_t, jx_t, a_t, b_t = _event_tables(ey, ex, seed)
    ci, cj = (ey - ey.min())[:, None], (ex - ex.min())[None, :]
    sub = (3 * sy)[:, None] + sx[None, :]
    event = event_t[ci, cj, sub]
    if not (event >= 0).any():
        return before, before.copy(), np.zeros_like(before)
    dy = (rows - ey * EVENT_CELL - _SUB_CENTRES[sy])[:, None] - jy_t[ci, cj, sub]
    dx = (cols - ex * EVENT_CELL - _SUB_CENTRES[sx])[None, :] - jx_t[ci, cj, sub]
    a, b = a_t[ci, cj, sub], b_t[ci, cj, sub]
    dist = np.sqrt((dy * dy + dx * dx).astype(np.float32))
    d1 = dist / (np.float32(0.85) + np.float32(0.3) * value_noise(rows, cols, 9.0, mix(seed, "edge-1")))
    d2 = dist / (np.float32(0.85) + np.float32(0.3) * value_noise(rows, cols, 7.0, mix(seed, "edge-2")))
    square = (np.abs(dy) < _RADIUS) & (np.abs(dx) < _RADIUS)
    rect = (np.abs(dy) < b) & (np.abs(dx) < a)
    lots = ((dx + 64) % 9 >= 1) & ((dx + 64) % 9 < 7) & ((dy + 64) % 9 >= 2) & ((dy + 64) % 9 < 7)

    flood, drain, clearing = event == _FLOOD, event == _DRAIN, event == _CLEARING
    burn, build_field, build_bare = event == _BURN, event == _BUILD_FIELD, event == _BUILD_BARE
    # Before: the events' own landscape.
    floodplain = flood & (d1 < _RADIUS)
    before[floodplain & (before == LandCover.WATER)] = LandCover.GRASS
    before[flood & (d1 < 13)] = LandCover.WATER
    before[drain & (d1 < _RADIUS)] = LandCover.WATER
    before[clearing & (d1 < _RADIUS)] = LandCover.FOREST
    vegetation = fbm(rows, cols, 20.0, mix(seed, "burn-vegetation"), 2) > 0.5
    burn_zone = burn & (d1 < _RADIUS)
    before[burn_zone] = np.where(vegetation, _FOREST, _GRASS)[burn_zone]
    before[build_field & square] = LandCover.CROPLAND
    before[build_bare & square] = LandCover.BARE_SOIL
    # After.
    after = before.copy()
    after[floodplain] = LandCover.WATER
    after[drain & (d1 >= 11) & (d1 < 23)] = LandCover.BARE_SOIL
    after[drain & (d1 >= 23) & (d1 < _RADIUS)] = LandCover.GRASS
    after[clearing & rect & (before == LandCover.FOREST)] = LandCover.BARE_SOIL
    vegetated = (before == LandCover.FOREST) | (before == LandCover.GRASS)
    after[burn & (d2 < 24) & vegetated] = LandCover.BURNED
    # A new estate, drawn as the settlements are: buildings with grass (yards, lawns) between
    # them, so no field or bare plot survives between new buildings.
    built = (build_field | build_bare) & rect
    after[built] = LandCover.GRASS
    after[built & lots] = LandCover.BUILDING
    after[build_field & rect & (dy == 0)] = LandCover.ROAD
    change = np.where(before != after, _EVENT_CHANGE[event], np.uint8(0)).astype(np.uint8)
    return before, after, change


def landscape_window(spec: SceneSpec, window: Window) -> Landscape:
    """Land cover of a window in both epochs, with change types and crop vigour.

    Parameters
    ----------
    spec
        The scene.
    window
        Integer window inside the scene.

    Returns
    -------
    Landscape
    """
    rows, cols = window_coords(spec, window)
    base, vigour_before, vigour_after = _base(rows, cols, spec.seed)
    before, after, change = _apply_events(rows, cols, spec.seed, base)
    return Landscape(before, after, change, vigour_before, vigour_after)


def class_map(spec: SceneSpec, window: Window, epoch: Epoch) -> U8:
    """Land-cover map of one epoch for a window.

    Parameters
    ----------
    spec
        The scene.
    window
        Integer window inside the scene.
    epoch
        ``"before"`` or ``"after"``.

    Returns
    -------
    numpy.ndarray
        :class:`LandCover` codes, ``uint8``, shape ``(height, width)``.
    """
    return landscape_window(spec, window).classes(Epoch(epoch))


def change_map(spec: SceneSpec, window: Window) -> U8:
    """Change types for a window (0 where the class is unchanged).

    Parameters
    ----------
    spec
        The scene.
    window
        Integer window inside the scene.

    Returns
    -------
    numpy.ndarray
        :class:`ChangeType` codes, ``uint8``; ``change != 0`` equals ``before != after``.
    """
    return landscape_window(spec, window).change


def truth_window(spec: SceneSpec, window: Window) -> tuple[U8, U8, U8]:
    """Ground truth of a window without reading any file.

    Parameters
    ----------
    spec
        The scene.
    window
        Integer window inside the scene.

    Returns
    -------
    class_before, class_after, change
        ``uint8`` arrays: :class:`LandCover` codes of each epoch and :class:`ChangeType` codes.
        They equal the same window of ``truth/class_before.tif``, ``truth/class_after.tif`` and
        ``truth/change.tif``.
    """
    land = landscape_window(spec, window)
    return land.before, land.after, land.change
