"""Shared test fixtures: where the real data lives, SeaweedFS, and skipping when either is absent."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import dask
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_DATA = SHARED / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real labelled data in ../shared/data; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it sits beside the checkout in CI)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def weed() -> Path:
    """SeaweedFS's ``weed`` command; skips the test when it is absent, except in CI (which installs
    it with .ci/setup), where its absence fails."""
    from pipeline.errors import ServerError
    from pipeline.object_store import find_weed

    try:
        return find_weed()
    except ServerError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"SeaweedFS is not installed ({exc})")


@pytest.fixture(autouse=True)
def _restore_dask_scheduler() -> Iterator[None]:
    """Give every test the dask scheduler setting it started with.

    A distributed ``Client`` made the default sets dask's global scheduler to
    ``dask.distributed`` and resets it on close; one closed from another thread (Prefect runs
    tasks in worker threads) can leave it set, and a later test computing with the local
    schedulers then fails with "no Client active". Only these keys are restored: libraries
    imported during a test (dask-jobqueue) add their own defaults, which must stay.
    """
    saved = {key: dask.config.config.get(key) for key in ("scheduler", "shuffle")}
    yield
    for key, value in saved.items():
        if value is None:
            dask.config.config.pop(key, None)
        else:
            dask.config.config[key] = value
