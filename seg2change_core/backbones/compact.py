"""A small trainable patch-14 backbone for training the change model from scratch.

A convolutional stem (3x3 stride 2, then 7x7 stride 7: one token per 14x14 pixels) feeds ``depth``
pre-norm transformer blocks. Positions are encoded by a depthwise 3x3 convolution over the token map
before each block (added residually), so any multiple-of-14 input size works without interpolating
a table. :meth:`CompactViT.get_intermediate_layers` has the DINOv2 interface: four token levels of
width ``embed_dim`` after a final LayerNorm.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from seg2change_core.backbones.base import check_image, resolve_layers
from seg2change_core.backbones.dinov2 import Block
from seg2change_core.errors import ModelError

__all__ = ["CompactConfig", "CompactViT"]

PATCH_SIZE = 14
STEM_STRIDE = 2


@dataclass(frozen=True)
class CompactConfig:
    """Architecture of :class:`CompactViT`.

    Attributes
    ----------
    in_chans
        Input bands.
    embed_dim
        Token width (divisible by ``num_heads`` and by 2).
    depth
        Transformer blocks (at least 4).
    num_heads
        Attention heads.
    mlp_ratio
        Feed-forward hidden width over ``embed_dim``.
    layerscale_init
        Initial LayerScale value of each residual branch.
    """

    in_chans: int = 3
    embed_dim: int = 96
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 2.0
    layerscale_init: float = 0.1

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompactConfig:
        """Rebuild from :func:`dataclasses.asdict` output."""
        return cls(**data)


class CompactViT(nn.Module):
    """Trainable conv-stem ViT with patch 14 and the backbone interface of the change head.

    Parameters
    ----------
    config
        Architecture.

    Notes
    -----
    The default layers are four blocks spread over the depth, ending with the last one
    (``(0, 1, 2, 3)`` for depth 4).
    """

    family: ClassVar[str] = "compact"

    def __init__(self, config: CompactConfig | None = None) -> None:
        super().__init__()
        config = config or CompactConfig()
        if config.depth < 4:
            raise ModelError(f"CompactViT needs depth >= 4 to give four token levels, got {config.depth}")
        if config.embed_dim % config.num_heads or config.embed_dim % 2:
            raise ModelError(
                f"embed_dim {config.embed_dim} must be even and divisible by num_heads {config.num_heads}"
            )
        self.config = config
        self.name = "compact"
        self.embed_dim = config.embed_dim
        self.patch_size = PATCH_SIZE
        self.in_chans = config.in_chans
        depth = config.depth
        self.default_layers = tuple(depth * k // 4 - 1 for k in (1, 2, 3, 4))

        half = config.embed_dim // 2
        self.stem = nn.Sequential(
            nn.Conv2d(config.in_chans, half, kernel_size=3, stride=STEM_STRIDE, padding=1),
            nn.GroupNorm(1, half),
            nn.GELU(),
            nn.Conv2d(
                half,
                config.embed_dim,
                kernel_size=PATCH_SIZE // STEM_STRIDE,
                stride=PATCH_SIZE // STEM_STRIDE,
            ),
        )
        self.pos_convs = nn.ModuleList(
            [
                nn.Conv2d(
                    config.embed_dim, config.embed_dim, kernel_size=3, padding=1, groups=config.embed_dim
                )
                for _ in range(depth)
            ]
        )
        self.blocks = nn.ModuleList(
            [
                Block(config.embed_dim, config.num_heads, config.mlp_ratio, "mlp", config.layerscale_init)
                for _ in range(depth)
            ]
        )
        self.norm = nn.LayerNorm(config.embed_dim, eps=1e-6)

    def config_dict(self) -> dict[str, Any]:
        """JSON-serialisable architecture (see :meth:`CompactConfig.from_dict`)."""
        return asdict(self.config)

    def get_intermediate_layers(
        self, x: torch.Tensor, layers: Sequence[int] | None = None
    ) -> list[torch.Tensor]:
        """Patch tokens ``(B, H/14 * W/14, embed_dim)`` of the chosen blocks after the final norm.

        Parameters
        ----------
        x
            ``(B, in_chans, H, W)`` normalised images, ``H`` and ``W`` multiples of 14.
        layers
            0-based block indices; ``None`` gives :attr:`default_layers`.
        """
        chosen = resolve_layers(layers, self.default_layers, len(self.blocks))
        rows, cols = check_image(x, self.in_chans, self.patch_size)
        feature_map = self.stem(x)
        batch, dim = feature_map.shape[:2]
        taken: dict[int, torch.Tensor] = {}
        for index, (pos_conv, block) in enumerate(zip(self.pos_convs, self.blocks, strict=True)):
            if index > max(chosen):
                break
            feature_map = feature_map + pos_conv(feature_map)
            tokens = block(feature_map.flatten(2).transpose(1, 2))
            feature_map = tokens.transpose(1, 2).reshape(batch, dim, rows, cols)
            if index in chosen:
                taken[index] = tokens
        return [self.norm(taken[i]) for i in chosen]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Final-norm tokens of the last block."""
        return self.get_intermediate_layers(x, [len(self.blocks) - 1])[0]
