"""Tests of the synthetic scene generator (pipeline.synthetic), on small scenes."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from numpy.typing import NDArray
from rasterio.windows import Window
from rio_cogeo.cogeo import cog_validate

from pipeline.errors import OutputExistsError, SceneError
from pipeline.synthetic import (
    BAND_NAMES,
    QA,
    SCALE,
    SHADOW_OFFSET,
    ChangeType,
    Epoch,
    GeneratedScene,
    LandCover,
    SceneSpec,
    acquisition_window,
    acquisitions,
    ensure_scene,
    generate_scene,
    landscape_window,
    scene_is_current,
    surface_reflectance,
    truth_window,
)
from seg2change_core.errors import Seg2ChangeError

# 320 px in 256 px blocks: several blocks, partial blocks on the right and bottom edges.
SPEC = SceneSpec(size=320, seed=3, block_size=256)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> GeneratedScene:
    calls: list[tuple[str, int, int]] = []
    out = generate_scene(SPEC, tmp_path_factory.mktemp("scene") / "out", lambda *a: calls.append(a))
    assert calls[-1] == ("cogs", 45, 45)
    assert ("blocks", 4, 4) in calls
    return out


def _whole(spec: SceneSpec) -> Window:
    return Window(0, 0, spec.size, spec.size)


def _read(path: Path | str) -> NDArray[Any]:
    with rasterio.open(path) as src:
        return src.read(1)


def _reflectance(arrays: dict[str, NDArray[Any]]) -> dict[str, NDArray[np.float64]]:
    return {name: arrays[name].astype(np.float64) * SCALE for name in BAND_NAMES}


def _nd(a: NDArray[np.float64], b: NDArray[np.float64]) -> NDArray[np.float64]:
    out: NDArray[np.float64] = (a - b) / (a + b)
    return out


# --- spec -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "fix"),
    [
        ({"size": 100}, "between 256"),
        ({"block_size": 300}, "multiple of 256"),
        ({"cloud_fraction": 1.5}, "between 0 and 0.9"),
        ({"resolution": 0}, "positive pixel size"),
        ({"seed": -1}, "non-negative"),
        ({"acquisitions_per_epoch": 0}, "between 1 and"),
        ({"after_start": date(2023, 6, 10)}, "start the after epoch on or after 2023-07-01"),
        ({"epsg": 4326}, "not a projected CRS in metres"),
        ({"epsg": 999999}, "not a known EPSG code"),
        ({"origin": (600000.0, -5450000.0)}, "outside the area of use"),
        ({"clear_acquisitions": (5,)}, "outside 0..2"),
        ({"collection_id": "bad id"}, "letters, digits"),
        ({"size": 256.5}, "give an integer"),
    ],
)
def test_spec_rejects_bad_parameters_naming_the_fix(kwargs: dict[str, Any], fix: str) -> None:
    with pytest.raises(SceneError, match=fix) as info:
        SceneSpec(**kwargs)
    assert isinstance(info.value, Seg2ChangeError) and isinstance(info.value, ValueError)


def test_spec_round_trips_through_dict() -> None:
    spec = SceneSpec(size=512, seed=7, clear_acquisitions=(1,), before_start=date(2022, 5, 1))
    assert SceneSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(SceneError, match="unknown SceneSpec fields"):
        SceneSpec.from_dict({"sizes": 3})


def test_acquisitions_are_spread_over_their_epoch_with_one_mostly_clear() -> None:
    spec = SceneSpec(acquisitions_per_epoch=4, clear_acquisitions=(3,))
    acqs = acquisitions(spec)
    assert acqs == acquisitions(spec)
    assert len(acqs) == 8 and len({a.item_id for a in acqs}) == 8
    for epoch in Epoch:
        mine = [a for a in acqs if a.epoch is epoch]
        start, end = spec.epoch_window(epoch)
        assert all(start <= a.datetime <= end for a in mine)
        assert len({a.datetime.date() for a in mine}) == 4
        assert [a.datetime for a in mine] == sorted(a.datetime for a in mine)
        assert sum(a.mostly_clear for a in mine) == 1
        assert mine[3].cloud_fraction == 0.0
        assert any(a.cloud_fraction > 0.1 for a in mine)


# --- landscape --------------------------------------------------------------------------------


def test_truth_is_the_same_block_by_block_and_whole() -> None:
    spec = SceneSpec(size=512, seed=11)
    whole = truth_window(spec, _whole(spec))
    for row in range(0, 512, 150):
        for col in range(0, 512, 200):
            window = Window(col, row, min(200, 512 - col), min(150, 512 - row))
            for a, b in zip(truth_window(spec, window), whole, strict=True):
                np.testing.assert_array_equal(a, b[row : row + window.height, col : col + window.width])


def test_larger_scene_contains_the_smaller_one() -> None:
    small, large = SceneSpec(size=256, seed=5), SceneSpec(size=512, seed=5)
    for a, b in zip(truth_window(small, _whole(small)), truth_window(large, _whole(large)), strict=True):
        np.testing.assert_array_equal(a, b[:256, :256])


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_change_is_class_difference_and_holds_every_change_type(seed: int) -> None:
    spec = SceneSpec(size=256, seed=seed)
    before, after, change = truth_window(spec, _whole(spec))
    np.testing.assert_array_equal(change != ChangeType.NONE, before != after)
    assert set(np.unique(change)) == {int(c) for c in ChangeType}
    assert set(np.unique(before)) | set(np.unique(after)) == {int(c) for c in LandCover.classes()}
    assert LandCover.NODATA not in before and LandCover.NODATA not in after
    # Each change type is the transition it names.
    assert set(np.unique(after[change == ChangeType.FLOOD])) == {LandCover.WATER}
    assert set(np.unique(before[change == ChangeType.CLEARING])) == {LandCover.FOREST}
    assert set(np.unique(after[change == ChangeType.CLEARING])) == {LandCover.BARE_SOIL}
    assert set(np.unique(before[change == ChangeType.DRAIN])) == {LandCover.WATER}
    assert set(np.unique(after[change == ChangeType.BURN])) == {LandCover.BURNED}
    assert set(np.unique(before[change == ChangeType.BURN])) <= {LandCover.FOREST, LandCover.GRASS}
    assert set(np.unique(before[change == ChangeType.CONSTRUCTION])) <= {
        LandCover.CROPLAND,
        LandCover.BARE_SOIL,
    }
    assert LandCover.BUILDING in after[change == ChangeType.CONSTRUCTION]
    # A new estate is drawn as the settlements are: no field or bare plot is left between its buildings.
    assert set(np.unique(after[change == ChangeType.CONSTRUCTION])) <= {
        LandCover.BUILDING,
        LandCover.GRASS,
        LandCover.ROAD,
    }
    assert LandCover.GRASS in after[change == ChangeType.CONSTRUCTION]


def test_other_seed_gives_another_landscape() -> None:
    a, b = SceneSpec(size=256, seed=1), SceneSpec(size=256, seed=2)
    assert (truth_window(a, _whole(a))[0] != truth_window(b, _whole(b))[0]).mean() > 0.2


@pytest.mark.parametrize("window", [Window(-1, 0, 10, 10), Window(0, 0, 257, 10), Window(0.5, 0, 10, 10)])
def test_windows_outside_the_scene_or_fractional_are_refused(window: Window) -> None:
    spec = SceneSpec(size=256)
    with pytest.raises(SceneError):
        truth_window(spec, window)


# --- spectra and clouds ------------------------------------------------------------------------


def test_acquisition_is_the_same_block_by_block_and_whole() -> None:
    spec = SceneSpec(size=512, seed=4)
    cloudy = next(a for a in acquisitions(spec) if a.cloud_fraction > 0.1)
    whole = acquisition_window(spec, cloudy, _whole(spec))
    for window in (Window(0, 0, 300, 177), Window(301, 250, 211, 262), Window(17, 400, 5, 3)):
        part = acquisition_window(spec, cloudy, window)
        rows, cols = window.toslices()
        for name, array in part.items():
            np.testing.assert_array_equal(array, whole[name][rows, cols], err_msg=name)


def test_spectral_indices_separate_the_classes() -> None:
    spec = SceneSpec(size=512, seed=2, clear_acquisitions=(0, 1, 2))
    land = landscape_window(spec, _whole(spec))
    stats: dict[tuple[Epoch, LandCover], dict[str, float]] = {}
    for acq in acquisitions(spec)[::3]:  # the first of each epoch
        arrays = acquisition_window(spec, acq, _whole(spec))
        assert (arrays["qa"] == QA.CLEAR).all()
        r = _reflectance(arrays)
        index = {
            "ndvi": _nd(r["nir"], r["red"]),
            "ndwi": _nd(r["green"], r["nir"]),
            "mndwi": _nd(r["green"], r["swir16"]),
            "ndbi": _nd(r["swir16"], r["nir"]),
            "nbr": _nd(r["nir"], r["swir22"]),
            "bsi": _nd(r["swir16"] + r["red"], r["nir"] + r["blue"]),
            "brightness": np.mean(np.stack(list(r.values())), axis=0),
        }
        classes = land.classes(acq.epoch)
        for c in LandCover.classes():
            mask = classes == c
            if mask.any():
                stats[(acq.epoch, c)] = {k: float(v[mask].mean()) for k, v in index.items()}
    before = {c: s for (e, c), s in stats.items() if e is Epoch.BEFORE}
    assert before[LandCover.FOREST]["ndvi"] > 0.6
    assert before[LandCover.GRASS]["ndvi"] > 0.5
    assert before[LandCover.CROPLAND]["ndvi"] > 0.3
    assert before[LandCover.WATER]["ndwi"] > 0.3 and before[LandCover.WATER]["mndwi"] > 0.3
    assert before[LandCover.WATER]["ndvi"] < 0
    assert before[LandCover.BUILDING]["ndbi"] > 0 and before[LandCover.BARE_SOIL]["bsi"] > 0
    assert before[LandCover.BUILDING]["brightness"] > 1.5 * before[LandCover.FOREST]["brightness"]
    assert stats[(Epoch.AFTER, LandCover.BURNED)]["nbr"] < -0.2
    assert all(s["nbr"] > 0.3 for c, s in before.items() if c in (LandCover.FOREST, LandCover.GRASS))


def test_clouds_are_bright_and_shadows_dark_and_offset() -> None:
    spec = SceneSpec(size=512, seed=6, cloud_fraction=0.4)
    acq = next(a for a in acquisitions(spec) if a.cloud_fraction > 0.3)
    arrays = acquisition_window(spec, acq, _whole(spec))
    qa = arrays["qa"]
    r = _reflectance(arrays)
    cloud, shadow, clear = qa == QA.CLOUD, qa == QA.SHADOW, qa == QA.CLEAR
    assert 0.1 < cloud.mean() < 0.8 and shadow.any() and clear.any()
    assert set(np.unique(qa)) <= {int(q) for q in QA}
    surface = surface_reflectance(spec, _whole(spec), acq.epoch)
    for i, name in enumerate(BAND_NAMES):
        assert r[name][cloud].mean() > 0.25
        assert r[name][shadow].mean() < 0.6 * surface[i][shadow].mean()
    # A shadow pixel has a cloud at minus the shadow offset.
    dy, dx = SHADOW_OFFSET
    ys, xs = np.nonzero(shadow)
    inside = (ys - dy < 512) & (xs - dx < 512)
    assert inside.any()
    assert (qa[ys[inside] - dy, xs[inside] - dx] == QA.CLOUD).all()


def test_mostly_clear_acquisition_is_mostly_clear_but_not_spotless() -> None:
    for seed in range(4):
        spec = SceneSpec(size=512, seed=seed)
        for acq in acquisitions(spec):
            qa = acquisition_window(spec, acq, _whole(spec))["qa"]
            if acq.mostly_clear:
                assert 0.9 < (qa == QA.CLEAR).mean() < 1.0
            else:
                assert (qa == QA.CLOUD).mean() > 0.02


def test_cloud_fraction_zero_makes_every_acquisition_clear() -> None:
    spec = SceneSpec(size=256, cloud_fraction=0.0)
    for acq in acquisitions(spec):
        assert (acquisition_window(spec, acq, _whole(spec))["qa"] == QA.CLEAR).all()


# --- files ------------------------------------------------------------------------------------


def _tifs(root: Path) -> list[Path]:
    return sorted(root.glob("data/*/*.tif")) + sorted(root.glob("truth/*.tif"))


def test_every_raster_is_a_valid_cog(scene: GeneratedScene) -> None:
    tifs = _tifs(scene.root)
    assert len(tifs) == 6 * 7 + 3
    for tif in tifs:
        valid, errors, _ = cog_validate(tif, quiet=True)
        assert valid and not errors, (tif, errors)
        with rasterio.open(tif) as src:
            assert src.crs.to_epsg() == 32633
            assert src.transform == SPEC.transform
            assert (src.width, src.height) == (SPEC.size, SPEC.size)
            assert src.compression is not None and src.compression.name == "deflate"
            assert src.block_shapes == [(512, 512)]


def test_files_hold_what_the_window_functions_compute(scene: GeneratedScene) -> None:
    for path, expected in zip(
        (scene.truth_class_before, scene.truth_class_after, scene.truth_change),
        truth_window(SPEC, _whole(SPEC)),
        strict=True,
    ):
        np.testing.assert_array_equal(_read(path), expected)
    with rasterio.open(scene.truth_class_before) as src:
        assert src.nodata == 0 and src.colormap(1)[LandCover.WATER][:3] == LandCover.WATER.color
    for acq in acquisitions(SPEC)[::2]:
        arrays = acquisition_window(SPEC, acq, _whole(SPEC))
        for name, array in arrays.items():
            with rasterio.open(scene.asset_path(acq.item_id, name)) as src:
                np.testing.assert_array_equal(src.read(1), array)
                assert src.nodata == (255 if name == "qa" else 0)
                assert src.dtypes[0] == ("uint8" if name == "qa" else "uint16")
                if name != "qa":
                    assert src.scales == (SCALE,) and src.offsets == (0.0,)


def test_items_carry_projection_and_a_cloud_cover_matching_qa(scene: GeneratedScene) -> None:
    assert len(scene.items) == 6
    windows = {Epoch.BEFORE: scene.before_window, Epoch.AFTER: scene.after_window}
    west, south, east, north = scene.bbox_wgs84
    assert 16 < west < east < 17 and 49 < south < north < 49.3
    assert scene.bbox_utm == SPEC.bounds_utm
    for item in scene.items:
        props = item["properties"]
        assert props["proj:epsg"] == 32633 and props["proj:code"] == "EPSG:32633"
        assert props["proj:shape"] == [320, 320]
        assert props["proj:transform"] == [10.0, 0.0, 600000.0, 0.0, -10.0, 5450000.0]
        assert props["platform"]
        start, end = windows[Epoch(props["synthetic:epoch"])]
        assert start.isoformat()[:10] <= props["datetime"][:10] <= end.isoformat()[:10]
        assert item["bbox"] == pytest.approx(list(scene.bbox_wgs84))
        qa = _read(item["assets"]["qa"]["href"])
        assert props["eo:cloud_cover"] == pytest.approx(100 * (qa == QA.CLOUD).mean(), abs=1e-3)
        assert set(item["assets"]) == {*BAND_NAMES, "qa"}
        s2 = {"blue": "B02", "green": "B03", "red": "B04", "nir": "B08", "swir16": "B11", "swir22": "B12"}
        for key, asset in item["assets"].items():
            assert Path(asset["href"]).is_absolute() and Path(asset["href"]).is_file()
            assert asset["roles"] == ["data"]
            assert asset["type"].endswith("profile=cloud-optimized")
            (band,) = asset["raster:bands"]
            if key == "qa":
                assert band["nodata"] == 255 and band["data_type"] == "uint8"
            else:
                assert asset["eo:bands"] == [pytest.approx(asset["eo:bands"][0])]
                assert asset["eo:bands"][0]["common_name"] == key
                assert asset["eo:bands"][0]["name"] == s2[key]
                assert (band["scale"], band["offset"], band["nodata"]) == (0.0001, 0.0, 0)


def test_each_epoch_has_a_mostly_clear_acquisition_but_not_every_one_is_clear(scene: GeneratedScene) -> None:
    for epoch in Epoch:
        covers = [i["properties"]["eo:cloud_cover"] for i in scene.items_of(epoch)]
        assert len(covers) == 3 and min(covers) < 10
    assert max(i["properties"]["eo:cloud_cover"] for i in scene.items) > 5


def test_collection_ndjson_and_static_catalog_agree(scene: GeneratedScene) -> None:
    import pystac

    lines = scene.items_path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == scene.items
    collection = json.loads(scene.collection_path.read_text())
    assert collection["id"] == SPEC.collection_id
    (bbox,) = collection["extent"]["spatial"]["bbox"]
    assert bbox == pytest.approx(list(scene.bbox_wgs84))
    (interval,) = collection["extent"]["temporal"]["interval"]
    datetimes = sorted(i["properties"]["datetime"] for i in scene.items)
    assert interval == [datetimes[0], datetimes[-1]]
    assert Path(collection["assets"]["change"]["href"]) == scene.truth_change

    read = pystac.read_file(scene.catalog_dir / "collection.json")
    assert isinstance(read, pystac.Collection)
    items = list(read.get_items())
    assert sorted(i.id for i in items) == sorted(i["id"] for i in scene.items)
    assert all(i.collection_id == SPEC.collection_id for i in items)
    assert all(Path(i.assets["nir"].href) == scene.asset_path(i.id, "nir") for i in items)
    on_disk = json.loads((scene.catalog_dir / items[0].id / f"{items[0].id}.json").read_text())
    assert on_disk["properties"]["proj:epsg"] == 32633


def test_gdalinfo_reads_a_cog(scene: GeneratedScene) -> None:
    gdalinfo = shutil.which("gdalinfo")
    if gdalinfo is None:
        pytest.skip("gdalinfo is not installed")
    out = subprocess.run(
        [gdalinfo, str(scene.asset_path(scene.items[0]["id"], "red"))],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "LAYOUT=COG" in out and "32633" in out
    assert re.search(r"Offset: 0,\s*Scale:\s*0.0001", out)


def test_stackstac_stacks_the_items(scene: GeneratedScene) -> None:
    stackstac = pytest.importorskip("stackstac")
    stack = stackstac.stack(
        scene.items,
        assets=list(BAND_NAMES),
        dtype="uint16",
        rescale=False,
        fill_value=np.uint16(0),
    )
    assert stack.shape == (6, 6, 320, 320)
    assert list(stack["common_name"].values) == list(BAND_NAMES)
    first = stack.isel(time=0).sel(band="nir").values
    np.testing.assert_array_equal(first, _read(scene.items[0]["assets"]["nir"]["href"]))


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path, scene: GeneratedScene) -> None:
    # Another block size too: the files do not depend on how the scene was cut into blocks.
    again = generate_scene(dataclasses.replace(SPEC, block_size=512), tmp_path / "again")
    ours, theirs = _tifs(scene.root), _tifs(again.root)
    assert [p.relative_to(scene.root) for p in ours] == [p.relative_to(again.root) for p in theirs]
    for a, b in zip(ours, theirs, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name
    strip = str(scene.root), str(again.root)
    assert scene.items_path.read_text().replace(strip[0], "") == again.items_path.read_text().replace(
        strip[1], ""
    )

    other = generate_scene(SceneSpec(size=320, seed=4, block_size=256), tmp_path / "other")
    assert _read(other.truth_class_before).tolist() != _read(scene.truth_class_before).tolist()
    red = other.asset_path(other.items[0]["id"], "red")
    assert red.read_bytes() != scene.asset_path(scene.items[0]["id"], "red").read_bytes()


def test_existing_outputs_are_never_overwritten_by_mistake(tmp_path: Path) -> None:
    spec = SceneSpec(size=256, acquisitions_per_epoch=1)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(OutputExistsError, match="new or empty folder"):
            generate_scene(spec, foreign, overwrite=overwrite)
    assert (foreign / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in foreign.iterdir()) == ["precious.txt"]

    out = tmp_path / "scene"
    first = generate_scene(spec, out)
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        generate_scene(spec, out)
    (out / "notes.txt").write_text("mine")
    second = generate_scene(SceneSpec(size=256, acquisitions_per_epoch=1, seed=9), out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    assert {i["id"] for i in second.items} == {p.name for p in (out / "data").iterdir()}
    assert json.loads((out / "scene.json").read_text())["complete"] is True
    assert first.items_path == second.items_path


def test_a_scene_of_an_earlier_generator_version_is_made_again(tmp_path: Path) -> None:
    spec = SceneSpec(size=256, acquisitions_per_epoch=1)
    out = tmp_path / "scene"
    assert not scene_is_current(spec, out)
    ensure_scene(spec, out)
    assert scene_is_current(spec, out) and not scene_is_current(dataclasses.replace(spec, seed=1), out)
    marker = out / "scene.json"
    old = json.loads(marker.read_text())
    del old["version"]  # as written before versions were recorded
    marker.write_text(json.dumps(old))
    assert not scene_is_current(spec, out)
    ensure_scene(spec, out)
    assert scene_is_current(spec, out)


def test_generate_scene_wants_a_spec(tmp_path: Path) -> None:
    with pytest.raises(SceneError, match="SceneSpec"):
        generate_scene({"size": 256}, tmp_path / "x")  # type: ignore[arg-type]
