"""DINOv2 ViT-S/14, B/14, L/14 and g/14 in plain torch, in the official checkpoint layout.

timm cannot be imported beside the CPU build of torch used here (its torchvision needs a CUDA torch),
so the backbone is written out. ``state_dict()`` names and shapes equal the official
``dinov2_vit{s,b,l,g}14_pretrain.pth`` files (flat ``blocks.{i}``, LayerScale ``ls1``/``ls2``, no
register tokens, a 37x37 position grid built for 518 px), so they load strictly; see
:func:`seg2change_core.checkpoints.load_dinov2`.

Other input sizes (multiples of 14) interpolate the position embeddings from the 37x37 grid exactly
as the official code does: bicubic, antialias off, with the sampling scale ``(grid + 0.1) / 37``.
:meth:`DinoVisionTransformer.get_intermediate_layers` returns the chosen blocks' outputs after the
final LayerNorm with the class token dropped, as ``(B, N, C)`` tokens in row-major order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn
from torch.nn import functional as F

from seg2change_core.backbones.base import check_image, resolve_layers
from seg2change_core.errors import ModelError

__all__ = [
    "DINOV2_CONFIGS",
    "Attention",
    "Block",
    "DinoV2Config",
    "DinoVisionTransformer",
    "LayerScale",
    "Mlp",
    "PatchEmbed",
    "SwiGLUFFN",
    "build_dinov2",
]

LAYER_NORM_EPS = 1e-6


@dataclass(frozen=True)
class DinoV2Config:
    """Architecture of one DINOv2 variant.

    Attributes
    ----------
    name
        Configuration name (``"dinov2_vits14"``, ...).
    embed_dim, depth, num_heads
        Token width, number of blocks, attention heads.
    ffn
        ``"mlp"`` (fc1/GELU/fc2) or ``"swiglufused"`` (w12/SiLU-gate/w3, ViT-g).
    default_layers
        Blocks taken by the change head by default.
    patch_size
        Patch side in pixels.
    pos_grid
        Side of the stored position-embedding grid (37 for the 518 px pretraining size).
    mlp_ratio
        FFN hidden width over ``embed_dim`` (before the SwiGLU 2/3 rule).
    layerscale_init
        Initial LayerScale value; ``None`` leaves LayerScale out.
    interpolate_offset
        Offset added to the target grid when computing the interpolation scale.
    in_chans
        Input bands.
    """

    name: str
    embed_dim: int
    depth: int
    num_heads: int
    ffn: Literal["mlp", "swiglufused"] = "mlp"
    default_layers: tuple[int, ...] = (2, 5, 8, 11)
    patch_size: int = 14
    pos_grid: int = 37
    mlp_ratio: float = 4.0
    layerscale_init: float | None = 1.0
    interpolate_offset: float = 0.1
    in_chans: int = 3

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DinoV2Config:
        """Rebuild from :func:`dataclasses.asdict` output (lists become tuples)."""
        values = dict(data)
        values["default_layers"] = tuple(values["default_layers"])
        return cls(**values)


DINOV2_CONFIGS: dict[str, DinoV2Config] = {
    "dinov2_vits14": DinoV2Config("dinov2_vits14", 384, 12, 6, default_layers=(2, 5, 8, 11)),
    "dinov2_vitb14": DinoV2Config("dinov2_vitb14", 768, 12, 12, default_layers=(2, 5, 8, 11)),
    "dinov2_vitl14": DinoV2Config("dinov2_vitl14", 1024, 24, 16, default_layers=(4, 11, 17, 23)),
    "dinov2_vitg14": DinoV2Config(
        "dinov2_vitg14", 1536, 40, 24, ffn="swiglufused", default_layers=(9, 19, 29, 39)
    ),
}
"""The four official variants, keyed by name."""


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection (``proj``: conv with kernel = stride = patch)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` image to ``(B, H/p * W/p, D)`` row-major tokens."""
        tokens: torch.Tensor = self.proj(x).flatten(2).transpose(1, 2)
        return tokens


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over all ``(B, N, D)`` tokens."""
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        projected: torch.Tensor = self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))
        return projected


class Mlp(nn.Module):
    """``fc1 -> GELU (exact) -> fc2``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the feed-forward network to ``(..., dim)`` tokens."""
        out: torch.Tensor = self.fc2(F.gelu(self.fc1(x)))
        return out


class SwiGLUFFN(nn.Module):
    """DINOv2's ``SwiGLUFFNFused``: ``w3(silu(a) * b)`` with ``[a | b] = w12(x)``.

    The hidden width follows the official rule ``(int(hidden * 2 / 3) + 7) // 8 * 8`` (4096 for
    ViT-g/14, whose nominal hidden width is ``4 * 1536``).
    """

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the gated feed-forward network to ``(..., dim)`` tokens."""
        gate, value = self.w12(x).chunk(2, dim=-1)
        out: torch.Tensor = self.w3(F.silu(gate) * value)
        return out


class LayerScale(nn.Module):
    """Per-channel learned scale ``gamma``."""

    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scale ``(..., dim)`` tokens channel-wise."""
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm transformer block: ``x + ls1(attn(norm1(x)))``, then ``x + ls2(mlp(norm2(x)))``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        ffn: Literal["mlp", "swiglufused"] = "mlp",
        layerscale_init: float | None = 1.0,
    ) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, num_heads)
        self.ls1: nn.Module = nn.Identity() if layerscale_init is None else LayerScale(dim, layerscale_init)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp: nn.Module = Mlp(dim, hidden) if ffn == "mlp" else SwiGLUFFN(dim, hidden)
        self.ls2: nn.Module = nn.Identity() if layerscale_init is None else LayerScale(dim, layerscale_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Transform ``(B, N, dim)`` tokens."""
        x = x + self.ls1(self.attn(self.norm1(x)))
        out: torch.Tensor = x + self.ls2(self.mlp(self.norm2(x)))
        return out


class DinoVisionTransformer(nn.Module):
    """DINOv2 vision transformer (official layout, no register tokens).

    Parameters
    ----------
    config
        Architecture; see :data:`DINOV2_CONFIGS` for the official ones.
    frozen
        Freeze all parameters (``requires_grad=False``) and switch to eval mode. DINOv2 has no
        dropout or batch statistics, so train and eval mode compute the same thing.
    """

    family: ClassVar[str] = "dinov2"

    def __init__(self, config: DinoV2Config, frozen: bool = True) -> None:
        super().__init__()
        self.config = config
        self.name = config.name
        self.embed_dim = config.embed_dim
        self.patch_size = config.patch_size
        self.in_chans = config.in_chans
        self.default_layers = config.default_layers
        dim = config.embed_dim

        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.pos_grid**2 + 1, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.patch_embed = PatchEmbed(config.patch_size, config.in_chans, dim)
        self.blocks = nn.ModuleList(
            [
                Block(dim, config.num_heads, config.mlp_ratio, config.ffn, config.layerscale_init)
                for _ in range(config.depth)
            ]
        )
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self._init_weights()
        if frozen:
            self.requires_grad_(False)
            self.eval()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def config_dict(self) -> dict[str, Any]:
        """JSON-serialisable architecture (see :meth:`DinoV2Config.from_dict`)."""
        return asdict(self.config)

    def interpolate_pos_encoding(self, grid: tuple[int, int]) -> torch.Tensor:
        """Position embeddings ``(1, 1 + rows * cols, D)`` for a token grid of ``(rows, cols)``.

        The stored grid is returned unchanged for its own size; otherwise the patch part is
        resampled bicubically (antialias off) with scale factors ``(rows + 0.1) / 37`` and
        ``(cols + 0.1) / 37``, as the official implementation does.
        """
        stored = self.config.pos_grid
        if grid == (stored, stored):
            return self.pos_embed
        dtype = self.pos_embed.dtype
        pos = self.pos_embed.float()
        cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
        offset = self.config.interpolate_offset
        scale = ((grid[0] + offset) / stored, (grid[1] + offset) / stored)
        patch_pos = F.interpolate(
            patch_pos.reshape(1, stored, stored, -1).permute(0, 3, 1, 2),
            scale_factor=scale,
            mode="bicubic",
            antialias=False,
        )
        if tuple(patch_pos.shape[2:]) != grid:
            raise ModelError(f"position interpolation gave {tuple(patch_pos.shape[2:])}, wanted {grid}")
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1)
        return torch.cat([cls_pos, patch_pos], dim=1).to(dtype)

    def prepare_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Patch-embed a ``(B, C, H, W)`` batch, prepend the class token and add positions."""
        grid = check_image(x, self.in_chans, self.patch_size)
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        return tokens + self.interpolate_pos_encoding(grid)

    def get_intermediate_layers(
        self, x: torch.Tensor, layers: Sequence[int] | None = None
    ) -> list[torch.Tensor]:
        """Patch tokens of the chosen blocks.

        Parameters
        ----------
        x
            ``(B, in_chans, H, W)`` normalised images, ``H`` and ``W`` multiples of 14.
        layers
            0-based block indices, in the order wanted; ``None`` gives :attr:`default_layers`.

        Returns
        -------
        list of torch.Tensor
            One ``(B, H/14 * W/14, D)`` tensor per layer: the block output after the final
            LayerNorm, class token removed, tokens row-major.
        """
        chosen = resolve_layers(layers, self.default_layers, len(self.blocks))
        last = max(chosen)
        tokens = self.prepare_tokens(x)
        taken: dict[int, torch.Tensor] = {}
        for index, block in enumerate(self.blocks):
            if index > last:
                break
            tokens = block(tokens)
            if index in chosen:
                taken[index] = tokens
        return [self.norm(taken[i])[:, 1:] for i in chosen]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Final-norm patch tokens ``(B, N, D)`` of the last block."""
        return self.get_intermediate_layers(x, [len(self.blocks) - 1])[0]


def build_dinov2(name: str = "dinov2_vits14", *, frozen: bool = True) -> DinoVisionTransformer:
    """Build an official DINOv2 variant with random weights.

    Parameters
    ----------
    name
        One of :data:`DINOV2_CONFIGS` (``dinov2_vits14``, ``dinov2_vitb14``, ``dinov2_vitl14``,
        ``dinov2_vitg14``); the short forms ``vits14`` etc. are accepted.
    frozen
        See :class:`DinoVisionTransformer`.

    Raises
    ------
    ModelError
        For an unknown name.
    """
    key = name if name.startswith("dinov2_") else f"dinov2_{name}"
    if key not in DINOV2_CONFIGS:
        raise ModelError(f"unknown DINOv2 variant {name!r}; choose one of {sorted(DINOV2_CONFIGS)}")
    return DinoVisionTransformer(DINOV2_CONFIGS[key], frozen=frozen)
