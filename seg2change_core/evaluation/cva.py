"""The classical CVA baselines built and fitted for a dataset (see :mod:`seg2change_core.evaluation`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from seg2change_core.baselines import CVABaseline, StandardisedCVABaseline, otsu_threshold
from seg2change_core.change_model import InputNormalisation
from seg2change_core.datasets import ChangeDetectionDataset, band_names_of, default_band_names, value_scale
from seg2change_core.errors import DatasetError

__all__ = ["cva_for", "fit_cva_on_dataset"]


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
