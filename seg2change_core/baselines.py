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

Standardised CVA
----------------
:class:`StandardisedCVABaseline` ("cva-std", the honest classical floor): each date's bands are
standardised with **that image's own** mean and standard deviation per band (over its finite
pixels), then the CVA magnitude and the Otsu threshold follow as above. A global gain or offset
per band between the dates (illumination, season, sensor calibration, haze) then no longer reads
as change, which plain CVA on raw differences cannot avoid. It needs no training and no labels.

Tiled use
---------
The threshold must not depend on the tile, or results would depend on the chunking: call
:meth:`CVABaseline.fit` once on a sample of the scene (or the whole scene), then :meth:`predict`
uses the fitted values. An unfitted model fits on each :meth:`predict` call's own inputs instead.
:meth:`StandardisedCVABaseline.fit` also fixes the per-date band statistics (from the sample it
is given), so tiles are then standardised alike; unfitted, each call's images use their own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from seg2change_core.change_model import InputNormalisation
from seg2change_core.errors import ModelError

__all__ = [
    "CVABaseline",
    "CVAFit",
    "DateStatistics",
    "StandardisedCVABaseline",
    "cva_magnitude",
    "otsu_threshold",
    "standardise_per_image",
]

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
    magnitude: torch.Tensor = torch.linalg.vector_norm(diff, dim=1, keepdim=True)
    return magnitude


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


def _finite_moments(x: torch.Tensor, dims: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation over ``dims`` of the finite values (float64)."""
    values = x.to(torch.float64)
    finite = torch.isfinite(values)
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    count = finite.sum(dim=dims, keepdim=True).clamp(min=1)
    mean = torch.where(finite, values, zero).sum(dim=dims, keepdim=True) / count
    var = (torch.where(finite, values - mean, zero) ** 2).sum(dim=dims, keepdim=True) / count
    return mean, var.sqrt()


def _standardise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    values = x.to(torch.float64)
    usable = torch.isfinite(values) & (std > 1e-12)
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    out = torch.where(usable, (values - mean) / std.clamp(min=1e-12), zero)
    return out.to(x.dtype if x.is_floating_point() else torch.float32)


def standardise_per_image(x: torch.Tensor) -> torch.Tensor:
    """Standardise each band of each image with its own mean and std: ``(B, C, H, W)`` in and out.

    Statistics are taken over the finite pixels; non-finite pixels and constant bands become 0.
    """
    mean, std = _finite_moments(x, (2, 3))
    return _standardise(x, mean, std)


@dataclass(frozen=True)
class DateStatistics:
    """Fixed per-band statistics of the two dates (see :meth:`StandardisedCVABaseline.fit`).

    Attributes
    ----------
    before_mean, before_std, after_mean, after_std
        One value per band.
    """

    before_mean: tuple[float, ...]
    before_std: tuple[float, ...]
    after_mean: tuple[float, ...]
    after_std: tuple[float, ...]


class StandardisedCVABaseline(CVABaseline):
    """CVA on per-image standardised bands with an Otsu threshold (``cva-std``; a baseline).

    See the module docstring. The normalisation only names the bands (its statistics and scale
    cancel out in the standardisation).

    Parameters
    ----------
    normalisation
        Names the bands expected.
    fit
        Fitted threshold and scale; ``None`` fits on each :meth:`predict` call.
    name
        Model name.
    statistics
        Fixed per-date band statistics; ``None`` standardises each image with its own.
    """

    def __init__(
        self,
        normalisation: InputNormalisation,
        fit: CVAFit | None = None,
        name: str = "cva-std-otsu-baseline",
        statistics: DateStatistics | None = None,
    ) -> None:
        super().__init__(normalisation, fit, name)
        self.statistics = statistics

    def _check(self, before: torch.Tensor, after: torch.Tensor) -> None:
        if before.shape != after.shape:
            raise ModelError(
                "before and after must have the same shape, got "
                f"{tuple(before.shape)} and {tuple(after.shape)}"
            )
        if before.dim() != 4 or before.shape[1] != self.in_channels:
            raise ModelError(
                f"expected (B, {self.in_channels}, H, W) batches with bands {list(self.bands)}, got shape "
                f"{tuple(before.shape)}; select those bands in that order"
            )

    def magnitude(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """CVA magnitude ``(B, 1, H, W)`` of the standardised dates."""
        self._check(before, after)
        stats = self.statistics
        if stats is None:
            return cva_magnitude(standardise_per_image(before), standardise_per_image(after))

        def fixed(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
            m = torch.tensor(mean, dtype=torch.float64, device=x.device).view(1, -1, 1, 1)
            s = torch.tensor(std, dtype=torch.float64, device=x.device).view(1, -1, 1, 1)
            return _standardise(x, m, s)

        return cva_magnitude(
            fixed(before, stats.before_mean, stats.before_std),
            fixed(after, stats.after_mean, stats.after_std),
        )

    def fit(
        self,
        before: torch.Tensor,
        after: torch.Tensor,
        max_samples: int = 1_000_000,
        seed: int = 0,
    ) -> CVAFit:
        """Fix each date's band statistics from these batches (all images together), then the threshold.

        Use it before tiled prediction so that every tile is standardised with the scene's
        statistics (see the module docstring).
        """
        self._check(before, after)
        bm, bs = _finite_moments(before, (0, 2, 3))
        am, as_ = _finite_moments(after, (0, 2, 3))
        self.statistics = DateStatistics(
            tuple(float(v) for v in bm.flatten()),
            tuple(float(v) for v in bs.flatten()),
            tuple(float(v) for v in am.flatten()),
            tuple(float(v) for v in as_.flatten()),
        )
        self.fitted = self._fit_values(self.magnitude(before, after), max_samples, seed)
        return self.fitted
