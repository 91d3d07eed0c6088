"""Backbones that turn images into patch tokens for the change head.

* :mod:`.dinov2`: DINOv2 ViT-S/B/L/g 14 in the official checkpoint layout (frozen by default);
* :mod:`.compact`: a small trainable patch-14 ViT for training from scratch;
* :mod:`.conv`: a multi-scale residual CNN feeding the head's four levels, the one that learns
  change from a few hundred tiles (the default of the training recipes).

:func:`build_backbone` rebuilds either from the ``(family, config)`` pair stored in checkpoints.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from seg2change_core.backbones.base import Backbone
from seg2change_core.backbones.compact import CompactConfig, CompactViT
from seg2change_core.backbones.conv import ConvConfig, ConvPyramid
from seg2change_core.backbones.dinov2 import (
    DINOV2_CONFIGS,
    DinoV2Config,
    DinoVisionTransformer,
    build_dinov2,
)
from seg2change_core.errors import ModelError

__all__ = [
    "BACKBONE_FAMILIES",
    "DINOV2_CONFIGS",
    "Backbone",
    "CompactConfig",
    "CompactViT",
    "ConvConfig",
    "ConvPyramid",
    "DinoV2Config",
    "DinoVisionTransformer",
    "build_backbone",
    "build_dinov2",
]

BACKBONE_FAMILIES = ("dinov2", "compact", "conv")
"""Families :func:`build_backbone` knows."""


def build_backbone(family: str, config: Mapping[str, Any], *, frozen: bool = True) -> nn.Module:
    """Build a backbone with random weights from its family and configuration.

    Parameters
    ----------
    family
        ``"dinov2"``, ``"compact"`` or ``"conv"``.
    config
        The backbone's :meth:`config_dict` output.
    frozen
        Freeze a DINOv2 backbone (ignored for ``compact`` and ``conv``, which are trained).

    Raises
    ------
    ModelError
        For an unknown family or a configuration that does not fit it.
    """
    try:
        if family == "dinov2":
            return DinoVisionTransformer(DinoV2Config.from_dict(dict(config)), frozen=frozen)
        if family == "compact":
            return CompactViT(CompactConfig.from_dict(dict(config)))
        if family == "conv":
            return ConvPyramid(ConvConfig.from_dict(dict(config)))
    except (TypeError, KeyError) as exc:
        raise ModelError(
            f"backbone configuration {dict(config)} does not fit family {family!r}: {exc}"
        ) from exc
    raise ModelError(f"unknown backbone family {family!r}; this version knows {list(BACKBONE_FAMILIES)}")
