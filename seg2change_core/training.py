"""Training the CACH change model: the loop, resumable state, best checkpoint.

Loss
----
:func:`seg2change_core.losses.cach_loss`: the reference's deep-supervision loss, with an optional
dice term (:class:`~seg2change_core.losses.LossWeights`).

Loop
----
:func:`train` runs AdamW with a linear warm-up and a cosine decay (per optimiser step), feeds
random crops with identical flips/rotations of both dates and the label
(:class:`~seg2change_core.datasets.ChangeDetectionDataset`), validates after every epoch on whole
validation images, and writes the checkpoint with the best validation change IoU
(:func:`~seg2change_core.checkpoints.save_change_model`; without validation data, the last epoch's).
The model's one :class:`~seg2change_core.change_model.InputNormalisation` is applied inside the
model for training and inference alike, and stored in the checkpoint.

Reproducibility and resuming
----------------------------
Python's, NumPy's and torch's generators are seeded from ``TrainConfig.seed`` before the model is
built. The order of samples and their augmentations depend only on ``(seed, epoch, index)``. After
every epoch a training state file (model, optimiser, scheduler, epoch, best score, RNG states) is
written (``torch.save`` of plain containers, read back with ``weights_only=True``); training
started again with ``resume=`` continues from it and gives the same weights as a run that was
never interrupted (on the same machine and thread count). The optimisation and its state file
live in :mod:`seg2change_core.training_state`, the settings in
:mod:`seg2change_core.training_config`.

Denormal floats, which appear in the weights and activations after some steps, make CPU kernels
up to ten times slower; :func:`train` therefore calls ``torch.set_flush_denormal(True)``, which
stays in effect for the process (values below ~1e-38 become 0).

A JSON-lines log gets one record per epoch: ``epoch``, ``step``, ``lr``, ``train_loss`` and its
parts, ``val_iou``, ``val_f1``, ``val_precision``, ``val_recall``, ``best``, ``seconds``.
Progress is reported to a :class:`TrainingObserver` (the command line draws it with rich).
"""

from __future__ import annotations

import copy
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seg2change_core.backbones import DINOV2_CONFIGS, build_backbone
from seg2change_core.cach import CACHHead
from seg2change_core.change_model import CACHChangeModel, InputNormalisation
from seg2change_core.checkpoints import load_dinov2, save_change_model
from seg2change_core.datasets import ChangeDetectionDataset, collate_samples
from seg2change_core.errors import DatasetError, ModelError
from seg2change_core.evaluation import evaluate
from seg2change_core.losses import cach_loss

# Re-exported: the specs and the state live in their own modules; callers import them from here.
from seg2change_core.training_config import TRAINABLE_BACKBONES, LossWeights, ModelConfig, TrainConfig
from seg2change_core.training_state import STATE_FORMAT, BestEpoch, Optimisation, cosine_schedule

__all__ = [
    "STATE_FORMAT",
    "TRAINABLE_BACKBONES",
    "LossWeights",
    "ModelConfig",
    "TrainConfig",
    "TrainResult",
    "TrainingObserver",
    "build_model",
    "cosine_schedule",
    "seed_everything",
    "train",
]


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` did.

    Attributes
    ----------
    checkpoint
        The best (or last) checkpoint written.
    state
        The training state file (for resuming).
    epochs_completed
        Epochs done in all (including those before a resume).
    best_epoch
        Epoch (1-based) of the checkpoint.
    best_val_iou
        Its validation change IoU (NaN without validation data).
    history
        The log records of the epochs run in this call.
    seconds
        Wall time of this call.
    stopped_early
        Whether ``stop_after_epochs`` or ``max_seconds`` ended it before ``epochs``.
    """

    checkpoint: Path
    state: Path
    epochs_completed: int
    best_epoch: int
    best_val_iou: float
    history: list[dict[str, Any]]
    seconds: float
    stopped_early: bool


class TrainingObserver:
    """Receives progress from :func:`train`; the default does nothing. Override what you need."""

    def on_start(self, epochs: int, steps_per_epoch: int, start_epoch: int) -> None:
        """Called once, before the first epoch of this call (``start_epoch`` 0-based)."""

    def on_step(self, epoch: int, step: int, loss: float) -> None:
        """Called after every optimiser step (``epoch`` 1-based, ``step`` within the epoch, 1-based)."""

    def on_validation(self, epoch: int, done: int, total: int) -> None:
        """Called during validation with the pairs done so far."""

    def on_epoch(self, record: dict[str, Any]) -> None:
        """Called with each epoch's log record."""


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(
    config: ModelConfig, normalisation: InputNormalisation, name: str | None = None
) -> CACHChangeModel:
    """Build the CACH model to train (random weights except a loaded, frozen DINOv2).

    Raises
    ------
    ModelError
        For an unknown backbone, DINOv2 without weights or with other than 3 bands, or a
        configuration that does not fit.
    """
    if config.backbone in TRAINABLE_BACKBONES:
        backbone = build_backbone(
            config.backbone, _trainable_backbone_config(config, normalisation.num_bands)
        )
        width = config.embed_dim
    else:
        key = config.backbone if config.backbone.startswith("dinov2_") else f"dinov2_{config.backbone}"
        if key not in DINOV2_CONFIGS:
            raise ModelError(
                f"unknown backbone {config.backbone!r}; choose 'conv', 'compact' or one of "
                f"{sorted(DINOV2_CONFIGS)}"
            )
        if config.backbone_weights is None:
            raise ModelError(
                f"backbone {key} needs its pretrained weights: pass the official "
                f"{key}_pretrain.pth (or a safetensors copy) as backbone weights"
            )
        if normalisation.num_bands != 3:
            raise ModelError(
                f"DINOv2 takes 3-band RGB images, the data has {normalisation.num_bands} bands; use the "
                "conv backbone for other band sets"
            )
        backbone = load_dinov2(config.backbone_weights, key, frozen=True)
        width = DINOV2_CONFIGS[key].embed_dim
    return CACHChangeModel(
        backbone,
        CACHHead(width, hidden_dim=config.hidden_dim),
        normalisation,
        name=name,
        tile_size=config.tile_size,
    )


def _trainable_backbone_config(config: ModelConfig, num_bands: int) -> dict[str, Any]:
    """The configuration of a trainable backbone family (:data:`TRAINABLE_BACKBONES`) for
    :func:`~seg2change_core.backbones.build_backbone`; the other fields keep their defaults."""
    if config.backbone == "conv":
        return {
            "in_chans": num_bands,
            "widths": config.widths,
            "blocks": config.blocks,
            "embed_dim": config.embed_dim,
        }
    return {
        "in_chans": num_bands,
        "embed_dim": config.embed_dim,
        "depth": config.depth,
        "num_heads": config.num_heads,
        "mlp_ratio": config.mlp_ratio,
    }


def _config_record(model_config: ModelConfig, config: TrainConfig) -> dict[str, Any]:
    return {"model": asdict(model_config), "train": asdict(config)}


def _validate(
    model: CACHChangeModel, data: ChangeDetectionDataset, observer: TrainingObserver, epoch: int
) -> dict[str, Any]:
    """Validation scores; ``val_iou`` is the mean of the datasets' IoUs (each dataset counts once)."""
    model.eval()
    try:
        report = evaluate(model, data, on_pair=lambda done, total: observer.on_validation(epoch, done, total))
    finally:
        model.train()
    counts: dict[str, list[int]] = {}
    for pair in report.per_pair:
        sums = counts.setdefault(pair.key.split("/", 1)[0], [0, 0, 0])
        sums[0] += pair.tp
        sums[1] += pair.fp
        sums[2] += pair.fn
    per_dataset = {name: tp / (tp + fp + fn) for name, (tp, fp, fn) in counts.items() if tp + fp + fn}
    s = report.scores
    record: dict[str, Any] = {
        key: (None if math.isnan(value) else value)
        for key, value in (
            ("val_iou_pooled", s.iou),
            ("val_f1", s.f1),
            ("val_precision", s.precision),
            ("val_recall", s.recall),
        )
    }
    record["val_iou"] = sum(per_dataset.values()) / len(per_dataset) if per_dataset else None
    record["val_iou_datasets"] = {k: round(v, 4) for k, v in sorted(per_dataset.items())}
    return record


def _train_epoch(
    run: Optimisation,
    train_data: ChangeDetectionDataset,
    config: TrainConfig,
    epoch: int,
    steps_per_epoch: int,
    observer: TrainingObserver,
) -> dict[str, Any]:
    """One epoch of optimiser steps; returns the epoch's log record (losses averaged)."""
    device = run.device
    train_data.set_epoch(epoch)
    order = np.random.default_rng([config.seed, epoch, 7]).permutation(len(train_data))
    sums = dict.fromkeys(("train_loss", "train_change", "train_aux", "train_similarity", "train_dice"), 0.0)
    for step in range(steps_per_epoch):
        chosen = order[step * config.batch_size : (step + 1) * config.batch_size]
        batch = collate_samples([train_data[int(i)] for i in chosen])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16_autocast):
            outputs = run.model(batch.before.to(device), batch.after.to(device))
        parts = cach_loss([o.float() for o in outputs], batch.target.to(device), config.loss)
        run.step(parts.total, config.grad_clip)
        values = (parts.total, parts.change, parts.aux, parts.similarity, parts.dice)
        for key, value in zip(sums, values, strict=True):
            sums[key] += float(value.detach())
        observer.on_step(epoch + 1, step + 1, float(parts.total.detach()))
    return {
        "epoch": epoch + 1,
        "step": (epoch + 1) * steps_per_epoch,
        "lr": float(run.scheduler.get_last_lr()[0]),
        **{k: v / steps_per_epoch for k, v in sums.items()},
    }


def _steps_per_epoch(samples: int, batch_size: int) -> int:
    return max(1, samples // batch_size)


@dataclass(frozen=True)
class _RunFiles:
    """Where a run writes: the best checkpoint, the training state and the metrics log."""

    checkpoint: Path
    state: Path
    log: Path

    @classmethod
    def of(cls, out: str | Path, state_path: str | Path | None, log_path: str | Path | None) -> _RunFiles:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        state = Path(state_path) if state_path is not None else out.with_name(out.stem + ".state.pt")
        log = Path(log_path) if log_path is not None else out.with_name(out.stem + ".log.jsonl")
        return cls(out, state, log)


def _training_samples(
    train_data: ChangeDetectionDataset,
    val_data: ChangeDetectionDataset | None,
    normalisation: InputNormalisation,
    seed: int,
) -> ChangeDetectionDataset:
    """The training samples drawn with the run's seed, once both datasets are checked."""
    if val_data is not None and (val_data.augment or val_data.repeats != 1):
        raise DatasetError("validation data must not be augmented or repeated")
    sample = train_data[0]
    if sample["before"].shape[0] != normalisation.num_bands:
        raise DatasetError(
            f"the training images have {sample['before'].shape[0]} bands but the normalisation names "
            f"{normalisation.num_bands} ({list(normalisation.bands)}); give one band name per band"
        )
    samples = copy.copy(train_data)  # shares the pair cache; only the seed differs
    samples.seed = seed
    return samples


def _start(
    model_config: ModelConfig, config: TrainConfig, normalisation: InputNormalisation, samples: int
) -> Optimisation:
    """Seed everything, then build the model on its device and set up its optimisation."""
    seed_everything(config.seed)
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError("device cuda was asked for but torch sees no CUDA GPU; use --device cpu")
    model = build_model(model_config, normalisation, name=config.model_name).to(device)
    model.train()
    total_steps = config.epochs * _steps_per_epoch(samples, config.batch_size)
    return Optimisation.create(model, config, total_steps, frozen_backbone=model_config.frozen_backbone)


@dataclass
class _Epochs:
    """The epochs of one :func:`train` call: each trains, validates, keeps the best and saves the state."""

    run: Optimisation
    train_data: ChangeDetectionDataset
    val_data: ChangeDetectionDataset | None
    config: TrainConfig
    normalisation: InputNormalisation
    files: _RunFiles
    observer: TrainingObserver
    summary: dict[str, Any]
    config_text: str
    best: BestEpoch

    def run_all(
        self, start_epoch: int, started: float, stop_after_epochs: int | None, max_seconds: float | None
    ) -> TrainResult:
        """Run the epochs from ``start_epoch`` until the last, ``stop_after_epochs`` or ``max_seconds``."""
        epochs = self.config.epochs
        history: list[dict[str, Any]] = []
        self.observer.on_start(
            epochs, _steps_per_epoch(len(self.train_data), self.config.batch_size), start_epoch
        )
        stopped_early = False
        for epoch in range(start_epoch, epochs):
            record = self.run_epoch(epoch)
            history.append(record)
            self.observer.on_epoch(record)
            if epoch + 1 < epochs and _time_to_stop(len(history), stop_after_epochs, started, max_seconds):
                stopped_early = True
                break
        return TrainResult(
            checkpoint=self.files.checkpoint,
            state=self.files.state,
            epochs_completed=start_epoch + len(history),
            best_epoch=self.best.epoch,
            best_val_iou=self.best.iou if self.val_data is not None and self.best.iou >= 0 else math.nan,
            history=history,
            seconds=time.monotonic() - started,
            stopped_early=stopped_early,
        )

    def run_epoch(self, epoch: int) -> dict[str, Any]:
        """Run epoch ``epoch`` (0-based) and return its log record (also appended to the log)."""
        started = time.monotonic()
        steps = _steps_per_epoch(len(self.train_data), self.config.batch_size)
        record = _train_epoch(self.run, self.train_data, self.config, epoch, steps, self.observer)
        iou, improved = math.nan, True
        if self.val_data is not None:
            record.update(_validate(self.run.scored, self.val_data, self.observer, epoch + 1))
            iou = record["val_iou"] if record["val_iou"] is not None else -1.0
            improved = iou > self.best.iou
        if improved:
            self._keep_best(record, iou, epoch + 1)
        record["best"] = improved
        record["seconds"] = round(time.monotonic() - started, 3)
        self.run.save_state(
            self.files.state,
            config_text=self.config_text,
            normalisation=self.normalisation,
            epoch=epoch + 1,
            best=self.best,
        )
        with self.files.log.open("a") as log:
            log.write(json.dumps(record) + "\n")
        return record

    def _keep_best(self, record: dict[str, Any], iou: float, epoch: int) -> None:
        """Record a new best epoch and write its checkpoint."""
        self.best = BestEpoch(iou, epoch)
        self.summary["epoch"] = epoch
        self.summary["validation"] = {
            k: record.get(k) for k in ("val_iou", "val_f1", "val_precision", "val_recall")
        }
        save_change_model(
            self.run.scored,
            self.files.checkpoint,
            training_data=self.summary,
            include_backbone=not self.run.frozen_backbone,
        )


def _time_to_stop(
    epochs_done: int, stop_after_epochs: int | None, started: float, max_seconds: float | None
) -> bool:
    """Whether this call has run its ``stop_after_epochs`` or ``max_seconds``."""
    return (stop_after_epochs is not None and epochs_done >= stop_after_epochs) or (
        max_seconds is not None and time.monotonic() - started > max_seconds
    )


def train(
    train_data: ChangeDetectionDataset,
    val_data: ChangeDetectionDataset | None,
    out: str | Path,
    *,
    model_config: ModelConfig | None = None,
    config: TrainConfig | None = None,
    normalisation: InputNormalisation,
    state_path: str | Path | None = None,
    log_path: str | Path | None = None,
    resume: str | Path | None = None,
    stop_after_epochs: int | None = None,
    max_seconds: float | None = None,
    observer: TrainingObserver | None = None,
    training_data: dict[str, Any] | None = None,
) -> TrainResult:
    """Train a CACH change model and write its best checkpoint.

    Parameters
    ----------
    train_data
        Training samples: random crops (``crop_size``), with ``augment`` as wanted; its augmentation
        seed is replaced by ``config.seed``.
    val_data
        Validation pairs without augmentation (whole images, or top-left crops with
        ``crop_size`` for a cheaper check), or ``None``.
    out
        Checkpoint to write (``.safetensors``), replaced whenever validation improves.
    model_config
        Architecture; default :class:`ModelConfig` (compact backbone).
    config
        Optimisation settings; default :class:`TrainConfig`.
    normalisation
        The model's input normalisation (stored in the checkpoint).
    state_path
        Training state written after every epoch; default ``<out>.state.pt``.
    log_path
        JSON-lines metrics log (appended); default ``<out>.log.jsonl``.
    resume
        A state file to continue from (same configurations; the remaining epochs are run).
    stop_after_epochs
        Stop after this many epochs of this call (the state allows resuming).
    max_seconds
        Stop after the first epoch that ends past this wall time (the state allows resuming).
    observer
        Progress receiver.
    training_data
        JSON summary of the data, stored in the checkpoint metadata with the configurations.

    Returns
    -------
    TrainResult

    Raises
    ------
    CheckpointError
        For a state file of another configuration.
    ModelError, DatasetError
        For settings that do not fit the data.
    """
    started = time.monotonic()
    torch.set_flush_denormal(True)
    model_config = model_config or ModelConfig()
    config = config or TrainConfig()
    observer = observer or TrainingObserver()
    files = _RunFiles.of(out, state_path, log_path)
    samples = _training_samples(train_data, val_data, normalisation, config.seed)
    run = _start(model_config, config, normalisation, len(samples))
    record_config = _config_record(model_config, config)
    config_text = json.dumps(record_config, sort_keys=True)
    start_epoch, best = 0, BestEpoch()
    if resume is not None:
        start_epoch, best = run.restore(Path(resume), config_text=config_text, normalisation=normalisation)
    summary = {"config": record_config, **(training_data or {})}
    epochs = _Epochs(
        run, samples, val_data, config, normalisation, files, observer, summary, config_text, best
    )
    return epochs.run_all(start_epoch, started, stop_after_epochs, max_seconds)
