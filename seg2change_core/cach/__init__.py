"""CACH: the category-agnostic change head of Seg2Change.

:class:`CACHHead` reproduces the reference head (official checkpoint layout) and extends it to any
token grid; :mod:`.geometry` states which tile sizes run without padding.
"""

from seg2change_core.cach.geometry import (
    PATCH_SIZE,
    TILE_MULTIPLE,
    is_valid_grid,
    is_valid_tile,
    padded_grid,
    padded_tile,
)
from seg2change_core.cach.head import CACHConfig, CACHHead, CACHOutput

__all__ = [
    "PATCH_SIZE",
    "TILE_MULTIPLE",
    "CACHConfig",
    "CACHHead",
    "CACHOutput",
    "is_valid_grid",
    "is_valid_tile",
    "padded_grid",
    "padded_tile",
]
