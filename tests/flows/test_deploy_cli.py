"""``python -m flows.deploy`` answers --help and refuses a bad parameters file with a message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _deploy(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "flows.deploy", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )


def test_help_prints_usage() -> None:
    done = _deploy("--help")
    assert done.returncode == 0, done.stderr
    assert "Usage:" in done.stdout and "--cron" in done.stdout and "--limit" in done.stdout


def test_parameters_that_are_not_an_object_are_refused(tmp_path: Path) -> None:
    params = tmp_path / "params.json"
    params.write_text("[1, 2]")
    done = _deploy(str(params))
    assert done.returncode == 2
    assert "must hold a JSON object" in done.stderr and "Traceback" not in done.stderr
