"""The sequence specification: one base job and N >= 2 time windows, validated.

A :class:`SequenceSpec` holds every field of a :class:`~pipeline.spec.JobSpec` except its two
windows (``base``), the sequence's output folder and its windows, given either as a list or as a
``start``/``end`` range cut into periods of an ISO 8601 duration such as ``P1M``::

    SequenceSpec.build(base={...job fields...}, output="out/seq",
                       windows={"start": "2024-01-01", "end": "2024-07-01", "period": "P1M"})

Each consecutive pair of windows becomes one two-date job (:meth:`SequenceSpec.pair_job`) whose
output is a sub-folder of the sequence's output, so that every guarantee of a job (restart, lock,
byte-identical outputs) holds for each pair.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.area import TimeWindow
from pipeline.errors import JobSpecError
from pipeline.spec import JobSpec, _resolve_relative

__all__ = ["PAIRS_DIR", "REFERENCES_DIR", "Period", "SequenceSpec", "parse_period", "period_windows"]

#: Folder of the pair outputs inside a sequence's output.
PAIRS_DIR = "pairs"
#: Folder of the reference pairs' outputs (each window against the fixed reference window).
REFERENCES_DIR = "references"

_DURATION = re.compile(r"^P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)W)?(?:(\d+)D)?$")
_OWN_FIELDS = ("before", "after", "output")


@dataclass(frozen=True)
class Period:
    """A calendar duration: whole months (a year is 12) and days (a week is 7)."""

    months: int
    days: int

    def after(self, start: datetime, times: int) -> datetime:
        """``start`` moved on by ``times`` periods; a day past a month's end falls on its last day."""
        month = start.month - 1 + self.months * times
        year, month = start.year + month // 12, month % 12 + 1
        day = min(start.day, calendar.monthrange(year, month)[1])
        return start.replace(year=year, month=month, day=day) + timedelta(days=self.days * times)


def parse_period(text: str) -> Period:
    """Parse an ISO 8601 calendar duration of years, months, weeks and days (``P1M``, ``P2W``, ``P1Y6M``).

    Raises
    ------
    JobSpecError
        When the text is not such a duration or is zero.
    """
    match = _DURATION.match(text.strip().upper()) if isinstance(text, str) else None
    if match is None or not any(match.groups()):
        raise JobSpecError(
            f"period {text!r} is not an ISO 8601 duration of whole years, months, weeks or days; "
            "give e.g. 'P1M' (a month), 'P2W' (two weeks) or 'P10D'"
        )
    years, months, weeks, days = (int(g) if g else 0 for g in match.groups())
    step = Period(months=12 * years + months, days=7 * weeks + days)
    if not (step.months or step.days):
        raise JobSpecError(f"period {text!r} is zero; give a positive duration such as 'P1M'")
    return step


def period_windows(start: datetime, end: datetime, period: str) -> list[TimeWindow]:
    """Cut ``[start, end]`` into consecutive windows of one whole ``period`` each.

    Each window ends one microsecond before the next starts, so no scene falls into two windows.
    A remainder at the end shorter than one period is left out.

    Raises
    ------
    JobSpecError
        When the period is invalid or the range holds no whole period.
    """
    step = parse_period(period)
    out: list[TimeWindow] = []
    k = 0
    while (last := step.after(start, k + 1) - timedelta(microseconds=1)) <= end:
        out.append(TimeWindow(start=step.after(start, k), end=last))
        k += 1
    if not out:
        raise JobSpecError(
            f"the range {start.isoformat()} to {end.isoformat()} holds no whole period {period}; "
            "give a later end or a shorter period"
        )
    return out


class SequenceSpec(BaseModel):
    """A change analysis over N >= 2 time windows.

    Attributes
    ----------
    base
        Every field of a :class:`~pipeline.spec.JobSpec` except ``before``, ``after`` and ``output``.
    output
        The sequence's output folder (local path): the pair outputs go to ``pairs/`` in it, the
        sequence cube beside them.
    windows
        The windows in time order, none overlapping the next. Given as a list (each a
        ``TimeWindow`` or ``"START/END"``) or as ``{"start", "end", "period"}``.
    reference
        Optionally, a fixed reference window (1-based): each window at least two away from it is
        also compared with it, as a two-date job of its own (:meth:`reference_job`; the windows
        next to it are consecutive pairs already).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    base: dict[str, Any]
    output: str
    windows: tuple[TimeWindow, ...] = Field(min_length=2)
    reference: int | None = Field(default=None, ge=1)

    @field_validator("base")
    @classmethod
    def _base(cls, value: dict[str, Any]) -> dict[str, Any]:
        own = sorted(set(value) & set(_OWN_FIELDS))
        if own:
            raise ValueError(
                f"base holds {own}: a sequence gives each pair its windows and output; "
                "move 'output' to the sequence and give the dates as its 'windows'"
            )
        return dict(value)

    @field_validator("windows", mode="before")
    @classmethod
    def _windows(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            missing = sorted({"start", "end", "period"} - set(value))
            if missing or set(value) - {"start", "end", "period"}:
                raise ValueError(
                    "windows as a range need exactly 'start', 'end' and 'period' "
                    f"(e.g. start: 2024-01-01, end: 2024-07-01, period: P1M); missing {missing}"
                )
            span = TimeWindow.model_validate({"start": value["start"], "end": value["end"]})
            try:
                return tuple(period_windows(span.start, span.end, str(value["period"])))
            except JobSpecError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("output")
    @classmethod
    def _output(cls, value: str) -> str:
        if not value.strip() or "://" in value:
            raise ValueError(f"output {value!r}: give a local folder for the sequence")
        return str(Path(value).expanduser().resolve())

    @model_validator(mode="after")
    def _ordered(self) -> SequenceSpec:
        for k in range(1, len(self.windows)):
            earlier, later = self.windows[k - 1], self.windows[k]
            if later.start <= earlier.end:
                raise ValueError(
                    f"windows {k} and {k + 1} overlap or are out of order ({earlier.interval()} then "
                    f"{later.interval()}); list the windows in time order, each ending before the next starts"
                )
        if self.reference is not None and self.reference > len(self.windows):
            raise ValueError(
                f"reference window {self.reference} does not exist; give one of the windows 1..{len(self.windows)}"
            )
        return self

    @classmethod
    def build(cls, **fields: Any) -> SequenceSpec:
        """Validate the fields, and the first pair's job, raising :class:`JobSpecError` on any problem."""
        try:
            spec = cls.model_validate(fields)
        except pydantic.ValidationError as exc:
            lines = []
            for err in exc.errors():
                where = ".".join(str(p) for p in err["loc"]) or "sequence"
                lines.append(f"{where}: {str(err['msg']).removeprefix('Value error, ')}")
            raise JobSpecError("invalid sequence: " + "; ".join(lines)) from None
        spec.pair_job(1)  # the base job's own errors, named by JobSpec
        return spec

    @classmethod
    def from_yaml(cls, path: str | Path, *, output: str | None = None) -> SequenceSpec:
        """Load a sequence from a YAML file: the base job's fields, ``windows`` and ``output``.

        Relative paths in it (catalog, AOI geometry, asset roots, zones, checkpoints, output) are
        taken relative to the file, as in a job file (:meth:`pipeline.spec.JobSpec.from_yaml`).

        Parameters
        ----------
        path
            The YAML sequence file.
        output
            An output folder that replaces the file's ``output`` (the command line's option).

        Raises
        ------
        JobSpecError
            When the file is missing, is not a YAML mapping, gives ``before``/``after`` or lacks
            ``windows`` or ``output``, or any field is invalid.
        """
        path = Path(path)
        if not path.is_file():
            raise JobSpecError(
                f"sequence file {path} does not exist; write one (see README) or check the path"
            )
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise JobSpecError(f"sequence file {path} is not valid YAML: {exc}") from None
        if not isinstance(doc, dict):
            raise JobSpecError(
                f"sequence file {path} must hold a mapping of fields, not {type(doc).__name__}"
            )
        dated = sorted({"before", "after"} & set(doc))
        if dated:
            raise JobSpecError(
                f"sequence file {path} gives {dated}: a sequence's dates are its 'windows'; replace "
                "'before' and 'after' with e.g. windows: [2024-01-01/2024-01-31, 2024-02-01/2024-02-29]"
            )
        if output is not None:
            doc["output"] = output
        missing = [key for key in ("windows", "output") if key not in doc]
        if missing:
            raise JobSpecError(
                f"sequence file {path} lacks {missing}: give 'windows' (a list of START/END intervals, "
                "or start, end and period) and 'output' (the sequence's folder)"
            )
        doc = _resolve_relative(doc, path.parent)
        windows, out, reference = doc.pop("windows"), doc.pop("output"), doc.pop("reference", None)
        if not isinstance(out, str):
            raise JobSpecError(f"sequence file {path}: output must be a folder path, not {out!r}")
        return cls.build(base=doc, output=out, windows=windows, reference=reference)

    @property
    def pairs(self) -> int:
        """Number of consecutive pairs (``len(windows) - 1``)."""
        return len(self.windows) - 1

    def pair_name(self, k: int) -> str:
        """Folder name of pair ``k`` (1-based: windows ``k`` and ``k + 1``), e.g. ``001_20240101_20240201``."""
        self._check_pair(k)
        return f"{k:03d}_{self.windows[k - 1].start:%Y%m%d}_{self.windows[k].start:%Y%m%d}"

    def pair_output(self, k: int) -> Path:
        """Output folder of pair ``k``."""
        return Path(self.output) / PAIRS_DIR / self.pair_name(k)

    def pair_job(self, k: int) -> JobSpec:
        """The two-date job of pair ``k`` (windows ``k`` and ``k + 1``, 1-based)."""
        self._check_pair(k)
        return JobSpec.build(
            **self.base,
            before=self.windows[k - 1],
            after=self.windows[k],
            output=str(self.pair_output(k)),
        )

    def reference_windows(self) -> tuple[int, ...]:
        """The windows (1-based) compared with the reference window: those at least two away from it."""
        if self.reference is None:
            return ()
        return tuple(w for w in range(1, len(self.windows) + 1) if abs(w - self.reference) >= 2)

    def reference_pair(self, w: int) -> tuple[int, int]:
        """The windows (earlier, later) of window ``w``'s reference pair."""
        if w not in self.reference_windows():
            raise JobSpecError(
                f"window {w} has no reference pair; the reference pairs are of windows {list(self.reference_windows())}"
            )
        assert self.reference is not None
        return min(w, self.reference), max(w, self.reference)

    def reference_job(self, w: int) -> JobSpec:
        """The two-date job comparing window ``w`` with the reference window (the earlier first)."""
        a, b = self.reference_pair(w)
        name = f"{w:03d}_{self.windows[a - 1].start:%Y%m%d}_{self.windows[b - 1].start:%Y%m%d}"
        return JobSpec.build(
            **self.base,
            before=self.windows[a - 1],
            after=self.windows[b - 1],
            output=str(Path(self.output) / REFERENCES_DIR / name),
        )

    def window_dates(self) -> list[str]:
        """The windows as ISO ``START/END`` strings (UTC)."""
        return [
            f"{w.start.astimezone(UTC).isoformat()}/{w.end.astimezone(UTC).isoformat()}" for w in self.windows
        ]

    def _check_pair(self, k: int) -> None:
        if not 1 <= k <= self.pairs:
            raise JobSpecError(f"pair {k} does not exist; the sequence has pairs 1..{self.pairs}")
