"""Token-grid geometry of the CACH head: which tile sizes it can take and how others are padded.

The head works on four feature levels whose sizes are ``4g``, ``2g``, ``g`` and ``g/2`` for a token
grid of ``g`` patches along an axis (the reference fixes ``g = 36``, a 504 px tile). Every level is cut
into 9x9 attention windows, so every level size must be a multiple of 9:

* ``g/2`` a multiple of 9 means ``g`` is a multiple of 18, which also covers ``g``, ``2g`` and ``4g``.
* In pixels (patch 14) a tile is *valid* when each side is a multiple of ``14 * 18 = 252``
  (252, 504, 756, 1008, ...).

A grid that is not a multiple of 18 is padded at the bottom and right to the next multiple of 18 and
the outputs are cropped back (see :func:`padded_grid`). The head pads *tokens* (reflection where the
grid is large enough, edge replication otherwise); :class:`seg2change_core.change_model.CACHChangeModel`
instead pads the *image* to a valid tile, so its backbone sees real image content everywhere.
"""

from __future__ import annotations

import math

__all__ = [
    "GRID_MULTIPLE",
    "LEVEL_WIDTHS",
    "PATCH_SIZE",
    "TILE_MULTIPLE",
    "WINDOW_SIZE",
    "is_valid_grid",
    "is_valid_tile",
    "padded_grid",
    "padded_tile",
    "square_grid",
]

PATCH_SIZE = 14
"""Pixels per backbone token along each axis (DINOv2 /14)."""

WINDOW_SIZE = 9
"""Side of the square attention windows of the EDQA blocks."""

GRID_MULTIPLE = 2 * WINDOW_SIZE
"""A token grid side must be a multiple of this (the half-resolution level must tile into windows)."""

TILE_MULTIPLE = PATCH_SIZE * GRID_MULTIPLE
"""A tile side in pixels that needs no padding is a multiple of this (252)."""

LEVEL_WIDTHS = (48, 64, 80, 96)
"""Channel widths of the four feature levels (grid x4, x2, x1, /2)."""


def is_valid_grid(tokens: int) -> bool:
    """Whether a token-grid side can be processed without padding.

    Parameters
    ----------
    tokens
        Number of tokens along one axis.

    Returns
    -------
    bool
        True when ``tokens`` is a positive multiple of 18.
    """
    return tokens > 0 and tokens % GRID_MULTIPLE == 0


def padded_grid(tokens: int) -> int:
    """The smallest valid token-grid side that is at least ``tokens``.

    Parameters
    ----------
    tokens
        Number of tokens along one axis (positive).

    Returns
    -------
    int
        ``tokens`` rounded up to a multiple of 18.
    """
    if tokens <= 0:
        raise ValueError(f"a token grid needs at least one token per axis, got {tokens}")
    return math.ceil(tokens / GRID_MULTIPLE) * GRID_MULTIPLE


def is_valid_tile(pixels: int) -> bool:
    """Whether a tile side in pixels needs no padding (a positive multiple of 252)."""
    return pixels > 0 and pixels % TILE_MULTIPLE == 0


def padded_tile(pixels: int) -> int:
    """The smallest valid tile side in pixels that is at least ``pixels`` (a multiple of 252)."""
    if pixels <= 0:
        raise ValueError(f"a tile needs at least one pixel per axis, got {pixels}")
    return math.ceil(pixels / TILE_MULTIPLE) * TILE_MULTIPLE


def square_grid(num_tokens: int) -> tuple[int, int]:
    """The (rows, columns) of a square token grid holding ``num_tokens`` tokens.

    Raises
    ------
    ValueError
        When ``num_tokens`` is not a perfect square.
    """
    side = math.isqrt(num_tokens)
    if side * side != num_tokens or side == 0:
        raise ValueError(
            f"{num_tokens} tokens do not form a square grid; pass grid=(rows, columns) explicitly"
        )
    return side, side
