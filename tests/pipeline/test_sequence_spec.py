"""The sequence spec (windows as a list or a range, pair jobs), the date-layer fold and the sequence truth."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.errors import JobSpecError
from pipeline.sequence import SequenceSpec, parse_period
from pipeline.sequence.cube import DATE_NODATA, _fold
from pipeline.synthetic import ChangeType, SceneSpec
from pipeline.synthetic.sequence import EVENT_PERIODS, sequence_truth


def _base(tmp_path: Path) -> dict[str, Any]:
    items = tmp_path / "items.ndjson"
    items.write_text("")
    return {
        "aoi": {"bbox": [600000, 5447440, 602560, 5450000], "crs": "EPSG:32633"},
        "catalog": str(items),
        "collections": ["synthetic-s2"],
        "prompts": {"classes": ["water"]},
    }


def test_windows_from_a_range_of_months(tmp_path: Path) -> None:
    spec = SequenceSpec.build(
        base=_base(tmp_path),
        output=str(tmp_path / "seq"),
        windows={"start": "2024-01-01", "end": "2024-07-01", "period": "P1M"},
    )
    assert [w.start.month for w in spec.windows] == [1, 2, 3, 4, 5, 6]
    assert spec.pairs == 5
    assert spec.windows[1].end.isoformat() == "2024-02-29T23:59:59.999999+00:00"
    job = spec.pair_job(2)
    assert (job.before, job.after) == (spec.windows[1], spec.windows[2])
    assert job.output == str(tmp_path / "seq" / "pairs" / "002_20240201_20240301")
    with pytest.raises(JobSpecError, match="pairs 1..5"):
        spec.pair_job(6)


def test_windows_as_a_list(tmp_path: Path) -> None:
    spec = SequenceSpec.build(
        base=_base(tmp_path),
        output=str(tmp_path / "seq"),
        windows=["2024-01-01/2024-01-20", "2024-03-01/2024-03-20", "2024-05-01/2024-05-20"],
    )
    assert spec.pairs == 2 and spec.pair_name(1) == "001_20240101_20240301"


@pytest.mark.parametrize(
    ("windows", "message"),
    [
        (["2024-01-01/2024-01-20"], "at least 2"),
        (["2024-01-01/2024-02-20", "2024-02-01/2024-03-01"], "windows 1 and 2 overlap"),
        ({"start": "2024-01-01", "end": "2024-06-01", "period": "1 month"}, "ISO 8601 duration"),
        ({"start": "2024-01-01", "end": "2024-06-01", "period": "P0M"}, "is zero"),
        ({"start": "2024-01-01", "end": "2024-01-20", "period": "P1M"}, "no whole period"),
        ({"start": "2024-01-01", "period": "P1M"}, "missing \\['end'\\]"),
    ],
)
def test_bad_windows_are_refused(tmp_path: Path, windows: Any, message: str) -> None:
    with pytest.raises(JobSpecError, match=message):
        SequenceSpec.build(base=_base(tmp_path), output=str(tmp_path / "seq"), windows=windows)


def test_base_may_not_hold_the_pair_fields_and_is_checked_as_a_job(tmp_path: Path) -> None:
    windows = {"start": "2024-01-01", "end": "2024-04-01", "period": "P1M"}
    with pytest.raises(JobSpecError, match="move 'output' to the sequence"):
        SequenceSpec.build(
            base={**_base(tmp_path), "output": "x"}, output=str(tmp_path / "s"), windows=windows
        )
    with pytest.raises(JobSpecError, match="cloud_limit"):
        SequenceSpec.build(
            base={**_base(tmp_path), "cloud_limit": 300}, output=str(tmp_path / "s"), windows=windows
        )


SEQUENCE_YAML = """\
aoi: {bbox: [600000, 5447440, 602560, 5450000], crs: EPSG:32633}
catalog: items.ndjson
collections: [synthetic-s2]
prompts: {classes: [water]}
output: out/seq
"""


def test_from_yaml_resolves_relative_paths_like_a_job_file(tmp_path: Path) -> None:
    (tmp_path / "items.ndjson").write_text("")
    path = tmp_path / "sequence.yaml"
    path.write_text(SEQUENCE_YAML + "windows: {start: 2024-01-01, end: 2024-04-01, period: P1M}\n")
    spec = SequenceSpec.from_yaml(path)
    assert spec.output == str((tmp_path / "out" / "seq").resolve())
    assert spec.base["catalog"] == str((tmp_path / "items.ndjson").resolve())
    assert spec.pairs == 2 and "output" not in spec.base
    assert spec.pair_job(2).output == str(tmp_path / "out" / "seq" / "pairs" / "002_20240201_20240301")
    listed = tmp_path / "listed.yaml"
    listed.write_text(SEQUENCE_YAML + "windows: [2024-01-01/2024-01-31, 2024-03-01/2024-03-31]\n")
    assert SequenceSpec.from_yaml(listed, output=str(tmp_path / "other")).output == str(tmp_path / "other")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (SEQUENCE_YAML, r"lacks \['windows'\]"),
        (
            SEQUENCE_YAML + "before: 2024-01-01/2024-01-31\nwindows: [2024-02-01/2024-02-28]\n",
            "replace 'before'",
        ),
        (SEQUENCE_YAML + "windows: [2024-01-01/2024-01-31]\n", "windows"),
        (
            SEQUENCE_YAML + "clod_limit: 3\nwindows: [2024-01-01/2024-01-31, 2024-03-01/2024-03-31]\n",
            "clod_limit",
        ),
        ("- a list\n", "must hold a mapping"),
        ("aoi: [unclosed\n", "not valid YAML"),
    ],
)
def test_from_yaml_refuses_a_bad_file_naming_the_fix(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "items.ndjson").write_text("")
    path = tmp_path / "sequence.yaml"
    path.write_text(text)
    with pytest.raises(JobSpecError, match=message):
        SequenceSpec.from_yaml(path)


def test_the_readme_sequence_file_validates(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = next(b for b in re.findall(r"```yaml\n(.*?)```", readme, flags=re.S) if "windows:" in b)
    path = tmp_path / "berlin-monthly.yaml"
    path.write_text(block)
    spec = SequenceSpec.from_yaml(path)
    assert spec.pairs == 4 and spec.output == str(tmp_path / "out" / "berlin-monthly")
    assert spec.pair_job(4).after.start == datetime(2024, 8, 1, tzinfo=UTC)


def test_from_yaml_refuses_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(JobSpecError, match="does not exist"):
        SequenceSpec.from_yaml(tmp_path / "nope.yaml")


def test_parse_period() -> None:
    assert parse_period("P1Y6M").months == 18 and parse_period("p2w").days == 14
    jan31 = datetime(2024, 1, 31, tzinfo=UTC)
    assert parse_period("P1M").after(jan31, 1) == datetime(2024, 2, 29, tzinfo=UTC)
    assert parse_period("P1M").after(jan31, 13) == datetime(2025, 2, 28, tzinfo=UTC)
    assert parse_period("P1M10D").after(jan31, 2) == datetime(2024, 4, 20, tzinfo=UTC)
    with pytest.raises(JobSpecError, match="ISO 8601"):
        parse_period("PT1H")


def test_fold_gives_first_last_and_count_in_window_numbers() -> None:
    # Four pixels over three pairs: changed in pairs 1 and 3; never; nodata in pair 1 then changed in 2; all nodata.
    stack = [
        np.array([1, 0, 255, 255], np.uint8),
        np.array([0, 0, 1, 255], np.uint8),
        np.array([1, 0, 0, 255], np.uint8),
    ]
    first, last, count = _fold(iter(stack), (4,))
    assert first.tolist() == [2, 0, 3, DATE_NODATA]
    assert last.tolist() == [4, 0, 3, DATE_NODATA]
    assert count.tolist() == [2, 0, 1, DATE_NODATA]


def test_sequence_truth_puts_each_event_in_its_period() -> None:
    spec = SceneSpec(size=256, seed=0)
    truth = sequence_truth(spec, 7)
    for kind, period in EVENT_PERIODS.items():
        assert set(np.unique(truth.first_change[truth.kind == kind]).tolist()) == {period}, kind
    changed = truth.first_change > 0
    # A pixel keeps its class before its period and has its new class from it on.
    for p in range(2, 8):
        moved = truth.classes[p - 1] != truth.classes[p - 2]
        assert np.array_equal(moved, truth.first_change == p)
    assert changed.sum() > 5000
    # Events beyond the sequence do not happen.
    short = sequence_truth(spec, 5)
    assert not np.isin(short.kind, [ChangeType.CLEARING, ChangeType.DRAIN]).any()
    assert short.first_change.max() == 5


def test_a_reference_window_adds_a_pair_per_window_at_least_two_away(tmp_path: Path) -> None:
    months = {"start": "2024-01-01", "end": "2024-06-01", "period": "P1M"}
    first = SequenceSpec.build(
        base=_base(tmp_path), output=str(tmp_path / "seq"), windows=months, reference=1
    )
    assert first.reference_windows() == (3, 4, 5)
    job = first.reference_job(4)
    assert (job.before, job.after) == (first.windows[0], first.windows[3])
    assert job.output == str(tmp_path / "seq" / "references" / "004_20240101_20240401")
    middle = first.model_copy(update={"reference": 3})
    assert middle.reference_windows() == (1, 5) and middle.reference_pair(1) == (1, 3)
    with pytest.raises(JobSpecError, match="the reference pairs are of windows \\[1, 5\\]"):
        middle.reference_job(2)
    assert SequenceSpec.build(base=_base(tmp_path), output="out", windows=months).reference_windows() == ()
    with pytest.raises(JobSpecError, match="reference window 6 does not exist; give one of the windows 1..5"):
        SequenceSpec.build(base=_base(tmp_path), output="out", windows=months, reference=6)
    with pytest.raises(JobSpecError, match="reference"):
        SequenceSpec.build(base=_base(tmp_path), output="out", windows=months, reference=0)


def test_a_sequence_file_names_its_reference_window(tmp_path: Path) -> None:
    doc = tmp_path / "sequence.yaml"
    base = _base(tmp_path)
    doc.write_text(
        f"aoi: {{bbox: {base['aoi']['bbox']}, crs: 'EPSG:32633'}}\ncatalog: {base['catalog']}\n"
        "collections: [synthetic-s2]\nprompts: {classes: [water]}\noutput: seq\nreference: 2\n"
        "windows: [2024-01-01/2024-01-20, 2024-03-01/2024-03-20, 2024-05-01/2024-05-20, 2024-07-01/2024-07-20]\n"
    )
    spec = SequenceSpec.from_yaml(doc)
    assert spec.reference == 2 and spec.reference_windows() == (4,) and "reference" not in spec.base
