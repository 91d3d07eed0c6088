"""Scoring a change model on one dataset: :func:`evaluate` (see :mod:`seg2change_core.evaluation`).

Each batch's change is decided by :func:`predict_change` (whole images or the engine's tiling)
and tallied by :class:`~seg2change_core.evaluation.tally.ChangeTally`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch

from seg2change_core.baselines import CVABaseline
from seg2change_core.change_model import ChangeModel, decide
from seg2change_core.datasets import ChangeDetectionDataset, check_input_scale, collate_samples, dataset_of
from seg2change_core.errors import DatasetError
from seg2change_core.evaluation.cva import fit_cva_on_dataset
from seg2change_core.evaluation.reports import EvaluationReport
from seg2change_core.evaluation.tally import ChangeTally, ClassMapFn
from seg2change_core.tiled import predict_tiled

__all__ = ["CVAFitMode", "check_dataset_scale", "evaluate", "predict_change"]

CVAFitMode = Literal["image", "dataset"]


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


def _prepare(
    model: ChangeModel,
    dataset: ChangeDetectionDataset,
    settings: dict[str, Any] | None,
    cva_fit: CVAFitMode,
    batch_size: int,
    tiled: bool,
    tile_overlap: int | None,
    *,
    check_scale: bool,
) -> tuple[dict[str, Any], int]:
    """Check the data, fit an unfitted CVA baseline; the settings to record and the batch size."""
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
    return recorded, batch_size


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
        pair, ``"dataset"`` once on all pairs (see :mod:`seg2change_core.evaluation`). A baseline
        that is already fitted keeps its values.
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
        Predict images larger than the model's ``tile_size`` tile by tile (see
        :mod:`seg2change_core.evaluation`); ``False`` runs one forward pass per batch.
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
    recorded, batch_size = _prepare(
        model, dataset, settings, cva_fit, batch_size, tiled, tile_overlap, check_scale=check_scale
    )
    tally = ChangeTally.for_dataset(dataset)
    total = len(dataset)
    for start in range(0, total, batch_size):
        batch = collate_samples([dataset[i] for i in range(start, min(start + batch_size, total))])
        pred = predict_change(model, batch.before, batch.after, tiled=tiled, tile_overlap=tile_overlap)
        tally.add(batch, pred.numpy(), class_maps)
        if on_pair is not None:
            on_pair(min(start + batch_size, total), total)
    if isinstance(model, CVABaseline) and model.fitted is not None:
        recorded["cva_threshold"] = model.fitted.threshold
    return tally.report(
        model.name, total, recorded, semantic_classes=semantic_classes, oracle_classes=class_maps is None
    )
