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
never interrupted (on the same machine and thread count).

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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from seg2change_core.backbones import DINOV2_CONFIGS, CompactConfig, CompactViT, ConvConfig, ConvPyramid
from seg2change_core.cach import CACHHead
from seg2change_core.change_model import CACHChangeModel, InputNormalisation
from seg2change_core.checkpoints import load_dinov2, save_change_model
from seg2change_core.datasets import ChangeDetectionDataset, collate_samples
from seg2change_core.errors import CheckpointError, DatasetError, ModelError
from seg2change_core.evaluation import evaluate
from seg2change_core.losses import LossWeights, cach_loss

__all__ = [
    "STATE_FORMAT",
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

STATE_FORMAT = "seg2change-train-state-1"
TRAINABLE_BACKBONES = ("conv", "compact")
"""Backbones trained from scratch with the head (the others are frozen DINOv2 models)."""


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the CACH change model to train.

    Attributes
    ----------
    backbone
        ``"conv"`` (multi-scale CNN, trained from scratch: the one that learns from a few hundred
        tiles), ``"compact"`` (a small ViT trained from scratch) or a DINOv2 variant
        (``"dinov2_vits14"``, ...), which is loaded from ``backbone_weights`` and kept frozen.
    backbone_weights
        Path of the official DINOv2 weights (required for DINOv2, unused otherwise).
    embed_dim, depth, num_heads, mlp_ratio
        :class:`~seg2change_core.backbones.CompactConfig` of the compact backbone
        (``embed_dim`` is also the token width of the conv backbone).
    widths, blocks
        Stage widths and residual blocks of the conv backbone
        (:class:`~seg2change_core.backbones.ConvConfig`).
    hidden_dim
        Decoder width of the CACH head.
    tile_size
        Recommended inference tile recorded in the checkpoint.
    """

    backbone: str = "compact"
    backbone_weights: str | None = None
    embed_dim: int = 96
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 2.0
    widths: tuple[int, int, int, int] = (32, 64, 128, 192)
    blocks: tuple[int, int, int, int] = (1, 2, 2, 2)
    hidden_dim: int = 64
    tile_size: int | None = 504

    @property
    def frozen_backbone(self) -> bool:
        """Whether the backbone is frozen (DINOv2)."""
        return self.backbone not in TRAINABLE_BACKBONES


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings.

    Attributes
    ----------
    epochs
        Epochs in all (the cosine schedule spans them).
    batch_size
        Crops per optimiser step.
    lr
        Peak learning rate of AdamW.
    weight_decay
        AdamW weight decay.
    warmup_steps
        Linear warm-up steps from ``lr / 100`` to ``lr``.
    min_lr_ratio
        Final learning rate over ``lr`` at the end of the cosine decay.
    grad_clip
        Maximum gradient norm, or ``None``.
    seed
        Seed of everything random.
    loss
        Loss weights.
    bf16_autocast
        Run the forward pass under ``torch.autocast`` with bfloat16 (faster on CPUs with
        AMX/AVX-512 BF16 and on GPUs; the loss and the weights stay float32).
    device
        ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    ema_decay
        Keep an exponential moving average of the weights with this decay per optimiser step
        (e.g. 0.99) and validate and save it instead of the raw weights; ``None``: no average.
        The average smooths the step-to-step swings of small-data training, which otherwise make
        single epochs collapse to "no change".
    model_name
        Name stored in the checkpoint; default ``cach-<backbone>``.
    """

    epochs: int = 20
    batch_size: int = 4
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_steps: int = 0
    min_lr_ratio: float = 0.01
    grad_clip: float | None = 1.0
    seed: int = 0
    loss: LossWeights = field(default_factory=LossWeights)
    bf16_autocast: bool = False
    model_name: str | None = None
    device: str = "cpu"
    ema_decay: float | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.warmup_steps < 0:
            raise ModelError(
                f"invalid training settings: epochs={self.epochs}, batch_size={self.batch_size}, "
                f"lr={self.lr}, warmup_steps={self.warmup_steps}; give positive values"
            )
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ModelError(f"ema_decay must lie between 0 and 1 (e.g. 0.99), not {self.ema_decay}")
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise ModelError(f"unknown device {self.device!r}; choose cpu, cuda or cuda:N")


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
    if config.backbone == "conv":
        backbone: nn.Module = ConvPyramid(
            ConvConfig(
                in_chans=normalisation.num_bands,
                widths=config.widths,
                blocks=config.blocks,
                embed_dim=config.embed_dim,
            )
        )
        width = config.embed_dim
    elif config.backbone == "compact":
        backbone = CompactViT(
            CompactConfig(
                in_chans=normalisation.num_bands,
                embed_dim=config.embed_dim,
                depth=config.depth,
                num_heads=config.num_heads,
                mlp_ratio=config.mlp_ratio,
            )
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


def _trainable_state(model: CACHChangeModel, frozen_backbone: bool) -> dict[str, torch.Tensor]:
    return {
        k: v.detach().clone()
        for k, v in model.state_dict().items()
        if not (frozen_backbone and k.startswith("backbone."))
    }


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


def _config_record(model_config: ModelConfig, config: TrainConfig) -> dict[str, Any]:
    return {"model": asdict(model_config), "train": asdict(config)}


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


@dataclass
class _Optimisation:
    """The model being trained with its optimiser and learning-rate schedule."""

    model: CACHChangeModel
    params: list[nn.Parameter]
    optimiser: torch.optim.AdamW
    scheduler: torch.optim.lr_scheduler.LambdaLR
    device: torch.device
    average: AveragedModel | None

    @property
    def scored(self) -> CACHChangeModel:
        """The model validated and saved: the weight average when one is kept."""
        if self.average is None:
            return self.model
        module = self.average.module
        assert isinstance(module, CACHChangeModel)
        return module

    @classmethod
    def create(cls, model: CACHChangeModel, config: TrainConfig, total_steps: int) -> _Optimisation:
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
        return cls(model, params, optimiser, scheduler, next(model.parameters()).device, average)


def _resume(
    path: Path,
    run: _Optimisation,
    config_text: str,
    normalisation: InputNormalisation,
    model_config: ModelConfig,
) -> tuple[int, float, int]:
    """Load a training state into ``run``; returns the epochs done, the best IoU and its epoch."""
    state = _load_state(path)
    if state["config"] != config_text:
        raise CheckpointError(
            f"{path} was written with other settings ({state['config']}); resume with the "
            "same model and training settings"
        )
    if state["normalisation"] != normalisation.to_json():
        raise CheckpointError(f"{path} was trained with another normalisation: {state['normalisation']}")
    missing, unexpected = run.model.load_state_dict(state["model"], strict=False)
    if unexpected or any(not (model_config.frozen_backbone and k.startswith("backbone.")) for k in missing):
        raise CheckpointError(
            f"{path}: model tensors do not match (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    run.optimiser.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if run.average is not None:
        run.average.load_state_dict(state["average"])
    _set_rng_state(state["rng"])
    return int(state["epoch"]), float(state["best_iou"]), int(state["best_epoch"])


def _train_epoch(
    run: _Optimisation,
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
        run.optimiser.zero_grad(set_to_none=True)
        parts.total.backward()
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(run.params, config.grad_clip)
        run.optimiser.step()
        run.scheduler.step()
        if run.average is not None:
            run.average.update_parameters(run.model)
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


def _save_state(state_file: Path, state: dict[str, Any]) -> None:
    """Write a training state; a run killed while saving keeps the previous one."""
    partial = state_file.with_name(state_file.name + ".partial")
    torch.save(state, partial)
    partial.replace(state_file)


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
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state_file = Path(state_path) if state_path is not None else out.with_name(out.stem + ".state.pt")
    log_file = Path(log_path) if log_path is not None else out.with_name(out.stem + ".log.jsonl")
    if val_data is not None and (val_data.augment or val_data.repeats != 1):
        raise DatasetError("validation data must not be augmented or repeated")
    sample = train_data[0]
    if sample["before"].shape[0] != normalisation.num_bands:
        raise DatasetError(
            f"the training images have {sample['before'].shape[0]} bands but the normalisation names "
            f"{normalisation.num_bands} ({list(normalisation.bands)}); give one band name per band"
        )
    train_data = copy.copy(train_data)  # shares the pair cache; only the seed differs
    train_data.seed = config.seed

    seed_everything(config.seed)
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError("device cuda was asked for but torch sees no CUDA GPU; use --device cpu")
    model = build_model(model_config, normalisation, name=config.model_name).to(device)
    model.train()
    steps_per_epoch = max(1, len(train_data) // config.batch_size)
    run = _Optimisation.create(model, config, config.epochs * steps_per_epoch)
    record_config = _config_record(model_config, config)
    start_epoch, best_iou, best_epoch = 0, -math.inf, 0
    if resume is not None:
        start_epoch, best_iou, best_epoch = _resume(
            Path(resume), run, json.dumps(record_config, sort_keys=True), normalisation, model_config
        )

    summary = {"config": record_config, **(training_data or {})}
    history: list[dict[str, Any]] = []
    observer.on_start(config.epochs, steps_per_epoch, start_epoch)
    stopped_early = False
    for epoch in range(start_epoch, config.epochs):
        epoch_started = time.monotonic()
        record = _train_epoch(run, train_data, config, epoch, steps_per_epoch, observer)
        if val_data is not None:
            record.update(_validate(run.scored, val_data, observer, epoch + 1))
            iou = record["val_iou"] if record["val_iou"] is not None else -1.0
            improved = iou > best_iou
        else:
            iou, improved = math.nan, True
        if improved:
            best_iou, best_epoch = iou, epoch + 1
            summary["epoch"] = best_epoch
            summary["validation"] = {
                k: record.get(k) for k in ("val_iou", "val_f1", "val_precision", "val_recall")
            }
            save_change_model(
                run.scored, out, training_data=summary, include_backbone=not model_config.frozen_backbone
            )
        record["best"] = improved
        record["seconds"] = round(time.monotonic() - epoch_started, 3)
        _save_state(
            state_file,
            {
                "format": STATE_FORMAT,
                "config": json.dumps(record_config, sort_keys=True),
                "normalisation": normalisation.to_json(),
                "model": _trainable_state(model, model_config.frozen_backbone),
                "optimizer": run.optimiser.state_dict(),
                "scheduler": run.scheduler.state_dict(),
                "epoch": epoch + 1,
                "best_iou": best_iou,
                "best_epoch": best_epoch,
                "rng": _rng_state(),
                **({"average": run.average.state_dict()} if run.average is not None else {}),
            },
        )
        with log_file.open("a") as log:
            log.write(json.dumps(record) + "\n")
        history.append(record)
        observer.on_epoch(record)
        done_here = epoch + 1 - start_epoch
        last = epoch + 1 == config.epochs
        if not last and (
            (stop_after_epochs is not None and done_here >= stop_after_epochs)
            or (max_seconds is not None and time.monotonic() - started > max_seconds)
        ):
            stopped_early = True
            break
    epochs_completed = start_epoch + len(history)
    return TrainResult(
        checkpoint=out,
        state=state_file,
        epochs_completed=epochs_completed,
        best_epoch=best_epoch,
        best_val_iou=best_iou if val_data is not None and best_iou >= 0 else math.nan,
        history=history,
        seconds=time.monotonic() - started,
        stopped_early=stopped_early,
    )
