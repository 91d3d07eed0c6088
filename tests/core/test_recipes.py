"""Named training recipes and the command line's changes to them."""

from __future__ import annotations

from dataclasses import replace

import pytest
import typer

from flows.commands_train import _recipe_with
from seg2change_core.errors import ModelError
from seg2change_core.recipes import RECIPES, get_recipe


def test_recipes_are_complete_and_named() -> None:
    assert {"rgb", "sentinel2", "dinov2"} <= set(RECIPES)
    for name, recipe in RECIPES.items():
        assert recipe.name == name and recipe.summary
    rgb = get_recipe("rgb")
    assert rgb.model.backbone == "conv" and rgb.train.loss.dice > 0 and rgb.augmentation is not None
    assert rgb.minutes is not None and rgb.minutes <= 40
    with pytest.raises(ModelError, match="choose one of"):
        get_recipe("rbg")


def test_command_line_options_replace_recipe_values_only_where_given() -> None:
    rgb = get_recipe("rgb")
    same = _recipe_with(rgb, {"lr": None, "dice": None, "augment": None})
    assert same == rgb
    changed = _recipe_with(
        rgb, {"lr": 1e-4, "dice": 0.0, "hidden_dim": 16, "crop_size": 504, "augment": False, "device": "cuda"}
    )
    assert changed.train.lr == 1e-4 and changed.train.loss.dice == 0.0 and changed.train.device == "cuda"
    assert changed.train.loss.changed_class_weight == rgb.train.loss.changed_class_weight
    assert changed.model.hidden_dim == 16 and changed.model.backbone == "conv"
    assert changed.crop_size == 504 and changed.augmentation is None


def test_colour_transfer_option_changes_the_recipes_augmentation_only() -> None:
    rgb = get_recipe("rgb")
    assert rgb.augmentation is not None and rgb.augmentation.colour_transfer == 0.0
    changed = _recipe_with(rgb, {"colour_transfer": 0.3})
    assert changed.augmentation == replace(rgb.augmentation, colour_transfer=0.3)
    assert _recipe_with(rgb, {"colour_transfer": 0.3, "augment": False}).augmentation is None
    with pytest.raises(typer.BadParameter, match="has none of"):
        _recipe_with(get_recipe("dinov2"), {"colour_transfer": 0.3})
