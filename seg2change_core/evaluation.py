"""Dataset-level evaluation of change models on labelled pairs.

:func:`evaluate` runs a :class:`~seg2change_core.change_model.ChangeModel` over every pair of a
:class:`~seg2change_core.datasets.ChangeDetectionDataset`, decides change with
:func:`~seg2change_core.change_model.decide` (no hand-set threshold), and accumulates one
confusion over all pixels (:class:`~seg2change_core.metrics.BinaryConfusion`): change IoU, F1,
precision, recall, overall accuracy and kappa are computed from the totals, never averaged over
images. Pixels whose target is 255 are not scored.

Before scoring, :func:`evaluate` checks that the data's value scale (8-bit, reflectance, 16-bit DN)
is the one the model was made for (:func:`~seg2change_core.datasets.check_input_scale`); the CVA
baselines, whose normalisation is made from the data, are not checked.

Large frames
------------
A model with a ``tile_size`` (CACH: 504 px) scores larger images tile by tile, blending
overlapping tiles' probabilities (:func:`~seg2change_core.tiled.predict_tiled`), as the engine
runs a scene; smaller images are one forward pass. Baselines without a tile size see whole images.

Several datasets
----------------
:func:`evaluate_datasets` scores each dataset on its own and pools all pixels of all of them
(:class:`DatasetsReport`), optionally with a baseline on the same data for comparison.

The classical baselines
-----------------------
:func:`cva_for` builds the CVA baseline for a dataset (raw values brought to [0, 1] or reflectance,
no per-band standardisation), or with ``standardised=True`` the standardised CVA (each date's
bands standardised with that image's own statistics; see :mod:`seg2change_core.baselines`). Its Otsu threshold is fitted either **per image** (``cva_fit="image"``:
each pair gets its own threshold, the most favourable setting for CVA, which adapts to each
image's illumination) or **once on the dataset** (``cva_fit="dataset"``: one threshold from a pixel
sample of all pairs, as the tiled engine does per job). Both use no labels.

Semantic change
---------------
When the pairs carry class maps (``label_A/``, ``label_B/``), :func:`evaluate` also scores semantic
change with :class:`~seg2change_core.metrics.SemanticChangeConfusion` (class-union rule, per-class
``IoU_c``/``F1_c`` and their means ``mIoU_c``/``mF1_c``, SeK, Fscd). The predicted class of each date
comes from ``class_maps`` (e.g. a segmenter's argmax); without it the ground-truth class maps are
used, so the semantic scores then measure the change decision within each class.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from seg2change_core.baselines import CVABaseline, StandardisedCVABaseline, otsu_threshold
from seg2change_core.change_model import ChangeModel, InputNormalisation, decide
from seg2change_core.datasets import (
    ChangeDetectionDataset,
    band_names_of,
    check_input_scale,
    collate_samples,
    dataset_of,
    default_band_names,
    value_scale,
)
from seg2change_core.errors import DatasetError
from seg2change_core.metrics import BinaryConfusion, BinaryScores, SemanticChangeConfusion, binary_scores
from seg2change_core.tiled import predict_tiled

__all__ = [
    "ClassMapFn",
    "DatasetsReport",
    "EvaluationReport",
    "PairScores",
    "SemanticReport",
    "check_dataset_scale",
    "cva_for",
    "evaluate",
    "evaluate_datasets",
    "fit_cva_on_dataset",
    "pool_reports",
    "predict_change",
]

CVAFitMode = Literal["image", "dataset"]
ClassMapFn = Callable[[torch.Tensor], torch.Tensor]
"""Maps a raw ``(B, bands, H, W)`` batch to ``(B, H, W)`` int64 class indices."""


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


@dataclass(frozen=True)
class PairScores:
    """Confusion counts of one pair (for finding the pairs a model gets wrong).

    Attributes
    ----------
    key
        ``dataset/name``.
    tp, fp, fn, tn
        Counts of scored pixels.
    """

    key: str
    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def iou(self) -> float:
        """Change IoU of the pair (NaN when it has no change and none is predicted)."""
        den = self.tp + self.fp + self.fn
        return self.tp / den if den else math.nan


@dataclass(frozen=True)
class SemanticReport:
    """Semantic change scores (see :class:`~seg2change_core.metrics.SemanticChangeScores`).

    Attributes
    ----------
    classes
        Class indices averaged into the means.
    iou_c, f1_c
        Per-class change IoU and F1 (index = class), NaN where undefined.
    miou_c, mf1_c
        Their means over ``classes``.
    sek, fscd
        SECOND's separated kappa and semantic change F1.
    oracle_classes
        Whether the ground-truth class maps stood in for predicted ones.
    """

    classes: tuple[int, ...]
    iou_c: tuple[float, ...]
    f1_c: tuple[float, ...]
    miou_c: float
    mf1_c: float
    sek: float
    fscd: float
    oracle_classes: bool


class _JsonReport:
    """``to_json`` and ``save`` of a report that has ``to_dict``."""

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON."""
        return json.dumps(self.to_dict(), indent=1)

    def save(self, path: str | Path) -> None:
        """Write :meth:`to_json` to a file (parent folders are created)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json())


@dataclass(frozen=True)
class EvaluationReport(_JsonReport):
    """What :func:`evaluate` measured.

    Attributes
    ----------
    model
        Model name.
    pairs
        Number of pairs evaluated.
    scored_pixels
        Pixels scored (target not 255).
    scores
        Binary change scores over all pixels.
    semantic
        Semantic change scores, when the data has class maps.
    per_pair
        Counts per pair.
    settings
        How it was run (CVA fit mode, data folders, split part, ...).
    """

    model: str
    pairs: int
    scored_pixels: int
    scores: BinaryScores
    semantic: SemanticReport | None = None
    per_pair: tuple[PairScores, ...] = ()
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def confusion(self) -> list[list[int]]:
        """``[[tn, fp], [fn, tp]]`` (rows truth, columns prediction)."""
        s = self.scores
        return [[s.tn, s.fp], [s.fn, s.tp]]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (NaN becomes ``null``)."""
        scores = {k: (_finite(v) if isinstance(v, float) else v) for k, v in asdict(self.scores).items()}
        out: dict[str, Any] = {
            "model": self.model,
            "pairs": self.pairs,
            "scored_pixels": self.scored_pixels,
            "confusion": {"rows": "truth", "columns": "prediction", "matrix": self.confusion},
            "change": scores,
            "settings": self.settings,
            "per_pair": [
                {"key": p.key, "tp": p.tp, "fp": p.fp, "fn": p.fn, "tn": p.tn, "iou": _finite(p.iou)}
                for p in self.per_pair
            ],
        }
        if self.semantic is not None:
            sem = self.semantic
            out["semantic"] = {
                "classes": list(sem.classes),
                "iou_c": [_finite(v) for v in sem.iou_c],
                "f1_c": [_finite(v) for v in sem.f1_c],
                "miou_c": _finite(sem.miou_c),
                "mf1_c": _finite(sem.mf1_c),
                "sek": _finite(sem.sek),
                "fscd": _finite(sem.fscd),
                "oracle_classes": sem.oracle_classes,
            }
        return out


def cva_for(
    dataset: ChangeDetectionDataset, bands: Sequence[str] | None = None, *, standardised: bool = False
) -> CVABaseline:
    """The CVA baseline for a dataset's raw values (scaled by the dtype's :func:`value_scale`).

    Parameters
    ----------
    dataset
        The data (its first pair gives the band count and dtype).
    bands
        Band names; default the names the data declares (e.g. OSCD's), else
        :func:`~seg2change_core.datasets.default_band_names`.
    standardised
        Build the standardised CVA (:class:`~seg2change_core.baselines.StandardisedCVABaseline`,
        ``cva-std``) instead of CVA on raw differences.
    """
    first = dataset.pair(0)
    count = first.before.shape[0]
    declared = band_names_of(dataset.pairs[0])
    names = tuple(bands) if bands is not None else (declared or default_band_names(count))
    if len(names) != count:
        raise DatasetError(f"{len(names)} band names given for {count}-band images")
    norm = InputNormalisation(names, (0.0,) * count, (1.0,) * count, value_scale(first.before.dtype))
    if standardised:
        return StandardisedCVABaseline(norm)
    return CVABaseline(norm)


def fit_cva_on_dataset(
    model: CVABaseline, dataset: ChangeDetectionDataset, *, max_samples: int = 1_000_000, seed: int = 0
) -> None:
    """Fit the baseline's threshold once on a pixel sample drawn evenly from every pair.

    Parameters
    ----------
    model
        The baseline (its ``fitted`` values are replaced).
    dataset
        The pairs (whole images; no labels are used).
    max_samples
        Magnitudes drawn in all.
    seed
        Seed of the draw.
    """
    generator = torch.Generator().manual_seed(seed)
    per_pair = max(1, max_samples // max(1, len(dataset.pairs)))
    chunks: list[torch.Tensor] = []
    for index in range(len(dataset.pairs)):
        pair = dataset.pair(index)
        before = torch.from_numpy(np.asarray(pair.before, dtype=np.float32))[None]
        after = torch.from_numpy(np.asarray(pair.after, dtype=np.float32))[None]
        values = model.magnitude(before, after).flatten()
        if values.numel() > per_pair:
            values = values[torch.randperm(values.numel(), generator=generator)[:per_pair]]
        chunks.append(values)
    model.fitted = otsu_threshold(torch.cat(chunks))


def predict_change(
    model: ChangeModel,
    before: torch.Tensor,
    after: torch.Tensor,
    *,
    tiled: bool = False,
    tile_overlap: int | None = None,
) -> torch.Tensor:
    """Binary change ``(B, H, W)`` (bool) of raw batches: ``decide(model.predict(...))``.

    With ``tiled`` and a model ``tile_size``, images larger than a tile are predicted tile by
    tile with ``tile_overlap`` (default a quarter tile) and blended
    (:func:`~seg2change_core.tiled.predict_tiled`).
    """
    with torch.no_grad():
        if tiled and model.tile_size is not None:
            return decide(
                predict_tiled(model, before, after, tile_size=model.tile_size, overlap=tile_overlap)
            )[:, 0]
        return decide(model.predict(before, after))[:, 0]


def check_dataset_scale(
    model: ChangeModel, dataset: ChangeDetectionDataset, *, pairs_per_dataset: int = 3
) -> None:
    """Check the value scale of each dataset in ``dataset`` against the model's normalisation.

    A few pairs of each dataset (key prefix) are read and their raw values, in their own dtype,
    handed to :func:`~seg2change_core.datasets.check_input_scale`.

    Raises
    ------
    DatasetError
        When a dataset's values are of another scale than the model expects.
    """
    chosen: dict[str, list[int]] = {}
    for index, source in enumerate(dataset.pairs):
        picked = chosen.setdefault(dataset_of(source), [])
        if len(picked) < pairs_per_dataset:
            picked.append(index)
    for name, indices in chosen.items():
        samples = []
        for index in indices:
            pair = dataset.pair(index)
            for image in (pair.before, pair.after):
                flat = np.asarray(image).reshape(-1)
                samples.append(flat[:: max(1, flat.size // 200_000)])
        check_input_scale(np.concatenate(samples), model.normalisation, where=f"dataset {name}")


def evaluate(
    model: ChangeModel,
    dataset: ChangeDetectionDataset,
    *,
    cva_fit: CVAFitMode = "image",
    batch_size: int = 1,
    class_maps: ClassMapFn | None = None,
    semantic_classes: Sequence[int] | None = None,
    on_pair: Callable[[int, int], None] | None = None,
    settings: dict[str, Any] | None = None,
    tiled: bool = True,
    tile_overlap: int | None = None,
    check_scale: bool = True,
) -> EvaluationReport:
    """Score a change model on every pair of a dataset, pooling all pixels.

    Parameters
    ----------
    model
        A change model (:class:`~seg2change_core.change_model.CACHChangeModel`, a loaded
        checkpoint, or :class:`~seg2change_core.baselines.CVABaseline`).
    dataset
        The pairs, without augmentation. Without ``crop_size`` whole images are scored; with it,
        only each image's top-left crop (a cheaper check, e.g. for validation during training).
    cva_fit
        For a :class:`CVABaseline` without fitted values: ``"image"`` fits its threshold on each
        pair, ``"dataset"`` once on all pairs (see the module docstring). A baseline that is
        already fitted keeps its values.
    batch_size
        Pairs per model call (pairs must then share one size). A per-image CVA fit uses 1.
    class_maps
        Predicted class map of a date's raw batch, for semantic scores; ``None`` uses the ground
        truth class maps.
    semantic_classes
        Classes averaged into ``mIoU_c``/``mF1_c``; default all classes seen in the class maps.
    on_pair
        Called with ``(pairs done, pairs in all)`` after each batch (progress display).
    settings
        Extra entries recorded in the report's ``settings``.
    tiled
        Predict images larger than the model's ``tile_size`` tile by tile (see the module
        docstring); ``False`` runs one forward pass per batch.
    tile_overlap
        Overlap of neighbouring tiles; default a quarter tile.
    check_scale
        Check the data's value scale against the model's normalisation first
        (:func:`check_dataset_scale`; never for the CVA baselines).

    Returns
    -------
    EvaluationReport

    Raises
    ------
    DatasetError
        For a dataset that augments or repeats pairs, or whose value scale is not the model's.
    """
    if dataset.augment or dataset.repeats != 1:
        raise DatasetError("evaluate each pair once as it is: build the dataset without augment or repeats")
    recorded: dict[str, Any] = dict(settings or {})
    if check_scale and not isinstance(model, CVABaseline):
        check_dataset_scale(model, dataset)
    if tiled and model.tile_size is not None:
        recorded["tile_size"] = model.tile_size
        recorded["tile_overlap"] = tile_overlap if tile_overlap is not None else model.tile_size // 4
    if isinstance(model, CVABaseline) and model.fitted is None:
        recorded["cva_fit"] = cva_fit
        if cva_fit == "dataset":
            fit_cva_on_dataset(model, dataset)
        elif cva_fit == "image":
            batch_size = 1  # an unfitted baseline fits on each call's inputs: one image per call
        else:
            raise DatasetError(f"unknown cva_fit {cva_fit!r}; choose 'image' or 'dataset'")

    first = dataset[0]
    semantic = first["class_before"] is not None and first["class_after"] is not None
    num_classes = _num_classes(dataset) if semantic else 0
    binary = BinaryConfusion()
    sem_confusion = SemanticChangeConfusion(num_classes) if semantic else None
    per_pair: list[PairScores] = []
    pixels = 0
    total = len(dataset)
    for start in range(0, total, batch_size):
        batch = collate_samples([dataset[i] for i in range(start, min(start + batch_size, total))])
        pred = predict_change(
            model, batch.before, batch.after, tiled=tiled, tile_overlap=tile_overlap
        ).numpy()
        target = batch.target.numpy()
        binary.update(pred, target)
        for key, p, t in zip(batch.keys, pred, target, strict=True):
            one = BinaryConfusion()
            one.update(p, t)
            per_pair.append(PairScores(key, one.tp, one.fp, one.fn, one.tn))
        pixels += int(np.count_nonzero(target != 255))
        if sem_confusion is not None:
            assert batch.class_before is not None and batch.class_after is not None
            if class_maps is None:
                pred_before, pred_after = batch.class_before, batch.class_after
            else:
                with torch.no_grad():
                    pred_before, pred_after = class_maps(batch.before), class_maps(batch.after)
            sem_confusion.update(
                pred,
                pred_before.numpy(),
                pred_after.numpy(),
                target,
                batch.class_before.numpy(),
                batch.class_after.numpy(),
            )
        if on_pair is not None:
            on_pair(min(start + batch_size, total), total)

    semantic_report: SemanticReport | None = None
    if sem_confusion is not None:
        chosen = tuple(range(num_classes)) if semantic_classes is None else tuple(semantic_classes)
        sem = sem_confusion.scores(chosen)
        semantic_report = SemanticReport(
            classes=chosen,
            iou_c=tuple(float(v) for v in sem.iou_c),
            f1_c=tuple(float(v) for v in sem.f1_c),
            miou_c=sem.miou_c,
            mf1_c=sem.mf1_c,
            sek=sem.sek,
            fscd=sem.fscd,
            oracle_classes=class_maps is None,
        )
    if isinstance(model, CVABaseline) and model.fitted is not None:
        recorded["cva_threshold"] = model.fitted.threshold
    return EvaluationReport(
        model=model.name,
        pairs=len(dataset),
        scored_pixels=pixels,
        scores=binary.scores(),
        semantic=semantic_report,
        per_pair=tuple(per_pair),
        settings=recorded,
    )


def _num_classes(dataset: ChangeDetectionDataset) -> int:
    """One more than the largest class index (other than 255) in the class maps."""
    largest = 0
    for index in range(len(dataset.pairs)):
        pair = dataset.pair(index)
        for cmap in (pair.class_before, pair.class_after):
            if cmap is None:
                continue
            values = np.asarray(cmap)
            values = values[values != 255]
            if values.size:
                largest = max(largest, int(values.max()))
    return largest + 1


def pool_reports(
    reports: Sequence[EvaluationReport], *, model: str | None = None, settings: dict[str, Any] | None = None
) -> EvaluationReport:
    """One report over all pixels of several reports (their confusions summed, never averaged).

    Semantic scores are kept only when there is a single report (they cannot be summed).
    """
    if not reports:
        raise DatasetError("nothing to pool: no dataset was evaluated")
    tp = sum(r.scores.tp for r in reports)
    fp = sum(r.scores.fp for r in reports)
    fn = sum(r.scores.fn for r in reports)
    tn = sum(r.scores.tn for r in reports)
    return EvaluationReport(
        model=model or reports[0].model,
        pairs=sum(r.pairs for r in reports),
        scored_pixels=sum(r.scored_pixels for r in reports),
        scores=binary_scores(tp, fp, fn, tn),
        semantic=reports[0].semantic if len(reports) == 1 else None,
        per_pair=tuple(p for r in reports for p in r.per_pair),
        settings=dict(settings or {}),
    )


def _ratio(model: float, baseline: float) -> float:
    if math.isnan(model) or math.isnan(baseline) or baseline == 0:
        return math.nan
    return model / baseline


@dataclass(frozen=True)
class DatasetsReport(_JsonReport):
    """Scores of one model per dataset and pooled over all of them (see :func:`evaluate_datasets`).

    Attributes
    ----------
    model
        Model name.
    names
        Dataset names, in the order evaluated.
    reports
        One report per dataset (same order).
    pooled
        All pixels of all datasets together.
    baseline
        The same for a baseline on the same data, when one was run.
    """

    model: str
    names: tuple[str, ...]
    reports: tuple[EvaluationReport, ...]
    pooled: EvaluationReport
    baseline: DatasetsReport | None = None

    def report(self, name: str) -> EvaluationReport:
        """The report of one dataset."""
        return self.reports[self.names.index(name)]

    def iou_ratios(self) -> dict[str, float]:
        """Model IoU / baseline IoU per dataset and ``"pooled"`` (NaN where undefined or no baseline)."""
        if self.baseline is None:
            return {}
        out = {
            name: _ratio(r.scores.iou, self.baseline.report(name).scores.iou)
            for name, r in zip(self.names, self.reports, strict=True)
        }
        out["pooled"] = _ratio(self.pooled.scores.iou, self.baseline.pooled.scores.iou)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the pooled report's fields at the top, plus ``datasets`` (one entry per
        dataset, without per-pair counts, which the top level lists), ``baseline`` and
        ``iou_ratio``."""
        out = self.pooled.to_dict()
        out["model"] = self.model
        out["datasets"] = [
            {"dataset": name, **{k: v for k, v in r.to_dict().items() if k != "per_pair"}}
            for name, r in zip(self.names, self.reports, strict=True)
        ]
        if self.baseline is not None:
            base = self.baseline.to_dict()
            base.pop("per_pair", None)
            out["baseline"] = base
            out["iou_ratio"] = {k: _finite(v) for k, v in self.iou_ratios().items()}
        return out


ModelFactory = Callable[[str, ChangeDetectionDataset], ChangeModel]


def evaluate_datasets(
    datasets: Sequence[tuple[str, ChangeDetectionDataset]],
    model_for: ModelFactory,
    *,
    baseline_for: ModelFactory | None = None,
    cva_fit: CVAFitMode = "image",
    batch_size: int = 1,
    tiled: bool = True,
    tile_overlap: int | None = None,
    check_scale: bool = True,
    on_progress: Callable[[str, str, int, int], None] | None = None,
    settings: dict[str, Any] | None = None,
) -> DatasetsReport:
    """Score a model on each dataset and on all of them pooled, optionally beside a baseline.

    Parameters
    ----------
    datasets
        ``(name, dataset)`` pairs, each dataset without augmentation.
    model_for
        The model for a dataset (called once per dataset: a loaded checkpoint may be returned
        every time; a CVA baseline is built from each dataset's bands and dtype).
    baseline_for
        The same for a baseline scored on the same data (e.g. the standardised CVA).
    cva_fit, batch_size, tiled, tile_overlap, check_scale
        As :func:`evaluate`.
    on_progress
        Called with ``(model name, dataset name, pairs done, pairs in all)`` after each batch.
    settings
        Extra entries recorded in the pooled report's ``settings``.

    Returns
    -------
    DatasetsReport

    Raises
    ------
    DatasetError
        When no dataset is given, or as :func:`evaluate`.
    """
    if not datasets:
        raise DatasetError("no dataset to evaluate; give at least one dataset folder")

    def run(factory: ModelFactory, recorded: dict[str, Any]) -> DatasetsReport:
        reports: list[EvaluationReport] = []
        name = ""
        for dataset_name, data in datasets:
            model = factory(dataset_name, data)
            name = model.name

            def progress(done: int, total: int, _m: str = model.name, _d: str = dataset_name) -> None:
                if on_progress is not None:
                    on_progress(_m, _d, done, total)

            reports.append(
                evaluate(
                    model,
                    data,
                    cva_fit=cva_fit,
                    batch_size=batch_size,
                    on_pair=progress,
                    settings={"dataset": dataset_name},
                    tiled=tiled,
                    tile_overlap=tile_overlap,
                    check_scale=check_scale,
                )
            )
        pooled = pool_reports(reports, model=name, settings=recorded)
        return DatasetsReport(name, tuple(n for n, _ in datasets), tuple(reports), pooled)

    main = run(model_for, dict(settings or {}))
    baseline = None if baseline_for is None else run(baseline_for, {"cva_fit": cva_fit})
    return DatasetsReport(main.model, main.names, main.reports, main.pooled, baseline)
