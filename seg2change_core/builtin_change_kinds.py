"""The built-in change-model kinds: CACH on a backbone, and the CVA baseline.

Registered in :mod:`seg2change_core.change_kinds` when that module is imported. Their checkpoint
metadata keys are listed in :mod:`seg2change_core.checkpoints`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from seg2change_core.backbones import build_backbone
from seg2change_core.baselines import CVABaseline
from seg2change_core.cach import CACHHead
from seg2change_core.change_kinds import ChangeModelInfo, ChangeModelKind, register_change_model
from seg2change_core.change_model import CACHChangeModel, ChangeModel, InputNormalisation
from seg2change_core.errors import CheckpointError, ModelError
from seg2change_core.state_dicts import check_state_dict, read_state_dict

if TYPE_CHECKING:
    from seg2change_core.checkpoints import CheckpointInfo

__all__ = ["BUILTIN_CHANGE_MODEL", "CACHKind", "CVABaselineKind"]

#: Name of the change model the engine runs when a job names none (the classical baseline).
BUILTIN_CHANGE_MODEL = "cva-otsu-baseline"


@register_change_model("cva-baseline")
class CVABaselineKind(ChangeModelKind):
    """The CVA baseline: differences raw values (no normalisation) with a threshold fitted per job."""

    def build(self, bands: tuple[str, ...], options: Mapping[str, Any]) -> ChangeModel:
        if options:
            raise ModelError(
                f"the CVA baseline takes no options, got {sorted(options)}; drop models.change_options"
            )
        identity = InputNormalisation(bands, (0.0,) * len(bands), (1.0,) * len(bands), 1.0)
        return CVABaseline(identity, name=BUILTIN_CHANGE_MODEL)

    def load(self, info: CheckpointInfo, path: Path, backbone_weights: Path | None) -> ChangeModel:
        return CVABaseline(info.normalisation, fit=info.baseline_fit, name=info.name)

    def describe_checkpoint(self, info: CheckpointInfo) -> ChangeModelInfo:
        return ChangeModelInfo(info.name, info.normalisation.bands, info.tile_size, info.baseline_fit is None)

    def saves(self, model: object) -> bool:
        return isinstance(model, CVABaseline)

    def checkpoint_entries(
        self, model: ChangeModel, *, include_backbone: bool
    ) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
        assert isinstance(model, CVABaseline)
        fit = None if model.fitted is None else asdict(model.fitted)
        return {"baseline_fit": json.dumps(fit)}, {}


@register_change_model("cach")
class CACHKind(ChangeModelKind):
    """Seg2Change's CACH head on a backbone of any registered family; from checkpoints only."""

    def load(self, info: CheckpointInfo, path: Path, backbone_weights: Path | None) -> ChangeModel:
        if info.backbone_family is None or info.backbone_config is None or info.head_config is None:
            raise CheckpointError(
                f"{path}: a cach checkpoint needs backbone_family, backbone_config and head_config"
            )
        try:
            backbone = build_backbone(info.backbone_family, info.backbone_config)
            model = CACHChangeModel(
                backbone,
                CACHHead(**asdict(info.head_config)),
                info.normalisation,
                layers=info.layers,
                name=info.name,
                tile_size=info.tile_size,
            )
        except ModelError as exc:
            raise CheckpointError(f"{path}: incompatible checkpoint: {exc}") from exc

        tensors = read_state_dict(path)
        if info.backbone_weights == "included":
            check_state_dict(model, tensors, str(path))
        else:
            if backbone_weights is None:
                raise CheckpointError(
                    f"{path} was saved without backbone weights ({info.backbone}); pass "
                    "backbone_weights= with the backbone's weights file"
                )
            head_tensors = {k.removeprefix("head."): v for k, v in tensors.items() if k.startswith("head.")}
            stray = [k for k in tensors if not k.startswith("head.")]
            if stray:
                raise CheckpointError(
                    f"{path}: unexpected tensor {stray[0]!r} in a checkpoint without backbone"
                )
            check_state_dict(model.head, head_tensors, str(path))
            check_state_dict(model.backbone, read_state_dict(backbone_weights), str(backbone_weights))
        return model.eval()

    def saves(self, model: object) -> bool:
        return isinstance(model, CACHChangeModel)

    def checkpoint_entries(
        self, model: ChangeModel, *, include_backbone: bool
    ) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
        assert isinstance(model, CACHChangeModel)
        backbone = model.backbone
        metadata = {
            "backbone": str(backbone.name),
            "backbone_family": str(backbone.family),
            "backbone_config": json.dumps(backbone.config_dict()),
            "backbone_weights": "included" if include_backbone else "external",
            "layers": json.dumps(list(model.layers)),
            "head_config": json.dumps(asdict(model.head.config)),
        }
        tensors = {
            name: tensor.detach().contiguous().cpu()
            for name, tensor in model.state_dict().items()
            if include_backbone or not name.startswith("backbone.")
        }
        return metadata, tensors
