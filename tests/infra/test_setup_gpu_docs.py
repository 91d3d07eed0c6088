"""The README's GPU subsection stays true to the pins, the CLI and the job schema.

Installing a CUDA torch needs the PyTorch CUDA index and an NVIDIA GPU, so that command is only
checked against the constraints (same torch version, index and build agree). The other two
commands of the section are run as written: the check prints this venv's torch, and the grep
makes the constraints for later installs (all pins but torch's). The flag and job fields the
section names must exist.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from pipeline.cluster import ClusterSpec
from pipeline.engine_spec import ModelSpec

REPO = Path(__file__).resolve().parents[2]
CONSTRAINTS = REPO / "requirements" / "constraints.txt"


def _gpu_section() -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(r"^### GPU\n(.*?)^##? ", text, flags=re.S | re.M)
    assert match, "README.md has no '### GPU' subsection"
    return match.group(1)


def _commands() -> list[str]:
    (block,) = re.findall(r"```bash\n(.*?)```", _gpu_section(), flags=re.S)
    return [line.split("   # ", 1)[0].strip() for line in block.splitlines() if line.strip()]


def _torch_pin() -> str:
    (pin,) = [line for line in CONSTRAINTS.read_text().splitlines() if line.startswith("torch==")]
    return pin.removeprefix("torch==")


def test_the_cuda_install_asks_for_the_pinned_version_from_the_matching_index() -> None:
    install = _commands()[0]
    match = re.fullmatch(
        r'\.venv/bin/python -m pip install --index-url https://download\.pytorch\.org/whl/(cu\d+) "torch==([\w.]+)\+(cu\d+)"',
        install,
    )
    assert match, install
    index_build, version, build = match.groups()
    assert version == _torch_pin().split("+")[0], "the GPU subsection names another torch than the pin"
    assert index_build == build
    assert f"`torch=={_torch_pin()}`" in _gpu_section()


def test_the_check_command_prints_this_venvs_torch() -> None:
    check = _commands()[1]
    assert check.startswith(".venv/bin/python -c ")
    command = check.replace(".venv/bin/python", shlex.quote(sys.executable), 1)
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [torch.__version__, str(torch.cuda.is_available())]


def test_the_grep_makes_constraints_without_torch_only(tmp_path: Path) -> None:
    grep = _commands()[2]
    (tmp_path / "requirements").mkdir()
    (tmp_path / ".venv").mkdir()
    shutil.copy2(CONSTRAINTS, tmp_path / "requirements" / "constraints.txt")
    subprocess.run(["bash", "-c", grep], cwd=tmp_path, check=True, timeout=30)
    written = (tmp_path / ".venv" / "constraints-gpu.txt").read_text().splitlines()
    pins = CONSTRAINTS.read_text().splitlines()
    assert written == [line for line in pins if not line.startswith("torch==")]
    assert len(written) == len(pins) - 1
    assert "-c .venv/constraints-gpu.txt" in _gpu_section()


def test_the_flag_and_job_fields_it_names_exist() -> None:
    section = " ".join(_gpu_section().split())
    assert "seg2change train ... --device cuda" in section
    done = subprocess.run(
        [str(Path(sys.executable).with_name("seg2change")), "train", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 0 and "--device" in done.stdout, done.stdout + done.stderr
    assert "models: {device: cuda}" in section and "cluster: {gpu: true}" in section
    assert ModelSpec.model_validate({"device": "cuda"}).device == "cuda"
    assert ClusterSpec.model_validate({"gpu": True}).gpu
