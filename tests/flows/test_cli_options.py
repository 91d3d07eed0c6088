"""One flag, ``--overwrite``, replaces what exists on every subcommand; messages advise it by name."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.options import DEPRECATED_ALIAS, OVERWRITE_FLAG
from pipeline.change_cube import CubeState, check_reusable
from pipeline.errors import ChangeCubeMismatchError, OutputExistsError

#: Every subcommand that can find its output already there.
REPLACING = ("demo", "prepare", "generate", "run", "respond", "monitor")

runner = CliRunner()


def _options(help_text: str) -> set[str]:
    return set(re.findall(r"--[a-z][a-z-]*", help_text))


@pytest.mark.parametrize("command", REPLACING)
def test_help_shows_overwrite_and_hides_the_alias(command: str) -> None:
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    options = _options(result.output)
    assert OVERWRITE_FLAG in options
    assert DEPRECATED_ALIAS not in options


def test_no_subcommand_shows_force() -> None:
    commands = [c.name or c.callback.__name__ for c in app.registered_commands if c.callback]
    for command in commands:
        result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
        assert DEPRECATED_ALIAS not in _options(result.output), command


def test_generate_refuses_an_existing_scene_naming_the_flag(tmp_path: Path) -> None:
    out = tmp_path / "scene"
    args = ["generate", str(out), "--size", "256", "--acquisitions", "1"]
    assert runner.invoke(app, args).exit_code == 0
    again = runner.invoke(app, args)
    assert again.exit_code == 2
    assert OVERWRITE_FLAG in again.stderr and "not empty" in again.stderr
    replaced = runner.invoke(app, [*args, OVERWRITE_FLAG])
    assert replaced.exit_code == 0, replaced.output


def test_the_deprecated_alias_still_replaces_and_warns(tmp_path: Path) -> None:
    out = tmp_path / "scene"
    args = ["generate", str(out), "--size", "256", "--acquisitions", "1"]
    assert runner.invoke(app, args).exit_code == 0
    result = runner.invoke(app, [*args, DEPRECATED_ALIAS])
    assert result.exit_code == 0, result.output
    assert f"{DEPRECATED_ALIAS} is deprecated" in result.stderr and OVERWRITE_FLAG in result.stderr


def test_change_cube_refusals_name_the_flag(tmp_path: Path) -> None:
    with pytest.raises(OutputExistsError) as not_ours:
        check_reusable(tmp_path, CubeState(exists=True), "abc", {})
    with pytest.raises(ChangeCubeMismatchError) as other_job:
        check_reusable(
            tmp_path,
            CubeState(exists=True, is_change_cube=True, fingerprint="old", attrs={}),
            "new",
            {"prompts": "x"},
        )
    for message in (str(not_ours.value), str(other_job.value)):
        assert OVERWRITE_FLAG in message and DEPRECATED_ALIAS not in message


def test_the_demo_default_folder_is_ignored_by_git() -> None:
    import inspect
    import shutil
    import subprocess

    from flows.cli import demo

    repo = Path(__file__).resolve().parents[2]
    if shutil.which("git") is None or not (repo / ".git").exists():
        pytest.skip("not a git checkout")
    default = inspect.signature(demo).parameters["workdir"].default
    probe = repo / default / "scene" / "items.ndjson"
    done = subprocess.run(["git", "-C", str(repo), "check-ignore", "-q", str(probe)], check=False)
    assert done.returncode == 0, f"{default}/ is not in .gitignore"
