"""Statistics over time: the changed area of every pair of a sequence in one tidy table.

``sequence_statistics.parquet`` (:data:`SEQUENCE_STATISTICS`) has one row per period (pair) x
zone x kind x class: the columns of a job's statistics table
(:data:`pipeline.publish.statistics.COLUMNS`: ``zone``, ``kind`` changed / target / transition /
class_unchanged, ``target``, ``class_from``, ``class_to``, ``label``, ``pixels``, ``area_m2``,
``area_ha``) after the period's own columns (:data:`PERIOD_COLUMNS`): the pair number, its folder
name, the window number that ends it (as the sequence cube's date layers count: ``first_change
== window`` means the pixel first changed in this pair), and the start and end of its two windows.

Each pair's rows are its own statistics (:mod:`pipeline.publish.statistics`): the
``statistics.json`` its job published when that was made from the pair's change cube as it is now
(same fingerprint), else counted again from the change cube with the job's zones. Nothing is
counted by hand here, so a pair's rows equal its own statistics file.

The file's key-value metadata carries the pairs' common metadata (CRS, pixel area, classes,
targets, models, software, transition codes), the sequence's ``windows`` and ``pairs`` (JSON
lists), each pair's ``fingerprints`` and ``job_name`` (the sequence's folder name); each column
carries its description.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.change_cube import describe_change_cube
from pipeline.errors import PublishError
from pipeline.layout import OutputLayout
from pipeline.publish.statistics import (
    COLUMN_DESCRIPTIONS,
    COLUMNS,
    ChangeStatistics,
    compute_statistics,
    read_statistics,
)
from pipeline.publish.zones import load_zones
from pipeline.sequence.spec import SequenceSpec
from pipeline.storage import replace_atomically

__all__ = [
    "FORMAT",
    "PERIOD_COLUMNS",
    "SEQUENCE_COLUMNS",
    "SEQUENCE_COLUMN_DESCRIPTIONS",
    "SEQUENCE_STATISTICS",
    "pair_statistics",
    "sequence_statistics",
    "write_sequence_statistics",
]

#: Name of the table in a sequence's output folder.
SEQUENCE_STATISTICS = "sequence_statistics.parquet"
#: Value of the ``format`` key of the table's metadata.
FORMAT = "seg2change-sequence-statistics/1"
#: The period's columns, before the job statistics' own.
PERIOD_COLUMNS = ("pair", "pair_name", "window", "before_start", "before_end", "after_start", "after_end")
#: Columns of the table, in order.
SEQUENCE_COLUMNS = (*PERIOD_COLUMNS, *COLUMNS)
#: What each column holds.
SEQUENCE_COLUMN_DESCRIPTIONS: Mapping[str, str] = {
    "pair": "the pair (period), 1-based: windows pair and pair + 1",
    "pair_name": "the pair's output folder in pairs/ (NNN_<before start>_<after start>)",
    "window": "the window (1-based) that ends the pair, as the sequence cube's date layers count "
    "(first_change == window: first changed in this pair)",
    "before_start": "start of the pair's before window (UTC)",
    "before_end": "end of the pair's before window (UTC)",
    "after_start": "start of the pair's after window (UTC)",
    "after_end": "end of the pair's after window (UTC)",
    **COLUMN_DESCRIPTIONS,
}
#: Metadata keys of a pair's statistics that belong to the pair alone (replaced by the sequence's).
_PAIR_KEYS = ("before", "after", "fingerprint", "job_name")


def pair_statistics(spec: SequenceSpec, k: int) -> ChangeStatistics:
    """The statistics of pair ``k``: its published ``statistics.json`` if made from its change cube as it
    is now, else counted from the change cube (with the job's zones).

    Raises
    ------
    PublishError
        When the pair's change cube is missing or incomplete (run the sequence first).
    """
    layout = OutputLayout.of(spec.pair_output(k))
    info = describe_change_cube(layout.change_cube)
    if layout.statistics_json.exists():
        published = read_statistics(layout.statistics_json)
        if published.metadata.get("fingerprint") == info.fingerprint:
            return published
    job = spec.pair_job(k)
    zones = tuple(load_zones(Path(job.zones), info.crs)) if job.zones else ()
    return compute_statistics(info, zones=zones)


def _period_frame(spec: SequenceSpec, k: int, stats: ChangeStatistics) -> pd.DataFrame:
    """Pair ``k``'s rows with the period's columns in front."""
    frame = stats.to_frame()
    before, after = spec.windows[k - 1], spec.windows[k]

    def utc(moment: datetime) -> pd.Timestamp:
        return pd.Timestamp(moment).tz_convert("UTC")

    period = {
        "pair": k,
        "pair_name": spec.pair_name(k),
        "window": k + 1,
        "before_start": utc(before.start),
        "before_end": utc(before.end),
        "after_start": utc(after.start),
        "after_end": utc(after.end),
    }
    for position, (name, value) in enumerate(period.items()):
        frame.insert(position, name, value)
    return frame.astype({"pair": "int64", "pair_name": "string", "window": "int64"})


def sequence_statistics(spec: SequenceSpec, pairs: int) -> pa.Table:
    """The table of the first ``pairs`` pairs of ``spec``, as Arrow with column descriptions and metadata.

    Raises
    ------
    PublishError
        When a pair's change cube is missing or incomplete, or the pairs disagree on their classes,
        targets or grid (they come from one base job, so this means the outputs were mixed by hand).
    """
    if not 1 <= pairs <= spec.pairs:
        raise PublishError(f"a sequence of {spec.pairs} pair(s) has no statistics of {pairs} pairs")
    per_pair = [pair_statistics(spec, k) for k in range(1, pairs + 1)]
    first = per_pair[0]
    for k, stats in enumerate(per_pair[1:], 2):
        if (stats.classes, stats.targets, stats.crs, stats.pixel_area_m2) != (
            first.classes,
            first.targets,
            first.crs,
            first.pixel_area_m2,
        ):
            raise PublishError(
                f"pair {k} ({spec.pair_output(k)}) has other classes, targets or grid than pair 1; the pairs "
                "of one sequence share them: run the sequence again with --overwrite"
            )
    frame = pd.concat(
        [_period_frame(spec, k, stats) for k, stats in enumerate(per_pair, 1)], ignore_index=True
    )
    metadata = {key: value for key, value in first.metadata.items() if key not in _PAIR_KEYS}
    metadata.update(
        {
            "format": FORMAT,
            "job_name": Path(spec.output).name,
            "windows": json.dumps(spec.window_dates()[: pairs + 1]),
            "pairs": json.dumps([spec.pair_name(k) for k in range(1, pairs + 1)]),
            "fingerprints": json.dumps([stats.metadata.get("fingerprint", "") for stats in per_pair]),
        }
    )
    table = pa.Table.from_pandas(frame[list(SEQUENCE_COLUMNS)], preserve_index=False)
    fields = [f.with_metadata({"description": SEQUENCE_COLUMN_DESCRIPTIONS[f.name]}) for f in table.schema]
    return table.cast(pa.schema(fields, metadata={**(table.schema.metadata or {}), **metadata}))


def write_sequence_statistics(spec: SequenceSpec, pairs: int, path: Path | None = None) -> Path:
    """Write the table of the first ``pairs`` pairs as Parquet (replaced atomically).

    Parameters
    ----------
    spec
        The sequence.
    pairs
        The pairs stacked so far (the sequence cube's ``pairs_done``).
    path
        Where; default :data:`SEQUENCE_STATISTICS` in the sequence's output folder.

    Returns
    -------
    Path
        The file written.
    """
    path = Path(spec.output) / SEQUENCE_STATISTICS if path is None else Path(path)
    table = sequence_statistics(spec, pairs)
    with replace_atomically(path) as tmp:
        pq.write_table(table, tmp)
    return path
