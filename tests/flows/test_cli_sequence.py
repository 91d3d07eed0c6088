"""``seg2change sequence``: a generated 3-window sequence run from a YAML file, then one window appended."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr
from typer.testing import CliRunner

from flows.cli import app
from pipeline.demo import demo_checkpoint, demo_sequence_fields
from pipeline.sequence import SEQUENCE_CUBE
from pipeline.synthetic import SceneSpec
from pipeline.synthetic.sequence import generate_sequence


def _write(path: Path, fields: dict[str, object], windows: list[str]) -> None:
    path.write_text(yaml.safe_dump({**fields, "windows": windows}, sort_keys=False))


def test_sequence_command_runs_then_appends_only_the_new_pair(tmp_path: Path) -> None:
    if demo_checkpoint() is None:
        pytest.skip("the demo CACH checkpoint is absent (seg2change make-demo-checkpoint writes it)")
    scene = generate_sequence(SceneSpec(size=256, seed=0, cloud_fraction=0.2), tmp_path / "scene", periods=3)
    fields: dict[str, object] = {
        **demo_sequence_fields(scene, catalog=str(scene.items_path.relative_to(tmp_path))),
        "publishers": ["statistics"],
        "output": "seq",
    }
    path = tmp_path / "sequence.yaml"
    windows = [scene.window_interval(p) for p in (1, 2)]
    _write(path, fields, windows)
    runner = CliRunner()

    first = runner.invoke(app, ["sequence", str(path), "--no-progress"])
    assert first.exit_code == 0, first.output
    cube = tmp_path / "seq" / SEQUENCE_CUBE
    assert f"sequence cube: {cube}" in first.stdout
    collection = tmp_path / "seq" / "stac" / "collection.json"
    assert f"STAC collection: {collection}" in first.stdout and collection.is_file()
    assert "COG first_change: " in first.stdout
    assert "pair 1/1 001_" in first.stderr and "running" in first.stderr

    _write(path, fields, [*windows, scene.window_interval(3)])
    second = runner.invoke(app, ["sequence", str(path), "--no-progress"])
    assert second.exit_code == 0, second.output
    assert re.search(r"pair 1/2 001_\S+: skipped \(done\)", second.stderr), second.stderr
    assert re.search(r"pair 2/2 002_\S+: running", second.stderr), second.stderr
    assert "pairs run now: 1 of 2" in second.stdout
    change = np.asarray(zarr.open_array(str(cube), path="change", mode="r")[...])
    printed = [int(n) for n in re.findall(r"pair \d \S+: (\d+) changed pixels", second.stdout)]
    assert printed == [int((change[k] == 1).sum()) for k in range(2)]
    assert sum(printed) > 0

    # Windows that do not extend the cube's are refused, naming the flag; --overwrite recomputes all.
    _write(path, fields, [scene.window_interval(p) for p in (1, 3)])
    refused = runner.invoke(app, ["sequence", str(path), "--no-progress"])
    assert refused.exit_code == 2 and "--overwrite" in refused.stderr
    replaced = runner.invoke(app, ["sequence", str(path), "--no-progress", "--overwrite"])
    assert replaced.exit_code == 0, replaced.output
    assert "pairs run now: 1 of 1" in replaced.stdout
    assert zarr.open_group(str(cube), mode="r").attrs["pairs_done"] == 1
    assert zarr.open_array(str(cube), path="change", mode="r").shape[0] == 1


def test_sequence_help_says_how_to_append() -> None:
    result = CliRunner().invoke(app, ["sequence", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "--overwrite" in result.output and "add a window" in result.output


def test_sequence_command_refuses_a_bad_file_before_heavy_imports_and_any_work(tmp_path: Path) -> None:
    path = tmp_path / "sequence.yaml"
    path.write_text(f"output: {tmp_path / 'out'}\nbefore: 2024-01-01/2024-01-31\n")
    code = (
        "import json, sys\n"
        "from typer.testing import CliRunner\n"
        "from flows.cli import app\n"
        f"result = CliRunner().invoke(app, ['sequence', {str(path)!r}])\n"
        "heavy = sorted(m for m in ('torch', 'distributed', 'dask', 'zarr', 'xarray') if m in sys.modules)\n"
        "print(json.dumps({'code': result.exit_code, 'stderr': result.stderr, 'heavy': heavy}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["code"] == 2
    assert "replace 'before'" in result["stderr"]
    assert result["heavy"] == []
    assert not (tmp_path / "out").exists()
