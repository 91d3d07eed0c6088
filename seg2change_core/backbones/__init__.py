"""Backbones that turn images into patch tokens for the change head.

* :mod:`.dinov2`: DINOv2 ViT-S/B/L/g 14 in the official checkpoint layout (frozen by default);
* :mod:`.compact`: a small trainable patch-14 ViT for training from scratch;
* :mod:`.conv`: a multi-scale residual CNN feeding the head's four levels, the one that learns
  change from a few hundred tiles (the default of the training recipes).

:func:`build_backbone` rebuilds any registered family (:func:`register_backbone`) from the
``(family, config)`` pair stored in checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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
    "BackboneFactory",
    "available_backbones",
    "build_backbone",
    "build_dinov2",
    "register_backbone",
]

#: The families built in; :func:`available_backbones` lists every registered one.
BACKBONE_FAMILIES = ("dinov2", "compact", "conv")

#: A backbone factory: ``factory(config, frozen=...)`` with the backbone's :meth:`config_dict`.
BackboneFactory = Callable[..., nn.Module]

_FACTORIES: dict[str, BackboneFactory] = {}


def register_backbone(family: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Function decorator that makes a backbone family buildable by :func:`build_backbone`.

    The factory takes the configuration mapping (the backbone's :meth:`config_dict`) and the
    keyword ``frozen``; it raises ``TypeError`` or ``KeyError`` for a configuration that does not
    fit, which :func:`build_backbone` turns into a :class:`ModelError`.

    Raises
    ------
    ModelError
        When another factory already has that family name.
    """

    def decorator(factory: BackboneFactory) -> BackboneFactory:
        if family in _FACTORIES and _FACTORIES[family] is not factory:
            raise ModelError(
                f"a backbone family named {family!r} is already registered (known: "
                f"{', '.join(available_backbones())}); choose another name"
            )
        _FACTORIES[family] = factory
        return factory

    return decorator


def available_backbones() -> tuple[str, ...]:
    """Registered backbone family names, sorted."""
    return tuple(sorted(_FACTORIES))


@register_backbone("dinov2")
def _dinov2(config: Mapping[str, Any], *, frozen: bool = True) -> nn.Module:
    return DinoVisionTransformer(DinoV2Config.from_dict(dict(config)), frozen=frozen)


@register_backbone("compact")
def _compact(config: Mapping[str, Any], *, frozen: bool = True) -> nn.Module:
    return CompactViT(CompactConfig.from_dict(dict(config)))  # trained: never frozen


@register_backbone("conv")
def _conv(config: Mapping[str, Any], *, frozen: bool = True) -> nn.Module:
    return ConvPyramid(ConvConfig.from_dict(dict(config)))  # trained: never frozen


def build_backbone(family: str, config: Mapping[str, Any], *, frozen: bool = True) -> nn.Module:
    """Build a backbone with random weights from its family and configuration.

    Parameters
    ----------
    family
        A registered family: ``"dinov2"``, ``"compact"``, ``"conv"`` or one added with
        :func:`register_backbone`.
    config
        The backbone's :meth:`config_dict` output.
    frozen
        Freeze a DINOv2 backbone (ignored for ``compact`` and ``conv``, which are trained).

    Raises
    ------
    ModelError
        For an unknown family or a configuration that does not fit it.
    """
    factory = _FACTORIES.get(family)
    if factory is None:
        raise ModelError(
            f"unknown backbone family {family!r}; this version knows {list(available_backbones())}"
        )
    try:
        return factory(config, frozen=frozen)
    except (TypeError, KeyError) as exc:
        raise ModelError(
            f"backbone configuration {dict(config)} does not fit family {family!r}: {exc}"
        ) from exc
