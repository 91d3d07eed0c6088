"""What the command line prints is printed literally, and whole, when it goes to a file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import typer
from rich.table import Table
from typer.testing import CliRunner

from flows.cli import _fail, app
from flows.console import make_console, styled
from pipeline.errors import JobSpecError

runner = CliRunner()

LITERAL = "bands: [red, nir] and out/[2024]/[bold]cube[/].zarr"


def test_error_text_with_square_brackets_is_printed_as_is(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit):
        _fail(JobSpecError(LITERAL))
    assert capsys.readouterr().err.strip() == f"error: {LITERAL}"


def test_table_cells_and_styled_text_are_literal(capsys: pytest.CaptureFixture[str]) -> None:
    out = make_console()
    table = Table()
    table.add_column("item")
    table.add_row("S2B_[x]_01 [dim]")
    out.print(table)
    out.print(styled("cube: ", (LITERAL, "bold")))
    printed = capsys.readouterr().out
    assert "S2B_[x]_01 [dim]" in printed and f"cube: {LITERAL}" in printed


def test_path_with_brackets_in_a_refusal(tmp_path: Path) -> None:
    out = tmp_path / "scene[bold]x[/]"
    args = ["generate", str(out), "--size", "256", "--acquisitions", "1"]
    assert runner.invoke(app, args).exit_code == 0
    again = runner.invoke(app, args)
    assert again.exit_code == 2
    assert f"error: {out} is not empty" in again.stderr


def test_output_to_a_file_keeps_long_lines_whole(tmp_path: Path) -> None:
    out = tmp_path / ("scene-" + "x" * 120)
    command = Path(sys.executable).with_name("seg2change")
    with (tmp_path / "log.txt").open("w") as log:
        subprocess.run(
            [str(command), "generate", str(out), "--size", "256", "--acquisitions", "1"],
            stdout=log,
            stderr=subprocess.STDOUT,
            check=True,
            timeout=120,
            env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
        )
    lines = (tmp_path / "log.txt").read_text().splitlines()
    assert lines[0] == f"scene written to {out}: 2 items"
    assert f"  collection: {out}/collection.json" in lines
