"""Whole-image prediction through overlapping tiles blended with smooth windows (in memory).

Evaluation must score frames larger than a model's tile (SZTAKI 952 x 640, OSCD cities of ~500 px)
the way the engine would run them, not with one huge forward pass at a size the model never saw.
The tile layout and the blending ramps are the engine's own
(:func:`~seg2change_core.tile_windows.axis_starts`, :func:`~seg2change_core.tile_windows.ramp`
with the raised-cosine profile, shared with :mod:`pipeline.tiling`); what this module adds is the
in-memory loop over one image's tiles (the engine's blocks, workers and region writes are not
needed for one frame): ``sum(w * p) / sum(w)`` over the tiles covering a pixel, probabilities
blended, never logits, so a model returning its input is reproduced exactly (partition of unity).
"""

from __future__ import annotations

import numpy as np
import torch

from seg2change_core.change_model import ChangeModel
from seg2change_core.errors import ModelError
from seg2change_core.tile_windows import axis_starts, ramp

__all__ = ["default_overlap", "predict_tiled", "tile_window"]


def default_overlap(tile: int) -> int:
    """Overlap used when none is given: a quarter of the tile."""
    return tile // 4


def tile_window(
    height: int, width: int, overlap: int, *, top: bool, bottom: bool, left: bool, right: bool
) -> torch.Tensor:
    """The ``(height, width)`` blending window of a tile; a flag is true where a neighbour overlaps."""
    rows = ramp(height, overlap, "cosine", flat_start=not top, flat_end=not bottom)
    cols = ramp(width, overlap, "cosine", flat_start=not left, flat_end=not right)
    return torch.from_numpy(np.outer(rows, cols))


def predict_tiled(
    model: ChangeModel,
    before: torch.Tensor,
    after: torch.Tensor,
    *,
    tile_size: int,
    overlap: int | None = None,
    tiles_per_call: int = 4,
) -> torch.Tensor:
    """Probability of change ``(B, 1, H, W)`` of raw batches, predicted tile by tile and blended.

    Parameters
    ----------
    model
        Any change model.
    before, after
        Raw ``(B, bands, H, W)`` batches.
    tile_size
        Tile side (a smaller image side gives a smaller tile along that axis).
    overlap
        Pixels shared by neighbouring tiles; default :func:`default_overlap`.
    tiles_per_call
        Tiles (of all images of the batch) passed to the model at once.

    Raises
    ------
    ModelError
        For a tile size below 1 or an overlap not smaller than the tile.
    """
    if tile_size < 1:
        raise ModelError(f"tile size must be positive, got {tile_size}")
    overlap = default_overlap(tile_size) if overlap is None else overlap
    if not 0 <= overlap < tile_size:
        raise ModelError(f"tile overlap must lie in [0, {tile_size}), got {overlap}")
    batch, _, height, width = before.shape
    th, tw = min(tile_size, height), min(tile_size, width)
    rows = axis_starts(height, th, th - min(overlap, th - 1))
    cols = axis_starts(width, tw, tw - min(overlap, tw - 1))
    if len(rows) == 1 and len(cols) == 1:
        return model.predict(before, after)
    total = torch.zeros((batch, 1, height, width), dtype=torch.float64)
    weight = torch.zeros((1, 1, height, width), dtype=torch.float64)
    tiles = [(y, x) for y in rows for x in cols]
    for start in range(0, len(tiles), max(1, tiles_per_call)):
        chunk = tiles[start : start + max(1, tiles_per_call)]
        b = torch.cat([before[:, :, y : y + th, x : x + tw] for y, x in chunk])
        a = torch.cat([after[:, :, y : y + th, x : x + tw] for y, x in chunk])
        with torch.no_grad():
            probability = model.predict(b, a).detach().to("cpu", torch.float64)
        for i, (y, x) in enumerate(chunk):
            window = tile_window(
                th, tw, overlap, top=y > 0, bottom=y + th < height, left=x > 0, right=x + tw < width
            )
            total[:, :, y : y + th, x : x + tw] += probability[i * batch : (i + 1) * batch] * window
            weight[:, :, y : y + th, x : x + tw] += window
    return (total / weight).to(torch.float32).to(before.device)
