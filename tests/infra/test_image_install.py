"""Run the CPU image's install steps in a fresh virtual environment, as `docker build` would.

The build context the Dockerfile copies (constraints, pyproject, README and the three packages)
is copied to a temporary folder, a new venv is made, and the Dockerfile's own ``pip install``
commands are run there: torch first (from the local wheel folder on this machine, which
``PIP_FIND_LINKS`` points at, instead of the PyTorch CPU index), then the project with the
constraints. The packages must import, ``pip check`` must pass and ``seg2change --help`` must work.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from .dockerfiles import DOCKERFILES, REPO, instructions, pip_installs

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _build_context(dest: Path) -> None:
    """Copy what the Dockerfile COPYs, at the same relative paths."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for ins in instructions(DOCKERFILES["Dockerfile.cpu"]):
        if ins.keyword != "COPY":
            continue
        *sources, target = ins.args.split()
        for source in sources:
            src = REPO / source
            out = dest / target / src.name if target.endswith("/") or target == "./" else dest / target
            out.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, out, ignore=ignore)
            else:
                shutil.copy2(src, out)


def _local_torch(args: list[str]) -> list[str]:
    """The torch install with the PyTorch index dropped: pip takes the wheel from PIP_FIND_LINKS."""
    out = list(args)
    if "--index-url" in out:
        i = out.index("--index-url")
        del out[i : i + 2]
    return out


def test_cpu_image_install_steps_in_a_fresh_venv(tmp_path: Path) -> None:
    context = tmp_path / "context"
    _build_context(context)
    assert (context / "requirements" / "constraints.txt").is_file()
    assert (context / "pipeline" / "__init__.py").is_file()

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = f"{env_dir / 'bin'}{os.pathsep}{env['PATH']}"

    def run(*args: str | Path, cwd: Path = context) -> str:
        done = subprocess.run(
            [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, f"{args} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done.stdout

    commands = pip_installs(DOCKERFILES["Dockerfile.cpu"])
    assert len(commands) == 2, commands
    torch_cmd, project_cmd = commands
    assert "torch==2.13.0+cpu" in torch_cmd and project_cmd == ["-c", "requirements/constraints.txt", "."]
    run(python, "-m", "pip", "install", "-q", *_local_torch(torch_cmd))
    run(python, "-m", "pip", "install", "-q", *project_cmd)
    run(python, "-m", "pip", "check")

    # import from outside the context, so the installed copy is used, not the copied sources
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run(
        python,
        "-c",
        "import pipeline, seg2change_core, flows, torch; print(pipeline.__file__); print(torch.__version__)",
        cwd=elsewhere,
    ).split()
    assert where[0].startswith(str(env_dir)) and where[1] == "2.13.0+cpu", where
    frozen = run(python, "-m", "pip", "freeze", cwd=elsewhere)
    pins = dict(line.split("==", 1) for line in frozen.splitlines() if "==" in line)
    constraints = dict(
        line.split("==", 1)
        for line in (REPO / "requirements" / "constraints.txt").read_text().splitlines()
        if "==" in line
    )
    for name in ("dask", "distributed", "numpy", "xarray", "zarr", "prefect", "rasterio"):
        assert pins[name] == constraints[name], name
    assert "usage" in run(env_dir / "bin" / "seg2change", "--help", cwd=elsewhere).lower()
    assert sys.prefix != str(env_dir)
