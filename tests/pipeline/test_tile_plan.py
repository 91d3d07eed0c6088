"""The tile plan: every tile computed once per strip, every block given exactly the tiles it blends."""

from __future__ import annotations

from collections import Counter

import pytest

from pipeline.change_cube import BlockGrid
from pipeline.tile_plan import GroupKey, TilePlan, strip_blocks
from pipeline.tiling import TileGrid


def make_plan(size: tuple[int, int], tile: int, overlap: int, block: int, strip: int) -> TilePlan:
    return TilePlan(TileGrid(*size, tile, overlap), BlockGrid(*size, block), strip)


@pytest.mark.parametrize(
    ("size", "tile", "overlap", "block"),
    [
        ((1024, 1024), 512, 64, 512),
        ((1100, 900), 128, 32, 256),
        ((700, 1300), 256, 64, 128),
        ((300, 300), 512, 0, 128),
    ],
)
def test_groups_partition_the_grid_and_cover_every_block(
    size: tuple[int, int], tile: int, overlap: int, block: int
) -> None:
    plan = make_plan(size, tile, overlap, block, strip=10_000)
    owned = Counter((t.row, t.col) for owner in plan.blocks for t in plan.owned_tiles(owner))
    assert set(owned) == {(t.row, t.col) for t in plan.grid} and set(owned.values()) == {1}
    for planned in plan.plan(plan.blocks):
        given = {(t.row, t.col) for g in planned.groups for t in plan.tiles_of(g)}
        needed = {(t.row, t.col) for t in plan.grid.tiles_intersecting(plan.blocks.window(*planned.block))}
        assert needed <= given
    assert plan.tile_computations(plan.blocks) == len(plan.grid)
    assert plan.redundancy() == 1.0


def test_each_group_is_reported_once_by_the_first_block_needing_it_in_plan_order() -> None:
    plan = make_plan((1100, 900), 128, 32, 256, strip=2)
    planned = list(plan.plan(plan.blocks))
    assert [p.block for p in planned] == plan.order(plan.blocks)
    assert [p.block for p in planned][:3] == [(0, 0), (0, 1), (1, 0)]  # strip 0 first, row by row
    reported = Counter(g for p in planned for g in p.reports)
    assert set(reported.values()) == {1}
    assert set(reported) == {g for p in planned for g in p.groups}
    first_use: dict[GroupKey, tuple[int, int]] = {}
    for p in planned:
        for g in p.groups:
            first_use.setdefault(g, p.block)
    assert all(first_use[g] == p.block for p in planned for g in p.reports)


def test_strips_recompute_only_the_tiles_at_their_seams() -> None:
    wide = make_plan((1024, 4096), 512, 64, 512, strip=8)
    narrow = make_plan((1024, 4096), 512, 64, 512, strip=2)
    assert wide.redundancy() == 1.0
    seams = 3  # four strips of two block columns
    extra = narrow.tile_computations(narrow.blocks) - len(narrow.grid)
    # At each seam, the tiles starting left of it that reach across it are computed once more.
    crossing_cols = {
        c
        for c in range(narrow.grid.shape[1])
        for s in (1024, 2048, 3072)
        if narrow.grid.tile(0, c).window.x0 < s < narrow.grid.tile(0, c).window.x1
    }
    assert extra == len(crossing_cols) * narrow.grid.shape[0]
    assert extra > 0 and seams <= len(crossing_cols)
    assert 1.0 < narrow.redundancy() < 1.5


def test_a_resumed_run_plans_the_same_groups_for_the_pending_blocks() -> None:
    plan = make_plan((1100, 900), 128, 32, 256, strip=10_000)
    pending = [(1, 1), (4, 3)]
    groups = {g for p in plan.plan(pending) for g in p.groups}
    # A group is always the same tiles (one grid row of those its owner holds), whichever blocks are pending.
    for g in groups:
        assert plan.tiles_of(g) == tuple(t for t in plan.owned_tiles(g.owner) if t.row == g.tile_row) != ()
    assert plan.tile_computations(pending) == sum(len(plan.tiles_of(g)) for g in groups)
    assert plan.tile_computations(pending) < len(plan.grid)


def test_strip_width_is_whole_blocks_and_at_least_one() -> None:
    assert strip_blocks(1024) == 4
    assert strip_blocks(1024, 3000) == 2
    assert strip_blocks(4096, 1024) == 1
    with pytest.raises(ValueError, match="strip_blocks must be at least 1"):
        make_plan((100, 100), 64, 0, 64, strip=0)


@pytest.mark.parametrize(
    ("size", "block", "strip", "defer"), [((1024, 1024), 512, 10_000, 2), ((2100, 1500), 256, 3, 3)]
)
def test_task_order_runs_groups_before_their_blocks_and_defers_the_row_before_the_last(
    size: tuple[int, int], block: int, strip: int, defer: int
) -> None:
    plan = make_plan(size, 504, 64, block, strip)
    planned = list(plan.plan(plan.blocks))
    plain = plan.task_order(planned)
    order = plan.task_order(planned, defer=defer)
    assert sorted(map(repr, order)) == sorted(map(repr, plain))
    position = {repr(item): i for i, item in enumerate(order)}
    for item in planned:
        assert all(position[repr(g)] < position[repr(item)] for g in item.groups)
    # The groups keep the plan's order; so do the blocks that are not deferred.
    assert [g for g in order if isinstance(g, GroupKey)] == [g for g in plain if isinstance(g, GroupKey)]
    last_group = max(i for i, item in enumerate(order) if isinstance(item, GroupKey))
    last_row, _ = planned[-1].block
    strip_of_last = plan.strip_of(planned[-1].block)
    row_before = [
        p for p in planned if p.block[0] == last_row - 1 and plan.strip_of(p.block) == strip_of_last
    ]
    deferred = row_before[-defer:]
    assert deferred and all(position[repr(p)] > last_group for p in deferred)
    assert [p for p in order if not isinstance(p, GroupKey) and p not in deferred] == [
        p for p in planned if p not in deferred
    ]
    # With nothing to defer, blocks stay right after their last group.
    assert plain == plan.task_order(planned, defer=0)
    assert plan.task_order([], defer=2) == []


@pytest.mark.parametrize(
    ("size", "tile", "overlap", "block"),
    [
        ((1024, 1024), 512, 64, 512),
        ((1100, 900), 128, 32, 256),
        ((700, 1300), 256, 64, 128),
        ((300, 300), 512, 0, 128),
    ],
)
def test_owned_tiles_are_those_whose_first_pixel_lies_in_the_block(
    size: tuple[int, int], tile: int, overlap: int, block: int
) -> None:
    plan = make_plan(size, tile, overlap, block, strip=10_000)
    for owner in plan.blocks:
        window = plan.blocks.window(*owner)
        expected = tuple(
            t
            for t in plan.grid
            if window.y0 <= t.window.y0 < window.y1 and window.x0 <= t.window.x0 < window.x1
        )
        assert plan.owned_tiles(owner) == expected
