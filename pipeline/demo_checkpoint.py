"""The demo checkpoint: a small CACH model trained on generated scenes, made by one command.

``seg2change make-demo-checkpoint --out seg2change_core/assets/demo_cach.safetensors`` runs
:func:`make_demo_checkpoint`:

1. Generate bi-temporal scenes in memory with :mod:`pipeline.synthetic` (seeds
   :data:`DEMO_TRAIN_SEEDS`; the demo itself analyses seed 0, :data:`DEMO_VALIDATION_SEED` picks the
   epoch and :data:`DEMO_HOLDOUT_SEED` is kept for scoring, so none of those is trained on). Like
   the demo's scene, each epoch has three acquisitions, two of them cloudy; each epoch's input is
   the per-pixel median of the clear observations' surface reflectance (six bands: blue, green,
   red, nir, swir16, swir22), as the cube's composite is. The target is the true change mask.
   Many small scenes (16 of 384 px) rather than a few large ones: the first 256 px event cell of
   every scene holds one event of every kind, so each kind of change (construction too, the
   rarest by area) is seen in every scene instead of where chance puts it.
2. Train a small CACH model on random 252 px crops (70 % of them around a changed pixel) with
   flips and rotations, with the reference loss, for about eleven minutes on one CPU core, keeping
   the epoch with the best change IoU on a validation scene (:data:`DEMO_VALIDATION_SEED`). The
   backbone is the multi-scale CNN (:mod:`seg2change_core.backbones.conv`), whose finest level
   reaches the head at 3.5 px: the compact ViT's 14 px patches (140 m at 10 m) blur a new estate's
   9 px lattice of buildings to a change probability of about 0.4 and miss it, and place every
   boundary a pixel or two off.
3. Save it in half precision (a few MB) with metadata saying how it was made: this command,
   the seeds, sizes, settings, training time, and the change IoU/F1 of the model **and of the CVA
   baseline** on the held-out scene (both measured on the saved file's weights), with the recall
   of each on every kind of generated change.

The model takes surface reflectance (``scale`` 1) and standardises each band with statistics of
the training scenes; load it with :func:`seg2change_core.checkpoints.load_change_model`.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rasterio.windows import Window

from pipeline.synthetic import (
    BAND_NAMES,
    QA,
    SCALE,
    ChangeType,
    SceneSpec,
    acquisition_window,
    acquisitions,
    truth_window,
)
from seg2change_core.change_model import CACHChangeModel, ChangeModel, InputNormalisation
from seg2change_core.checkpoints import load_change_model, save_change_model
from seg2change_core.datasets import ChangeDetectionDataset, ChangePair, band_statistics
from seg2change_core.errors import ModelError
from seg2change_core.evaluation import EvaluationReport, cva_for, evaluate, fit_cva_on_dataset, predict_change
from seg2change_core.training import LossWeights, ModelConfig, TrainConfig, TrainingObserver, train

__all__ = [
    "DEFAULT_DEMO_CHECKPOINT",
    "DEMO_CLOUD_FRACTION",
    "DEMO_HOLDOUT_SEED",
    "DEMO_TRAIN_SEEDS",
    "DEMO_VALIDATION_SEED",
    "UNSEEN_LABEL",
    "DemoCheckpointResult",
    "DemoCheckpointSpec",
    "demo_scene_pair",
    "make_demo_checkpoint",
    "recall_per_kind",
]

#: Where the committed demo checkpoint lives (inside the installed package).
DEFAULT_DEMO_CHECKPOINT = (
    Path(__file__).resolve().parents[1] / "seg2change_core" / "assets" / "demo_cach.safetensors"
)
#: Scenes trained on (the demo analyses seed 0).
DEMO_TRAIN_SEEDS = tuple(range(106, 122))
#: Scene scored after training (never trained on).
DEMO_HOLDOUT_SEED = 100
#: Scene that picks the best epoch (never trained on).
DEMO_VALIDATION_SEED = 105
#: Cloud cover of the cloudy acquisitions, as in the demo's scene.
DEMO_CLOUD_FRACTION = 0.3
#: Raw label of pixels without a clear observation on a date (not trained on or scored).
UNSEEN_LABEL = 128


@dataclass(frozen=True)
class DemoCheckpointSpec:
    """How the demo checkpoint is made.

    Attributes
    ----------
    train_seeds
        Seeds of the training scenes.
    holdout_seed
        Seed of the scene it is scored on.
    val_seed
        Seed of the validation scene that picks the best epoch.
    scene_size
        Side of each generated training scene in pixels (every scene's first 256 px holds one
        event of every kind of change).
    val_size, holdout_size
        Sides of the validation and held-out scenes (504 is a whole number of CACH tiles, so
        validating after every epoch stays cheap; 1024 is the demo's scene size).
    acquisitions
        Clear acquisitions per epoch, composited by their median.
    crop_size
        Training crop side (a valid CACH tile: a multiple of 252).
    crops_per_scene
        Random crops drawn from each scene per epoch.
    focus_change
        Share of crops drawn around a changed pixel (change covers ~5 % of a scene).
    epochs, batch_size, lr, warmup_steps, seed
        Optimisation (AdamW, cosine decay).
    backbone
        ``"conv"`` (multi-scale CNN, see the module docstring) or ``"compact"`` (small ViT).
    widths
        Stage widths of the conv backbone.
    embed_dim, depth, num_heads, hidden_dim
        Token width (both backbones); compact backbone depth and heads; CACH decoder width.
    changed_class_weight
        Cross-entropy weight of the changed class (1, as the reference: a larger weight moves
        every predicted boundary outwards, and a one-pixel shift costs ~16 % IoU here).
    dice
        Weight of the soft-Dice term of the loss (0, as the reference).
    bf16_autocast
        Forward passes in bfloat16 (about a third faster on CPUs with AMX or AVX-512 BF16).
    """

    train_seeds: tuple[int, ...] = DEMO_TRAIN_SEEDS
    holdout_seed: int = DEMO_HOLDOUT_SEED
    val_seed: int = DEMO_VALIDATION_SEED
    scene_size: int = 384
    val_size: int = 504
    holdout_size: int = 1024
    acquisitions: int = 3
    crop_size: int = 252
    crops_per_scene: int = 4
    focus_change: float = 0.7
    epochs: int = 30
    batch_size: int = 4
    lr: float = 2e-3
    warmup_steps: int = 20
    seed: int = 0
    backbone: str = "conv"
    widths: tuple[int, int, int, int] = (24, 48, 96, 128)
    embed_dim: int = 96
    depth: int = 4
    num_heads: int = 4
    hidden_dim: int = 32
    changed_class_weight: float = 1.0
    dice: float = 0.0
    bf16_autocast: bool = True

    def __post_init__(self) -> None:
        kept = {0, self.holdout_seed, self.val_seed}
        if kept & set(self.train_seeds) or self.holdout_seed == self.val_seed:
            raise ModelError(
                f"train_seeds {self.train_seeds}, the validation seed {self.val_seed}, the held-out "
                f"seed {self.holdout_seed} and the demo's seed 0 must all differ"
            )


@dataclass(frozen=True)
class DemoCheckpointResult:
    """What :func:`make_demo_checkpoint` produced.

    Attributes
    ----------
    path
        The checkpoint.
    size_bytes
        Its size.
    train_seconds
        Wall time of the training.
    model, cva
        Evaluation of the saved model and of the CVA baseline (fitted on the scene) on the
        held-out scene.
    """

    path: Path
    size_bytes: int
    train_seconds: float
    model: EvaluationReport
    cva: EvaluationReport
    metadata: dict[str, Any] = field(default_factory=dict)


def demo_scene_pair(
    seed: int, size: int, n_acquisitions: int = 3, cloud_fraction: float = DEMO_CLOUD_FRACTION
) -> ChangePair:
    """A generated scene as one in-memory pair: cloud-free composites and the change mask.

    Each epoch's composite is the per-pixel median of the surface reflectance of its
    acquisitions where their ``qa`` band says clear, as the cube's composite is (the ``synthetic``
    quality preset masks cloud, shadow and nodata); pixels never seen clear are NaN and their
    label is 255 (not scored).

    Parameters
    ----------
    seed
        Scene seed.
    size
        Scene side in pixels.
    n_acquisitions
        Acquisitions per epoch.
    cloud_fraction
        Cloud cover of the cloudy acquisitions (the demo's default; 0 makes all of them clear).

    Returns
    -------
    ChangePair
        ``before``/``after`` float32 surface reflectance ``(6, size, size)`` in
        :data:`~pipeline.synthetic.BAND_NAMES` order; raw ``label`` 0 (unchanged), 255 (changed)
        and :data:`UNSEEN_LABEL` where a date has no clear observation (pass it as the
        datasets' ``ignore_value``).
    """
    spec = SceneSpec(
        size=size, seed=seed, cloud_fraction=cloud_fraction, acquisitions_per_epoch=n_acquisitions
    )
    window = Window(0, 0, size, size)
    composites: dict[str, np.ndarray] = {}
    for epoch in ("before", "after"):
        stack = []
        for acquisition in acquisitions(spec):
            if acquisition.epoch.value != epoch:
                continue
            bands = acquisition_window(spec, acquisition, window)
            reflectance = np.stack([bands[name] for name in BAND_NAMES]).astype(np.float32) * np.float32(
                SCALE
            )
            reflectance[:, bands["qa"] != QA.CLEAR] = np.nan
            stack.append(reflectance)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels stay NaN
            composites[epoch] = np.nanmedian(np.stack(stack), axis=0).astype(np.float32)
    _, _, change = truth_window(spec, window)
    label = np.where(change != 0, np.uint8(255), np.uint8(0))
    unseen = np.isnan(composites["before"]).any(axis=0) | np.isnan(composites["after"]).any(axis=0)
    label[unseen] = UNSEEN_LABEL
    return ChangePair(
        name=f"seed{seed}",
        dataset="synthetic",
        before=composites["before"],
        after=composites["after"],
        label=label,
    )


def make_demo_checkpoint(
    out: str | Path = DEFAULT_DEMO_CHECKPOINT,
    spec: DemoCheckpointSpec | None = None,
    *,
    workdir: str | Path | None = None,
    observer: TrainingObserver | None = None,
    log: Callable[[str], None] | None = None,
) -> DemoCheckpointResult:
    """Generate the scenes, train the small CACH model and save the demo checkpoint.

    Parameters
    ----------
    out
        Checkpoint path (replaced).
    spec
        How to make it; default :class:`DemoCheckpointSpec`.
    workdir
        Folder kept for the training state, log and held-out scores; default a temporary folder
        that is removed afterwards (so nothing but the checkpoint lands beside ``out``).
    observer
        Training progress receiver.
    log
        Receives one-line progress messages.

    Returns
    -------
    DemoCheckpointResult
    """
    spec = spec or DemoCheckpointSpec()
    say = log or (lambda _message: None)
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="seg2change-demo-checkpoint-") as tmp:
            return _make(Path(out), spec, Path(tmp), observer, say)
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    return _make(Path(out), spec, work, observer, say)


@dataclass(frozen=True)
class _Scenes:
    """The generated scenes of one demo training run, and the normalisation fitted on them."""

    train: ChangeDetectionDataset
    validation: ChangePair
    holdout: ChangePair
    normalisation: InputNormalisation


def _scenes(spec: DemoCheckpointSpec, say: Callable[[str], None]) -> _Scenes:
    say(f"generating {len(spec.train_seeds)} training scenes of {spec.scene_size} px")
    pairs = [demo_scene_pair(seed, spec.scene_size, spec.acquisitions) for seed in spec.train_seeds]
    holdout = demo_scene_pair(spec.holdout_seed, spec.holdout_size, spec.acquisitions)
    validation = demo_scene_pair(spec.val_seed, spec.val_size, spec.acquisitions)
    mean, std = band_statistics(pairs, 1.0, seed=spec.seed)
    normalisation = InputNormalisation(
        BAND_NAMES, tuple(round(m, 5) for m in mean), tuple(round(s, 5) for s in std), 1.0
    )
    train_data = ChangeDetectionDataset(
        pairs,
        crop_size=spec.crop_size,
        augment=True,
        seed=spec.seed,
        ignore_value=UNSEEN_LABEL,
        repeats=spec.crops_per_scene,
        focus_change=spec.focus_change,
    )
    return _Scenes(train_data, validation, holdout, normalisation)


def _configs(spec: DemoCheckpointSpec) -> tuple[ModelConfig, TrainConfig]:
    model_config = ModelConfig(
        backbone=spec.backbone,
        widths=spec.widths,
        embed_dim=spec.embed_dim,
        depth=spec.depth,
        num_heads=spec.num_heads,
        hidden_dim=spec.hidden_dim,
        tile_size=504,
    )
    config = TrainConfig(
        epochs=spec.epochs,
        batch_size=spec.batch_size,
        lr=spec.lr,
        warmup_steps=spec.warmup_steps,
        seed=spec.seed,
        loss=LossWeights(changed_class_weight=spec.changed_class_weight, dice=spec.dice),
        bf16_autocast=spec.bf16_autocast,
        model_name=f"cach-{spec.backbone}-demo",
    )
    return model_config, config


def _score_heldout(
    out: Path, spec: DemoCheckpointSpec, holdout: ChangePair, say: Callable[[str], None]
) -> tuple[CACHChangeModel, EvaluationReport, EvaluationReport, dict[str, Any]]:
    """Score the saved model and the CVA baseline on the held-out scene."""
    say(f"scoring the saved model and the CVA baseline on held-out scene seed {spec.holdout_seed}")
    eval_data = ChangeDetectionDataset([holdout], ignore_value=UNSEEN_LABEL)
    saved = load_change_model(out)
    model_report = evaluate(saved, eval_data)
    cva = cva_for(eval_data, BAND_NAMES)  # raw reflectance differences, as the built-in baseline
    fit_cva_on_dataset(cva, eval_data)  # once on the scene, as evaluate's cva_fit="dataset" does
    cva_report = evaluate(cva, eval_data, cva_fit="dataset")
    heldout: dict[str, Any] = {
        "seed": spec.holdout_seed,
        "size": spec.holdout_size,
        "model": _scores(model_report),
        "cva_baseline": _scores(cva_report),
        "recall_per_kind": {
            "model": recall_per_kind(saved, holdout, spec.holdout_seed),
            "cva_baseline": recall_per_kind(cva, holdout, spec.holdout_seed),
        },
    }
    for who in ("model", "cva_baseline"):
        recalls = heldout["recall_per_kind"][who]
        say(
            f"held-out {who}: IoU {heldout[who]['iou']}, recall per kind of change "
            + ", ".join(f"{kind} {value}" for kind, value in recalls.items())
        )
    assert isinstance(saved, CACHChangeModel)
    return saved, model_report, cva_report, heldout


def _make(
    out: Path,
    spec: DemoCheckpointSpec,
    work: Path,
    observer: TrainingObserver | None,
    say: Callable[[str], None],
) -> DemoCheckpointResult:
    scenes = _scenes(spec, say)
    model_config, config = _configs(spec)
    say(f"training {spec.epochs} epochs of {len(scenes.train)} crops")
    trained = work / "trained.safetensors"
    for stale in (work / "trained.state.pt", work / "trained.log.jsonl"):
        stale.unlink(missing_ok=True)
    started, cpu_started = time.monotonic(), time.process_time()
    result = train(
        scenes.train,
        ChangeDetectionDataset([scenes.validation], ignore_value=UNSEEN_LABEL),
        trained,
        model_config=model_config,
        config=config,
        normalisation=scenes.normalisation,
        observer=observer,
    )
    train_seconds = time.monotonic() - started
    cpu_seconds = time.process_time() - cpu_started

    model = load_change_model(trained)
    if not isinstance(model, CACHChangeModel):
        raise ModelError(f"{trained} did not load as a CACH model")
    model.half()
    metadata: dict[str, Any] = {
        "purpose": "demo checkpoint of seg2change; trained on generated scenes only",
        "command": f"seg2change make-demo-checkpoint --out {out}",
        "generator": "pipeline.synthetic; per-epoch median of the clear (qa) observations",
        "spec": asdict(spec),
        "bands": list(BAND_NAMES),
        "input": "surface reflectance (scale 1), six bands",
        "train_seconds": round(train_seconds, 1),
        "train_cpu_seconds": round(cpu_seconds, 1),
        "epochs_completed": result.epochs_completed,
        "torch_threads": torch.get_num_threads(),
        "weights_dtype": "float16",
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    save_change_model(model, out, training_data=metadata)

    saved, model_report, cva_report, metadata["heldout"] = _score_heldout(out, spec, scenes.holdout, say)
    # The scores are of the saved (half-precision) weights; store them in the same file.
    save_change_model(saved.half(), out, training_data=metadata)
    (work / "heldout.json").write_text(json.dumps(metadata["heldout"], indent=1))
    return DemoCheckpointResult(
        path=out,
        size_bytes=out.stat().st_size,
        train_seconds=train_seconds,
        model=model_report,
        cva=cva_report,
        metadata=metadata,
    )


def recall_per_kind(model: ChangeModel, pair: ChangePair, seed: int) -> dict[str, float | None]:
    """Share of each kind of generated change that a model detects on a scene from :func:`demo_scene_pair`.

    Parameters
    ----------
    model
        A change model (predicted tile by tile at its tile size) or a fitted CVA baseline.
    pair
        The scene's pair; pixels without a clear observation are left out.
    seed
        The scene's seed (its truth is recomputed from it).

    Returns
    -------
    dict
        Recall per :class:`~pipeline.synthetic.ChangeType` label (``None`` where the scene has none).
    """
    size = pair.label.shape[-1]
    _, _, kinds = truth_window(SceneSpec(size=size, seed=seed), Window(0, 0, size, size))
    before = torch.from_numpy(np.asarray(pair.before, dtype=np.float32))[None]
    after = torch.from_numpy(np.asarray(pair.after, dtype=np.float32))[None]
    changed = predict_change(model, before, after, tiled=True)[0].numpy()
    scored = np.asarray(pair.label) != UNSEEN_LABEL
    out: dict[str, float | None] = {}
    for kind in ChangeType:
        if kind is ChangeType.NONE:
            continue
        of_kind = (kinds == kind) & scored
        out[kind.label] = round(float(changed[of_kind].mean()), 4) if of_kind.any() else None
    return out


def _scores(report: EvaluationReport) -> dict[str, float | None]:
    """Rounded scores, ``None`` where undefined (JSON has no NaN)."""
    s = report.scores
    values = {"iou": s.iou, "f1": s.f1, "precision": s.precision, "recall": s.recall, "oa": s.oa}
    return {k: None if math.isnan(v) else round(v, 4) for k, v in values.items()}
