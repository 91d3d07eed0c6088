"""DINOv2 backbone: official layout, strict loading, position interpolation, intermediate layers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from seg2change_core.backbones import (
    Backbone,
    CompactConfig,
    CompactViT,
    DinoV2Config,
    DinoVisionTransformer,
    build_backbone,
    build_dinov2,
)
from seg2change_core.backbones.dinov2 import Block, LayerScale, Mlp
from seg2change_core.checkpoints import load_dinov2
from seg2change_core.errors import CheckpointError, ModelError

FIXTURES = Path(__file__).parents[2].parent / "shared" / "fixtures" / "cach"
TINY = DinoV2Config("dinov2_test_tiny", embed_dim=32, depth=4, num_heads=2, default_layers=(0, 1, 2, 3))


def layout(name: str) -> dict[str, object]:
    path = FIXTURES / name
    if not path.is_file():
        pytest.skip(
            f"layout fixture {path} is absent (it lives in ../shared/fixtures/cach beside the checkout)"
        )
    data: dict[str, object] = json.loads(path.read_text())
    return data


def random_official(entries: list[list[object]], seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape, _ in entries:
        assert isinstance(name, str) and isinstance(shape, list)
        state[name] = torch.randn(shape, generator=generator)
    return state


@pytest.mark.parametrize("variant", ["vits14", "vitb14"])
def test_state_dict_layout_equals_official(variant: str) -> None:
    data = layout(f"dinov2_keys_{variant}.json")
    model = build_dinov2(variant)
    actual = [[n, list(t.shape), str(t.dtype).removeprefix("torch.")] for n, t in model.state_dict().items()]
    assert actual == data["entries"]
    assert sum(p.numel() for p in model.parameters()) == data["num_parameter_elements"]


@pytest.mark.parametrize("variant", ["vits14", "vitb14"])
def test_official_checkpoint_loads_strictly(variant: str, tmp_path: Path) -> None:
    entries = layout(f"dinov2_keys_{variant}.json")["entries"]
    assert isinstance(entries, list)
    state = random_official(entries, seed=1)
    path = tmp_path / f"dinov2_{variant}14_pretrain.pth"
    torch.save(state, path)
    model = load_dinov2(path)  # the variant is inferred from the width
    assert model.name == f"dinov2_{variant}"
    assert torch.equal(model.state_dict()["blocks.11.mlp.fc2.weight"], state["blocks.11.mlp.fc2.weight"])
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


def test_wrong_checkpoint_names_first_mismatch(tmp_path: Path) -> None:
    entries = layout("dinov2_keys_vits14.json")["entries"]
    assert isinstance(entries, list)
    state = random_official(entries, seed=2)
    state["blocks.3.attn.proj.weight"] = torch.zeros(384, 383)
    state["norm.weight"] = torch.zeros(3)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"'blocks\.3\.attn\.proj\.weight' has shape \[384, 383\]"):
        load_dinov2(tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="not found"):
        load_dinov2(tmp_path / "absent.pth", "vits14")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_dinov2(tmp_path / "junk.pth", "vits14")


@pytest.mark.parametrize(
    ("variant", "params", "layers"),
    [("vitl14", 304_368_640, (4, 11, 17, 23)), ("vitg14", 1_136_480_768, (9, 19, 29, 39))],
)
def test_large_variants_layout(variant: str, params: int, layers: tuple[int, ...]) -> None:
    with torch.device("meta"):
        model = build_dinov2(variant)
    state = model.state_dict()
    assert sum(p.numel() for p in model.parameters()) == params
    assert model.default_layers == layers
    if variant == "vitg14":
        assert state["blocks.0.mlp.w12.weight"].shape == (8192, 1536)
        assert state["blocks.39.mlp.w3.weight"].shape == (1536, 4096)
        assert state["pos_embed"].shape == (1, 1370, 1536)
        assert "blocks.0.mlp.fc1.weight" not in state


def test_block_matches_explicit_attention() -> None:
    torch.manual_seed(0)
    model = DinoVisionTransformer(TINY)
    block = model.blocks[0]
    assert isinstance(block, Block) and isinstance(block.mlp, Mlp)
    assert isinstance(block.ls1, LayerScale) and isinstance(block.ls2, LayerScale)
    x = torch.randn(2, 10, 32)
    qkv = block.attn.qkv(block.norm1(x)).reshape(2, 10, 3, 2, 16).permute(2, 0, 3, 1, 4)
    scores = (qkv[0] * 16**-0.5) @ qkv[1].transpose(-2, -1)
    attended = (scores.softmax(-1) @ qkv[2]).transpose(1, 2).reshape(2, 10, 32)
    y = x + block.ls1.gamma * block.attn.proj(attended)
    hidden = F.gelu(block.mlp.fc1(block.norm2(y)))
    expected = y + block.ls2.gamma * block.mlp.fc2(hidden)
    assert torch.allclose(block(x), expected, atol=1e-5)


def test_position_interpolation() -> None:
    torch.manual_seed(0)
    model = DinoVisionTransformer(TINY)
    assert model.interpolate_pos_encoding((37, 37)) is model.pos_embed
    pos = model.interpolate_pos_encoding((36, 40))
    assert pos.shape == (1, 1 + 36 * 40, 32)
    assert torch.equal(pos[:, 0], model.pos_embed[:, 0])
    grid = model.pos_embed[:, 1:].reshape(1, 37, 37, 32).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, scale_factor=(36.1 / 37, 40.1 / 37), mode="bicubic", align_corners=False)
    assert torch.equal(pos[:, 1:], expected.permute(0, 2, 3, 1).reshape(1, -1, 32))


@pytest.mark.parametrize("size", [(504, 504), (518, 518), (252, 350)])
def test_intermediate_layers(size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = DinoVisionTransformer(TINY)
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        tokens = model.get_intermediate_layers(x)
        last_two = model.get_intermediate_layers(x, [3, 1])
        manual = model.prepare_tokens(x)
        for block in model.blocks[:2]:
            manual = block(manual)
    n = (size[0] // 14) * (size[1] // 14)
    assert [t.shape for t in tokens] == [(2, n, 32)] * 4
    assert torch.equal(last_two[0], tokens[3]) and torch.equal(last_two[1], tokens[1])
    assert torch.allclose(tokens[1], model.norm(manual)[:, 1:], atol=1e-6)


def test_bad_inputs_raise() -> None:
    model = DinoVisionTransformer(TINY)
    with pytest.raises(ModelError, match="multiple of the patch size"):
        model.get_intermediate_layers(torch.zeros(1, 3, 500, 504))
    with pytest.raises(ModelError, match="3 bands"):
        model.get_intermediate_layers(torch.zeros(1, 4, 504, 504))
    with pytest.raises(ModelError, match="block indices"):
        model.get_intermediate_layers(torch.zeros(1, 3, 28, 28), [4])
    with pytest.raises(ModelError, match="unknown DINOv2 variant"):
        build_dinov2("vith14")


def test_compact_backbone_trains_and_rebuilds() -> None:
    torch.manual_seed(0)
    model = CompactViT(CompactConfig(in_chans=4, embed_dim=32, depth=4, num_heads=2))
    assert isinstance(model, Backbone)
    x = torch.randn(2, 4, 56, 70)
    tokens = model.get_intermediate_layers(x)
    assert [t.shape for t in tokens] == [(2, 20, 32)] * 4
    torch.stack([t.square().mean() for t in tokens]).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    rebuilt = build_backbone("compact", model.config_dict())
    assert isinstance(rebuilt, CompactViT) and rebuilt.config == model.config
