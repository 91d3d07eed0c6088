"""Checks before work: the size estimate and its limit, the models, the scheduler; nothing written."""

from __future__ import annotations

import json
import math
import socket
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml
from typer.testing import CliRunner

import pipeline.stages
from pipeline.cost import (
    BATCH_BYTES_PER_TILE_PIXEL,
    HELD_TILE_ROWS,
    PUBLISH_AREA_MAX_PIXELS,
    PUBLISH_BYTES,
    PUBLISH_BYTES_PER_PIXEL,
    check_job_size,
    estimate_job,
)
from pipeline.demo import demo_checkpoint
from pipeline.errors import ClusterError, JobSpecError, JobTooLargeError
from pipeline.preflight import preflight
from pipeline.run import run_job
from pipeline.spec import JobSpec
from pipeline.tiling import TileGrid
from seg2change_core.errors import ModelError

EUROPE = {"bbox": [-10.0, 35.0, 30.0, 70.0]}


def fields(tmp_path: Path, **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "aoi": {"bbox": [13.0, 52.0, 13.05, 52.03]},
        "before": "2024-05-01/2024-05-31",
        "after": "2024-07-01/2024-07-31",
        "catalog": "http://127.0.0.1:9/",
        "collections": ["s2"],
        "output": str(tmp_path / "out"),
        "prompts": {"classes": "water;building"},
    }
    base.update(changes)
    return base


@pytest.fixture
def no_discovery(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any catalog search fail the test: every check here must come before discovery."""

    def refuse(*_: object, **__: object) -> NoReturn:
        raise AssertionError("discovery ran before the checks that need no pixels")

    monkeypatch.setattr(pipeline.stages, "discover", refuse)


def test_estimate_counts_the_grid_blocks_tiles_and_bytes(tmp_path: Path) -> None:
    job = JobSpec.build(
        **fields(
            tmp_path,
            aoi={"bbox": [500000, 5800000, 510240, 5810240], "crs": "EPSG:32633"},
            block_size=512,
            tiling={"tile_size": 256, "overlap": 32},
        )
    )
    estimate = estimate_job(job)
    assert (estimate.width, estimate.height, estimate.pixels) == (1024, 1024, 1024 * 1024)
    assert estimate.blocks == 4
    assert estimate.tiles == len(TileGrid(1024, 1024, 256, 32))
    assert estimate.input_bytes == 1024 * 1024 * 2 * (6 * 4 + 1)
    assert estimate.worker_bytes > estimate.activation_bytes > 0
    assert estimate.publish_area_bytes == estimate.pixels * PUBLISH_BYTES_PER_PIXEL
    assert estimate.client_bytes > estimate.publish_bytes == PUBLISH_BYTES + estimate.publish_area_bytes
    assert not estimate.over_limit


def _square_job(tmp_path: Path, tile: int, batch: int) -> JobSpec:
    aoi = {"bbox": [500000, 5800000, 510240, 5810240], "crs": "EPSG:32633"}
    tiling = {"tile_size": tile, "overlap": 32, "batch_size": batch}
    return JobSpec.build(**fields(tmp_path, aoi=aoi, block_size=512, tiling=tiling))


def test_estimate_counts_model_activations_per_thread_tile_area_and_batch(tmp_path: Path) -> None:
    def activations(tile: int, batch: int, threads: int) -> int:
        return estimate_job(_square_job(tmp_path, tile, batch), threads=threads).activation_bytes

    one = activations(256, 1, 1)
    assert activations(256, 1, 2) == 2 * one
    assert activations(512, 1, 1) == 4 * one  # the tile's area
    assert activations(256, 2, 1) - one == 256 * 256 * BATCH_BYTES_PER_TILE_PIXEL
    # A batch never holds more tiles than a group has: a block's tile row and the strip seam's tile.
    group = math.ceil(512 / (256 - 32)) + 1
    assert activations(256, 64, 1) == activations(256, group, 1) > activations(256, group - 1, 1)
    # The rest of a worker's share does not depend on the batch.
    small, large = (estimate_job(_square_job(tmp_path, 256, b), threads=2) for b in (1, 8))
    assert small.worker_bytes - small.activation_bytes == large.worker_bytes - large.activation_bytes > 0


def test_one_process_holds_the_larger_of_publishing_and_its_workers(tmp_path: Path) -> None:
    """Inference hands its freed memory back before publishing, which so does not sit on top of it."""
    estimate = estimate_job(_square_job(tmp_path, 256, 8), threads=2)
    planning = estimate.client_bytes - estimate.publish_bytes
    assert estimate.in_process_bytes(1) == planning + max(estimate.publish_bytes, estimate.worker_bytes)
    assert estimate.in_process_bytes(2) == planning + 2 * estimate.worker_bytes
    assert estimate.in_process_bytes(0) == estimate.client_bytes


def _wide_job(tmp_path: Path, side_m: int, strip: int | None = None) -> JobSpec:
    aoi = {"bbox": [500000, 5800000, 500000 + side_m, 5800000 + side_m], "crs": "EPSG:32633"}
    tiling = {"tile_size": 504, "overlap": 64, "strip_size": strip}
    return JobSpec.build(
        **fields(tmp_path, aoi=aoi, block_size=512, tiling=tiling, limits={"allow_large": True})
    )


def test_worker_and_publishing_memory_stop_growing_with_the_area(tmp_path: Path) -> None:
    """Beyond a strip's width a worker holds the same; publishing stops at its measured plateau."""
    small, strip, tile = (estimate_job(_wide_job(tmp_path, m), threads=2) for m in (20480, 40960, 109800))
    assert small.worker_bytes < strip.worker_bytes == tile.worker_bytes
    assert (
        strip.publish_bytes
        == tile.publish_bytes
        == PUBLISH_BYTES + PUBLISH_AREA_MAX_PIXELS * PUBLISH_BYTES_PER_PIXEL
    )
    assert small.publish_area_bytes == small.pixels * PUBLISH_BYTES_PER_PIXEL
    # The tile outputs held grow with the strip's width: two rows of tiles across it.
    wider = estimate_job(_wide_job(tmp_path, 109800, strip=8192), threads=2)
    out_channels = 1 + 2 * 2  # change, and both dates' probabilities of the two classes
    assert wider.worker_bytes - tile.worker_bytes == HELD_TILE_ROWS * 4096 * 504 * out_channels * 4


def test_continent_is_refused_with_the_estimate(tmp_path: Path, no_discovery: None) -> None:
    job = JobSpec.build(**fields(tmp_path, aoi=EUROPE))
    with pytest.raises(JobTooLargeError) as caught:
        run_job(job, progress=False)
    message = str(caught.value)
    assert "too large to start" in message
    assert "blocks of 1024 px" in message and "tiles of 512 px" in message
    assert "on the client" in message and "per worker" in message
    assert "--allow-large" in message and "limits.max_pixels" in message
    assert not (tmp_path / "out").exists()


def test_limit_is_configurable_and_allow_large_goes_past_it(tmp_path: Path) -> None:
    small_limit = JobSpec.build(**fields(tmp_path, limits={"max_pixels": 1000}))
    with pytest.raises(JobTooLargeError, match=r"limit 1e\+03"):
        check_job_size(small_limit)
    allowed = JobSpec.build(**fields(tmp_path, aoi=EUROPE, limits={"allow_large": True}))
    estimate = check_job_size(allowed)
    assert estimate.over_limit and estimate.pixels > 10**11
    with pytest.raises(JobSpecError, match="max_pixels must be at least 1"):
        JobSpec.build(**fields(tmp_path, limits={"max_pixels": 0}))


def test_cli_refuses_a_continent_and_names_the_flag(tmp_path: Path) -> None:
    from flows.cli import app

    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(fields(tmp_path, aoi=EUROPE)))
    for command in ("run", "prepare"):
        result = CliRunner().invoke(app, [command, str(job_file), "--no-progress"])
        assert result.exit_code == 2, result.output
        text = " ".join(result.output.split())
        assert "too large to start" in text and "--allow-large" in text
    assert not (tmp_path / "out").exists()


def test_overlap_over_half_the_models_tile_is_refused_before_work(tmp_path: Path, no_discovery: None) -> None:
    checkpoint = demo_checkpoint()
    assert checkpoint is not None, "the demo checkpoint ships in seg2change_core/assets"
    job = JobSpec.build(**fields(tmp_path, models={"checkpoint": str(checkpoint)}, tiling={"overlap": 300}))
    with pytest.raises(JobSpecError, match=r"overlap 300 exceeds half the tile \(504 px\)"):
        run_job(job, progress=False)
    assert not (tmp_path / "out").exists()


def test_unreadable_checkpoint_is_refused_before_work(tmp_path: Path, no_discovery: None) -> None:
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    job = JobSpec.build(**fields(tmp_path, models={"checkpoint": str(broken)}))
    with pytest.raises(ModelError, match="broken.safetensors"):
        run_job(job, progress=False)
    assert not (tmp_path / "out").exists()


def test_missing_clip_weights_are_refused_before_work(tmp_path: Path, no_discovery: None) -> None:
    tokenizer = tmp_path / "bpe_simple_vocab_16e6.txt.gz"
    tokenizer.write_bytes(b"")
    options = {"weights": str(tmp_path / "clip.safetensors"), "tokenizer": str(tokenizer)}
    job = JobSpec.build(**fields(tmp_path, models={"segmenter": "clip", "segmenter_options": options}))
    with pytest.raises(ModelError, match=r"CLIP weights file .*clip.safetensors' does not exist"):
        run_job(job, progress=False)
    assert not (tmp_path / "out").exists()


def test_unreachable_scheduler_is_refused_before_work(tmp_path: Path, no_discovery: None) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    job = JobSpec.build(**fields(tmp_path, cluster={"address": f"tcp://127.0.0.1:{port}"}))
    with pytest.raises(ClusterError, match=f"cannot reach the Dask scheduler at tcp://127.0.0.1:{port}"):
        run_job(job, progress=False)
    assert not (tmp_path / "out").exists()


def test_prepare_checks_need_no_models(tmp_path: Path) -> None:
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    job = JobSpec.build(**fields(tmp_path, models={"checkpoint": str(broken)}))
    checked = preflight(job, inference=False)
    assert checked.tile_size is None and checked.estimate.pixels > 0


def test_prefect_jobs_are_checked_before_any_task_is_submitted(tmp_path: Path) -> None:
    from flows.tasks import submit_job

    job = JobSpec.build(**fields(tmp_path, aoi=EUROPE))
    with pytest.raises(JobTooLargeError, match="too large to start"):
        submit_job(job, "event")  # outside a flow: submitting a task would fail otherwise
    assert not (tmp_path / "out").exists()


def _far_catalog(tmp_path: Path) -> Path:
    """A local catalog whose one item lies nowhere near Europe."""
    item = {
        "type": "Feature",
        "stac_version": "1.1.0",
        "id": "fiji",
        "collection": "s2",
        "bbox": [179.0, -18.0, 179.5, -17.5],
        "geometry": {
            "type": "Polygon",
            "coordinates": [[[179.0, -18.0], [179.5, -18.0], [179.5, -17.5], [179.0, -17.5], [179.0, -18.0]]],
        },
        "properties": {"datetime": "2024-05-05T10:00:00Z", "eo:cloud_cover": 1.0},
        "assets": {},
        "links": [],
    }
    path = tmp_path / "catalog" / "items.ndjson"
    path.parent.mkdir()
    path.write_text(json.dumps(item) + "\n")
    return path


def test_allow_large_goes_on_to_discovery_and_discover_prints_the_estimate(tmp_path: Path) -> None:
    from flows.cli import app

    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(fields(tmp_path, aoi=EUROPE, catalog=str(_far_catalog(tmp_path)))))
    result = CliRunner().invoke(app, ["prepare", str(job_file), "--allow-large", "--no-progress"])
    text = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "estimate: 367,502 x 403,036 px" in text and "too large" not in text
    assert "no before scene found" in text  # the size check let it through to the search
    assert not (tmp_path / "out").exists()
    result = CliRunner().invoke(app, ["discover", str(job_file)])
    text = " ".join(result.output.split())
    assert "estimate: 367,502 x 403,036 px" in text
