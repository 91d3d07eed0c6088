"""Evaluation: dataset-level scores on hand-made pairs, CVA fitting modes, semantic change, CLI."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import typer
from rasterio.errors import NotGeoreferencedWarning
from typer.testing import CliRunner

from flows.commands_model import evaluate as evaluate_command
from seg2change_core.baselines import CVABaseline
from seg2change_core.change_model import InputNormalisation
from seg2change_core.datasets import ChangeDetectionDataset, ChangePair
from seg2change_core.errors import DatasetError
from seg2change_core.evaluation import cva_for, evaluate


def write_image(path: Path, data: np.ndarray) -> None:
    """Write a (bands, H, W) or (H, W) uint8 array as a PNG."""
    array = data if data.ndim == 3 else data[None]
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {"driver": "PNG", "width": array.shape[2], "height": array.shape[1], "count": array.shape[0]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", dtype="uint8", **profile) as dst:
            dst.write(array)


class AfterBandModel:
    """A change model whose probability of change is band 0 of the 'after' image."""

    name = "after-band"
    tile_size: int | None = None
    normalisation = InputNormalisation(("x",), (0.0,), (1.0,), 1.0)

    @property
    def bands(self) -> tuple[str, ...]:
        return ("x",)

    @property
    def in_channels(self) -> int:
        return 1

    def predict(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        return after[:, :1].clamp(0, 1)


def pair(
    name: str,
    prediction: np.ndarray,
    label: np.ndarray,
    class_before: np.ndarray | None = None,
    class_after: np.ndarray | None = None,
) -> ChangePair:
    image = prediction.astype(np.float32)[None]
    return ChangePair(name, "hand", np.zeros_like(image), image, label, class_before, class_after)


def test_dataset_level_scores_by_hand() -> None:
    # Pair 1: 2 TP, 1 FP, 1 FN, 4 TN. Pair 2: 1 TP, 0 FP, 0 FN, 2 TN, and one ignored pixel
    # (raw 128) that is predicted changed but not scored.
    p1 = pair("one", np.array([[1, 1, 1, 0], [0, 0, 0, 0]]), np.array([[255, 255, 0, 255], [0, 0, 0, 0]]))
    p2 = pair("two", np.array([[1, 1], [0, 0]]), np.array([[255, 128], [0, 0]]))
    report = evaluate(AfterBandModel(), ChangeDetectionDataset([p1, p2], ignore_value=128))
    s = report.scores
    assert (s.tp, s.fp, s.fn, s.tn) == (3, 1, 1, 6)
    assert report.scored_pixels == 11 and report.pairs == 2
    assert s.iou == pytest.approx(3 / 5)
    assert s.f1 == pytest.approx(6 / 8)
    assert s.precision == pytest.approx(3 / 4) and s.recall == pytest.approx(3 / 4)
    assert s.oa == pytest.approx(9 / 11)
    po, pe = 9 / 11, (4 * 4 + 7 * 7) / 11**2
    assert s.kappa == pytest.approx((po - pe) / (1 - pe))
    assert report.confusion == [[6, 1], [1, 3]]
    assert [(p.key, p.tp, p.fp, p.fn, p.tn) for p in report.per_pair] == [
        ("hand/one", 2, 1, 1, 4),
        ("hand/two", 1, 0, 0, 2),
    ]
    data = json.loads(report.to_json())
    assert data["change"]["iou"] == pytest.approx(0.6) and data["confusion"]["matrix"] == [[6, 1], [1, 3]]


def test_nan_scores_become_null_in_json() -> None:
    p = pair("none", np.zeros((2, 2)), np.zeros((2, 2), np.uint8))
    report = evaluate(AfterBandModel(), ChangeDetectionDataset([p]))
    assert math.isnan(report.scores.iou)
    assert json.loads(report.to_json())["change"]["iou"] is None


def test_augmented_dataset_is_refused_and_crops_are_top_left() -> None:
    p = pair("x", np.zeros((4, 4)), np.zeros((4, 4), np.uint8))
    with pytest.raises(DatasetError, match="without augment"):
        evaluate(AfterBandModel(), ChangeDetectionDataset([p], crop_size=2, augment=True))
    cropped = evaluate(AfterBandModel(), ChangeDetectionDataset([p], crop_size=2))
    assert cropped.scored_pixels == 4


def _cva_pair(name: str, brightness: float, rng: np.random.Generator) -> ChangePair:
    before = (rng.random((3, 32, 32)) * 20 + 100).astype(np.uint8)
    after = before.copy()
    after[:, 8:16, 8:16] = np.clip(before[:, 8:16, 8:16].astype(int) + brightness, 0, 255).astype(np.uint8)
    label = np.zeros((32, 32), np.uint8)
    label[8:16, 8:16] = 255
    return ChangePair(name, "cva", before, after, label)


def test_cva_per_image_and_dataset_fits() -> None:
    rng = np.random.default_rng(0)
    # Faint change in one pair, strong change in the other: per-image Otsu finds both; one
    # dataset-wide threshold falls between the two change levels and misses the faint one.
    data = ChangeDetectionDataset([_cva_pair("faint", 60, rng), _cva_pair("strong", 150, rng)])
    per_image = evaluate(cva_for(data), data, cva_fit="image")
    assert per_image.scores.iou == pytest.approx(1.0)
    assert per_image.settings["cva_fit"] == "image"
    dataset_fit = evaluate(cva_for(data), data, cva_fit="dataset")
    assert dataset_fit.settings["cva_fit"] == "dataset" and "cva_threshold" in dataset_fit.settings
    assert dataset_fit.scores.iou == pytest.approx(0.5)
    baseline = cva_for(data)
    assert isinstance(baseline, CVABaseline) and baseline.normalisation.scale == pytest.approx(1 / 255)


def test_semantic_scores_with_class_union_rule() -> None:
    # Classes 0..2. Changed pixels: (0,0) 1->2 and (0,1) 0->1; the model finds only (0,0) and a
    # false alarm at (1,1) where the class is 0 on both dates.
    prediction = np.array([[1, 0], [0, 1]])
    label = np.array([[255, 255], [0, 0]], np.uint8)
    before = np.array([[1, 0], [2, 0]], np.uint8)
    after = np.array([[2, 1], [2, 0]], np.uint8)
    p = pair("sem", prediction, label, class_before=before, class_after=after)
    report = evaluate(AfterBandModel(), ChangeDetectionDataset([p]))
    sem = report.semantic
    assert sem is not None and sem.oracle_classes and sem.classes == (0, 1, 2)
    # class 0: truth {(0,1)}, prediction {(1,1)} -> IoU 0; class 1: truth {(0,0),(0,1)},
    # prediction {(0,0)} -> 1/2; class 2: truth {(0,0)}, prediction {(0,0)} -> 1.
    assert sem.iou_c == pytest.approx((0.0, 0.5, 1.0))
    assert sem.f1_c == pytest.approx((0.0, 2 / 3, 1.0))
    assert sem.miou_c == pytest.approx(0.5)
    assert sem.mf1_c == pytest.approx((0 + 2 / 3 + 1) / 3)


def test_evaluate_command_writes_report_and_fails_cleanly(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    rng = np.random.default_rng(1)
    for name in ("a_1", "b_1"):
        before = (rng.random((3, 24, 24)) * 20 + 100).astype(np.uint8)
        after = before.copy()
        after[:, :8] = 250
        label = np.zeros((24, 24), np.uint8)
        label[:8] = 255
        write_image(root / "A" / f"{name}.png", before)
        write_image(root / "B" / f"{name}.png", after)
        write_image(root / "label" / f"{name}.png", label)
    app = typer.Typer()
    app.command()(evaluate_command)
    runner = CliRunner()
    result = runner.invoke(
        app, [str(root), "--model", "cva", "--report", str(tmp_path / "r.json"), "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert "change IoU" in result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["change"]["iou"] == pytest.approx(1.0) and report["pairs"] == 2
    missing = runner.invoke(app, [str(tmp_path / "nowhere"), "--model", "cva", "--no-progress"])
    assert missing.exit_code == 2 and "does not exist" in " ".join(missing.output.split())
