"""Catalog requests: bounded retries with backoff on every request, href signers after the search.

A fake STAC API on 127.0.0.1 (:mod:`fake_stac_api`) answers errors on cue: the landing page, the
``POST /search`` and the paging ``GET`` are each retried on 429/502/503/504 and connection errors,
never on other 4xx, and give up after ``catalog.retries`` with a message that names the URL and
what to do.
"""

from __future__ import annotations

import json
import logging
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from fake_stac_api import fake_api
from test_discover import EXPECTED, ITEMS

from pipeline.catalog_io import backoff_wait_s, retry_policy
from pipeline.discover import discover
from pipeline.errors import CatalogError, CatalogUnavailableError, JobSpecError
from pipeline.signers import resolve_signer
from pipeline.spec import CatalogSpec, JobSpec

TOKEN = "sig=FAKE-SAS-TOKEN-0123456789"  # tests/pipeline/fake_signer.py's
FAKE_SIGNER = "tests.pipeline.fake_signer"


def _job(catalog: str | dict[str, Any], tmp_path: Path, **changes: Any) -> JobSpec:
    fields: dict[str, Any] = {
        "aoi": {"bbox": [13.02, 52.02, 13.05, 52.05]},
        "before": "2024-05-01/2024-05-31",
        "after": "2024-07-01/2024-07-31",
        "catalog": catalog,
        "collections": ["demo"],
        "cloud_limit": 20,
        "output": str(tmp_path / "out"),
    }
    fields.update(changes)
    return JobSpec.build(**fields)


def _ids(found: dict[str, list[dict[str, Any]]]) -> dict[str, list[str]]:
    return {epoch: [item["id"] for item in items] for epoch, items in found.items()}


def _remote(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The items with assets on a remote storage host, as a public catalog lists them."""
    out = json.loads(json.dumps(items))
    for item in out:
        item["assets"]["red"]["href"] = f"https://blob.example.net/scenes/{item['id']}/red.tif"
    return out


# --------------------------------------------------------------------------- retries


@pytest.mark.parametrize("status", [503, 502, 504, 429])
def test_a_busy_answer_to_the_search_post_is_retried(tmp_path: Path, status: int) -> None:
    with fake_api(ITEMS, faults={"POST /search": [status]}) as api:
        found = discover(_job(api.url, tmp_path))
    assert _ids(found.items) == EXPECTED
    # Two windows, one search each; the first search's POST was answered `status` once and sent again.
    assert api.count("POST /search") == 3


def test_the_landing_page_and_the_next_page_are_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    faults = {"GET /": [503, 502], "GET /search": [503]}
    with (
        fake_api(ITEMS, faults=faults) as api,
        caplog.at_level(logging.WARNING, logger="pipeline.catalog_io"),
    ):
        found = discover(_job(api.url, tmp_path))
    assert _ids(found.items) == EXPECTED
    assert api.count("GET /search") == 3  # one next page per window, the first sent twice
    assert "failed (HTTP 503); retry 1" in caplog.text


def test_an_api_that_stays_unavailable_fails_after_the_bounded_count(tmp_path: Path) -> None:
    catalog = {"retries": 3, "backoff": 0.01}
    with fake_api(ITEMS, always={"POST /search": 503}) as api:
        job = _job({"url": api.url, **catalog}, tmp_path)
        with pytest.raises(CatalogUnavailableError) as info:  # worth trying again later
            discover(job)
    assert api.count("POST /search") == 4  # the request and 3 retries, then no more
    message = str(info.value)
    assert f"the STAC search at {api.url}/search failed" in message
    assert "HTTP 503 (Service Unavailable) after 3 retries" in message
    assert "try again later" in message and "catalog.retries (now 3)" in message


def test_a_refused_search_is_not_retried(tmp_path: Path) -> None:
    with fake_api(ITEMS, always={"POST /search": 400}) as api, pytest.raises(CatalogError) as info:
        discover(_job(api.url, tmp_path))
    assert api.count("POST /search") == 1
    assert not isinstance(info.value, CatalogUnavailableError)  # the same request would fail again
    assert "was refused: HTTP 400" in str(info.value)
    assert "not retried" in str(info.value)


def test_an_unreachable_api_fails_after_the_retries_and_names_it(tmp_path: Path) -> None:
    with fake_api(ITEMS) as api:
        url = api.url
    # The server is gone: the port refuses connections.
    with pytest.raises(CatalogUnavailableError) as info:
        discover(_job({"url": url, "retries": 2, "backoff": 0.01}, tmp_path))
    message = str(info.value)
    assert f"could not reach the STAC API at {url} after 2 retries" in message
    assert "that the server is running" in message


def test_an_answer_that_is_not_stac_says_to_give_the_api_root(tmp_path: Path) -> None:
    # The root answers JSON, but no STAC landing page.
    with fake_api(ITEMS, always={"GET /": 200}) as api, pytest.raises(CatalogError) as info:
        discover(_job(api.url, tmp_path))
    assert api.count("GET /") == 1
    assert f"opening the STAC API at {api.url} gave an answer that is not STAC" in str(info.value)
    assert "the API's root" in str(info.value)


def test_backoff_grows_exponentially_and_is_bounded() -> None:
    catalog = CatalogSpec(url="https://stac.example.org/v1", retries=5, backoff=0.5)
    policy = retry_policy(catalog)
    assert policy.total == 5 and policy.allowed_methods is None  # POST /search included
    assert set(policy.status_forcelist or ()) == {429, 502, 503, 504}
    assert backoff_wait_s(catalog) == 0.5 * (2 + 4 + 8 + 16)
    assert backoff_wait_s(catalog.model_copy(update={"retries": 20, "backoff": 60})) <= 60 * 19
    with pytest.raises(JobSpecError, match="catalog.retries"):
        _job({"url": "https://stac.example.org/v1", "retries": 1000}, Path("/tmp"))


def test_default_access_fields_leave_the_recorded_job_unchanged() -> None:
    assert CatalogSpec.model_validate("https://stac.example.org/v1").model_dump() == {
        "url": "https://stac.example.org/v1"
    }
    signed = CatalogSpec(url="https://stac.example.org/v1", sign="planetary_computer", retries=2)
    assert CatalogSpec.model_validate(signed.model_dump()) == signed


# --------------------------------------------------------------------------- signers


def test_a_signer_rewrites_every_asset_href_after_an_api_search(tmp_path: Path) -> None:
    with fake_api(_remote(ITEMS)) as api:
        found = discover(_job({"url": api.url, "sign": f"{FAKE_SIGNER}:sign"}, tmp_path))
    hrefs = [item["assets"]["red"]["href"] for items in found.items.values() for item in items]
    assert hrefs and all(href.endswith(f"/red.tif?{TOKEN}") for href in hrefs)
    record = json.dumps(found.provenance())
    assert TOKEN not in record  # the token is a credential: never recorded
    assert found.provenance()["href_signer"] == f"{FAKE_SIGNER}:sign"


def test_a_signer_runs_on_a_local_catalog_and_leaves_other_hosts_alone(tmp_path: Path) -> None:
    items = _remote(ITEMS)
    items[0]["assets"]["red"]["href"] = "https://other.example.org/b-clear/red.tif"
    catalog = tmp_path / "items.ndjson"
    catalog.write_text("\n".join(json.dumps(i) for i in items) + "\n")
    found = discover(_job({"url": str(catalog), "sign": f"{FAKE_SIGNER}:sign"}, tmp_path))
    by_id = {item["id"]: item["assets"]["red"]["href"] for items in found.items.values() for item in items}
    assert by_id["b-clear"] == "https://other.example.org/b-clear/red.tif"
    assert by_id["a-clear"] == f"https://blob.example.net/scenes/a-clear/red.tif?{TOKEN}"


def test_a_job_file_names_a_signer_and_a_relative_catalog(tmp_path: Path) -> None:
    (tmp_path / "items.ndjson").write_text("\n".join(json.dumps(i) for i in _remote(ITEMS)) + "\n")
    job_file = tmp_path / "job.yaml"
    job_file.write_text(
        "aoi: {bbox: [13.02, 52.02, 13.05, 52.05]}\nbefore: 2024-05-01/2024-05-31\n"
        "after: 2024-07-01/2024-07-31\ncollections: [demo]\ncloud_limit: 20\noutput: out\n"
        f"catalog: {{url: items.ndjson, sign: '{FAKE_SIGNER}:sign_everything'}}\n"
    )
    job = JobSpec.from_yaml(job_file)
    assert job.catalog.url == str(tmp_path / "items.ndjson")
    found = discover(job)
    assert all(
        item["assets"]["red"]["href"].endswith(TOKEN) for items in found.items.values() for item in items
    )


@pytest.mark.parametrize(
    ("sign", "expected"),
    [
        ("planetary-computer", "is neither a known href signer (planetary_computer) nor an import path"),
        ("module.function", "nor an import path 'package.module:function'"),
    ],
)
def test_a_misnamed_signer_is_refused_with_the_job(tmp_path: Path, sign: str, expected: str) -> None:
    with pytest.raises(JobSpecError) as info:
        _job({"url": "https://stac.example.org/v1", "sign": sign}, tmp_path)
    assert "catalog.sign:" in str(info.value) and expected in str(info.value)


def test_planetary_computer_not_installed_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "planetary_computer", None)  # as if not installed
    job = _job(
        {"url": "https://planetarycomputer.example/api/stac/v1", "sign": "planetary_computer"}, tmp_path
    )
    with pytest.raises(CatalogError) as info:
        discover(job)  # refused before any request: the URL above does not exist
    assert "module 'planetary_computer' is not installed; install it" in str(info.value)
    assert f"{sys.executable} -m pip install planetary-computer" in str(info.value)


def test_the_planetary_computer_preset_is_its_sign_url(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("planetary_computer")
    module.sign_url = lambda href: href + "?pc-signed"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "planetary_computer", module)
    assert resolve_signer("planetary_computer")("https://x.blob.core.windows.net/a.tif") == (
        "https://x.blob.core.windows.net/a.tif?pc-signed"
    )


@pytest.mark.parametrize(
    ("sign", "expected"),
    [
        (f"{FAKE_SIGNER}:missing", f"{FAKE_SIGNER}.missing does not exist"),
        (f"{FAKE_SIGNER}:NOT_A_FUNCTION", "is a int, not a function"),
        ("no_such_package_for_seg2change:sign", "module 'no_such_package_for_seg2change' is not installed"),
        (
            f"{FAKE_SIGNER}:refuse",
            "with 'tests.pipeline.fake_signer:refuse' failed (ConnectionError: token service",
        ),
        (f"{FAKE_SIGNER}:returns_none", "returned None for"),
    ],
)
def test_a_broken_signer_is_a_catalog_error(tmp_path: Path, sign: str, expected: str) -> None:
    catalog = tmp_path / "items.ndjson"
    catalog.write_text("\n".join(json.dumps(i) for i in _remote(ITEMS)) + "\n")
    with pytest.raises(CatalogError) as info:
        discover(_job({"url": str(catalog), "sign": sign}, tmp_path))
    assert expected in str(info.value)
    # Only a signer that could not reach its service is worth running again.
    assert isinstance(info.value, CatalogUnavailableError) == sign.endswith(":refuse")


def test_a_signer_module_in_the_current_folder_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A console script (`seg2change`) does not search the current folder; the signer's import does.
    (tmp_path / "site_signer_for_seg2change_test.py").write_text("def sign(href):\n    return href + '?s'\n")
    monkeypatch.chdir(tmp_path)
    path_before = list(sys.path)
    signer = resolve_signer("site_signer_for_seg2change_test:sign")
    assert signer("https://x/a.tif") == "https://x/a.tif?s"
    assert sys.path == path_before
    monkeypatch.delitem(sys.modules, "site_signer_for_seg2change_test")
