"""ResUp: DPT-style residual upsampling of the four levels to one map at twice level 0's size.

Each level is projected to the hidden width by a 3x3 conv (``layer{i}_rn``); fusion blocks
(``refinenet{i}``) then walk from the coarsest level up::

    path3 = refinenet3(level3)          -> size of level 2
    path2 = refinenet2(path3, level2)   -> size of level 1
    path1 = refinenet1(path2, level1)   -> size of level 0
    out   = refinenet0(path1, level0)   -> twice that

A fusion block adds ``resConfUnit1(skip)`` to its first input when given two inputs, applies
``resConfUnit2``, resizes bilinearly with ``align_corners=True`` and ends with a 1x1 ``out_conv``.
``refinenet3`` always gets one input, so its ``resConfUnit1`` is never used; it stays for strict
loading of official checkpoints. The projections and fusion blocks are attributes of the head (their
key names are top-level in the official layout); :func:`residual_upsample` runs them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["FusionBlock", "ResidualConvUnit", "UpsamplerPaths", "residual_upsample"]


class ResidualConvUnit(nn.Module):
    """``x + conv2(relu(conv1(relu(x))))`` with 3x3 convolutions of constant width."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(features, features, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the residual unit to a ``(B, C, H, W)`` map."""
        out: torch.Tensor = self.conv2(F.relu(self.conv1(F.relu(x))))
        return out + x


class FusionBlock(nn.Module):
    """Fuse a coarse path with an optional skip feature and resize it (DPT ``FeatureFusionBlock``)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, kernel_size=1)
        self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(
        self,
        path: torch.Tensor,
        skip: torch.Tensor | None = None,
        size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Fuse ``path`` (and ``skip``), then resize to ``size`` (twice the input when None)."""
        output = path if skip is None else path + self.resConfUnit1(skip)
        output = self.resConfUnit2(output)
        if size is None:
            output = F.interpolate(output, scale_factor=2.0, mode="bilinear", align_corners=True)
        else:
            output = F.interpolate(output, size=size, mode="bilinear", align_corners=True)
        out: torch.Tensor = self.out_conv(output)
        return out


class UpsamplerPaths(NamedTuple):
    """Outputs of :func:`residual_upsample`: the final map and the three intermediate paths."""

    output: torch.Tensor
    path1: torch.Tensor
    path2: torch.Tensor
    path3: torch.Tensor


def residual_upsample(
    projections: Sequence[nn.Module],
    fusions: Sequence[nn.Module],
    levels: Sequence[torch.Tensor],
) -> UpsamplerPaths:
    """Run the ResUp decoder over four level maps (finest first).

    Parameters
    ----------
    projections
        ``layer0_rn .. layer3_rn``.
    fusions
        ``refinenet0 .. refinenet3``.
    levels
        Four maps of sizes ``4g, 2g, g, g/2``.
    """
    feat0, feat1, feat2, feat3 = (proj(level) for proj, level in zip(projections, levels, strict=True))
    fuse0, fuse1, fuse2, fuse3 = fusions
    path3 = fuse3(feat3, size=tuple(feat2.shape[2:]))
    path2 = fuse2(path3, feat2, size=tuple(feat1.shape[2:]))
    path1 = fuse1(path2, feat1, size=tuple(feat0.shape[2:]))
    output = fuse0(path1, feat0)
    return UpsamplerPaths(output, path1, path2, path3)
