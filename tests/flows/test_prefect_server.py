"""Integration: the deployments on a real ``prefect server start``, served by ``flows.deploy.serve_all``.

A Prefect server and a serve process run as subprocesses (stopped in finalizers); the response
deployment is started through ``run_deployment`` and by a ``seg2change.event.reported`` event
(its deployment trigger), on a generated flood scene, and its outputs and artifacts are checked.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterId,
)
from prefect.deployments import run_deployment
from prefect.events import Event
from prefect.events.clients import PrefectEventsClient
from prefect.settings import PREFECT_API_URL, temporary_settings
from test_flows import FLOOD_SCENE, flooded_truth_m2, response_parameters

from flows.deploy import MONITORING_CRON, MONITORING_DEPLOYMENT, RESPONSE_DEPLOYMENT, RESPONSE_EVENT
from pipeline.synthetic import GeneratedScene, ensure_scene

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a subprocess started in its own session, and its children."""
    if process.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A real Prefect server on a free port; yields the environment that points at it."""
    home = tmp_path_factory.mktemp("prefect-server-home")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_URL": url,
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }
    env.pop("PREFECT_API_DATABASE_CONNECTION_URL", None)
    log = (home / "server.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"prefect server did not start: {(home / 'server.log').read_text()[-2000:]}"
                )
            time.sleep(0.5)
        yield env
    finally:
        _stop(server)
        log.close()


@pytest.fixture(scope="module")
def served(prefect_server: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """``python -m flows.deploy``: both deployments served from one process."""
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "flows.deploy"],
        cwd=REPO,
        env=prefect_server,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        with temporary_settings(updates={PREFECT_API_URL: prefect_server["PREFECT_API_URL"]}):
            deadline = time.monotonic() + 120
            with get_client(sync_client=True) as client:
                while True:
                    try:
                        client.read_deployment_by_name(RESPONSE_DEPLOYMENT)
                        client.read_deployment_by_name(MONITORING_DEPLOYMENT)
                        break
                    except Exception:
                        if process.poll() is not None or time.monotonic() > deadline:
                            raise RuntimeError(
                                f"serve did not register: {log_path.read_text()[-3000:]}"
                            ) from None
                        time.sleep(1)
            yield
    finally:
        _stop(process)
        log.close()


def _wait_for_run(client: Any, deployment_id: Any, known: set[Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
        )
        for run in runs:
            if run.id not in known and run.state is not None and run.state.is_final():
                return run
        time.sleep(2)
    raise AssertionError(f"no new flow run of the response deployment finished within {timeout} s")


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_response_deployment_on_a_real_server(
    served: None, prefect_server: dict[str, str], tmp_path: Path
) -> None:
    scene: GeneratedScene = ensure_scene(FLOOD_SCENE, tmp_path / "scene")
    truth = flooded_truth_m2(FLOOD_SCENE)
    with temporary_settings(updates={PREFECT_API_URL: prefect_server["PREFECT_API_URL"]}):
        with get_client(sync_client=True) as client:
            monitoring = client.read_deployment_by_name(MONITORING_DEPLOYMENT)
            assert [s.schedule.cron for s in monitoring.schedules] == [MONITORING_CRON]  # type: ignore[union-attr]
            response = client.read_deployment_by_name(RESPONSE_DEPLOYMENT)
            automations = client.read_automations_by_name("seg2change-event-reported")
            assert automations, "the response deployment's event trigger was not registered"

        # 1. run_deployment
        params = response_parameters(scene, tmp_path / "by-run-deployment")
        params["event_date"] = params["event_date"].isoformat()
        run = run_deployment(RESPONSE_DEPLOYMENT, parameters=params, timeout=300)
        assert run.state is not None and run.state.is_completed(), run.state
        _check_outputs(run.id, tmp_path / "by-run-deployment", truth)

        # 2. an event through the deployment trigger
        output = tmp_path / "by-event"
        payload = {**params, "output": str(output)}
        with get_client(sync_client=True) as client:
            known = {
                r.id
                for r in client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[response.id]))
                )
            }
        _emit(prefect_server["PREFECT_API_URL"], payload)
        with get_client(sync_client=True) as client:
            triggered = _wait_for_run(client, response.id, known, timeout=240)
        assert triggered.state.is_completed(), triggered.state
        assert triggered.parameters["hazard"] == "flood" and triggered.parameters["output"] == str(output)
        _check_outputs(triggered.id, output, truth)


def _emit(api_url: str, payload: dict[str, Any]) -> None:
    """Emit the event to this server (a client of its own: the process-wide events worker may
    still point at another test's temporary server)."""

    async def send() -> None:
        async with PrefectEventsClient(api_url=api_url) as events:
            await events.emit(
                Event(
                    event=RESPONSE_EVENT,
                    resource={"prefect.resource.id": "seg2change.event.test-flood"},
                    payload=payload,
                )
            )

    asyncio.run(send())


def _check_outputs(flow_run_id: Any, output: Path, truth: float) -> None:
    stats = output / "statistics.json"
    assert stats.is_file() and (output / "stac" / "item.json").is_file()
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    by_key = {a.key: a for a in artifacts}
    assert {"seg2change-response", "seg2change-response-table"} <= set(by_key)
    table = by_key["seg2change-response-table"].data
    rows = table if isinstance(table, list) else json.loads(str(table))
    water = next(r for r in rows if r["target"] == "water")
    reported = water["gained_ha"] * 10_000.0
    print(f"served run {flow_run_id}: flooded {reported:.0f} m2, truth {truth:.0f} m2")
    assert abs(reported - truth) <= 0.05 * truth
    assert "water gained" in str(by_key["seg2change-response"].data)
