"""CACH head: faithful to the reference (golden vectors, official layout) and beyond it (any tile)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from seg2change_core.cach import CACHHead, CACHOutput, padded_grid
from seg2change_core.checkpoints import load_official_head
from seg2change_core.errors import CheckpointError, ModelError

FIXTURES = Path(__file__).parents[2].parent / "shared" / "fixtures" / "cach"
OUTPUT_NAMES = ("out.change", "out.aux1_path1", "out.aux2_path2", "out.aux3_path3", "out.A", "out.B")
DEBUG_NAMES = (
    "lvl3.feat_A_after_adapter_resize",
    "lvl3.feat_B_after_adapter_resize",
    "lvl3.mdfm_diff",
    "lvl3.aggregator_out",
    "path3_change",
    "aux3_logits_before_resize",
)


def fixture(name: str) -> Path:
    path = FIXTURES / name
    if not path.is_file():
        pytest.skip(
            f"golden fixture {path} is absent (it lives in ../shared/fixtures/cach beside the checkout)"
        )
    return path


def layout(name: str) -> list[list[object]]:
    entries: list[list[object]] = json.loads(fixture(name).read_text())["entries"]
    return entries


def random_state_dict(entries: list[list[object]], generator: torch.Generator) -> dict[str, torch.Tensor]:
    state = {}
    for name, shape, dtype in entries:
        assert isinstance(name, str) and isinstance(shape, list)
        if dtype == "int64":
            state[name] = torch.randint(0, 289, shape, generator=generator)
        else:
            state[name] = torch.randn(shape, generator=generator)
    return state


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> float:
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    delta = (actual - expected).abs()
    bound = 1e-4 + 1e-4 * expected.abs()
    assert bool((delta <= bound).all()), f"{what}: max |delta| {delta.max().item():.3g} exceeds the bound"
    return float(delta.max())


@pytest.fixture(scope="module")
def golden() -> tuple[CACHHead, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    head = CACHHead(in_channels=384, hidden_dim=64, nclass=2)
    head.load_state_dict(load_file(str(fixture("golden_vits14_seed0.safetensors"))), strict=True)
    return head.eval(), load_file(str(fixture("golden_vits14_seed0_io.safetensors")))


def golden_inputs(io: dict[str, torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    feats_a = [io[f"in.feats_A.{i}"].to(torch.float32) for i in range(4)]
    feats_b = [io[f"in.feats_B.{i}"].to(torch.float32) for i in range(4)]
    return feats_a, feats_b


@pytest.mark.parametrize(("keys_file", "width"), [("keys_vits14.json", 384), ("keys_vitb14.json", 768)])
def test_state_dict_layout_equals_official(keys_file: str, width: int) -> None:
    data = json.loads(fixture(keys_file).read_text())
    head = CACHHead(in_channels=width)
    state = head.state_dict()
    actual = [[name, list(t.shape), str(t.dtype).removeprefix("torch.")] for name, t in state.items()]
    assert actual == data["entries"]
    buffers = [name for name, _ in head.named_buffers()]
    assert buffers == data["buffers"]
    assert sum(p.numel() for p in head.parameters()) == data["num_parameter_elements"]


def test_golden_outputs_and_intermediates(golden: tuple[CACHHead, dict[str, torch.Tensor]]) -> None:
    head, io = golden
    feats_a, feats_b = golden_inputs(io)
    with torch.no_grad():
        outputs, debug = head.forward_debug(feats_a, feats_b)
    assert isinstance(outputs, tuple) and len(outputs) == 6
    worst = max(assert_close(out, io[name], name) for out, name in zip(outputs, OUTPUT_NAMES, strict=True))
    for name in DEBUG_NAMES:
        worst = max(worst, assert_close(debug[name], io[f"debug.{name}"], name))
    assert worst < 1e-4
    with torch.no_grad():
        change_only = head.change_logits(feats_a, feats_b)
    assert torch.equal(change_only, outputs.change)
    assert torch.equal(outputs.change.argmax(1), io["out.change"].argmax(1))


@pytest.mark.parametrize(("keys_file", "width"), [("keys_vits14.json", 384), ("keys_vitb14.json", 768)])
def test_official_head_checkpoint_loads_strictly(keys_file: str, width: int, tmp_path: Path) -> None:
    state = random_state_dict(layout(keys_file), torch.Generator().manual_seed(3))
    path = tmp_path / "head.pth"
    torch.save(state, path)
    head = load_official_head(path)
    assert head.config.in_channels == width
    for name, tensor in head.state_dict().items():
        assert torch.equal(tensor, state[name]), name


def test_wrong_shape_head_checkpoint_names_first_mismatch(tmp_path: Path) -> None:
    state = random_state_dict(layout("keys_vits14.json"), torch.Generator().manual_seed(4))
    state["diff_fdr1.conv_cat.0.weight"] = torch.zeros(64, 64, 3, 3)
    state["layer2_rn.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(
        CheckpointError, match=r"diff_fdr1\.conv_cat\.0\.weight.*\[64, 64, 3, 3\].*\[64, 128, 3, 3\]"
    ):
        load_official_head(tmp_path / "bad.pth")
    del state["diff_fdr1.conv_cat.0.weight"]
    torch.save(state, tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match=r"missing tensor 'diff_fdr1\.conv_cat\.0\.weight'"):
        load_official_head(tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="not found"):
        load_official_head(tmp_path / "absent.pth")


def random_tokens(batch: int, grid: tuple[int, int], width: int, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, grid[0] * grid[1], width, generator=generator) for _ in range(4)]


@pytest.fixture(scope="module")
def small_head() -> CACHHead:
    torch.manual_seed(0)
    return CACHHead(in_channels=32).eval()


@pytest.mark.parametrize("tile", [504, 518, 1022])
def test_tile_sizes_run(small_head: CACHHead, tile: int) -> None:
    grid = tile // 14
    with torch.no_grad():
        outputs = small_head(random_tokens(1, (grid, grid), 32, 1), random_tokens(1, (grid, grid), 32, 2))
    assert isinstance(outputs, CACHOutput)
    for out in outputs:
        assert out.shape == (1, 2, tile, tile)
        assert bool(torch.isfinite(out).all())


def test_padded_grid_rule() -> None:
    assert [padded_grid(g) for g in (18, 36, 37, 54, 73)] == [18, 36, 54, 54, 90]


def test_batched_equals_single_with_padding(small_head: CACHHead) -> None:
    grid = (19, 23)  # neither a multiple of 18: both axes padded
    feats_a, feats_b = random_tokens(2, grid, 32, 5), random_tokens(2, grid, 32, 6)
    with torch.no_grad():
        batched = small_head(feats_a, feats_b, grid=grid)
        singles = [
            small_head([f[i : i + 1] for f in feats_a], [f[i : i + 1] for f in feats_b], grid=grid)
            for i in range(2)
        ]
    assert batched.change.shape == (2, 2, 19 * 14, 23 * 14)
    for k in range(6):
        stacked = torch.cat([single[k] for single in singles], dim=0)
        assert (batched[k] - stacked).abs().max().item() <= 1e-4


def test_bad_token_inputs_raise(small_head: CACHHead) -> None:
    feats = random_tokens(1, (18, 18), 32, 7)
    with pytest.raises(ModelError, match="square"):
        small_head([f[:, :-1] for f in feats], [f[:, :-1] for f in feats])
    with pytest.raises(ModelError, match="grid 17x18"):
        small_head(feats, feats, grid=(17, 18))
    with pytest.raises(ModelError, match="4 token tensors"):
        small_head(feats[:3], feats[:3])
    with pytest.raises(ModelError, match="in_channels=64"):
        small_head([torch.zeros(1, 324, 64)] * 4, [torch.zeros(1, 324, 64)] * 4)
