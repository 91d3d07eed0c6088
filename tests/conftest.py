"""Shared test fixtures (the real data, SeaweedFS) and the test layers every test is marked with.

Layers (``pytest -m unit`` is the fast subset):

``unit``
    Runs in the test's own process and starts no Dask cluster, server or child process.
``integration``
    Starts a Dask cluster, a STAC, object-store or Prefect server, or a child process (the CLI,
    GDAL tools, the set-up script), or reads the real data in ``../shared/data``.
``e2e``
    Whole runs as a user makes them: the demo, the Prefect flows, the notebooks, installs.

A test marked with a layer keeps it. Otherwise its module's entry in :data:`MODULE_LAYERS` decides,
then the fixtures it uses (:data:`INTEGRATION_FIXTURES`) and marks (:data:`INTEGRATION_MARKS`), then
its folder (:data:`FOLDER_LAYERS`). A new test module that starts a cluster, a server or a process
in a ``unit`` folder belongs in :data:`MODULE_LAYERS`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import dask
import pytest

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
SHARED = REPO.parent / "shared"
SHARED_DATA = SHARED / "data"

#: The test layers, registered as markers in pyproject.toml.
LAYERS = ("unit", "integration", "e2e")

#: Layer of the modules (paths relative to tests/) that differ from their folder's.
MODULE_LAYERS: dict[str, str] = {
    "flows/test_cli_sequence.py": "e2e",
    "flows/test_flows.py": "e2e",
    "flows/test_monitoring_sequence.py": "e2e",
    "flows/test_respond_own_imagery.py": "e2e",
    "infra/test_habits.py": "unit",
    "infra/test_image_install.py": "e2e",
    "infra/test_manifests.py": "unit",
    "infra/test_notebooks.py": "e2e",
    "infra/test_setup_notebooks.py": "e2e",
    "pipeline/test_antimeridian.py": "integration",
    "pipeline/test_catalog_requests.py": "integration",
    "pipeline/test_change_model_registry.py": "integration",
    "pipeline/test_cluster_closed.py": "integration",
    "pipeline/test_cluster_faults.py": "integration",
    "pipeline/test_cluster_launch.py": "integration",
    "pipeline/test_demo.py": "e2e",
    "pipeline/test_demo_checkpoint.py": "e2e",
    "pipeline/test_discover.py": "integration",
    "pipeline/test_feature_impact.py": "e2e",
    "pipeline/test_infer.py": "integration",
    "pipeline/test_kill_points.py": "integration",
    "pipeline/test_memory_release.py": "integration",
    "pipeline/test_object_store.py": "integration",
    "pipeline/test_output_lock.py": "integration",
    "pipeline/test_outputs_open.py": "integration",
    "pipeline/test_prepare_synthetic.py": "integration",
    "pipeline/test_publish_cogs.py": "integration",
    "pipeline/test_publish_stac.py": "integration",
    "pipeline/test_publisher_registry.py": "integration",
    "pipeline/test_real_data_cube.py": "integration",
    "pipeline/test_restart.py": "integration",
    "pipeline/test_sequence.py": "e2e",
    "pipeline/test_sequence_publish.py": "e2e",
    "pipeline/test_signed_catalog_run.py": "integration",
    "pipeline/test_stac_servers.py": "integration",
    "pipeline/test_synthetic.py": "integration",
    "test_readme_commands.py": "integration",
}
#: Fixtures that make a test an integration test wherever it lives.
INTEGRATION_FIXTURES = frozenset({"shared_data", "weed"})
#: Marks that make a test an integration test wherever it lives.
INTEGRATION_MARKS = frozenset({"pgstac", "shared_data"})
#: Layer of a folder's tests (first folder under tests/; "" for tests/ itself).
FOLDER_LAYERS: dict[str, str] = {
    "": "integration",
    "core": "unit",
    "flows": "integration",
    "infra": "integration",
    "pipeline": "unit",
}


def layer_of(module: str, fixtures: frozenset[str] = frozenset(), marks: frozenset[str] = frozenset()) -> str:
    """The layer of a test in ``module`` (a path relative to tests/) using ``fixtures`` and ``marks``."""
    if module in MODULE_LAYERS:
        return MODULE_LAYERS[module]
    if fixtures & INTEGRATION_FIXTURES or marks & INTEGRATION_MARKS:
        return "integration"
    folder = module.split("/")[0] if "/" in module else ""
    if folder not in FOLDER_LAYERS:
        raise ValueError(
            f"tests/{module}: folder {folder!r} has no layer; add it to FOLDER_LAYERS in tests/conftest.py"
        )
    return FOLDER_LAYERS[folder]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every collected test with its layer unless it names one itself."""
    for item in items:
        marks = frozenset(mark.name for mark in item.iter_markers())
        if marks & set(LAYERS):
            continue
        try:
            module = item.path.resolve().relative_to(TESTS).as_posix()
        except ValueError:  # collected outside tests/: the notebooks (pytest --nbmake notebooks/)
            item.add_marker("e2e")
            continue
        fixtures = frozenset(getattr(item, "fixturenames", ()))
        item.add_marker(layer_of(module, fixtures, marks))


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
