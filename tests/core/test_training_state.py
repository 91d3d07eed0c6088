"""The training state file: what a resume refuses, and that a restore continues the same generators."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from seg2change_core.change_model import InputNormalisation
from seg2change_core.errors import CheckpointError
from seg2change_core.training import ModelConfig, TrainConfig, build_model
from seg2change_core.training_state import BestEpoch, Optimisation

TINY = ModelConfig(embed_dim=16, depth=4, num_heads=2, mlp_ratio=1.0, hidden_dim=8, tile_size=252)
NORM = InputNormalisation(("red", "green", "blue"), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 1 / 255)
CONFIG = TrainConfig(epochs=2, batch_size=1, seed=0)
TEXT = json.dumps({"any": "settings"}, sort_keys=True)


def _optimisation(model_config: ModelConfig = TINY) -> Optimisation:
    torch.manual_seed(0)
    model = build_model(model_config, NORM)
    return Optimisation.create(model, CONFIG, total_steps=4, frozen_backbone=model_config.frozen_backbone)


def _saved(tmp_path: Path) -> Path:
    path = tmp_path / "m.state.pt"
    _optimisation().save_state(path, config_text=TEXT, normalisation=NORM, epoch=1, best=BestEpoch(0.25, 1))
    return path


def test_restore_gives_back_epoch_best_and_the_generators(tmp_path: Path) -> None:
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    path = _saved(tmp_path)
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    assert not (tmp_path / "m.state.pt.partial").exists()
    epoch, best = _optimisation().restore(path, config_text=TEXT, normalisation=NORM)
    assert (epoch, best) == (1, BestEpoch(0.25, 1))
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


def test_restore_refuses_other_settings_normalisation_or_model(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    with pytest.raises(CheckpointError, match="other settings"):
        _optimisation().restore(path, config_text="{}", normalisation=NORM)
    other = InputNormalisation(NORM.bands, NORM.mean, (0.5, 0.5, 0.5), NORM.scale)
    with pytest.raises(CheckpointError, match="another normalisation"):
        _optimisation().restore(path, config_text=TEXT, normalisation=other)
    for model_config in (replace(TINY, depth=5), replace(TINY, hidden_dim=16)):  # more tensors; other shapes
        with pytest.raises(CheckpointError, match="model tensors do not match"):
            _optimisation(model_config).restore(path, config_text=TEXT, normalisation=NORM)


def test_restore_refuses_a_missing_or_foreign_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        _optimisation().restore(tmp_path / "none.state.pt", config_text=TEXT, normalisation=NORM)
    foreign = tmp_path / "foreign.state.pt"
    torch.save({"format": "something-else"}, foreign)
    with pytest.raises(CheckpointError, match="not a seg2change training state"):
        _optimisation().restore(foreign, config_text=TEXT, normalisation=NORM)
    garbage = tmp_path / "garbage.state.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="cannot read training state"):
        _optimisation().restore(garbage, config_text=TEXT, normalisation=NORM)
