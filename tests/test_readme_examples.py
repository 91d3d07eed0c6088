"""The README's examples hold: its job files exist and validate, its YAML is the shipped file's, the
monitoring inputs it names make one valid job per region, and every repository path it names exists.

All offline: the example jobs name public STAC APIs, which these tests never call. The one README
command run here, ``seg2change discover`` on the signed example without its optional package,
stops before any request.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml
from readme import readme_commands

from pipeline.bands import resolve_asset_key
from pipeline.spec import JobSpec, load_job

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
EXAMPLES = REPO / "examples"
JOBS = {
    "earth-search-s2.yaml": "https://earth-search.aws.element84.com/v1",
    "planetary-computer-s2.yaml": "https://planetarycomputer.microsoft.com/api/stac/v1",
}

#: Asset keys of one sentinel-2-l2a item of each catalog, as each documents them.
CATALOG_ASSET_KEYS = {
    "https://earth-search.aws.element84.com/v1": [
        "aot",
        "coastal",
        "blue",
        "green",
        "red",
        "rededge1",
        "rededge2",
        "rededge3",
        "nir",
        "nir08",
        "nir09",
        "swir16",
        "swir22",
        "scl",
        "wvp",
        "visual",
    ],
    "https://planetarycomputer.microsoft.com/api/stac/v1": [
        "AOT",
        "B01",
        "B02",
        "B03",
        "B04",
        "B05",
        "B06",
        "B07",
        "B08",
        "B8A",
        "B09",
        "B11",
        "B12",
        "SCL",
        "WVP",
        "visual",
    ],
}


def _readme() -> str:
    return README.read_text()


def _yaml_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", _readme(), flags=re.S)


def _commands() -> list[str]:
    """Every command of the README's bash blocks, continued and quoted lines joined."""
    return readme_commands(_readme())


@pytest.mark.parametrize("name", sorted(JOBS))
def test_every_example_job_validates(name: str) -> None:
    job = load_job(EXAMPLES / name)
    assert job.catalog.url == JOBS[name]
    assert job.collections == ("sentinel-2-l2a",)
    assert job.prompts is not None and job.prompts.targets
    assert Path(job.output).parent == REPO / "out"  # git ignores it
    assert job.target_crs().to_epsg() == 32633


@pytest.mark.parametrize("name", sorted(JOBS))
def test_example_jobs_name_assets_that_their_catalog_lists(name: str) -> None:
    job = load_job(EXAMPLES / name)
    keys = {
        key: {"href": f"https://example.invalid/{key}.tif"} for key in CATALOG_ASSET_KEYS[job.catalog.url]
    }
    for band in job.bands:
        assert resolve_asset_key(keys, job.band_map.get(band, band)) is not None, band
    assert job.quality.asset in keys


def test_the_signed_example_names_the_planetary_computer_signer() -> None:
    job = load_job(EXAMPLES / "planetary-computer-s2.yaml")
    assert job.catalog.sign == "planetary_computer"
    assert load_job(EXAMPLES / "earth-search-s2.yaml").catalog.sign is None


def test_the_readme_jobs_are_the_example_files() -> None:
    earth_search = yaml.safe_load((EXAMPLES / "earth-search-s2.yaml").read_text())
    blocks = [yaml.safe_load(block) for block in _yaml_blocks()]
    assert earth_search in blocks, "README's Earth Search job differs from examples/earth-search-s2.yaml"
    signed_part = next(b for b in blocks if isinstance(b.get("catalog"), dict) and "sign" in b["catalog"])
    planetary = yaml.safe_load((EXAMPLES / "planetary-computer-s2.yaml").read_text())
    assert planetary == {**earth_search, **signed_part, "output": planetary["output"]}


def test_the_readme_names_the_example_files_and_commands_that_use_them() -> None:
    commands = _commands()
    for name in JOBS:
        assert f"examples/{name}" in _readme()
    assert "seg2change discover examples/earth-search-s2.yaml" in commands
    assert "seg2change run examples/earth-search-s2.yaml" in commands
    monitor = next(c for c in commands if c.startswith("seg2change monitor "))
    args = shlex.split(monitor)
    zones, base = args[args.index("--zones") + 1], args[args.index("--base-job") + 1]
    assert (REPO / zones).is_file() and (REPO / base).is_file()


def _monitoring_parameters() -> dict[str, Any]:
    echo = next(c for c in _commands() if c.startswith("echo ") and "monitoring.json" in c)
    return dict(json.loads(shlex.split(echo)[1]))


def test_the_monitoring_inputs_make_one_valid_job_per_region() -> None:
    from flows.monitoring import monitoring_periods, region_job, regions_from_zones

    params = _monitoring_parameters()
    exports = next(c for c in _commands() if "SEG2CHANGE_REGIONS=" in c)
    assert "SEG2CHANGE_REGIONS=$PWD/" + params["zones"] in exports
    assert "SEG2CHANGE_BASE_JOB=$PWD/" + params["base_job"] in exports
    regions = regions_from_zones(REPO / params["zones"], REPO / params["base_job"], params["output"])
    before, after = monitoring_periods(date(2024, 7, 3))
    jobs: dict[str, JobSpec] = {region.name: region_job(region, before, after) for region in regions}
    assert set(jobs) == {"gruenheide", "ber-airport"}
    for name, job in jobs.items():
        assert job.output == f"out/monitoring/{name}/2024-06"
        assert job.before.interval().startswith("2024-05-01") and job.after.interval().startswith(
            "2024-06-01"
        )
        assert job.catalog.url == JOBS["earth-search-s2.yaml"]
        xmin, ymin, xmax, ymax = job.aoi.wgs84().bounds
        assert 13.0 < xmin < xmax < 14.0 and 52.0 < ymin < ymax < 53.0  # near Berlin
        assert (xmax - xmin) * (ymax - ymin) < 0.01  # small: a few km a side


def test_every_repository_path_the_readme_names_exists() -> None:
    pattern = r"(?<![\w./-])(?:examples|notebooks|infra|bench|pipeline|flows|seg2change_core|requirements|tests|\.ci)/[\w./-]*\w"
    named = sorted(set(re.findall(pattern, _readme())))
    assert "examples/regions.geojson" in named and "examples/base-job.yaml" in named
    missing = [path for path in named if not (REPO / path).exists()]
    assert not missing, f"README names paths that do not exist: {missing}"
    notebooks = set(re.findall(r"(?<![\w/])(\d\d_\w+\.ipynb)", _readme()))
    assert notebooks and all((REPO / "notebooks" / name).is_file() for name in notebooks)


@pytest.mark.skipif(
    importlib.util.find_spec("planetary_computer") is not None,
    reason="planetary-computer is installed: the command would call the real API",
)
def test_the_signed_example_without_its_package_says_what_to_install() -> None:
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("seg2change")),
            "discover",
            "examples/planetary-computer-s2.yaml",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    message = " ".join((done.stdout + done.stderr).split())
    assert "module 'planetary_computer' is not installed" in message
    assert "-m pip install planetary-computer" in message
    assert "Traceback" not in message


def test_the_readme_states_the_retry_defaults_the_code_has() -> None:
    from urllib3.util.retry import RequestHistory

    from pipeline.catalog_io import MAX_SLEEP_S, retry_policy
    from pipeline.spec import CatalogSpec

    catalog = CatalogSpec(url="https://earth-search.aws.element84.com/v1")
    policy = retry_policy(catalog)
    waits = []
    for n in range(1, catalog.retries + 1):
        history = tuple(RequestHistory("POST", "/search", None, 503, None) for _ in range(n))
        waits.append(policy.new(history=history).get_backoff_time())
    text = " ".join(_readme().split())
    assert f"at most `catalog.retries` times (default {catalog.retries})" in text
    assert f"(`catalog.backoff`, default {catalog.backoff:g}: waits of 0, 1, 2, 4 and 8 s" in text
    assert waits == [0, 1, 2, 4, 8]
    assert f"`Retry-After` up to {MAX_SLEEP_S:.0f} s" in text
    assert f"`catalog.timeout` (default {catalog.timeout:.0f} s)" in text


def test_the_readme_reference_job_names_only_real_fields(tmp_path: Path) -> None:
    reference = next(yaml.safe_load(b) for b in _yaml_blocks() if "zones" in (yaml.safe_load(b) or {}))
    (tmp_path / "districts.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(reference))
    job = load_job(job_file)
    assert set(reference) <= set(JobSpec.model_fields)
    assert job.limits.max_pixels == reference["limits"]["max_pixels"] and not job.limits.allow_large
