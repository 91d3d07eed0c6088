"""A real multi-process cluster: `dask scheduler` + two `dask worker` processes advertising GPU=1.

The same job runs against that scheduler (``cluster: {address, gpu: true}``, so every inference
task asks for the ``GPU`` resource; the label needs no GPU, the models run on the CPU) and on the
default local cluster; the two change cubes must be equal: categorical layers exactly,
probabilities to 1e-6.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rioxarray  # noqa: F401  (the .rio accessor)
import xarray as xr
from distributed import Client

from pipeline.synthetic import GeneratedScene, SceneSpec, generate_scene

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

DASK = str(Path(sys.executable).with_name("dask"))
STARTUP_S = 60


class Processes:
    """Subprocesses started in their own process group, all killed by :meth:`stop`."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
        with (self.logs / f"{name}.log").open("wb") as log:
            proc = subprocess.Popen(
                [DASK, *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: nanny and worker die together
                env=env,
            )
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        """SIGTERM every group, then SIGKILL what is left after a grace period."""
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            for proc in self.procs:
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, sig)
            deadline = time.monotonic() + wait
            for proc in self.procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        # a worker group may outlive its leader; kill stragglers of each group
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)

    def log_tail(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-2000:]}" for p in self.logs.glob("*.log")
        )


def _wait_for_scheduler(file: Path, procs: Processes, scheduler: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if scheduler.poll() is not None:
            pytest.fail(f"dask scheduler exited with {scheduler.returncode}\n{procs.log_tail()}")
        if file.is_file():
            try:
                return str(json.loads(file.read_text())["address"])
            except (json.JSONDecodeError, KeyError):
                pass  # being written
        time.sleep(0.2)
    pytest.fail(f"dask scheduler did not write {file} within {STARTUP_S} s\n{procs.log_tail()}")


@pytest.fixture(scope="module")
def scheduler_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A scheduler on 127.0.0.1 (port 0: any free port) and two GPU-labelled worker processes."""
    root = tmp_path_factory.mktemp("cluster")
    procs = Processes(root)
    try:
        file = root / "scheduler.json"
        scheduler = procs.start(
            "scheduler",
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--no-dashboard",
            "--scheduler-file",
            str(file),
        )
        address = _wait_for_scheduler(file, procs, scheduler)
        assert address.startswith("tcp://127.0.0.1:")
        for i in range(2):
            procs.start(
                f"worker{i}",
                "worker",
                address,
                "--nworkers",
                "1",
                "--nthreads",
                "1",
                "--resources",
                "GPU=1",
                "--no-dashboard",
                "--name",
                f"gpu-worker-{i}",
                "--local-directory",
                str(root / f"worker{i}"),
            )
        with Client(address, timeout="30s") as client:
            try:
                client.wait_for_workers(2, timeout=STARTUP_S)
            except TimeoutError:
                pytest.fail(f"the workers did not connect within {STARTUP_S} s\n{procs.log_tail()}")
            workers = client.scheduler_info(n_workers=-1)["workers"].values()
            assert sorted(w["resources"].get("GPU") for w in workers) == [1, 1]
            assert all(w["nthreads"] == 1 for w in workers)
        yield address
    finally:
        procs.stop()
    assert all(p.poll() is not None for p in procs.procs)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> GeneratedScene:
    return generate_scene(SceneSpec(size=512, seed=3), tmp_path_factory.mktemp("scene"))


def _job_fields(scene: GeneratedScene, output: Path, cluster: dict[str, Any]) -> dict[str, Any]:
    from pipeline.demo import demo_job_fields

    fields = demo_job_fields(scene, str(scene.items_path), output)
    fields["block_size"] = 256
    fields["cluster"] = cluster
    return fields


def test_job_on_scheduler_and_gpu_labelled_workers_equals_the_local_cluster_run(
    scheduler_address: str, scene: GeneratedScene, tmp_path: Path
) -> None:
    from pipeline.run import run_job
    from pipeline.spec import JobSpec

    remote_job = JobSpec.build(
        **_job_fields(scene, tmp_path / "remote", {"address": scheduler_address, "gpu": True})
    )
    local_job = JobSpec.build(
        **_job_fields(scene, tmp_path / "local", {"n_workers": 2, "threads_per_worker": 1})
    )
    assert remote_job.cluster.address == scheduler_address and remote_job.cluster.gpu

    with Client(scheduler_address) as client:
        before = client.run(lambda dask_worker: dask_worker.state.executed_count)
    remote = run_job(remote_job, progress=False)
    with Client(scheduler_address) as client:
        after = client.run(lambda dask_worker: dask_worker.state.executed_count)
    # both worker processes took part (a 512 px scene in 256 px blocks gives 4 blocks)
    assert len(remote.inference.computed) == 4
    assert all(after[w] > before[w] for w in after), (before, after)

    local = run_job(local_job, progress=False)

    a, b = (
        xr.open_zarr(r.inference.path, consolidated=True, mask_and_scale=False, decode_coords="all")
        for r in (remote, local)
    )
    assert set(a.data_vars) == set(b.data_vars) and len(a.data_vars) > 0
    for name in sorted(a.data_vars):
        x, y = a[name].values, b[name].values
        assert x.shape == y.shape and x.dtype == y.dtype, name
        if np.issubdtype(x.dtype, np.floating):
            np.testing.assert_allclose(x, y, atol=1e-6, rtol=0, equal_nan=True, err_msg=name)
        else:
            np.testing.assert_array_equal(x, y, err_msg=name)
    for coord in a.coords:
        np.testing.assert_array_equal(a[coord].values, b[coord].values, err_msg=coord)
    assert a.rio.crs == b.rio.crs
