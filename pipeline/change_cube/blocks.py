"""Writing a block's layers and its completion marker, reading the markers, finalising the cube."""

from __future__ import annotations

import logging
import warnings
from typing import Any, Literal

import numpy as np
import zarr
from numpy.typing import NDArray

from pipeline.change_cube.schema import ATTR_COMPLETE, DONE, BlockGrid, BlockLayers
from pipeline.faults import fault_point
from pipeline.storage import Location, LocationLike
from pipeline.tiling import Window

__all__ = ["finalise_change_cube", "read_done", "write_block"]

log = logging.getLogger(__name__)


def read_done(path: LocationLike, blocks: BlockGrid) -> NDArray[np.bool_]:
    """Which blocks are marked done, as a ``blocks.shape`` boolean array.

    A marker chunk that cannot be read counts as not done.
    """
    array = _array(path, DONE, "r")
    try:
        marked: NDArray[np.bool_] = np.asarray(array[...]) == 1
        return marked
    except Exception:
        log.warning("some completion markers of %s are unreadable; checking them one by one", path)
    done = np.zeros(blocks.shape, dtype=bool)
    for row, col in blocks:
        try:
            done[row, col] = array[row, col] == 1
        except Exception:
            done[row, col] = False
    return done


def _array(path: LocationLike, name: str, mode: Literal["r", "r+"]) -> zarr.Array[Any]:
    store = Location.parse(path).zarr_store(read_only=mode == "r")
    return zarr.open_array(store, path=name, mode=mode)


def write_block(path: LocationLike, window: Window, block: tuple[int, int], layers: BlockLayers) -> None:
    """Write one block's layers into their chunks, then mark the block done."""
    rows, cols = window.slices
    for name, data in layers.items():
        array = _array(path, name, "r+")
        if data.ndim == 3:
            array[:, rows, cols] = data
        else:
            array[rows, cols] = data
    fault_point("block:chunks-written")
    _array(path, DONE, "r+")[block] = 1
    fault_point("block:written")


def finalise_change_cube(path: LocationLike) -> None:
    """Record that every block is done and consolidate the metadata again (idempotent)."""
    fault_point("finalise:start")
    store = Location.parse(path).zarr_store()
    with warnings.catch_warnings():
        # As in create_change_cube: the extension that makes opening fast.
        warnings.filterwarnings("ignore", "Consolidated metadata", UserWarning)
        group = zarr.open_group(store, mode="r+")
        group.attrs[ATTR_COMPLETE] = True
        fault_point("finalise:marked")
        zarr.consolidate_metadata(store)
