"""Classical change baseline: change vector analysis (CVA) with an automatic Otsu threshold.

This is a **baseline**, not Seg2Change's method: it needs no weights and no training, and gives a
reference point for the learned model.

Method
------
1. Both dates are normalised with the model's :class:`InputNormalisation`.
2. The CVA magnitude is the Euclidean norm over bands of the difference ``after - before``
   (a band whose difference is not finite contributes 0).
3. Otsu's method on a sample of magnitudes picks the threshold ``t`` that maximises the
   between-class variance of "unchanged" (``m <= t``) and "changed" (``m > t``). The search is over
   all splits of the sorted sample (no histogram binning); ``t`` is the midpoint between the two
   sample values around the best split.
4. The probability of change is logistic in the magnitude, centred at the threshold:
   ``p = sigmoid((m - t) / s)`` with ``s = (sigma_unchanged + sigma_changed) / 2 * sqrt(3) / pi``,
   the scale of a logistic distribution whose standard deviation is the mean of the two classes'
   spreads. So ``p = 0.5`` exactly at ``t`` and :func:`seg2change_core.change_model.decide`
   reproduces the Otsu decision. The calibration is a heuristic, not fitted to labels.

Tiled use
---------
The threshold must not depend on the tile, or results would depend on the chunking: call
:meth:`CVABaseline.fit` once on a sample of the scene (or the whole scene), then :meth:`predict`
uses the fitted values. An unfitted model fits on each :meth:`predict` call's own inputs instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from seg2change_core.change_model import InputNormalisation
from seg2change_core.errors import ModelError

__all__ = ["CVABaseline", "CVAFit", "cva_magnitude", "otsu_threshold"]

LOGISTIC_SCALE_PER_STD = math.sqrt(3.0) / math.pi


@dataclass(frozen=True)
class CVAFit:
    """Fitted parameters of the CVA baseline.

    Attributes
    ----------
    threshold
        Otsu threshold on the CVA magnitude (probability 0.5).
    scale
        Logistic scale ``s`` of the probability (positive).
    """

    threshold: float
    scale: float


def cva_magnitude(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """Euclidean norm over bands of ``after - before`` as ``(B, 1, H, W)``.

    Non-finite band differences count as 0.
    """
    diff = after - before
    diff = torch.where(torch.isfinite(diff), diff, torch.zeros((), dtype=diff.dtype, device=diff.device))
    return torch.linalg.vector_norm(diff, dim=1, keepdim=True)


def otsu_threshold(values: torch.Tensor) -> CVAFit:
    """Otsu threshold of a 1-D sample and the logistic scale from the two classes' spreads.

    Parameters
    ----------
    values
        Finite sample values (any shape; flattened).

    Raises
    ------
    ModelError
        When the sample has fewer than two distinct values (no split exists).
    """
    v, _ = torch.sort(values.detach().flatten().to(torch.float64))
    n = v.numel()
    if n < 2 or bool(v[0] == v[-1]):
        raise ModelError(
            "cannot fit the CVA baseline: the magnitude sample has fewer than two distinct values "
            "(identical or empty images); fit on a larger or more varied sample"
        )
    cumsum = torch.cumsum(v, dim=0)
    k = torch.arange(1, n, dtype=torch.float64)  # class 0 = first k sorted values
    w0 = k / n
    mu0 = cumsum[:-1] / k
    mu1 = (cumsum[-1] - cumsum[:-1]) / (n - k)
    between = w0 * (1 - w0) * (mu0 - mu1) ** 2
    between = torch.where(v[1:] > v[:-1], between, torch.full_like(between, -1.0))
    best = int(torch.argmax(between))
    threshold = float((v[best] + v[best + 1]) / 2)
    low, high = v[: best + 1], v[best + 1 :]
    spread = (float(low.std(correction=0)) + float(high.std(correction=0))) / 2
    scale = spread * LOGISTIC_SCALE_PER_STD
    floor = 1e-6 * max(abs(threshold), float(v[-1] - v[0]))
    return CVAFit(threshold=threshold, scale=max(scale, floor))


class CVABaseline:
    """Change vector analysis with an Otsu threshold, as a :class:`ChangeModel` (a baseline).

    Parameters
    ----------
    normalisation
        Input normalisation applied to both dates before differencing.
    fit
        Fitted threshold and scale; ``None`` until :meth:`fit` is called.
    name
        Model name.
    """

    tile_size: int | None = None

    def __init__(
        self,
        normalisation: InputNormalisation,
        fit: CVAFit | None = None,
        name: str = "cva-otsu-baseline",
    ) -> None:
        self.normalisation = normalisation
        self.fitted: CVAFit | None = fit
        self.name = name

    @property
    def bands(self) -> tuple[str, ...]:
        """Band names expected, in channel order."""
        return self.normalisation.bands

    @property
    def in_channels(self) -> int:
        """Number of input bands."""
        return self.normalisation.num_bands

    def magnitude(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """CVA magnitude ``(B, 1, H, W)`` of raw batches (normalised here)."""
        if before.shape != after.shape:
            raise ModelError(
                "before and after must have the same shape, got "
                f"{tuple(before.shape)} and {tuple(after.shape)}"
            )
        return cva_magnitude(self.normalisation.apply(before), self.normalisation.apply(after))

    def fit(
        self,
        before: torch.Tensor,
        after: torch.Tensor,
        max_samples: int = 1_000_000,
        seed: int = 0,
    ) -> CVAFit:
        """Estimate the threshold and scale once, from a sample of the scene.

        Parameters
        ----------
        before, after
            Raw ``(B, bands, H, W)`` batches; a scene sample or the whole scene.
        max_samples
            Pixels drawn (without replacement, seeded) when there are more.
        seed
            Seed of that draw.

        Returns
        -------
        CVAFit
            The fitted values, also stored on the model and used by :meth:`predict`.
        """
        self.fitted = self._fit_values(self.magnitude(before, after), max_samples, seed)
        return self.fitted

    @staticmethod
    def _fit_values(magnitude: torch.Tensor, max_samples: int, seed: int) -> CVAFit:
        values = magnitude.flatten()
        if values.numel() > max_samples:
            generator = torch.Generator().manual_seed(seed)
            index = torch.randperm(values.numel(), generator=generator)[:max_samples]
            values = values[index.to(values.device)]
        return otsu_threshold(values)

    def predict(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """Probability of change ``sigmoid((m - t) / s)`` as ``(B, 1, H, W)``.

        Uses the values from :meth:`fit`. An **unfitted** model fits the threshold and scale on
        this call's inputs (all of the batch together), so its results then depend on what is
        passed in a call; fit once before tiled use.
        """
        magnitude = self.magnitude(before, after)
        params = self.fitted or self._fit_values(magnitude, 1_000_000, 0)
        return torch.sigmoid((magnitude - params.threshold) / params.scale)
