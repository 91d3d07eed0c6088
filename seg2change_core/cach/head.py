"""The category-agnostic change head (CACH) of Seg2Change, in the official checkpoint layout.

``CACHHead(in_channels)`` takes the four intermediate token maps of a DINOv2 backbone for two dates
and returns change logits. Its ``state_dict()`` has exactly the names, order and shapes of the
reference ``CHead_FPN_FDR(in_channels, hidden_dim=64, nclass=2, multi=True)``, so official
checkpoints load strictly. The stages, in order:

* modulation (:mod:`.modulation`): ``adapterA``/``adapterB`` and ``resize_layers``;
* BDFM difference fusion (:mod:`.bdfm`): ``diff_fdr0..3``;
* EDQA difference-query attention (:mod:`.edqa`): ``aggregator0..3``;
* ResUp residual upsampling (:mod:`.resup`): ``layer0..3_rn`` and ``refinenet0..3``, run on the
  refined differences (change branch) and, with the same weights, on each date's own maps;
* classifiers ``class_embed`` (main), ``class_embed1/2/3`` (deep supervision on the change branch's
  intermediate paths), ``class_embedA/B`` (each date alone).

Beyond the reference, which hard-codes a 504 px tile (36x36 tokens), the token grid is taken from the
inputs (square by default, or an explicit ``grid=(rows, columns)``) and outputs are ``14 * grid``
pixels. Grids that are not multiples of 18 are padded (see :mod:`.geometry`) and cropped back. With
a 36x36 grid the computation is the reference's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from seg2change_core.cach.bdfm import DifferenceFusion
from seg2change_core.cach.edqa import DifferenceQueryAggregator
from seg2change_core.cach.geometry import LEVEL_WIDTHS, PATCH_SIZE, padded_grid, square_grid
from seg2change_core.cach.modulation import make_adapters, make_resize_layers, tokens_to_map
from seg2change_core.cach.resup import FusionBlock, UpsamplerPaths, residual_upsample
from seg2change_core.errors import ModelError

__all__ = ["CACHConfig", "CACHHead", "CACHOutput"]

NUM_LEVELS = 4


@dataclass(frozen=True)
class CACHConfig:
    """Constructor arguments of :class:`CACHHead` (recorded in checkpoints).

    Attributes
    ----------
    in_channels
        Backbone token width (384 for DINOv2 ViT-S/14, 768 for ViT-B/14).
    hidden_dim
        Width of the ResUp decoder.
    nclass
        Number of output classes (2: channel 0 unchanged, channel 1 changed).
    """

    in_channels: int
    hidden_dim: int = 64
    nclass: int = 2


class CACHOutput(NamedTuple):
    """The six logit maps of the head, each ``(B, nclass, 14 * rows, 14 * columns)``.

    The order is the reference's return order, so this is also a plain 6-tuple.
    """

    change: torch.Tensor
    """Main change logits."""
    aux1: torch.Tensor
    """Deep-supervision logits from the change branch after ``refinenet1`` (grid x4)."""
    aux2: torch.Tensor
    """From the change branch after ``refinenet2`` (grid x2)."""
    aux3: torch.Tensor
    """From the change branch after ``refinenet3`` (grid x1)."""
    out_a: torch.Tensor
    """Logits decoded from date-A features alone."""
    out_b: torch.Tensor
    """Logits decoded from date-B features alone."""


class CACHHead(nn.Module):
    """Category-agnostic change head (official ``CHead_FPN_FDR`` layout).

    Parameters
    ----------
    in_channels
        Backbone token width.
    hidden_dim
        Width of the ResUp decoder (64 in every official checkpoint).
    nclass
        Output classes (2).
    """

    def __init__(self, in_channels: int, hidden_dim: int = 64, nclass: int = 2) -> None:
        super().__init__()
        self.config = CACHConfig(in_channels, hidden_dim, nclass)
        w0, w1, w2, w3 = LEVEL_WIDTHS

        # Registration order fixes the state_dict order of the official layout.
        self.adapterA = make_adapters(in_channels)
        self.adapterB = make_adapters(in_channels)
        self.diff_fdr0 = DifferenceFusion(w0)
        self.diff_fdr1 = DifferenceFusion(w1)
        self.diff_fdr2 = DifferenceFusion(w2)
        self.diff_fdr3 = DifferenceFusion(w3)
        self.aggregator0 = DifferenceQueryAggregator(w0)
        self.aggregator1 = DifferenceQueryAggregator(w1)
        self.aggregator2 = DifferenceQueryAggregator(w2)
        self.aggregator3 = DifferenceQueryAggregator(w3)
        self.resize_layers = make_resize_layers()
        self.layer0_rn = nn.Conv2d(w0, hidden_dim, kernel_size=3, padding=1)
        self.layer1_rn = nn.Conv2d(w1, hidden_dim, kernel_size=3, padding=1)
        self.layer2_rn = nn.Conv2d(w2, hidden_dim, kernel_size=3, padding=1)
        self.layer3_rn = nn.Conv2d(w3, hidden_dim, kernel_size=3, padding=1)
        self.refinenet0 = FusionBlock(hidden_dim)
        self.refinenet1 = FusionBlock(hidden_dim)
        self.refinenet2 = FusionBlock(hidden_dim)
        self.refinenet3 = FusionBlock(hidden_dim)
        self.class_embed = nn.Sequential(
            nn.Conv2d(hidden_dim, hidden_dim, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden_dim, nclass, kernel_size=1),
        )
        self.class_embed3 = nn.Conv2d(hidden_dim, nclass, kernel_size=1)
        self.class_embed2 = nn.Conv2d(hidden_dim, nclass, kernel_size=1)
        self.class_embed1 = nn.Conv2d(hidden_dim, nclass, kernel_size=1)
        self.class_embedA = nn.Conv2d(hidden_dim, nclass, kernel_size=1)
        self.class_embedB = nn.Conv2d(hidden_dim, nclass, kernel_size=1)

    # Readable views of the stages (the attributes above carry the checkpoint names).
    @property
    def difference_fusion(self) -> list[nn.Module]:
        """BDFM blocks, level 0 to 3."""
        return [self.diff_fdr0, self.diff_fdr1, self.diff_fdr2, self.diff_fdr3]

    @property
    def difference_refinement(self) -> list[nn.Module]:
        """EDQA blocks, level 0 to 3."""
        return [self.aggregator0, self.aggregator1, self.aggregator2, self.aggregator3]

    @property
    def level_projections(self) -> list[nn.Module]:
        """ResUp input projections ``layer0_rn .. layer3_rn``."""
        return [self.layer0_rn, self.layer1_rn, self.layer2_rn, self.layer3_rn]

    @property
    def fusion_blocks(self) -> list[nn.Module]:
        """ResUp fusion blocks ``refinenet0 .. refinenet3``."""
        return [self.refinenet0, self.refinenet1, self.refinenet2, self.refinenet3]

    def forward(
        self,
        feats_a: Sequence[torch.Tensor],
        feats_b: Sequence[torch.Tensor],
        grid: tuple[int, int] | None = None,
    ) -> CACHOutput:
        """Compute the six logit maps.

        Parameters
        ----------
        feats_a, feats_b
            Four ``(B, N, C)`` token tensors each (backbone intermediate layers, shallow to deep,
            after the final norm, class token removed), date A then date B. Adapters are
            date-specific, so the order matters.
        grid
            ``(rows, columns)`` of the token grid; ``None`` means a square grid of ``N`` tokens.

        Returns
        -------
        CACHOutput
            ``(change, aux1, aux2, aux3, out_a, out_b)`` raw logits of size ``14 * grid``.
        """
        return self._decode_all(self._encode(feats_a, feats_b, grid, None), None)

    def forward_debug(
        self,
        feats_a: Sequence[torch.Tensor],
        feats_b: Sequence[torch.Tensor],
        grid: tuple[int, int] | None = None,
    ) -> tuple[CACHOutput, dict[str, torch.Tensor]]:
        """Like :meth:`forward`, also returning intermediates keyed by stage.

        Keys: ``lvl{i}.feat_A_after_adapter_resize``, ``lvl{i}.feat_B_after_adapter_resize``,
        ``lvl{i}.mdfm_diff``, ``lvl{i}.aggregator_out`` for ``i`` in 0..3, ``path{1,2,3}_change`` and
        ``aux3_logits_before_resize``; all on the (possibly padded) working grid.
        """
        debug: dict[str, torch.Tensor] = {}
        outputs = self._decode_all(self._encode(feats_a, feats_b, grid, debug), debug)
        return outputs, debug

    def change_logits(
        self,
        feats_a: Sequence[torch.Tensor],
        feats_b: Sequence[torch.Tensor],
        grid: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Only the main change logits (``forward(...).change``), skipping the auxiliary outputs."""
        encoded = self._encode(feats_a, feats_b, grid, None)
        return encoded.finish(self.class_embed(self._upsample(encoded.refined).output))

    def _resolve_grid(
        self, feats_a: Sequence[torch.Tensor], feats_b: Sequence[torch.Tensor], grid: tuple[int, int] | None
    ) -> tuple[int, int]:
        if len(feats_a) != NUM_LEVELS or len(feats_b) != NUM_LEVELS:
            raise ModelError(
                f"CACHHead needs {NUM_LEVELS} token tensors per date, got {len(feats_a)} and "
                f"{len(feats_b)}; pass the backbone's get_intermediate_layers output for four layers"
            )
        reference = feats_a[0].shape
        for tensor in (*feats_a, *feats_b):
            if tensor.dim() != 3 or tensor.shape != reference:
                raise ModelError(
                    f"all token tensors must share one (B, N, C) shape; got {tuple(tensor.shape)} "
                    f"beside {tuple(reference)}"
                )
        if reference[2] != self.config.in_channels:
            raise ModelError(
                f"tokens have width {reference[2]} but this head was built for "
                f"{self.config.in_channels}; build CACHHead(in_channels={reference[2]}) or use the "
                "matching backbone"
            )
        num_tokens = reference[1]
        if grid is None:
            try:
                return square_grid(num_tokens)
            except ValueError as exc:
                raise ModelError(str(exc)) from exc
        rows, cols = grid
        if rows * cols != num_tokens:
            raise ModelError(f"grid {rows}x{cols} does not hold the {num_tokens} tokens given")
        return rows, cols

    def _encode(
        self,
        feats_a: Sequence[torch.Tensor],
        feats_b: Sequence[torch.Tensor],
        grid: tuple[int, int] | None,
        debug: dict[str, torch.Tensor] | None,
    ) -> _Encoded:
        """Modulation, BDFM and EDQA on the (padded) working grid."""
        rows, cols = self._resolve_grid(feats_a, feats_b, grid)
        work = (padded_grid(rows), padded_grid(cols))
        levels_a: list[torch.Tensor] = []
        levels_b: list[torch.Tensor] = []
        for i in range(NUM_LEVELS):
            map_a = _pad_map(tokens_to_map(feats_a[i], (rows, cols)), work)
            map_b = _pad_map(tokens_to_map(feats_b[i], (rows, cols)), work)
            levels_a.append(self.resize_layers[i](self.adapterA[i](map_a)))
            levels_b.append(self.resize_layers[i](self.adapterB[i](map_b)))

        refined: list[torch.Tensor] = []
        for i, (fusion, refinement) in enumerate(
            zip(self.difference_fusion, self.difference_refinement, strict=True)
        ):
            diff = fusion(levels_a[i], levels_b[i])
            refined.append(refinement(diff, levels_a[i], levels_b[i]))
            if debug is not None:
                debug[f"lvl{i}.feat_A_after_adapter_resize"] = levels_a[i]
                debug[f"lvl{i}.feat_B_after_adapter_resize"] = levels_b[i]
                debug[f"lvl{i}.mdfm_diff"] = diff
                debug[f"lvl{i}.aggregator_out"] = refined[i]
        return _Encoded(levels_a, levels_b, refined, (rows, cols), work)

    def _decode_all(self, encoded: _Encoded, debug: dict[str, torch.Tensor] | None) -> CACHOutput:
        """ResUp on the change branch and on each date, and the six classifiers."""
        paths = self._upsample(encoded.refined)
        aux3_logits = self.class_embed3(paths.path3)
        if debug is not None:
            debug["path1_change"] = paths.path1
            debug["path2_change"] = paths.path2
            debug["path3_change"] = paths.path3
            debug["aux3_logits_before_resize"] = aux3_logits
        finish = encoded.finish
        return CACHOutput(
            change=finish(self.class_embed(paths.output)),
            aux1=finish(self.class_embed1(paths.path1)),
            aux2=finish(self.class_embed2(paths.path2)),
            aux3=finish(aux3_logits),
            out_a=finish(self.class_embedA(self._upsample(encoded.levels_a).output)),
            out_b=finish(self.class_embedB(self._upsample(encoded.levels_b).output)),
        )

    def _upsample(self, levels: Sequence[torch.Tensor]) -> UpsamplerPaths:
        return residual_upsample(self.level_projections, self.fusion_blocks, levels)


@dataclass(frozen=True)
class _Encoded:
    """Level maps of both dates and the refined differences, on the working grid."""

    levels_a: list[torch.Tensor]
    levels_b: list[torch.Tensor]
    refined: list[torch.Tensor]
    grid: tuple[int, int]
    work_grid: tuple[int, int]

    def finish(self, logits: torch.Tensor) -> torch.Tensor:
        """Resize logits bilinearly to ``14 * work_grid`` and crop to ``14 * grid``."""
        size = (PATCH_SIZE * self.work_grid[0], PATCH_SIZE * self.work_grid[1])
        resized = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return resized[:, :, : PATCH_SIZE * self.grid[0], : PATCH_SIZE * self.grid[1]]


def _pad_map(feature_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pad a ``(B, C, rows, columns)`` token map at the bottom and right to ``size``.

    Reflection is used when each padding is smaller than the side it extends (always the case for
    grids of 18 tokens or more), edge replication otherwise.
    """
    pad_rows = size[0] - feature_map.shape[2]
    pad_cols = size[1] - feature_map.shape[3]
    if pad_rows == 0 and pad_cols == 0:
        return feature_map
    reflect = pad_rows < feature_map.shape[2] and pad_cols < feature_map.shape[3]
    return F.pad(feature_map, (0, pad_cols, 0, pad_rows), mode="reflect" if reflect else "replicate")
