"""Monitoring in ``sequence`` mode: monthly runs append to one sequence per region.

One module-scoped set of runs on a generated 5-period 256 px scene (one acquisition pair in each
calendar month, January to May 2024; construction happens in March): the run of 2024-03-05
(February against January), the run of 2024-04-05 (March appended), the same run again, the run
of 2024-06-05 after a missed run (April filled, May appended) and the run of 2024-07-05 (June has
no scene). The planning rules (gap, earlier period, other cadence, changed job) are then checked
on the cube they left.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
import zarr
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.settings import (
    PREFECT_HOME,
    PREFECT_SERVER_ANALYTICS_ENABLED,
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
    temporary_settings,
)
from prefect.testing.utilities import prefect_test_harness

import pipeline.sequence.run as sequence_run
from flows.monitoring import MONITORING_ARTIFACT_KEY, monitoring_flow
from flows.monitoring_plan import monitoring_plan
from flows.region_sequence import region_sequence
from flows.regions import Region, monitoring_periods
from pipeline.demo import demo_checkpoint, demo_sequence_fields
from pipeline.errors import JobSpecError, OutputExistsError
from pipeline.run import RunResult, run_job
from pipeline.sequence import SEQUENCE_CUBE
from pipeline.synthetic import SceneSpec
from pipeline.synthetic.sequence import generate_sequence

FIRST_RUN = date(2024, 3, 5)  # February against January
SECOND_RUN = date(2024, 4, 5)  # March appended


def tree(folder: Path) -> dict[str, int]:
    """Every file under a folder with its modification time (ns)."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


@dataclass(frozen=True)
class Runs:
    job_file: Path
    sequence: Path
    first: dict[str, Any]
    second: dict[str, Any]
    second_cube: dict[str, Any]  # the sequence cube's attributes and class windows after it
    rerun: dict[str, Any]
    gap: dict[str, Any]  # the run after a missed one: April filled, May appended
    no_scene: str  # the error of the run for June, which has no scene
    cube_before_no_scene: dict[str, int]
    cube_after_no_scene: dict[str, int]
    calls: list[list[str]]  # the pair outputs run_job computed, per run
    cube_before_rerun: dict[str, int]
    cube_after_rerun: dict[str, int]
    markdown: list[str]  # the run summary of each run


async def _markdown() -> list[str]:
    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[MONITORING_ARTIFACT_KEY]))
        )
    return [str(a.data) for a in sorted(found, key=lambda a: str(a.created))]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    import asyncio

    if demo_checkpoint() is None:
        pytest.skip("the demo CACH checkpoint is absent (seg2change make-demo-checkpoint writes it)")
    root = tmp_path_factory.mktemp("monitoring-sequence")
    scene = generate_sequence(
        SceneSpec(size=256, seed=0, cloud_fraction=0.2), root / "scene", periods=5, start=date(2024, 1, 10)
    )
    job_file = root / "valley.yaml"
    job_file.write_text(
        yaml.safe_dump(
            {
                **demo_sequence_fields(scene),
                "publishers": ["statistics", "stac"],
                "cluster": {"n_workers": 1, "processes": False},
                "output": "monitoring",
            }
        )
    )
    calls: list[list[str]] = []

    def counted(job: Any, **kwargs: Any) -> RunResult:
        calls[-1].append(Path(job.output).name)
        return run_job(job, **kwargs)

    params: dict[str, Any] = {"job_files": [str(job_file)], "mode": "sequence"}
    sequence = root / "monitoring" / "valley" / "sequence"
    settings = {
        PREFECT_HOME: str(root / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED: False,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 90,
    }
    with (
        temporary_settings(updates=settings),
        prefect_test_harness(server_startup_timeout=90),
        pytest.MonkeyPatch.context() as patch,
    ):
        patch.setattr(sequence_run, "run_job", counted)
        calls.append([])
        first = monitoring_flow(**params, run_date=FIRST_RUN)
        calls.append([])
        second = monitoring_flow(**params, run_date=SECOND_RUN)
        before_rerun = tree(sequence / SEQUENCE_CUBE)
        cube = zarr.open_group(str(sequence / SEQUENCE_CUBE), mode="r")
        second_cube = {**cube.attrs, "class_windows": zarr.open_array(cube.store, path="class").shape[0]}
        calls.append([])
        rerun = monitoring_flow(**params, run_date=SECOND_RUN)
        after_rerun = tree(sequence / SEQUENCE_CUBE)
        calls.append([])
        gap = monitoring_flow(**params, run_date=date(2024, 6, 5))
        before_no_scene = tree(sequence / SEQUENCE_CUBE)
        with pytest.raises(RuntimeError) as failed:
            monitoring_flow(**params, run_date=date(2024, 7, 5))
        markdown = asyncio.run(_markdown())
    yield Runs(
        job_file,
        sequence,
        first,
        second,
        second_cube,
        rerun,
        gap,
        str(failed.value),
        before_no_scene,
        tree(sequence / SEQUENCE_CUBE),
        calls,
        before_rerun,
        after_rerun,
        markdown,
    )


def _only(result: dict[str, Any]) -> dict[str, Any]:
    (row,) = result["regions"]
    assert row["region"] == "valley"
    return dict(row)


def test_the_first_run_starts_the_sequence_with_two_periods(runs: Runs) -> None:
    assert runs.calls[0] == ["001_20240101_20240201"]
    row = _only(runs.first)
    assert runs.first["mode"] == "sequence"
    assert row["status"] == "computed" and row["computed_periods"] == ["2024-02"]
    assert row["output"] == str(runs.sequence) and row["windows"] == 2
    assert row["inference"]["computed"] > 0 and Path(row["outputs"]["stac_item"]).is_file()


def test_the_next_period_computes_only_the_new_pair(runs: Runs) -> None:
    assert runs.calls[1] == ["002_20240201_20240301"]
    row = _only(runs.second)
    assert row["status"] == "computed" and row["computed_periods"] == ["2024-03"]
    assert runs.second_cube["windows"] == [
        "2024-01-01T00:00:00+00:00/2024-01-31T23:59:59.999999+00:00",
        "2024-02-01T00:00:00+00:00/2024-02-29T23:59:59.999999+00:00",
        "2024-03-01T00:00:00+00:00/2024-03-31T23:59:59.999999+00:00",
    ]
    assert runs.second_cube["pairs_done"] == 2 and runs.second_cube["class_windows"] == 3
    # The table of every period is read from the cube: pair 1 from the first run, pair 2 new (the
    # pairs' slices are never rewritten by later runs, so the final cube still holds them).
    change = np.asarray(zarr.open_array(str(runs.sequence / SEQUENCE_CUBE), path="change", mode="r")[...])
    periods = row["periods"]
    assert [(p["period"], p["before"], p["computed"]) for p in periods] == [
        ("2024-02", "2024-01", False),
        ("2024-03", "2024-02", True),
    ]
    assert [p["changed_pixels"] for p in periods] == [int((change[k] == 1).sum()) for k in range(2)]
    assert periods[1]["changed_pixels"] > 0  # construction happens in March
    assert periods[1]["changed_m2"] == periods[1]["changed_pixels"] * row["summary"]["pixel_area_m2"]
    assert row["summary"]["changed_area_m2"] == pytest.approx(periods[1]["changed_m2"])


def test_a_rerun_of_the_same_period_computes_nothing(runs: Runs) -> None:
    assert runs.calls[2] == []
    row = _only(runs.rerun)
    assert row["status"] == "skipped" and row["skipped"] and row["computed_periods"] == []
    assert row["inference"] is None and row["summary"] == _only(runs.second)["summary"]
    assert runs.cube_after_rerun == runs.cube_before_rerun
    assert [p["computed"] for p in row["periods"]] == [False, False]


def test_missed_periods_are_filled(runs: Runs) -> None:
    assert runs.calls[3] == ["003_20240301_20240401", "004_20240401_20240501"]
    row = _only(runs.gap)
    assert row["status"] == "computed" and row["computed_periods"] == ["2024-04", "2024-05"]
    cube = zarr.open_group(str(runs.sequence / SEQUENCE_CUBE), mode="r")
    windows = cube.attrs["windows"]
    assert cube.attrs["pairs_done"] == 4 and isinstance(windows, list)
    assert [str(w)[:7] for w in windows] == ["2024-01", "2024-02", "2024-03", "2024-04", "2024-05"]
    assert [p["period"] for p in row["periods"]] == ["2024-02", "2024-03", "2024-04", "2024-05"]


def test_a_period_without_scenes_fails_its_region_and_leaves_the_sequence(runs: Runs) -> None:
    assert runs.no_scene == "monitoring 2024-06: region(s) valley failed; see their task runs"
    assert runs.cube_after_no_scene == runs.cube_before_no_scene
    failed = runs.markdown[-1]
    assert "| valley | failed |" in failed and "NothingFoundError" in failed


def test_the_run_summary_has_the_changed_area_of_every_period(runs: Runs) -> None:
    second, rerun = runs.markdown[1], runs.markdown[2]
    periods = _only(runs.second)["periods"]
    ha = [round(p["changed_m2"] / 10_000.0, 4) for p in periods]
    assert "## Changed area per period" in second and "| period | valley |" in second
    assert f"| 2024-02 vs 2024-01 | {ha[0]} |" in second
    assert f"| 2024-03 vs 2024-02 | {ha[1]} (new) |" in second
    assert f"| 2024-03 vs 2024-02 | {ha[1]} |" in rerun


# --------------------------------------------------------------------------- planning rules


def _plan(runs: Runs, day: date, **options: Any) -> Any:
    (sequence,) = monitoring_plan(
        job_files=[str(runs.job_file)], run_date=day, mode="sequence", **options
    ).sequences.values()
    return sequence


def test_missed_periods_are_filled_and_earlier_ones_refused(runs: Runs) -> None:
    gap = _plan(runs, date(2024, 8, 5))
    assert gap.done == 4 and [p.label for p in gap.pending] == ["2024-06", "2024-07"]
    assert [p.label for p in gap.periods] == [
        "2024-01",
        "2024-02",
        "2024-03",
        "2024-04",
        "2024-05",
        "2024-06",
        "2024-07",
    ]
    assert _plan(runs, FIRST_RUN).pending == ()  # an earlier period the sequence holds: nothing to do
    with pytest.raises(JobSpecError, match="begins with 2024-01, so no pair of it can end in 2024-01"):
        _plan(runs, date(2024, 2, 5))
    with pytest.raises(JobSpecError, match="not the quarterly periods from 2024-Q1 on"):
        _plan(runs, date(2024, 7, 5), cadence="quarterly")


def test_a_changed_job_is_refused_unless_replaced(runs: Runs, tmp_path: Path) -> None:
    changed = tmp_path / "valley.yaml"
    fields = yaml.safe_load(runs.job_file.read_text())
    changed.write_text(
        yaml.safe_dump({**fields, "cloud_limit": 80, "output": str(runs.sequence.parent.parent)})
    )
    with pytest.raises(OutputExistsError, match="another base job.*--overwrite"):
        monitoring_plan(job_files=[str(changed)], run_date=SECOND_RUN, mode="sequence")
    replaced = monitoring_plan(job_files=[str(changed)], run_date=SECOND_RUN, mode="sequence", force=True)
    assert replaced.sequences["valley"].done == 0
    assert [p.label for p in replaced.sequences["valley"].pending] == [
        "2024-02",
        "2024-03",
        "2024-04",
        "2024-05",
    ]


def test_plan_modes(tmp_path: Path) -> None:
    (tmp_path / "items.json").write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    job = tmp_path / "valley.yaml"
    job.write_text(json.dumps({"aoi": {"bbox": [0, 0, 1, 1]}, "catalog": "items.json", "collections": ["c"]}))
    pairs = monitoring_plan(job_files=[str(job)], output=str(tmp_path / "out"), run_date=FIRST_RUN)
    assert pairs.mode == "pairs" and not pairs.sequences
    assert pairs.jobs["valley"].output == str(tmp_path / "out" / "valley" / "2024-02")
    first = monitoring_plan(
        job_files=[str(job)], output=str(tmp_path / "out"), run_date=FIRST_RUN, mode="sequence"
    ).sequences["valley"]
    assert not pairs.jobs.keys() - {"valley"} and first.done == 0
    assert [p.label for p in first.periods] == ["2024-01", "2024-02"]
    assert first.spec.output == str(tmp_path / "out" / "valley" / "sequence")
    assert first.spec.base["catalog"] == str(tmp_path / "items.json")  # relative to the job file
    with pytest.raises(JobSpecError, match="monitoring mode 'weekly' is unknown"):
        monitoring_plan(job_files=[str(job)], run_date=FIRST_RUN, mode="weekly")  # type: ignore[arg-type]
    remote = Region("valley", str(job), "s3://bucket/valley", {})
    with pytest.raises(JobSpecError, match="local folder.*'pairs' mode"):
        region_sequence(remote, *monitoring_periods(FIRST_RUN))


def test_the_monitor_command_refuses_a_bad_mode_or_job_before_prefect(tmp_path: Path) -> None:
    job = tmp_path / "valley.yaml"
    job.write_text(json.dumps({"aoi": {"bbox": [0, 0, 1, 1]}, "output": "valley", "clod_limit": 30}))
    code = (
        "import json, sys\n"
        "from typer.testing import CliRunner\n"
        "from flows.cli import app\n"
        "args = ['monitor', sys.argv[1], '--run-date', '2024-03-05', '--mode']\n"
        "results = [CliRunner().invoke(app, [*args, mode]) for mode in ('weekly', 'sequence')]\n"
        "heavy = sorted(m for m in ('prefect', 'torch', 'zarr', 'dask') if m in sys.modules)\n"
        "print(json.dumps({'results': [[r.exit_code, r.stderr] for r in results], 'heavy': heavy}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(job)], capture_output=True, text=True, check=True, timeout=120
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    (weekly_code, weekly), (sequence_code, sequence) = report["results"]
    assert weekly_code == 2 and "monitoring mode 'weekly' is unknown" in " ".join(weekly.split())
    assert sequence_code == 2 and "region 'valley'" in sequence and "clod_limit" in sequence
    assert report["heavy"] == []
    assert not (tmp_path / "valley").exists()
