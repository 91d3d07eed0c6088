"""What the change head needs from a backbone: patch tokens of four chosen layers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from seg2change_core.errors import ModelError

__all__ = ["Backbone", "check_image", "resolve_layers"]


@runtime_checkable
class Backbone(Protocol):
    """A patch-token backbone usable by :class:`seg2change_core.cach.CACHHead`.

    Attributes
    ----------
    family
        Registry name of the implementation (``"dinov2"``, ``"compact"``).
    name
        Name of this configuration (``"dinov2_vits14"``, ...).
    embed_dim
        Token width ``C``.
    patch_size
        Pixels per token along each axis (14).
    in_chans
        Input bands expected.
    default_layers
        Block indices whose outputs the head takes by default (four of them).
    """

    family: str
    name: str
    embed_dim: int
    patch_size: int
    in_chans: int
    default_layers: tuple[int, ...]

    def get_intermediate_layers(
        self, x: torch.Tensor, layers: Sequence[int] | None = None
    ) -> list[torch.Tensor]:
        """``(B, N, C)`` patch tokens of the chosen blocks, after the final norm, class token dropped."""
        ...

    def config_dict(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments (stored in checkpoints)."""
        ...


def resolve_layers(layers: Sequence[int] | None, default: tuple[int, ...], depth: int) -> list[int]:
    """Validate block indices (``None`` gives ``default``); each must lie in ``[0, depth)``."""
    chosen = list(default if layers is None else layers)
    bad = [i for i in chosen if not 0 <= i < depth]
    if bad or not chosen:
        raise ModelError(f"layers {chosen} must be non-empty block indices in [0, {depth - 1}]")
    return chosen


def check_image(x: torch.Tensor, in_chans: int, patch_size: int) -> tuple[int, int]:
    """Check a ``(B, C, H, W)`` image batch and return its token grid ``(H // p, W // p)``."""
    if x.dim() != 4 or x.shape[1] != in_chans:
        raise ModelError(
            f"backbone expects a (B, {in_chans}, H, W) batch, got shape {tuple(x.shape)}; "
            f"select {in_chans} bands"
        )
    height, width = x.shape[2], x.shape[3]
    if height % patch_size or width % patch_size or height == 0 or width == 0:
        raise ModelError(
            f"image size {height}x{width} is not a multiple of the patch size {patch_size}; "
            "pad or crop it to a multiple first"
        )
    return height // patch_size, width // patch_size
