"""A local cluster is closed by default: every listener on 127.0.0.1, no HTTP pages unless asked."""

from __future__ import annotations

import logging
import re
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from distributed import Client

from pipeline.cluster import LOOPBACK, connect, start_local_cluster
from pipeline.engine_spec import ClusterSpec
from pipeline.errors import JobSpecError

PAGES = ("/info/main/workers.html", "/json/identity.json", "/health", "/metrics", "/status")


def _listeners() -> list[tuple[str, int]]:
    """TCP listeners of this process and its children (the worker processes)."""
    me = psutil.Process()
    found = []
    for process in [me, *me.children(recursive=True)]:
        for conn in process.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN:
                found.append((conn.laddr.ip, conn.laddr.port))
    return found


def _http_status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{port}{path}", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _http_ports(client: Client) -> list[int]:
    info = client.scheduler_info(n_workers=-1)
    ports = [info["services"]["dashboard"]]
    ports += [w["services"]["dashboard"] for w in info["workers"].values()]
    return ports


@pytest.mark.parametrize("processes", [False, True], ids=["threads", "processes"])
def test_default_local_cluster_listens_on_loopback_only_and_serves_no_pages(processes: bool) -> None:
    before = set(_listeners())
    with connect(ClusterSpec(n_workers=1, threads_per_worker=1, processes=processes)) as session:
        opened = set(_listeners()) - before
        assert opened, "a cluster always opens some listener (its HTTP servers at least)"
        assert {ip for ip, _ in opened} == {LOOPBACK}
        if processes:
            assert session.client.scheduler.address.startswith(f"tcp://{LOOPBACK}:")
        for port in _http_ports(session.client):
            assert (LOOPBACK, port) in opened
            for path in PAGES:
                assert _http_status(port, path) == 404, path


def test_dashboard_when_asked_serves_the_info_pages_on_loopback(caplog: pytest.LogCaptureFixture) -> None:
    spec = ClusterSpec(n_workers=1, threads_per_worker=1, dashboard=f"{LOOPBACK}:0")
    caplog.set_level(logging.WARNING, logger="pipeline.cluster")
    with start_local_cluster(spec) as cluster, Client(cluster) as client:
        port = client.scheduler_info()["services"]["dashboard"]
        assert _http_status(port, "/info/main/workers.html") == 200
        assert f"http://{LOOPBACK}:{port}/" in caplog.text


def _profiling(dask_worker: Any) -> bool:
    return "profile" in dask_worker.periodic_callbacks


@pytest.mark.parametrize("processes", [False, True], ids=["threads", "processes"])
def test_workers_profile_their_threads_only_for_a_dashboard(processes: bool) -> None:
    quiet = ClusterSpec(n_workers=1, threads_per_worker=1, processes=processes)
    with start_local_cluster(quiet) as cluster, Client(cluster) as client:
        assert set(client.run(_profiling).values()) == {False}
    shown = quiet.model_copy(update={"dashboard": f"{LOOPBACK}:0"})
    with start_local_cluster(shown) as cluster, Client(cluster) as client:
        assert set(client.run(_profiling).values()) == {True}


def test_a_taken_dashboard_port_is_reported_without_dask_warning(caplog: pytest.LogCaptureFixture) -> None:
    spec = ClusterSpec(n_workers=1, threads_per_worker=1, dashboard=f"{LOOPBACK}:0")
    with start_local_cluster(spec) as first, Client(first) as client:
        taken = client.scheduler_info()["services"]["dashboard"]
        caplog.set_level(logging.WARNING, logger="pipeline.cluster")
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            again = ClusterSpec(n_workers=1, threads_per_worker=1, dashboard=f"{LOOPBACK}:{taken}")
            with start_local_cluster(again) as second:
                assert second.scheduler_info["services"]["dashboard"] != taken
    assert not [w for w in seen if "already in use" in str(w.message)]
    assert f"{LOOPBACK}:{taken}" in caplog.text and "is at http://" in caplog.text


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"dashboard": "8787"}, "is not host:port"),
        ({"dashboard": "127.0.0.1:99999"}, "is not host:port"),
        ({"dashboard": "127.0.0.1:8787", "address": "tcp://10.0.0.5:8786"}, "local cluster only"),
    ],
)
def test_bad_dashboard_is_refused(fields: dict[str, str], message: str) -> None:
    with pytest.raises(JobSpecError, match=message):
        ClusterSpec.build(**fields)


def test_the_readme_says_how_to_open_the_dashboard_safely() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Cluster dashboard", 1)[1].split("\n## ", 1)[0]
    job_field = re.search(r"`cluster: (\{dashboard: [^}]+\})`", section)
    assert job_field is not None
    assert ClusterSpec.build(**yaml.safe_load(job_field.group(1))).dashboard == f"{LOOPBACK}:8787"
    assert "--dashboard 127.0.0.1:8787" in section and "ssh -N -L 8787:127.0.0.1:8787" in section


def test_the_flows_local_task_runner_starts_a_closed_cluster() -> None:
    from flows.tasks import task_runner
    from pipeline.cluster import local_cluster_of

    runner = task_runner("local")
    assert runner.cluster_class is local_cluster_of
    before = set(_listeners())
    with local_cluster_of(**{**runner.cluster_kwargs, "n_workers": 1}) as cluster:
        opened = set(_listeners()) - before
        assert cluster.scheduler_address.startswith(f"tcp://{LOOPBACK}:")
        assert opened and {ip for ip, _ in opened} == {LOOPBACK}
