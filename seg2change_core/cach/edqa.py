"""EDQA: difference-query window attention with a mixture-of-experts feed-forward.

One block refines the difference feature of one level (the reference's ``MiTBlock_Swin``):

1. Two guidance maps ``g1 = conv_g1([diff, A])`` and ``g2 = conv_g2([diff, B])`` (1x1 convs on the
   channel concatenation).
2. Non-shifted 9x9 window attention whose queries and keys come from ``norm1(diff)`` and whose values
   come from ``norm_g1(g1)`` or ``norm_g2(g2)``. The attention weights are computed once and applied to
   both guidances; each result goes through the shared ``proj``.
3. ``conv_dr`` reduces the two attended maps to one, which is added to the *un-normalised* diff.
4. A second residual adds ``mlp(norm2(x))``, a mixture of four GELU experts whose outputs are weighted
   by a softmax over the *channel* dimension of a gating projection (one weight vector per token that
   multiplies every expert's output; not a per-expert gate).

Windows tile the map row-major, tokens are row-major inside a window, and the relative-position bias of
window tokens ``(r_i, c_i)``, ``(r_j, c_j)`` is read from a learned ``[17 * 17, heads]`` table at index
``(r_i - r_j + 8) * 17 + (c_i - c_j + 8)``.

The nesting ``aggregator{i}.spatial_fusion.sa`` of the official checkpoint keys is kept by the two thin
wrappers :class:`DifferenceQueryAggregator` and :class:`_SpatialFusion`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from seg2change_core.cach.geometry import WINDOW_SIZE

__all__ = [
    "DifferenceQueryAggregator",
    "DifferenceQueryBlock",
    "MixtureOfExpertsFFN",
    "WindowAttention",
    "relative_position_index",
    "window_merge",
    "window_partition",
]

NUM_HEADS = 8
NUM_EXPERTS = 4
EXPERT_EXPANSION = 3
GROUPS = 8


def relative_position_index(window: int) -> torch.Tensor:
    """The ``(window**2, window**2)`` int64 index into the relative-position bias table."""
    rows, cols = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()
    d_row = rows[:, None] - rows[None, :] + window - 1
    d_col = cols[:, None] - cols[None, :] + window - 1
    return (d_row * (2 * window - 1) + d_col).to(torch.int64)


def window_partition(feature_map: torch.Tensor, window: int) -> torch.Tensor:
    """Cut a ``(B, C, H, W)`` map into ``(B * nW, window**2, C)`` windows, row-major at both levels."""
    batch, channels, height, width = feature_map.shape
    x = feature_map.permute(0, 2, 3, 1).reshape(
        batch, height // window, window, width // window, window, channels
    )
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, channels)


def window_merge(windows: torch.Tensor, window: int, batch: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B * nW, window**2, C)`` back to ``(B, C, H, W)``."""
    channels = windows.shape[-1]
    x = windows.reshape(batch, height // window, width // window, window, window, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(batch, channels, height, width)


class WindowAttention(nn.Module):
    """Window attention with queries/keys from one input and values from another.

    Parameters
    ----------
    dim
        Token width; split into ``num_heads`` heads of ``dim // num_heads`` (head-major).
    window
        Window side.
    num_heads
        Number of heads.
    """

    relative_position_index: torch.Tensor

    def __init__(self, dim: int, window: int = WINDOW_SIZE, num_heads: int = NUM_HEADS) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.dim = dim
        self.window = window
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=True)
        self.qk = nn.Linear(dim, 2 * dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        windows, tokens, _ = x.shape
        return x.reshape(windows, tokens, self.num_heads, -1).transpose(1, 2)

    def weights(self, queries: torch.Tensor) -> torch.Tensor:
        """Attention weights ``(nW, heads, T, T)`` of ``(nW, T, dim)`` query windows."""
        windows, tokens, _ = queries.shape
        qk = self.qk(queries).reshape(windows, tokens, 2, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k = qk[0], qk[1]
        scores = (q * self.scale) @ k.transpose(-2, -1)
        n = self.window * self.window
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        scores = scores + bias.view(n, n, self.num_heads).permute(2, 0, 1).unsqueeze(0)
        return torch.softmax(scores, dim=-1)

    def attend(self, weights: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        """Apply attention ``weights`` to the values of ``(nW, T, dim)`` guidance windows."""
        windows, tokens, _ = guidance.shape
        values = self._split_heads(self.v(guidance))
        out = (weights @ values).transpose(1, 2).reshape(windows, tokens, self.dim)
        projected: torch.Tensor = self.proj(out)
        return projected

    def forward(self, queries: torch.Tensor, guidances: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Attend from ``queries`` windows to each guidance, sharing one set of attention weights."""
        weights = self.weights(queries)
        return [self.attend(weights, guidance) for guidance in guidances]


class MixtureOfExpertsFFN(nn.Module):
    """Feed-forward mixture of experts with a channel-wise softmax gate.

    ``out = sum_k softmax(gating_network(x), dim=-1) * expert_k(x)``, each expert being
    ``Linear(dim, 3 dim) -> GELU -> Linear(3 dim, dim)``.
    """

    def __init__(self, dim: int, hidden_dim: int, num_experts: int = NUM_EXPERTS) -> None:
        super().__init__()
        self.gating_network = nn.Linear(dim, dim)
        self.experts = nn.ModuleList(
            [
                nn.Sequential(nn.Linear(dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, dim))
                for _ in range(num_experts)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mix the experts' outputs for ``(..., dim)`` tokens."""
        gate = torch.softmax(self.gating_network(x), dim=-1)
        outputs = torch.stack([expert(x) for expert in self.experts], dim=0)
        return (gate.unsqueeze(0) * outputs).sum(dim=0)


class DifferenceQueryBlock(nn.Module):
    """One EDQA refinement block (see the module docstring for the computation).

    Parameters
    ----------
    dim
        Width of the level.
    window
        Attention window side; the map's height and width must be multiples of it.
    num_heads
        Attention heads.
    """

    def __init__(self, dim: int, window: int = WINDOW_SIZE, num_heads: int = NUM_HEADS) -> None:
        super().__init__()
        self.window = window
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.attention = WindowAttention(dim, window, num_heads)
        self.norm_g1 = nn.LayerNorm(dim)
        self.norm_g2 = nn.LayerNorm(dim)
        self.conv_g1 = nn.Conv2d(2 * dim, dim, kernel_size=1)
        self.conv_g2 = nn.Conv2d(2 * dim, dim, kernel_size=1)
        self.conv_dr = nn.Sequential(
            nn.Conv2d(2 * dim, dim, kernel_size=3, padding=1, bias=False),
            nn.GroupNorm(GROUPS, dim),
            nn.ReLU(),
            nn.Conv2d(dim, dim, kernel_size=3, padding=1, bias=False),
            nn.GroupNorm(GROUPS, dim),
            nn.ReLU(),
        )
        self.mlp = MixtureOfExpertsFFN(dim, EXPERT_EXPANSION * dim)
        self.apply(_reference_init)

    def forward(self, diff: torch.Tensor, feat_a: torch.Tensor, feat_b: torch.Tensor) -> torch.Tensor:
        """Refine a ``(B, C, H, W)`` difference map guided by the two dates' maps of the same shape."""
        batch, channels, height, width = diff.shape
        if height % self.window or width % self.window:
            raise ValueError(f"a {height}x{width} map cannot be tiled by {self.window}x{self.window} windows")
        guide_a = self.conv_g1(torch.cat([diff, feat_a], dim=1))
        guide_b = self.conv_g2(torch.cat([diff, feat_b], dim=1))

        def normed_windows(feature_map: torch.Tensor, norm: nn.Module) -> torch.Tensor:
            tokens = norm(feature_map.permute(0, 2, 3, 1))
            return window_partition(tokens.permute(0, 3, 1, 2), self.window)

        attended = self.attention(
            normed_windows(diff, self.norm1),
            [normed_windows(guide_a, self.norm_g1), normed_windows(guide_b, self.norm_g2)],
        )
        maps = [window_merge(out, self.window, batch, height, width) for out in attended]
        x = diff + self.conv_dr(torch.cat(maps, dim=1))
        tokens = x.permute(0, 2, 3, 1)
        tokens = tokens + self.mlp(self.norm2(tokens))
        out: torch.Tensor = tokens.permute(0, 3, 1, 2).contiguous()
        return out


class _SpatialFusion(nn.Module):
    """Holds the block as ``sa`` (checkpoint key nesting)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.sa = DifferenceQueryBlock(dim)

    def forward(self, diff: torch.Tensor, feat_a: torch.Tensor, feat_b: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.sa(diff, feat_a, feat_b)
        return out


class DifferenceQueryAggregator(nn.Module):
    """EDQA refinement of one level, nested as ``spatial_fusion.sa`` like the official checkpoints."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.spatial_fusion = _SpatialFusion(dim)

    def forward(self, diff: torch.Tensor, feat_a: torch.Tensor, feat_b: torch.Tensor) -> torch.Tensor:
        """Refine ``diff`` with the two dates' maps (all ``(B, C, H, W)``)."""
        out: torch.Tensor = self.spatial_fusion(diff, feat_a, feat_b)
        return out


def _reference_init(module: nn.Module) -> None:
    """Initialisation of the reference block (only matters when training from scratch)."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)
