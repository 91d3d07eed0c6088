"""The Dask tasks of an inference run and what they hand each other.

A run shares one small, picklable :class:`BlockContext` with all its tasks. A **tile-group task**
(:func:`compute_tile_group`) reads the union of a few tiles from the input cube, runs the models
on them and cuts the probabilities into one :class:`TilePieces` per block that uses them; a
**block task** (:func:`process_block`) blends its pieces, derives its layers and writes them into
the change cube, followed by its completion marker. :func:`pieces_for` takes one block's pieces
out of a group's result, so that each is released once its block is written.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from pipeline.change_cube import BlockGrid, write_block
from pipeline.input_reader import read_window
from pipeline.memory_release import release_freed_memory
from pipeline.models import ModelRuntime, get_models, start_building
from pipeline.tile_kernel import F32, derive_layers, run_tiles, valid_pixels
from pipeline.tiling import BlendAccumulator, Blender, TileGrid, Window, covering
from seg2change_core.prompts import PromptSet

__all__ = [
    "BlockContext",
    "BlockReport",
    "TilePieces",
    "compute_tile_group",
    "gate",
    "pieces_for",
    "process_block",
]


@dataclass(frozen=True)
class BlockContext:
    """What every task of a run shares (small and picklable).

    Attributes
    ----------
    cube_path, out_path
        Input and output Zarr stores.
    grid, blocks
        Tile grid and block grid.
    blender
        Blending windows.
    batch_size
        Tiles per model call.
    runtime
        How to build the models.
    prompts
        The classes.
    run
        Identifier of the run, unique: the key of its cached input chunks (:mod:`pipeline.input_reader`).
    """

    cube_path: str
    out_path: str
    grid: TileGrid
    blocks: BlockGrid
    blender: Blender
    batch_size: int
    runtime: ModelRuntime
    prompts: PromptSet
    run: str


@dataclass(frozen=True)
class TilePieces:
    """The parts of a tile group's outputs that one block blends (kept in worker memory until then).

    Attributes
    ----------
    tiles
        Grid indices ``(row, col)`` of the tiles that reach into the block.
    parts
        The window of each tile inside the block.
    probabilities
        ``(1 + 2 * classes, rows, cols)`` float32 probabilities of each part.
    valid
        Where each part's input is valid (every band a model reads finite on both dates).
    computed
        Tiles the group computed.
    model_seconds
        The group's time in model calls.
    seconds
        The group task's duration (building models the first time, reading, model calls, cutting).
    """

    tiles: tuple[tuple[int, int], ...]
    parts: tuple[Window, ...]
    probabilities: tuple[F32, ...]
    valid: tuple[NDArray[np.bool_], ...]
    computed: int
    model_seconds: float
    seconds: float


@dataclass(frozen=True)
class BlockReport:
    """What one block task did, with the tile groups it reports for.

    Attributes
    ----------
    block
        ``(row, col)`` of the block.
    tiles
        Tiles computed by the groups it reports.
    model_seconds
        Time in model calls of the groups it reports.
    seconds
        Time of the block task plus the group tasks it reports.
    pid
        Worker process id.
    """

    block: tuple[int, int]
    tiles: int
    model_seconds: float
    seconds: float
    pid: int


def compute_tile_group(
    context: BlockContext,
    tiles: tuple[tuple[int, int], ...],
    consumers: tuple[tuple[int, int], ...],
) -> dict[tuple[int, int], TilePieces]:
    """Run the models on some grid tiles (a group of :mod:`pipeline.tile_plan`), reading just their union.

    The outputs are cut into one :class:`TilePieces` per consumer block (copies), so that each part
    is released as soon as its block is written.
    """
    start = time.perf_counter()
    release_freed_memory()  # see process_block
    grid_tiles = [context.grid.tile(row, col) for row, col in tiles]
    halo = covering(grid_tiles)
    start_building(context.runtime)  # a worker's first read overlaps the model build
    data = read_window(context.cube_path, halo, run=context.run)
    models = get_models(context.runtime)
    outputs, model_seconds = run_tiles(
        data, halo, grid_tiles, models=models, prompts=context.prompts, batch_size=context.batch_size
    )
    valid = valid_pixels(data, (slice(None), slice(None)), models)
    del data
    cut: dict[tuple[int, int], list[tuple[tuple[int, int], Window, F32, NDArray[np.bool_]]]] = {
        block: [] for block in consumers
    }
    for tile, output in zip(grid_tiles, outputs, strict=True):
        for block in consumers:
            part = tile.window.intersection(context.blocks.window(*block))
            if part is not None:
                values = np.ascontiguousarray(output[(slice(None), *part.relative_to(tile.window))])
                cut[block].append(((tile.row, tile.col), part, values, valid[part.relative_to(halo)].copy()))
    seconds = time.perf_counter() - start
    return {
        block: TilePieces(
            tuple(p[0] for p in parts),
            tuple(p[1] for p in parts),
            tuple(p[2] for p in parts),
            tuple(p[3] for p in parts),
            len(tiles),
            model_seconds,
            seconds,
        )
        for block, parts in cut.items()
    }


def gate(*_: object) -> None:
    """A task with no work, run once its dependencies are: blocks depending on it wait for them too."""


def pieces_for(pieces: Mapping[tuple[int, int], TilePieces], block: tuple[int, int]) -> TilePieces:
    """The pieces of one block, taken out of a group's result (a task of its own, so each is freed apart)."""
    return pieces[block]


def process_block(
    context: BlockContext, row: int, col: int, reported: int, *groups: TilePieces, after: object = None
) -> BlockReport:
    """Blend one block from its tile pieces, derive its layers and write them (then its marker).

    ``reported`` is the number of leading ``groups`` whose model time this block reports; ``after``
    holds only dependencies (a :func:`gate`, the task creating the cube), which hold the block
    back until they have run.
    """
    start = time.perf_counter()
    window = context.blocks.window(row, col)
    by_index = {
        index: (part, values, valid)
        for group in groups
        for index, part, values, valid in zip(
            group.tiles, group.parts, group.probabilities, group.valid, strict=True
        )
    }
    tiles = context.grid.tiles_intersecting(window)
    accumulator = BlendAccumulator(window, 1 + 2 * context.prompts.num_classes, context.blender, tiles)
    valid_block = np.zeros((window.height, window.width), dtype=bool)
    # The tiles cover the block, and each part carries the validity of the input it was computed from.
    for tile in tiles:
        part, values, valid = by_index[(tile.row, tile.col)]
        accumulator.add_part(tile, part, values)
        valid_block[part.relative_to(window)] = valid
    blended = accumulator.result()
    layers = derive_layers(blended, valid_block, context.prompts)
    del blended, by_index
    write_block(context.out_path, window, (row, col), layers)
    del layers, accumulator, valid_block
    # The worker's threads free tile outputs and blocks in their own malloc heaps, which keep the
    # freed pages: without handing them back, the worker's memory grew with the blocks it ran.
    release_freed_memory()
    own = groups[:reported]
    return BlockReport(
        (row, col),
        sum(g.computed for g in own),
        sum(g.model_seconds for g in own),
        time.perf_counter() - start + sum(g.seconds for g in own),
        os.getpid(),
    )
