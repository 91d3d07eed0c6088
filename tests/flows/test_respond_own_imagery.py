"""The command line on the user's own imagery: ``seg2change catalog`` (and ``respond`` on its items)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin
from typer.testing import CliRunner

from flows.cli import app

runner = CliRunner()


def _rgb(path: Path, crs: str, origin: tuple[float, float], res: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(0).integers(0, 255, size=(3, 32, 32), dtype="uint8")
    profile = dict(driver="GTiff", width=32, height=32, count=3, dtype="uint8", crs=crs)
    with rasterio.open(path, "w", transform=from_origin(*origin, res, res), **profile) as ds:
        ds.write(data)
        ds.colorinterp = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)


def test_catalog_command_writes_items_for_two_dates(tmp_path: Path) -> None:
    _rgb(tmp_path / "pre" / "a.tif", "EPSG:26915", (366_700.0, 4_104_400.0), 10.0)
    _rgb(tmp_path / "post" / "b_20110525.tif", "EPSG:4326", (-94.4994, 37.0765), 1e-4)
    out = tmp_path / "items.json"
    args = ["catalog", str(tmp_path / "pre"), str(tmp_path / "post" / "*.tif"), "--out", str(out)]
    result = runner.invoke(app, [*args, "--datetime", "2011-05-01", "--datetime", "2011-05-25T17:00:00"])
    assert result.exit_code == 0, result.output
    items = json.loads(out.read_text())["features"]
    assert [(i["id"], i["properties"]["datetime"], i["properties"]["proj:epsg"]) for i in items] == [
        ("a", "2011-05-01T00:00:00Z", 26915),
        ("b_20110525", "2011-05-25T17:00:00Z", 4326),
    ]
    assert {i["collection"] for i in items} == {"own-imagery"}
    assert "collections: [own-imagery]" in result.output and "asset_roots:" in result.output


def test_catalog_command_refuses_clearly_and_keeps_an_existing_file(tmp_path: Path) -> None:
    _rgb(tmp_path / "post" / "b_20110525.tif", "EPSG:4326", (-94.4994, 37.0765), 1e-4)
    out = tmp_path / "items.json"
    out.write_text("keep")
    no_time = runner.invoke(app, ["catalog", str(tmp_path / "post"), "--out", str(out), "--overwrite"])
    assert no_time.exit_code == 2 and "--datetime" in no_time.stderr and "--name-date" in no_time.stderr
    exists = runner.invoke(
        app, ["catalog", str(tmp_path / "post"), "--out", str(out), "--name-date", "%Y%m%d"]
    )
    assert exists.exit_code == 2 and "--overwrite" in exists.stderr
    assert out.read_text() == "keep"
    bad_date = runner.invoke(
        app, ["catalog", str(tmp_path / "post"), "--out", str(out), "--datetime", "May 25"]
    )
    assert bad_date.exit_code == 2 and "YYYY-MM-DD" in bad_date.output
    ok = runner.invoke(
        app, ["catalog", str(tmp_path / "post"), "--out", str(out), "--name-date", "%Y%m%d", "--overwrite"]
    )
    assert ok.exit_code == 0, ok.output
    assert json.loads(out.read_text())["features"][0]["properties"]["datetime"] == "2011-05-25T00:00:00Z"
