"""Scores of one model on several datasets, each on its own and pooled over all their pixels."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from seg2change_core.change_model import ChangeModel
from seg2change_core.datasets import ChangeDetectionDataset
from seg2change_core.errors import DatasetError
from seg2change_core.evaluation.reports import DatasetsReport, EvaluationReport, pool_reports
from seg2change_core.evaluation.scoring import CVAFitMode, evaluate

__all__ = ["ModelFactory", "evaluate_datasets"]

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
