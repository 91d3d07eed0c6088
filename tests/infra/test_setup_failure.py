"""`.ci/setup` in a fresh clone whose package index is unreachable: it must fail, say where, stamp nothing.

The repository is cloned into a temporary folder and the working tree's set-up files (``.ci/setup``,
``requirements/``, ``pyproject.toml``) are copied over the clone, so that what is tested is what
is about to be committed. pip's configuration files and this machine's local wheel folder are
switched off (``PIP_CONFIG_FILE=/dev/null``, no ``PIP_FIND_LINKS``) and its index points at a
closed port on 127.0.0.1: what a user sees when the network or the index is down. Each run fails
at its first install, within seconds.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SETUP_FILES = (".ci/setup", "requirements", "pyproject.toml")
STAMP = Path(".venv") / ".seg2change-stamp"
(TORCH_PIN,) = [
    line.removeprefix("torch==")
    for line in (REPO / "requirements" / "constraints.txt").read_text().splitlines()
    if line.startswith("torch==")
]


def _needs_system_packages() -> bool:
    """Whether `.ci/setup` would run apt-get first (which this test must not do)."""
    return (
        shutil.which("gdalinfo") is None
        or not Path("/usr/lib/postgresql/15/bin/postgres").exists()
        or not Path("/usr/share/postgresql/15/extension/postgis.control").exists()
    )


pytestmark = pytest.mark.skipif(
    _needs_system_packages() or shutil.which("git") is None,
    reason="needs git, gdal-bin and PostgreSQL 15 + PostGIS already installed (else setup runs apt-get)",
)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """A fresh clone of the repository with the working tree's set-up files."""
    dest = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(dest)], check=True, timeout=120)
    for name in SETUP_FILES:
        src, out = REPO / name, dest / name
        if src.is_dir():
            shutil.rmtree(out, ignore_errors=True)
            shutil.copytree(src, out)
        else:
            shutil.copy2(src, out)
    return dest


def _offline_env(torch_cpu_index: str, find_links: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and k != "VIRTUAL_ENV"}
    env.update(
        PIP_CONFIG_FILE=os.devnull,  # no pip.conf: no local wheel folder, no extra index, no constraint
        PIP_INDEX_URL=f"http://127.0.0.1:{_closed_port()}/simple",
        PIP_RETRIES="0",
        PIP_TIMEOUT="5",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        SEG2CHANGE_TORCH_CPU_INDEX=torch_cpu_index,
    )
    if find_links is not None:
        env["PIP_FIND_LINKS"] = str(find_links)
    return env


def _setup(clone: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", ".ci/setup"], cwd=clone, env=env, capture_output=True, text=True, timeout=300
    )


def _assert_failed_at(done: subprocess.CompletedProcess[str], step: str, clone: Path) -> None:
    output = done.stdout + done.stderr
    assert done.returncode != 0, f"setup succeeded with no package index:\n{output}"
    assert f'setup: FAILED at step "{step}"' in done.stderr, output
    assert "setup: ready" not in output, output
    assert not (clone / STAMP).exists(), "a failed set-up left its stamp: the next run would skip"


def test_setup_fails_naming_the_step_and_stamps_nothing(clone: Path) -> None:
    # the stamp the old script wrote after swallowing a failed install, matching the current pins:
    # with no .venv/bin/seg2change it must not make setup skip, nor survive the failed run
    (clone / ".venv").mkdir()
    (clone / STAMP).write_text(
        (clone / "requirements" / "constraints.txt").read_text() + (clone / "pyproject.toml").read_text()
    )
    done = _setup(clone, _offline_env(torch_cpu_index=f"http://127.0.0.1:{_closed_port()}/whl/cpu"))
    _assert_failed_at(done, "pip>=24 in .venv", clone)
    assert "No matching distribution found for pip>=24" in done.stdout, done.stdout


@pytest.fixture(scope="module")
def pip_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a pip>=24 wheel, downloaded with this machine's own pip configuration."""
    folder = tmp_path_factory.mktemp("pip-wheel")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(folder), "pip>=24"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0 or not list(folder.glob("pip-*.whl")):
        pytest.skip(f"no pip wheel can be downloaded here: {done.stderr[-500:]}")
    return folder


@pytest.fixture
def empty_torch_index(tmp_path: Path) -> Iterator[str]:
    """A PyTorch-like wheel index on 127.0.0.1 that answers but serves no torch wheel."""
    root = tmp_path / "index"
    (root / "torch").mkdir(parents=True)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_setup_names_the_torch_source_it_tried(clone: Path, pip_wheel: Path, empty_torch_index: str) -> None:
    # the PyTorch CPU index answers: the CPU build is asked of it, and its failure is named
    done = _setup(clone, _offline_env(torch_cpu_index=empty_torch_index, find_links=pip_wheel))
    _assert_failed_at(done, f"torch=={TORCH_PIN} (CPU build) from {empty_torch_index}", clone)
    # it does not answer: the public build of the same version, from the configured index, said so
    dead = f"http://127.0.0.1:{_closed_port()}/whl/cpu"
    again = _setup(clone, _offline_env(torch_cpu_index=dead, find_links=pip_wheel))
    _assert_failed_at(again, f"torch=={TORCH_PIN.split('+')[0]} from the configured package index", clone)
    assert f"the PyTorch CPU index ({dead}) does not answer" in again.stdout, again.stdout
    assert "create .venv" not in again.stdout, "the second run must resume in the venv of the first"
