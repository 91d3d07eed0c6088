"""The command line on the user's own imagery: ``seg2change catalog`` (and ``respond`` on its items)."""

from __future__ import annotations

import asyncio
import gzip
import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
import shapely
import shapely.geometry
import torch
import xarray as xr
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.settings import (
    PREFECT_HOME,
    PREFECT_SERVER_ANALYTICS_ENABLED,
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
    temporary_settings,
)
from prefect.testing.utilities import prefect_test_harness
from pyproj import Transformer
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin
from safetensors.torch import save_file
from typer.testing import CliRunner

from flows.cli import app
from seg2change_core.change_model import InputNormalisation
from seg2change_core.checkpoints import save_change_model
from seg2change_core.segmenters.clip_model import CLIP, CLIPConfig
from seg2change_core.training import ModelConfig, build_model

runner = CliRunner()


def _said(output: str) -> str:
    """A usage error's text without rich's box and line breaks."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", output).split())


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


def test_respond_refuses_bad_imagery_and_footprint_options_before_any_work(tmp_path: Path) -> None:
    _rgb(tmp_path / "pre" / "a.tif", "EPSG:26915", (366_700.0, 4_104_400.0), 10.0)
    base = ["respond", "--area=-94.4990,37.0740,-94.4970,37.0760", "--event-date", "2011-05-22"]
    base += ["--hazard", "storm", "--output", str(tmp_path / "out")]
    only_before = runner.invoke(app, [*base, "--before-images", str(tmp_path / "pre")])
    assert only_before.exit_code == 2 and "--after-images" in _said(only_before.output)
    both = runner.invoke(
        app, [*base, "--catalog", "https://stac.example.org", "--before-images", str(tmp_path / "pre")]
    )
    assert both.exit_code == 2 and "not both" in _said(both.output)
    no_collections = runner.invoke(app, [*base, "--catalog", "https://stac.example.org"])
    assert no_collections.exit_code == 2 and "--collections is required" in _said(no_collections.output)
    images = ["--before-images", str(tmp_path / "pre"), "--after-images", str(tmp_path / "pre" / "*.tif")]
    missing = runner.invoke(app, [*base, *images, "--footprints", str(tmp_path / "none.geojson")])
    assert missing.exit_code == 2 and "footprints file" in missing.stderr
    threshold = tmp_path / "f.geojson"
    threshold.write_text('{"type": "FeatureCollection", "features": []}')
    bad = runner.invoke(app, [*base, *images, "--footprints", str(threshold), "--affected-threshold", "2"])
    assert bad.exit_code == 2 and "(0, 1]" in bad.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.catalog").exists()


JOPLIN = Path(__file__).resolve().parents[3] / "shared" / "data" / "geo" / "xview2_joplin"


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One temporary Prefect server for this module, with PREFECT_HOME in a tmp folder."""
    home = tmp_path_factory.mktemp("prefect-home")
    settings = {
        PREFECT_HOME: str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED: False,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: 90,
    }
    with temporary_settings(updates=settings), prefect_test_harness(server_startup_timeout=90):
        yield


def _rgb_models(folder: Path) -> dict[str, object]:
    """A tiny 8-bit RGB CACH checkpoint (conv backbone) and a tiny CLIP with its BPE file, made here."""
    torch.manual_seed(0)
    norm = InputNormalisation(("red", "green", "blue"), (0.5,) * 3, (0.25,) * 3, 1 / 255)
    config = ModelConfig(
        backbone="conv", embed_dim=16, widths=(8, 8, 16, 16), blocks=(1, 1, 1, 1), hidden_dim=8, tile_size=252
    )
    save_change_model(build_model(config, norm, name="tiny-rgb"), folder / "rgb.safetensors")
    clip = CLIP(
        CLIPConfig(
            embed_dim=32,
            image_size=32,
            patch_size=8,
            vision_width=64,
            vision_layers=2,
            vision_heads=1,
            context_length=16,
            vocab_size=514,  # 512 byte symbols + start and end with an empty merges list
            text_width=32,
            text_layers=2,
            text_heads=1,
        )
    ).eval()
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(folder / "clip.safetensors"))
    (folder / "bpe.txt.gz").write_bytes(gzip.compress(b"#version: 0.2\n"))
    return {
        "checkpoint": str(folder / "rgb.safetensors"),
        "segmenter": "clip",
        "segmenter_options": {
            "weights": str(folder / "clip.safetensors"),
            "tokenizer": str(folder / "bpe.txt.gz"),
        },
        "device": "cpu",
    }


@pytest.mark.slow
@pytest.mark.shared_data
@pytest.mark.skipif(not JOPLIN.is_dir(), reason=f"the real data {JOPLIN} is not on this machine")
def test_catalog_then_respond_on_joplin_gives_cube_cogs_and_per_building_table(
    tmp_path: Path, prefect_api: None
) -> None:
    """Pre in EPSG:26915, post in EPSG:4326: one UTM grid at 0.6 m, COGs, and 2,823 buildings measured."""
    items = tmp_path / "catalog" / "joplin.json"
    items.parent.mkdir()
    made = runner.invoke(
        app,
        [
            "catalog",
            str(JOPLIN / "pre"),
            str(JOPLIN / "post"),
            "--out",
            str(items),
            "--datetime",
            "2011-05-01",
            "--datetime",
            "2011-05-25",
            "--collection",
            "joplin",
        ],
    )
    assert made.exit_code == 0, made.output
    models = tmp_path / "models"
    models.mkdir()
    options = tmp_path / "options.json"
    options.write_text(json.dumps({"models": _rgb_models(models), "cluster": {"n_workers": 1}}))
    footprints = JOPLIN / "joplin_building_footprints.geojson"
    output = tmp_path / "response"
    bbox = (-94.4960, 37.0680, -94.4935, 37.0700)
    result = runner.invoke(
        app,
        [
            "respond",
            f"--area={','.join(map(str, bbox))}",
            "--event-date",
            "2011-05-22",
            "--hazard",
            "storm",
            "--catalog",
            str(items),
            "--output",
            str(output),
            "--footprints",
            str(footprints),
            "--job-options",
            str(options),
            "--affected-threshold",
            "0.3",
        ],
    )
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout[result.stdout.index("{") :])
    # The catalog's defaults: no quality band, the files' folders, RGB, the finest pixel (0.6 m).
    job = json.loads(xr.open_zarr(output / "change_cube.zarr").attrs["job"])
    assert job["quality"]["asset"] is None and job["bands"] == ["red", "green", "blue"]
    assert job["grid"]["resolution"] == 0.6 and job["collections"] == ["joplin"]
    # Tiles overlap by 40 m of ground at 0.6 m (67 px, under half of the tiny CACH's own 252 px tile).
    assert job["tiling"]["overlap"] == 67 and job["tiling"]["tile_size"] is None
    with rasterio.open(output / "cogs" / "change_probability.tif") as cog:
        assert cog.crs.to_epsg() == 32615 and cog.res == pytest.approx((0.6, 0.6))
        cube_box = shapely.box(*cog.bounds)
    features = answer["features"]
    summary = features["summary"]["all"]
    print(f"joplin footprints: {summary}")
    assert summary["footprints"] == 2823 and features["threshold"] == 0.3
    table = pq.read_table(features["features_parquet"]).to_pandas()
    assert len(table) == 2823
    # Buildings outside the analysed area are 'not covered', never unchanged; those well inside it are covered.
    to_utm = Transformer.from_crs("OGC:CRS84", "EPSG:32615", always_xy=True)
    shapes = [shapely.geometry.shape(f["geometry"]) for f in json.loads(footprints.read_text())["features"]]
    utm = [
        shapely.transform(s, lambda xy: np.column_stack(to_utm.transform(xy[:, 0], xy[:, 1]))) for s in shapes
    ]
    outside = np.array([not cube_box.intersects(s) for s in utm])
    inside = np.array([cube_box.buffer(-1.0).contains(s) for s in utm])
    assert outside.sum() > 2700 and inside.sum() >= 5
    assert (table["status"][outside] == "not covered").all()
    assert not table["affected"][outside].any() and table["changed_fraction"][outside].isna().all()
    assert (table["status"][inside] == "covered").all()
    assert summary["not_covered"] == int((table["status"] == "not covered").sum())
    geojson = json.loads(Path(features["features_geojson"]).read_text())
    assert len(geojson["features"]) == 2823
    # The flow run's artifacts carry the per-feature summary.
    artifact = asyncio.run(_latest_artifact("seg2change-response-features"))
    rows = artifact if isinstance(artifact, list) else json.loads(str(artifact))
    assert {r["zone"]: r["not_covered"] for r in rows} == {"all": summary["not_covered"]}
    markdown = asyncio.run(_latest_artifact("seg2change-response"))
    assert f"footprints affected: {summary['affected']} of 2823" in str(markdown)


async def _latest_artifact(key: str) -> object:
    async with get_client() as client:
        found = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return sorted(found, key=lambda a: a.created)[-1].data
