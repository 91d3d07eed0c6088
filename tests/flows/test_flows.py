"""The Prefect flows under ``prefect_test_harness``: response accuracy, idempotent monitoring, retries.

The scenes are generated (``pipeline.synthetic``), small (512 px) and served from their local
items file, so nothing touches the network.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.settings import (
    PREFECT_HOME,
    PREFECT_SERVER_ANALYTICS_ENABLED,
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
    temporary_settings,
)
from prefect.testing.utilities import prefect_test_harness
from pyproj import Transformer
from rasterio.windows import Window

import pipeline.stages
from flows.monitoring import monitoring_flow, monitoring_periods
from flows.response import HAZARD_PROMPTS, event_job, event_windows, response_flow
from flows.tasks import BACKOFF_FACTOR, discover_task, is_network_error
from pipeline.discover import discover
from pipeline.errors import CatalogError, JobSpecError, NothingFoundError
from pipeline.models import change_model_info
from pipeline.spec import JobSpec
from pipeline.synthetic import ChangeType, GeneratedScene, LandCover, SceneSpec, ensure_scene, truth_window

#: The flood scene: 512 px, before epoch in April 2024, after epoch from the event on 2024-06-01.
FLOOD_SCENE = SceneSpec(
    size=512,
    seed=0,
    before_start=date(2024, 4, 15),
    after_start=date(2024, 6, 1),
    epoch_days=14,
    acquisitions_per_epoch=2,
    block_size=512,
    cloud_fraction=0.2,
)
EVENT_DATE = date(2024, 6, 1)
#: The monitoring scene: May 2024 before, June 2024 after.
MONTHLY_SCENE = SceneSpec(
    size=512,
    seed=1,
    before_start=date(2024, 5, 1),
    after_start=date(2024, 6, 1),
    epoch_days=30,
    acquisitions_per_epoch=2,
    block_size=512,
    cloud_fraction=0.2,
)
SYNTHETIC_OPTIONS: dict[str, Any] = {
    "bands": ["blue", "green", "red", "nir", "swir16", "swir22"],
    "quality": "synthetic",
    "grid": {"crs": "EPSG:32633", "resolution": 10.0},
    "cloud_limit": 90,
    "cluster": {"n_workers": 1, "processes": False},
}


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One temporary Prefect server and database for the session, with PREFECT_HOME in a tmp folder."""
    home = tmp_path_factory.mktemp("prefect-home")
    with (
        temporary_settings(
            updates={
                PREFECT_HOME: str(home),
                PREFECT_SERVER_ANALYTICS_ENABLED: False,
                PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 90,
            }
        ),
        prefect_test_harness(server_startup_timeout=90),
    ):
        yield


@pytest.fixture(scope="session")
def flood_scene(tmp_path_factory: pytest.TempPathFactory) -> GeneratedScene:
    return ensure_scene(FLOOD_SCENE, tmp_path_factory.mktemp("flood-scene"))


@pytest.fixture(scope="session")
def monthly_scene(tmp_path_factory: pytest.TempPathFactory) -> GeneratedScene:
    return ensure_scene(MONTHLY_SCENE, tmp_path_factory.mktemp("monthly-scene"))


def flooded_truth_m2(spec: SceneSpec) -> float:
    """Truth: pixels whose class became water in a flood, times the pixel area."""
    before, after, change = truth_window(spec, Window(0, 0, spec.size, spec.size))
    flooded = change == ChangeType.FLOOD
    assert np.array_equal(flooded, (after == LandCover.WATER) & (before != LandCover.WATER))
    return float(flooded.sum()) * spec.resolution**2


def response_parameters(scene: GeneratedScene, output: Path) -> dict[str, Any]:
    """Parameters of a flood response on a generated scene."""
    return {
        "area": list(scene.bbox_utm),
        "area_crs": scene.spec.crs,
        "event_date": EVENT_DATE,
        "hazard": "flood",
        "catalog": str(scene.items_path),
        "collections": [scene.spec.collection_id],
        "output": str(output),
        "job_options": SYNTHETIC_OPTIONS,
    }


async def _artifacts(key: str) -> list[Any]:
    """The artifacts of a key, oldest first."""
    async with get_client() as client:
        found = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return sorted(found, key=lambda a: a.created)


# --------------------------------------------------------------------------- windows


def test_monitoring_periods() -> None:
    before, after = monitoring_periods(date(2024, 7, 3))
    assert (before.label, before.window()) == ("2024-05", "2024-05-01/2024-05-31")
    assert (after.label, after.window()) == ("2024-06", "2024-06-01/2024-06-30")
    before, after = monitoring_periods(date(2024, 1, 31))
    assert (before.window(), after.window()) == ("2023-11-01/2023-11-30", "2023-12-01/2023-12-31")
    before, after = monitoring_periods(date(2024, 7, 3), "quarterly")
    assert (before.label, after.label, after.window()) == ("2024-Q1", "2024-Q2", "2024-04-01/2024-06-30")
    before, after = monitoring_periods(date(2024, 3, 1), "yearly")
    assert (before.window(), after.window()) == ("2022-01-01/2022-12-31", "2023-01-01/2023-12-31")
    with pytest.raises(JobSpecError, match="cadence"):
        monitoring_periods(date(2024, 7, 3), "hourly")  # type: ignore[arg-type]


def test_event_windows_and_prompts() -> None:
    assert event_windows(EVENT_DATE) == ("2024-04-02/2024-05-31", "2024-06-01/2024-06-15")
    assert event_windows(EVENT_DATE, 10, 3) == ("2024-05-22/2024-05-31", "2024-06-01/2024-06-04")
    assert HAZARD_PROMPTS["flood"]["targets"] == ["water"]
    assert "burned area" in HAZARD_PROMPTS["fire"]["classes"]
    assert HAZARD_PROMPTS["storm"]["targets"] == HAZARD_PROMPTS["earthquake"]["targets"] == ["building"]


def test_response_takes_the_change_models_tile_unless_told(tmp_path: Path) -> None:
    from seg2change_core.cach.geometry import is_valid_tile

    args: tuple[Any, ...] = (
        [13.3, 52.45, 13.45, 52.55],
        EVENT_DATE,
        "flood",
        "https://stac.example.org/v1",
        "s2",
        str(tmp_path),
    )
    job = event_job(*args)
    assert job.tiling.tile_size is None and job.tiling.block_size == 512
    # CACH's own tile (504 px) is the one inference uses, not a smaller one it would pad to 504.
    assert job.tiling.resolve_tile_size(504) == 504 and is_valid_tile(504)
    told = event_job(*args, tile_size=252)
    assert (told.tiling.tile_size, told.tiling.overlap) == (252, 63)
    assert told.tiling.resolve_tile_size(504) == 252


def test_network_errors_are_told_from_bad_input() -> None:
    assert is_network_error(CatalogError("timed out"))
    assert is_network_error(ConnectionError("refused"))
    assert not is_network_error(NothingFoundError("no scenes in the after window"))
    assert not is_network_error(JobSpecError("invalid job"))
    assert not is_network_error(ValueError("bad"))
    assert discover_task.retries == 3
    assert discover_task.retry_delay_seconds == [BACKOFF_FACTOR * 2**n for n in range(3)] == [2, 4, 8]


# --------------------------------------------------------------------------- response


@pytest.mark.slow
def test_response_reports_flooded_area(
    prefect_api: None, flood_scene: GeneratedScene, tmp_path: Path
) -> None:
    result = response_flow(**response_parameters(flood_scene, tmp_path / "flood"))
    truth = flooded_truth_m2(flood_scene.spec)
    reported = result["affected_area_m2"]
    print(
        f"flooded area: reported {reported:.0f} m2, truth {truth:.0f} m2, {100 * (reported / truth - 1):+.2f}%"
    )
    assert result["affected_class"] == "water"
    assert abs(reported - truth) <= 0.05 * truth
    assert result["event"]["before"].startswith("2024-04-02") and result["event"]["after"].startswith(
        "2024-06-01"
    )
    stats = json.loads(Path(result["outputs"]["statistics_json"]).read_text())
    assert stats["targets"] == ["water"]
    for name in ("stac_item", "statistics_parquet", "quicklook"):
        assert Path(result["outputs"][name]).is_file()
    # The response job's small blocks and the change model's own tile are what the cube was computed with.
    job = JobSpec.model_validate_json(json.dumps(yaml.safe_load(json.dumps(_recorded_job(result)))))
    assert (job.tiling.tile_size, job.tiling.block_size, job.block_size) == (None, 512, 512)
    model_tile = change_model_info(job.models, job.bands).tile_size
    assert _recorded_tiling(result)["tile_size"] == job.tiling.resolve_tile_size(model_tile)
    table = _run(_artifacts("seg2change-response-table"))
    assert table and "water" in str(table[-1].data)
    markdown = _run(_artifacts("seg2change-response"))
    assert markdown and "water gained" in str(markdown[-1].data)


def test_a_response_publishing_only_cogs_returns_its_files_and_no_statistics(
    prefect_api: None, flood_scene: GeneratedScene, tmp_path: Path
) -> None:
    parameters = response_parameters(flood_scene, tmp_path / "cogs-only")
    parameters["job_options"] = {**SYNTHETIC_OPTIONS, "publishers": ["cog"]}
    result = response_flow(**parameters)
    assert result["statistics"] is None and result["affected_area_m2"] is None
    cogs = result["outputs"].pop("cogs")
    written = {str(p) for p in (tmp_path / "cogs-only" / "cogs").iterdir()}
    assert set(cogs.values()) | set(result["outputs"].values()) == written
    assert "change" in cogs
    markdown = str(_run(_artifacts("seg2change-response"))[-1].data)
    assert "gained" not in markdown and "item.json" not in markdown
    assert f"- after: {result['event']['after']}" in markdown


def _recorded_job(result: dict[str, Any]) -> dict[str, Any]:
    import zarr

    attrs = zarr.open_group(result["inference"]["path"], mode="r").attrs
    return dict(json.loads(str(attrs["job"])))


def _recorded_tiling(result: dict[str, Any]) -> dict[str, Any]:
    import zarr

    attrs = zarr.open_group(result["inference"]["path"], mode="r").attrs
    return dict(json.loads(str(attrs["tiling"])))


def _run(coro: Any) -> Any:
    import asyncio

    return asyncio.run(coro)


def test_bad_job_fails_at_once_with_the_message(
    prefect_api: None, flood_scene: GeneratedScene, tmp_path: Path
) -> None:
    params = response_parameters(flood_scene, tmp_path / "bad")
    params["collections"] = []
    state = response_flow(**params, return_state=True)
    assert state.is_failed()
    with pytest.raises(JobSpecError, match="collections") as info:
        state.result()
    assert "invalid job" in str(info.value)
    assert not (tmp_path / "bad").exists()  # nothing ran


# --------------------------------------------------------------------------- retries


def _attempts(task_run_id: Any) -> list[str]:
    async def states() -> list[str]:
        async with get_client() as client:
            return [s.name for s in await client.read_task_run_states(task_run_id)]

    return _run(states())


def test_catalog_fails_twice_then_answers(
    prefect_api: None, flood_scene: GeneratedScene, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = discover
    calls: list[int] = []

    def flaky(job: JobSpec) -> Any:
        calls.append(1)
        if len(calls) <= 2:
            raise CatalogError(f"catalog {job.catalog.url} timed out (attempt {len(calls)})")
        return real(job)

    monkeypatch.setattr(pipeline.stages, "discover", flaky)
    job = _flood_job(flood_scene, tmp_path)

    @flow
    def search() -> tuple[Any, Any]:
        future = discover_task.submit(job)
        return future.result(), future.task_run_id

    found, task_run_id = search()
    assert len(calls) == 3
    assert found.items["after"]
    names = _attempts(task_run_id)
    assert names.count("Retrying") == 2 and names.count("AwaitingRetry") == 2, names
    assert names[-1] == "Completed"


def test_nothing_found_is_not_retried(
    prefect_api: None, flood_scene: GeneratedScene, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []

    def empty(job: JobSpec) -> Any:
        calls.append(1)
        raise NothingFoundError("no item in the after window; widen the after window")

    monkeypatch.setattr(pipeline.stages, "discover", empty)
    job = _flood_job(flood_scene, tmp_path)

    @flow
    def search() -> tuple[bool, str, Any]:
        future = discover_task.submit(job)
        future.wait()
        return future.state.is_failed(), str(future.state.message), future.task_run_id

    failed, message, task_run_id = search()
    assert failed and "widen the after window" in message
    assert len(calls) == 1
    assert "Retrying" not in _attempts(task_run_id)


def _flood_job(scene: GeneratedScene, tmp_path: Path) -> JobSpec:
    from flows.response import event_job

    params = response_parameters(scene, tmp_path / "out")
    params.pop("area_crs")
    options = params.pop("job_options")
    return event_job(**params, area_crs=scene.spec.crs, job_options=options)


# --------------------------------------------------------------------------- monitoring


def _zones(scene: GeneratedScene, path: Path) -> Path:
    """Two regions, the west and east quarters of the scene's upper half, as WGS84 GeoJSON."""
    to_wgs84 = Transformer.from_crs(scene.spec.crs, "EPSG:4326", always_xy=True)
    xmin, ymin, xmax, ymax = scene.bbox_utm
    mid_x, mid_y = (xmin + xmax) / 2, (ymin + ymax) / 2
    features = []
    for name, (x0, x1) in {"west": (xmin, mid_x), "east": (mid_x, xmax)}.items():
        ring = [
            to_wgs84.transform(x, y)
            for x, y in ((x0, mid_y), (x1, mid_y), (x1, ymax), (x0, ymax), (x0, mid_y))
        ]
        features.append(
            {
                "type": "Feature",
                "properties": {"name": name},
                "geometry": {"type": "Polygon", "coordinates": [ring]},
            }
        )
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


@pytest.mark.slow
def test_monitoring_twice_skips_the_second_time(
    prefect_api: None, monthly_scene: GeneratedScene, tmp_path: Path
) -> None:
    zones = _zones(monthly_scene, tmp_path / "regions.geojson")
    template = tmp_path / "base-job.yaml"
    template.write_text(
        yaml.safe_dump(
            {
                "catalog": str(monthly_scene.items_path),
                "collections": [monthly_scene.spec.collection_id],
                "output": "monitoring",
                "block_size": 256,
                "prompts": {
                    "classes": ["water", "vegetation", "built-up", "bare soil"],
                    "targets": ["water"],
                },
                "tiling": {"tile_size": 128, "overlap": 32},
                **SYNTHETIC_OPTIONS,
            }
        )
    )
    params = {"zones": str(zones), "base_job": str(template), "run_date": date(2024, 7, 3)}
    first = monitoring_flow(**params)
    assert (first["before"]["label"], first["after"]["label"]) == ("2024-05", "2024-06")
    regions = {r["region"]: r for r in first["regions"]}
    assert set(regions) == {"west", "east"}
    cubes = {}
    for name, row in regions.items():
        assert row["status"] == "computed" and not row["skipped"]
        assert row["output"] == str(tmp_path / "monitoring" / name / "2024-06")
        assert row["inference"]["computed"] > 0
        assert Path(row["outputs"]["stac_item"]).is_file()
        cube = Path(row["inference"]["path"])
        cubes[name] = {p: p.stat().st_mtime_ns for p in cube.rglob("*") if p.is_file()}

    second = monitoring_flow(**params)
    for row in second["regions"]:
        assert row["status"] == "skipped" and row["skipped"] and row["inference"] is None
        assert row["summary"] == regions[row["region"]]["summary"]
        cube = Path(row["outputs"]["change_cube"])
        assert {p: p.stat().st_mtime_ns for p in cube.rglob("*") if p.is_file()} == cubes[row["region"]]

    table = _run(_artifacts("seg2change-monitoring-table"))
    assert len(table) >= 2
    latest = table[-1].data if isinstance(table[-1].data, list) else json.loads(table[-1].data)
    assert {row["region"]: row["status"] for row in latest} == {"west": "skipped", "east": "skipped"}
    assert "water_gained_ha" in latest[0]
    markdown = _run(_artifacts("seg2change-monitoring"))
    assert "2024-06 vs 2024-05" in str(markdown[-1].data)
