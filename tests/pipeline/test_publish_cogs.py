"""COGs of the change cube: valid, pixel-for-pixel equal to the Zarr, georeferenced as GDAL sees it.

A small input cube (changes, clouds, a nodata row) goes through the real engine (classical CVA
baseline + spectral segmenter, no weights, one in-process worker); its change cube has 128-px
chunks, so the 512-px COG tiles span several chunks and the edge tiles are partial.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr
from affine import Affine
from engine_inputs import ORIGIN, run_small_engine, write_patch_cube
from pyproj import CRS
from rio_cogeo.cogeo import cog_validate

from pipeline.change_cube import BlockGrid, ChangeCubeLayout, create_change_cube
from pipeline.errors import PublishError
from pipeline.publish import COG_LAYERS, ChangeCubeInfo, describe_change_cube, write_cog, write_cogs
from pipeline.publish.cogs import sidecar_path
from pipeline.spec import JobSpec

# The input cube's band/epoch names are fixed-width strings on purpose (see pipeline.cube).
pytestmark = pytest.mark.filterwarnings("ignore:The data type .* does not have a Zarr V3 specification")

HEIGHT, WIDTH = 300, 260


def make_cube(path: Path) -> Path:
    """A two-date cube with class patches (some changed), a cloud on each date and a nodata row."""
    clouds = ((0, slice(90, 130), slice(60, 120)), (1, slice(150, 180), slice(130, 220)))
    return write_patch_cube(path, HEIGHT, WIDTH, chunk=128, change_fraction=0.25, gaps=clouds)


def make_job(out: Path) -> JobSpec:
    return JobSpec.build(
        aoi={"bbox": (400_000, 4_997_000, 402_600, 5_000_000), "crs": "EPSG:32633"},
        before="2023-06-01/2023-06-30",
        after="2024-06-01/2024-06-30",
        catalog="https://stac.example.com/v1",
        collections="sentinel-2-l2a",
        grid={"crs": "EPSG:32633"},
        output=str(out),
    )


@pytest.fixture(scope="module")
def change_cube(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("engine")
    cube = make_cube(tmp / "input_cube.zarr")
    result = run_small_engine(make_job(tmp), cube, tmp / "change_cube.zarr")
    return result.path


@pytest.fixture(scope="module")
def info(change_cube: Path) -> ChangeCubeInfo:
    return describe_change_cube(change_cube)


@pytest.fixture(scope="module")
def cogs(info: ChangeCubeInfo, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("cogs")
    return {layer: c.path for layer, c in write_cogs(info, folder).items()}


def zarr_layer(info: ChangeCubeInfo, layer: str) -> np.ndarray:
    return np.asarray(zarr.open_array(str(info.path), path=layer, mode="r")[...])


def assert_cog_equals_zarr(path: Path, info: ChangeCubeInfo, layer: str) -> None:
    expected = zarr_layer(info, layer)
    with rasterio.open(path) as src:
        data = src.read(1)
        assert src.dtypes[0] == str(expected.dtype), layer
    if expected.dtype.kind == "f":
        np.testing.assert_array_equal(np.isnan(data), np.isnan(expected), err_msg=layer)
    np.testing.assert_array_equal(data, expected, err_msg=layer)  # NaNs compare equal here


def test_the_engine_cube_is_not_trivial(info: ChangeCubeInfo) -> None:
    """The pixel comparisons below mean something only if the layers vary and hold nodata."""
    assert (info.height, info.width, info.chunk) == (HEIGHT, WIDTH, 128)
    change = zarr_layer(info, "change")
    assert {0, 1, 255} <= set(np.unique(change).tolist())
    assert len(np.unique(zarr_layer(info, "class_before"))) >= 4
    transition = zarr_layer(info, "transition")
    assert (transition < 65534).sum() > 1000 and (transition == 65535).sum() >= WIDTH


def test_cogs_are_valid_and_equal_the_zarr_pixel_for_pixel(
    cogs: dict[str, Path], info: ChangeCubeInfo
) -> None:
    assert set(cogs) == set(COG_LAYERS)
    for layer, path in cogs.items():
        valid, errors, _ = cog_validate(str(path), quiet=True)
        assert valid, (layer, errors)
        assert_cog_equals_zarr(path, info, layer)


def test_cogs_carry_grid_nodata_tiling_compression_and_tags(
    cogs: dict[str, Path], info: ChangeCubeInfo
) -> None:
    for layer, path in cogs.items():
        spec = COG_LAYERS[layer]
        with rasterio.open(path) as src:
            assert CRS.from_user_input(src.crs).to_epsg() == 32633
            assert src.transform == Affine(10, 0, ORIGIN[0], 0, -10, ORIGIN[1])
            assert (src.height, src.width) == (HEIGHT, WIDTH)
            if np.isnan(spec.nodata):
                assert src.nodata is not None and np.isnan(src.nodata)
            else:
                assert src.nodata == spec.nodata
            assert src.block_shapes == [(512, 512)]
            structure = src.tags(ns="IMAGE_STRUCTURE")
            assert structure["COMPRESSION"] == "DEFLATE" and structure["LAYOUT"] == "COG"
            assert structure["PREDICTOR"] == ("3" if layer == "change_probability" else "2")
            tags = src.tags()
            assert tags["layer"] == layer and tags["seg2change_fingerprint"] == info.fingerprint
            assert tags["OVERVIEW_RESAMPLING"] == spec.resampling.upper()
    with rasterio.open(cogs["transition"]) as src:
        assert json.loads(src.tags()["classes"]) == list(info.classes)


def test_an_all_zero_cog_is_valid_but_fails_the_pixel_check(
    cogs: dict[str, Path], info: ChangeCubeInfo, tmp_path: Path
) -> None:
    """The field notes' trap: cog_validate alone passes an empty file; the pixel check does not."""
    with rasterio.open(cogs["class_before"]) as src:
        profile = src.profile
    staged = tmp_path / "zeros.tif"
    with rasterio.open(staged, "w", **profile) as dst:
        dst.write(np.zeros((1, HEIGHT, WIDTH), dtype="uint8"))
    from rio_cogeo.cogeo import cog_translate
    from rio_cogeo.profiles import cog_profiles

    empty = tmp_path / "empty_cog.tif"
    cog_translate(str(staged), str(empty), cog_profiles.get("deflate"), quiet=True)
    assert cog_validate(str(empty), quiet=True)[0]
    with pytest.raises(AssertionError):
        assert_cog_equals_zarr(empty, info, "class_before")


def test_a_cog_that_comes_out_empty_is_refused_and_the_earlier_file_kept(
    info: ChangeCubeInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipeline.publish.cogs as cogs_module

    good = write_cog(info, "class_after", tmp_path / "class_after.tif").path.read_bytes()
    real = cogs_module.cog_translate

    def empty_translate(source: str, dst: str, profile: dict[str, object], **kwargs: object) -> None:
        zeros = Path(dst).with_name("zeros.tif")
        with rasterio.open(source) as src:
            meta = src.profile
        with rasterio.open(zeros, "w", **meta) as out:
            out.write(np.zeros((1, meta["height"], meta["width"]), dtype=meta["dtype"]))
        real(str(zeros), dst, profile, **kwargs)  # type: ignore[arg-type]
        zeros.unlink()

    monkeypatch.setattr(cogs_module, "cog_translate", empty_translate)
    with pytest.raises(PublishError, match="differs from the change cube"):
        write_cog(info, "class_after", tmp_path / "class_after.tif")
    assert (tmp_path / "class_after.tif").read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["class_after.tif", "class_after.tif.aux.xml"]


def test_overviews_average_the_probability_and_pick_classes(info: ChangeCubeInfo, tmp_path: Path) -> None:
    probability = write_cog(info, "change_probability", tmp_path / "p.tif", overview_level=2)
    classes = write_cog(info, "class_before", tmp_path / "c.tif", overview_level=2)
    assert probability.overviews == classes.overviews == (2, 4)
    with rasterio.open(probability.path) as src:
        level = src.read(1, out_shape=(HEIGHT // 2, WIDTH // 2))
    blocks = zarr_layer(info, "change_probability").reshape(HEIGHT // 2, 2, WIDTH // 2, 2)
    with np.errstate(invalid="ignore"), pytest.warns(RuntimeWarning, match="Mean of empty slice"):
        mean = np.nanmean(blocks, axis=(1, 3))
    np.testing.assert_allclose(level, mean, rtol=0, atol=1e-6, equal_nan=True)
    with rasterio.open(classes.path) as src:
        level = src.read(1, out_shape=(HEIGHT // 2, WIDTH // 2))
    blocks = zarr_layer(info, "class_before").reshape(HEIGHT // 2, 2, WIDTH // 2, 2)
    # Nearest never invents a value: each overview pixel is one of its 2x2 source pixels.
    assert ((blocks == level[:, None, :, None]).any(axis=(1, 3))).all()


def test_gdalinfo_reads_crs_and_extent(cogs: dict[str, Path]) -> None:
    gdalinfo = shutil.which("gdalinfo")
    if gdalinfo is None:
        pytest.skip("the GDAL command-line tools are not installed (apt-get install gdal-bin)")
    for layer in ("change_probability", "transition"):
        doc = json.loads(
            subprocess.run([gdalinfo, "-json", str(cogs[layer])], check=True, capture_output=True).stdout
        )
        assert CRS.from_wkt(doc["coordinateSystem"]["wkt"]).to_epsg() == 32633
        assert doc["size"] == [WIDTH, HEIGHT]
        corners = doc["cornerCoordinates"]
        assert corners["upperLeft"] == pytest.approx([ORIGIN[0], ORIGIN[1]])
        assert corners["lowerRight"] == pytest.approx([ORIGIN[0] + 10 * WIDTH, ORIGIN[1] - 10 * HEIGHT])
        assert doc["geoTransform"] == pytest.approx([ORIGIN[0], 10, 0, ORIGIN[1], 0, -10])
        band = doc["bands"][0]
        assert band["block"] == [512, 512]
        if layer == "transition":
            assert band["noDataValue"] == 65535 and band["type"] == "UInt16"
        else:
            assert band["noDataValue"] == "NaN" and band["type"] == "Float32"


CODED = ("change", "class_before", "class_after", "transition")


def expected_categories(layer: str, classes: tuple[str, ...]) -> list[str]:
    if layer == "change":
        return ["unchanged", "changed"]
    if layer in ("class_before", "class_after"):
        return list(classes)
    k = len(classes)
    return [
        f"changed, class unchanged ({classes[a]})" if a == b else f"{classes[a]} -> {classes[b]}"
        for a in range(k)
        for b in range(k)
    ]


def test_coded_cogs_carry_a_colour_table_and_category_names(
    cogs: dict[str, Path], info: ChangeCubeInfo
) -> None:
    classes = info.classes
    assert classes == ("background", "water", "forest", "building", "bare soil")
    for layer in CODED:
        with rasterio.open(cogs[layer]) as src:
            colormap = src.colormap(1)
        sidecar = ET.parse(sidecar_path(cogs[layer]))
        names = [c.text or "" for c in sidecar.iterfind("PAMRasterBand/CategoryNames/Category")]
        assert names == expected_categories(layer, classes), layer
        assert len({colormap[code][:3] for code in range(len(names))}) > 1, layer
    with rasterio.open(cogs["class_before"]) as src:
        colormap = src.colormap(1)
    # The truth rasters' palette for the classes it knows: water blue, forest green, building red.
    assert colormap[1][:3] == (31, 120, 180) and colormap[2][:3] == (27, 94, 32)
    assert colormap[3][:3] == (220, 40, 40)
    with rasterio.open(cogs["transition"]) as src:
        colormap = src.colormap(1)
    assert colormap[0][:3] == colormap[6][:3] == (128, 128, 128)  # same-class changes grey
    assert colormap[1 * 5 + 3][:3] == (220, 40, 40)  # water -> building: the colour of building
    assert colormap[65534][:3] == (255, 255, 255)  # unchanged white
    with rasterio.open(cogs["change_probability"]) as src, pytest.raises(ValueError):
        src.colormap(1)
    assert not sidecar_path(cogs["change_probability"]).exists()


def test_gdalinfo_shows_colour_tables_and_categories(cogs: dict[str, Path], info: ChangeCubeInfo) -> None:
    gdalinfo = shutil.which("gdalinfo")
    if gdalinfo is None:
        pytest.skip("the GDAL command-line tools are not installed (apt-get install gdal-bin)")
    for layer in CODED:
        text = subprocess.run([gdalinfo, str(cogs[layer])], check=True, capture_output=True, text=True).stdout
        assert "Color Table (RGB with" in text, layer
        assert "Categories:" in text, layer
        band = json.loads(
            subprocess.run([gdalinfo, "-json", str(cogs[layer])], check=True, capture_output=True).stdout
        )["bands"][0]
        assert band["colorInterpretation"] == "Palette", layer
        assert band["categories"] == expected_categories(layer, info.classes), layer


def test_writing_again_replaces_only_that_file(info: ChangeCubeInfo, tmp_path: Path) -> None:
    neighbour = tmp_path / "notes.txt"
    neighbour.write_text("kept")
    first = write_cog(info, "change", tmp_path / "change.tif")
    before = first.path.read_bytes()
    second = write_cog(info, "change", tmp_path / "change.tif")
    assert second.path.read_bytes() == before
    assert second.sidecar is not None and second.sidecar.name == "change.tif.aux.xml"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["change.tif", "change.tif.aux.xml", "notes.txt"]
    assert neighbour.read_text() == "kept"


def test_refusals_name_the_fix(info: ChangeCubeInfo, tmp_path: Path) -> None:
    with pytest.raises(PublishError, match="not published as a COG"):
        write_cog(info, "target_change", tmp_path / "t.tif")
    with pytest.raises(PublishError, match="does not exist; run the inference"):
        describe_change_cube(tmp_path / "missing.zarr")
    partial = tmp_path / "partial.zarr"
    create_change_cube(
        partial,
        ChangeCubeLayout(BlockGrid(64, 64, 64), ("a", "b"), ("b",)),
        y=np.arange(64.0),
        x=np.arange(64.0),
        crs=CRS.from_epsg(32633),
        transform=Affine(10, 0, 0, 0, -10, 640),
        attrs={"fingerprint": "x"},
    )
    with pytest.raises(PublishError, match="incomplete"):
        describe_change_cube(partial)
