"""BDFM: bi-temporal difference fusion of one feature level (the reference's ``MDFM`` block).

An attention map ``att = sigmoid(conv_sub(|A - B|))`` re-weights each date (``x * att + x``); each
date then passes its own conv3x3 + GroupNorm + ReLU (``conv_diff_enh1`` for A, ``conv_diff_enh2`` for
B). The two are concatenated ``[A, B]``, fused by ``conv_cat``, multiplied by ``att`` once more and
finished by ``conv_dr``. Submodule names and their ``.0``/``.1`` indices follow the official
checkpoint layout.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DifferenceFusion", "conv_norm_relu"]

GROUPS = 8


def conv_norm_relu(in_channels: int, out_channels: int, *, bias: bool = True) -> nn.Sequential:
    """``Conv2d(3x3, padding 1) -> GroupNorm(8) -> ReLU`` as a Sequential (keys ``.0`` and ``.1``)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=bias),
        nn.GroupNorm(GROUPS, out_channels),
        nn.ReLU(),
    )


class DifferenceFusion(nn.Module):
    """Fuse the two dates' features of one level into a difference feature.

    Parameters
    ----------
    channels
        Width of the level (input and output).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_sub = nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False)
        self.conv_diff_enh1 = conv_norm_relu(channels, channels)
        self.conv_diff_enh2 = conv_norm_relu(channels, channels)
        self.conv_cat = conv_norm_relu(2 * channels, channels)
        self.conv_dr = conv_norm_relu(channels, channels, bias=False)

    def forward(self, feat_a: torch.Tensor, feat_b: torch.Tensor) -> torch.Tensor:
        """Return the fused difference ``(B, C, H, W)`` of two ``(B, C, H, W)`` maps."""
        attention = torch.sigmoid(self.conv_sub(torch.abs(feat_a - feat_b)))
        enhanced_a = self.conv_diff_enh1(feat_a * attention + feat_a)
        enhanced_b = self.conv_diff_enh2(feat_b * attention + feat_b)
        fused = self.conv_cat(torch.cat([enhanced_a, enhanced_b], dim=1))
        out: torch.Tensor = self.conv_dr(fused * attention)
        return out
