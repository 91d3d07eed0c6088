"""Synthetic building change from one date and its footprints, and training on it beside real pairs."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from pyproj import Transformer
from rasterio.transform import from_origin
from scipy.ndimage import binary_dilation

from seg2change_core.datasets.synthetic_buildings import (
    BuildingRemoval,
    read_footprint_image,
    synthesise_building_change,
)
from seg2change_core.errors import DatasetError
from seg2change_core.recipes import get_recipe
from seg2change_core.training_setup import prepare_training

ORIGIN = (367000.0, 4104000.0)  # UTM 15N, metres
PIXEL = 0.5
SIZE = 160
#: (row, col, height, width) of each building, in pixels
BUILDINGS = [(20, 20, 16, 24), (20, 100, 20, 20), (90, 30, 18, 18), (100, 110, 24, 16), (60, 70, 12, 14)]


def _scene(folder: Path) -> tuple[Path, Path]:
    """A textured field with bright roofs, as a UTM GeoTIFF, and the roofs as CRS84 GeoJSON."""
    rng = np.random.default_rng(0)
    ground = rng.integers(60, 90, (3, SIZE, SIZE), dtype=np.uint8)
    for row, col, height, width in BUILDINGS:
        ground[:, row : row + height, col : col + width] = 230
    image = folder / "scene.tif"
    transform = from_origin(*ORIGIN, PIXEL, PIXEL)
    profile = {"driver": "GTiff", "height": SIZE, "width": SIZE, "count": 3, "dtype": "uint8"}
    with rasterio.open(image, "w", crs="EPSG:26915", transform=transform, **profile) as dst:
        dst.write(ground)
    to_lonlat = Transformer.from_crs("EPSG:26915", "OGC:CRS84", always_xy=True)
    features = []
    for row, col, height, width in BUILDINGS:
        corners = [
            (col, row),
            (col + width, row),
            (col + width, row + height),
            (col, row + height),
            (col, row),
        ]
        ring = [list(to_lonlat.transform(*(transform * corner))) for corner in corners]
        features.append(
            {"type": "Feature", "properties": {}, "geometry": {"type": "Polygon", "coordinates": [ring]}}
        )
    footprints = folder / "footprints.geojson"
    footprints.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return image, footprints


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_footprints_are_burnt_onto_the_image_grid_one_number_each(tmp_path: Path) -> None:
    image, footprints = _scene(tmp_path)
    scene = read_footprint_image(image, footprints)
    assert scene.pixels.shape == (SIZE, SIZE, 3) and scene.name == "scene"
    for number, (row, col, height, width) in enumerate(BUILDINGS, start=1):
        inside = scene.buildings[row + 1 : row + height - 1, col + 1 : col + width - 1]
        assert (inside == number).all()
    assert (scene.buildings > 0).sum() == pytest.approx(sum(h * w for _, _, h, w in BUILDINGS), rel=0.1)


def test_removed_buildings_become_ground_and_are_the_label_the_rest_is_untouched(tmp_path: Path) -> None:
    image, footprints = _scene(tmp_path)
    out = tmp_path / "synthetic"
    removal = BuildingRemoval(share=0.6, ring=2, max_shift=60)
    written = synthesise_building_change([image], footprints, out, tile=SIZE, variants=3, removal=removal)
    assert written >= 2  # a variant that removed nothing writes no pair
    scene = read_footprint_image(image, footprints)
    for name in sorted(p.name for p in (out / "label").iterdir()):
        before, after, label = (
            _read(out / "A" / name),
            _read(out / "B" / name),
            _read(out / "label" / name) > 0,
        )
        assert (after == scene.pixels).all()
        assert label.any() and (scene.buildings[label] > 0).all()
        removed = set(np.unique(scene.buildings[label]))
        for number in removed:  # a removed roof is ground now: dark where it was bright
            assert before[scene.buildings == number].mean() < 120
        kept = (scene.buildings > 0) & ~np.isin(scene.buildings, list(removed))
        assert (before[kept] == after[kept]).all()
        filled = binary_dilation(label, iterations=removal.ring + 6)
        assert (before[~filled] == after[~filled]).all()
    manifest = json.loads((out / "SYNTHETIC.json").read_text())
    assert manifest["pairs"] == written and manifest["removal"]["share"] == 0.6


def test_relocated_pairs_label_every_building_of_either_date(tmp_path: Path) -> None:
    image, footprints = _scene(tmp_path)
    out = tmp_path / "relocated"
    removal = BuildingRemoval(max_shift=40, relocated=1.0)
    written = synthesise_building_change([image], footprints, out, tile=96, variants=2, removal=removal)
    scene = read_footprint_image(image, footprints)
    assert written == 2  # one whole 96 px tile fits the 160 px scene, once per variant
    for path in sorted((out / "label").iterdir()):
        top, left = (int(v) for v in path.stem.rsplit("_", 2)[1:])
        window = (slice(top, top + 96), slice(left, left + 96))
        before, label = _read(out / "A" / path.name), _read(path) > 0
        assert (label >= (scene.buildings[window] > 0)).all()  # all of B's buildings
        assert (before != scene.pixels[window]).any(axis=-1).mean() > 0.5  # another place


def test_the_same_seed_gives_the_same_files_and_a_used_folder_is_refused_untouched(tmp_path: Path) -> None:
    image, footprints = _scene(tmp_path)
    first, second = tmp_path / "one", tmp_path / "two"
    synthesise_building_change([image], footprints, first, tile=80, seed=3)
    synthesise_building_change([image], footprints, second, tile=80, seed=3)
    names = sorted(p.relative_to(first) for p in first.rglob("*.png"))
    assert names and names == sorted(p.relative_to(second) for p in second.rglob("*.png"))
    assert all((first / n).read_bytes() == (second / n).read_bytes() for n in names)
    assert all(n.name.startswith("scene-v") for n in names)
    before = {p: p.read_bytes() for p in first.rglob("*") if p.is_file()}
    with pytest.raises(DatasetError, match="not empty"):
        synthesise_building_change([image], footprints, first, tile=80)
    assert before == {p: p.read_bytes() for p in first.rglob("*") if p.is_file()}


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_bad_inputs_are_refused_with_what_to_do(tmp_path: Path) -> None:
    image, footprints = _scene(tmp_path)
    plain = tmp_path / "plain.tif"
    profile = {"driver": "GTiff", "height": 8, "width": 8, "count": 3, "dtype": "uint8"}
    with rasterio.open(plain, "w", **profile) as dst:
        dst.write(np.zeros((3, 8, 8), np.uint8))
    with pytest.raises(DatasetError, match="no CRS"):
        read_footprint_image(plain, footprints)
    elsewhere = tmp_path / "elsewhere.geojson"
    polygon = [[[10.0, 50.0], [10.001, 50.0], [10.001, 50.001], [10.0, 50.0]]]
    elsewhere.write_text(
        json.dumps({"features": [{"geometry": {"type": "Polygon", "coordinates": polygon}}]})
    )
    with pytest.raises(DatasetError, match="check that they cover it"):
        read_footprint_image(image, elsewhere)
    (tmp_path / "broken.geojson").write_text("{")
    with pytest.raises(DatasetError, match="GeoJSON FeatureCollection"):
        read_footprint_image(image, tmp_path / "broken.geojson")
    with pytest.raises(DatasetError, match="share"):
        BuildingRemoval(share=0.0)


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_an_image_refused_midway_leaves_no_pairs_behind(tmp_path: Path) -> None:
    image, footprints = _scene(tmp_path)
    plain = tmp_path / "plain.tif"
    profile = {"driver": "GTiff", "height": 8, "width": 8, "count": 3, "dtype": "uint8"}
    with rasterio.open(plain, "w", **profile) as dst:
        dst.write(np.zeros((3, 8, 8), np.uint8))
    out = tmp_path / "partial"
    with pytest.raises(DatasetError, match="no CRS"):
        synthesise_building_change([image, plain], footprints, out, tile=80)
    assert not any(p.is_file() for p in out.rglob("*"))
    # a tile larger than the image, relocated: one pair of the image's size
    written = synthesise_building_change(
        [image], footprints, out, tile=256, removal=BuildingRemoval(relocated=1.0)
    )
    assert written == 2 and _read(next((out / "A").iterdir())).shape == (SIZE, SIZE, 3)


def _rgb_folder(root: Path, names: list[str]) -> None:
    rng = np.random.default_rng(1)
    for name in names:
        label = np.zeros((32, 32), np.uint8)
        label[4:12, 4:12] = 255
        for part, array in (
            ("A", rng.integers(0, 255, (32, 32, 3))),
            ("B", rng.integers(0, 255, (32, 32, 3))),
        ):
            (root / part).mkdir(parents=True, exist_ok=True)
            Image.fromarray(array.astype(np.uint8)).save(root / part / f"{name}.png")
        (root / "label").mkdir(parents=True, exist_ok=True)
        Image.fromarray(label).save(root / "label" / f"{name}.png")


def test_extra_training_folders_join_the_training_part_outside_the_split(tmp_path: Path) -> None:
    _rgb_folder(tmp_path / "real", ["a_1", "b_1", "c_1"])
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["real/a_1"], "val": ["real/b_1"], "test": ["real/c_1"]}))
    image, footprints = _scene(tmp_path)
    synthesise_building_change([image], footprints, tmp_path / "synthetic", tile=80)
    recipe = replace(get_recipe("rgb"), minutes=None, crop_size=28, validation_crop=28)
    run = prepare_training(
        recipe,
        [tmp_path / "real"],
        tmp_path / "m.safetensors",
        split=split,
        extra_train=[tmp_path / "synthetic"],
    )
    keys = [p.key for p in run.train_data.pairs]
    assert (
        keys[0] == "real/a_1" and len(keys) > 1 and all(k.startswith("synthetic/scene-v") for k in keys[1:])
    )
    assert run.val_pairs == 1 and run.summary["extra_train"] == [str(tmp_path / "synthetic")]
    with pytest.raises(DatasetError, match="rename the training-only folder"):
        prepare_training(
            recipe, [tmp_path / "real"], tmp_path / "m.safetensors", extra_train=[tmp_path / "real"]
        )


def test_the_command_writes_the_folder_and_refuses_a_used_one(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from flows.cli import app

    image, footprints = _scene(tmp_path)
    args = ["synthesise-buildings", str(image), "--footprints", str(footprints), "--out", str(tmp_path / "s")]
    done = CliRunner().invoke(app, [*args, "--tile", "80", "--variants", "1"])
    assert done.exit_code == 0, done.output
    assert "--extra-train" in done.output and (tmp_path / "s" / "SYNTHETIC.json").is_file()
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 2 and "not empty" in refused.output
