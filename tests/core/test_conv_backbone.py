"""The multi-scale CNN backbone: its token levels, checkpoints and the change model around it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from seg2change_core.backbones import ConvConfig, ConvPyramid, build_backbone
from seg2change_core.cach import CACHHead
from seg2change_core.change_model import CACHChangeModel, InputNormalisation
from seg2change_core.checkpoints import load_change_model, read_checkpoint_info, save_change_model
from seg2change_core.errors import ModelError
from seg2change_core.training import ModelConfig, build_model

SMALL = ConvConfig(in_chans=4, widths=(8, 16, 24, 32), blocks=(1, 1, 1, 1), stem_width=8, embed_dim=32)
FOUR_BANDS = InputNormalisation(
    ("blue", "green", "red", "nir"), (0.1, 0.1, 0.1, 0.3), (0.05, 0.05, 0.05, 0.1), 1e-4
)


def test_levels_are_tokens_on_the_14px_grid() -> None:
    torch.manual_seed(0)
    backbone = ConvPyramid(SMALL)
    x = torch.randn(2, 4, 252, 504)
    tokens = backbone.get_intermediate_layers(x)
    assert [t.shape for t in tokens] == [torch.Size([2, 18 * 36, 32])] * 4
    maps = backbone.stage_maps(x)
    # Stage i of the 16/14-resampled image has the head's level-i size: 4g, 2g, g, g/2.
    assert [tuple(m.shape[2:]) for m in maps] == [(72, 144), (36, 72), (18, 36), (9, 18)]
    only_deep = backbone.get_intermediate_layers(x, [3])
    assert torch.equal(only_deep[0], tokens[3])


def test_level0_tokens_keep_fine_detail() -> None:
    """Folding 4x4 stage-1 pixels into a token: a one-pixel change moves its own token most.

    (GroupNorm statistics spread a tiny part of it over every token.)
    """
    torch.manual_seed(0)
    backbone = ConvPyramid(SMALL).eval()
    x = torch.zeros(1, 4, 252, 252)
    with torch.no_grad():
        base = backbone.get_intermediate_layers(x, [0])[0]
        x[:, :, 100:101, 100:101] = 5.0
        moved = backbone.get_intermediate_layers(x, [0])[0]
    effect = (moved - base).abs().amax(dim=2)[0].reshape(18, 18)
    row, col = divmod(int(effect.argmax()), 18)
    assert abs(row - 100 // 14) <= 1 and abs(col - 100 // 14) <= 1
    far = torch.cat([effect[:4].flatten(), effect[12:].flatten()])
    assert float(far.max()) < 0.2 * float(effect.max())


def test_odd_grid_and_bad_config_are_refused() -> None:
    with pytest.raises(ModelError, match="even token grid"):
        ConvPyramid(SMALL).get_intermediate_layers(torch.zeros(1, 4, 14 * 3, 14 * 4))
    with pytest.raises(ModelError, match="divisible by groups"):
        ConvConfig(widths=(10, 16, 24, 32))
    with pytest.raises(ModelError, match="four stage widths"):
        ConvConfig(widths=(8, 16, 24))  # type: ignore[arg-type]


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = CACHChangeModel(ConvPyramid(SMALL), CACHHead(32, hidden_dim=16), FOUR_BANDS).eval()
    path = tmp_path / "conv.safetensors"
    save_change_model(model, path)
    info = read_checkpoint_info(path)
    assert info.backbone_family == "conv"
    assert build_backbone("conv", info.backbone_config or {}).config == SMALL
    loaded = load_change_model(path)
    generator = torch.Generator().manual_seed(4)
    before = torch.rand(1, 4, 200, 230, generator=generator) * 3000
    after = torch.rand(1, 4, 200, 230, generator=generator) * 3000
    expected = model.predict(before, after)
    assert expected.shape == (1, 1, 200, 230)
    assert torch.equal(loaded.predict(before, after), expected)


def test_build_model_takes_any_band_count() -> None:
    norm = InputNormalisation(tuple(f"b{i}" for i in range(13)), (0.1,) * 13, (0.05,) * 13, 1e-4)
    model = build_model(
        ModelConfig(backbone="conv", embed_dim=32, widths=(8, 16, 24, 32), hidden_dim=16), norm
    )
    assert model.backbone.in_chans == 13
    assert not ModelConfig(backbone="conv").frozen_backbone
    outputs = model(torch.rand(1, 13, 252, 252) * 1e4, torch.rand(1, 13, 252, 252) * 1e4)
    assert len(outputs) == 6 and outputs.change.shape == (1, 2, 252, 252)
