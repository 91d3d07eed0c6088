"""The ``seg2change train`` command: a named recipe, any option of which the command line replaces.

Plain functions with typer annotations; :mod:`flows.cli` registers them on the app. torch and the
models are imported inside the function, so the CLI starts fast. Progress is drawn with rich on a
terminal and printed as plain lines (every epoch, and a step line every ``PLAIN_STEP_SECONDS``)
when the output goes to a file, so a redirected run still shows that it is alive.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from flows.commands_model import LABEL_VALUES_HELP, _bands, _fail, _fmt, _label_encoding, console, out_console
from seg2change_core.errors import Seg2ChangeError

if TYPE_CHECKING:
    from seg2change_core.recipes import Recipe
    from seg2change_core.training import TrainResult
    from seg2change_core.training_setup import TrainingRun

__all__ = ["PLAIN_STEP_SECONDS", "TrainOptions", "run_train", "train"]

PLAIN_STEP_SECONDS = 30.0
"""Seconds between step lines when progress is printed as plain text."""


def _observer(enabled: bool) -> Any:
    """A training observer: rich bars on a terminal, plain lines otherwise (nothing when disabled)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from seg2change_core.training import TrainingObserver

    live = enabled and console.is_terminal

    class Observer(TrainingObserver):
        def __init__(self) -> None:
            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                console=console,
                disable=not live,
            )
            self.epochs = self.progress.add_task("epochs", total=1, info="")
            self.steps = self.progress.add_task("steps", total=1, info="")
            self.steps_per_epoch = 1
            self.last_line = time.monotonic()

        def on_start(self, epochs: int, steps_per_epoch: int, start_epoch: int) -> None:
            self.progress.start()
            self.steps_per_epoch = steps_per_epoch
            self.progress.update(self.epochs, total=epochs, completed=start_epoch)
            self.progress.update(self.steps, total=steps_per_epoch, completed=0)

        def on_step(self, epoch: int, step: int, loss: float) -> None:
            self.progress.update(
                self.steps, completed=step, description=f"epoch {epoch}", info=f"loss {loss:.4f}"
            )
            if enabled and not live and time.monotonic() - self.last_line > PLAIN_STEP_SECONDS:
                self.last_line = time.monotonic()
                console.print(
                    f"epoch {epoch}: step {step}/{self.steps_per_epoch}, loss {loss:.4f}",
                    markup=False,
                    soft_wrap=True,
                )

        def on_validation(self, epoch: int, done: int, total: int) -> None:
            self.progress.update(self.steps, description=f"validating {done}/{total}")

        def on_epoch(self, record: dict[str, Any]) -> None:
            self.progress.update(self.epochs, completed=record["epoch"])
            self.last_line = time.monotonic()
            if not enabled:
                return
            line = f"epoch {record['epoch']}: loss {record['train_loss']:.4f} ({record['seconds']:.0f} s)"
            if "val_iou" in record:
                line += f", val IoU {_fmt(record['val_iou'])}"
                per_dataset = record.get("val_iou_datasets") or {}
                if len(per_dataset) > 1:
                    line += " (" + ", ".join(f"{k} {v:.3f}" for k, v in per_dataset.items()) + ")"
            self.progress.console.print(
                line + (" (best)" if record["best"] else ""), markup=False, soft_wrap=True
            )

        def stop(self) -> None:
            self.progress.stop()

    return Observer()


def _set_threads(threads: int | None) -> int:
    """Set torch's CPU threads: the given count, or one per core this process may use.

    torch's OpenMP threads wait for each other at every operation; on cores that other processes
    keep busy that waiting can make a step several times slower than with one thread, so a busy
    machine is pointed out.
    """
    import torch

    cores = len(os.sched_getaffinity(0))
    count = threads if threads is not None else cores
    if count < 1:
        raise typer.BadParameter("--threads must be at least 1")
    load = os.getloadavg()[0]
    if threads is None and cores > 1 and load > cores / 2:
        console.print(
            f"note: the machine is busy (load {load:.1f} on {cores} cores); if steps are slow, "
            "--threads 1 avoids torch's threads waiting for each other",
            markup=False,
            soft_wrap=True,
        )
    torch.set_num_threads(count)
    return count


def _recipe_with(recipe: Recipe, options: dict[str, Any]) -> Recipe:
    """The recipe with every option given on the command line (not ``None``) put in."""
    given = {k: v for k, v in options.items() if v is not None}
    model_keys = {"backbone", "backbone_weights", "embed_dim", "depth", "num_heads", "hidden_dim"}
    train_keys = {
        "epochs",
        "batch_size",
        "lr",
        "weight_decay",
        "warmup_steps",
        "seed",
        "device",
    }
    loss_keys = {"changed_class_weight", "dice"}
    recipe_keys = {
        "crop_size",
        "crops_per_image",
        "focus_change",
        "normalisation",
        "validation_crop",
        "minutes",
        "bf16",
    }
    model = replace(recipe.model, **{k: v for k, v in given.items() if k in model_keys})
    loss = replace(recipe.train.loss, **{k: v for k, v in given.items() if k in loss_keys})
    train_config = replace(recipe.train, loss=loss, **{k: v for k, v in given.items() if k in train_keys})
    changed = {k: v for k, v in given.items() if k in recipe_keys}
    if given.get("augment") is False:
        changed["augmentation"] = None
    elif given.get("colour_transfer") is not None:
        if recipe.augmentation is None:
            raise typer.BadParameter(
                f"--colour-transfer is part of the change augmentation, which recipe {recipe.name!r} has none of"
            )
        changed["augmentation"] = replace(recipe.augmentation, colour_transfer=given["colour_transfer"])
    return replace(recipe, model=model, train=train_config, **changed)


DataDirs = Annotated[
    list[Path],
    typer.Argument(
        help="Dataset folder(s) with A/, B/ and label/ (one file per pair), OSCD roots or OSCD cities."
    ),
]
Out = Annotated[Path, typer.Option("--out", help="Checkpoint to write (.safetensors); the best epoch.")]
RecipeName = Annotated[
    str,
    typer.Option(
        help="Named settings: rgb (8-bit RGB), sentinel2, dinov2. Options below replace its values."
    ),
]
Minutes = Annotated[
    float | None,
    typer.Option(help="Time budget: the epochs (and the schedule) are fitted to it. Default: the recipe's."),
]
Epochs = Annotated[int | None, typer.Option(help="Epochs in all (instead of fitting them to --minutes).")]
Threads = Annotated[
    int | None, typer.Option(help="CPU threads for torch (default: the cores this process may use).")
]
Device = Annotated[str | None, typer.Option(help="cpu, cuda or cuda:N.")]
Bf16 = Annotated[
    bool | None,
    typer.Option(
        "--bf16/--no-bf16",
        help="bfloat16 autocast; default: where the hardware has it natively (AMX/AVX-512 BF16 CPUs, GPUs).",
    ),
]
Backbone = Annotated[str | None, typer.Option(help="conv, compact or a frozen DINOv2 such as dinov2_vits14.")]
BackboneWeights = Annotated[
    Path | None, typer.Option(help="Official DINOv2 weights file (DINOv2 backbones).")
]
BatchSize = Annotated[int | None, typer.Option(help="Crops per optimiser step.")]
Lr = Annotated[float | None, typer.Option(help="Peak AdamW learning rate.")]
WeightDecay = Annotated[float | None, typer.Option(help="AdamW weight decay.")]
WarmupSteps = Annotated[int | None, typer.Option(help="Linear warm-up steps before the cosine decay.")]
CropSize = Annotated[int | None, typer.Option(help="Training crop side (a multiple of 252 avoids padding).")]
CropsPerImage = Annotated[int | None, typer.Option(help="Random crops drawn from each pair per epoch.")]
FocusChange = Annotated[float | None, typer.Option(help="Share of crops drawn around a changed pixel.")]
Augment = Annotated[
    bool | None, typer.Option("--augment/--no-augment", help="Change-specific augmentation of the recipe.")
]
ColourTransfer = Annotated[
    float | None,
    typer.Option(
        help="Chance per date of taking the band histograms of another source image's date (0 to 1)."
    ),
]
ChangedWeight = Annotated[float | None, typer.Option(help="Cross-entropy weight of the 'changed' class.")]
Dice = Annotated[float | None, typer.Option(help="Weight of the dice term (0 = the reference loss).")]
EmbedDim = Annotated[int | None, typer.Option(help="Token width of the conv or compact backbone.")]
HiddenDim = Annotated[int | None, typer.Option(help="CACH decoder width.")]
ValFraction = Annotated[
    float, typer.Option(help="Share of tiles (whole source images) of each dataset kept for validation.")
]
HoldoutFraction = Annotated[
    float, typer.Option(help="Share of tiles (whole source images) kept apart as a test part, never used.")
]
SplitFile = Annotated[
    Path | None, typer.Option(help="Split file (JSON): trains on 'train', validates on 'val'.")
]
ExtraTrain = Annotated[
    list[Path] | None,
    typer.Option(
        help="Dataset folder whose pairs all go to training, outside the split (e.g. synthetic pairs "
        "of 'seg2change synthesise-buildings'); repeat for several."
    ),
]
ValCrop = Annotated[
    int | None,
    typer.Option(help="Validate on the top-left crop of this side (cheaper); default whole images."),
]
IgnoreValue = Annotated[int | None, typer.Option(help="Raw label value meaning 'not labelled' (e.g. 128).")]
LabelValues = Annotated[str | None, typer.Option(help=LABEL_VALUES_HELP)]
Bands = Annotated[
    str | None, typer.Option(help="Bands to train on, by name, in this order (e.g. red,green,blue,nir).")
]
Normalisation = Annotated[
    str | None,
    typer.Option(
        help="'per-image' (each image by its own band statistics), 'dataset' (fitted on the training pairs) or 'imagenet'."
    ),
]
Seed = Annotated[int | None, typer.Option(help="Seed of the split, the initialisation and the augmentation.")]
Resume = Annotated[Path | None, typer.Option(help="Training state file (.state.pt) to continue from.")]
MaxMinutes = Annotated[
    float | None, typer.Option(help="Stop after the epoch that ends past this time (resumable).")
]
LogFile = Annotated[Path | None, typer.Option(help="Metrics log (JSON lines); default <out>.log.jsonl.")]
ShowProgress = Annotated[bool, typer.Option(help="Show progress (bars on a terminal, lines otherwise).")]


@dataclass(frozen=True)
class TrainOptions:
    """What ``seg2change train`` was asked for (see :func:`train` for each option).

    Attributes
    ----------
    data_dirs, out
        Dataset folders and the checkpoint to write.
    recipe
        Name of the recipe.
    recipe_changes
        The recipe values given on the command line, by :func:`_recipe_with`'s keys (``None``:
        not given).
    threads, val_fraction, holdout_fraction, split, ignore_value, label_values, bands
        How the data is read and split, and torch's threads.
    extra_train
        Folders whose pairs all go to training, outside the split.
    resume, max_minutes, log, progress
        How the run starts, stops and reports.
    """

    data_dirs: tuple[Path, ...]
    out: Path
    recipe: str
    recipe_changes: dict[str, Any]
    threads: int | None = None
    val_fraction: float = 0.15
    holdout_fraction: float = 0.0
    split: Path | None = None
    ignore_value: int | None = None
    label_values: str | None = None
    bands: str | None = None
    extra_train: tuple[Path, ...] = ()
    resume: Path | None = None
    max_minutes: float | None = None
    log: Path | None = None
    progress: bool = True


def train(
    data_dirs: DataDirs,
    out: Out,
    recipe: RecipeName = "rgb",
    minutes: Minutes = None,
    epochs: Epochs = None,
    threads: Threads = None,
    device: Device = None,
    bf16: Bf16 = None,
    backbone: Backbone = None,
    backbone_weights: BackboneWeights = None,
    batch_size: BatchSize = None,
    lr: Lr = None,
    weight_decay: WeightDecay = None,
    warmup_steps: WarmupSteps = None,
    crop_size: CropSize = None,
    crops_per_image: CropsPerImage = None,
    focus_change: FocusChange = None,
    augment: Augment = None,
    colour_transfer: ColourTransfer = None,
    changed_weight: ChangedWeight = None,
    dice: Dice = None,
    embed_dim: EmbedDim = None,
    hidden_dim: HiddenDim = None,
    val_fraction: ValFraction = 0.15,
    holdout_fraction: HoldoutFraction = 0.0,
    split: SplitFile = None,
    extra_train: ExtraTrain = None,
    val_crop: ValCrop = None,
    ignore_value: IgnoreValue = None,
    label_values: LabelValues = None,
    bands: Bands = None,
    normalisation: Normalisation = None,
    seed: Seed = None,
    resume: Resume = None,
    max_minutes: MaxMinutes = None,
    log: LogFile = None,
    progress: ShowProgress = True,
) -> None:
    """Train the CACH change model with a named recipe; keep the epoch with the best validation IoU."""
    changes = {
        "backbone": backbone,
        "backbone_weights": None if backbone_weights is None else str(backbone_weights),
        "embed_dim": embed_dim,
        "hidden_dim": hidden_dim,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "warmup_steps": warmup_steps,
        "seed": seed,
        "device": device,
        "bf16": bf16,
        "changed_class_weight": changed_weight,
        "dice": dice,
        "crop_size": crop_size,
        "crops_per_image": crops_per_image,
        "focus_change": focus_change,
        "normalisation": normalisation,
        "validation_crop": val_crop,
        "minutes": minutes,
        "augment": augment,
        "colour_transfer": colour_transfer,
    }
    options = TrainOptions(
        tuple(data_dirs), out, recipe, changes,
        threads=threads, val_fraction=val_fraction, holdout_fraction=holdout_fraction, split=split,
        ignore_value=ignore_value, label_values=label_values, bands=bands,
        extra_train=tuple(extra_train or ()), resume=resume, max_minutes=max_minutes, log=log, progress=progress,
    )  # fmt: skip
    run_train(options)


def run_train(options: TrainOptions) -> None:
    """Prepare and run the training ``options`` ask for and print where its results are.

    Raises
    ------
    typer.Exit
        With status 2 for an error of the project's tree (its message is printed).
    """
    observer = None
    try:
        run, used_threads = _prepare(options)
        console.print(
            f"recipe {run.recipe.name}: {len(run.train_data.pairs)} training pairs, {run.val_pairs} "
            f"validation, {run.held_out} held out; {used_threads} threads on {run.recipe.train.device}",
            markup=False,
            soft_wrap=True,
        )
        observer = _observer(options.progress)
        result = run.run(
            resume=options.resume, max_minutes=options.max_minutes, log_path=options.log, observer=observer
        )
    except Seg2ChangeError as exc:
        _fail(exc)
        return
    finally:
        if observer is not None:
            observer.stop()
    _print_result(result, run)


def _prepare(options: TrainOptions) -> tuple[TrainingRun, int]:
    """Set the threads, put the command line into the recipe and prepare the run."""
    from seg2change_core.training_setup import prepare_training

    used_threads = _set_threads(options.threads)
    chosen = _recipe_with(_get_recipe(options.recipe), options.recipe_changes)
    if options.recipe_changes.get("epochs") is not None:
        chosen = replace(chosen, minutes=None)
    run = prepare_training(
        chosen,
        options.data_dirs,
        options.out,
        split=options.split,
        val_fraction=options.val_fraction,
        holdout_fraction=options.holdout_fraction,
        bands=_bands(options.bands),
        label_encoding=_label_encoding(options.label_values),
        ignore_value=options.ignore_value,
        extra_train=options.extra_train,
        log=lambda text: console.print(text, markup=False, soft_wrap=True),
    )
    return run, used_threads


def _print_result(result: TrainResult, run: TrainingRun) -> None:
    """Where the checkpoint and the state are, how far it got, and how to continue."""
    out_console.print(
        f"checkpoint: {result.checkpoint} (epoch {result.best_epoch})", markup=False, soft_wrap=True
    )
    out_console.print(f"  validation IoU: {_fmt(result.best_val_iou)}", markup=False, soft_wrap=True)
    out_console.print(f"  training state: {result.state}", markup=False, soft_wrap=True)
    out_console.print(
        f"  epochs: {result.epochs_completed}/{run.config.epochs} in {result.seconds / 60:.1f} min",
        markup=False,
        soft_wrap=True,
    )
    if result.stopped_early:
        out_console.print(
            f"  stopped early; continue with --resume {result.state}", markup=False, soft_wrap=True
        )
    if not sys.stdout.isatty() and result.history:
        out_console.print(f"  last epoch: {result.history[-1]}", markup=False, soft_wrap=True)


def _get_recipe(name: str) -> Recipe:
    from seg2change_core.recipes import get_recipe

    return get_recipe(name)
