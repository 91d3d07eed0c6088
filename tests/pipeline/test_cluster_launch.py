"""A job's ``cluster: {kind: slurm}`` launches its workers through sbatch and cancels them on exit.

SLURM itself is not on this machine: ``sbatch`` and ``scancel`` on ``PATH`` are stand-ins that run
the job script dask-jobqueue writes in the background (in its own session) and kill that session,
so the worker the run gets is the one the real job script starts.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import dask.config
import pytest

from pipeline.cluster import GPU_RESOURCE, connect
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
    # the scheduler runs in this process: its HTTP pages on 127.0.0.1 only, not dask-jobqueue's :8787
    with dask.config.set({"jobqueue.slurm.scheduler-options": {"dashboard_address": "127.0.0.1:0"}}):
        yield jobs


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
