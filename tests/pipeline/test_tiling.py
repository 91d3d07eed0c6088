"""The global tile grid and blending: anchored at the origin, positive windows, partition of unity."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import JobSpecError
from pipeline.tiling import (
    BlendAccumulator,
    Blender,
    RampBlender,
    Tile,
    TileGrid,
    Window,
    axis_starts,
    batched,
    ramp,
)
from seg2change_core.errors import ModelError


def test_axis_starts_are_anchored_at_zero_and_the_last_tile_ends_at_the_edge() -> None:
    assert axis_starts(1000, 128, 96) == (0, 96, 192, 288, 384, 480, 576, 672, 768, 864, 872)
    assert axis_starts(128, 128, 96) == (0,)
    assert axis_starts(50, 128, 96) == (0,)
    assert axis_starts(224, 128, 96) == (0, 96)


def test_grid_tiles_cover_the_cube_with_full_size_tiles() -> None:
    grid = TileGrid(300, 250, 64, 16)
    covered = np.zeros((300, 250), dtype=int)
    for tile in grid:
        assert (tile.window.height, tile.window.width) == (64, 64)
        covered[tile.window.slices] += 1
    assert covered.min() >= 1
    assert len(grid) == grid.shape[0] * grid.shape[1]


def test_small_cube_gets_one_clipped_tile_flat_everywhere() -> None:
    grid = TileGrid(40, 30, 64, 16)
    (tile,) = list(grid)
    assert tile.window == Window(0, 40, 0, 30)
    assert tile.borders == (True, True, True, True)
    assert np.all(RampBlender(16).window(tile) == 1.0)


def test_tiles_intersecting_and_halo_match_brute_force() -> None:
    grid = TileGrid(700, 530, 96, 24)
    for block in (Window(0, 128, 0, 128), Window(256, 384, 384, 530), Window(640, 700, 100, 228)):
        expected = [t for t in grid if t.window.intersection(block) is not None]
        assert grid.tiles_intersecting(block) == expected
        halo = grid.halo(block)
        assert halo.y0 == min(t.window.y0 for t in expected)
        assert halo.x1 == max(t.window.x1 for t in expected)
        assert 0 <= halo.y0 <= block.y0 and block.y1 <= halo.y1 <= 700


@pytest.mark.parametrize("profile", ["cosine", "linear"])
def test_ramps_are_positive_and_mirror_ramps_sum_to_one(profile: str) -> None:
    w = ramp(64, 16, profile, flat_start=False, flat_end=False)  # type: ignore[arg-type]
    assert w.min() > 0 and w.max() == 1.0
    np.testing.assert_allclose(w[:16] + w[-16:], 1.0, rtol=0, atol=1e-15)
    assert np.all(np.diff(w[:16]) > 0)
    flat = ramp(64, 16, profile, flat_start=True, flat_end=False)  # type: ignore[arg-type]
    assert np.all(flat[:48] == 1.0) and flat[-1] < 0.1


def test_unknown_profile_and_large_overlap_are_refused() -> None:
    with pytest.raises(ModelError, match="'cosine' or 'linear'"):
        ramp(64, 16, "gaussian", flat_start=False, flat_end=False)  # type: ignore[arg-type]
    with pytest.raises(JobSpecError, match="lower the overlap"):
        TileGrid(100, 100, 64, 40)


def test_windows_never_vanish_at_edges_and_corners() -> None:
    grid = TileGrid(200, 170, 64, 16)
    blender = RampBlender(16, "cosine")
    assert isinstance(blender, Blender)
    weight = np.zeros((200, 170))
    for tile in grid:
        w = blender.window(tile)
        assert w.min() > 0
        weight[tile.window.slices] += w
    assert weight.min() > 0.5  # cube corners and edges get full weight
    assert weight[0, 0] == 1.0 and weight[-1, -1] == 1.0 and weight[0, -1] == 1.0


def _identity_blend(image: np.ndarray, grid: TileGrid, blender: RampBlender, target: Window) -> np.ndarray:
    acc = BlendAccumulator(target, image.shape[0], blender)
    for tile in grid.tiles_intersecting(target):
        acc.add(tile, image[(slice(None), *tile.window.slices)])
    return acc.result()


@pytest.mark.parametrize("profile", ["cosine", "linear"])
@pytest.mark.parametrize(
    ("shape", "tile", "overlap"), [((300, 251), 64, 16), ((97, 333), 48, 24), ((50, 40), 64, 8)]
)
def test_partition_of_unity_blending_identity_reproduces_input_exactly(
    profile: str, shape: tuple[int, int], tile: int, overlap: int
) -> None:
    rng = np.random.default_rng(1)
    image = rng.random((3, *shape)).astype(np.float32)
    grid = TileGrid(*shape, tile, overlap)
    blended = _identity_blend(image, grid, RampBlender(overlap, profile), Window(0, shape[0], 0, shape[1]))  # type: ignore[arg-type]
    assert blended.dtype == np.float32
    np.testing.assert_array_equal(blended, image)


def test_blocks_blend_to_the_same_bits_as_the_whole_cube() -> None:
    rng = np.random.default_rng(2)
    shape = (310, 270)
    grid = TileGrid(*shape, 64, 16)
    blender = RampBlender(16, "cosine")
    # A "model" whose output differs per tile, so the blend really mixes different values.
    per_tile = {(t.row, t.col): rng.random((2, 64, 64)) for t in grid}

    def blend(target: Window) -> np.ndarray:
        acc = BlendAccumulator(target, 2, blender)
        for tile in grid.tiles_intersecting(target):
            acc.add(tile, per_tile[(tile.row, tile.col)])
        return acc.result()

    whole = blend(Window(0, shape[0], 0, shape[1]))
    for block in (50, 100, 128):
        pieces = np.empty_like(whole)
        for y0 in range(0, shape[0], block):
            for x0 in range(0, shape[1], block):
                window = Window(y0, min(y0 + block, shape[0]), x0, min(x0 + block, shape[1]))
                pieces[(slice(None), *window.slices)] = blend(window)
        np.testing.assert_array_equal(pieces, whole)


def test_accumulator_refuses_uncovered_pixels_and_batches_split_evenly() -> None:
    grid = TileGrid(100, 100, 64, 16)
    acc = BlendAccumulator(Window(0, 100, 0, 100), 1, RampBlender(16))
    acc.add(grid.tile(0, 0), np.ones((1, 64, 64)))
    with pytest.raises(ValueError, match="no tile covered"):
        acc.result()
    tiles = list(grid)
    assert [len(b) for b in batched(tiles, 3)] == [3, 1]


class _JitterBlender:
    """Positive windows that are nowhere exactly 1: one-tile cells cannot just copy."""

    name = "jitter"

    def __init__(self) -> None:
        self._rng = np.random.default_rng(5)
        self._windows: dict[tuple[int, int], np.ndarray] = {}

    def window(self, tile: Tile) -> np.ndarray:
        key = (tile.row, tile.col)
        if key not in self._windows:
            self._windows[key] = self._rng.uniform(0.3, 1.7, (tile.window.height, tile.window.width))
        return self._windows[key]


@pytest.mark.parametrize("blender", [RampBlender(24, "cosine"), RampBlender(24, "linear"), _JitterBlender()])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_blend_told_its_tiles_gives_the_bits_of_summing_every_pixel(blender: Blender, dtype: type) -> None:
    """Cells one tile covers take its values without the sums; the bits must not change."""
    rng = np.random.default_rng(3)
    grid = TileGrid(300, 270, 96, 24)  # the last tiles are shifted: overlaps wider than the ramps
    per_tile = {(t.row, t.col): rng.random((3, 96, 96)).astype(dtype) for t in grid}
    if dtype is np.float64:  # halfway between float32 neighbours: where w * p / w != p would show
        for key, values in per_tile.items():
            low = values.astype(np.float32)
            per_tile[key] = (low.astype(np.float64) + np.nextafter(low, np.float32(2)).astype(np.float64)) / 2
    for target in (
        Window(0, 300, 0, 270),
        Window(64, 192, 64, 192),
        Window(200, 300, 150, 270),
        Window(10, 11, 5, 7),
    ):
        tiles = grid.tiles_intersecting(target)
        planned = BlendAccumulator(target, 3, blender, tiles)
        summed = BlendAccumulator(target, 3, blender)
        for tile in tiles:
            planned.add(tile, per_tile[(tile.row, tile.col)])
            summed.add(tile, per_tile[(tile.row, tile.col)])
        np.testing.assert_array_equal(planned.result(), summed.result())


def test_a_planned_blend_refuses_missing_and_unplanned_tiles() -> None:
    grid = TileGrid(200, 200, 96, 24)
    target = Window(0, 200, 0, 200)
    tiles = grid.tiles_intersecting(target)
    missing = BlendAccumulator(target, 1, RampBlender(24), tiles)
    for tile in tiles[:-1]:
        missing.add(tile, np.ones((1, 96, 96)))
    with pytest.raises(ValueError, match="no tile covered"):
        missing.result()
    unplanned = BlendAccumulator(target, 1, RampBlender(24), tiles[:1])
    with pytest.raises(ValueError, match="not among the tiles"):
        unplanned.add(tiles[1], np.ones((1, 96, 96)))
    uncovered = BlendAccumulator(target, 1, RampBlender(24), tiles[:1])
    uncovered.add(tiles[0], np.ones((1, 96, 96)))
    with pytest.raises(ValueError, match="no tile covered"):
        uncovered.result()
