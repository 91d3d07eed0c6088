"""The sequence quick-looks: a strip PNG of every window and pair, and a GIF with a frame per pair."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image
from sequence_cubes import CLASSES, build_sequence_cube

from pipeline.errors import PublishError
from pipeline.publish.legend import change_colormap, class_colormap
from pipeline.sequence.cogs import date_colormap, read_sequence_grid
from pipeline.sequence.cube import DATE_NODATA
from pipeline.sequence.quicklook import (
    ANIMATION_NAME,
    STRIP_NAME,
    compose_date_map,
    compose_frame,
    compose_strip,
    draw_area_chart,
    read_panels,
    window_labels,
    write_sequence_quicklooks,
)

WINDOWS = 5


@pytest.fixture(scope="module")
def cube(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_sequence_cube(tmp_path_factory.mktemp("sequence"), WINDOWS)


@pytest.fixture(scope="module")
def written(cube: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_sequence_quicklooks(cube, tmp_path_factory.mktemp("quicklooks"))


def _colours(codes: np.ndarray, table: dict[int, tuple[int, int, int, int]]) -> np.ndarray:
    lut = np.zeros((256, 3), dtype=np.uint8)
    for code, colour in table.items():
        lut[code] = colour[:3]
    return lut[codes]


def _panel(image: np.ndarray, origin: tuple[int, int], expected: np.ndarray, scale: int) -> None:
    top, left = origin
    big = np.repeat(np.repeat(expected, scale, axis=0), scale, axis=1)
    np.testing.assert_array_equal(image[top : top + big.shape[0], left : left + big.shape[1]], big)


def test_the_strip_shows_each_windows_class_and_each_pairs_change(
    cube: Path, written: dict[str, Path]
) -> None:
    assert written == {"strip": written["strip"], "animation": written["animation"]}
    assert written["strip"].name == STRIP_NAME
    strip = np.asarray(Image.open(written["strip"]).convert("RGB"))
    grid = read_sequence_grid(cube)
    panels = read_panels(grid)
    figure = compose_strip(grid, panels)
    np.testing.assert_array_equal(strip, figure.image)
    scale = panels.geometry.scale
    assert panels.geometry.stride == 1 and scale > 1  # the 40 x 48 px scene is enlarged
    classes = np.asarray(zarr.open_array(str(cube), path="class", mode="r")[...])
    change = np.asarray(zarr.open_array(str(cube), path="change", mode="r")[...])
    assert sorted(figure.panels) == sorted(
        [f"class {k}" for k in range(1, WINDOWS + 1)] + [f"change {k}" for k in range(1, WINDOWS)]
    )
    for k in range(1, WINDOWS + 1):
        _panel(strip, figure.panels[f"class {k}"], _colours(classes[k - 1], class_colormap(CLASSES)), scale)
    for k in range(1, WINDOWS):
        _panel(strip, figure.panels[f"change {k}"], _colours(change[k - 1], change_colormap()), scale)
        assert (change[k - 1] == 1).any()
    # Columns in window order, left to right, change under class.
    lefts = [figure.panels[f"class {k}"][1] for k in range(1, WINDOWS + 1)]
    assert lefts == sorted(lefts) and figure.panels["change 2"][1] == lefts[2]  # pair 2 ends in window 3
    assert figure.panels["change 2"][0] > figure.panels["class 3"][0]


def test_the_gif_has_a_frame_per_pair_with_both_classes_and_the_change(
    cube: Path, written: dict[str, Path]
) -> None:
    assert written["animation"].name == ANIMATION_NAME
    grid = read_sequence_grid(cube)
    panels = read_panels(grid)
    with Image.open(written["animation"]) as gif:
        assert gif.n_frames == WINDOWS - 1 and gif.info["loop"] == 0
        for pair in range(1, WINDOWS):
            gif.seek(pair - 1)
            frame = np.asarray(gif.convert("RGB"))
            np.testing.assert_array_equal(frame, compose_frame(grid, panels, pair).image)  # exact palette
    figure = compose_frame(grid, panels, 2)
    assert sorted(figure.panels) == ["change 2", "class 2", "class 3"]
    with pytest.raises(PublishError, match="pair 5 does not exist"):
        compose_frame(grid, panels, WINDOWS)


def test_writing_again_gives_the_same_bytes(cube: Path, written: dict[str, Path], tmp_path: Path) -> None:
    again = write_sequence_quicklooks(cube, tmp_path)
    assert {k: p.read_bytes() for k, p in again.items()} == {k: p.read_bytes() for k, p in written.items()}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([STRIP_NAME, ANIMATION_NAME])


def test_a_large_area_is_read_with_a_stride(tmp_path: Path) -> None:
    cube = build_sequence_cube(tmp_path, 3, (600, 520), 256)
    panels = read_panels(read_sequence_grid(cube))
    assert panels.geometry.stride == 3 and panels.classes[0].shape == (200, 174, 3)


def test_no_sequence_cube_is_refused_and_earlier_files_are_kept(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / STRIP_NAME).write_bytes(b"earlier")
    with pytest.raises(PublishError, match="run the sequence first"):
        write_sequence_quicklooks(tmp_path / "missing.zarr", out)
    assert (out / STRIP_NAME).read_bytes() == b"earlier" and len(list(out.iterdir())) == 1


def test_window_labels_are_start_dates_with_the_time_when_two_share_a_day() -> None:
    months = [
        "2024-01-01T00:00:00+00:00/2024-02-01T00:00:00+00:00",
        "2024-02-01T00:00:00+00:00/2024-03-01T00:00:00+00:00",
    ]
    assert window_labels(months) == ["2024-01-01", "2024-02-01"]
    halves = [
        "2024-01-01T00:00:00+00:00/2024-01-01T12:00:00+00:00",
        "2024-01-01T12:00:00+00:00/2024-01-02T00:00:00+00:00",
    ]
    assert window_labels(halves) == ["2024-01-01 00:00", "2024-01-01 12:00"]


def test_the_date_map_colours_each_first_change_as_its_cog(cube: Path) -> None:
    grid = read_sequence_grid(cube)
    figure = compose_date_map(grid)
    scale = read_panels(grid).geometry.scale
    first = np.asarray(zarr.open_array(str(cube), path="first_change", mode="r")[...])
    table = {value: colour for value, colour in date_colormap(WINDOWS).items()}
    expected = np.zeros((*first.shape, 3), dtype=np.uint8)  # nodata black
    for value in np.unique(first[first != DATE_NODATA]).tolist():
        expected[first == value] = table[value][:3]
    _panel(figure.image, figure.panels["first change"], expected, scale)
    water = compose_date_map(grid, "water")
    assert not np.array_equal(water.image, figure.image)
    with pytest.raises(PublishError, match="target 'forest' is not in the sequence cube"):
        compose_date_map(grid, "forest")


def test_the_area_chart_draws_a_bar_per_period_and_series_in_proportion() -> None:
    red, blue = (220, 40, 40), (30, 120, 180)
    chart = draw_area_chart(
        ["2024-02-01", "2024-03-01"],
        {"a": [4.0, 2.0], "b": [0.0, 1.0]},
        {"a": red, "b": blue},
        "ha",
        height=200,
    )
    heights = {}
    for name, colour in (("a", red), ("b", blue)):
        mask = (chart == colour).all(axis=-1)
        columns = np.flatnonzero(mask.any(axis=0))
        runs = np.split(columns, np.flatnonzero(np.diff(columns) > 1) + 1)
        legend_row = int(np.flatnonzero(mask.any(axis=1)).max())  # the swatch is lowest
        heights[name] = [int(mask[: legend_row - 20, run].any(axis=1).sum()) for run in runs if run.size > 20]
    assert heights == {"a": [200, 100], "b": [50]}
    with pytest.raises(PublishError, match="one value per period"):
        draw_area_chart(["p1"], {"a": [1.0, 2.0]}, {"a": red}, "ha")
    with pytest.raises(PublishError, match="not negative"):
        draw_area_chart(["p1"], {"a": [-1.0]}, {"a": red}, "ha")
