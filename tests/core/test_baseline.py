"""Classical CVA + Otsu baseline: finds a planted change, calibrated at the threshold, tile-independent."""

from __future__ import annotations

import pytest
import torch

from seg2change_core.baselines import CVABaseline, CVAFit, cva_magnitude, otsu_threshold
from seg2change_core.change_model import ChangeModel, InputNormalisation, decide
from seg2change_core.errors import ModelError

NORM = InputNormalisation(
    ("blue", "green", "red", "nir"), (0.1, 0.1, 0.1, 0.3), (0.05, 0.05, 0.05, 0.1), 1e-4
)


def planted_pair(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    before = 1000 + 300 * torch.rand(1, 4, 128, 160, generator=generator)
    after = before + 40 * torch.randn(1, 4, 128, 160, generator=generator)
    changed = torch.zeros(1, 1, 128, 160, dtype=torch.bool)
    changed[:, :, 30:70, 50:120] = True
    after[:, 3:4][changed] += 2500  # vegetation appears: strong NIR rise
    after[:, 2:3][changed] -= 400
    return before, after, changed


def test_finds_planted_change() -> None:
    before, after, changed = planted_pair()
    model = CVABaseline(NORM)
    assert isinstance(model, ChangeModel)
    fit = model.fit(before, after)
    decision = decide(model.predict(before, after))
    iou = (decision & changed).sum() / (decision | changed).sum()
    assert float(iou) > 0.98
    assert fit.scale > 0


def test_probability_is_one_half_at_the_threshold() -> None:
    before, after, _ = planted_pair()
    model = CVABaseline(NORM, fit=CVAFit(threshold=3.0, scale=0.5))
    magnitude = model.magnitude(before, after)
    probability = model.predict(before, after)
    assert torch.allclose(probability, torch.sigmoid((magnitude - 3.0) / 0.5))
    at = CVABaseline(InputNormalisation(("x",), (0.0,), (1.0,)), fit=CVAFit(2.0, 0.1))
    half = at.predict(torch.zeros(1, 1, 1, 1), torch.full((1, 1, 1, 1), 2.0))
    assert half.item() == 0.5


def test_fitted_results_do_not_depend_on_tiling() -> None:
    before, after, _ = planted_pair(1)
    model = CVABaseline(NORM)
    model.fit(before, after)
    whole = model.predict(before, after)
    left = model.predict(before[..., :70], after[..., :70])
    right = model.predict(before[..., 70:], after[..., 70:])
    assert torch.equal(torch.cat([left, right], dim=-1), whole)


def test_unfitted_model_fits_per_call() -> None:
    before, after, _ = planted_pair(2)
    model = CVABaseline(NORM)
    probability = model.predict(before, after)
    assert model.fitted is None
    reference = CVABaseline(NORM)
    reference.fit(before, after)
    assert torch.equal(probability, reference.predict(before, after))


def test_otsu_splits_two_modes() -> None:
    values = torch.cat([torch.full((100,), 1.0), torch.full((50,), 5.0), torch.tensor([1.2, 4.8])])
    fit = otsu_threshold(values)
    assert 1.2 < fit.threshold < 4.8
    assert fit.threshold == pytest.approx(3.0)
    with pytest.raises(ModelError, match="two distinct values"):
        otsu_threshold(torch.zeros(10))


def test_nonfinite_differences_count_as_zero() -> None:
    before = torch.zeros(1, 2, 1, 2)
    after = torch.tensor([[[[3.0, float("nan")]], [[4.0, 1.0]]]])
    assert torch.equal(cva_magnitude(before, after), torch.tensor([[[[5.0, 1.0]]]]))
