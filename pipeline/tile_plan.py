"""Which task computes which tile: every grid tile once, shared by the blocks it touches.

A tile of the global grid (:class:`pipeline.tiling.TileGrid`) usually straddles block boundaries.
Computing it in every block it touches (blocks as independent tasks) costs 1.5-2x the model time
at common sizes (512 px tiles, 1024 px blocks); instead each tile is computed once, by a
*tile-group task*, and the block tasks that need it receive it as a task dependency. A group is
one grid row of the tiles a block owns (those whose first pixel lies in it), so the tiles that
reach into the next row of blocks are held apart from the others, which are released as soon as
their own row is written.

Worker memory then holds the tile outputs that some unfinished block still needs: the groups
reaching into the next block row, about one row of blocks long. Blocks are ordered row by row;
to bound that row on wide areas the block columns are cut into *strips* of ``strip_blocks``
columns, processed one after the other, and a tile owned by a block left of a strip's first column
is computed again for that strip (one tile column per strip seam). A group always computes the
same tiles in the same batches, whichever blocks are still pending: a resumed run computes every
tile exactly as an uninterrupted run does.

This module is pure planning (no Dask, no arrays), so it is tested on its own.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.tiling import Tile, TileGrid

if TYPE_CHECKING:  # a type only: planning stays free of the Zarr/xarray imports (the job estimate uses it)
    from pipeline.change_cube import BlockGrid

__all__ = ["GroupKey", "PlannedBlock", "TilePlan", "strip_blocks"]

#: Width of a strip (pixels) when the job does not set one: about 8 tiles of 512 px across. The
#: tile outputs held for the next block row grow with it (the demo's in-process worker held 94 MB
#: of them at 2,048 px and 276 MB at 4,096 px), so a full Sentinel-2 tile (10,980 px) in strips of
#: 8,192 px would peak about 1.3x a 2,048 px scene; 4,096 px computes 675 tiles there instead of 650 (two
#: seams instead of one, of 625 tiles).
DEFAULT_STRIP_PIXELS = 4096


@dataclass(frozen=True, order=True)
class GroupKey:
    """A tile-group task: the tiles of grid row ``tile_row`` owned by block ``(row, col)``, for ``strip``."""

    strip: int
    row: int
    col: int
    tile_row: int

    @property
    def owner(self) -> tuple[int, int]:
        """The block that owns the group's tiles."""
        return self.row, self.col


@dataclass(frozen=True)
class PlannedBlock:
    """One block task of the plan.

    Attributes
    ----------
    block
        ``(row, col)`` of the block.
    groups
        The tile groups it blends, in the order their results are passed to it.
    reports
        The groups whose model time it reports (each group is reported by exactly one block: the
        first block of the plan that needs it).
    """

    block: tuple[int, int]
    groups: tuple[GroupKey, ...]
    reports: tuple[GroupKey, ...]


def strip_blocks(block_size: int, strip_size: int | None = None) -> int:
    """Block columns per strip of about ``strip_size`` pixels (default :data:`DEFAULT_STRIP_PIXELS`), at least one."""
    return max(1, (strip_size or DEFAULT_STRIP_PIXELS) // block_size)


@dataclass(frozen=True)
class TilePlan:
    """The tile groups and block tasks that compute ``pending`` blocks, in submission order.

    Parameters
    ----------
    grid
        The global tile grid.
    blocks
        The block grid.
    strip_blocks
        Block columns per strip (at least 1).
    """

    grid: TileGrid
    blocks: BlockGrid
    strip_blocks: int

    def __post_init__(self) -> None:
        if self.strip_blocks < 1:
            raise ValueError(f"strip_blocks must be at least 1, got {self.strip_blocks}")

    def owner(self, tile: Tile) -> tuple[int, int]:
        """The block holding the tile's first pixel."""
        size = self.blocks.block_size
        return tile.window.y0 // size, tile.window.x0 // size

    def tiles_of(self, group: GroupKey) -> tuple[Tile, ...]:
        """The tiles a group computes, in grid order."""
        return tuple(t for t in self.owned_tiles(group.owner) if t.row == group.tile_row)

    @functools.cached_property
    def _starts(self) -> tuple[list[int], list[int]]:
        """First row and first column of every tile row and column, ascending."""
        rows, cols = self.grid.shape
        return (
            [self.grid.tile(r, 0).window.y0 for r in range(rows)],
            [self.grid.tile(0, c).window.x0 for c in range(cols)],
        )

    def owned_tiles(self, owner: tuple[int, int]) -> tuple[Tile, ...]:
        """The tiles block ``owner`` holds, in grid order (possibly none)."""
        window = self.blocks.window(*owner)
        row_starts, col_starts = self._starts
        # Searched, not scanned: planning a block costs the same on a small area and on a continent.
        rows = range(bisect.bisect_left(row_starts, window.y0), bisect.bisect_left(row_starts, window.y1))
        cols = range(bisect.bisect_left(col_starts, window.x0), bisect.bisect_left(col_starts, window.x1))
        return tuple(self.grid.tile(r, c) for r in rows for c in cols)

    def strip_of(self, block: tuple[int, int]) -> int:
        """The strip a block belongs to."""
        return block[1] // self.strip_blocks

    def order(self, pending: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
        """``pending`` blocks in processing order: strip by strip, then row by row."""
        return sorted(pending, key=lambda b: (self.strip_of(b), b[0], b[1]))

    def groups_for(self, block: tuple[int, int]) -> tuple[GroupKey, ...]:
        """The tile groups a block needs (those owning a tile that intersects it), sorted."""
        strip = self.strip_of(block)
        tiles = self.grid.tiles_intersecting(self.blocks.window(*block))
        return tuple(sorted({GroupKey(strip, *self.owner(t), t.row) for t in tiles}))

    def plan(self, pending: Iterable[tuple[int, int]]) -> Iterator[PlannedBlock]:
        """The block tasks for ``pending``, in submission order, each naming its groups."""
        reported: set[GroupKey] = set()
        for block in self.order(pending):
            groups = self.groups_for(block)
            reports = tuple(g for g in groups if g not in reported)
            reported.update(reports)
            yield PlannedBlock(block, groups, reports)

    def task_order(self, planned: Sequence[PlannedBlock], *, defer: int = 0) -> list[GroupKey | PlannedBlock]:
        """The groups and blocks of ``planned`` in the order workers should run them, first first.

        Plan order, each group before the first block needing it and each block after its groups,
        except that the last ``defer`` blocks of the row before the final block row go after the
        final row's groups: at the end of a run they fill the threads that would otherwise wait
        for the last tiles (a few per thread beyond the first: each holds its pieces to the end).
        """
        items: list[GroupKey | PlannedBlock] = []
        seen: set[GroupKey] = set()
        for block in planned:
            for key in block.groups:
                if key not in seen:
                    seen.add(key)
                    items.append(key)
            items.append(block)
        if not planned or defer < 1:
            return items
        last_row, last_col = planned[-1].block
        strip = self.strip_of((last_row, last_col))
        row_before = [b for b in planned if b.block[0] == last_row - 1 and self.strip_of(b.block) == strip]
        deferred = row_before[-defer:]
        if not deferred:
            return items
        kept = [item for item in items if not any(item is b for b in deferred)]
        last_group = max(i for i, item in enumerate(kept) if isinstance(item, GroupKey))
        return kept[: last_group + 1] + list(deferred) + kept[last_group + 1 :]

    def tile_computations(self, pending: Iterable[tuple[int, int]]) -> int:
        """Tiles the plan computes for ``pending`` (a tile counts once per group task computing it)."""
        return self.count_tiles(self.plan(pending))

    def count_tiles(self, planned: Iterable[PlannedBlock]) -> int:
        """Tiles computed for already planned blocks (a tile counts once per group task computing it)."""
        groups = {g for block in planned for g in block.groups}
        return sum(len(self.tiles_of(g)) for g in groups)

    def redundancy(self) -> float:
        """Tile computations per distinct tile for the whole cube (1.0 without strip seams)."""
        return self.tile_computations(self.blocks) / len(self.grid)
