"""The optimisation being run (model, AdamW, schedule, weight average) and its resumable state.

:class:`Optimisation` holds what one optimiser step changes. After every epoch
:meth:`Optimisation.save_state` writes it, with the epoch, the best score so far and the random
generators' states, to a training state file (``torch.save`` of plain containers, replaced
atomically); :meth:`Optimisation.restore` reads such a file back (``weights_only=True``) after
checking that it was written with the same settings and normalisation, so a resumed run continues
exactly where the interrupted one stopped.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from seg2change_core.change_model import CACHChangeModel, InputNormalisation
from seg2change_core.errors import CheckpointError
from seg2change_core.training_config import TrainConfig

__all__ = ["STATE_FORMAT", "BestEpoch", "Optimisation", "cosine_schedule"]

STATE_FORMAT = "seg2change-train-state-1"


def cosine_schedule(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Learning-rate factor at an optimiser step: linear warm-up, then cosine decay to ``min_ratio``.

    Parameters
    ----------
    step
        Steps taken so far (0 for the first step).
    total
        Steps in all.
    warmup
        Warm-up steps (factor from 0.01 to 1).
    min_ratio
        Factor reached at ``total``.
    """
    if warmup > 0 and step < warmup:
        return 0.01 + 0.99 * step / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class BestEpoch:
    """The best validation score so far and its epoch (1-based; 0 before the first).

    Attributes
    ----------
    iou
        Validation change IoU of the best epoch (``-inf`` before the first; NaN without
        validation data).
    epoch
        Its epoch.
    """

    iou: float = -math.inf
    epoch: int = 0


def _rng_state() -> dict[str, Any]:
    version, mt_state, gauss = random.getstate()
    np_state = np.random.get_state()
    assert isinstance(np_state, tuple)
    return {
        "python": [version, list(mt_state), gauss],
        "numpy": [
            str(np_state[0]),
            torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
        "torch": torch.get_rng_state(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    version, mt_state, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in mt_state), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])


def _load_state(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"training state {path} not found; give the .state.pt file a run wrote")
    try:
        state: Any = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # torch.load raises several types for foreign files
        raise CheckpointError(f"cannot read training state {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} is not a seg2change training state ({STATE_FORMAT})")
    return state


@dataclass
class Optimisation:
    """The model being trained with its optimiser, learning-rate schedule and weight average.

    Attributes
    ----------
    model
        The model whose weights the optimiser steps.
    params
        Its trainable parameters.
    optimiser, scheduler
        AdamW and its per-step :func:`cosine_schedule`.
    device
        Where the model lives.
    average
        Exponential moving average of the weights (``TrainConfig.ema_decay``), or ``None``.
    frozen_backbone
        Whether the backbone is frozen (its weights are then left out of the state file).
    """

    model: CACHChangeModel
    params: list[nn.Parameter]
    optimiser: torch.optim.AdamW
    scheduler: torch.optim.lr_scheduler.LambdaLR
    device: torch.device
    average: AveragedModel | None
    frozen_backbone: bool

    @property
    def scored(self) -> CACHChangeModel:
        """The model validated and saved: the weight average when one is kept."""
        if self.average is None:
            return self.model
        module = self.average.module
        assert isinstance(module, CACHChangeModel)
        return module

    @classmethod
    def create(
        cls, model: CACHChangeModel, config: TrainConfig, total_steps: int, *, frozen_backbone: bool
    ) -> Optimisation:
        """Set up AdamW, the schedule over ``total_steps`` and the weight average for ``model``."""
        params = [p for p in model.parameters() if p.requires_grad]
        optimiser = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimiser,
            lambda step: cosine_schedule(step, total_steps, config.warmup_steps, config.min_lr_ratio),
        )
        average = None
        if config.ema_decay is not None:
            average = AveragedModel(
                model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True
            )
        device = next(model.parameters()).device
        return cls(model, params, optimiser, scheduler, device, average, frozen_backbone)

    def step(self, loss: torch.Tensor, grad_clip: float | None) -> None:
        """One optimiser step on ``loss``: gradients, clipping, AdamW, schedule, weight average."""
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, grad_clip)
        self.optimiser.step()
        self.scheduler.step()
        if self.average is not None:
            self.average.update_parameters(self.model)

    def _trainable_state(self) -> dict[str, torch.Tensor]:
        return {
            k: v.detach().clone()
            for k, v in self.model.state_dict().items()
            if not (self.frozen_backbone and k.startswith("backbone."))
        }

    def save_state(
        self,
        path: Path,
        *,
        config_text: str,
        normalisation: InputNormalisation,
        epoch: int,
        best: BestEpoch,
    ) -> None:
        """Write the training state after ``epoch`` epochs; a run killed while saving keeps the previous one.

        Parameters
        ----------
        path
            The state file.
        config_text
            The run's settings as canonical JSON (a resume must give the same).
        normalisation
            The model's input normalisation (a resume must give the same).
        epoch
            Epochs done in all.
        best
            The best epoch so far.
        """
        state = {
            "format": STATE_FORMAT,
            "config": config_text,
            "normalisation": normalisation.to_json(),
            "model": self._trainable_state(),
            "optimizer": self.optimiser.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": epoch,
            "best_iou": best.iou,
            "best_epoch": best.epoch,
            "rng": _rng_state(),
            **({"average": self.average.state_dict()} if self.average is not None else {}),
        }
        partial = path.with_name(path.name + ".partial")
        torch.save(state, partial)
        partial.replace(path)

    def restore(
        self, path: Path, *, config_text: str, normalisation: InputNormalisation
    ) -> tuple[int, BestEpoch]:
        """Load a training state written by :meth:`save_state`, and the random generators' states.

        Returns
        -------
        epochs, best
            Epochs done in all, and the best epoch so far.

        Raises
        ------
        CheckpointError
            For a missing or foreign file, or one written with other settings, another
            normalisation or other model tensors.
        """
        state = _load_state(path)
        if state["config"] != config_text:
            raise CheckpointError(
                f"{path} was written with other settings ({state['config']}); resume with the "
                "same model and training settings"
            )
        if state["normalisation"] != normalisation.to_json():
            raise CheckpointError(f"{path} was trained with another normalisation: {state['normalisation']}")
        try:
            missing, unexpected = self.model.load_state_dict(state["model"], strict=False)
        except RuntimeError as exc:  # tensors of other shapes
            raise CheckpointError(f"{path}: model tensors do not match: {exc}") from exc
        if unexpected or any(not (self.frozen_backbone and k.startswith("backbone.")) for k in missing):
            raise CheckpointError(
                f"{path}: model tensors do not match (missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
        self.optimiser.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.average is not None:
            self.average.load_state_dict(state["average"])
        _set_rng_state(state["rng"])
        return int(state["epoch"]), BestEpoch(float(state["best_iou"]), int(state["best_epoch"]))
