"""One writer per output: the lock refuses a second live run by name, and recovers a dead run's lock."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from engine_inputs import PROMPTS, engine_job, write_patch_cube

import pipeline.output_lock
from pipeline.engine_spec import ClusterSpec, TilingSpec
from pipeline.errors import OutputLockedError
from pipeline.infer import run_inference
from pipeline.output_lock import LOCK_NAME, hold_output, read_lock, run_under
from pipeline.storage import Location

BOOT_ID = pipeline.output_lock._boot_id()


@pytest.fixture
def other_process() -> Iterator[subprocess.Popen[bytes]]:
    """A live process of this host that is not this one (the holder of another run's lock)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def write_foreign_lock(
    output: Location,
    *,
    pid: int,
    host: str | None = None,
    expires_in: float = 600.0,
    started: float | None = None,
    boot: str | None = None,
) -> None:
    now = time.time()
    doc = {
        "host": host or socket.gethostname(),
        "boot": boot if boot is not None else "" if host else BOOT_ID,
        "pid": pid,
        "started": started if started is not None else 0.0 if host else psutil.Process(pid).create_time(),
        "job": "job /data/berlin",
        "run": "feedc0de" * 4,
        "acquired": now - 30,
        "expires": now + expires_in,
    }
    (output / LOCK_NAME).write_text(json.dumps(doc))


def test_a_live_runs_lock_is_refused_with_its_holder_named(
    tmp_path: Path, other_process: subprocess.Popen[bytes]
) -> None:
    output = Location(tmp_path)
    write_foreign_lock(output, pid=other_process.pid)
    with pytest.raises(OutputLockedError) as refused, hold_output(output, job="job /data/other"):
        pass
    message = str(refused.value)
    assert f"process {other_process.pid} on host {socket.gethostname()}" in message
    assert "run feedc0de (job /data/berlin)" in message and "choose another output" in message
    assert read_lock(output) is not None and read_lock(output).run == "feedc0de" * 4  # type: ignore[union-attr]


def test_a_step_run_under_its_runs_lock_reenters_it_and_leaves_it_to_the_holder(
    tmp_path: Path, other_process: subprocess.Popen[bytes]
) -> None:
    """A flow's task in a worker process: the flow's process (here: other_process) holds the lock."""
    output = Location(tmp_path)
    write_foreign_lock(output, pid=other_process.pid)
    holder = read_lock(output)
    assert holder is not None
    with run_under(output, holder), hold_output(output, job="the prepare stage") as inner:
        assert inner == holder
    assert read_lock(output) == holder, "only the holder's process gives the lock back"
    refused = pytest.raises(OutputLockedError, match=re.escape(f"is being written by {holder.describe()}"))
    with refused, hold_output(output, job="another run"):
        pass


def test_a_step_whose_runs_lock_is_gone_is_refused(
    tmp_path: Path, other_process: subprocess.Popen[bytes]
) -> None:
    output = Location(tmp_path)
    write_foreign_lock(output, pid=other_process.pid)
    holder = read_lock(output)
    assert holder is not None
    gone = dataclasses.replace(holder, run="0" * 32)
    replaced = pytest.raises(
        OutputLockedError, match="is no longer locked by run 00000000 .*now run feedc0de"
    )
    with replaced, run_under(output, gone):
        pass
    (output / LOCK_NAME).remove()
    removed = pytest.raises(
        OutputLockedError, match="no longer locked by run feedc0de .*no lock.*run the job again"
    )
    with removed, run_under(output, holder):
        pass
    assert read_lock(output) is None


def test_a_dead_processs_lock_on_this_host_is_recovered(
    tmp_path: Path, other_process: subprocess.Popen[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    output = Location(tmp_path)
    write_foreign_lock(output, pid=other_process.pid)
    other_process.kill()
    other_process.wait()
    with caplog.at_level(logging.WARNING, "pipeline.output_lock"), hold_output(output, job="mine") as holder:
        assert read_lock(output) == holder
    assert f"process {other_process.pid} no longer runs on this host" in caplog.text
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_reused_process_id_does_not_keep_a_dead_runs_lock(tmp_path: Path) -> None:
    """The lock's pid now belongs to another process (started later): the lock is stale."""
    output = Location(tmp_path)
    write_foreign_lock(output, pid=psutil.Process().ppid(), started=1.0)
    with hold_output(output, job="mine"):
        pass


def test_a_lock_of_a_machine_of_the_same_name_is_not_judged_by_this_machines_processes(
    tmp_path: Path, other_process: subprocess.Popen[bytes]
) -> None:
    """Same host name, another boot (another machine, or this one before a reboot): the pid says
    nothing here, only the lease does."""
    output = Location(tmp_path)
    other_process.kill()
    other_process.wait()
    write_foreign_lock(output, pid=other_process.pid, boot="another-boot", started=1.0)
    with pytest.raises(OutputLockedError, match=f"process {other_process.pid}"), hold_output(output):
        pass


def test_another_hosts_lock_is_kept_until_its_lease_expires(tmp_path: Path) -> None:
    output = Location(tmp_path)
    write_foreign_lock(output, pid=4242, host="worker-7.example")
    with (
        pytest.raises(OutputLockedError, match="process 4242 on host worker-7.example"),
        hold_output(output),
    ):
        pass
    write_foreign_lock(output, pid=4242, host="worker-7.example", expires_in=-5)
    with hold_output(output) as holder:
        assert holder.host == socket.gethostname()


def test_the_lock_is_reentrant_in_a_process_and_renewed_while_held(tmp_path: Path) -> None:
    output = Location(tmp_path)
    with hold_output(output, lease_seconds=0.3) as outer:
        with hold_output(output) as inner:
            assert inner == outer
        assert read_lock(output) is not None  # the inner release gives nothing back
        time.sleep(0.5)
        renewed = read_lock(output)
        assert renewed is not None and renewed.run == outer.run and renewed.expires > outer.expires
    assert read_lock(output) is None


def test_an_unreadable_lock_counts_as_expired(tmp_path: Path) -> None:
    (tmp_path / LOCK_NAME).write_text('{"host": "a", "pi')
    with hold_output(Location(tmp_path)):
        pass


def test_the_lock_works_on_an_object_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline.output_lock, "_SETTLE_SECONDS", 0.01)
    output = Location("memory://bucket/jobs/lock-test")
    with hold_output(output, job="remote") as holder:
        assert (output / LOCK_NAME).exists() and read_lock(output) == holder
    assert not (output / LOCK_NAME).exists()
    write_foreign_lock(output, pid=4242, host="worker-7.example")
    with pytest.raises(OutputLockedError, match="worker-7.example"), hold_output(output):
        pass
    (output / LOCK_NAME).remove()


def test_force_never_deletes_a_cube_under_a_live_run(
    tmp_path: Path, other_process: subprocess.Popen[bytes]
) -> None:
    cube = write_patch_cube(tmp_path / "input_cube.zarr", 64, 64, chunk=64)
    out = tmp_path / "job" / "change_cube.zarr"
    out.mkdir(parents=True)
    (out / "zarr.json").write_text("{}")  # what a live run is writing
    write_foreign_lock(Location(out.parent), pid=other_process.pid)
    with pytest.raises(OutputLockedError, match=f"process {other_process.pid}"):
        run_inference(
            engine_job(out.parent),
            cube,
            out,
            tiling=TilingSpec(tile_size=64, overlap=16, block_size=64),
            cluster=ClusterSpec(n_workers=1, threads_per_worker=1, processes=False),
            prompts=PROMPTS,
            force=True,
            progress=False,
        )
    assert (out / "zarr.json").read_text() == "{}"


_CONTENDER = """
import sys, time
from pipeline.errors import OutputLockedError
from pipeline.output_lock import hold_output
while time.time() < float(sys.argv[2]):
    time.sleep(0.001)
try:
    with hold_output(sys.argv[1], job="contender"):
        time.sleep(max(0.0, float(sys.argv[2]) + 5 - time.time()))  # past a late contender's start
    print("took it")
except OutputLockedError:
    print("refused")
"""


def test_of_runs_that_start_together_exactly_one_takes_the_lock(tmp_path: Path) -> None:
    start = time.time() + 3.0  # every contender has imported by then
    contenders = [
        subprocess.Popen(
            [sys.executable, "-c", _CONTENDER, str(tmp_path), str(start)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    outcomes = sorted(c.communicate(timeout=60)[0].strip() for c in contenders)
    assert outcomes == ["refused", "refused", "refused", "took it"]
    assert not list(tmp_path.iterdir())


def test_a_file_system_without_hard_links_gets_an_exclusive_create(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, other_process: subprocess.Popen[bytes]
) -> None:
    def no_links(*_: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(pipeline.output_lock.os, "link", no_links)
    output = Location(tmp_path)
    with hold_output(output, job="mine") as holder:
        assert read_lock(output) == holder
    write_foreign_lock(output, pid=other_process.pid)
    with pytest.raises(OutputLockedError, match=f"process {other_process.pid}"), hold_output(output):
        pass
