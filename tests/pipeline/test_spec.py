"""Job spec validation: every invalid input fails early with a message that names the fix."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.discover import discover
from pipeline.errors import CatalogError, JobSpecError
from pipeline.spec import JobSpec, load_job
from seg2change_core.errors import Seg2ChangeError

BOX = {"bbox": [13.0, 52.0, 13.05, 52.03]}


def fields(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "aoi": BOX,
        "before": "2024-05-01/2024-05-31",
        "after": "2024-07-01/2024-07-31",
        "catalog": "http://127.0.0.1:9/",
        "collections": ["s2"],
        "output": "/tmp/seg2change-test-out",
    }
    base.update(changes)
    return base


def test_valid_job_defaults_to_utm_grid() -> None:
    job = JobSpec.build(**fields())
    assert job.target_crs().to_epsg() == 32633
    xmin, ymin, xmax, ymax = job.target_bounds()
    assert xmin % 10 == 0 and ymax % 10 == 0 and xmax > xmin and ymax > ymin
    assert job.before.interval() == "2024-05-01T00:00:00Z/2024-05-31T23:59:59Z"
    assert job.bands == ("blue", "green", "red", "nir", "swir16", "swir22")


def test_errors_share_one_root() -> None:
    assert issubclass(JobSpecError, Seg2ChangeError)
    assert issubclass(CatalogError, Seg2ChangeError)


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"before": "2024-05-31/2024-05-01"}, "reversed or empty"),
        ({"after": "2024-05-15/2024-06-30"}, "overlap"),
        ({"before": "2024-08-01/2024-08-31"}, "'before' must end before 'after' starts"),
        ({"aoi": {"bbox": [13.0, 52.0, 13.0, 52.1]}}, "empty or reversed"),
        (
            {
                "aoi": {
                    "geometry": {"type": "Polygon", "coordinates": [[[13, 52], [13, 52], [13, 52], [13, 52]]]}
                }
            },
            "empty or has no area",
        ),
        (
            {
                "aoi": {
                    "geometry": {
                        "type": "Polygon",
                        "coordinates": [
                            [[13.0, 52.0], [13.1, 52.1], [13.1, 52.0], [13.0, 52.1], [13.0, 52.0]]
                        ],
                    }
                }
            },
            "self-intersecting polygon must be repaired",
        ),
        ({"bands": ["red", "ultraviolet"]}, "unknown band 'ultraviolet'"),
        ({"grid": {"resolution": 0}}, "grid resolution must be a positive number"),
        ({"grid": {"resolution": -10}}, "grid resolution must be a positive number"),
        ({"grid": {"crs": "EPSG:4326"}}, "geographic"),
        ({"cloud_limit": 150}, "percentage"),
        ({"catalog": "/no/such/catalog.json"}, "neither an http(s) STAC API URL nor an existing local file"),
        ({"collections": []}, "collections"),
        ({"colections": ["s2"]}, "not a known field"),
    ],
)
def test_invalid_jobs_name_the_fix(changes: dict[str, Any], expected: str) -> None:
    with pytest.raises(JobSpecError) as info:
        JobSpec.build(**fields(**changes))
    assert expected in str(info.value)


def test_missing_field_is_named() -> None:
    spec = fields()
    del spec["output"]
    with pytest.raises(JobSpecError, match="output: is required"):
        JobSpec.build(**spec)


def test_band_map_admits_custom_names() -> None:
    job = JobSpec.build(**fields(bands=["red", "pan"], band_map={"pan": "B8"}))
    assert job.bands == ("red", "pan")


def test_yaml_job_resolves_relative_paths(tmp_path: Path) -> None:
    catalog = tmp_path / "items.json"
    catalog.write_text('{"type": "FeatureCollection", "features": []}')
    aoi = tmp_path / "aoi.geojson"
    aoi.write_text(
        '{"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", '
        '"coordinates": [[[13.0, 52.0], [13.05, 52.0], [13.05, 52.03], [13.0, 52.0]]]}}'
    )
    job_file = tmp_path / "job.yaml"
    job_file.write_text(
        yaml.safe_dump(fields(catalog="items.json", aoi={"geometry": "aoi.geojson"}, output="out"))
    )
    job = load_job(job_file)
    assert job.catalog.url == str(catalog)
    assert job.output == str(tmp_path / "out")
    assert job.aoi.geometry is not None and job.aoi.geometry["type"] == "Polygon"


def test_missing_or_malformed_job_file(tmp_path: Path) -> None:
    with pytest.raises(JobSpecError, match="does not exist"):
        load_job(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(JobSpecError, match="must hold a mapping"):
        load_job(bad)


def test_unreachable_catalog_names_the_url() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # One quick retry: the retries themselves are tested in test_catalog_requests.py.
    job = JobSpec.build(**fields(catalog={"url": f"http://127.0.0.1:{port}/", "retries": 1, "backoff": 0.01}))
    with pytest.raises(
        CatalogError, match=f"could not reach the STAC API at http://127.0.0.1:{port}/ after 1 retry"
    ):
        discover(job)
