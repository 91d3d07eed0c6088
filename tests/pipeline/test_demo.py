"""The demo's accuracy report against its generated truth: per target, per kind of change, end to end."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from pipeline.demo import (
    DEMO_PROMPTS,
    ChangeKindRecall,
    demo_checkpoint,
    generated_classes,
    run_demo,
    score_targets,
)
from pipeline.synthetic import ChangeType, LandCover

B, W, C, G = LandCover.BUILDING, LandCover.WATER, LandCover.CROPLAND, LandCover.GRASS


def test_generated_classes_match_prompt_synonyms() -> None:
    assert generated_classes("building") == (LandCover.BUILDING,)
    assert generated_classes("Roof") == (LandCover.BUILDING,)
    assert generated_classes("burned area") == (LandCover.BURNED,)
    assert generated_classes("water") == (LandCover.WATER,)
    with pytest.raises(ValueError, match="names no class of the generated scene"):
        generated_classes("glacier")


def test_score_targets_counts_change_into_or_out_of_each_target() -> None:
    # One row of 8 pixels; truth class before, after, change type.
    before = np.array([[C, C, C, C, W, W, G, C]], dtype=np.uint8)
    after = np.array([[B, B, B, B, G, W, W, C]], dtype=np.uint8)
    change = np.array([[1, 1, 1, 1, 4, 0, 3, 0]], dtype=np.uint8)
    # building truth: pixels 0-3; water truth: pixels 4 (drained) and 6 (flooded).
    flagged = np.array(
        [
            [[1, 1, 1, 0, 0, 0, 0, 1]],  # building: 3 of 4 found, one false alarm (pixel 7)
            [[0, 0, 0, 0, 255, 1, 1, 0]],  # water: pixel 4 has no data, pixel 5 is a false alarm
        ],
        dtype=np.uint8,
    )
    (building, building_unscored), (water, water_unscored) = score_targets(
        flagged, before, after, change, [(B,), (W,)]
    )
    s = building.scores()
    assert (building.tp, building.fp, building.fn, building.tn) == (3, 1, 1, 3)
    assert s.recall == pytest.approx(0.75) and s.precision == pytest.approx(0.75)
    assert s.iou == pytest.approx(3 / 5) and building_unscored == 0
    # The no-data pixel is left out of the scores and counted apart.
    assert (water.tp, water.fp, water.fn, water.tn) == (1, 1, 0, 5) and water_unscored == 1
    assert water.scores().recall == 1.0 and water.scores().precision == pytest.approx(0.5)


def test_score_targets_skips_truth_nodata_and_checks_shapes() -> None:
    before = np.array([[0, C]], dtype=np.uint8)
    after = np.array([[0, B]], dtype=np.uint8)
    change = np.array([[255, 1]], dtype=np.uint8)
    ((confusion, unscored),) = score_targets(np.array([[[1, 0]]], np.uint8), before, after, change, [(B,)])
    assert (confusion.tp, confusion.fp, confusion.fn, confusion.tn, unscored) == (0, 0, 1, 0, 0)
    with pytest.raises(ValueError, match="does not hold 2 targets"):
        score_targets(np.zeros((1, 1, 2), np.uint8), before, after, change, [(B,), (W,)])


def test_change_kind_recall_is_nan_without_truth() -> None:
    assert math.isnan(ChangeKindRecall(ChangeType.BURN, 0, 0, 0).recall)
    assert ChangeKindRecall(ChangeType.BURN, 4, 3, 1).recall == 0.75


def test_demo_finds_every_generated_target(tmp_path: Path) -> None:
    """The demo on a small generated scene: every target's change is found (recall >= 0.8)."""
    if demo_checkpoint() is None:
        pytest.skip("the demo CACH checkpoint is absent (seg2change make-demo-checkpoint writes it)")
    result = run_demo(tmp_path / "demo", size=512, progress=False)
    by_target = {t.target: t for t in result.targets}
    assert set(by_target) == set(DEMO_PROMPTS["targets"])
    for name, target in by_target.items():
        # The scene holds every kind of change (its origin cell has one event of each).
        assert target.truth_pixels > 300, name
        assert target.scores.recall >= 0.8, f"{name}: recall {target.scores.recall:.3f}"
        assert target.scores.precision >= 0.5, f"{name}: precision {target.scores.precision:.3f}"
    kinds = {k.kind: k for k in result.kinds}
    assert set(kinds) == set(ChangeType) - {ChangeType.NONE}
    assert all(k.truth_pixels > 0 for k in kinds.values())
    # The overall scores and the per-target ones come from the same cube and truth.
    assert result.accuracy.tp + result.accuracy.fn >= max(t.truth_pixels for t in result.targets)
