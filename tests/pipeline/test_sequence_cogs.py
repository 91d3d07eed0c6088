"""COGs of a sequence cube's date layers: valid, equal to the cube, coloured, dated, and safe to redo."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr
from affine import Affine
from rio_cogeo.cogeo import cog_validate
from sequence_cubes import CRS, TARGETS, build_sequence_cube, windows

from pipeline.errors import PublishError
from pipeline.sequence.cogs import date_colormap, ramp_colour, target_layer_name, write_date_layer_cogs
from pipeline.sequence.cube import DATE_LAYERS, DATE_NODATA

WINDOWS = 5


@pytest.fixture(scope="module")
def cube(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # 530 x 520 px in 256 px chunks: the COG is written in several 512 px windows and has an overview.
    return build_sequence_cube(tmp_path_factory.mktemp("sequence"), WINDOWS, (530, 520), 256)


@pytest.fixture(scope="module")
def cogs(cube: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_date_layer_cogs(cube, tmp_path_factory.mktemp("cogs"))


def _expected(cube: Path, name: str) -> np.ndarray:
    if name in DATE_LAYERS:
        return np.asarray(zarr.open_array(str(cube), path=name, mode="r")[...])
    index = [target_layer_name(t) for t in TARGETS].index(name)
    return np.asarray(zarr.open_array(str(cube), path="first_target_change", mode="r")[index])


def test_one_valid_cog_per_date_layer_and_target_equal_to_the_cube(cube: Path, cogs: dict[str, Path]) -> None:
    assert list(cogs) == [*DATE_LAYERS, "first_target_change_building", "first_target_change_water"]
    for name, path in cogs.items():
        assert path.name == f"{name}.tif"
        valid, errors, _ = cog_validate(str(path), quiet=True)
        assert valid, (name, errors)
        with rasterio.open(path) as cog:
            assert cog.crs == rasterio.crs.CRS.from_user_input(CRS)
            assert cog.transform == Affine(10.0, 0.0, 400_000.0, 0.0, -10.0, 5_000_000.0)
            assert cog.nodata == DATE_NODATA and cog.dtypes[0] == "uint16"
            assert cog.overviews(1) == [2]
            values = cog.read(1)
        expected = _expected(cube, name)
        np.testing.assert_array_equal(values, expected)
        # The scene's events are there: dates 2..WINDOWS, 0 somewhere, nodata on the bottom row.
        assert (values[-1] == DATE_NODATA).all() and (values == 0).any() and values.max(initial=0) > 0


def test_the_windows_dates_are_in_the_tags_and_the_description(cogs: dict[str, Path]) -> None:
    dates = windows(WINDOWS)
    with rasterio.open(cogs["first_change"]) as cog:
        tags = cog.tags()
        assert [tags[f"WINDOW_{k}"] for k in range(1, WINDOWS + 1)] == dates
        assert json.loads(tags["windows"]) == dates and tags["layer"] == "first_change"
        assert "WINDOW_k" in (cog.descriptions[0] or "")
    with rasterio.open(cogs["first_target_change_water"]) as cog:
        assert cog.tags()["target"] == "water" and "water" in (cog.descriptions[0] or "")


def test_the_colour_table_ramps_over_the_windows_with_no_change_and_nodata_apart(
    cogs: dict[str, Path],
) -> None:
    with rasterio.open(cogs["first_change"]) as cog:
        table = cog.colormap(1)
    rgb = {value: colour[:3] for value, colour in table.items()}  # GDAL reads nodata's alpha as 0
    ramp = [rgb[k] for k in range(1, WINDOWS + 1)]
    assert rgb[0] == (255, 255, 255) and rgb[DATE_NODATA] == (0, 0, 0)
    assert len(set(ramp)) == WINDOWS and rgb[0] not in ramp and rgb[DATE_NODATA] not in ramp
    assert all(rgb[value] == colour[:3] for value, colour in date_colormap(WINDOWS).items())
    with rasterio.open(cogs["n_changes"]) as cog:  # counts ramp over the pairs
        assert cog.colormap(1)[WINDOWS - 1] == (*ramp_colour(WINDOWS - 1, WINDOWS - 1), 255)


def test_writing_again_gives_the_same_bytes(cube: Path, cogs: dict[str, Path], tmp_path: Path) -> None:
    again = write_date_layer_cogs(cube, tmp_path)
    assert {n: p.read_bytes() for n, p in again.items()} == {n: p.read_bytes() for n, p in cogs.items()}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in again.values())


def test_a_folder_that_is_no_sequence_cube_is_refused_and_earlier_cogs_are_kept(tmp_path: Path) -> None:
    earlier = tmp_path / "cogs" / "first_change.tif"
    earlier.parent.mkdir()
    earlier.write_bytes(b"an earlier COG")
    (tmp_path / "not_a_cube").mkdir()
    with pytest.raises(PublishError, match="cannot open .* as a sequence cube"):
        write_date_layer_cogs(tmp_path / "not_a_cube", earlier.parent)
    with pytest.raises(PublishError, match="run the sequence first"):
        write_date_layer_cogs(tmp_path / "missing", earlier.parent)
    assert earlier.read_bytes() == b"an earlier COG" and len(list(earlier.parent.iterdir())) == 1


def test_date_layers_of_other_windows_than_the_cube_are_refused(tmp_path: Path) -> None:
    cube = build_sequence_cube(tmp_path, 3)
    zarr.open_array(str(cube), path="first_change", mode="r+").attrs["windows"] = windows(2)
    with pytest.raises(PublishError, match="run the sequence again"):
        write_date_layer_cogs(cube, tmp_path / "cogs")
    assert not (tmp_path / "cogs").exists()


def test_the_ramp_runs_from_dark_to_light_and_refuses_values_off_it() -> None:
    colours = [ramp_colour(v, 12) for v in range(1, 13)]
    assert colours[0] == (68, 1, 84) and colours[-1] == (253, 231, 37) and len(set(colours)) == 12
    assert ramp_colour(1, 1) == (68, 1, 84)
    with pytest.raises(ValueError, match="outside the ramp"):
        ramp_colour(0, 5)
    assert target_layer_name("bare soil/rock") == "first_target_change_bare_soil_rock"
