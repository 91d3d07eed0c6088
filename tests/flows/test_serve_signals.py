"""``seg2change serve`` stopped by SIGTERM (or SIGINT, SIGHUP) stops its STAC server and removes its temporary folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from pipeline.synthetic import SceneSpec, generate_scene


def _wait_for_line(proc: subprocess.Popen[str], text: str, timeout: float = 60.0) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if text in line:
            return line
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"'{text}' never printed (exit code {proc.poll()})")


@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=["SIGTERM", "SIGINT", "SIGHUP"]
)
def test_signal_stops_the_server_and_removes_its_folder(tmp_path: Path, sig: signal.Signals) -> None:
    scene = generate_scene(SceneSpec(size=256, acquisitions_per_epoch=1), tmp_path / "scene")
    temp = tmp_path / "tmp"
    temp.mkdir()
    command = Path(sys.executable).with_name("seg2change")
    proc = subprocess.Popen(
        [str(command), "serve", str(scene.collection_path), str(scene.items_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(temp), "OMP_NUM_THREADS": "1"},
        # Started as a background job of a non-interactive shell (as CI may be), SIGINT arrives ignored.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        _wait_for_line(proc, "STAC API at http://127.0.0.1:")
        servers = psutil.Process(proc.pid).children(recursive=True)
        assert [p for p in servers if "rustac" in p.name()], "rustac is not running"
        assert [p.name for p in temp.iterdir() if p.name.startswith("seg2change-rustac-")]
        proc.send_signal(sig)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    gone, alive = psutil.wait_procs(servers, timeout=10)
    assert not alive, f"still running: {[p.pid for p in alive]}"
    assert list(temp.iterdir()) == []
