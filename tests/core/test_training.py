"""Training: hand-checked loss values, the ignore index, the schedule, and exact resuming."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from seg2change_core.change_model import CACHChangeModel, InputNormalisation
from seg2change_core.checkpoints import load_change_model, read_checkpoint_info
from seg2change_core.datasets import IGNORE_INDEX, ChangeDetectionDataset, ChangePair
from seg2change_core.errors import CheckpointError, ModelError
from seg2change_core.losses import LossWeights, cach_loss, dice_loss, similarity_loss
from seg2change_core.training import (
    ModelConfig,
    TrainConfig,
    build_model,
    cosine_schedule,
    train,
)

LN2 = math.log(2.0)


def logits(p_changed: list[float], temperature: float = 1.0) -> torch.Tensor:
    """(1, 2, 1, N) logits whose softmax(./temperature) has these 'changed' probabilities."""
    p = torch.tensor(p_changed, dtype=torch.float64)
    pair = torch.stack([torch.log(1 - p), torch.log(p)]) * temperature
    return pair[None, :, None, :]


def test_similarity_loss_hand_values() -> None:
    target = torch.tensor([[[0, 0, 1, IGNORE_INDEX]]])
    a = logits([0.5, 0.5, 0.5, 0.5], temperature=3.0)
    same = similarity_loss(a, a.clone(), target)
    assert float(same) == pytest.approx(0.0, abs=1e-12)
    # pixel 0: [0.5, 0.5] vs [0.8, 0.2] -> cos = 0.5 / (sqrt(0.5) * sqrt(0.68))
    # pixel 1: [0.5, 0.5] vs [0.5, 0.5] -> cos = 1; pixels 2 (changed) and 3 (ignored) do not count.
    b = logits([0.2, 0.5, 0.99, 0.01], temperature=3.0)
    expected = (1 - 0.5 / (math.sqrt(0.5) * math.sqrt(0.68))) / 2
    assert float(similarity_loss(a, b, target)) == pytest.approx(expected, rel=1e-9)
    none_unchanged = torch.tensor([[[1, 1, IGNORE_INDEX, IGNORE_INDEX]]])
    assert float(similarity_loss(a, b, none_unchanged)) == 0.0


def test_cach_loss_reference_weights() -> None:
    target = torch.tensor([[[0, 1], [1, IGNORE_INDEX]]])
    zeros = torch.zeros(1, 2, 2, 2)
    parts = cach_loss([zeros] * 6, target)
    # Uniform logits: every CE is ln 2; the two single-date outputs agree, so L_sim = 0.
    assert float(parts.change) == pytest.approx(LN2)
    assert float(parts.aux) == pytest.approx(3 * LN2)
    assert float(parts.similarity) == pytest.approx(0.0, abs=1e-7)
    assert float(parts.total) == pytest.approx(0.8 * LN2 + 0.1 * 3 * LN2)

    change = torch.zeros(1, 2, 2, 2)
    change[0, 1] = torch.tensor([[0.0, 2.0], [2.0, 50.0]])  # the ignored pixel would cost a lot
    parts = cach_loss([change, zeros, zeros, zeros, zeros, zeros], target)
    ce_unchanged = math.log(2.0)  # logits (0, 0) at the unchanged pixel
    ce_changed = math.log(1 + math.exp(-2.0))
    assert float(parts.change) == pytest.approx((ce_unchanged + 2 * ce_changed) / 3)

    weighted = cach_loss(
        [change, zeros, zeros, zeros, zeros, zeros], target, LossWeights(changed_class_weight=3)
    )
    assert float(weighted.change) == pytest.approx((ce_unchanged + 3 * 2 * ce_changed) / (1 + 3 * 2))


def test_dice_loss_hand_values_and_no_constant_escape() -> None:
    target = torch.tensor([[[0, 1], [1, IGNORE_INDEX]]])
    # p(changed) = 0.5 everywhere: overlap 1.0 of 3 scored pixels, 2 of them changed.
    half = torch.zeros(1, 2, 2, 2)
    assert float(dice_loss(half, target)) == pytest.approx(1 - (2 * 1.0 + 1) / (1.5 + 2 + 1))
    # Predicting "nothing changed" costs nearly the whole dice term, however confident.
    nothing = torch.zeros(1, 2, 2, 2)
    nothing[:, 0] = 30.0
    assert float(dice_loss(nothing, target)) == pytest.approx(1 - 1 / 3, abs=1e-6)
    perfect = torch.zeros(1, 2, 2, 2)
    perfect[0, 1] = torch.tensor([[-30.0, 30.0], [30.0, -30.0]])
    assert float(dice_loss(perfect, target)) == pytest.approx(0.0, abs=1e-6)
    # In cach_loss the term is weighted and added; reference weights leave it out of the total.
    plain = cach_loss([nothing] + [half] * 5, target)
    with_dice = cach_loss([nothing] + [half] * 5, target, LossWeights(dice=0.5))
    assert float(with_dice.total - plain.total) == pytest.approx(0.5 * (1 - 1 / 3), abs=1e-6)


def test_all_ignored_batch_gives_zero_loss_and_gradient() -> None:
    outputs = [torch.randn(1, 2, 3, 3, requires_grad=True) for _ in range(6)]
    parts = cach_loss(outputs, torch.full((1, 3, 3), IGNORE_INDEX))
    assert float(parts.total.detach()) == 0.0
    parts.total.backward()
    assert all(o.grad is not None and not o.grad.any() for o in outputs)


def test_cosine_schedule() -> None:
    assert cosine_schedule(0, 100, 10, 0.01) == pytest.approx(0.01)
    assert cosine_schedule(5, 100, 10, 0.01) == pytest.approx(0.01 + 0.99 * 0.5)
    assert cosine_schedule(10, 100, 10, 0.01) == pytest.approx(1.0)
    assert cosine_schedule(55, 100, 10, 0.01) == pytest.approx(0.01 + 0.99 * 0.5)
    assert cosine_schedule(100, 100, 10, 0.0) == pytest.approx(0.0)


def test_dinov2_needs_weights_and_rgb() -> None:
    rgb = InputNormalisation.imagenet_rgb()
    with pytest.raises(ModelError, match="needs its pretrained weights"):
        build_model(ModelConfig(backbone="dinov2_vits14"), rgb)
    with pytest.raises(ModelError, match="unknown backbone"):
        build_model(ModelConfig(backbone="resnet50"), rgb)


TINY = ModelConfig(embed_dim=16, depth=4, num_heads=2, mlp_ratio=1.0, hidden_dim=8, tile_size=252)
NORM = InputNormalisation(("red", "green", "blue"), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 1 / 255)


def tiny_data() -> tuple[ChangeDetectionDataset, ChangeDetectionDataset]:
    rng = np.random.default_rng(0)
    before = rng.integers(0, 255, (3, 48, 48)).astype(np.uint8)
    after = before.copy()
    after[:, 10:30, 12:34] = 255 - after[:, 10:30, 12:34]
    label = np.zeros((48, 48), np.uint8)
    label[10:30, 12:34] = 255
    pair = ChangePair("p", "tiny", before, after, label)
    return ChangeDetectionDataset([pair], crop_size=40, augment=True), ChangeDetectionDataset([pair])


@pytest.mark.parametrize("ema_decay", [None, 0.9])
def test_resumed_training_equals_uninterrupted(tmp_path: Path, ema_decay: float | None) -> None:
    train_data, val_data = tiny_data()
    config = TrainConfig(epochs=2, batch_size=1, lr=1e-3, warmup_steps=1, seed=5, ema_decay=ema_decay)
    common = {"model_config": TINY, "config": config, "normalisation": NORM}

    full = train(train_data, val_data, tmp_path / "full.safetensors", **common)  # type: ignore[arg-type]
    assert full.epochs_completed == 2 and not full.stopped_early

    first = train(
        train_data,
        val_data,
        tmp_path / "part.safetensors",
        stop_after_epochs=1,
        **common,  # type: ignore[arg-type]
    )
    assert first.epochs_completed == 1 and first.stopped_early
    second = train(
        train_data,
        val_data,
        tmp_path / "part.safetensors",
        resume=first.state,
        **common,  # type: ignore[arg-type]
    )
    assert second.epochs_completed == 2 and [r["epoch"] for r in second.history] == [2]

    full_state = torch.load(full.state, weights_only=True)
    resumed_state = torch.load(second.state, weights_only=True)
    assert full_state["model"].keys() == resumed_state["model"].keys()
    for name, tensor in full_state["model"].items():
        assert torch.equal(tensor, resumed_state["model"][name]), name
    assert ("average" in full_state) == (ema_decay is not None)
    for name, tensor in full_state.get("average", {}).items():
        assert torch.equal(tensor, resumed_state["average"][name]), name
    for key in ("train_loss", "val_iou", "lr"):
        assert full.history[1][key] == second.history[0][key]

    log = [json.loads(line) for line in (tmp_path / "part.log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert {"epoch", "train_loss", "val_iou", "val_f1", "lr", "best"} <= set(log[0])

    model = load_change_model(full.checkpoint)
    assert isinstance(model, CACHChangeModel) and model.normalisation == NORM
    prob = model.predict(torch.zeros(1, 3, 48, 48), torch.full((1, 3, 48, 48), 255.0))
    assert prob.shape == (1, 1, 48, 48) and bool(((prob >= 0) & (prob <= 1)).all())
    info = read_checkpoint_info(full.checkpoint)
    assert info.training_data["epoch"] == full.best_epoch
    assert info.training_data["config"]["train"]["seed"] == 5


def test_weight_average_is_what_is_saved(tmp_path: Path) -> None:
    train_data, _ = tiny_data()
    config = TrainConfig(epochs=2, batch_size=1, lr=1e-2, seed=1, ema_decay=0.5)
    result = train(
        train_data, None, tmp_path / "m.safetensors", model_config=TINY, config=config, normalisation=NORM
    )
    state = torch.load(result.state, weights_only=True)
    saved = load_change_model(result.checkpoint).state_dict()
    averaged = {k.removeprefix("module."): v for k, v in state["average"].items() if k.startswith("module.")}
    moved = [k for k, v in state["model"].items() if not torch.equal(v, averaged[k])]
    assert moved  # the average differs from the last weights
    for name in moved:
        assert torch.equal(saved[name], averaged[name]), name
    with pytest.raises(ModelError, match="ema_decay"):
        TrainConfig(ema_decay=1.0)


def test_resume_with_other_settings_is_refused(tmp_path: Path) -> None:
    train_data, _ = tiny_data()
    config = TrainConfig(epochs=2, batch_size=1, seed=0)
    first = train(
        train_data,
        None,
        tmp_path / "m.safetensors",
        model_config=TINY,
        config=config,
        normalisation=NORM,
        stop_after_epochs=1,
    )
    assert first.checkpoint.is_file()  # without validation data the last epoch is kept
    with pytest.raises(CheckpointError, match="other settings"):
        train(
            train_data,
            None,
            tmp_path / "m.safetensors",
            model_config=TINY,
            config=TrainConfig(epochs=2, batch_size=1, seed=0, lr=1e-2),
            normalisation=NORM,
            resume=first.state,
        )


def _write_png(path: Path, data: np.ndarray) -> None:
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    array = data if data.ndim == 3 else data[None]
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {"driver": "PNG", "width": array.shape[2], "height": array.shape[1], "count": array.shape[0]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", dtype="uint8", **profile) as dst:
            dst.write(array)


def test_train_command_splits_trains_and_fails_cleanly(tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from flows.commands_train import train as train_command
    from seg2change_core.datasets import Split

    rng = np.random.default_rng(0)
    root = tmp_path / "tiles"
    for source in ("s1", "s2", "s3", "s4"):
        name = f"{source}_0000_0000"
        before = rng.integers(0, 255, (3, 40, 40)).astype(np.uint8)
        after = before.copy()
        after[:, 5:20, 5:20] = 255
        label = np.zeros((40, 40), np.uint8)
        label[5:20, 5:20] = 255
        _write_png(root / "A" / f"{name}.png", before)
        _write_png(root / "B" / f"{name}.png", after)
        _write_png(root / "label" / f"{name}.png", label)
    app = typer.Typer()
    app.command()(train_command)
    runner = CliRunner()
    out = tmp_path / "model.safetensors"
    args = [str(root), "--out", str(out), "--recipe", "rgb", "--batch-size", "1", "--crop-size", "32"]
    args += ["--embed-dim", "16", "--hidden-dim", "8", "--holdout-fraction", "0.25", "--threads", "1"]
    args += ["--val-fraction", "0.3", "--minutes", "0.02"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    # the epochs were fitted to the budget, and progress shows as plain lines off a terminal
    assert "epochs fit 0 min" in text and "epoch 1: loss" in text and "val IoU" in text
    split = Split.load(tmp_path / "model.split.json")
    assert len(split.test) == 1 and len(split.val) == 1 and len(split.train) == 2
    model = load_change_model(out)
    assert isinstance(model, CACHChangeModel) and model.bands == ("red", "green", "blue")
    assert model.normalisation.scale == pytest.approx(1 / 255)
    info = read_checkpoint_info(out)
    assert info.training_data["train_pairs"] == 2 and info.training_data["recipe"] == "rgb"
    assert info.backbone_family == "conv" and info.training_data["epoch_plan"]["epochs"] >= 1

    dino = runner.invoke(
        app, [str(root), "--out", str(tmp_path / "d.safetensors"), "--backbone", "dinov2_vits14"]
    )
    assert dino.exit_code == 2 and "pretrained weights" in " ".join(dino.output.split())


def test_frozen_dinov2_backbone_from_a_weights_file(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from seg2change_core.backbones import build_dinov2

    torch.manual_seed(0)
    weights = tmp_path / "dinov2_vits14.safetensors"
    save_file(
        {k: v.contiguous() for k, v in build_dinov2("dinov2_vits14").state_dict().items()}, str(weights)
    )
    train_data, val_data = tiny_data()
    model_config = ModelConfig(backbone="dinov2_vits14", backbone_weights=str(weights), hidden_dim=8)
    result = train(
        train_data,
        val_data,
        tmp_path / "head.safetensors",
        model_config=model_config,
        config=TrainConfig(epochs=1, batch_size=1, seed=0),
        normalisation=InputNormalisation.imagenet_rgb(),
    )
    info = read_checkpoint_info(result.checkpoint)
    assert info.backbone == "dinov2_vits14" and info.backbone_weights == "external"
    state = torch.load(result.state, weights_only=True)
    assert state["model"] and not any(k.startswith("backbone.") for k in state["model"])
    with pytest.raises(CheckpointError, match="without backbone weights"):
        load_change_model(result.checkpoint)
    model = load_change_model(result.checkpoint, backbone_weights=weights)
    assert isinstance(model, CACHChangeModel)
    original = build_dinov2("dinov2_vits14")
    original.load_state_dict(load_file(str(weights)))
    for name, tensor in original.state_dict().items():  # frozen: the backbone did not move
        assert torch.equal(model.backbone.state_dict()[name], tensor), name
