"""A multi-scale convolutional backbone that learns change from a few hundred tiles.

A vision transformer trained from scratch has little inductive bias for ~150 training tiles; a
small residual CNN has much more (locality, translation equivariance) and costs far less on a CPU.
:class:`ConvPyramid` gives the CACH head what it asks of a DINOv2 backbone, patch tokens of four
levels on the 14 px token grid, but fills each level from the CNN stage of matching resolution:

=====  =================================  ====================================================
level  head's resolution (grid ``g``)     tokens made from
=====  =================================  ====================================================
0      ``4g`` (3.5 px)                    stage 1 (stride 4 of the resampled image), 4x4 pixels
                                          of it folded into each token (pixel unshuffle)
1      ``2g`` (7 px)                      stage 2 (stride 8), 2x2 folded
2      ``g`` (14 px)                      stage 3 (stride 16)
3      ``g/2`` (28 px)                    stage 4 (stride 32), repeated 2x2 onto the grid
=====  =================================  ====================================================

The image is first resampled bilinearly by 16/14, so that the CNN's power-of-two strides land
exactly on the head's 14 px grid (a 504 px tile becomes 576 px; stage 1 is then 144 = 4 x 36 px).
The head's date-specific adapters and resize layers then undo the folding, so fine detail reaches
level 0 instead of being averaged into 14 px patches. GroupNorm (no batch statistics) keeps a
tile's output independent of what else is in its batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from seg2change_core.backbones.base import check_image, resolve_layers
from seg2change_core.errors import ModelError

__all__ = ["ConvConfig", "ConvPyramid"]

PATCH_SIZE = 14
RESAMPLED_PATCH = 16
NUM_LEVELS = 4


@dataclass(frozen=True)
class ConvConfig:
    """Architecture of :class:`ConvPyramid`.

    Attributes
    ----------
    in_chans
        Input bands.
    widths
        Channels of the four stages (strides 4, 8, 16 and 32 of the resampled image).
    blocks
        Residual blocks per stage.
    stem_width
        Channels of the stride-2 stem.
    embed_dim
        Token width handed to the head (every level).
    groups
        GroupNorm groups (each width must be divisible by it).
    """

    in_chans: int = 3
    widths: tuple[int, int, int, int] = (32, 64, 128, 192)
    blocks: tuple[int, int, int, int] = (1, 2, 2, 2)
    stem_width: int = 24
    embed_dim: int = 192
    groups: int = 8

    def __post_init__(self) -> None:
        if len(self.widths) != NUM_LEVELS or len(self.blocks) != NUM_LEVELS:
            raise ModelError(
                f"ConvConfig needs four stage widths and block counts, got {self.widths} and {self.blocks}"
            )
        if self.in_chans < 1 or min(self.blocks) < 1:
            raise ModelError(f"in_chans and every block count must be at least 1: {self}")
        bad = [w for w in (*self.widths, self.stem_width, self.embed_dim) if w % self.groups]
        if bad:
            raise ModelError(
                f"widths {bad} are not divisible by groups={self.groups}; choose multiples of it"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConvConfig:
        """Rebuild from :meth:`ConvPyramid.config_dict` output (lists become tuples)."""
        fields = dict(data)
        for key in ("widths", "blocks"):
            if key in fields:
                fields[key] = tuple(int(v) for v in fields[key])
        return cls(**fields)


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels)


class _ResidualBlock(nn.Module):
    """Two 3x3 convolutions with GroupNorm and a (projected where needed) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm1 = _norm(out_channels, groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = _norm(out_channels, groups)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                _norm(out_channels, groups),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class ConvPyramid(nn.Module):
    """Residual CNN with the token interface of the CACH head's backbones.

    Parameters
    ----------
    config
        Architecture.

    Notes
    -----
    ``get_intermediate_layers`` returns the four levels of the table in the module docstring,
    shallow to deep, as ``(B, H/14 * W/14, embed_dim)`` tokens. ``layers`` may only select among
    those four levels (``(0, 1, 2, 3)`` by default).
    """

    family: ClassVar[str] = "conv"

    def __init__(self, config: ConvConfig | None = None) -> None:
        super().__init__()
        config = config or ConvConfig()
        self.config = config
        self.name = "conv"
        self.embed_dim = config.embed_dim
        self.patch_size = PATCH_SIZE
        self.in_chans = config.in_chans
        self.default_layers: tuple[int, ...] = (0, 1, 2, 3)
        g = config.groups
        self.stem = nn.Sequential(
            nn.Conv2d(config.in_chans, config.stem_width, 3, stride=2, padding=1, bias=False),
            _norm(config.stem_width, g),
            nn.ReLU(),
            nn.Conv2d(config.stem_width, config.stem_width, 3, padding=1, bias=False),
            _norm(config.stem_width, g),
            nn.ReLU(),
        )
        stages: list[nn.Module] = []
        previous = config.stem_width
        for width, count in zip(config.widths, config.blocks, strict=True):
            layers = [_ResidualBlock(previous, width, 2, g)]
            layers += [_ResidualBlock(width, width, 1, g) for _ in range(count - 1)]
            stages.append(nn.Sequential(*layers))
            previous = width
        self.stages = nn.ModuleList(stages)
        folds = (4, 2, 1, 1)
        self.token_projections = nn.ModuleList(
            [
                nn.Conv2d(width * fold * fold, config.embed_dim, 1)
                for width, fold in zip(config.widths, folds, strict=True)
            ]
        )
        self.folds = folds
        self.norm = nn.LayerNorm(config.embed_dim, eps=1e-6)

    def config_dict(self) -> dict[str, Any]:
        """JSON-serialisable architecture (see :meth:`ConvConfig.from_dict`)."""
        data = asdict(self.config)
        data["widths"] = list(self.config.widths)
        data["blocks"] = list(self.config.blocks)
        return data

    def stage_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four stage outputs ``(B, width_i, 4g * 2**-i, ...)`` for normalised images ``x``."""
        rows, cols = check_image(x, self.in_chans, self.patch_size)
        size = (rows * RESAMPLED_PATCH, cols * RESAMPLED_PATCH)
        y = self.stem(F.interpolate(x, size=size, mode="bilinear", align_corners=False))
        maps = []
        for stage in self.stages:
            y = stage(y)
            maps.append(y)
        return maps

    def get_intermediate_layers(
        self, x: torch.Tensor, layers: Sequence[int] | None = None
    ) -> list[torch.Tensor]:
        """Tokens ``(B, H/14 * W/14, embed_dim)`` of the chosen levels after a LayerNorm.

        Parameters
        ----------
        x
            ``(B, in_chans, H, W)`` normalised images, ``H`` and ``W`` multiples of 14 (and of 28
            for the deepest level to land on the grid: the change model pads tiles to 252).
        layers
            Levels among ``0..3``; ``None`` gives all four.
        """
        chosen = resolve_layers(layers, self.default_layers, NUM_LEVELS)
        rows, cols = check_image(x, self.in_chans, self.patch_size)
        if rows % 2 or cols % 2:
            raise ModelError(
                f"ConvPyramid needs an even token grid (image sides multiples of 28), got {rows}x{cols} "
                "tokens; pad the image (the change model pads tiles to multiples of 252)"
            )
        maps = self.stage_maps(x)
        tokens = []
        for level in chosen:
            feature = maps[level]
            fold = self.folds[level]
            if fold > 1:
                feature = F.pixel_unshuffle(feature, fold)
            feature = self.token_projections[level](feature)
            if level == NUM_LEVELS - 1:
                feature = F.interpolate(feature, scale_factor=2.0, mode="nearest")
            tokens.append(self.norm(feature.flatten(2).transpose(1, 2)))
        return tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens of the deepest level."""
        return self.get_intermediate_layers(x, [NUM_LEVELS - 1])[0]
