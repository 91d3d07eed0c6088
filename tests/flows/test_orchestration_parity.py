"""``run_job`` and the Prefect flows are one orchestration: same refusals, same point, same ``force``.

Both chain the stages of :mod:`pipeline.stages` after :func:`pipeline.stages.check_job`. Each bad
job below is given to :func:`pipeline.run.run_job` and to a Prefect flow that submits it
(:func:`flows.tasks.submit_job`, as the response and monitoring flows do): both must refuse it with
the same error and message, before the catalog is searched and with nothing written. A forced
rerun must rebuild the input cube on both paths, and a plain rerun reuse it on both. A job that
publishes only some outputs succeeds on both paths and lists what it published, and both hold the
output's lock from the check to the end of the publication.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml
from prefect import flow
from prefect.settings import (
    PREFECT_HOME,
    PREFECT_SERVER_ANALYTICS_ENABLED,
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
    temporary_settings,
)
from prefect.testing.utilities import prefect_test_harness
from typer.testing import CliRunner

import pipeline.stages
from flows.cli import app
from flows.monitoring import monitoring_flow
from flows.outputs import publication_outputs, statistics_summary, summarise_statistics
from flows.response import response_flow
from flows.tasks import submit_job
from pipeline.demo import demo_job_fields
from pipeline.errors import ClusterError, ContainmentError, JobSpecError, JobTooLargeError
from pipeline.publish.statistics import read_statistics
from pipeline.run import run_job
from pipeline.spec import JobSpec, load_job
from pipeline.synthetic import GeneratedScene, SceneSpec, generate_scene

SCENE = SceneSpec(size=256, seed=5, block_size=256)


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One temporary Prefect server for this module, with PREFECT_HOME in a tmp folder."""
    settings = {
        PREFECT_HOME: str(tmp_path_factory.mktemp("prefect-home")),
        PREFECT_SERVER_ANALYTICS_ENABLED: False,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 90,
    }
    with temporary_settings(updates=settings), prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> GeneratedScene:
    return generate_scene(SCENE, tmp_path_factory.mktemp("parity-scene"))


def scene_fields(scene: GeneratedScene, output: Path, **changes: Any) -> dict[str, Any]:
    """The fields of a small job on the scene: the CVA baseline and the spectral segmenter, one
    in-process worker."""
    fields = demo_job_fields(scene, str(scene.items_path), output)
    fields.update(
        block_size=256,
        models={"segmenter": "spectral"},
        cluster={"n_workers": 1, "threads_per_worker": 1, "processes": False},
    )
    fields.update(changes)
    return fields


def scene_job(scene: GeneratedScene, output: Path, **changes: Any) -> JobSpec:
    """:func:`scene_fields` as a job."""
    return JobSpec.build(**scene_fields(scene, output, **changes))


@flow
def submitted(job: JobSpec, force: bool = False) -> Any:
    """What the response and monitoring flows do with a job: submit its stages and wait."""
    with submit_job(job, "parity", force=force) as run:
        return run.published.result()


@flow
def listed(job: JobSpec) -> dict[str, Any]:
    """What the response flow returns of a publication: its files and its statistics' summary."""
    with submit_job(job, "parity") as run:
        publication = run.published.result()
    return {"outputs": publication_outputs(publication), "statistics": statistics_summary(publication)}


def tree(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` with its modification time (empty when it does not exist)."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


@pytest.fixture
def no_discovery(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any catalog search fails the test: every refusal must come before it."""

    def refuse(*_: object, **__: object) -> NoReturn:
        raise AssertionError("the catalog was searched before the job was refused")

    monkeypatch.setattr(pipeline.stages, "discover", refuse)


def _no_prompts(scene: GeneratedScene, out: Path) -> JobSpec:
    return scene_job(scene, out, prompts=None)


def _output_is_a_file(scene: GeneratedScene, out: Path) -> JobSpec:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("not a folder")
    return scene_job(scene, out)


def _output_inside_a_cube(scene: GeneratedScene, out: Path) -> JobSpec:
    store = out.parent / "other_job" / "change_cube.zarr"
    store.mkdir(parents=True)
    (store / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group"}))
    return scene_job(scene, store / "out")


def _too_large(scene: GeneratedScene, out: Path) -> JobSpec:
    return scene_job(scene, out, limits={"max_pixels": 100})


def _no_scheduler(scene: GeneratedScene, out: Path) -> JobSpec:
    return scene_job(scene, out, cluster={"address": "tcp://127.0.0.1:9"})


BAD_JOBS: dict[str, tuple[Callable[[GeneratedScene, Path], JobSpec], type[Exception], str]] = {
    "no prompts": (_no_prompts, JobSpecError, "names no prompts"),
    "output is a file": (_output_is_a_file, ContainmentError, "output"),
    "output inside another job's cube": (_output_inside_a_cube, ContainmentError, "inside the Zarr store"),
    "too large": (_too_large, JobTooLargeError, "max_pixels"),
    "scheduler unreachable": (_no_scheduler, ClusterError, "cannot reach the Dask scheduler"),
}


@pytest.mark.parametrize("case", list(BAD_JOBS))
def test_run_job_and_the_flow_refuse_a_bad_job_alike_before_any_work(
    prefect_api: None, scene: GeneratedScene, tmp_path: Path, no_discovery: None, case: str
) -> None:
    make, error, words = BAD_JOBS[case]
    messages = []
    for path in ("run", "flow"):
        job = make(scene, tmp_path / path / "out")
        before = tree(tmp_path / path)
        if path == "run":
            with pytest.raises(error, match=words) as info:
                run_job(job, progress=False)
            messages.append(str(info.value).replace(str(tmp_path / path), "<root>"))
        else:
            state: Any = submitted(job, return_state=True)
            assert state.is_failed()
            with pytest.raises(error, match=words) as info:
                state.result()
            messages.append(str(info.value).replace(str(tmp_path / path), "<root>"))
        assert tree(tmp_path / path) == before, f"{path} wrote something before refusing the job"
    assert messages[0] == messages[1]


def test_a_bad_area_is_refused_by_the_spec_on_both_paths(
    prefect_api: None, scene: GeneratedScene, tmp_path: Path
) -> None:
    """The flows parse no AOI the spec parses: a missing GeoJSON file gets the spec's own message."""
    missing = tmp_path / "missing.geojson"
    job_file = tmp_path / "job.json"
    fields = demo_job_fields(scene, str(scene.items_path), tmp_path / "run")
    job_file.write_text(json.dumps({**fields, "aoi": {"geometry": str(missing)}}))
    with pytest.raises(JobSpecError) as by_file:
        load_job(job_file)
    state = response_flow(
        area=str(missing),
        event_date=scene.after_window[0],
        hazard="flood",
        catalog=str(scene.items_path),
        collections=[scene.spec.collection_id],
        output=str(tmp_path / "flow"),
        return_state=True,
    )
    with pytest.raises(JobSpecError) as by_flow:
        state.result()
    assert f"aoi: AOI file {missing} does not exist" in str(by_file.value)
    assert f"aoi: AOI file {missing} does not exist" in str(by_flow.value)
    assert not (tmp_path / "run").exists() and not (tmp_path / "flow").exists()


def test_a_job_without_prompts_fails_the_monitoring_flow_before_any_region_works(
    prefect_api: None, scene: GeneratedScene, tmp_path: Path, no_discovery: None
) -> None:
    fields = demo_job_fields(scene, str(scene.items_path), tmp_path / "monitoring")
    fields.pop("prompts")
    job_file = tmp_path / "region.json"
    job_file.write_text(json.dumps(fields))
    state = monitoring_flow(job_files=[str(job_file)], run_date=date(2024, 7, 3), return_state=True)
    with pytest.raises(JobSpecError, match="names no prompts"):
        state.result()
    assert not (tmp_path / "monitoring").exists()


def _input_cube(output: Path) -> dict[str, int]:
    return tree(output / "input_cube.zarr")


@pytest.mark.e2e
def test_force_rebuilds_the_input_cube_on_both_paths(
    prefect_api: None, scene: GeneratedScene, tmp_path: Path
) -> None:
    runs: dict[str, Callable[[JobSpec, bool], Any]] = {
        "run": lambda job, force: run_job(job, force=force, progress=False).publication,
        "flow": lambda job, force: submitted(job, force=force),
    }
    summaries = {}
    for path, run in runs.items():
        output = tmp_path / path
        job = scene_job(scene, output)
        run(job, False)
        first = _input_cube(output)
        assert first
        run(job, False)
        assert _input_cube(output) == first, f"{path}: a plain rerun must reuse the input cube"
        publication = run(job, True)
        rebuilt = _input_cube(output)
        assert rebuilt.keys() == first.keys()
        assert all(rebuilt[name] != first[name] for name in first if name.endswith("zarr.json")), (
            f"{path}: force must rebuild the input cube"
        )
        summaries[path] = summarise_statistics(publication.statistics)
        # What the monitoring flow reads back for a region it skips is what the publication held.
        assert summarise_statistics(read_statistics(publication.statistics_json)) == summaries[path]
    assert summaries["run"] == summaries["flow"]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == sorted(
        p.name for p in (tmp_path / "flow").iterdir()
    )


def test_a_job_publishing_only_cogs_lists_its_files_on_both_paths(
    prefect_api: None, scene: GeneratedScene, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="flows.outputs"):
        result = listed(scene_job(scene, tmp_path / "flow", publishers=["cog"]))
    assert result["statistics"] is None
    assert "the job's publishers (cog) leave out 'statistics'" in caplog.text
    listed_files = {Path(p) for p in result["outputs"].pop("cogs").values()} | {
        Path(p) for p in result["outputs"].values()
    }
    assert listed_files == set((tmp_path / "flow" / "cogs").iterdir())

    # The CLI last: it configures logging for its process, caplog's handler included.
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(scene_fields(scene, tmp_path / "run", publishers=["cog"])))
    ran = CliRunner().invoke(app, ["run", str(job_file), "--no-progress"])
    assert ran.exit_code == 0, ran.output
    assert "no change statistics: the job's publishers leave out 'statistics'" in ran.output
    printed = "".join(ran.output.split())  # long paths may wrap
    cogs = sorted((tmp_path / "run" / "cogs").iterdir())
    assert cogs and all(str(path) in printed for path in cogs)
    published = {"statistics.json", "statistics.parquet", "quicklook.png", "stac"}
    assert not published & {p.name for p in (tmp_path / "run").iterdir()}
    assert sorted(p.name for p in (tmp_path / "flow").iterdir()) == sorted(
        p.name for p in (tmp_path / "run").iterdir()
    )


def test_a_second_run_is_refused_while_a_flow_run_is_between_two_stages(
    prefect_api: None, scene: GeneratedScene, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = tmp_path / "out"
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(scene_fields(scene, output)))
    second: list[subprocess.CompletedProcess[str]] = []
    prepare_stage = pipeline.stages.prepare_stage

    def second_run_then_prepare(*args: Any, **kwargs: Any) -> Any:
        """The discover task has ended, the prepare task not started its stage: another run starts."""
        command = Path(sys.executable).with_name("seg2change")
        second.append(
            subprocess.run(
                [str(command), "run", str(job_file), "--no-progress"],
                capture_output=True,
                text=True,
                timeout=300,
                env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "COLUMNS": "400"},
            )
        )
        return prepare_stage(*args, **kwargs)

    monkeypatch.setattr(pipeline.stages, "prepare_stage", second_run_then_prepare)
    publication = submitted(JobSpec.build(**scene_fields(scene, output)))
    [refused] = second
    assert refused.returncode == 2, refused.stdout + refused.stderr
    message = " ".join((refused.stdout + refused.stderr).split())
    assert f"error: {output} is being written by run" in message
    assert f"of process {os.getpid()}" in message
    assert publication.stac_item.local_path.is_file()
    assert not (output / ".seg2change.lock").exists(), "the flow run must give the lock back"
