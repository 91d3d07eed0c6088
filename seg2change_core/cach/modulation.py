"""Feature modulation: date-specific 1x1 adapters and the shared resize layers.

Backbone tokens of one level are laid out as a ``(B, C, rows, columns)`` map (token ``n`` at row
``n // columns``, column ``n % columns``), projected by the date's adapter to the level width, and
brought to the level's resolution by a layer shared between the two dates:

=====  =====  =====================================  ============
level  width  resize layer                           size
=====  =====  =====================================  ============
0      48     transposed conv, kernel 4, stride 4    grid x 4
1      64     transposed conv, kernel 2, stride 2    grid x 2
2      80     identity                               grid
3      96     conv 3x3, stride 2, padding 1          grid / 2
=====  =====  =====================================  ============
"""

from __future__ import annotations

import torch
from torch import nn

from seg2change_core.cach.geometry import LEVEL_WIDTHS

__all__ = ["make_adapters", "make_resize_layers", "tokens_to_map"]


def make_adapters(in_channels: int, widths: tuple[int, ...] = LEVEL_WIDTHS) -> nn.ModuleList:
    """One 1x1 convolution (with bias) per level from the backbone width to the level width.

    Parameters
    ----------
    in_channels
        Backbone embedding width (384 for ViT-S/14, 768 for ViT-B/14).
    widths
        Output width of each level.
    """
    return nn.ModuleList([nn.Conv2d(in_channels, width, kernel_size=1) for width in widths])


def make_resize_layers(widths: tuple[int, ...] = LEVEL_WIDTHS) -> nn.ModuleList:
    """The four resize layers of the table above, for four level widths."""
    w0, w1, w2, w3 = widths
    return nn.ModuleList(
        [
            nn.ConvTranspose2d(w0, w0, kernel_size=4, stride=4),
            nn.ConvTranspose2d(w1, w1, kernel_size=2, stride=2),
            nn.Identity(),
            nn.Conv2d(w3, w3, kernel_size=3, stride=2, padding=1),
        ]
    )


def tokens_to_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Lay out row-major ``(B, N, C)`` tokens as a ``(B, C, rows, columns)`` map.

    Parameters
    ----------
    tokens
        Patch tokens without any class or register token.
    grid
        ``(rows, columns)`` with ``rows * columns == N``.
    """
    batch, _, channels = tokens.shape
    return tokens.transpose(1, 2).reshape(batch, channels, grid[0], grid[1])
