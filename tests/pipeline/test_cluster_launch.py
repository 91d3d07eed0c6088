"""A job's ``cluster: {kind: slurm}`` launches its workers through sbatch and cancels them on exit.

SLURM itself is not on this machine: ``sbatch`` and ``scancel`` on ``PATH`` are stand-ins that run
the job script dask-jobqueue writes in the background (in its own session) and kill that session,
so the worker the run gets is the one the real job script starts. The scheduler runs in this
process: its comm port is open to the workers, its HTTP pages are not, unless asked.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask.config
import psutil
import pytest
from distributed import Scheduler, Worker

from pipeline.cluster import GPU_RESOURCE, LOOPBACK, connect
from pipeline.cluster_backends import KubernetesBackend, SlurmBackend, build_cluster, render_daskcluster
from pipeline.engine_spec import ClusterSpec
from pipeline.errors import ClusterError
from pipeline.local_servers.process import pid_alive

pytest.importorskip("dask_jobqueue", reason="pip install dask-jobqueue==0.9.0")

SBATCH = """#!/bin/sh
cp "$1" "{jobs}/job-$$.sh"
setsid bash "{jobs}/job-$$.sh" > "{jobs}/job-$$.log" 2>&1 < /dev/null &
echo "$!" >> "{jobs}/submitted"
echo "Submitted batch job $!"
"""
SCANCEL = """#!/bin/sh
kill -TERM -- "-$1"
"""


@pytest.fixture
def fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    bin_dir, jobs = tmp_path / "bin", tmp_path / "jobs"
    bin_dir.mkdir()
    jobs.mkdir()
    for name, text in {"sbatch": SBATCH.format(jobs=jobs), "scancel": SCANCEL}.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    yield jobs


@pytest.fixture
def open_jobqueue_config() -> Iterator[None]:
    """A user's dask-jobqueue configuration that puts the scheduler's pages on every interface."""
    with dask.config.set({"jobqueue.slurm.scheduler-options": {"dashboard_address": ":8787"}}):
        yield


PAGES = ("/info/main/workers.html", "/json/identity.json", "/health", "/metrics", "/status")


def _listeners() -> set[tuple[str, int]]:
    return {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process().net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN
    }


def _http_status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{port}{path}", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_slurm_scheduler_opens_its_comm_port_to_the_workers_and_no_page(open_jobqueue_config: None) -> None:
    before = _listeners()
    built = build_cluster(SlurmBackend(cores=1, memory="1GiB", jobs=0), start=True)
    with built.cluster as cluster:
        opened = _listeners() - before
        comm_port = int(cluster.scheduler_address.rsplit(":", 1)[1])
        http_port = cluster.scheduler.http_server.port
        # no interface given: the comm port on every interface, for workers on other nodes
        assert {port for _, port in opened} == {comm_port, http_port}
        assert {ip for ip, port in opened if port == http_port} == {LOOPBACK}
        for path in PAGES:
            assert _http_status(http_port, path) == 404, path


def test_a_slurm_dashboard_when_asked_serves_its_pages_where_asked(
    open_jobqueue_config: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pipeline.cluster")
    spec = ClusterSpec.build(
        kind="slurm", cores=1, memory="1GiB", interface="lo", jobs=0, dashboard=f"{LOOPBACK}:0"
    )
    assert isinstance(spec.backend, SlurmBackend) and spec.dashboard is None  # the back-end's field
    with build_cluster(spec.backend, start=True).cluster as cluster:
        port = cluster.scheduler.http_server.port
        assert cluster.scheduler.http_server.address == LOOPBACK
        assert _http_status(port, "/info/main/workers.html") == 200
        assert _http_status(port, "/health") == 200
        assert f"http://{LOOPBACK}:{port}/" in caplog.text


def _submitted(jobs: Path) -> list[int]:
    path = jobs / "submitted"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def test_a_slurm_job_cluster_gets_its_workers_from_sbatch_and_cancels_them(fake_slurm: Path) -> None:
    spec = ClusterSpec.build(
        kind="slurm", cores=1, memory="1GiB", interface="lo", jobs=1, gpu=True, torch_threads=1
    )
    with connect(spec) as session:
        assert session.gpu and session.n_workers == 1
        (worker,) = session.client.scheduler_info(n_workers=-1)["workers"].values()
        assert worker["host"] == "127.0.0.1" and worker["resources"] == {GPU_RESOURCE: 1}
        assert session.client.submit(sum, [1, 2], pure=False).result(timeout=30) == 3
        (job,) = _submitted(fake_slurm)
        assert pid_alive(job)
    deadline = time.monotonic() + 20
    while pid_alive(job) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not pid_alive(job), "the worker job outlived the run"


def test_a_slurm_job_whose_workers_never_join_names_the_fix(fake_slurm: Path) -> None:
    spec = ClusterSpec.build(kind="slurm", cores=1, memory="1GiB", interface="lo", jobs=0, start_timeout=1)
    expected = r"no worker of the slurm cluster joined within 1 s; .*squeue"
    with pytest.raises(ClusterError, match=expected), connect(spec):
        pytest.fail("connect returned without a worker")


def _pod(manifest: dict[str, Any], component: str) -> tuple[dict[str, Any], bool]:
    """A pod's Dask configuration, read from its environment as Dask reads it, and its dashboard flag."""
    (container,) = manifest["spec"][component]["spec"]["containers"]
    config = dask.config.collect_env({e["name"]: e["value"] for e in container["env"]})
    routes = config.get("distributed", {}).get(component, {}).get("http", {}).get("routes")
    key = f"distributed.{component}.http.routes"
    return {key: routes if routes is not None else dask.config.get(key)}, "--dashboard" in container["args"]


async def _pod_pages(manifest: dict[str, Any]) -> dict[str, dict[str, int]]:
    """HTTP status of each page of a scheduler and a worker configured as the manifest's pods."""
    scheduler_config, scheduler_dashboard = _pod(manifest, "scheduler")
    worker_config, worker_dashboard = _pod(manifest, "worker")
    here = {"host": LOOPBACK, "dashboard_address": f"{LOOPBACK}:0"}
    with dask.config.set(scheduler_config):
        scheduler = await Scheduler(port=0, dashboard=scheduler_dashboard, **here)
    with dask.config.set(worker_config):
        worker = await Worker(scheduler.address, dashboard=worker_dashboard, **here)
    try:
        return {
            name: {
                path: await asyncio.to_thread(_http_status, server.http_server.port, path)
                for path in ("/health", "/info/main/workers.html", "/metrics", "/status")
            }
            for name, server in (("scheduler", scheduler), ("worker", worker))
        }
    finally:
        await worker.close()
        await scheduler.close()


def test_a_kubernetes_cluster_serves_health_alone_unless_its_dashboard_is_asked() -> None:
    closed = asyncio.run(_pod_pages(render_daskcluster(KubernetesBackend())))
    for pages in closed.values():
        assert pages == {"/health": 200, "/info/main/workers.html": 404, "/metrics": 404, "/status": 404}
    opened = asyncio.run(_pod_pages(render_daskcluster(KubernetesBackend(dashboard=True))))
    assert opened["scheduler"]["/info/main/workers.html"] == 200 and opened["scheduler"]["/metrics"] == 200
    assert opened["worker"]["/metrics"] == 200


SLURM_JOB = """\
aoi: {{bbox: [13.30, 52.45, 13.45, 52.55]}}
before: 2024-05-01/2024-05-31
after: 2024-07-01/2024-07-31
catalog: https://stac.example.org/v1
collections: [sentinel-2-l2a]
output: {output}
prompts: {{classes: [water, vegetation], targets: [water]}}
models: {{segmenter: spectral}}
cluster: {{kind: slurm, cores: 1, memory: 1GiB, jobs: 2, torch_threads: 3}}
"""


def _slurm_job(tmp_path: Path) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(SLURM_JOB.format(output=tmp_path / "out"))
    return path


def test_run_with_scheduler_on_a_slurm_job_names_the_option(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from flows.cli import app

    result = CliRunner().invoke(app, ["run", str(_slurm_job(tmp_path)), "--scheduler", "tcp://10.0.0.5:8786"])
    assert result.exit_code == 2
    message = " ".join(result.stderr.split())
    assert "--scheduler names a running scheduler, but the job's cluster is kind slurm" in message
    assert "drop --scheduler" in message
    assert not (tmp_path / "out").exists()


def test_run_with_dashboard_on_a_slurm_job_opens_the_launched_scheduler_pages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    import pipeline.run
    from flows.cli import app

    ran = []

    def run_job(job: Any, **_: Any) -> None:
        ran.append(job)
        raise ClusterError("stopped before any work")

    monkeypatch.setattr(pipeline.run, "run_job", run_job)
    result = CliRunner().invoke(app, ["run", str(_slurm_job(tmp_path)), "--dashboard", f"{LOOPBACK}:8787"])
    assert result.exit_code == 2 and "stopped before any work" in result.stderr
    (job,) = ran
    assert job.cluster.kind == "slurm" and job.cluster.torch_threads == 3 and job.cluster.dashboard is None
    backend = job.cluster.backend
    assert isinstance(backend, SlurmBackend) and backend.dashboard == f"{LOOPBACK}:8787" and backend.jobs == 2
