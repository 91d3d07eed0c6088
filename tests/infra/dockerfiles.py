"""Reading Dockerfiles for the tests: instructions (continuations joined) and their pip commands."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "infra" / "docker"
DOCKERFILES = {name: DOCKER / name for name in ("Dockerfile.cpu", "Dockerfile.gpu-worker")}


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction: its keyword (upper case) and its arguments, one line."""

    keyword: str
    args: str


def instructions(path: Path) -> list[Instruction]:
    """The instructions of a Dockerfile, comments dropped and ``\\`` continuations joined."""
    out: list[Instruction] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append(Instruction(keyword.upper(), args.strip()))
    assert not pending, f"{path} ends inside a continued line"
    return out


def pip_installs(path: Path) -> list[list[str]]:
    """The ``python -m pip install ...`` commands of the RUN instructions, as argument lists."""
    commands: list[list[str]] = []
    for ins in instructions(path):
        if ins.keyword != "RUN":
            continue
        for part in re.split(r"&&|;", ins.args):
            words = shlex.split(part)
            if words[:4] == ["python", "-m", "pip", "install"]:
                commands.append(words[4:])
    return commands
