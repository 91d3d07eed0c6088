"""CACH change model: one normalisation, any tile size, probabilities and the argmax decision."""

from __future__ import annotations

import pytest
import torch

from seg2change_core.backbones import CompactConfig, CompactViT, DinoV2Config, DinoVisionTransformer
from seg2change_core.cach import CACHHead
from seg2change_core.change_model import (
    CACHChangeModel,
    ChangeModel,
    InputNormalisation,
    decide,
    pad_to_tile,
)
from seg2change_core.errors import ModelError

TINY = DinoV2Config("dinov2_test_tiny", embed_dim=32, depth=4, num_heads=2, default_layers=(0, 1, 2, 3))


@pytest.fixture(scope="module")
def model() -> CACHChangeModel:
    torch.manual_seed(0)
    return CACHChangeModel(
        DinoVisionTransformer(TINY), CACHHead(32), InputNormalisation.imagenet_rgb(), tile_size=504
    ).eval()


def pair(batch: int, height: int, width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    before = torch.rand(batch, 3, height, width, generator=generator) * 255
    after = before.clone()
    after[:, :, height // 4 : height // 2, width // 4 : width // 2] = (
        255 - after[:, :, height // 4 : height // 2, width // 4 : width // 2]
    )
    return before, after


def test_satisfies_protocol(model: CACHChangeModel) -> None:
    assert isinstance(model, ChangeModel)
    assert model.bands == ("red", "green", "blue") and model.in_channels == 3
    assert model.name == "cach-dinov2_test_tiny"
    assert model.layers == (0, 1, 2, 3)


# 1022 px tiles run through the head in test_cach_golden.py; here 518 exercises the image padding.
@pytest.mark.parametrize("tile", [504, 518])
def test_tiles_give_probabilities(model: CACHChangeModel, tile: int) -> None:
    before, after = pair(1, tile, tile, seed=tile)
    probability = model.predict(before, after)
    assert probability.shape == (1, 1, tile, tile)
    assert bool(((probability >= 0) & (probability <= 1)).all())


def test_decision_is_argmax_of_logits(model: CACHChangeModel) -> None:
    before, after = pair(1, 252, 252, seed=1)
    with torch.no_grad():
        logits = model.change_logits(before, after)
    probability = model.predict(before, after)
    assert torch.allclose(probability, torch.softmax(logits, 1)[:, 1:2])
    assert torch.equal(decide(probability)[:, 0], logits.argmax(1) == 1)


def test_batched_equals_single(model: CACHChangeModel) -> None:
    before, after = pair(2, 266, 238, seed=2)  # padded to 504 x 252 inside
    batched = model.predict(before, after)
    singles = torch.cat([model.predict(before[i : i + 1], after[i : i + 1]) for i in range(2)])
    assert (batched - singles).abs().max().item() <= 1e-4


def test_forward_gives_six_cropped_outputs(model: CACHChangeModel) -> None:
    before, after = pair(1, 266, 280, seed=3)
    with torch.no_grad():
        outputs = model(before, after)
    assert len(outputs) == 6
    assert all(out.shape == (1, 2, 266, 280) for out in outputs)
    assert torch.equal(outputs.change, model.change_logits(before, after))


def test_nodata_values_do_not_poison_the_tile(model: CACHChangeModel) -> None:
    before, after = pair(1, 252, 252, seed=4)
    before[:, :, :10, :10] = float("nan")
    assert bool(torch.isfinite(model.predict(before, after)).all())


def test_pad_to_tile() -> None:
    x = torch.arange(2 * 3 * 20 * 300, dtype=torch.float32).reshape(2, 3, 20, 300)
    padded = pad_to_tile(x)
    assert padded.shape == (2, 3, 252, 504)
    assert torch.equal(padded[:, :, :20, :300], x)
    assert pad_to_tile(torch.zeros(1, 1, 504, 252)).shape == (1, 1, 504, 252)


def test_normalisation() -> None:
    norm = InputNormalisation(("b", "g", "r", "nir"), (0.1, 0.1, 0.1, 0.3), (0.05, 0.05, 0.05, 0.1), 1e-4)
    assert InputNormalisation.from_json(norm.to_json()) == norm
    x = torch.full((1, 4, 2, 2), 1000.0)
    assert torch.allclose(norm.apply(x)[0, :, 0, 0], torch.tensor([0.0, 0.0, 0.0, -2.0]), atol=1e-6)
    with pytest.raises(ModelError, match="bands"):
        norm.apply(torch.zeros(1, 3, 2, 2))
    with pytest.raises(ModelError, match="one mean and one std per band"):
        InputNormalisation(("r",), (0.1, 0.2), (1.0,))


def test_inconsistent_parts_raise() -> None:
    backbone = CompactViT(CompactConfig(in_chans=4, embed_dim=32, depth=4, num_heads=2))
    rgb = InputNormalisation.imagenet_rgb()
    with pytest.raises(ModelError, match="in_channels=32"):
        CACHChangeModel(backbone, CACHHead(64), rgb)
    with pytest.raises(ModelError, match="4 channels"):
        CACHChangeModel(backbone, CACHHead(32), rgb)
    four = InputNormalisation(("b", "g", "r", "nir"), (0.0,) * 4, (1.0,) * 4)
    with pytest.raises(ModelError, match="exactly 4 backbone layers"):
        CACHChangeModel(backbone, CACHHead(32), four, layers=(1, 2, 3))
    model = CACHChangeModel(backbone, CACHHead(32), four)
    with pytest.raises(ModelError, match="same shape"):
        model.predict(torch.zeros(1, 4, 28, 28), torch.zeros(1, 4, 28, 42))


def test_per_image_normalisation_ignores_each_dates_brightness_and_colour() -> None:
    norm = InputNormalisation(("red", "green", "blue"), (0.0,) * 3, (1.0,) * 3, 1 / 255, per_image=True)
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 20, 30, generator=generator) * 200
    relit = image * torch.tensor([0.6, 0.8, 1.1]).view(1, 3, 1, 1) + 25  # another season's light
    out = norm.apply(image)
    assert torch.allclose(norm.apply(relit), out, atol=1e-4)
    assert torch.allclose(out.mean(dim=(2, 3)), torch.zeros(2, 3), atol=1e-5)
    assert torch.allclose(out.std(dim=(2, 3), unbiased=False), torch.ones(2, 3), atol=1e-4)
    with_nodata = image.clone()
    with_nodata[:, :, :5] = float("nan")
    filled = norm.apply(with_nodata)
    assert torch.isfinite(filled).all() and (filled[:, :, :5] == 0).all()
    assert torch.allclose(filled[:, :, 5:].mean(dim=(2, 3)), torch.zeros(2, 3), atol=1e-5)
    # stored in checkpoints; normalisations written before the option read back without it
    assert InputNormalisation.from_json(norm.to_json()) == norm
    plain = InputNormalisation(("red",), (0.5,), (0.2,), 1 / 255)
    assert "per_image" not in plain.to_json() and not InputNormalisation.from_json(plain.to_json()).per_image
