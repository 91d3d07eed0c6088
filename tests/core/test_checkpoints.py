"""Project checkpoints: metadata, strict round trips, and errors that name the first mismatch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import seg2change_core
from seg2change_core.backbones import CompactConfig, CompactViT, DinoV2Config, DinoVisionTransformer
from seg2change_core.baselines import CVABaseline, CVAFit
from seg2change_core.cach import CACHHead
from seg2change_core.change_model import CACHChangeModel, InputNormalisation
from seg2change_core.checkpoints import (
    load_change_model,
    read_checkpoint_info,
    save_change_model,
)
from seg2change_core.errors import CheckpointError

TINY = DinoV2Config("dinov2_test_tiny", embed_dim=32, depth=4, num_heads=2, default_layers=(0, 1, 2, 3))
FOUR_BANDS = InputNormalisation(
    ("blue", "green", "red", "nir"), (0.1, 0.1, 0.1, 0.3), (0.05, 0.05, 0.05, 0.1), 1e-4
)


@pytest.fixture(scope="module")
def dino_model() -> CACHChangeModel:
    torch.manual_seed(0)
    return CACHChangeModel(
        DinoVisionTransformer(TINY), CACHHead(32), InputNormalisation.imagenet_rgb()
    ).eval()


def images(channels: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.rand(1, channels, 252, 252, generator=generator) * 255,
        torch.rand(1, channels, 252, 252, generator=generator) * 255,
    )


def test_cach_round_trip_with_metadata(dino_model: CACHChangeModel, tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_change_model(dino_model, path, training_data={"dataset": "synthetic", "pairs": 12})
    info = read_checkpoint_info(path)
    assert info.architecture == "cach" and info.backbone == "dinov2_test_tiny"
    assert info.backbone_family == "dinov2" and info.layers == (0, 1, 2, 3)
    assert info.normalisation == dino_model.normalisation
    assert info.tile_size == 504 and info.training_data == {"dataset": "synthetic", "pairs": 12}
    assert info.software_version == seg2change_core.__version__
    loaded = load_change_model(path)
    assert isinstance(loaded, CACHChangeModel) and loaded.name == dino_model.name
    before, after = images(3, 0)
    assert torch.equal(loaded.predict(before, after), dino_model.predict(before, after))


def test_compact_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = CACHChangeModel(
        CompactViT(CompactConfig(in_chans=4, embed_dim=32, depth=4, num_heads=2)), CACHHead(32), FOUR_BANDS
    )
    save_change_model(model, tmp_path / "compact.safetensors")
    loaded = load_change_model(tmp_path / "compact.safetensors")
    before, after = images(4, 1)
    assert torch.equal(loaded.predict(before * 40, after * 40), model.predict(before * 40, after * 40))


def test_head_only_checkpoint_needs_backbone_weights(dino_model: CACHChangeModel, tmp_path: Path) -> None:
    path = tmp_path / "head_only.safetensors"
    save_change_model(dino_model, path, include_backbone=False)
    with safe_open(str(path), framework="pt") as handle:
        assert all(name.startswith("head.") for name in handle.keys())  # noqa: SIM118
    with pytest.raises(CheckpointError, match="backbone_weights="):
        load_change_model(path)
    torch.save(dino_model.backbone.state_dict(), tmp_path / "backbone.pth")
    loaded = load_change_model(path, backbone_weights=tmp_path / "backbone.pth")
    before, after = images(3, 2)
    assert torch.equal(loaded.predict(before, after), dino_model.predict(before, after))


def test_baseline_round_trip(tmp_path: Path) -> None:
    model = CVABaseline(FOUR_BANDS, fit=CVAFit(threshold=2.5, scale=0.25))
    save_change_model(model, tmp_path / "cva.safetensors")
    loaded = load_change_model(tmp_path / "cva.safetensors")
    assert isinstance(loaded, CVABaseline)
    assert loaded.fitted == model.fitted and loaded.normalisation == FOUR_BANDS


def test_tampered_tensor_is_named(dino_model: CACHChangeModel, tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_change_model(dino_model, path)
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(path))
    tensors["head.aggregator2.spatial_fusion.sa.attention.qk.weight"] = torch.zeros(160, 81)
    tensors["head.class_embedB.bias"] = torch.zeros(3)
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=metadata)
    with pytest.raises(
        CheckpointError, match=r"'head\.aggregator2\.spatial_fusion\.sa\.attention\.qk\.weight'"
    ):
        load_change_model(tmp_path / "bad.safetensors")
    tensors = load_file(str(path))
    tensors["head.extra"] = torch.zeros(1)
    save_file(tensors, str(tmp_path / "extra.safetensors"), metadata=metadata)
    with pytest.raises(CheckpointError, match="unexpected tensor 'head.extra'"):
        load_change_model(tmp_path / "extra.safetensors")


def test_incompatible_metadata_is_refused(dino_model: CACHChangeModel, tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_change_model(dino_model, path)
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
    tensors = load_file(str(path))
    for key, value, message in [
        ("architecture", "unet", "unknown architecture 'unet'"),
        ("format_version", "9", "format version '9'"),
        ("backbone_family", "swin", "unknown backbone family 'swin'"),
        ("head_config", '{"in_channels": 48, "hidden_dim": 64, "nclass": 2}', "in_channels=32"),
    ]:
        save_file(tensors, str(tmp_path / "odd.safetensors"), metadata={**metadata, key: value})
        with pytest.raises(CheckpointError, match=message):
            load_change_model(tmp_path / "odd.safetensors")
    save_file({"x": torch.zeros(1)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(CheckpointError, match="not a seg2change checkpoint"):
        load_change_model(tmp_path / "foreign.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        load_change_model(tmp_path / "absent.safetensors")
