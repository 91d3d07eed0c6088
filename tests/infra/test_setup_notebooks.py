"""The notebooks' JupyterLab: an optional extra, pinned, and ``jupyter lab notebooks/`` serves them.

``notebooks/README.md`` tells a user to install the ``notebooks`` extra with the constraints and to
run ``.venv/bin/jupyter lab notebooks/``. These tests hold the README to ``pyproject.toml``, check
with a pip dry run (nothing is installed) that the extra resolves entirely to pinned versions, and,
where the extra is installed, start JupyterLab exactly as documented and list the notebooks
through its API.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "notebooks" / "README.md"
INSTALL = '.venv/bin/python -m pip install -c .venv/seg2change-constraints.txt -e ".[notebooks]"'
LAUNCH = ".venv/bin/jupyter lab notebooks/"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _extra(name: str) -> list[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements: list[str] = project["optional-dependencies"][name]
    return requirements


def test_readme_commands_name_the_extra_that_pyproject_defines() -> None:
    text = README.read_text()
    assert INSTALL in text and LAUNCH in text, "notebooks/README.md lost its install/launch commands"
    assert any(_canonical(r).startswith("jupyterlab") for r in _extra("notebooks"))


def test_notebooks_extra_resolves_to_pinned_versions_only(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
        + ["--report", str(report), "-c", str(REPO / "requirements" / "constraints.txt")]
        + _extra("notebooks"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"the notebooks extra does not resolve with the constraints:\n{done.stderr}"
    pins = dict(
        line.split("==", 1)
        for line in (REPO / "requirements" / "constraints.txt").read_text().splitlines()
        if "==" in line
    )
    pins = {_canonical(name): version for name, version in pins.items()}
    resolved = {
        _canonical(item["metadata"]["name"]): item["metadata"]["version"]
        for item in json.loads(report.read_text())["install"]
    }
    assert "jupyterlab" in resolved
    unpinned = {name: version for name, version in resolved.items() if pins.get(name) != version}
    assert not unpinned, f"pin these in requirements/constraints.txt: {unpinned}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.slow
def test_jupyter_lab_serves_the_notebooks_as_documented(tmp_path: Path) -> None:
    jupyter = Path(sys.executable).parent / "jupyter"
    pytest.importorskip("jupyterlab", reason=f"the notebooks extra is not installed: {INSTALL}")
    port, token = _free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        # keep JupyterLab's settings, runtime files and the kernel's history out of $HOME
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTER_DATA_DIR": str(tmp_path / "data"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        "IPYTHONDIR": str(tmp_path / "ipython"),
    }
    args = [str(jupyter), "lab", "notebooks/", "--no-browser", "--ip=127.0.0.1", f"--port={port}"]
    args += [f"--IdentityProvider.token={token}", "--ServerApp.port_retries=0"]
    if os.geteuid() == 0:
        args.append("--allow-root")  # as the README says: Jupyter refuses root without it
    log = tmp_path / "jupyter.log"
    with log.open("w") as out:
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/api/contents?token={token}"
        deadline = time.monotonic() + 90
        listing = None
        while listing is None:
            assert proc.poll() is None, f"jupyter lab exited ({proc.returncode}):\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"jupyter lab did not answer:\n{log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    listing = json.load(response)
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.5)
        names = {entry["name"] for entry in listing["content"]}
        assert {"01_open_change_cube.ipynb", "02_stac_item.ipynb", "03_evaluate_against_truth.ipynb"} <= names
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/lab?token={token}", timeout=10) as page:
            assert page.status == 200 and "JupyterLab" in page.read().decode()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
