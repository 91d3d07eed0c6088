"""The windows of a region's sequence in a monitoring run: the ones its cube holds, then the periods
up to the one just ended.

In ``sequence`` mode each region has one sequence (``<output>/<region>/sequence``) whose windows
are consecutive periods of the cadence. Its windows are known from its sequence cube (the
``windows`` it records), so the run needs no other state:

* **first run** (no cube): two windows, the period before and the period just ended; one pair.
* **next period**: the cube's windows and the period just ended; only the new pair runs.
* **rerun** of a period the cube holds already: the cube's windows; nothing runs.
* **gap** (runs were missed): the missing periods are filled, each as a window of its own, so that
  the sequence stays one window per period and its date layers keep meaning "in which period";
  every missed pair runs, oldest first.
* a period **before** the sequence's first window is refused: windows are only added at the end.

The cube's windows must be the cadence's periods from its first on (a cube made with another
cadence, or by hand, is refused, naming it), and its base job must be the region's (checked by
:func:`pipeline.sequence.cube.pairs_done`; ``force`` replaces the sequence instead).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from flows.regions import Cadence, Period, Region, period_of, periods_from, region_base
from pipeline.errors import JobSpecError
from pipeline.sequence.spec import SequenceSpec

__all__ = ["RegionSequence", "region_sequence"]


@dataclass(frozen=True)
class RegionSequence:
    """A region's sequence as a monitoring run extends it.

    Attributes
    ----------
    region
        The region.
    spec
        The sequence: the region's base job, one window per period, its output folder.
    periods
        The period of each window, in order (pair ``k`` ends in ``periods[k]``).
    done
        Pairs its cube held when the run was planned (0 without a cube, or with ``force``).
    """

    region: Region
    spec: SequenceSpec
    periods: tuple[Period, ...]
    done: int

    @property
    def pending(self) -> tuple[Period, ...]:
        """The periods whose pair the run computes (those after the cube's), oldest first."""
        return self.periods[self.done + 1 :]

    def pair_of(self, period: Period) -> int:
        """The pair (1-based) that ends in ``period``.

        Raises
        ------
        JobSpecError
            When no pair ends in it (it is the sequence's first window, or not one of its windows).
        """
        if period not in self.periods[1:]:
            raise JobSpecError(
                f"region {self.region.name!r}: no pair of its sequence ends in {period.label} "
                f"(its windows are {self.periods[0].label} to {self.periods[-1].label})"
            )
        return self.periods.index(period)


def _cube_windows(output: str) -> list[str]:
    """The windows recorded by the sequence cube in ``output`` (empty when there is none yet)."""
    if not Path(output).is_dir():  # the first run: Zarr need not load
        return []
    from pipeline.sequence.cube import SEQUENCE_CUBE, open_sequence_cube

    cube = Path(output) / SEQUENCE_CUBE
    if not cube.exists():
        return []
    recorded = open_sequence_cube(cube).attrs.get("windows")
    if not isinstance(recorded, list) or not recorded:
        raise JobSpecError(
            f"the sequence cube {cube} records no windows; it is damaged: give another output folder, "
            "or replace it (--overwrite)"
        )
    return [str(window) for window in recorded]


def _period_of_window(window: str, cadence: Cadence) -> Period:
    """The period of the cadence in which a recorded ``START/END`` window starts."""
    return period_of(datetime.fromisoformat(window.split("/")[0]).date(), cadence)


def region_sequence(
    region: Region, before: Period, after: Period, cadence: Cadence = "monthly", *, force: bool = False
) -> RegionSequence:
    """Plan a region's sequence for a run whose period just ended is ``after``.

    Parameters
    ----------
    region
        The region (its sequence is :meth:`~flows.regions.Region.sequence_output`).
    before, after
        The periods of the run (:func:`flows.regions.monitoring_periods`).
    cadence
        The cadence of the periods.
    force
        The sequence is to be replaced: its windows are kept, every pair is computed again, and
        a change of base job is allowed.

    Returns
    -------
    RegionSequence

    Raises
    ------
    JobSpecError
        The output is not a local folder, ``after`` lies before the sequence's second window, the
        cube's windows are not consecutive periods of the cadence, or the base job is invalid.
    OutputExistsError
        The cube was made from another base job (without ``force``).
    """
    output = region.sequence_output()
    if "://" in output:
        raise JobSpecError(
            f"region {region.name!r}: a sequence is written to a local folder, not {output}; give a "
            "local output, or monitor in 'pairs' mode"
        )
    base = region_base(region)
    try:  # the job's own errors first, before anything is read
        spec = SequenceSpec.build(base=base, output=output, windows=[before.window(), after.window()])
    except JobSpecError as exc:
        raise JobSpecError(f"region {region.name!r}: {exc}") from None
    recorded = _cube_windows(output)
    if not recorded:
        return RegionSequence(region, spec, (before, after), 0)
    first = _period_of_window(recorded[0], cadence)
    if after.start <= first.start:
        raise JobSpecError(
            f"region {region.name!r}: its sequence {output} begins with {first.label}, so no pair "
            f"of it can end in {after.label} (windows are only added at the end); give another "
            "output folder to monitor earlier periods"
        )
    last = max(after, _period_of_window(recorded[-1], cadence), key=lambda period: period.start)
    periods = tuple(periods_from(first, last, cadence))
    spec = SequenceSpec.build(base=base, output=output, windows=[p.window() for p in periods])
    dates = spec.window_dates()
    if dates[: len(recorded)] != recorded:
        raise JobSpecError(
            f"region {region.name!r}: the sequence cube in {output} holds windows {recorded}, which are "
            f"not the {cadence} periods from {first.label} on; it was made with another cadence or by "
            "hand: monitor it with its own cadence, or give another output folder"
        )
    if force:
        return RegionSequence(region, spec, periods, 0)
    from pipeline.sequence.cube import SEQUENCE_CUBE, pairs_done

    return RegionSequence(region, spec, periods, pairs_done(Path(output) / SEQUENCE_CUBE, dates, spec.base))
