"""From a recipe and dataset folders to a training run: data, split, normalisation, epochs.

:func:`prepare_training` does everything a training command does before the first step, and
returns a :class:`TrainingRun` whose :meth:`~TrainingRun.run` trains. With a time budget
(``Recipe.minutes``), :func:`fit_epochs_to_budget` times a few optimiser steps and a validation
pair and fits the number of epochs, and so the cosine schedule, to it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from seg2change_core.change_model import InputNormalisation
from seg2change_core.datasets import (
    ChangeDetectionDataset,
    LabelEncoding,
    PairSource,
    Split,
    balanced_samples,
    band_names_of,
    band_statistics,
    check_input_scale,
    collate_samples,
    dataset_of,
    default_band_names,
    scan_datasets,
    split_by_source,
    value_scale,
)
from seg2change_core.errors import DatasetError
from seg2change_core.evaluation import evaluate
from seg2change_core.losses import cach_loss
from seg2change_core.recipes import Recipe, native_bf16
from seg2change_core.training import (
    ModelConfig,
    TrainConfig,
    TrainingObserver,
    TrainResult,
    build_model,
    train,
)

__all__ = ["EpochPlan", "TrainingRun", "fit_epochs_to_budget", "normalisation_for", "prepare_training"]


@dataclass(frozen=True)
class EpochPlan:
    """Epochs fitted to a time budget (see :func:`fit_epochs_to_budget`).

    Attributes
    ----------
    epochs
        Epochs that fit.
    step_seconds
        Measured seconds of one optimiser step.
    validation_seconds
        Estimated seconds of one validation pass.
    steps_per_epoch
        Optimiser steps per epoch.
    budget_seconds
        The budget.
    """

    epochs: int
    step_seconds: float
    validation_seconds: float
    steps_per_epoch: int
    budget_seconds: float

    def describe(self) -> str:
        """One line for the log."""
        epoch = self.steps_per_epoch * self.step_seconds + self.validation_seconds
        return (
            f"{self.epochs} epochs fit {self.budget_seconds / 60:.0f} min: {self.steps_per_epoch} steps of "
            f"{self.step_seconds:.2f} s + validation {self.validation_seconds:.0f} s = {epoch:.0f} s per epoch"
        )


def fit_epochs_to_budget(
    model_config: ModelConfig,
    config: TrainConfig,
    train_data: ChangeDetectionDataset,
    val_data: ChangeDetectionDataset | None,
    normalisation: InputNormalisation,
    minutes: float,
    *,
    measured_steps: int = 3,
) -> EpochPlan:
    """Measure a few optimiser steps and a validation pair, and fit the epochs to ``minutes``.

    The validation pair is scored as validation scores it (tiled where it is larger than the
    model's tile) and its time scaled by the validation pixels.

    The steps run on a throwaway model (training builds its own from the seed), so a run with
    the fitted epochs equals a run given those epochs by hand.

    Parameters
    ----------
    model_config, config
        The run's settings (``config.epochs`` is ignored).
    train_data, val_data
        The run's data.
    normalisation
        The model's input normalisation.
    minutes
        Budget for training and validation together.
    measured_steps
        Steps timed after one untimed warm-up step; their median is taken (one step slowed by
        another process does not shrink the plan). The plan holds for a machine as busy as it was
        while measuring: on a shared machine give ``--epochs`` instead.

    Returns
    -------
    EpochPlan
        At least one epoch.
    """
    device = torch.device(config.device)
    model = build_model(model_config, normalisation).to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=config.lr * 1e-3)
    batch = collate_samples([train_data[i % len(train_data)] for i in range(config.batch_size)])
    timings: list[float] = []
    for step in range(measured_steps + 1):
        started = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16_autocast):
            outputs = model(batch.before.to(device), batch.after.to(device))
        loss = cach_loss([o.float() for o in outputs], batch.target.to(device), config.loss).total
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if step:
            timings.append(time.perf_counter() - started)
    step_seconds = statistics.median(timings)
    validation_seconds = 0.0
    if val_data is not None:
        model.eval()
        first = ChangeDetectionDataset(val_data.pairs[:1], crop_size=val_data.crop_size)
        started = time.perf_counter()
        evaluate(model, first, check_scale=False)
        one = time.perf_counter() - started
        first_pixels = int(first[0]["target"].numel())
        pixels = sum(int(val_data[i]["target"].numel()) for i in range(len(val_data)))
        validation_seconds = one * pixels / first_pixels
    steps_per_epoch = max(1, len(train_data) // config.batch_size)
    per_epoch = steps_per_epoch * step_seconds + validation_seconds
    epochs = max(1, int(minutes * 60 // per_epoch))
    return EpochPlan(epochs, step_seconds, validation_seconds, steps_per_epoch, minutes * 60)


def normalisation_for(
    mode: str, pairs: Sequence[PairSource], names: Sequence[str], *, seed: int = 0
) -> InputNormalisation:
    """The model's input normalisation: ``"per-image"``, ``"dataset"`` statistics of ``pairs``, or ``"imagenet"``.

    ``"per-image"`` standardises each image with its own band statistics
    (:attr:`~seg2change_core.change_model.InputNormalisation.per_image`).

    Raises
    ------
    DatasetError
        For ImageNet statistics on other than 3 bands, or an unknown mode.
    """
    first = pairs[0].load()
    scale = value_scale(first.before.dtype)
    if mode == "imagenet":
        if len(names) != 3:
            raise DatasetError(
                f"ImageNet normalisation needs 3-band RGB images, these have {len(names)} bands"
            )
        imagenet = InputNormalisation.imagenet_rgb(scale)
        return InputNormalisation(tuple(names), imagenet.mean, imagenet.std, scale)
    if mode == "dataset":
        mean, std = band_statistics(pairs, scale, seed=seed)
        return InputNormalisation(tuple(names), mean, std, scale)
    if mode == "per-image":
        count = len(names)
        return InputNormalisation(tuple(names), (0.0,) * count, (1.0,) * count, scale, per_image=True)
    raise DatasetError(f"unknown normalisation {mode!r}; choose per-image, dataset or imagenet")


@dataclass(frozen=True)
class TrainingRun:
    """A training run ready to start (see :func:`prepare_training`).

    Attributes
    ----------
    recipe
        The recipe, with the command line's changes.
    model_config, config
        Architecture and optimisation settings (epochs fitted to the budget where there is one).
    train_data, val_data
        Training samples and validation pairs.
    normalisation
        The model's input normalisation.
    out
        Checkpoint path.
    val_pairs, held_out
        Pairs validated on and pairs kept apart.
    plan
        How the epochs were fitted, or ``None``.
    summary
        Data description stored in the checkpoint.
    """

    recipe: Recipe
    model_config: ModelConfig
    config: TrainConfig
    train_data: ChangeDetectionDataset
    val_data: ChangeDetectionDataset | None
    normalisation: InputNormalisation
    out: Path
    val_pairs: int
    held_out: int
    plan: EpochPlan | None
    summary: dict[str, Any]

    def run(
        self,
        *,
        resume: str | Path | None = None,
        max_minutes: float | None = None,
        stop_after_epochs: int | None = None,
        log_path: str | Path | None = None,
        observer: TrainingObserver | None = None,
    ) -> TrainResult:
        """Train (see :func:`seg2change_core.training.train`)."""
        return train(
            self.train_data,
            self.val_data,
            self.out,
            model_config=self.model_config,
            config=self.config,
            normalisation=self.normalisation,
            log_path=log_path,
            resume=resume,
            max_seconds=None if max_minutes is None else max_minutes * 60,
            stop_after_epochs=stop_after_epochs,
            observer=observer,
            training_data=self.summary,
        )


def prepare_training(
    recipe: Recipe,
    data_dirs: Sequence[str | Path],
    out: str | Path,
    *,
    split: str | Path | None = None,
    val_fraction: float = 0.15,
    holdout_fraction: float = 0.0,
    bands: Sequence[str] | None = None,
    label_encoding: LabelEncoding | None = None,
    ignore_value: int | None = None,
    extra_train: Sequence[str | Path] = (),
    log: Callable[[str], None] | None = None,
) -> TrainingRun:
    """Read the data, split it, fit the normalisation and the epochs: everything before step one.

    Parameters
    ----------
    recipe
        The settings.
    data_dirs
        Dataset folders of any layout :func:`~seg2change_core.datasets.scan_datasets` reads.
    out
        Checkpoint to write; without ``split`` the drawn split is saved beside it
        (``<out>.split.json``).
    split
        A split file (train on ``train``, validate on ``val``).
    val_fraction, holdout_fraction
        Shares of each dataset's tiles (whole source images) for validation and held out,
        when no split file is given.
    bands
        Bands to train on, by name and in order (default: the recipe's, else all).
    label_encoding, ignore_value
        How labels encode change (default: detected per dataset folder).
    extra_train
        Dataset folders whose pairs all go to training, outside the split (synthetic pairs such
        as :func:`~seg2change_core.datasets.synthesise_building_change` writes); their
        labels' encoding is detected.
    log
        Receives one line on how the epochs were fitted.

    Raises
    ------
    DatasetError
        For data that do not fit (no training pairs, band or scale mismatches, ...).
    """
    out = Path(out)
    seed = recipe.train.seed
    pairs = scan_datasets(
        data_dirs, bands=bands or recipe.bands, label_encoding=label_encoding, ignore_value=ignore_value
    )
    chosen = _split(pairs, out, split, val_fraction, holdout_fraction, seed)
    train_pairs = chosen.select(pairs, "train") + _extra_pairs(extra_train, pairs, bands or recipe.bands)
    val_pairs = chosen.select(pairs, "val")
    if not train_pairs:
        raise DatasetError("the split leaves no training pairs; lower --val-fraction/--holdout-fraction")
    normalisation = _fitted_normalisation(recipe, train_pairs, seed)
    train_data, val_data = _datasets(recipe, train_pairs, val_pairs, seed)
    config, plan = _fitted_config(recipe, train_data, val_data, normalisation, log)
    summary = {
        "recipe": recipe.name,
        "data": [str(d) for d in data_dirs],
        "extra_train": [str(d) for d in extra_train],
        **_data_summary(recipe, train_pairs, len(val_pairs), chosen.seed),
        "label_values": None if label_encoding is None else label_encoding.describe(),
        "epoch_plan": None if plan is None else asdict(plan),
    }
    return TrainingRun(
        recipe=recipe,
        model_config=recipe.model,
        config=config,
        train_data=train_data,
        val_data=val_data,
        normalisation=normalisation,
        out=out,
        val_pairs=len(val_pairs),
        held_out=len(chosen.test),
        plan=plan,
        summary=summary,
    )


def _data_summary(
    recipe: Recipe, train_pairs: Sequence[PairSource], val_pairs: int, seed: int
) -> dict[str, Any]:
    """What the run trains on, for the checkpoint's metadata."""
    return {
        "datasets": sorted({dataset_of(p) for p in train_pairs}),
        "train_pairs": len(train_pairs),
        "val_pairs": val_pairs,
        "split_seed": seed,
        "crop_size": recipe.crop_size,
        "augmentation": None if recipe.augmentation is None else asdict(recipe.augmentation),
    }


def _extra_pairs(
    roots: Sequence[str | Path], split_pairs: Sequence[PairSource], bands: Sequence[str] | None
) -> list[PairSource]:
    """The pairs of the training-only folders, refused where a dataset name is also split."""
    if not roots:
        return []
    extra = scan_datasets(roots, bands=bands)
    clash = {dataset_of(p) for p in extra} & {dataset_of(p) for p in split_pairs}
    if clash:
        raise DatasetError(
            f"dataset {sorted(clash)[0]!r} is given both as data and as --extra-train; rename the "
            "training-only folder"
        )
    return extra


def _split(
    pairs: Sequence[PairSource],
    out: Path,
    split: str | Path | None,
    val_fraction: float,
    holdout_fraction: float,
    seed: int,
) -> Split:
    """The split file given, or one drawn by source and saved beside the checkpoint."""
    if split is not None:
        return Split.load(split)
    chosen = split_by_source(pairs, test_fraction=holdout_fraction, val_fraction=val_fraction, seed=seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    chosen.save(out.with_name(out.stem + ".split.json"))
    return chosen


def _fitted_normalisation(recipe: Recipe, train_pairs: Sequence[PairSource], seed: int) -> InputNormalisation:
    """The recipe's normalisation fitted on the training pairs, whose value scale is checked against it."""
    first = train_pairs[0].load()
    count = first.before.shape[0]
    names = band_names_of(train_pairs[0]) or default_band_names(count)
    if len(names) != count:
        raise DatasetError(f"the bands are named {list(names)} but the images have {count}")
    normalisation = normalisation_for(recipe.normalisation, train_pairs, names, seed=seed)
    for pair in train_pairs[:: max(1, len(train_pairs) // 4)]:
        check_input_scale(pair.load().before, normalisation, where=f"training pair {pair.key}")
    return normalisation


def _datasets(
    recipe: Recipe, train_pairs: Sequence[PairSource], val_pairs: Sequence[PairSource], seed: int
) -> tuple[ChangeDetectionDataset, ChangeDetectionDataset | None]:
    """Training samples (crops balanced between pairs, augmented) and validation pairs."""
    counts = balanced_samples(
        ChangeDetectionDataset(train_pairs), recipe.crop_size, change_boost=recipe.change_boost
    )
    train_data = ChangeDetectionDataset(
        train_pairs,
        crop_size=recipe.crop_size,
        augment=True,
        seed=seed,
        repeats=recipe.crops_per_image,
        samples_per_pair=counts,
        focus_change=recipe.focus_change,
        change_augmentation=recipe.augmentation,
    )
    val_data = ChangeDetectionDataset(val_pairs, crop_size=recipe.validation_crop) if val_pairs else None
    return train_data, val_data


def _fitted_config(
    recipe: Recipe,
    train_data: ChangeDetectionDataset,
    val_data: ChangeDetectionDataset | None,
    normalisation: InputNormalisation,
    log: Callable[[str], None] | None,
) -> tuple[TrainConfig, EpochPlan | None]:
    """The recipe's optimisation settings with bf16 decided and the epochs fitted to its time budget."""
    config = recipe.train
    bf16 = recipe.bf16 if recipe.bf16 is not None else native_bf16(config.device)
    if bf16 != config.bf16_autocast:
        config = TrainConfig(**{**asdict(config), "loss": config.loss, "bf16_autocast": bf16})
    if recipe.minutes is None:
        return config, None
    plan = fit_epochs_to_budget(recipe.model, config, train_data, val_data, normalisation, recipe.minutes)
    config = TrainConfig(**{**asdict(config), "loss": config.loss, "epochs": plan.epochs})
    if log is not None:
        log(plan.describe())
    return config, plan
