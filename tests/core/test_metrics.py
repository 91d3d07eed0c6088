"""Change metrics on hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from seg2change_core.errors import DatasetError
from seg2change_core.metrics import (
    BinaryConfusion,
    ConfusionMatrix,
    SemanticChangeConfusion,
    binary_scores,
)


def test_binary_scores_by_hand() -> None:
    # tp: 0, 4; fp: 1; fn: 2; tn: 3; the last pixel is ignored.
    pred = np.array([1, 1, 0, 0, 1, 1])
    gt = np.array([1, 0, 1, 0, 1, 255])
    acc = BinaryConfusion()
    acc.update(pred[:3], gt[:3])
    acc.update(pred[3:], gt[3:])
    s = acc.scores()
    assert (s.tp, s.fp, s.fn, s.tn) == (2, 1, 1, 1)
    assert acc.matrix.tolist() == [[1, 1], [1, 2]]
    assert s.iou == pytest.approx(0.5)
    assert s.precision == pytest.approx(2 / 3) and s.recall == pytest.approx(2 / 3)
    assert s.f1 == pytest.approx(2 / 3)
    assert s.oa == pytest.approx(0.6)
    # po = 0.6, pe = (3*3 + 2*2) / 25 = 0.52
    assert s.kappa == pytest.approx((0.6 - 0.52) / 0.48)


def test_binary_accepts_change_codes_and_reports_undefined_as_nan() -> None:
    acc = BinaryConfusion()
    acc.update(np.array([[3, 0], [0, 0]]), np.array([[5, 0], [0, 0]]))
    assert acc.scores().iou == 1.0
    empty = binary_scores(0, 0, 0, 4)
    assert math.isnan(empty.iou) and math.isnan(empty.precision) and empty.oa == 1.0
    assert math.isnan(empty.kappa)
    with pytest.raises(DatasetError, match="shapes differ"):
        acc.update(np.zeros(3), np.zeros(4))


def test_multiclass_confusion_by_hand() -> None:
    cm = ConfusionMatrix(3)
    cm.update(np.array([0, 1, 1, 1, 2, 0, 2]), np.array([0, 0, 1, 1, 2, 2, 255]))
    assert cm.matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    np.testing.assert_allclose(cm.iou(), [1 / 3, 2 / 3, 1 / 2])
    np.testing.assert_allclose(cm.f1(), [1 / 2, 4 / 5, 2 / 3])
    np.testing.assert_allclose(cm.precision(), [1 / 2, 2 / 3, 1])
    np.testing.assert_allclose(cm.recall(), [1 / 2, 1, 1 / 2])
    assert cm.miou() == pytest.approx(0.5)
    assert cm.oa() == pytest.approx(4 / 6)
    # po = 2/3, pe = (2*2 + 2*3 + 2*1) / 36 = 1/3
    assert cm.kappa() == pytest.approx(0.5)
    with pytest.raises(DatasetError, match="label 3 outside 0..2"):
        cm.update(np.array([3]), np.array([0]))


def semantic_example() -> tuple[np.ndarray, ...]:
    pred_change = np.array([1, 0, 1, 0])
    pred_before = np.array([0, 1, 1, 1])
    pred_after = np.array([1, 0, 1, 1])
    gt_change = np.array([1, 1, 0, 0])
    gt_before = np.array([0, 1, 0, 1])
    gt_after = np.array([1, 1, 0, 1])
    return pred_change, pred_before, pred_after, gt_change, gt_before, gt_after


def test_semantic_change_by_hand() -> None:
    acc = SemanticChangeConfusion(2)
    acc.update(*semantic_example())
    s = acc.scores()
    # class 0: gt [T F F F], pred [T F F F]; class 1: gt [T T F F], pred [T F T F]
    np.testing.assert_allclose(s.iou_c, [1.0, 1 / 3])
    np.testing.assert_allclose(s.f1_c, [1.0, 0.5])
    assert s.miou_c == pytest.approx(2 / 3) and s.mf1_c == pytest.approx(0.75)
    assert s.binary.iou == pytest.approx(1 / 3)
    # Q (rows truth, cols prediction; 0 = no change, c + 1 = class c), both dates:
    assert acc.second.matrix.tolist() == [[2, 0, 2], [0, 1, 0], [2, 0, 1]]
    # Q0: trace 2 of 6, rows = cols = [2, 1, 3]: pe = 14/36, kappa0 = (1/3 - 7/18) / (11/18) = -1/11
    assert s.kappa_n0 == pytest.approx(-1 / 11)
    assert s.sek == pytest.approx(-1 / 11 * math.exp(1 / 3 - 1))
    assert s.fscd == pytest.approx(0.5)
    assert acc.scores(classes=[1]).miou_c == pytest.approx(1 / 3)


def test_perfect_semantic_change_has_sek_one() -> None:
    _, _, _, gc, gb, ga = semantic_example()
    acc = SemanticChangeConfusion(2)
    acc.update(gc, gb, ga, gc, gb, ga)
    s = acc.scores()
    assert s.sek == pytest.approx(1.0) and s.fscd == 1.0 and s.binary.iou == 1.0
    np.testing.assert_allclose(s.iou_c, [1.0, 1.0])


def test_semantic_ignore_rules() -> None:
    acc = SemanticChangeConfusion(2)
    pc, pb, pa, gc, gb, ga = semantic_example()
    # Pixel 4: change ignored -> skipped everywhere. Pixel 5: changed with unknown class ->
    # counted for the binary change only. Unchanged pixels may carry 255 classes.
    acc.update(
        np.append(pc, [1, 1]),
        np.append(pb, [0, 0]),
        np.append(pa, [0, 0]),
        np.append(gc, [255, 1]),
        np.append(np.where(gc == 0, 255, gb), [0, 255]),
        np.append(np.where(gc == 0, 255, ga), [0, 0]),
    )
    s = acc.scores()
    np.testing.assert_allclose(s.iou_c, [1.0, 1 / 3])
    assert acc.second.matrix.tolist() == [[2, 0, 2], [0, 1, 0], [2, 0, 1]]
    assert (s.binary.tp, s.binary.fp, s.binary.fn, s.binary.tn) == (2, 1, 1, 1)


def test_dataset_level_accumulation_is_not_a_mean_of_images() -> None:
    acc = SemanticChangeConfusion(2)
    rng = np.random.default_rng(0)
    maps = [rng.integers(0, 2, size=(6, 50)) for _ in range(3)]
    whole = SemanticChangeConfusion(2)
    for m in maps:
        acc.update(*m)
    whole.update(*np.concatenate(maps, axis=1))
    a, b = acc.scores(), whole.scores()
    np.testing.assert_array_equal(a.iou_c, b.iou_c)
    assert a.sek == b.sek and a.binary == b.binary
