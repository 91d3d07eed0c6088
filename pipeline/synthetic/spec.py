"""Parameters of a synthetic scene and its acquisition schedule.

:class:`SceneSpec` is the one validated object that determines a scene: with the same spec,
every pixel, date and cloud is the same on every run. It is a frozen dataclass (not a pydantic
model) so that bad parameters raise :class:`pipeline.errors.SceneError` from the project's
exception tree, with a message that names the fix.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Any

import numpy as np
from affine import Affine
from numpy.typing import NDArray
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError
from rasterio.windows import Window

from pipeline.errors import SceneError
from pipeline.synthetic.noise import mix

__all__ = [
    "MAX_SIZE",
    "MIN_SIZE",
    "MOSTLY_CLEAR_FRACTION",
    "Acquisition",
    "Epoch",
    "SceneSpec",
    "acquisitions",
    "window_coords",
]

MIN_SIZE = 256
MAX_SIZE = 100_000
#: Expected cloud cover of the one "mostly clear" acquisition of each epoch (small cumulus only).
MOSTLY_CLEAR_FRACTION = 0.01
_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class Epoch(StrEnum):
    """The two dates of a change analysis."""

    BEFORE = "before"
    AFTER = "after"


@dataclass(frozen=True)
class SceneSpec:
    """Everything that determines a synthetic scene.

    Parameters
    ----------
    size
        Width and height of the (square) scene in pixels, ``256 <= size <= 100000``.
    resolution
        Pixel size in metres (the layout is defined in pixels; this only labels the grid).
    epsg
        EPSG code of a projected CRS in metres; default UTM 33N.
    origin
        ``(x, y)`` of the upper-left corner in that CRS; default near Brno, Czechia.
    seed
        Seed of everything random-looking, ``>= 0``.
    acquisitions_per_epoch
        Number of acquisitions in each epoch, ``1 <= n <= epoch_days``.
    before_start, after_start
        First day of each epoch; the after epoch must start after the before epoch ended.
    cloud_fraction
        Expected cloud cover of the cloudy acquisitions, in ``[0, 0.9]`` (each varies by up to
        +/-40 %). One acquisition per epoch is mostly clear (about 1 % small clouds, never
        more than ~5 %); ``0`` makes every acquisition clear.
    block_size
        Side of the blocks the scene is generated in, a multiple of 256 up to 8192. Peak memory
        grows with its square, not with ``size``; the pixels do not depend on it.
    collection_id
        STAC Collection id, also the prefix of the Item ids.
    epoch_days
        Length of each epoch in days; the acquisitions are spread over it.
    clear_acquisitions
        Indices (within each epoch) of acquisitions to generate without any cloud.
    """

    size: int = 1024
    resolution: float = 10.0
    epsg: int = 32633
    origin: tuple[float, float] = (600_000.0, 5_450_000.0)
    seed: int = 0
    acquisitions_per_epoch: int = 3
    before_start: date = date(2023, 6, 1)
    after_start: date = date(2024, 6, 1)
    cloud_fraction: float = 0.3
    block_size: int = 1024
    collection_id: str = "synthetic-s2"
    epoch_days: int = 30
    clear_acquisitions: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        self._check_ints()
        if not MIN_SIZE <= self.size <= MAX_SIZE:
            raise SceneError(
                f"size={self.size} is out of range: give a scene side between {MIN_SIZE} and "
                f"{MAX_SIZE} pixels"
            )
        if not (math.isfinite(self.resolution) and self.resolution > 0):
            raise SceneError(f"resolution={self.resolution!r}: give a positive pixel size in metres")
        object.__setattr__(self, "resolution", float(self.resolution))
        if self.seed < 0:
            raise SceneError(f"seed={self.seed}: give a non-negative integer seed")
        if self.epoch_days < 1:
            raise SceneError(f"epoch_days={self.epoch_days}: give at least 1 day")
        if not 1 <= self.acquisitions_per_epoch <= self.epoch_days:
            raise SceneError(
                f"acquisitions_per_epoch={self.acquisitions_per_epoch}: give between 1 and "
                f"epoch_days={self.epoch_days} acquisitions (at most one a day)"
            )
        if not (math.isfinite(self.cloud_fraction) and 0.0 <= self.cloud_fraction <= 0.9):
            raise SceneError(f"cloud_fraction={self.cloud_fraction!r}: give a fraction between 0 and 0.9")
        object.__setattr__(self, "cloud_fraction", float(self.cloud_fraction))
        if self.block_size % 256 or not 256 <= self.block_size <= 8192:
            raise SceneError(f"block_size={self.block_size}: give a multiple of 256 between 256 and 8192")
        if not _ID_PATTERN.match(self.collection_id):
            raise SceneError(
                f"collection_id={self.collection_id!r}: use letters, digits, '.', '_' and '-' only, "
                "starting with a letter or digit"
            )
        self._check_dates()
        self._check_clear()
        self._check_grid()

    def _check_ints(self) -> None:
        for name in ("size", "epsg", "seed", "acquisitions_per_epoch", "epoch_days", "block_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise SceneError(f"{name}={value!r}: give an integer")
            object.__setattr__(self, name, int(value))

    def _check_dates(self) -> None:
        for name in ("before_start", "after_start"):
            value = getattr(self, name)
            if isinstance(value, str):
                try:
                    value = date.fromisoformat(value)
                except ValueError:
                    raise SceneError(f"{name}={value!r}: give a date such as '2024-06-01'") from None
            if isinstance(value, datetime):
                value = value.date()
            if not isinstance(value, date):
                raise SceneError(f"{name}={value!r}: give a datetime.date")
            object.__setattr__(self, name, value)
        before_end = self.before_start + timedelta(days=self.epoch_days)
        if self.after_start < before_end:
            raise SceneError(
                f"after_start={self.after_start} falls inside the before epoch "
                f"({self.before_start} + {self.epoch_days} days): start the after epoch on or after "
                f"{before_end}"
            )

    def _check_clear(self) -> None:
        try:
            clear = tuple(sorted({int(i) for i in self.clear_acquisitions}))
        except (TypeError, ValueError):
            raise SceneError(
                f"clear_acquisitions={self.clear_acquisitions!r}: give a tuple of acquisition indices"
            ) from None
        bad = [i for i in clear if not 0 <= i < self.acquisitions_per_epoch]
        if bad:
            raise SceneError(
                f"clear_acquisitions has indices {bad} outside 0..{self.acquisitions_per_epoch - 1}: "
                "give indices of acquisitions within an epoch"
            )
        object.__setattr__(self, "clear_acquisitions", clear)

    def _check_grid(self) -> None:
        try:
            origin = tuple(float(v) for v in self.origin)
        except (TypeError, ValueError):
            raise SceneError(f"origin={self.origin!r}: give the upper-left corner as (x, y)") from None
        if len(origin) != 2 or not all(math.isfinite(v) for v in origin):
            raise SceneError(f"origin={self.origin!r}: give the upper-left corner as two finite numbers")
        object.__setattr__(self, "origin", origin)
        try:
            crs = CRS.from_epsg(self.epsg)
        except CRSError:
            raise SceneError(
                f"epsg={self.epsg} is not a known EPSG code: give e.g. 32633 (UTM 33N)"
            ) from None
        if not crs.is_projected or crs.axis_info[0].unit_name not in ("metre", "meter"):
            raise SceneError(
                f"epsg={self.epsg} ({crs.name}) is not a projected CRS in metres: give a UTM zone, e.g. 32633"
            )
        x, y = self.bounds_utm[0] + self.extent / 2, self.bounds_utm[1] + self.extent / 2
        lon, lat = Transformer.from_crs(crs, 4326, always_xy=True).transform(x, y)
        area = crs.area_of_use
        inside = area is None or (
            area.west - 1 <= lon <= area.east + 1 and area.south - 1 <= lat <= area.north + 1
        )
        if not (math.isfinite(lon) and math.isfinite(lat) and inside):
            raise SceneError(
                f"origin={self.origin} puts the scene centre at lon={lon:.3f}, lat={lat:.3f}, outside "
                f"the area of use of EPSG:{self.epsg}: give an origin inside that zone (for UTM 33N, "
                "e.g. (600000, 5450000))"
            )

    @property
    def extent(self) -> float:
        """Side of the scene in metres."""
        return self.size * self.resolution

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, columns)`` of the scene."""
        return (self.size, self.size)

    @property
    def transform(self) -> Affine:
        """Affine transform of the grid (north up)."""
        x, y = self.origin
        return Affine(self.resolution, 0.0, x, 0.0, -self.resolution, y)

    @property
    def bounds_utm(self) -> tuple[float, float, float, float]:
        """``(minx, miny, maxx, maxy)`` in the scene CRS."""
        x, y = self.origin
        return (x, y - self.extent, x + self.extent, y)

    @property
    def crs(self) -> str:
        """The CRS as ``"EPSG:<code>"``."""
        return f"EPSG:{self.epsg}"

    def epoch_start(self, epoch: Epoch) -> date:
        """First day of an epoch."""
        return self.before_start if Epoch(epoch) is Epoch.BEFORE else self.after_start

    def epoch_window(self, epoch: Epoch) -> tuple[datetime, datetime]:
        """UTC datetimes of the first and last instant of an epoch (contain its acquisitions)."""
        start = self.epoch_start(epoch)
        end = start + timedelta(days=self.epoch_days - 1)
        return (
            datetime.combine(start, time(0, 0, 0), tzinfo=UTC),
            datetime.combine(end, time(23, 59, 59), tzinfo=UTC),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready parameters; :meth:`from_dict` reads them back."""
        out = asdict(self)
        out["before_start"] = self.before_start.isoformat()
        out["after_start"] = self.after_start.isoformat()
        out["origin"] = list(self.origin)
        out["clear_acquisitions"] = list(self.clear_acquisitions)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SceneSpec:
        """Build a spec from :meth:`to_dict` output (unknown keys are an error)."""
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise SceneError(f"unknown SceneSpec fields {unknown}: remove them (known: {sorted(known)})")
        values = dict(data)
        if "origin" in values:
            values["origin"] = tuple(values["origin"])
        if "clear_acquisitions" in values:
            values["clear_acquisitions"] = tuple(values["clear_acquisitions"])
        return cls(**values)


@dataclass(frozen=True)
class Acquisition:
    """One simulated overpass.

    Attributes
    ----------
    epoch
        The epoch it belongs to.
    index
        Its position within the epoch (0-based, in date order).
    datetime
        Acquisition time (UTC, around 10:00 like Sentinel-2 over Europe).
    cloud_fraction
        Expected cloud cover (0 for a clear acquisition).
    mostly_clear
        Whether this is the epoch's mostly clear acquisition (only small cumulus clouds).
    item_id
        STAC Item id.
    salt
        Salt of its clouds and sensor noise.
    """

    epoch: Epoch
    index: int
    datetime: datetime
    cloud_fraction: float
    mostly_clear: bool
    item_id: str
    salt: int


def acquisitions(spec: SceneSpec) -> list[Acquisition]:
    """The acquisitions of a scene, before epoch first, each epoch in date order.

    Dates are spread over each epoch (one slot of ``epoch_days / n`` days each, a seeded day
    within the slot). In each epoch one seeded acquisition is *mostly clear* (small cumulus only,
    about :data:`MOSTLY_CLEAR_FRACTION`); the others have ``cloud_fraction`` cover, varied by
    +/-40 %; those listed in ``spec.clear_acquisitions`` have none.

    Parameters
    ----------
    spec
        The scene.

    Returns
    -------
    list of Acquisition
    """
    out: list[Acquisition] = []
    n = spec.acquisitions_per_epoch
    for epoch in Epoch:
        start = spec.epoch_start(epoch)
        clear_one = mix(spec.seed, "mostly-clear", epoch.value) % n
        for i in range(n):
            slot_start = (i * spec.epoch_days) // n
            slot_len = ((i + 1) * spec.epoch_days) // n - slot_start
            salt = mix(spec.seed, "acquisition", epoch.value, i)
            day = slot_start + salt % max(1, slot_len)
            seconds = 9 * 3600 + 45 * 60 + (salt >> 20) % 1800
            when = datetime.combine(start + timedelta(days=day), time(0), tzinfo=UTC) + timedelta(
                seconds=seconds
            )
            if i in spec.clear_acquisitions or spec.cloud_fraction == 0.0:
                fraction = 0.0
            elif i == clear_one:
                fraction = min(spec.cloud_fraction, MOSTLY_CLEAR_FRACTION)
            else:
                jitter = 0.6 + 0.8 * ((salt >> 40) % 1000) / 999
                fraction = min(0.9, spec.cloud_fraction * jitter)
            item_id = f"{spec.collection_id}_{when:%Y%m%dT%H%M%S}_{epoch.value}_{i}"
            out.append(Acquisition(epoch, i, when, fraction, i == clear_one, item_id, salt))
    return out


def window_coords(spec: SceneSpec, window: Window) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Global row and column indices of a window of the scene.

    Parameters
    ----------
    spec
        The scene.
    window
        A :class:`rasterio.windows.Window` with integer offsets and sizes inside the scene.

    Returns
    -------
    rows, cols
        1-D ``int64`` arrays.

    Raises
    ------
    SceneError
        If the window is fractional, empty or reaches outside the scene.
    """
    values = (window.row_off, window.col_off, window.height, window.width)
    if any(float(v) != int(v) for v in values):
        raise SceneError(f"{window!r} is not on whole pixels: round its offsets and sizes")
    row_off, col_off, height, width = (int(v) for v in values)
    if height <= 0 or width <= 0:
        raise SceneError(f"{window!r} is empty: give a positive height and width")
    if row_off < 0 or col_off < 0 or row_off + height > spec.size or col_off + width > spec.size:
        raise SceneError(
            f"{window!r} reaches outside the {spec.size}x{spec.size} scene: intersect it with "
            f"Window(0, 0, {spec.size}, {spec.size}) first"
        )
    return (
        np.arange(row_off, row_off + height, dtype=np.int64),
        np.arange(col_off, col_off + width, dtype=np.int64),
    )
