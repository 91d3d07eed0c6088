"""A generated sequence of N periods with change events at known periods, and its truth.

The two-epoch generator (:mod:`pipeline.synthetic.landscape`) draws each change event's *before*
and *after* land cover. A sequence takes the same events and gives each kind a period in which it
happens (:data:`EVENT_PERIODS`: construction in period 3, burn in 4, flood in 5, clearing in 6,
drain in 7; periods count from 1, and "in period k" means between the windows of periods
``k - 1`` and ``k``). A pixel shows its *before* class up to period ``k - 1`` and its *after*
class from period ``k`` on; an event whose period lies beyond the sequence does not happen.

Each period has ``acquisitions_per_period`` acquisitions spread over its window, one of them
mostly clear, drawn with the generator's spectra (:func:`~pipeline.synthetic.spectra.surface_reflectance`)
and atmosphere (:func:`~pipeline.synthetic.atmosphere.acquisition_window`) and described by the
generator's STAC Items (:func:`~pipeline.synthetic.stac.build_item`, with ``synthetic:period``
added). Crop vigour is the before epoch's in every period (no phenology between periods).

Truth (``truth/``): the class map of each period and, per pixel, the period of its first change
(0 where it never changes). The rasters are written whole (one array per band and acquisition),
so this generator is for test-sized scenes (at most :data:`MAX_SEQUENCE_SIZE` pixels a side).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from numpy.typing import NDArray
from rasterio.windows import Window

from pipeline.errors import SceneError
from pipeline.synthetic.atmosphere import acquisition_window, cloud_cover
from pipeline.synthetic.landscape import ChangeType, LandCover, Landscape, landscape_window
from pipeline.synthetic.noise import mix
from pipeline.synthetic.spec import MOSTLY_CLEAR_FRACTION, Acquisition, Epoch, SceneSpec
from pipeline.synthetic.spectra import BAND_NAMES, NODATA, surface_reflectance
from pipeline.synthetic.stac import QA_ASSET, build_item, write_items_ndjson

__all__ = [
    "EVENT_PERIODS",
    "MAX_SEQUENCE_SIZE",
    "GeneratedSequence",
    "SequenceTruth",
    "changed_classes",
    "generate_sequence",
    "period_windows",
    "sequence_truth",
]

#: The period (1-based) in which each kind of change happens.
EVENT_PERIODS: dict[ChangeType, int] = {
    ChangeType.CONSTRUCTION: 3,
    ChangeType.BURN: 4,
    ChangeType.FLOOD: 5,
    ChangeType.CLEARING: 6,
    ChangeType.DRAIN: 7,
}
#: Largest side of a generated sequence (its rasters are written whole).
MAX_SEQUENCE_SIZE = 2048

U8 = NDArray[np.uint8]


def period_windows(start: date, periods: int, days: int = 30) -> list[tuple[datetime, datetime]]:
    """UTC windows of ``periods`` consecutive periods of ``days`` days from ``start``.

    Returns
    -------
    list of (datetime, datetime)
        First and last instant of each period.
    """
    out = []
    for k in range(periods):
        first = start + timedelta(days=k * days)
        last = first + timedelta(days=days - 1)
        out.append(
            (
                datetime.combine(first, time(0), tzinfo=UTC),
                datetime.combine(last, time(23, 59, 59), tzinfo=UTC),
            )
        )
    return out


@dataclass(frozen=True)
class SequenceTruth:
    """Land cover of every period and the period of each pixel's first change.

    Attributes
    ----------
    classes
        ``(periods, rows, cols)`` :class:`LandCover` codes.
    first_change
        ``(rows, cols)`` period (1-based) of the first change, 0 where the class never changes.
    kind
        ``(rows, cols)`` :class:`ChangeType` of the pixel's event, 0 where none happens in the sequence.
    """

    classes: U8
    first_change: U8
    kind: U8


def sequence_truth(spec: SceneSpec, periods: int) -> SequenceTruth:
    """The truth of a ``periods``-period sequence of the scene ``spec`` (whole scene).

    Raises
    ------
    SceneError
        With fewer than 2 periods or a scene over :data:`MAX_SEQUENCE_SIZE`.
    """
    _check(spec, periods)
    land = landscape_window(spec, Window(0, 0, spec.size, spec.size))
    period_of = np.zeros(256, dtype=np.uint8)
    for kind, period in EVENT_PERIODS.items():
        period_of[int(kind)] = period if period <= periods else 0
    first = period_of[land.change]
    classes = np.stack(
        [np.where((first > 0) & (first <= p), land.after, land.before) for p in range(1, periods + 1)]
    )
    kinds = np.where(first > 0, land.change, np.uint8(0)).astype(np.uint8)
    return SequenceTruth(classes.astype(np.uint8), first.astype(np.uint8), kinds)


def _check(spec: SceneSpec, periods: int) -> None:
    if periods < 2:
        raise SceneError(f"periods={periods}: a sequence needs at least 2 periods")
    if spec.size > MAX_SEQUENCE_SIZE:
        raise SceneError(
            f"size={spec.size}: a generated sequence is written whole; give at most {MAX_SEQUENCE_SIZE} pixels"
        )


def _acquisitions(
    spec: SceneSpec, period: int, window: tuple[datetime, datetime], n: int
) -> list[Acquisition]:
    """The acquisitions of one period, spread over its window; one of them mostly clear."""
    days = (window[1] - window[0]).days + 1
    clear_one = mix(spec.seed, "sequence-clear", period) % n
    out = []
    for i in range(n):
        salt = mix(spec.seed, "sequence-acquisition", period, i)
        slot = (i * days) // n
        when = window[0] + timedelta(days=slot, hours=10, seconds=salt % 1800)
        if spec.cloud_fraction == 0.0:
            fraction = 0.0
        elif i == clear_one:
            fraction = min(spec.cloud_fraction, MOSTLY_CLEAR_FRACTION)
        else:
            fraction = min(0.9, spec.cloud_fraction * (0.6 + 0.8 * ((salt >> 40) % 1000) / 999))
        item_id = f"{spec.collection_id}_{when:%Y%m%dT%H%M%S}_p{period}_{i}"
        out.append(Acquisition(Epoch.BEFORE, i, when, fraction, i == clear_one, item_id, salt))
    return out


@dataclass(frozen=True)
class GeneratedSequence:
    """Where a generated sequence lies and what it holds.

    Attributes
    ----------
    spec
        The scene (grid, seed, clouds); its epoch dates are not used.
    root
        The output folder.
    items_path
        ``items.ndjson`` of every acquisition of every period.
    windows
        The UTC window of each period.
    truth
        The sequence's truth.
    """

    spec: SceneSpec
    root: Path
    items_path: Path
    windows: tuple[tuple[datetime, datetime], ...]
    truth: SequenceTruth

    @property
    def bbox_utm(self) -> tuple[float, float, float, float]:
        """``(minx, miny, maxx, maxy)`` in the scene CRS."""
        return self.spec.bounds_utm

    def window_interval(self, period: int) -> str:
        """The STAC interval ``START/END`` of a period (1-based)."""
        first, last = self.windows[period - 1]
        return f"{first.isoformat()}/{last.isoformat()}"


def _write_tif(path: Path, spec: SceneSpec, array: NDArray[Any], nodata: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "GTiff",
        "width": spec.size,
        "height": spec.size,
        "count": 1,
        "dtype": str(array.dtype),
        "nodata": nodata,
        "crs": spec.crs,
        "transform": spec.transform,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "DEFLATE",
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array, 1)


def generate_sequence(
    spec: SceneSpec,
    out_dir: Path | str,
    *,
    periods: int = 7,
    start: date = date(2024, 1, 1),
    period_days: int = 30,
    acquisitions_per_period: int = 2,
) -> GeneratedSequence:
    """Generate the scenes of a ``periods``-period sequence, their STAC Items and their truth.

    Parameters
    ----------
    spec
        The scene: grid, seed and cloud fraction (``size`` at most :data:`MAX_SEQUENCE_SIZE`).
    out_dir
        An empty or new folder; ``data/<item id>/<band>.tif``, ``items.ndjson`` and
        ``truth/first_change.tif`` are written there.
    periods
        Number of periods, at least 2 (events of :data:`EVENT_PERIODS` beyond it do not happen).
    start, period_days
        First day of the first period and the length of every period.
    acquisitions_per_period
        Acquisitions in each period, between 1 and ``period_days``.

    Returns
    -------
    GeneratedSequence

    Raises
    ------
    SceneError
        Bad parameters, or ``out_dir`` is not empty.
    """
    _check(spec, periods)
    if not 1 <= acquisitions_per_period <= period_days:
        raise SceneError(
            f"acquisitions_per_period={acquisitions_per_period}: give between 1 and period_days={period_days}"
        )
    root = Path(out_dir).expanduser().resolve()
    if root.exists() and any(root.iterdir()):
        raise SceneError(f"{root} is not empty: give a new or empty folder for the sequence")
    windows = period_windows(start, periods, period_days)
    truth = sequence_truth(spec, periods)
    land = landscape_window(spec, Window(0, 0, spec.size, spec.size))
    whole = Window(0, 0, spec.size, spec.size)
    items: list[dict[str, Any]] = []
    for period, window in enumerate(windows, 1):
        classes = truth.classes[period - 1]
        state = Landscape(classes, classes, np.zeros_like(classes), land.vigour_before, land.vigour_before)
        surface = surface_reflectance(spec, whole, Epoch.BEFORE, state)
        for acquisition in _acquisitions(spec, period, window, acquisitions_per_period):
            arrays = acquisition_window(spec, acquisition, whole, surface)
            hrefs = {}
            for name in (*BAND_NAMES, QA_ASSET):
                path = root / "data" / acquisition.item_id / f"{name}.tif"
                _write_tif(path, spec, arrays[name], NODATA if name != QA_ASSET else 255)
                hrefs[name] = str(path)
            cloud, shadow, valid = cloud_cover(arrays[QA_ASSET].astype(np.uint8))
            item = build_item(spec, acquisition, hrefs, 100.0 * cloud / valid, 100.0 * shadow / valid)
            item["properties"]["synthetic:period"] = period
            del item["properties"]["synthetic:epoch"]
            items.append(item)
    _write_tif(root / "truth" / "first_change.tif", spec, truth.first_change, 255)
    items_path = root / "items.ndjson"
    write_items_ndjson(items, items_path)
    return GeneratedSequence(replace(spec), root, items_path, tuple(windows), truth)


def changed_classes(truth: SequenceTruth, period: int, classes: tuple[LandCover, ...]) -> int:
    """Pixels whose change in ``period`` (1-based, at least 2) is into or out of one of ``classes``."""
    codes = np.array([int(c) for c in classes], dtype=np.uint8)
    before, after = truth.classes[period - 2], truth.classes[period - 1]
    hit = (before != after) & (np.isin(before, codes) | np.isin(after, codes))
    return int(np.count_nonzero(hit))
