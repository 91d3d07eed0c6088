"""Whole-image prediction through overlapping tiles blended with smooth windows (in memory).

Evaluation must score frames larger than a model's tile (SZTAKI 952 x 640, OSCD cities of ~500 px)
the way the engine would run them, not with one huge forward pass at a size the model never saw.
``pipeline.tiling`` holds the engine's global tile grid and blenders, but ``seg2change_core`` must
not import ``pipeline`` (the layering rule of DESIGN.md), and evaluation needs only the in-memory
case of one image. So this module is a small tiler of its own, with the same conventions:

* along each axis tiles start at ``k * stride`` (``stride = tile - overlap``) and the last one is
  shifted back to end at the image edge, so every tile has the full size; an image no larger than
  the tile is one tile of the image's size;
* each tile's probability is weighted by a window that is 1 inside and ramps over ``overlap``
  pixels with a raised cosine ``sin^2(pi t / 2)``, sampled at pixel centres, on every side another
  tile overlaps (never at the image border), and the result is ``sum(w * p) / sum(w)``:
  probabilities are blended, never logits, and a model returning its input is reproduced exactly
  (partition of unity).
"""

from __future__ import annotations

import math

import torch

from seg2change_core.change_model import ChangeModel
from seg2change_core.errors import ModelError

__all__ = ["default_overlap", "predict_tiled", "tile_starts", "tile_window"]


def default_overlap(tile: int) -> int:
    """Overlap used when none is given: a quarter of the tile."""
    return tile // 4


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets of tiles along one axis (the last one ends at ``length``)."""
    if length <= tile:
        return [0]
    if stride < 1:
        raise ModelError(f"tile stride must be positive, got {stride}; use an overlap below the tile size")
    starts = list(range(0, length - tile, stride))
    return [*starts, length - tile]


def _ramp(size: int, overlap: int, rise: bool, fall: bool) -> torch.Tensor:
    weights = torch.ones(size, dtype=torch.float64)
    if overlap <= 0:
        return weights
    n = min(overlap, size)
    t = (torch.arange(n, dtype=torch.float64) + 0.5) / overlap
    up = torch.sin(math.pi * t / 2) ** 2
    if rise:
        weights[:n] = torch.minimum(weights[:n], up)
    if fall:
        weights[size - n :] = torch.minimum(weights[size - n :], up.flip(0))
    return weights


def tile_window(
    height: int, width: int, overlap: int, *, top: bool, bottom: bool, left: bool, right: bool
) -> torch.Tensor:
    """The ``(height, width)`` blending window of a tile; a flag is true where a neighbour overlaps."""
    return _ramp(height, overlap, top, bottom)[:, None] * _ramp(width, overlap, left, right)[None, :]


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
    rows = tile_starts(height, th, th - min(overlap, th - 1))
    cols = tile_starts(width, tw, tw - min(overlap, tw - 1))
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
